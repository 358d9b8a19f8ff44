//! OTLP sink (gRPC, or HTTP/protobuf): audit events and alerts as log records, metric samples as
//! gauges and sums with the cluster id as a resource attribute.
//!
//! It speaks the protocol through the generated OTLP messages and clients of
//! `opentelemetry-proto` rather than the SDK's batch exporters, because at-least-once needs to
//! know when *this* batch was accepted: a batch is acknowledged only after the collector answered
//! OK. gRPC UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED, HTTP 429 and 5xx, and
//! transport errors are retried with backoff (honouring `Retry-After`); partial successes are
//! counted and logged; anything else is a permanent rejection and its events are dead-lettered.

use std::collections::BTreeMap;
use std::time::Duration;

use std::path::PathBuf;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde::Deserialize;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{SinkError, SinkItem, backoff};
use crate::config::{ConfigError, Secret, duration, expand_env, redact_url};
use crate::event::{Alert, AlertStatus, AuditRow, Batch, MetricKind, MetricSample, now_us};
use crate::source::dead_letter::DeadLetters;
use crate::telemetry::{SinkLabel, Telemetry};

/// `[sinks.otlp]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpSinkConfig {
    /// Collector endpoint: for gRPC the server (`http://127.0.0.1:4317`), for HTTP/protobuf the
    /// base URL (`http://127.0.0.1:4318`) to which `/v1/logs` and `/v1/metrics` are appended.
    /// `https://` turns TLS on.
    pub endpoint: String,
    /// `grpc` (default) or `http/protobuf`, as `OTEL_EXPORTER_OTLP_PROTOCOL` spells them.
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Metadata (gRPC) or HTTP headers sent with every request (e.g. an API key); values expand
    /// `${VAR}` and `${file:PATH}`.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Per-request timeout. Default `10s`.
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// TLS settings for an `https://` endpoint; the system roots are trusted by default.
    #[serde(default)]
    pub tls: OtlpTlsConfig,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// `[sinks.otlp.tls]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpTlsConfig {
    /// CA certificate (PEM) to trust in addition to the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Client private key (PEM, PKCS#8) for mutual TLS.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Server name to verify instead of the endpoint's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

fn default_timeout() -> String {
    "10s".into()
}

impl OtlpSinkConfig {
    pub fn validated(mut self, origin: &str) -> Result<OtlpSinkConfig, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            key: format!("sinks.otlp.{key}"),
            message,
        };
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            return Err(invalid(
                "endpoint",
                format!("`{}` is not an http:// or https:// URL", redact_url(&self.endpoint)),
            ));
        }
        for (k, v) in self.headers.iter_mut() {
            *v = Secret::new(expand_env(v.expose()).map_err(|m| invalid(&format!("headers.{k}"), m))?);
        }
        duration(origin, "sinks.otlp.timeout", &self.timeout)?;
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(invalid(
                "tls",
                "cert_file and key_file go together (mutual TLS needs both)".into(),
            ));
        }
        let has_tls = self.tls.ca_file.is_some() || self.tls.cert_file.is_some() || self.tls.server_name.is_some();
        if has_tls && !self.endpoint.starts_with("https://") {
            return Err(invalid(
                "tls",
                format!(
                    "TLS settings need an https:// endpoint, not `{}`",
                    redact_url(&self.endpoint)
                ),
            ));
        }
        Ok(self)
    }

    fn timeout(&self) -> Duration {
        humantime::parse_duration(&self.timeout).unwrap_or(Duration::from_secs(10))
    }
}

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
    let mut opt = |key: &str, value: &Option<String>| {
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

/// Why an export failed, and whether trying again can help.
#[derive(Debug)]
struct ExportFailure {
    retriable: bool,
    message: String,
    /// The receiver's `Retry-After` (HTTP), if any.
    retry_after: Option<Duration>,
}

impl ExportFailure {
    fn from_status(status: tonic::Status) -> ExportFailure {
        use tonic::Code;
        let retriable = matches!(
            status.code(),
            Code::Unavailable
                | Code::ResourceExhausted
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::Cancelled
                | Code::Unknown
        );
        ExportFailure {
            retriable,
            message: format!("gRPC {:?}: {}", status.code(), status.message()),
            retry_after: None,
        }
    }
}

/// Rejected items reported in a partial-success response, and the receiver's message.
type Partial = Option<(i64, String)>;

/// How requests reach the collector.
enum Transport {
    Grpc {
        logs: Box<LogsServiceClient<Channel>>,
        metrics: Box<MetricsServiceClient<Channel>>,
    },
    HttpProtobuf {
        client: reqwest::Client,
        logs_url: String,
        metrics_url: String,
    },
}

fn read_file(what: &str, path: &std::path::Path) -> Result<Vec<u8>, SinkError> {
    std::fs::read(path).map_err(|e| SinkError::Rejected {
        sink: "otlp",
        message: format!("reading tls.{what} {}: {e}", path.display()),
    })
}

fn grpc_channel(config: &OtlpSinkConfig) -> Result<Channel, SinkError> {
    let error = |message: String| SinkError::Rejected { sink: "otlp", message };
    let mut endpoint = Endpoint::from_shared(config.endpoint.clone())
        .map_err(|e| error(format!("endpoint {}: {e}", config.endpoint)))?
        .timeout(config.timeout())
        .connect_timeout(Duration::from_secs(5));
    if config.endpoint.starts_with("https://") {
        let tls = &config.tls;
        let mut tls_config = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &tls.ca_file {
            tls_config = tls_config.ca_certificate(Certificate::from_pem(read_file("ca_file", ca)?));
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            tls_config = tls_config.identity(Identity::from_pem(
                read_file("cert_file", cert)?,
                read_file("key_file", key)?,
            ));
        }
        if let Some(name) = &tls.server_name {
            tls_config = tls_config.domain_name(name.clone());
        }
        endpoint = endpoint
            .tls_config(tls_config)
            .map_err(|e| error(format!("TLS settings for {}: {e}", config.endpoint)))?;
    }
    Ok(endpoint.connect_lazy())
}

fn http_client(config: &OtlpSinkConfig) -> Result<reqwest::Client, SinkError> {
    let error = |message: String| SinkError::Rejected { sink: "otlp", message };
    let mut builder = reqwest::Client::builder()
        .timeout(config.timeout())
        .connect_timeout(Duration::from_secs(5));
    let tls = &config.tls;
    if let Some(ca) = &tls.ca_file {
        let cert = reqwest::Certificate::from_pem(&read_file("ca_file", ca)?)
            .map_err(|e| error(format!("tls.ca_file {}: {e}", ca.display())))?;
        builder = builder.add_root_certificate(cert);
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        let identity = reqwest::Identity::from_pkcs8_pem(&read_file("cert_file", cert)?, &read_file("key_file", key)?)
            .map_err(|e| error(format!("tls.cert_file/key_file: {e}")))?;
        builder = builder.identity(identity);
    }
    if tls.server_name.is_some() {
        return Err(error(
            "tls.server_name is supported with protocol = \"grpc\" only; use the server's name in endpoint".into(),
        ));
    }
    builder
        .build()
        .map_err(|e| error(format!("building the HTTP client: {e}")))
}

pub struct OtlpSink {
    config: OtlpSinkConfig,
    transport: Transport,
    dead_letters: DeadLetters,
    telemetry: Telemetry,
    label: SinkLabel,
}

impl OtlpSink {
    pub fn new(config: OtlpSinkConfig, dead_letters: DeadLetters, telemetry: Telemetry) -> Result<OtlpSink, SinkError> {
        let transport = match config.protocol {
            OtlpProtocol::Grpc => {
                let channel = grpc_channel(&config)?;
                Transport::Grpc {
                    logs: Box::new(LogsServiceClient::new(channel.clone())),
                    metrics: Box::new(MetricsServiceClient::new(channel)),
                }
            }
            OtlpProtocol::HttpProtobuf => {
                let base = config.endpoint.trim_end_matches('/');
                Transport::HttpProtobuf {
                    client: http_client(&config)?,
                    logs_url: format!("{base}/v1/logs"),
                    metrics_url: format!("{base}/v1/metrics"),
                }
            }
        };
        Ok(OtlpSink {
            config,
            transport,
            dead_letters,
            telemetry,
            label: SinkLabel { sink: "otlp" },
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        for (k, v) in &self.config.headers {
            if let (Ok(key), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()),
                v.expose()
                    .parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>(),
            ) {
                request.metadata_mut().insert(key, value);
            }
        }
        request
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<SinkItem>) {
        while let Some(item) = rx.recv().await {
            if let Some(logs) = logs_request(&item.batch)
                && let Err(failure) = self.export(Signal::Logs(logs)).await
            {
                // Refused for what it is: park the audit events, never drop them.
                let message = format!("OTLP {}", failure.message);
                for row in &item.batch.audit {
                    self.dead_letters
                        .send_until_done(&row.raw, "OtlpRejected", &message, None)
                        .await;
                }
            }
            if let Some(metrics) = metrics_request(&item.batch.metrics)
                && let Err(failure) = self.export(Signal::Metrics(metrics)).await
            {
                let message = format!("OTLP {}", failure.message);
                let mut lines = Vec::new();
                crate::sinks::file::encode(
                    &Batch {
                        metrics: item.batch.metrics.clone(),
                        ..Batch::default()
                    },
                    &mut lines,
                );
                self.dead_letters
                    .send_until_done(&lines, "OtlpRejected", &message, None)
                    .await;
            }
            self.telemetry
                .sink_events
                .get_or_create(&self.label)
                .inc_by(item.batch.len() as u64);
            item.ack.accept();
        }
    }

    /// Exports until the receiver accepts (counting partial rejections) or refuses for good.
    async fn export(&mut self, signal: Signal) -> Result<(), ExportFailure> {
        let mut attempt: u32 = 0;
        loop {
            match self.send_once(&signal).await {
                Ok(partial) => {
                    if let Some((rejected, message)) = partial.filter(|(n, _)| *n > 0) {
                        tracing::warn!(rejected, message = %message, signal = signal.name(), "OTLP receiver rejected part of a request");
                        self.telemetry.otlp_partial_rejections.inc_by(rejected.max(0) as u64);
                    }
                    return Ok(());
                }
                Err(failure) if failure.retriable => {
                    tracing::warn!(message = %failure.message, attempt, signal = signal.name(), "OTLP export failed; retrying");
                    self.telemetry.sink_retries.get_or_create(&self.label).inc();
                    let wait = backoff(attempt, Duration::from_secs(10));
                    let wait = failure
                        .retry_after
                        .map_or(wait, |r| r.min(Duration::from_secs(60)).max(wait));
                    tokio::time::sleep(wait).await;
                    attempt = attempt.saturating_add(1);
                }
                Err(failure) => {
                    // The receiver refuses this request for what it is: retrying cannot help.
                    tracing::error!(message = %failure.message, signal = signal.name(), "OTLP receiver rejected a request permanently");
                    return Err(failure);
                }
            }
        }
    }

    async fn send_once(&mut self, signal: &Signal) -> Result<Partial, ExportFailure> {
        match (&mut self.transport, signal) {
            (Transport::Grpc { logs, .. }, Signal::Logs(m)) => {
                let mut client = (**logs).clone();
                let response = client
                    .export(self.request(m.clone()))
                    .await
                    .map_err(ExportFailure::from_status)?;
                Ok(response
                    .into_inner()
                    .partial_success
                    .map(|p| (p.rejected_log_records, p.error_message)))
            }
            (Transport::Grpc { metrics, .. }, Signal::Metrics(m)) => {
                let mut client = (**metrics).clone();
                let response = client
                    .export(self.request(m.clone()))
                    .await
                    .map_err(ExportFailure::from_status)?;
                Ok(response
                    .into_inner()
                    .partial_success
                    .map(|p| (p.rejected_data_points, p.error_message)))
            }
            (Transport::HttpProtobuf { client, logs_url, .. }, Signal::Logs(m)) => {
                let body = http_post(client, logs_url, &self.config.headers, m.encode_to_vec()).await?;
                let response = ExportLogsServiceResponse::decode(body.as_ref()).map_err(|e| ExportFailure {
                    retriable: false,
                    message: format!("undecodable response from {logs_url}: {e}"),
                    retry_after: None,
                })?;
                Ok(response
                    .partial_success
                    .map(|p| (p.rejected_log_records, p.error_message)))
            }
            (
                Transport::HttpProtobuf {
                    client, metrics_url, ..
                },
                Signal::Metrics(m),
            ) => {
                let body = http_post(client, metrics_url, &self.config.headers, m.encode_to_vec()).await?;
                let response = ExportMetricsServiceResponse::decode(body.as_ref()).map_err(|e| ExportFailure {
                    retriable: false,
                    message: format!("undecodable response from {metrics_url}: {e}"),
                    retry_after: None,
                })?;
                Ok(response
                    .partial_success
                    .map(|p| (p.rejected_data_points, p.error_message)))
            }
        }
    }
}

/// One OTLP request.
enum Signal {
    Logs(ExportLogsServiceRequest),
    Metrics(ExportMetricsServiceRequest),
}

impl Signal {
    fn name(&self) -> &'static str {
        match self {
            Signal::Logs(_) => "logs",
            Signal::Metrics(_) => "metrics",
        }
    }
}

/// POSTs a protobuf body as OTLP/HTTP specifies; the response body on 200, else why not.
async fn http_post(
    client: &reqwest::Client,
    url: &str,
    headers: &BTreeMap<String, Secret>,
    body: Vec<u8>,
) -> Result<bytes::Bytes, ExportFailure> {
    let mut request = client
        .post(url)
        .header("Content-Type", "application/x-protobuf")
        .body(body);
    for (k, v) in headers {
        request = request.header(k.as_str(), v.expose());
    }
    let response = request.send().await.map_err(|e| ExportFailure {
        retriable: true,
        message: format!("POST {url}: {e}"),
        retry_after: None,
    })?;
    let status = response.status();
    if status.is_success() {
        return response.bytes().await.map_err(|e| ExportFailure {
            retriable: true,
            message: format!("reading the response of {url}: {e}"),
            retry_after: None,
        });
    }
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = response.text().await.unwrap_or_default();
    // OTLP/HTTP: 429, 502, 503 and 504 are retryable; other 5xx are treated the same (a failing
    // collector is not a reason to drop data); other 4xx mean this request will never be taken.
    Err(ExportFailure {
        retriable: status.as_u16() == 429 || status.is_server_error(),
        message: format!(
            "HTTP {} from {url}: {}",
            status.as_u16(),
            text.chars().filter(|c| !c.is_control()).take(200).collect::<String>()
        ),
        retry_after,
    })
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
