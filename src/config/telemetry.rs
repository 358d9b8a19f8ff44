//! `[telemetry.otlp]`: auditflow's own metrics exported through the OpenTelemetry SDK to an OTLP
//! receiver (a Collector), beside the Prometheus `/metrics` page, from the same instruments.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::sinks::http_urls;
use super::{Check, ConfigError, OtlpProtocol, Secret};

/// `[telemetry]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub otlp: Option<RawTelemetryOtlp>,
}

/// `[telemetry.otlp]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetryOtlp {
    /// `http://collector:4317` (gRPC) or `http://collector:4318` (HTTP; `/v1/metrics` is added).
    pub endpoint: String,
    /// `grpc` (default) or `http/protobuf`.
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Request headers (gRPC metadata); values expand `${VAR}` and are never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// How often to export, e.g. `30s`. Default `60s`.
    #[serde(default = "default_interval")]
    pub interval: String,
    /// Per-export timeout. Default `10s`.
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// Also export the batch-processing spans (`process_batch`, `dispatch`) as OTLP traces.
    /// Default false.
    #[serde(default)]
    pub traces: bool,
    /// Share of batches traced, 0 to 1. Default 0.01.
    #[serde(default = "default_ratio")]
    pub trace_sample_ratio: f64,
}

fn default_ratio() -> f64 {
    0.01
}

fn default_interval() -> String {
    "60s".into()
}
fn default_timeout() -> String {
    "10s".into()
}

/// Validated `[telemetry.otlp]`.
#[derive(Debug, Clone)]
pub struct TelemetryOtlpConfig {
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub headers: BTreeMap<String, Secret>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Sampling ratio of batch spans, when traces are exported.
    pub traces: Option<f64>,
}

impl RawTelemetry {
    pub(super) fn validate(self, check: Check<'_>) -> Result<Option<TelemetryOtlpConfig>, ConfigError> {
        let Some(otlp) = self.otlp else { return Ok(None) };
        let key = |k: &str| format!("telemetry.otlp.{k}");
        let endpoint = check.expand(&key("endpoint"), &otlp.endpoint)?;
        http_urls(check, &key("endpoint"), [&endpoint])?;
        let mut headers = BTreeMap::new();
        for (k, v) in otlp.headers {
            let value = Secret::new(check.expand(&key(&format!("headers.{k}")), v.expose())?);
            headers.insert(k, value);
        }
        let interval = check.duration(&key("interval"), &otlp.interval)?;
        if interval < Duration::from_secs(1) {
            return Err(check.invalid(&key("interval"), "must be at least 1s"));
        }
        let timeout = check.duration(&key("timeout"), &otlp.timeout)?;
        if timeout.is_zero() {
            return Err(check.invalid(&key("timeout"), "must be more than 0s"));
        }
        if !(0.0..=1.0).contains(&otlp.trace_sample_ratio) {
            return Err(check.invalid(&key("trace_sample_ratio"), "must be between 0 and 1"));
        }
        Ok(Some(TelemetryOtlpConfig {
            traces: otlp.traces.then_some(otlp.trace_sample_ratio),
            endpoint,
            protocol: otlp.protocol,
            headers,
            interval,
            timeout,
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, OtlpProtocol};

    const BASE: &str = "[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n";

    #[test]
    fn parses_with_defaults_and_names_bad_keys() {
        let c = Config::parse(
            &format!("{BASE}[telemetry.otlp]\nendpoint = \"http://127.0.0.1:4318\"\nprotocol = \"http/protobuf\"\n[telemetry.otlp.headers]\nx-api-key = \"hunter2\"\n"),
            "t.toml",
        )
        .unwrap();
        let t = c.telemetry_otlp.unwrap();
        assert_eq!(t.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(t.interval, std::time::Duration::from_secs(60));
        assert!(!format!("{t:?}").contains("hunter2"));
        for (bad, key) in [
            ("endpoint = \"ftp://x\"", "telemetry.otlp.endpoint"),
            (
                "endpoint = \"http://x:1\"\ninterval = \"10ms\"",
                "telemetry.otlp.interval",
            ),
            ("endpoint = \"http://x:1\"\nprotocol = \"udp\"", "protocol"),
            (
                "endpoint = \"http://x:1\"\ntraces = true\ntrace_sample_ratio = 2.0",
                "telemetry.otlp.trace_sample_ratio",
            ),
        ] {
            let e = Config::parse(&format!("{BASE}[telemetry.otlp]\n{bad}\n"), "t.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("t.toml"), "{bad}: {e}");
        }
    }
}
