//! Metric records to [`MetricSample`]s. Three encodings, detected per record unless fixed in
//! config (docs/PRODUCT.md §1.2):
//! 1. canonical JSON samples, one or many per record (JSON lines, concatenated, or an array);
//! 2. a Metrics API query response body (`{"data": [...]}`), the metric and resource named by
//!    record headers (`metric`, `resource.kafka.id`) or config;
//! 3. OTLP `ExportMetricsServiceRequest`, protobuf (the Collector's default) or JSON.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use prost::Message;
use serde::Deserialize;
use serde_json::Value;

use super::{DecodeError, parse_time_us, schema_registry};
use crate::config::{DecodeConfig, MetricsFormat};
use crate::event::{MetricKind, MetricSample};

/// Resource attributes that name the cluster a sample belongs to, most specific first.
const CLUSTER_KEYS: [&str; 6] = [
    "kafka.id",
    "kafka.cluster.id",
    "resource.kafka.id",
    "ksql.id",
    "schema_registry.id",
    "connector.id",
];

/// Metric names whose values are levels, not per-interval deltas.
const GAUGES: [&str; 5] = [
    "io.confluent.kafka.server/retained_bytes",
    "io.confluent.kafka.server/partition_count",
    "io.confluent.kafka.server/active_connection_count",
    "io.confluent.kafka.ksql/streaming_unit_count",
    "io.confluent.kafka.schema_registry/schema_count",
];

/// The Metrics API's semantics of a metric: levels are gauges, everything else a per-interval
/// delta (which Confluent's Prometheus export writes as a gauge all the same).
pub fn default_kind(name: &str) -> MetricKind {
    if GAUGES.contains(&name) {
        MetricKind::Gauge
    } else {
        MetricKind::Counter
    }
}

/// Record headers that matter to metric decoding.
#[derive(Debug, Default, Clone)]
pub struct MetricHeaders {
    pub content_type: Option<String>,
    /// Metric name of a Metrics API response (`metric` header).
    pub metric: Option<String>,
    /// Cluster of a Metrics API response (`resource.kafka.id` header).
    pub cluster_id: Option<String>,
}

pub struct MetricsDecoder {
    config: DecodeConfig,
}

impl MetricsDecoder {
    pub fn new(config: DecodeConfig) -> MetricsDecoder {
        MetricsDecoder { config }
    }

    /// Decodes one record into one or more samples.
    pub fn decode(&self, payload: &[u8], headers: &MetricHeaders) -> Result<Vec<MetricSample>, DecodeError> {
        if payload.len() > self.config.max_record_bytes {
            return Err(DecodeError::TooLarge {
                size: payload.len(),
                limit: self.config.max_record_bytes,
            });
        }
        let (_, payload) = schema_registry::strip_framing(payload);
        let first = payload.iter().find(|b| !b.is_ascii_whitespace());
        let format = match self.config.metrics_format {
            MetricsFormat::Auto => match first {
                None => return Err(DecodeError::Empty),
                Some(b'{') | Some(b'[') => None, // some JSON: look at its keys
                Some(_) => Some(MetricsFormat::OtlpProto),
            },
            fixed => Some(fixed),
        };
        let samples = match format {
            Some(MetricsFormat::OtlpProto) => {
                let request = ExportMetricsServiceRequest::decode(payload)?;
                from_otlp(request)
            }
            Some(MetricsFormat::OtlpJson) => from_otlp(serde_json::from_slice(payload)?),
            Some(MetricsFormat::MetricsApi) => self.decode_metrics_api(serde_json::from_slice(payload)?, headers)?,
            Some(MetricsFormat::Canonical) => from_canonical_stream(payload)?,
            Some(MetricsFormat::Auto) | None => {
                let mut stream = serde_json::Deserializer::from_slice(payload).into_iter::<Value>();
                let first = stream.next().ok_or(DecodeError::Empty)??;
                let is_single = stream.next().is_none();
                match &first {
                    Value::Object(m) if is_single && m.contains_key("resourceMetrics") => {
                        from_otlp(serde_json::from_value(first)?)
                    }
                    Value::Object(m) if is_single && m.get("data").is_some_and(Value::is_array) => {
                        self.decode_metrics_api(serde_json::from_value(first)?, headers)?
                    }
                    _ => from_canonical_stream(payload)?,
                }
            }
        };
        if samples.is_empty() {
            return Err(DecodeError::InvalidMetric("record holds no metric samples".into()));
        }
        Ok(samples)
    }

    fn decode_metrics_api(
        &self,
        response: MetricsApiResponse,
        headers: &MetricHeaders,
    ) -> Result<Vec<MetricSample>, DecodeError> {
        let name = headers
            .metric
            .clone()
            .or_else(|| self.config.metrics_api_metric.clone())
            .ok_or_else(|| {
                DecodeError::InvalidMetric(
                    "Metrics API response without a `metric` header or decode.metrics_api_metric".into(),
                )
            })?;
        let cluster = headers
            .cluster_id
            .clone()
            .or_else(|| self.config.metrics_api_cluster_id.clone());
        response
            .data
            .into_iter()
            .map(|point| {
                let time_us = parse_time_us(&point.timestamp).ok_or_else(|| {
                    DecodeError::InvalidMetric(format!("timestamp {:?} is not RFC 3339", point.timestamp))
                })?;
                let mut labels = BTreeMap::new();
                let mut cluster_id = cluster.clone();
                for (key, value) in point.rest {
                    let value = json_label(value);
                    if let Some(label) = key.strip_prefix("metric.") {
                        labels.insert(label.to_owned(), value);
                    } else if let Some(res) = key.strip_prefix("resource.") {
                        if res == "kafka.id" {
                            cluster_id = Some(value.clone());
                        }
                        labels.insert(key.clone(), value);
                    } else {
                        labels.insert(key, value);
                    }
                }
                if let Some(c) = &cluster {
                    labels.entry("kafka.id".into()).or_insert_with(|| c.clone());
                }
                Ok(sample(time_us, name.clone(), point.value, None, labels, cluster_id))
            })
            .collect()
    }
}

#[derive(Deserialize)]
struct MetricsApiResponse {
    data: Vec<MetricsApiPoint>,
}

#[derive(Deserialize)]
struct MetricsApiPoint {
    timestamp: String,
    value: f64,
    #[serde(flatten)]
    rest: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CanonicalSample {
    metric: String,
    timestamp: String,
    value: f64,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    resource: BTreeMap<String, Value>,
    #[serde(default)]
    labels: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(CanonicalSample),
    Many(Vec<CanonicalSample>),
}

fn from_canonical_stream(payload: &[u8]) -> Result<Vec<MetricSample>, DecodeError> {
    let mut out = Vec::new();
    for item in serde_json::Deserializer::from_slice(payload).into_iter::<Value>() {
        let parsed: OneOrMany = serde_json::from_value(item?)
            .map_err(|e| DecodeError::InvalidMetric(format!("not a metric sample: {e}")))?;
        let list = match parsed {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        };
        for s in list {
            let time_us = parse_time_us(&s.timestamp)
                .ok_or_else(|| DecodeError::InvalidMetric(format!("timestamp {:?} is not RFC 3339", s.timestamp)))?;
            let kind = match s.kind.as_deref() {
                None => None,
                Some("gauge") => Some(MetricKind::Gauge),
                Some("counter" | "delta") => Some(MetricKind::Counter),
                Some("cumulative") => Some(MetricKind::Cumulative),
                Some(other) => {
                    return Err(DecodeError::InvalidMetric(format!(
                        "kind {other:?} is not gauge, counter or cumulative"
                    )));
                }
            };
            let mut labels: BTreeMap<String, String> = s.labels.into_iter().map(|(k, v)| (k, json_label(v))).collect();
            for (k, v) in s.resource {
                labels.insert(k, json_label(v));
            }
            let cluster_id = cluster_of(&labels);
            out.push(sample(time_us, s.metric, s.value, kind, labels, cluster_id));
        }
    }
    Ok(out)
}

fn from_otlp(request: ExportMetricsServiceRequest) -> Vec<MetricSample> {
    let mut out = Vec::new();
    for rm in request.resource_metrics {
        let resource: BTreeMap<String, String> = rm
            .resource
            .map(|r| r.attributes.into_iter().filter_map(attribute).collect())
            .unwrap_or_default();
        let cluster_id = cluster_of(&resource);
        for sm in rm.scope_metrics {
            for m in sm.metrics {
                let mut push = |name: String, time_unix_nano: u64, value: f64, kind, attrs: Vec<KeyValue>| {
                    let mut labels = resource.clone();
                    labels.extend(attrs.into_iter().filter_map(attribute));
                    let time_us = (time_unix_nano / 1_000) as i64;
                    out.push(sample(time_us, name, value, Some(kind), labels, cluster_id.clone()));
                };
                match m.data {
                    Some(metric::Data::Gauge(g)) => {
                        for p in g.data_points {
                            push(
                                m.name.clone(),
                                p.time_unix_nano,
                                number(&p.value),
                                MetricKind::Gauge,
                                p.attributes,
                            );
                        }
                    }
                    Some(metric::Data::Sum(s)) => {
                        // AggregationTemporality: 1 delta, 2 cumulative.
                        let kind = if s.aggregation_temporality == 2 {
                            MetricKind::Cumulative
                        } else {
                            MetricKind::Counter
                        };
                        for p in s.data_points {
                            push(m.name.clone(), p.time_unix_nano, number(&p.value), kind, p.attributes);
                        }
                    }
                    // Distributions become two counters, `NAME_count` and `NAME_sum`.
                    Some(metric::Data::Histogram(h)) => count_and_sum(
                        &mut push,
                        &m.name,
                        h.data_points
                            .into_iter()
                            .map(|p| (p.time_unix_nano, p.count, p.sum.unwrap_or(0.0), p.attributes)),
                    ),
                    Some(metric::Data::ExponentialHistogram(h)) => count_and_sum(
                        &mut push,
                        &m.name,
                        h.data_points
                            .into_iter()
                            .map(|p| (p.time_unix_nano, p.count, p.sum.unwrap_or(0.0), p.attributes)),
                    ),
                    Some(metric::Data::Summary(h)) => count_and_sum(
                        &mut push,
                        &m.name,
                        h.data_points
                            .into_iter()
                            .map(|p| (p.time_unix_nano, p.count, p.sum, p.attributes)),
                    ),
                    None => {}
                }
            }
        }
    }
    out
}

/// Pushes `NAME_count` and `NAME_sum` counters for each (time, count, sum, attributes) point.
fn count_and_sum(
    push: &mut impl FnMut(String, u64, f64, MetricKind, Vec<KeyValue>),
    name: &str,
    points: impl Iterator<Item = (u64, u64, f64, Vec<KeyValue>)>,
) {
    for (time, count, sum, attributes) in points {
        push(
            format!("{name}_count"),
            time,
            count as f64,
            MetricKind::Counter,
            attributes.clone(),
        );
        push(format!("{name}_sum"), time, sum, MetricKind::Counter, attributes);
    }
}

fn number(v: &Option<number_data_point::Value>) -> f64 {
    match v {
        Some(number_data_point::Value::AsDouble(d)) => *d,
        Some(number_data_point::Value::AsInt(i)) => *i as f64,
        None => 0.0,
    }
}

fn attribute(kv: KeyValue) -> Option<(String, String)> {
    let value = any_value_text(kv.value?)?;
    Some((kv.key, value))
}

fn any_value_text(v: AnyValue) -> Option<String> {
    Some(match v.value? {
        any_value::Value::StringValue(s) => s,
        any_value::Value::BoolValue(b) => b.to_string(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        any_value::Value::BytesValue(b) => String::from_utf8_lossy(&b).into_owned(),
        other => format!("{other:?}"),
    })
}

fn json_label(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn cluster_of(labels: &BTreeMap<String, String>) -> Option<String> {
    CLUSTER_KEYS.iter().find_map(|k| labels.get(*k).cloned())
}

fn sample(
    time_us: i64,
    name: String,
    value: f64,
    kind: Option<MetricKind>,
    labels: BTreeMap<String, String>,
    cluster_id: Option<String>,
) -> MetricSample {
    let kind = kind.unwrap_or_else(|| default_kind(&name));
    MetricSample {
        time_us,
        value,
        kind,
        cluster_id,
        topic: labels.get("topic").cloned(),
        partition: labels.get("partition").and_then(|p| p.parse().ok()),
        labels,
        name,
        resource_app: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/samples/metrics/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn decoder() -> MetricsDecoder {
        MetricsDecoder::new(DecodeConfig::default())
    }

    #[test]
    fn canonical_json_lines() {
        let s = decoder()
            .decode(&fixture("canonical-samples.jsonl"), &MetricHeaders::default())
            .unwrap();
        assert_eq!(s.len(), 6);
        assert_eq!(s[0].name, "io.confluent.kafka.server/received_bytes");
        assert_eq!(s[0].value, 52428800.0);
        assert_eq!(s[0].kind, MetricKind::Counter);
        assert_eq!(s[0].cluster_id.as_deref(), Some("lkc-7x3p9w"));
        assert_eq!(s[0].topic.as_deref(), Some("Tech01-orders"));
        assert_eq!(s[0].time_us, parse_time_us("2026-11-24T09:15:00Z").unwrap());
        assert_eq!(s[2].kind, MetricKind::Gauge);
        assert_eq!(s[2].partition, Some(3));
        assert_eq!(s[2].value, 8589934592.0);
        assert_eq!(s[3].name, "io.confluent.kafka.server/partition_count");
        assert_eq!(s[3].topic, None);
        assert_eq!(s[4].cluster_id.as_deref(), Some("lksqlc-5v1q2"));
        assert_eq!(s[4].kind, MetricKind::Gauge);
        assert_eq!(s[5].cluster_id.as_deref(), Some("lsrc-8k2j4"));
        assert_eq!(s[5].value, 812.0);
    }

    #[test]
    fn canonical_array_and_single() {
        let one = br#"{"metric":"m","timestamp":"2026-11-24T10:01:00Z","value":1,"resource":{"kafka.id":"lkc-1"},"labels":{"topic":"t"}}"#;
        assert_eq!(decoder().decode(one, &MetricHeaders::default()).unwrap().len(), 1);
        let many = format!(
            "[{},{}]",
            std::str::from_utf8(one).unwrap(),
            std::str::from_utf8(one).unwrap()
        );
        assert_eq!(
            decoder()
                .decode(many.as_bytes(), &MetricHeaders::default())
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn metrics_api_response_with_headers() {
        let headers = MetricHeaders {
            metric: Some("io.confluent.kafka.server/sent_bytes".into()),
            cluster_id: Some("lkc-7x3p9w".into()),
            ..MetricHeaders::default()
        };
        let s = decoder()
            .decode(&fixture("metrics-api-query-response.json"), &headers)
            .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].name, "io.confluent.kafka.server/sent_bytes");
        assert_eq!(s[1].topic.as_deref(), Some("Tech02-payments"));
        assert_eq!(s[1].value, 2097152.0);
        assert_eq!(s[1].cluster_id.as_deref(), Some("lkc-7x3p9w"));
        assert_eq!(s[1].kind, MetricKind::Counter);
        // Without a metric name it is an error, not a guess.
        let err = decoder()
            .decode(&fixture("metrics-api-query-response.json"), &MetricHeaders::default())
            .unwrap_err();
        assert_eq!(err.class(), "InvalidMetric");
    }

    #[test]
    fn otlp_json_and_proto() {
        let s = decoder()
            .decode(&fixture("otlp-json-metrics.json"), &MetricHeaders::default())
            .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "io.confluent.kafka.server/received_bytes");
        assert_eq!(s[0].kind, MetricKind::Counter);
        assert_eq!(s[0].value, 52428800.0);
        assert_eq!(s[0].cluster_id.as_deref(), Some("lkc-7x3p9w"));
        assert_eq!(s[0].topic.as_deref(), Some("Tech01-orders"));
        assert_eq!(s[0].time_us, 1795511700000000);
        assert_eq!(s[1].kind, MetricKind::Gauge);
        assert_eq!(s[1].value, 8589934592.0);

        // The same request as protobuf.
        let request: ExportMetricsServiceRequest = serde_json::from_slice(&fixture("otlp-json-metrics.json")).unwrap();
        let proto = request.encode_to_vec();
        let p = decoder().decode(&proto, &MetricHeaders::default()).unwrap();
        assert_eq!(p, s);
    }

    #[test]
    fn bad_metric_records() {
        let d = decoder();
        for (input, class) in [
            (&b"{\"metric\":\"m\"}"[..], "InvalidMetric"),
            (
                &b"{\"metric\":\"m\",\"timestamp\":\"x\",\"value\":1}"[..],
                "InvalidMetric",
            ),
            (&b"\x08\x96\x01garbage"[..], "NotProtobuf"),
            (&b"{not json"[..], "NotJson"),
            (&b""[..], "EmptyRecord"),
        ] {
            assert_eq!(
                d.decode(input, &MetricHeaders::default()).unwrap_err().class(),
                class,
                "{input:?}"
            );
        }
    }
}
