//! The export endpoint's Prometheus text to canonical metric samples.
//!
//! The export (`GET /v2/metrics/cloud/export`) writes each Metrics API metric as a Prometheus
//! family: `io.confluent.kafka.server/received_bytes` becomes
//! `confluent_kafka_server_received_bytes`, `resource.kafka.id` the label `kafka_id`, and
//! every point the newest complete minute with its own timestamp in milliseconds. Label sets end
//! in a trailing comma, which the Prometheus text format allows and `openmetrics-parser` takes.
//! This file maps names and labels back to the Metrics API's own, so a sample polled here is the
//! sample the Collector or a Metrics API response on the metrics topic would have given.

use std::collections::BTreeMap;

use openmetrics_parser::{MetricNumber, PrometheusValue};
use serde::Serialize;

use crate::decode::metrics::default_kind;

/// The series the export writes per queried resource: 1 when it could not read it (not found,
/// or the key's owner may not see it), 0 when it could.
pub const ACCESS_ERROR_SERIES: &str = "confluent_scrape_resource_access_error";

/// Prometheus name prefixes back to Metrics API namespaces, longest first.
const NAMESPACES: [(&str, &str); 6] = [
    (
        "confluent_kafka_schema_registry_",
        "io.confluent.kafka.schema_registry/",
    ),
    ("confluent_kafka_connect_", "io.confluent.kafka.connect/"),
    ("confluent_kafka_server_", "io.confluent.kafka.server/"),
    ("confluent_kafka_ksql_", "io.confluent.kafka.ksql/"),
    ("confluent_flink_", "io.confluent.flink/"),
    ("confluent_custom_", "io.confluent.custom/"),
];

/// Export labels that name the resource, to the Metrics API's `resource.*` keys.
const RESOURCE_LABELS: [(&str, &str); 5] = [
    ("kafka_id", "kafka.id"),
    ("schema_registry_id", "schema_registry.id"),
    ("ksql_id", "ksql.id"),
    ("connector_id", "connector.id"),
    ("compute_pool_id", "compute_pool.id"),
];

/// One sample in the canonical JSON shape the metrics decoder reads (docs/PRODUCT.md §1.2).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CanonicalSample {
    pub metric: String,
    /// RFC 3339, UTC, milliseconds.
    pub timestamp: String,
    pub value: f64,
    pub kind: &'static str,
    pub resource: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// Event time in milliseconds (not serialised: the timestamp says it).
    #[serde(skip)]
    pub time_ms: i64,
}

impl CanonicalSample {
    /// Names one series: the same metric and labels polled again is the same series.
    pub fn series_key(&self) -> String {
        let mut key = self.metric.clone();
        for (k, v) in self.resource.iter().chain(&self.labels) {
            key.push('\u{1f}');
            key.push_str(k);
            key.push('=');
            key.push_str(v);
        }
        key
    }
}

/// What one export response held.
#[derive(Debug, Default)]
pub struct Exported {
    pub samples: Vec<CanonicalSample>,
    /// Label sets of `confluent_scrape_resource_access_error` series whose value is not 0.
    pub access_errors: Vec<BTreeMap<String, String>>,
    /// Points skipped: histograms or summaries (the export writes none), non-finite values.
    pub skipped: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("the export response is not Prometheus text: {0}")]
pub struct ExportError(String);

/// Parses one export response body. `fallback_ms` stands in for a point without a timestamp.
pub fn parse(body: &str, fallback_ms: i64) -> Result<Exported, ExportError> {
    // No series at all (resources without traffic yet) is an answer, which the parser's grammar
    // does not take.
    if body.lines().all(|l| l.trim().is_empty() || l.starts_with('#')) {
        return Ok(Exported::default());
    }
    let exposition = openmetrics_parser::prometheus::parse_prometheus(body).map_err(|e| ExportError(e.to_string()))?;
    let mut out = Exported::default();
    // Families come out of a hash map: sort them so one body always gives one order.
    let mut families: Vec<_> = exposition.families.into_values().collect();
    families.sort_by(|a, b| a.family_name.cmp(&b.family_name));
    for family in families {
        let name = family.family_name.clone();
        for sample in family.iter_samples() {
            let Ok(set) = sample.get_labelset() else {
                out.skipped += 1;
                continue;
            };
            let raw: BTreeMap<String, String> = set.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let value = match &sample.value {
                PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => number(n),
                PrometheusValue::Counter(c) => number(&c.value),
                PrometheusValue::Histogram(_) | PrometheusValue::Summary(_) => {
                    out.skipped += 1;
                    continue;
                }
            };
            if name == ACCESS_ERROR_SERIES {
                // 0: the resource was found and readable, which is no error.
                if value != 0.0 {
                    out.access_errors.push(raw);
                }
                continue;
            }
            if !value.is_finite() {
                out.skipped += 1;
                continue;
            }
            let time_ms = sample.timestamp.map_or(fallback_ms, |t| t as i64);
            out.samples.push(canonical(&name, time_ms, value, raw));
        }
    }
    Ok(out)
}

fn number(n: &MetricNumber) -> f64 {
    n.as_f64()
}

/// One exported point in the Metrics API's own names.
fn canonical(prometheus_name: &str, time_ms: i64, value: f64, raw: BTreeMap<String, String>) -> CanonicalSample {
    let metric = metrics_api_name(prometheus_name);
    let mut resource = BTreeMap::new();
    let mut labels = BTreeMap::new();
    for (k, v) in raw {
        match RESOURCE_LABELS.iter().find(|(label, _)| *label == k) {
            Some((_, key)) => {
                resource.insert((*key).to_owned(), v);
            }
            None => {
                labels.insert(k, v);
            }
        }
    }
    CanonicalSample {
        kind: default_kind(&metric).as_str(),
        timestamp: rfc3339_ms(time_ms),
        metric,
        value,
        resource,
        labels,
        time_ms,
    }
}

/// `confluent_kafka_server_sent_bytes` -> `io.confluent.kafka.server/sent_bytes`; a name of no
/// known namespace stays as written.
pub fn metrics_api_name(prometheus_name: &str) -> String {
    for (prefix, namespace) in NAMESPACES {
        if let Some(rest) = prometheus_name.strip_prefix(prefix)
            && !rest.is_empty()
        {
            return format!("{namespace}{rest}");
        }
    }
    prometheus_name.to_owned()
}

fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DecodeConfig;
    use crate::decode::metrics::{MetricHeaders, MetricsDecoder};
    use crate::event::MetricKind;

    /// The export's exact shape: HELP and TYPE per family, trailing commas, ms timestamps.
    pub const BODY: &str = "\
# HELP confluent_kafka_server_received_bytes The delta count of bytes of the customer's data received from the network. Each sample is the number of bytes received since the previous data sample. The count is sampled every 60 seconds.
# TYPE confluent_kafka_server_received_bytes gauge
confluent_kafka_server_received_bytes{kafka_id=\"lkc-9kg320\",topic=\"payments\",} 4096.0 1638297960000
confluent_kafka_server_received_bytes{kafka_id=\"lkc-9kg320\",topic=\"orders\",} 512.0 1638297960000
# HELP confluent_kafka_server_retained_bytes The current count of bytes retained by the cluster.
# TYPE confluent_kafka_server_retained_bytes gauge
confluent_kafka_server_retained_bytes{kafka_id=\"lkc-9kg320\",topic=\"payments\",} 1.2E7 1638297960000
# HELP confluent_kafka_schema_registry_schema_count The number of registered schemas.
# TYPE confluent_kafka_schema_registry_schema_count gauge
confluent_kafka_schema_registry_schema_count{schema_registry_id=\"lsrc-abc123\",} 42.0 1638297960000
# HELP confluent_scrape_resource_access_error Error status of resources queried. A value of 1 signifies that the resource was not found, whereas a value of 0 signifies that the resource was successfully found and the user principal was authorized to access it.
# TYPE confluent_scrape_resource_access_error gauge
confluent_scrape_resource_access_error{resource_type=\"resource.kafka.id\",resource_id=\"lkc-gone\",} 1.0
confluent_scrape_resource_access_error{resource_type=\"resource.kafka.id\",resource_id=\"lkc-9kg320\",} 0.0
confluent_scrape_resource_access_error{resource_type=\"resource.schema_registry.id\",resource_id=\"lsrc-abc123\",} 0.0
";

    #[test]
    fn names_labels_and_kinds_map_back_to_the_metrics_api() {
        let e = parse(BODY, 0).unwrap();
        assert_eq!(e.samples.len(), 4);
        assert_eq!(e.skipped, 0);
        let rx = e
            .samples
            .iter()
            .find(|s| s.metric.ends_with("received_bytes") && s.labels["topic"] == "payments")
            .unwrap();
        assert_eq!(rx.metric, "io.confluent.kafka.server/received_bytes");
        assert_eq!(rx.resource["kafka.id"], "lkc-9kg320");
        assert_eq!(rx.time_ms, 1_638_297_960_000);
        assert_eq!(rx.timestamp, "2021-11-30T18:46:00.000Z");
        assert_eq!(rx.kind, "counter");
        let retained = e.samples.iter().find(|s| s.metric.ends_with("retained_bytes")).unwrap();
        assert_eq!((retained.kind, retained.value), ("gauge", 1.2e7));
        let schemas = e.samples.iter().find(|s| s.metric.contains("schema_registry")).unwrap();
        assert_eq!(schemas.metric, "io.confluent.kafka.schema_registry/schema_count");
        assert_eq!(schemas.resource["schema_registry.id"], "lsrc-abc123");
        assert_eq!(e.access_errors.len(), 1, "0 means readable: {:?}", e.access_errors);
        assert_eq!(e.access_errors[0]["resource_id"], "lkc-gone");
        assert_eq!(e.access_errors[0]["resource_type"], "resource.kafka.id");
        assert_eq!(
            metrics_api_name("confluent_kafka_ksql_streaming_unit_count"),
            "io.confluent.kafka.ksql/streaming_unit_count"
        );
        assert_eq!(metrics_api_name("up"), "up");
    }

    #[test]
    fn canonical_json_decodes_to_the_same_sample_as_any_other_route() {
        let e = parse(BODY, 0).unwrap();
        let rx = e.samples.iter().find(|s| s.metric.ends_with("received_bytes")).unwrap();
        let line = serde_json::to_vec(rx).unwrap();
        let decoded = MetricsDecoder::new(DecodeConfig::default())
            .decode(&line, &MetricHeaders::default())
            .unwrap();
        assert_eq!(decoded.len(), 1);
        let s = &decoded[0];
        assert_eq!(s.name, "io.confluent.kafka.server/received_bytes");
        assert_eq!(s.cluster_id.as_deref(), Some("lkc-9kg320"));
        assert_eq!(s.topic, rx.labels.get("topic").cloned());
        assert_eq!(s.kind, MetricKind::Counter);
        assert_eq!(s.time_us, 1_638_297_960_000_000);
        assert_eq!(s.value, rx.value);
    }

    #[test]
    fn quoted_commas_escapes_and_garbage() {
        let body = "# TYPE confluent_kafka_server_sent_bytes gauge\n\
                    confluent_kafka_server_sent_bytes{kafka_id=\"lkc-1\",topic=\"a,b\\\"c\",} 1 1638297960000\n";
        let e = parse(body, 0).unwrap();
        assert_eq!(e.samples[0].labels["topic"], "a,b\"c");
        assert!(parse("<html>502 Bad Gateway</html>", 0).is_err());
        assert!(parse("", 0).unwrap().samples.is_empty());
        // No timestamp: the poll's time stands in.
        let e = parse("up{} 1\n", 7).unwrap();
        assert_eq!(e.samples[0].time_ms, 7);
    }

    #[test]
    fn a_series_key_tells_series_apart() {
        let e = parse(BODY, 0).unwrap();
        assert_ne!(e.samples[0].series_key(), e.samples[1].series_key());
        assert_eq!(
            e.samples[0].series_key(),
            parse(BODY, 0).unwrap().samples[0].series_key()
        );
    }
}
