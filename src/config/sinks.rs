//! `[sinks.*]`: where batches go. Each section is read as written (`Raw*`, strings as in the
//! file) and validated into the typed config its sink runs with: durations parsed, secrets
//! expanded, every default in one place.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Check, ConfigError, Secret, default_true, redact_url};

/// `[sinks]`: every sink is optional; with none configured, the file sink writes
/// `out/events.jsonl`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSinks {
    pub splunk_hec: Option<RawHecSink>,
    pub otlp: Option<RawOtlpSink>,
    pub file: Option<FileSinkConfig>,
}

#[derive(Debug, Clone, Default)]
pub struct SinksConfig {
    pub splunk_hec: Option<HecSinkConfig>,
    pub otlp: Option<OtlpSinkConfig>,
    pub file: Option<FileSinkConfig>,
}

impl RawSinks {
    /// With no sink configured, the file sink writes `out/events.jsonl`.
    pub(super) fn validate(self, check: Check<'_>) -> Result<SinksConfig, ConfigError> {
        let mut sinks = SinksConfig {
            splunk_hec: self.splunk_hec.map(|s| s.validate(check)).transpose()?,
            otlp: self.otlp.map(|s| s.validate(check)).transpose()?,
            file: self.file,
        };
        if sinks.splunk_hec.is_none() && sinks.otlp.is_none() && sinks.file.is_none() {
            sinks.file = Some(FileSinkConfig::default());
        }
        Ok(sinks)
    }
}

/// `[sinks.splunk_hec]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHecSink {
    /// Base URLs of HEC endpoints (`https://splunk:8088`); requests fail over across them.
    /// `${VAR}` expands.
    pub endpoints: Vec<String>,
    /// HEC token; `${VAR}` expands from the environment. Never logged.
    pub token: Secret,
    /// Index for audit events. Default: the token's default index.
    #[serde(default)]
    pub index: Option<String>,
    /// Index for alerts. Default: `index`.
    #[serde(default)]
    pub alert_index: Option<String>,
    /// Metrics index for metric samples. Default: `index`.
    #[serde(default)]
    pub metrics_index: Option<String>,
    /// `source` of every event. Default `auditflow`.
    #[serde(default = "default_source")]
    pub source: String,
    /// `host` of every event. Default: none (Splunk uses the sender's address).
    #[serde(default)]
    pub host: Option<String>,
    /// Largest request body before compression. Default 1048576.
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// Most events in one request. Default 2000.
    #[serde(default = "default_batch_max_events")]
    pub batch_max_events: usize,
    /// Longest wait to fill a request, e.g. `200ms`. Default `200ms`.
    #[serde(default = "default_linger")]
    pub batch_linger: String,
    /// Gzip request bodies (level 1). Default true.
    #[serde(default = "default_true")]
    pub compression: bool,
    /// Per-request timeout. Default `30s`.
    #[serde(default = "default_hec_timeout")]
    pub request_timeout: String,
    /// Verify the endpoint's TLS certificate. Default true; turn off only for a lab.
    #[serde(default = "default_true")]
    pub tls_verify: bool,
    /// Extra CA certificate (PEM) to trust.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Indexer acknowledgement: a batch counts as delivered only once HEC acknowledges its
    /// `ackId` on `/services/collector/ack` (the token must have acknowledgement enabled).
    /// Default false.
    #[serde(default)]
    pub acknowledgements: bool,
    /// How long to wait for an acknowledgement before sending the batch again. Default `60s`.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout: String,
    /// How often pending acknowledgements are polled. Default `500ms`.
    #[serde(default = "default_ack_poll")]
    pub ack_poll_interval: String,
    /// Connections sending in parallel; each has its own HTTP client and its own channel GUID
    /// per endpoint. Default 2.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Batches one connection may have sent and still await acknowledgement for, before it
    /// stops taking more (bounds memory while the indexer is slow). Default 8.
    #[serde(default = "default_max_pending_acks")]
    pub max_pending_acks: usize,
}

fn default_concurrency() -> usize {
    2
}
fn default_max_pending_acks() -> usize {
    8
}

fn default_ack_timeout() -> String {
    "60s".into()
}
fn default_ack_poll() -> String {
    "500ms".into()
}

fn default_source() -> String {
    "auditflow".into()
}
fn default_batch_max_bytes() -> usize {
    1 << 20
}
fn default_batch_max_events() -> usize {
    2000
}
fn default_linger() -> String {
    "200ms".into()
}
fn default_hec_timeout() -> String {
    "30s".into()
}

/// `[sinks.splunk_hec]`, validated (see [`RawHecSink`] for what each setting means).
#[derive(Debug, Clone)]
pub struct HecSinkConfig {
    pub endpoints: Vec<String>,
    pub token: Secret,
    pub index: Option<String>,
    pub alert_index: Option<String>,
    pub metrics_index: Option<String>,
    pub source: String,
    pub host: Option<String>,
    pub batch_max_bytes: usize,
    pub batch_max_events: usize,
    pub batch_linger: Duration,
    pub compression: bool,
    pub request_timeout: Duration,
    pub tls_verify: bool,
    pub ca_file: Option<PathBuf>,
    pub acknowledgements: bool,
    pub ack_timeout: Duration,
    pub ack_poll_interval: Duration,
    pub concurrency: usize,
    pub max_pending_acks: usize,
}

/// Every value must be an `http://` or `https://` URL.
pub(super) fn http_urls<'u>(
    check: Check<'_>,
    key: &str,
    urls: impl IntoIterator<Item = &'u String>,
) -> Result<(), ConfigError> {
    for u in urls {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(check.invalid(key, format!("`{}` is not an http:// or https:// URL", redact_url(u))));
        }
    }
    Ok(())
}

impl RawHecSink {
    /// Expands the token and checks every value (no IO).
    pub fn validate(self, check: Check<'_>) -> Result<HecSinkConfig, ConfigError> {
        let key = |k: &str| format!("sinks.splunk_hec.{k}");
        if self.endpoints.is_empty() {
            return Err(check.invalid(&key("endpoints"), "at least one endpoint is needed"));
        }
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| check.expand(&key("endpoints"), e))
            .collect::<Result<Vec<_>, _>>()?;
        http_urls(check, &key("endpoints"), &endpoints)?;
        let token = check.secret(&key("token"), &self.token)?;
        if self.batch_max_bytes < 1024 {
            return Err(check.invalid(&key("batch_max_bytes"), "must be at least 1024"));
        }
        if !(1..=64).contains(&self.concurrency) {
            return Err(check.invalid(&key("concurrency"), "must be between 1 and 64"));
        }
        if self.max_pending_acks == 0 {
            return Err(check.invalid(&key("max_pending_acks"), "must be at least 1"));
        }
        if self.batch_max_events == 0 {
            return Err(check.invalid(&key("batch_max_events"), "must be at least 1"));
        }
        Ok(HecSinkConfig {
            batch_linger: check.duration(&key("batch_linger"), &self.batch_linger)?,
            request_timeout: check.duration(&key("request_timeout"), &self.request_timeout)?,
            ack_timeout: check.duration(&key("ack_timeout"), &self.ack_timeout)?,
            ack_poll_interval: check.duration(&key("ack_poll_interval"), &self.ack_poll_interval)?,
            endpoints,
            token,
            index: self.index,
            alert_index: self.alert_index,
            metrics_index: self.metrics_index,
            source: self.source,
            host: self.host,
            batch_max_bytes: self.batch_max_bytes,
            batch_max_events: self.batch_max_events,
            compression: self.compression,
            tls_verify: self.tls_verify,
            ca_file: self.ca_file,
            acknowledgements: self.acknowledgements,
            concurrency: self.concurrency,
            max_pending_acks: self.max_pending_acks,
        })
    }
}

/// `[sinks.otlp]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOtlpSink {
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
    #[serde(default = "default_otlp_timeout")]
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

fn default_otlp_timeout() -> String {
    "10s".into()
}

/// `[sinks.otlp]`, validated (see [`RawOtlpSink`]).
#[derive(Debug, Clone)]
pub struct OtlpSinkConfig {
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub headers: BTreeMap<String, Secret>,
    pub timeout: Duration,
    pub tls: OtlpTlsConfig,
}

impl RawOtlpSink {
    pub fn validate(self, check: Check<'_>) -> Result<OtlpSinkConfig, ConfigError> {
        let key = |k: &str| format!("sinks.otlp.{k}");
        http_urls(check, &key("endpoint"), [&self.endpoint])?;
        let mut headers = BTreeMap::new();
        for (k, v) in self.headers {
            let value = Secret::new(check.expand(&key(&format!("headers.{k}")), v.expose())?);
            headers.insert(k, value);
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(check.invalid(
                &key("tls"),
                "cert_file and key_file go together (mutual TLS needs both)",
            ));
        }
        let has_tls = self.tls.ca_file.is_some() || self.tls.cert_file.is_some() || self.tls.server_name.is_some();
        if has_tls && !self.endpoint.starts_with("https://") {
            return Err(check.invalid(
                &key("tls"),
                format!(
                    "TLS settings need an https:// endpoint, not `{}`",
                    redact_url(&self.endpoint)
                ),
            ));
        }
        Ok(OtlpSinkConfig {
            timeout: check.duration(&key("timeout"), &self.timeout)?,
            endpoint: self.endpoint,
            protocol: self.protocol,
            headers,
            tls: self.tls,
        })
    }
}

/// `[sinks.file]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Output file; parent directories are created. Default `out/events.jsonl`.
    #[serde(default = "default_path")]
    pub path: PathBuf,
}

impl Default for FileSinkConfig {
    fn default() -> Self {
        FileSinkConfig { path: default_path() }
    }
}

fn default_path() -> PathBuf {
    PathBuf::from("out/events.jsonl")
}
