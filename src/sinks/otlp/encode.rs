//! OTLP messages from the event model: audit events and alerts as log records, metric samples
//! as gauges and sums with the cluster id as a resource attribute.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::event::{Alert, AlertStatus, AuditRow, Batch, MetricKind, MetricSample, Text, now_us};

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn kv_str(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.to_owned()))
}

fn resource(extra: Vec<KeyValue>) -> Option<Resource> {
    let mut attributes = vec![kv_str("service.name", "auditflow")];
    attributes.extend(extra);
    Some(Resource {
        attributes,
        ..Default::default()
    })
}

fn scope() -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: "auditflow".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    })
}

/// An audit event as a log record: the original JSON as body, the normalised fields as
/// attributes (semantic-convention names where one exists).
pub fn audit_log_record(row: &AuditRow, observed_ns: u64) -> LogRecord {
    let failed = row.granted == Some(false) || row.result_status.as_deref().is_some_and(|s| s != "SUCCESS");
    let (severity, text) = if failed {
        (SeverityNumber::Warn, "WARN")
    } else {
        (SeverityNumber::Info, "INFO")
    };
    let mut attributes = vec![
        kv_str("event.name", &row.event_type),
        kv_str("cloudevents.event_id", &row.id),
        kv_str("cloudevents.event_type", &row.event_type),
    ];
    let mut opt = |key: &str, value: &Option<Text>| {
        if let Some(v) = value {
            attributes.push(kv_str(key, v));
        }
    };
    opt("user.id", &row.principal);
    opt("client.address", &row.client_ip);
    opt("kafka.cluster.id", &row.cluster_id);
    opt("confluent.organization.id", &row.organization);
    opt("confluent.environment.id", &row.environment);
    opt("audit.method", &row.method);
    opt("audit.resource.type", &row.resource_type);
    opt("audit.resource.name", &row.resource_name);
    opt("audit.operation", &row.operation);
    opt("audit.result.status", &row.result_status);
    opt("audit.auth.mechanism", &row.auth_mechanism);
    opt("audit.auth.identifier", &row.auth_identifier);
    opt("audit.principal_app", &row.principal_app);
    opt("audit.resource_app", &row.resource_app);
    attributes.push(kv_str("audit.principal_type", row.principal_type.as_str()));
    attributes.push(kv_str("audit.authz_via", row.authz_via.as_str()));
    if let Some(port) = row.client_port {
        attributes.push(kv("client.port", any_value::Value::IntValue(port.into())));
    }
    if let Some(g) = row.granted {
        attributes.push(kv("audit.granted", any_value::Value::BoolValue(g)));
    }
    if let Some(c) = row.cross_namespace {
        attributes.push(kv("audit.cross_namespace", any_value::Value::BoolValue(c)));
    }
    LogRecord {
        time_unix_nano: (row.time_us.max(0) as u64) * 1000,
        observed_time_unix_nano: observed_ns,
        severity_number: severity as i32,
        severity_text: text.into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(
                String::from_utf8_lossy(&row.raw).into_owned(),
            )),
        }),
        attributes,
        ..Default::default()
    }
}

/// An alert as a log record with a severity to match.
pub fn alert_log_record(a: &Alert, observed_ns: u64) -> LogRecord {
    let (severity, text) = match (a.status, a.severity.as_str()) {
        (AlertStatus::Resolved, _) => (SeverityNumber::Info, "INFO"),
        (_, "critical") => (SeverityNumber::Fatal, "FATAL"),
        (_, "high") => (SeverityNumber::Error, "ERROR"),
        (_, "medium") => (SeverityNumber::Warn, "WARN"),
        _ => (SeverityNumber::Info, "INFO"),
    };
    let mut attributes = vec![
        kv_str("event.name", "auditflow.alert"),
        kv_str("alert.id", &a.id),
        kv_str("alert.rule_id", &a.rule_id),
        kv_str("alert.severity", &a.severity),
        kv_str("alert.status", a.status.as_str()),
        kv("alert.value", any_value::Value::DoubleValue(a.value)),
        kv("alert.started_at", any_value::Value::IntValue(a.started_at_us)),
    ];
    if let Some(t) = a.threshold {
        attributes.push(kv("alert.threshold", any_value::Value::DoubleValue(t)));
    }
    if let Some(r) = &a.runbook {
        attributes.push(kv_str("alert.runbook", r));
    }
    for (k, v) in &a.labels {
        attributes.push(kv_str(&format!("alert.label.{k}"), v));
    }
    if !a.evidence.is_empty() {
        attributes.push(kv_str("alert.evidence", &a.evidence.join(",")));
    }
    LogRecord {
        time_unix_nano: (a.time_us.max(0) as u64) * 1000,
        observed_time_unix_nano: observed_ns,
        severity_number: severity as i32,
        severity_text: text.into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(a.summary.clone())),
        }),
        attributes,
        ..Default::default()
    }
}

/// Log records of a batch (audit events and alerts), or `None` when it has none.
pub fn logs_request(batch: &Batch) -> Option<ExportLogsServiceRequest> {
    if batch.audit.is_empty() && batch.alerts.is_empty() {
        return None;
    }
    let observed = (now_us().max(0) as u64) * 1000;
    let mut log_records: Vec<LogRecord> = batch.audit.iter().map(|r| audit_log_record(r, observed)).collect();
    log_records.extend(batch.alerts.iter().map(|a| alert_log_record(a, observed)));
    Some(ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(vec![]),
            scope_logs: vec![ScopeLogs {
                scope: scope(),
                log_records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
}

/// Metric samples grouped by cluster (a resource each), or `None` when there are none.
pub fn metrics_request(samples: &[MetricSample]) -> Option<ExportMetricsServiceRequest> {
    if samples.is_empty() {
        return None;
    }
    let mut by_cluster: BTreeMap<Option<&str>, Vec<&MetricSample>> = BTreeMap::new();
    for s in samples {
        by_cluster.entry(s.cluster_id.as_deref()).or_default().push(s);
    }
    let resource_metrics = by_cluster
        .into_iter()
        .map(|(cluster, samples)| {
            let metrics = samples
                .into_iter()
                .map(|s| {
                    let attributes = s
                        .labels
                        .iter()
                        .filter(|(k, _)| !matches!(k.as_str(), "kafka.id" | "kafka.cluster.id"))
                        .map(|(k, v)| kv_str(k, v))
                        .collect();
                    let point = NumberDataPoint {
                        attributes,
                        time_unix_nano: (s.time_us.max(0) as u64) * 1000,
                        value: Some(number_data_point::Value::AsDouble(s.value)),
                        ..Default::default()
                    };
                    let data = match s.kind {
                        MetricKind::Gauge => metric::Data::Gauge(Gauge {
                            data_points: vec![point],
                        }),
                        MetricKind::Counter | MetricKind::Cumulative => metric::Data::Sum(Sum {
                            data_points: vec![point],
                            aggregation_temporality: if s.kind == MetricKind::Counter {
                                AggregationTemporality::Delta as i32
                            } else {
                                AggregationTemporality::Cumulative as i32
                            },
                            is_monotonic: true,
                        }),
                    };
                    Metric {
                        name: s.name.clone(),
                        data: Some(data),
                        ..Default::default()
                    }
                })
                .collect();
            ResourceMetrics {
                resource: resource(cluster.map(|c| vec![kv_str("kafka.cluster.id", c)]).unwrap_or_default()),
                scope_metrics: vec![ScopeMetrics {
                    scope: scope(),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    Some(ExportMetricsServiceRequest { resource_metrics })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn metrics_are_grouped_by_cluster_with_kinds() {
        let sample = |cluster: &str, kind| MetricSample {
            time_us: 1_000_000,
            name: "io.confluent.kafka.server/sent_bytes".into(),
            value: 5.0,
            kind,
            cluster_id: Some(cluster.into()),
            topic: Some("t".into()),
            partition: None,
            labels: BTreeMap::from([("topic".into(), "t".into()), ("kafka.id".into(), cluster.into())]),
            resource_app: None,
        };
        let r = metrics_request(&[sample("a", MetricKind::Counter), sample("b", MetricKind::Gauge)]).unwrap();
        assert_eq!(r.resource_metrics.len(), 2);
        let attrs = &r.resource_metrics[0].resource.as_ref().unwrap().attributes;
        assert!(attrs.iter().any(|kv| kv.key == "kafka.cluster.id"));
        let m = &r.resource_metrics[0].scope_metrics[0].metrics[0];
        assert!(
            matches!(m.data, Some(metric::Data::Sum(ref s)) if s.aggregation_temporality == AggregationTemporality::Delta as i32)
        );
        let m = &r.resource_metrics[1].scope_metrics[0].metrics[0];
        assert!(matches!(m.data, Some(metric::Data::Gauge(_))));
    }
}
