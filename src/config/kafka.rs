//! `[kafka]`, `[topics]` and `[decode]`: what is read, from where, and how it is decoded.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{Check, ConfigError, Secret, default_true};

/// `[kafka]`: the consumer (and the dead-letter producer, which shares these settings).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    /// Comma-separated `host:port` list. `${VAR}` expands.
    pub bootstrap_servers: String,
    /// Consumer group id. Follow the application prefix convention on shared clusters
    /// (`Tech01-auditflow`). Default `auditflow`.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl` (Confluent Cloud).
    pub security_protocol: Option<String>,
    /// `PLAIN` (Confluent Cloud API keys, the default with SASL), `SCRAM-SHA-256`, `SCRAM-SHA-512`.
    pub sasl_mechanism: Option<String>,
    /// SASL user name: the Confluent Cloud API key. `${VAR}` expands.
    pub sasl_username: Option<String>,
    /// SASL password: the Confluent Cloud API secret. `${VAR}` expands; never logged.
    pub sasl_password: Option<String>,
    /// CA bundle to verify the brokers (PEM). Default: the system store.
    pub ssl_ca_location: Option<String>,
    /// Client certificate for mTLS (PEM).
    pub ssl_certificate_location: Option<String>,
    /// Client private key for mTLS (PEM).
    pub ssl_key_location: Option<String>,
    /// Password of the client key. `${VAR}` expands; never logged.
    pub ssl_key_password: Option<String>,
    /// Most records decoded as one batch. Default 2000.
    #[serde(default = "default_batch_max_records")]
    pub batch_max_records: usize,
    /// Longest wait to fill a batch, e.g. `50ms`. Default `50ms`.
    #[serde(default = "default_batch_linger")]
    pub batch_linger: String,
    /// Bytes of records read but not yet finalised (delivered or dead-lettered) before the
    /// consumer pauses: with the prefetch (`queued.max.messages.kbytes`, 16 MiB) this bounds
    /// memory under sink outages. Default 16777216.
    #[serde(default = "default_max_inflight_bytes")]
    pub max_inflight_bytes: usize,
    /// Any librdkafka property, passed through verbatim (values expand `${VAR}`). These win over
    /// the keys above.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_group_id() -> String {
    "auditflow".into()
}
fn default_batch_max_records() -> usize {
    2000
}
fn default_batch_linger() -> String {
    "50ms".into()
}
fn default_max_inflight_bytes() -> usize {
    16 << 20
}

/// `[topics]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTopics {
    /// Topics holding Confluent audit events. Default `["confluent-audit-log-events"]`.
    #[serde(default = "default_audit_topics")]
    pub audit: Vec<String>,
    /// Topics holding metric samples. Default `["confluent-metrics"]`.
    #[serde(default = "default_metrics_topics")]
    pub metrics: Vec<String>,
    /// Where undecodable records go, unchanged, with error headers. Default `auditflow-dead-letter`.
    #[serde(default = "default_dead_letter")]
    pub dead_letter: String,
    /// Optional topic that receives every alert as JSON.
    pub alerts: Option<String>,
}

impl Default for RawTopics {
    fn default() -> Self {
        RawTopics {
            audit: default_audit_topics(),
            metrics: default_metrics_topics(),
            dead_letter: default_dead_letter(),
            alerts: None,
        }
    }
}

fn default_audit_topics() -> Vec<String> {
    vec!["confluent-audit-log-events".into()]
}
fn default_metrics_topics() -> Vec<String> {
    vec!["confluent-metrics".into()]
}
fn default_dead_letter() -> String {
    "auditflow-dead-letter".into()
}

/// `[decode]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDecode {
    /// Records larger than this go to the dead-letter topic. Default 1048576 (1 MiB).
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Validate every audit event against the shipped JSON Schema. Default true.
    #[serde(default = "default_true")]
    pub validate_schema: bool,
    /// Metric record encoding: `auto` (detected per record, default), `canonical`,
    /// `metrics_api`, `otlp_proto` or `otlp_json`.
    #[serde(default = "default_metrics_format")]
    pub metrics_format: String,
    /// Metric name for Metrics API response records that carry no `metric` header.
    pub metrics_api_metric: Option<String>,
    /// Cluster id for Metrics API response records that carry no `resource.kafka.id` header.
    pub metrics_api_cluster_id: Option<String>,
}

impl Default for RawDecode {
    fn default() -> Self {
        RawDecode {
            max_record_bytes: default_max_record_bytes(),
            validate_schema: true,
            metrics_format: default_metrics_format(),
            metrics_api_metric: None,
            metrics_api_cluster_id: None,
        }
    }
}

fn default_max_record_bytes() -> usize {
    1 << 20
}
fn default_metrics_format() -> String {
    "auto".into()
}

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub group_id: String,
    pub batch_max_records: usize,
    pub batch_linger: Duration,
    pub max_inflight_bytes: usize,
    /// Every librdkafka property, secrets included (hence `Secret`): the pipeline hands these to
    /// librdkafka and nowhere else.
    pub client_properties: BTreeMap<String, Secret>,
}

#[derive(Debug, Clone)]
pub struct TopicsConfig {
    pub audit: Vec<String>,
    pub metrics: Vec<String>,
    pub dead_letter: String,
    pub alerts: Option<String>,
}

#[derive(Debug, Clone)]
pub struct DecodeConfig {
    pub max_record_bytes: usize,
    pub validate_schema: bool,
    pub metrics_format: MetricsFormat,
    pub metrics_api_metric: Option<String>,
    pub metrics_api_cluster_id: Option<String>,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        DecodeConfig {
            max_record_bytes: default_max_record_bytes(),
            validate_schema: true,
            metrics_format: MetricsFormat::Auto,
            metrics_api_metric: None,
            metrics_api_cluster_id: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsFormat {
    Auto,
    Canonical,
    MetricsApi,
    OtlpProto,
    OtlpJson,
}

impl RawKafka {
    /// The consumer's settings, every librdkafka property among them (values expanded).
    pub(super) fn validate(&self, check: Check<'_>) -> Result<KafkaConfig, ConfigError> {
        let bootstrap = check.expand("kafka.bootstrap_servers", &self.bootstrap_servers)?;
        if bootstrap.trim().is_empty() {
            return Err(check.invalid("kafka.bootstrap_servers", "must name at least one broker"));
        }
        if self.group_id.trim().is_empty() {
            return Err(check.invalid("kafka.group_id", "must not be empty"));
        }
        if self.max_inflight_bytes < 1 << 20 {
            return Err(check.invalid("kafka.max_inflight_bytes", "must be at least 1048576"));
        }
        if self.batch_max_records == 0 {
            return Err(check.invalid("kafka.batch_max_records", "must be at least 1"));
        }
        let mut props: BTreeMap<String, Secret> = BTreeMap::new();
        props.insert("bootstrap.servers".into(), Secret::new(bootstrap));
        props.insert("group.id".into(), Secret::new(self.group_id.clone()));
        if let Some(p) = &self.security_protocol {
            let p = p.to_ascii_lowercase();
            if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"].contains(&p.as_str()) {
                return Err(check.invalid(
                    "kafka.security_protocol",
                    format!("`{p}` is not one of plaintext, ssl, sasl_plaintext, sasl_ssl"),
                ));
            }
            props.insert("security.protocol".into(), Secret::new(p));
        }
        if let Some(m) = &self.sasl_mechanism {
            let m = m.to_ascii_uppercase();
            if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&m.as_str()) {
                return Err(check.invalid(
                    "kafka.sasl_mechanism",
                    format!("`{m}` is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
                ));
            }
            props.insert("sasl.mechanisms".into(), Secret::new(m));
        } else if self.sasl_username.is_some() {
            props.insert("sasl.mechanisms".into(), Secret::new("PLAIN"));
        }
        let optional = [
            ("kafka.sasl_username", "sasl.username", &self.sasl_username),
            ("kafka.sasl_password", "sasl.password", &self.sasl_password),
            ("kafka.ssl_ca_location", "ssl.ca.location", &self.ssl_ca_location),
            (
                "kafka.ssl_certificate_location",
                "ssl.certificate.location",
                &self.ssl_certificate_location,
            ),
            ("kafka.ssl_key_location", "ssl.key.location", &self.ssl_key_location),
            ("kafka.ssl_key_password", "ssl.key.password", &self.ssl_key_password),
        ];
        for (key, property, value) in optional {
            if let Some(v) = value {
                props.insert(property.into(), Secret::new(check.expand(key, v)?));
            }
        }
        if self.sasl_username.is_some() != self.sasl_password.is_some() {
            return Err(check.invalid(
                "kafka.sasl_password",
                "sasl_username and sasl_password must be given together",
            ));
        }
        for (k, v) in &self.properties {
            props.insert(
                k.clone(),
                Secret::new(check.expand(&format!("kafka.properties.{k}"), v)?),
            );
        }
        Ok(KafkaConfig {
            group_id: self.group_id.clone(),
            batch_max_records: self.batch_max_records,
            batch_linger: check.duration("kafka.batch_linger", &self.batch_linger)?,
            max_inflight_bytes: self.max_inflight_bytes,
            client_properties: props,
        })
    }
}

impl RawTopics {
    pub(super) fn validate(&self, check: Check<'_>) -> Result<TopicsConfig, ConfigError> {
        if self.audit.is_empty() && self.metrics.is_empty() {
            return Err(check.invalid("topics", "at least one audit or metrics topic is needed"));
        }
        if let Some(t) = self.audit.iter().find(|t| self.metrics.contains(t)) {
            return Err(check.invalid("topics.metrics", format!("topic `{t}` is also an audit topic")));
        }
        if self.dead_letter.is_empty() {
            return Err(check.invalid("topics.dead_letter", "must not be empty"));
        }
        Ok(TopicsConfig {
            audit: self.audit.clone(),
            metrics: self.metrics.clone(),
            dead_letter: self.dead_letter.clone(),
            alerts: self.alerts.clone(),
        })
    }
}

impl RawDecode {
    pub(super) fn validate(self, check: Check<'_>) -> Result<DecodeConfig, ConfigError> {
        let metrics_format = match self.metrics_format.as_str() {
            "auto" => MetricsFormat::Auto,
            "canonical" => MetricsFormat::Canonical,
            "metrics_api" => MetricsFormat::MetricsApi,
            "otlp_proto" => MetricsFormat::OtlpProto,
            "otlp_json" => MetricsFormat::OtlpJson,
            other => {
                return Err(check.invalid(
                    "decode.metrics_format",
                    format!("`{other}` is not one of auto, canonical, metrics_api, otlp_proto, otlp_json"),
                ));
            }
        };
        Ok(DecodeConfig {
            max_record_bytes: self.max_record_bytes,
            validate_schema: self.validate_schema,
            metrics_format,
            metrics_api_metric: self.metrics_api_metric,
            metrics_api_cluster_id: self.metrics_api_cluster_id,
        })
    }
}
