//! Configuration: one TOML file, parsed into [`RawConfig`] (serde, unknown keys rejected), then
//! validated into [`Config`] (durations parsed, `${VAR}` expanded, sinks defaulted). Validation
//! does no IO beyond reading environment variables; clients are built by the pipeline afterwards.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::sinks::file::FileSinkConfig;
use crate::sinks::otlp::OtlpSinkConfig;
use crate::sinks::splunk_hec::HecSinkConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config file {path}: key `{key}`: {message}")]
    Invalid { path: String, key: String, message: String },
}

/// A secret string (token, password): never shown by `Debug`, logs or `config check`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether `given` is this secret, in time independent of where they differ.
    pub fn matches(&self, given: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        // Lengths are compared in the open (they leak only the length); the bytes never are.
        self.0.len() == given.len() && bool::from(self.0.as_bytes().ct_eq(given))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

// ---------------------------------------------------------------------------------------------
// Raw, as written in the file.

/// The config file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub kafka: RawKafka,
    #[serde(default)]
    pub topics: RawTopics,
    #[serde(default)]
    pub decode: RawDecode,
    #[serde(default)]
    pub enrich: RawEnrich,
    #[serde(default)]
    pub rules: RawRules,
    #[serde(default)]
    pub window: RawWindow,
    #[serde(default)]
    pub sinks: RawSinks,
    #[serde(default)]
    pub server: RawServer,
}

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
fn default_true() -> bool {
    true
}
fn default_metrics_format() -> String {
    "auto".into()
}

/// `[enrich]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnrich {
    /// Namespace file (YAML, see `deploy/namespaces.example.yaml`). Optional.
    pub namespaces: Option<PathBuf>,
    /// Directory of principals, API keys and clusters (YAML or CSV, see
    /// `deploy/directory.example.yaml`). Optional.
    pub directory: Option<PathBuf>,
    /// How long an event id is remembered to drop duplicates, e.g. `1h`. Default `1h`.
    #[serde(default = "default_dedupe_horizon")]
    pub dedupe_horizon: String,
    /// Most ids remembered; the oldest are forgotten first. Default 2000000.
    #[serde(default = "default_dedupe_capacity")]
    pub dedupe_capacity: usize,
    /// Directory of the restart-safe dedupe store (ids of delivered events). Optional: without
    /// it, duplicates are dropped only within one process's lifetime.
    #[serde(default)]
    pub dedupe_dir: Option<PathBuf>,
}

impl Default for RawEnrich {
    fn default() -> Self {
        RawEnrich {
            namespaces: None,
            directory: None,
            dedupe_horizon: default_dedupe_horizon(),
            dedupe_capacity: default_dedupe_capacity(),
            dedupe_dir: None,
        }
    }
}

fn default_dedupe_horizon() -> String {
    "1h".into()
}
fn default_dedupe_capacity() -> usize {
    2_000_000
}

/// `[rules]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRules {
    /// Directories of rule files (`*.yaml`, `*.test.yaml` excluded). Default `["rules"]`.
    #[serde(default = "default_rule_dirs")]
    pub dirs: Vec<PathBuf>,
    /// How late an event may arrive and still count: windows are evaluated this far behind
    /// the newest event time seen, e.g. `30s`. Default `0s` (evaluate at the newest event).
    #[serde(default = "default_lateness")]
    pub allowed_lateness: String,
}

fn default_lateness() -> String {
    "0s".into()
}

impl Default for RawRules {
    fn default() -> Self {
        RawRules {
            dirs: default_rule_dirs(),
            allowed_lateness: default_lateness(),
        }
    }
}

fn default_rule_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("rules")]
}

/// `[window]`: the in-memory SQL window.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    /// How much event time the SQL tables keep, e.g. `1h`. Default `1h`.
    #[serde(default = "default_retention")]
    pub retention: String,
    /// Most bytes the SQL tables hold together (70% audit events, 25% metrics, 5% alerts); the
    /// oldest batches are evicted beyond it, and counted in `auditflow_window_evicted_rows`.
    /// Default 4294967296 (4 GiB).
    #[serde(default = "default_max_memory")]
    pub max_memory: usize,
}

impl Default for RawWindow {
    fn default() -> Self {
        RawWindow {
            retention: default_retention(),
            max_memory: default_max_memory(),
        }
    }
}

fn default_max_memory() -> usize {
    4 << 30
}

fn default_retention() -> String {
    "1h".into()
}

/// `[sinks]`: every sink is optional; with none configured, the file sink writes
/// `out/events.jsonl`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSinks {
    pub splunk_hec: Option<HecSinkConfig>,
    pub otlp: Option<OtlpSinkConfig>,
    pub file: Option<FileSinkConfig>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Address of the HTTP endpoints (`/v1/sql`, `/metrics`, `/healthz`, `/readyz`). Optional.
    pub http_listen: Option<String>,
    /// Address of the PostgreSQL wire protocol endpoint (`psql`, Grafana, drivers). Optional.
    pub pg_listen: Option<String>,
    /// Bearer token `POST /v1/sql` asks for (`Authorization: Bearer ...`); `${VAR}` and
    /// `${file:PATH}` expand. Default: none (no token asked).
    pub token: Option<Secret>,
    /// Password the Postgres endpoint asks for (any user name); expands like `token`. Default:
    /// none (any user and database are accepted).
    pub pg_password: Option<Secret>,
    /// Longest a query may run. Default `30s`.
    pub sql_timeout: Option<String>,
    /// Most rows one query may return; more is an error asking for a LIMIT. Default 1000000.
    pub sql_max_rows: Option<usize>,
    /// Memory all running queries may use together (DataFusion memory pool), bytes. Default
    /// 1073741824.
    pub sql_memory_limit: Option<usize>,
    /// Threads of the runtime queries run on (apart from the pipeline's). Default 2.
    pub sql_threads: Option<usize>,
    /// Largest value a function may build (`repeat`, `lpad`, `range`, ...), bytes. Default
    /// 16777216.
    pub sql_max_value_bytes: Option<usize>,
    /// Longest SQL text accepted, bytes. Default 262144.
    pub sql_max_query_bytes: Option<usize>,
    /// Open connections each endpoint (HTTP, Postgres) accepts; more wait in the kernel's
    /// backlog. Default 64.
    pub max_connections: Option<usize>,
    /// A client that takes longer than this to send a request's headers, to finish the
    /// Postgres startup and authentication, or to take the bytes of an answer, is disconnected.
    /// Default `30s`.
    pub client_timeout: Option<String>,
    /// A connection with nothing asked for this long is closed. Default `5m`.
    pub idle_timeout: Option<String>,
    /// Largest Postgres protocol message accepted, bytes. Default 1048576.
    pub pg_max_message_bytes: Option<usize>,
    /// TLS for both endpoints: a PEM certificate chain and its PEM private key. Postgres then
    /// offers SSL (clients choose it, `sslmode=require`); HTTP serves HTTPS only.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Whether `/metrics` asks for the bearer token when one is set. Default true.
    pub metrics_require_token: Option<bool>,
    /// Host names `POST /v1/sql` answers under when no token is set, besides the listen
    /// address (and `localhost` when that is loopback). Default none.
    pub allowed_hosts: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------------------------
// Validated.

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub decode: DecodeConfig,
    pub enrich: EnrichConfig,
    pub rule_dirs: Vec<PathBuf>,
    pub allowed_lateness: Duration,
    pub window_retention: Duration,
    pub window_max_memory: usize,
    pub sinks: SinksConfig,
    pub http_listen: Option<SocketAddr>,
    pub server: ServerConfig,
}

/// What the SQL front ends need besides the HTTP address.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    pub pg_listen: Option<SocketAddr>,
    pub token: Option<Secret>,
    pub pg_password: Option<Secret>,
    pub limits: crate::query::engine::SqlLimits,
    pub connections: ConnectionLimits,
    pub tls: Option<TlsFiles>,
    pub metrics_require_token: bool,
    pub allowed_hosts: Vec<String>,
}

/// How much of the process one endpoint's clients may hold.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub client_timeout: Duration,
    pub idle_timeout: Duration,
    pub pg_max_message_bytes: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 64,
            client_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            pg_max_message_bytes: 1 << 20,
        }
    }
}

/// `server.tls_cert_file` and `server.tls_key_file`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
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

#[derive(Debug, Clone)]
pub struct EnrichConfig {
    pub namespaces: Option<PathBuf>,
    pub directory: Option<PathBuf>,
    pub dedupe_horizon: Duration,
    pub dedupe_capacity: usize,
    pub dedupe_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub struct SinksConfig {
    pub splunk_hec: Option<HecSinkConfig>,
    pub otlp: Option<OtlpSinkConfig>,
    pub file: Option<FileSinkConfig>,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: parse_error_message(text, &e),
        })?;
        Config::validate(raw, origin)
    }

    /// Validates a raw config (no IO but environment variables).
    pub fn validate(raw: RawConfig, origin: &str) -> Result<Config, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            key: key.to_owned(),
            message,
        };
        let expand = |key: &str, value: &str| expand_env(value).map_err(|m| invalid(key, m));

        let kafka = &raw.kafka;
        let bootstrap = expand("kafka.bootstrap_servers", &kafka.bootstrap_servers)?;
        if bootstrap.trim().is_empty() {
            return Err(invalid(
                "kafka.bootstrap_servers",
                "must name at least one broker".into(),
            ));
        }
        if kafka.group_id.trim().is_empty() {
            return Err(invalid("kafka.group_id", "must not be empty".into()));
        }
        if kafka.max_inflight_bytes < 1 << 20 {
            return Err(invalid("kafka.max_inflight_bytes", "must be at least 1048576".into()));
        }
        if kafka.batch_max_records == 0 {
            return Err(invalid("kafka.batch_max_records", "must be at least 1".into()));
        }
        let mut props: BTreeMap<String, Secret> = BTreeMap::new();
        props.insert("bootstrap.servers".into(), Secret::new(bootstrap));
        props.insert("group.id".into(), Secret::new(kafka.group_id.clone()));
        if let Some(p) = &kafka.security_protocol {
            let p = p.to_ascii_lowercase();
            if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"].contains(&p.as_str()) {
                return Err(invalid(
                    "kafka.security_protocol",
                    format!("`{p}` is not one of plaintext, ssl, sasl_plaintext, sasl_ssl"),
                ));
            }
            props.insert("security.protocol".into(), Secret::new(p));
        }
        if let Some(m) = &kafka.sasl_mechanism {
            let m = m.to_ascii_uppercase();
            if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&m.as_str()) {
                return Err(invalid(
                    "kafka.sasl_mechanism",
                    format!("`{m}` is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
                ));
            }
            props.insert("sasl.mechanisms".into(), Secret::new(m));
        } else if kafka.sasl_username.is_some() {
            props.insert("sasl.mechanisms".into(), Secret::new("PLAIN"));
        }
        let optional = [
            ("kafka.sasl_username", "sasl.username", &kafka.sasl_username),
            ("kafka.sasl_password", "sasl.password", &kafka.sasl_password),
            ("kafka.ssl_ca_location", "ssl.ca.location", &kafka.ssl_ca_location),
            (
                "kafka.ssl_certificate_location",
                "ssl.certificate.location",
                &kafka.ssl_certificate_location,
            ),
            ("kafka.ssl_key_location", "ssl.key.location", &kafka.ssl_key_location),
            ("kafka.ssl_key_password", "ssl.key.password", &kafka.ssl_key_password),
        ];
        for (key, property, value) in optional {
            if let Some(v) = value {
                props.insert(property.into(), Secret::new(expand(key, v)?));
            }
        }
        if kafka.sasl_username.is_some() != kafka.sasl_password.is_some() {
            return Err(invalid(
                "kafka.sasl_password",
                "sasl_username and sasl_password must be given together".into(),
            ));
        }
        for (k, v) in &kafka.properties {
            props.insert(k.clone(), Secret::new(expand(&format!("kafka.properties.{k}"), v)?));
        }

        let topics = &raw.topics;
        if topics.audit.is_empty() && topics.metrics.is_empty() {
            return Err(invalid(
                "topics",
                "at least one audit or metrics topic is needed".into(),
            ));
        }
        if let Some(t) = topics.audit.iter().find(|t| topics.metrics.contains(t)) {
            return Err(invalid("topics.metrics", format!("topic `{t}` is also an audit topic")));
        }
        if topics.dead_letter.is_empty() {
            return Err(invalid("topics.dead_letter", "must not be empty".into()));
        }

        let metrics_format = match raw.decode.metrics_format.as_str() {
            "auto" => MetricsFormat::Auto,
            "canonical" => MetricsFormat::Canonical,
            "metrics_api" => MetricsFormat::MetricsApi,
            "otlp_proto" => MetricsFormat::OtlpProto,
            "otlp_json" => MetricsFormat::OtlpJson,
            other => {
                return Err(invalid(
                    "decode.metrics_format",
                    format!("`{other}` is not one of auto, canonical, metrics_api, otlp_proto, otlp_json"),
                ));
            }
        };

        let mut sinks = SinksConfig {
            splunk_hec: raw.sinks.splunk_hec.map(|s| s.validated(origin)).transpose()?,
            otlp: raw.sinks.otlp.map(|s| s.validated(origin)).transpose()?,
            file: raw.sinks.file,
        };
        if sinks.splunk_hec.is_none() && sinks.otlp.is_none() && sinks.file.is_none() {
            sinks.file = Some(FileSinkConfig::default());
        }

        let http_listen = raw
            .server
            .http_listen
            .as_deref()
            .map(|a| {
                a.parse()
                    .map_err(|e| invalid("server.http_listen", format!("`{a}`: {e}")))
            })
            .transpose()?;
        let pg_listen = raw
            .server
            .pg_listen
            .as_deref()
            .map(|a| {
                a.parse()
                    .map_err(|e| invalid("server.pg_listen", format!("`{a}`: {e}")))
            })
            .transpose()?;
        let expand_secret = |key: &str, s: &Option<Secret>| -> Result<Option<Secret>, ConfigError> {
            s.as_ref()
                .map(|s| {
                    let v = expand_env(s.expose()).map_err(|m| invalid(key, m))?;
                    if v.is_empty() {
                        return Err(invalid(key, "must not be empty".into()));
                    }
                    Ok(Secret::new(v))
                })
                .transpose()
        };
        let limits = crate::query::engine::SqlLimits {
            timeout: match &raw.server.sql_timeout {
                Some(t) => duration(origin, "server.sql_timeout", t)?,
                None => Duration::from_secs(30),
            },
            max_rows: raw.server.sql_max_rows.unwrap_or(1_000_000),
            memory_limit: raw.server.sql_memory_limit.unwrap_or(1 << 30),
            threads: raw.server.sql_threads.unwrap_or(2),
            max_value_bytes: raw.server.sql_max_value_bytes.unwrap_or(16 << 20),
            gate: crate::query::gate::GateLimits {
                max_query_bytes: raw.server.sql_max_query_bytes.unwrap_or(256 * 1024),
                ..Default::default()
            },
        };
        if limits.max_value_bytes < 1024 {
            return Err(invalid("server.sql_max_value_bytes", "must be at least 1024".into()));
        }
        if !(64..=16 << 20).contains(&limits.gate.max_query_bytes) {
            return Err(invalid(
                "server.sql_max_query_bytes",
                "must be between 64 and 16777216".into(),
            ));
        }
        let defaults = ConnectionLimits::default();
        let connections = ConnectionLimits {
            max_connections: raw.server.max_connections.unwrap_or(defaults.max_connections),
            client_timeout: match &raw.server.client_timeout {
                Some(t) => duration(origin, "server.client_timeout", t)?,
                None => defaults.client_timeout,
            },
            idle_timeout: match &raw.server.idle_timeout {
                Some(t) => duration(origin, "server.idle_timeout", t)?,
                None => defaults.idle_timeout,
            },
            pg_max_message_bytes: raw.server.pg_max_message_bytes.unwrap_or(defaults.pg_max_message_bytes),
        };
        if !(1..=10_000).contains(&connections.max_connections) {
            return Err(invalid("server.max_connections", "must be between 1 and 10000".into()));
        }
        if connections.client_timeout.is_zero() || connections.idle_timeout.is_zero() {
            return Err(invalid(
                "server.client_timeout",
                "client_timeout and idle_timeout must be above zero".into(),
            ));
        }
        if connections.pg_max_message_bytes < limits.gate.max_query_bytes.max(8192) {
            return Err(invalid(
                "server.pg_max_message_bytes",
                "must be at least server.sql_max_query_bytes (and 8192)".into(),
            ));
        }
        let tls = match (&raw.server.tls_cert_file, &raw.server.tls_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => {
                return Err(invalid(
                    "server.tls_cert_file",
                    "tls_cert_file and tls_key_file must be given together".into(),
                ));
            }
        };
        if !(1..=64).contains(&limits.threads) {
            return Err(invalid("server.sql_threads", "must be between 1 and 64".into()));
        }
        if limits.max_rows == 0 {
            return Err(invalid("server.sql_max_rows", "must be at least 1".into()));
        }
        if limits.memory_limit < 1 << 20 {
            return Err(invalid("server.sql_memory_limit", "must be at least 1048576".into()));
        }
        let server = ServerConfig {
            pg_listen,
            token: expand_secret("server.token", &raw.server.token)?,
            pg_password: expand_secret("server.pg_password", &raw.server.pg_password)?,
            limits,
            connections,
            tls,
            metrics_require_token: raw.server.metrics_require_token.unwrap_or(true),
            allowed_hosts: raw.server.allowed_hosts.clone().unwrap_or_default(),
        };

        Ok(Config {
            kafka: KafkaConfig {
                group_id: kafka.group_id.clone(),
                batch_max_records: kafka.batch_max_records,
                batch_linger: duration(origin, "kafka.batch_linger", &kafka.batch_linger)?,
                max_inflight_bytes: kafka.max_inflight_bytes,
                client_properties: props,
            },
            topics: TopicsConfig {
                audit: topics.audit.clone(),
                metrics: topics.metrics.clone(),
                dead_letter: topics.dead_letter.clone(),
                alerts: topics.alerts.clone(),
            },
            decode: DecodeConfig {
                max_record_bytes: raw.decode.max_record_bytes,
                validate_schema: raw.decode.validate_schema,
                metrics_format,
                metrics_api_metric: raw.decode.metrics_api_metric,
                metrics_api_cluster_id: raw.decode.metrics_api_cluster_id,
            },
            enrich: EnrichConfig {
                namespaces: raw.enrich.namespaces,
                directory: raw.enrich.directory,
                dedupe_horizon: duration(origin, "enrich.dedupe_horizon", &raw.enrich.dedupe_horizon)?,
                dedupe_capacity: raw.enrich.dedupe_capacity,
                dedupe_dir: raw.enrich.dedupe_dir,
            },
            allowed_lateness: duration(origin, "rules.allowed_lateness", &raw.rules.allowed_lateness)?,
            rule_dirs: raw.rules.dirs,
            window_retention: duration(origin, "window.retention", &raw.window.retention)?,
            window_max_memory: if raw.window.max_memory < 1 << 20 {
                return Err(invalid("window.max_memory", "must be at least 1048576".into()));
            } else {
                raw.window.max_memory
            },
            sinks,
            http_listen,
            server,
        })
    }

    /// The config with secrets masked, for `config check` output.
    pub fn describe(&self) -> String {
        redact_urls_in(&format!("{self:#?}"))
    }
}

/// A TOML error as line, column, key and reason, without quoting the file: the line may hold a
/// secret under a key the parser does not know (`sasl_pasword = "hunter2"`), and no key's
/// value is ever printed. Only the text before its `=` (the key) is shown.
fn parse_error_message(text: &str, e: &toml::de::Error) -> String {
    let reason = e.message().trim_end();
    let Some(span) = e.span() else {
        return reason.to_owned();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    let source_line = text.lines().nth(line - 1).unwrap_or_default();
    let shown = match source_line.split_once('=') {
        Some((key, _)) => format!("{} = <value hidden>", key.trim()),
        None if source_line.trim_start().starts_with('[') => source_line.trim().to_owned(),
        None => "<line hidden>".to_owned(),
    };
    format!("line {line}, column {column}: {reason} (at `{shown}`)")
}

/// A URL for messages and logs: any `user:password@` is replaced by `***@`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..scheme_end], &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// `text` with the `user:password@` of every URL in it replaced by `***@`.
pub fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c == '"' || c.is_whitespace())
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***@");
                rest = &tail[at + 1..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// Parses a duration such as `50ms`, `30s`, `5m` or `1h`, naming the key on error.
pub fn duration(origin: &str, key: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text).map_err(|e| ConfigError::Invalid {
        path: origin.to_owned(),
        key: key.to_owned(),
        message: format!("`{text}` is not a duration (e.g. 30s, 5m, 1h): {e}"),
    })
}

/// Expands `${VAR}` from the environment and `${file:PATH}` from a file's contents (trailing
/// newline removed; for mounted secrets). A missing variable or file is an error naming it.
pub fn expand_env(text: &str) -> Result<String, String> {
    expand_vars(text, |name| match name.strip_prefix("file:") {
        Some(path) => std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned()),
        None => std::env::var(name).ok(),
    })
}

/// Expands `${VAR}` through `lookup`.
pub fn expand_vars(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            // The value may be a secret: say where, never what.
            .ok_or_else(|| format!("unterminated `${{` at character {} of the value", out.len() + start + 1))?;
        let name = &after[..end];
        let value = lookup(name).ok_or_else(|| match name.strip_prefix("file:") {
            Some(path) => format!("secret file `{path}` cannot be read"),
            None => format!("environment variable `{name}` is not set"),
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n";

    #[test]
    fn minimal_config_defaults_to_the_file_sink() {
        let c = Config::parse(MINIMAL, "t.toml").unwrap();
        assert!(c.sinks.file.is_some());
        assert_eq!(c.topics.audit, vec!["confluent-audit-log-events"]);
        assert_eq!(c.window_retention, Duration::from_secs(3600));
        assert_eq!(c.kafka.client_properties["group.id"].expose(), "auditflow");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = "[kafka]\nbootstrap_servers = \"x:1\"\ngroup_idd = \"a\"\n";
        let err = Config::parse(text, "bad.toml").unwrap_err().to_string();
        assert!(err.contains("bad.toml"), "{err}");
        assert!(err.contains("group_idd"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn env_expansion_and_missing_variable() {
        let lookup = |name: &str| (name == "TOKEN").then(|| "s3cret".to_owned());
        assert_eq!(expand_vars("a-${TOKEN}-b", lookup).unwrap(), "a-s3cret-b");
        let err = expand_vars("${MISSING}", lookup).unwrap_err();
        assert!(err.contains("MISSING"), "{err}");
        assert!(expand_vars("${TOKEN", lookup).is_err());
    }

    #[test]
    fn secrets_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "from-a-file\n").unwrap();
        assert_eq!(
            expand_env(&format!("${{file:{}}}", path.display())).unwrap(),
            "from-a-file"
        );
        let err = expand_env("${file:/no/such/secret}").unwrap_err();
        assert!(err.contains("/no/such/secret"), "{err}");
    }

    #[test]
    fn errors_never_print_a_value() {
        let text = format!("{MINIMAL}sasl_username = \"KEY\"\nsasl_pasword = \"hunter2\"\n");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(
            e.contains("t.toml") && e.contains("line 4") && e.contains("sasl_pasword"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let text = format!("{MINIMAL}sasl_username = \"KEY\"\nsasl_password = \"hunter2 ${{PASS\"\n");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(e.contains("unterminated"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        // A value on its own line of an array: the whole line is hidden.
        let text = format!("{MINIMAL}[sinks.splunk_hec]\nendpoints = [\n  \"https://a\",\n  hunter2\n]\n");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("https://admin:hunter2@splunk:8088/x"),
            "https://***@splunk:8088/x"
        );
        assert_eq!(redact_url("https://splunk:8088/a@b"), "https://splunk:8088/a@b");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(
            redact_urls_in("endpoints: [\"https://u:p@h:1\", \"http://h2\"]"),
            "endpoints: [\"https://***@h:1\", \"http://h2\"]"
        );
        let text = format!(
            "{MINIMAL}[sinks.splunk_hec]\nendpoints = [\"https://admin:hunter2@splunk:8088\"]\ntoken = \"t\"\n"
        );
        let c = Config::parse(&text, "t.toml").unwrap();
        assert!(!c.describe().contains("hunter2"), "{}", c.describe());
    }

    #[test]
    fn server_limits_are_validated() {
        let c = Config::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(c.server.connections.max_connections, 64);
        assert!(c.server.metrics_require_token);
        for (bad, key) in [
            ("max_connections = 0", "server.max_connections"),
            ("client_timeout = \"0s\"", "server.client_timeout"),
            ("tls_cert_file = \"/x.pem\"", "server.tls_cert_file"),
            ("sql_max_query_bytes = 10", "server.sql_max_query_bytes"),
            ("pg_max_message_bytes = 100", "server.pg_max_message_bytes"),
        ] {
            let e = Config::parse(&format!("{MINIMAL}[server]\n{bad}\n"), "t.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn secrets_are_masked_in_describe() {
        let text = format!(
            "{MINIMAL}security_protocol = \"sasl_ssl\"\nsasl_username = \"KEY\"\nsasl_password = \"hunter2\"\n"
        );
        let c = Config::parse(&text, "t.toml").unwrap();
        assert_eq!(c.kafka.client_properties["sasl.password"].expose(), "hunter2");
        assert_eq!(c.kafka.client_properties["sasl.mechanisms"].expose(), "PLAIN");
        assert!(!c.describe().contains("hunter2"));
    }

    #[test]
    fn bad_duration_names_the_key() {
        let text = format!("{MINIMAL}[window]\nretention = \"soon\"\n");
        let err = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("window.retention"), "{err}");
    }
}
