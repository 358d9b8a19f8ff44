//! `[sinks.splunk_hec]`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, Secret, duration, expand_env, redact_url};

/// `[sinks.splunk_hec]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HecSinkConfig {
    /// Base URLs of HEC endpoints (`https://splunk:8088`); requests fail over across them.
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
    #[serde(default = "default_timeout")]
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
fn default_timeout() -> String {
    "30s".into()
}
fn default_true() -> bool {
    true
}

impl HecSinkConfig {
    /// Expands the token and checks every value (no IO).
    pub fn validated(mut self, origin: &str) -> Result<HecSinkConfig, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            key: format!("sinks.splunk_hec.{key}"),
            message,
        };
        if self.endpoints.is_empty() {
            return Err(invalid("endpoints", "at least one endpoint is needed".into()));
        }
        for e in &self.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(invalid(
                    "endpoints",
                    format!("`{}` is not an http:// or https:// URL", redact_url(e)),
                ));
            }
        }
        self.token = Secret::new(expand_env(self.token.expose()).map_err(|m| invalid("token", m))?);
        if self.token.expose().is_empty() {
            return Err(invalid("token", "must not be empty".into()));
        }
        if self.batch_max_bytes < 1024 {
            return Err(invalid("batch_max_bytes", "must be at least 1024".into()));
        }
        if !(1..=64).contains(&self.concurrency) {
            return Err(invalid("concurrency", "must be between 1 and 64".into()));
        }
        if self.max_pending_acks == 0 {
            return Err(invalid("max_pending_acks", "must be at least 1".into()));
        }
        if self.batch_max_events == 0 {
            return Err(invalid("batch_max_events", "must be at least 1".into()));
        }
        duration(origin, "sinks.splunk_hec.batch_linger", &self.batch_linger)?;
        duration(origin, "sinks.splunk_hec.request_timeout", &self.request_timeout)?;
        duration(origin, "sinks.splunk_hec.ack_timeout", &self.ack_timeout)?;
        duration(origin, "sinks.splunk_hec.ack_poll_interval", &self.ack_poll_interval)?;
        Ok(self)
    }

    pub fn linger(&self) -> Duration {
        humantime::parse_duration(&self.batch_linger).unwrap_or(Duration::from_millis(200))
    }

    pub fn ack_timeout(&self) -> Duration {
        humantime::parse_duration(&self.ack_timeout).unwrap_or(Duration::from_secs(60))
    }

    pub fn ack_poll_interval(&self) -> Duration {
        humantime::parse_duration(&self.ack_poll_interval).unwrap_or(Duration::from_millis(500))
    }

    pub fn timeout(&self) -> Duration {
        humantime::parse_duration(&self.request_timeout).unwrap_or(Duration::from_secs(30))
    }
}
