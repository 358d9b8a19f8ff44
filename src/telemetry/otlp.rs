//! auditflow's own metrics over OTLP, through the OpenTelemetry SDK and `opentelemetry-otlp`.
//!
//! There is one set of instruments: the Prometheus registry the `/metrics` page renders. Each of
//! its families becomes an OpenTelemetry observable instrument whose callback reads the same
//! values at collection time (an OpenMetrics snapshot of the registry, taken once per collection
//! and shared by every callback), so nothing is counted twice and the two views always agree.
//! Names follow the OpenTelemetry semantic conventions where one exists (`messaging.*` for what
//! the Kafka consumer read); the rest are `auditflow.<name>`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openmetrics_parser::{OpenMetricsType, OpenMetricsValue};
use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

/// Where and how to export (from `[telemetry.otlp]`; this module imports nothing of the project).
#[derive(Clone)]
pub struct ExportSettings {
    pub endpoint: String,
    /// gRPC, else HTTP/protobuf.
    pub grpc: bool,
    /// Header (gRPC metadata) names and values; values are secrets.
    pub headers: Vec<(String, String)>,
    pub interval: Duration,
    pub timeout: Duration,
}

/// The endpoint without any `user:password@`, for messages.
fn redact(endpoint: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.to_string()
        }
        Err(_) => "<not a URL>".into(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OtlpTelemetryError {
    #[error("telemetry.otlp: building the exporter for {endpoint}: {message}")]
    Exporter { endpoint: String, message: String },
    #[error("telemetry.otlp.headers: `{0}` is not a valid header")]
    Header(String),
    #[error("telemetry.otlp: reading our own metrics: {0}")]
    Snapshot(String),
}

/// Renders the registry as OpenMetrics text (`Telemetry::render` with the window's stats).
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Families to export: exposed name and whether it is a counter ([`super::Telemetry::families`]).
pub type Families = Vec<(String, bool)>;

/// Builds an OTLP exporter of one signal (`MetricExporter`, `SpanExporter`): gRPC with the
/// headers as metadata, or HTTP/protobuf posting to `<endpoint>/<path>`.
macro_rules! exporter {
    ($exporter:path, $path:literal, $config:expr, $failed:expr) => {{
        let config: &ExportSettings = $config;
        if config.grpc {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (k, v) in &config.headers {
                let key = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                    .map_err(|_| OtlpTelemetryError::Header(k.clone()))?;
                let value = v.parse().map_err(|_| OtlpTelemetryError::Header(k.clone()))?;
                metadata.insert(key, value);
            }
            <$exporter>::builder()
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(config.timeout)
                .with_metadata(metadata)
                .build()
                .map_err(|e| $failed(&e))?
        } else {
            let base = config.endpoint.trim_end_matches('/');
            let url = if base.ends_with($path) {
                base.to_owned()
            } else {
                format!("{base}/{}", $path)
            };
            <$exporter>::builder()
                .with_http()
                .with_endpoint(url)
                .with_timeout(config.timeout)
                .with_headers(config.headers.iter().cloned().collect())
                .build()
                .map_err(|e| $failed(&e))?
        }
    }};
}

/// The resource every signal carries.
fn resource() -> Resource {
    Resource::builder()
        .with_service_name("auditflow")
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A tracer provider exporting sampled spans (`ratio` of traces, children following their
/// parent) in batches. Must run inside the tokio runtime.
pub fn tracer_provider(config: &ExportSettings, ratio: f64) -> Result<SdkTracerProvider, OtlpTelemetryError> {
    let endpoint = redact(&config.endpoint);
    let failed = |e: &dyn std::fmt::Display| OtlpTelemetryError::Exporter {
        endpoint: endpoint.clone(),
        message: e.to_string(),
    };
    let exporter = exporter!(opentelemetry_otlp::SpanExporter, "v1/traces", config, failed);
    let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
        .with_resource(resource())
        .build())
}

/// The running export; dropping it stops the periodic reader after a last export.
pub struct OtlpTelemetry {
    provider: SdkMeterProvider,
}

impl OtlpTelemetry {
    /// Starts exporting every `config.interval`. Must run inside the tokio runtime.
    pub fn start(
        config: &ExportSettings,
        families: Families,
        render: Render,
    ) -> Result<OtlpTelemetry, OtlpTelemetryError> {
        let endpoint = redact(&config.endpoint);
        let failed = |e: &dyn std::fmt::Display| OtlpTelemetryError::Exporter {
            endpoint: endpoint.clone(),
            message: e.to_string(),
        };
        let exporter = exporter!(opentelemetry_otlp::MetricExporter, "v1/metrics", config, failed);
        let reader = PeriodicReader::builder(exporter, opentelemetry_sdk::runtime::Tokio)
            .with_interval(config.interval)
            .build();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(resource())
            .build();
        register(&provider, families, render);
        Ok(OtlpTelemetry { provider })
    }

    /// The end-to-end latency histogram, in seconds, with buckets from 5 ms to a minute
    /// (pass it to `Telemetry::export_latency`).
    pub fn latency_histogram(&self) -> opentelemetry::metrics::Histogram<f64> {
        self.provider
            .meter("auditflow")
            .f64_histogram("auditflow.end_to_end.duration")
            .with_unit("s")
            .with_description("Kafka record timestamp to every sink accepted, per committed batch (its oldest record)")
            .with_boundaries(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ])
            .build()
    }

    /// Exports what the instruments hold now and stops.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "telemetry.otlp: the last export failed");
        }
    }
}

/// One family's points at one collection: attributes and value.
type Points = Vec<(Vec<KeyValue>, f64)>;
/// Every family's points, by exposed name, and when they were read.
type Parsed = (Instant, Arc<HashMap<String, Points>>);

/// The registry parsed once per collection, shared by every callback of that collection.
struct Snapshot {
    render: Render,
    taken: Mutex<Option<Parsed>>,
}

impl Snapshot {
    fn points(&self, family: &str) -> Points {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        // Callbacks of one collection run back to back: one parse serves them all.
        let fresh = taken
            .as_ref()
            .filter(|(at, _)| at.elapsed() < Duration::from_millis(500))
            .map(|(_, parsed)| parsed.clone());
        let parsed = match fresh {
            Some(p) => p,
            None => {
                let parsed = Arc::new(parse(&(self.render)()).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "telemetry.otlp: our own metrics did not parse");
                    HashMap::new()
                }));
                *taken = Some((Instant::now(), parsed.clone()));
                parsed
            }
        };
        parsed.get(family).cloned().unwrap_or_default()
    }
}

/// Family name -> points, from OpenMetrics text.
fn parse(text: &str) -> Result<HashMap<String, Points>, OtlpTelemetryError> {
    Ok(parse_families(text)?
        .into_iter()
        .map(|(name, _, points)| (name, points))
        .collect())
}

fn parse_families(text: &str) -> Result<Vec<(String, OpenMetricsType, Points)>, OtlpTelemetryError> {
    let exposition = openmetrics_parser::openmetrics::parse_openmetrics(text)
        .map_err(|e| OtlpTelemetryError::Snapshot(e.to_string()))?;
    let mut out = Vec::new();
    for family in exposition.families.into_values() {
        let mut points = Vec::new();
        for sample in family.iter_samples() {
            let value = match &sample.value {
                OpenMetricsValue::Counter(c) => c.value.as_f64(),
                OpenMetricsValue::Gauge(n) | OpenMetricsValue::Unknown(n) => n.as_f64(),
                _ => continue,
            };
            let attributes = sample
                .get_labelset()
                .map(|set| {
                    set.iter()
                        .map(|(k, v)| KeyValue::new(attribute_name(k), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            points.push((attributes, value));
        }
        out.push((family.family_name.clone(), family.family_type, points));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The OpenTelemetry name of a registry family, and its unit.
pub fn otel_name(family: &str) -> (String, &'static str) {
    let name = family.strip_prefix("auditflow_").unwrap_or(family);
    match name {
        // Semantic conventions: messaging client metrics for what the consumer read.
        "records_in" => ("messaging.client.consumed.messages".into(), "{message}"),
        "end_to_end_latency_ms" => ("auditflow.end_to_end.latency".into(), "ms"),
        "rule_eval_micros" => ("auditflow.rule.evaluation.time".into(), "us"),
        "window_bytes" => ("auditflow.window.bytes".into(), "By"),
        "consumer_lag" => ("messaging.kafka.consumer.lag".into(), "{message}"),
        _ => (format!("auditflow.{name}"), ""),
    }
}

fn attribute_name(label: &str) -> String {
    match label {
        "stream" => "auditflow.stream".into(),
        "sink" => "auditflow.sink".into(),
        "rule" => "auditflow.rule.id".into(),
        "table" => "auditflow.table".into(),
        "topic" => "messaging.destination.name".into(),
        "partition" => "messaging.destination.partition.id".into(),
        other => other.into(),
    }
}

/// One observable instrument per registry family, each reading the shared snapshot.
fn register(provider: &SdkMeterProvider, families: Families, render: Render) {
    let meter = provider.meter("auditflow");
    let snapshot = Arc::new(Snapshot {
        render,
        taken: Mutex::new(None),
    });
    for (family, counter) in families {
        let (name, unit) = otel_name(&family);
        let extra: Vec<KeyValue> = if family == "auditflow_records_in" {
            vec![KeyValue::new("messaging.system", "kafka")]
        } else {
            Vec::new()
        };
        let snapshot = snapshot.clone();
        let observe = move |observe_one: &dyn Fn(f64, &[KeyValue])| {
            for (mut attributes, value) in snapshot.points(&family) {
                attributes.extend(extra.iter().cloned());
                observe_one(value, &attributes);
            }
        };
        match counter {
            true => {
                meter
                    .f64_observable_counter(name)
                    .with_unit(unit)
                    .with_callback(move |o| observe(&|v, a| o.observe(v, a)))
                    .build();
            }
            false => {
                meter
                    .f64_observable_gauge(name)
                    .with_unit(unit)
                    .with_callback(move |o| observe(&|v, a| o.observe(v, a)))
                    .build();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{StreamLabel, Telemetry};

    #[test]
    fn every_family_of_the_registry_is_read_with_its_labels() {
        let t = Telemetry::new();
        t.records_in.get_or_create(&StreamLabel { stream: "audit" }).inc_by(7);
        t.observe_latency_ms(12);
        let fams = parse_families(&t.render(&[])).unwrap();
        let records = fams.iter().find(|f| f.0 == "auditflow_records_in").unwrap();
        assert_eq!(records.1, OpenMetricsType::Counter);
        assert_eq!(records.2.len(), 1);
        assert_eq!(records.2[0].1, 7.0);
        assert_eq!(records.2[0].0, vec![KeyValue::new("auditflow.stream", "audit")]);
        assert!(
            fams.iter()
                .any(|f| f.0 == "auditflow_end_to_end_latency_ms" && f.1 == OpenMetricsType::Gauge)
        );
        // Declared before any value exists: a family without members yet is still listed.
        let declared = t.families();
        assert!(declared.contains(&("auditflow_dead_letters".to_owned(), true)));
        assert!(declared.contains(&("auditflow_hec_refused".to_owned(), false)));
        assert!(
            parse_families(&t.render(&[]))
                .unwrap()
                .iter()
                .all(|(name, kind, _)| { declared.contains(&(name.clone(), *kind == OpenMetricsType::Counter)) })
        );
        assert_eq!(
            otel_name("auditflow_records_in").0,
            "messaging.client.consumed.messages"
        );
        assert_eq!(otel_name("auditflow_dead_letters").0, "auditflow.dead_letters");
    }
}
