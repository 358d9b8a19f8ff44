//! Self-metrics: what every stage did, exported as Prometheus text on `/metrics` and, with
//! `[telemetry.otlp]`, through the OpenTelemetry SDK ([`otlp`]) from the same instruments.
//!
//! Counters are lock-free; end-to-end latency (Kafka record timestamp to every sink accepted)
//! goes into an HDR histogram whose percentiles are exported as gauges, and, with OTLP on, into
//! an OpenTelemetry histogram (`auditflow.end_to_end.duration`, seconds) at the same call.

pub mod otlp;

use std::sync::{Arc, Mutex, OnceLock};

use hdrhistogram::Histogram;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    pub stream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    pub table: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    /// `http` or `postgres`.
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub topic: String,
    pub partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok`, `rate_limited`, `refused` or `failed`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabel {
    /// A configured resource id, or `unknown`.
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuantileLabel {
    pub quantile: &'static str,
}

/// Every counter of the service. Cheap to clone (all handles share their values).
#[derive(Clone)]
pub struct Telemetry {
    registry: Arc<Registry>,
    /// Every registered family: its exposed name (`auditflow_records_in`) and whether it is a
    /// counter, for exporters that must declare instruments before any value exists.
    families: Arc<Vec<(String, bool)>>,
    /// Kafka records read, by stream (`audit`, `metrics`).
    pub records_in: Family<StreamLabel, Counter>,
    /// Rows decoded, by stream.
    pub rows_decoded: Family<StreamLabel, Counter>,
    /// Records sent to the dead-letter topic, by error class.
    pub dead_letters: Family<ClassLabel, Counter>,
    /// Audit events dropped as duplicates of an id seen within the horizon.
    pub duplicates: Counter,
    /// Alert notifications raised, by rule.
    pub alerts: Family<RuleLabel, Counter>,
    /// Events (audit, metric, alert) accepted by each sink.
    pub sink_events: Family<SinkLabel, Counter>,
    /// Requests retried by each sink.
    pub sink_retries: Family<SinkLabel, Counter>,
    /// Log records and data points an OTLP receiver rejected in partial-success responses.
    pub otlp_partial_rejections: Counter,
    /// Events sent to HEC again because their acknowledgement never came (possible duplicates).
    pub hec_resent_events: Counter,
    /// 1 while HEC refuses the token or configuration (data held, consumer paused), else 0.
    pub hec_refused: Gauge,
    /// Batches whose offsets were stored for commit.
    pub batches_committed: Counter,
    /// Microseconds spent evaluating rules.
    pub rule_eval_micros: Counter,
    /// New rule series refused because a rule reached `max_series`.
    pub rule_series_shed: Gauge,
    /// Rows waiting for their table's event-time clock before the rules see them.
    pub rule_rows_waiting: Gauge,
    /// Times a full reorder buffer was handed to the rules whole, ahead of the clock.
    pub rule_reorder_forced: Gauge,
    /// Failed logins (wrong token or password), by SQL endpoint.
    pub auth_failures: Family<EndpointLabel, Counter>,
    /// Connections refused or closed by a connection limit or timeout, by SQL endpoint.
    pub connections_refused: Family<EndpointLabel, Counter>,
    /// Records behind the high watermark per assigned partition (librdkafka's statistics).
    pub consumer_lag: Family<PartitionLabel, Gauge>,
    /// Metrics API export requests, by outcome (`ok`, `rate_limited`, `refused`, `failed`).
    pub metrics_api_requests: Family<OutcomeLabel, Counter>,
    /// Samples the Metrics API poller fed in (or published), new ones only.
    pub metrics_api_samples: Counter,
    /// Samples polled again (the same series and timestamp) and dropped.
    pub metrics_api_repeats: Counter,
    /// `confluent_scrape_resource_access_error` series seen, by resource.
    pub metrics_api_access_errors: Family<ResourceLabel, Counter>,
    /// 1 while the Metrics API refuses the credentials or request, else 0.
    pub metrics_api_refused: Gauge,
    /// Unix time (seconds) of the last successful export.
    pub metrics_api_last_success: Gauge,
    /// Window rows and bytes, by table (set when scraped).
    window_rows: Family<TableLabel, Gauge>,
    window_bytes: Family<TableLabel, Gauge>,
    window_evicted: Family<TableLabel, Gauge>,
    latency_ms: Family<QuantileLabel, Gauge>,
    latency: Arc<Mutex<Histogram<u64>>>,
    /// With `[telemetry.otlp]`: where each latency observation also goes. The SDK has no
    /// observable histogram that could read the HDR one, so the observation is recorded into
    /// both at the one place it is made.
    latency_otlp: Arc<OnceLock<opentelemetry::metrics::Histogram<f64>>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let mut registry = Registry::with_prefix("auditflow");
        let mut families = Vec::new();
        let t = Telemetry {
            registry: Arc::new(Registry::default()),
            families: Arc::new(Vec::new()),
            records_in: Family::default(),
            rows_decoded: Family::default(),
            dead_letters: Family::default(),
            duplicates: Counter::default(),
            alerts: Family::default(),
            sink_events: Family::default(),
            sink_retries: Family::default(),
            batches_committed: Counter::default(),
            hec_resent_events: Counter::default(),
            hec_refused: Gauge::default(),
            otlp_partial_rejections: Counter::default(),
            rule_eval_micros: Counter::default(),
            rule_series_shed: Gauge::default(),
            rule_rows_waiting: Gauge::default(),
            rule_reorder_forced: Gauge::default(),
            auth_failures: Family::default(),
            connections_refused: Family::default(),
            consumer_lag: Family::default(),
            metrics_api_requests: Family::default(),
            metrics_api_samples: Counter::default(),
            metrics_api_repeats: Counter::default(),
            metrics_api_access_errors: Family::default(),
            metrics_api_refused: Gauge::default(),
            metrics_api_last_success: Gauge::default(),
            window_rows: Family::default(),
            window_bytes: Family::default(),
            window_evicted: Family::default(),
            latency_ms: Family::default(),
            latency: Arc::new(Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000, 3).expect("static histogram bounds are valid"),
            )),
            latency_otlp: Arc::new(OnceLock::new()),
        };
        register(
            &mut registry,
            &mut families,
            "records_in",
            "Kafka records read",
            t.records_in.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "rows_decoded",
            "Rows decoded from Kafka records",
            t.rows_decoded.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "dead_letters",
            "Records sent to the dead-letter topic",
            t.dead_letters.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "duplicates_dropped",
            "Audit events dropped as duplicates",
            t.duplicates.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "alerts",
            "Alert notifications raised",
            t.alerts.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "sink_events",
            "Events accepted by a sink",
            t.sink_events.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "sink_retries",
            "Sink requests retried",
            t.sink_retries.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "batches_committed",
            "Batches whose offsets were stored",
            t.batches_committed.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "rule_eval_micros",
            "Microseconds spent evaluating rules",
            t.rule_eval_micros.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "rule_series_shed",
            "Rule series refused because a rule reached max_series",
            t.rule_series_shed.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "rule_rows_waiting",
            "Audit and metrics rows waiting for their table's event-time clock (the slowest active partition)",
            t.rule_rows_waiting.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "rule_reorder_forced",
            "Times the rules' reorder buffer was full and released whole, ahead of the clock",
            t.rule_reorder_forced.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "hec_resent_events",
            "Events sent to HEC again after an acknowledgement timeout (possible duplicates)",
            t.hec_resent_events.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "hec_refused",
            "1 while Splunk HEC refuses the token or configuration (data held, consumption paused)",
            t.hec_refused.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "otlp_partial_rejections",
            "Log records and data points rejected in OTLP partial-success responses",
            t.otlp_partial_rejections.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "sql_auth_failures",
            "Failed logins on a SQL endpoint (wrong token or password)",
            t.auth_failures.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "sql_connections_refused",
            "SQL endpoint connections closed by a connection limit or timeout",
            t.connections_refused.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "consumer_lag",
            "Records behind the high watermark, per assigned partition",
            t.consumer_lag.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "metrics_api_requests",
            "Confluent Cloud Metrics API export requests, by outcome",
            t.metrics_api_requests.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "metrics_api_samples",
            "Metric samples polled from the Confluent Cloud Metrics API (new ones only)",
            t.metrics_api_samples.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "metrics_api_repeated_samples",
            "Metric samples polled again (same series and timestamp) and dropped",
            t.metrics_api_repeats.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "metrics_api_access_errors",
            "confluent_scrape_resource_access_error series in Metrics API exports, by resource",
            t.metrics_api_access_errors.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "metrics_api_refused",
            "1 while the Confluent Cloud Metrics API refuses the credentials or request",
            t.metrics_api_refused.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "metrics_api_last_success_seconds",
            "Unix time of the last successful Metrics API export",
            t.metrics_api_last_success.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "window_rows",
            "Rows held in the SQL window",
            t.window_rows.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "window_bytes",
            "Bytes held in the SQL window",
            t.window_bytes.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "window_evicted_rows",
            "Rows evicted from the SQL window",
            t.window_evicted.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "end_to_end_latency_ms",
            "Kafka record timestamp to all sinks accepted, percentiles",
            t.latency_ms.clone(),
        );
        Telemetry {
            registry: Arc::new(registry),
            families: Arc::new(families),
            ..t
        }
    }

    /// Every registered family's exposed name and whether it is a counter (else a gauge).
    pub fn families(&self) -> &[(String, bool)] {
        &self.families
    }

    /// Records one end-to-end latency observation.
    pub fn observe_latency_ms(&self, ms: u64) {
        let mut h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        h.saturating_record(ms.max(1));
        drop(h);
        if let Some(otlp) = self.latency_otlp.get() {
            otlp.record(ms as f64 / 1000.0, &[]);
        }
    }

    /// Sends latency observations to `histogram` as well (once; later calls are ignored).
    pub fn export_latency(&self, histogram: opentelemetry::metrics::Histogram<f64>) {
        let _ = self.latency_otlp.set(histogram);
    }

    /// Latency percentile in milliseconds (0 when nothing was observed).
    pub fn latency_percentile_ms(&self, q: f64) -> u64 {
        let h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        if h.is_empty() { 0 } else { h.value_at_quantile(q) }
    }

    /// Counter value of a labelled family member, for tests and the demo's progress line.
    pub fn dead_letter_count(&self) -> u64 {
        // Families cannot be iterated; the demo and tests ask per class instead.
        [
            "RecordTooLarge",
            "EmptyRecord",
            "NotJson",
            "SchemaViolation",
            "InvalidEvent",
            "InvalidMetric",
            "NotProtobuf",
            "HecRejected",
        ]
        .iter()
        .map(|c| {
            self.dead_letters
                .get_or_create(&ClassLabel { class: (*c).into() })
                .get()
        })
        .sum()
    }

    /// Prometheus text exposition, with the window's gauges set from `tables` (read by the
    /// caller when scraped) and the latency gauges refreshed.
    pub fn render(&self, tables: &[TableStats]) -> String {
        for t in tables {
            let l = TableLabel { table: t.table };
            self.window_rows.get_or_create(&l).set(t.rows as i64);
            self.window_bytes.get_or_create(&l).set(t.bytes as i64);
            self.window_evicted.get_or_create(&l).set(t.evicted_rows as i64);
        }
        for (label, q) in [("0.5", 0.5), ("0.9", 0.9), ("0.99", 0.99), ("0.999", 0.999)] {
            self.latency_ms
                .get_or_create(&QuantileLabel { quantile: label })
                .set(self.latency_percentile_ms(q) as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Registers `metric` and notes its family for [`Telemetry::families`].
fn register(
    registry: &mut Registry,
    families: &mut Vec<(String, bool)>,
    name: &str,
    help: &str,
    metric: impl prometheus_client::registry::Metric + Clone,
) {
    let counter = matches!(metric.metric_type(), prometheus_client::metrics::MetricType::Counter);
    families.push((format!("auditflow_{name}"), counter));
    registry.register(name, help, metric);
}

/// What one SQL window table holds when scraped.
#[derive(Debug, Clone, Copy)]
pub struct TableStats {
    pub table: &'static str,
    pub rows: usize,
    pub bytes: usize,
    pub evicted_rows: usize,
}
