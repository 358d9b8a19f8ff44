//! Configuration: one TOML file, parsed into [`RawConfig`] (serde, unknown keys rejected), then
//! validated section by section into [`Config`] (durations parsed, `${VAR}` expanded, sinks
//! defaulted). Validation does no IO beyond reading environment variables and secret files;
//! clients are built by the pipeline afterwards. Nothing here imports the rest of auditflow:
//! every stage reads its settings from here.

mod archive;
mod kafka;
mod secret;
mod server;
mod sinks;
mod sources;
mod stages;
mod telemetry;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use archive::{ARCHIVE_SCHEMES, ArchiveConfig, RawArchive};
pub use kafka::{DecodeConfig, KafkaConfig, MetricsFormat, RawDecode, RawKafka, RawTopics, TopicsConfig};
pub use secret::{Secret, expand_env, expand_vars, redact_url, redact_urls_in};
pub use server::{ConnectionLimits, GateLimits, RawServer, ServerConfig, SqlLimits, TlsFiles};
pub use sinks::{
    FileSinkConfig, HecSinkConfig, OtlpProtocol, OtlpSinkConfig, OtlpTlsConfig, RawHecSink, RawOtlpSink, RawSinks,
    SinksConfig,
};
pub use sources::{MetricsApiConfig, RawMetricsApi, RawMetricsApiResources, RawSources, SourcesConfig};
pub use stages::{EnrichConfig, RawEnrich, RawRules, RawWindow, RulesConfig, WindowConfig};
pub use telemetry::{RawTelemetry, RawTelemetryOtlp, TelemetryOtlpConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config file {path}: key `{key}`: {message}")]
    Invalid { path: String, key: String, message: String },
}

/// Names the file in every error of one validation, and the key in each.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    pub origin: &'a str,
}

impl Check<'_> {
    pub fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.origin.to_owned(),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// Parses a duration such as `50ms`, `30s`, `5m` or `1h`.
    pub fn duration(&self, key: &str, text: &str) -> Result<Duration, ConfigError> {
        duration(self.origin, key, text)
    }

    /// Expands `${VAR}` and `${file:PATH}` in a value.
    pub fn expand(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        expand_env(value).map_err(|m| self.invalid(key, m))
    }

    /// Expands a secret, which must not come out empty.
    pub fn secret(&self, key: &str, secret: &Secret) -> Result<Secret, ConfigError> {
        let value = self.expand(key, secret.expose())?;
        if value.is_empty() {
            return Err(self.invalid(key, "must not be empty"));
        }
        Ok(Secret::new(value))
    }
}

fn default_true() -> bool {
    true
}

fn default_data_dir() -> String {
    "./data".into()
}

// ---------------------------------------------------------------------------------------------
// Raw, as written in the file (each section's struct lives in its file).

/// The config file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Where auditflow keeps state: the restart-safe dedupe store (`dedupe/<group id>`) and the
    /// archive spool (`archive-spool`), unless those are set. Default `./data`
    /// (`/var/lib/auditflow` in the container image); `""` keeps no state (dedupe in memory only).
    #[serde(default = "default_data_dir")]
    pub data_dir: String,
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
    pub sources: RawSources,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub archive: Option<RawArchive>,
    #[serde(default)]
    pub telemetry: RawTelemetry,
}

// ---------------------------------------------------------------------------------------------
// Validated.

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `data_dir`, unless `""`.
    pub data_dir: Option<PathBuf>,
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub decode: DecodeConfig,
    pub enrich: EnrichConfig,
    pub rule_dirs: Vec<PathBuf>,
    pub allowed_lateness: Duration,
    pub idle_partition_timeout: Duration,
    pub window_retention: Duration,
    pub window_max_memory: usize,
    pub sinks: SinksConfig,
    /// Inputs besides the Kafka topics (`[sources.*]`).
    pub sources: SourcesConfig,
    pub http_listen: Option<SocketAddr>,
    pub server: ServerConfig,
    /// The compliance archive, when `[archive]` is set.
    pub archive: Option<ArchiveConfig>,
    /// auditflow's own metrics to an OTLP receiver, when `[telemetry.otlp]` is set.
    pub telemetry_otlp: Option<TelemetryOtlpConfig>,
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

    /// Validates a raw config, section by section (no IO but environment variables).
    pub fn validate(raw: RawConfig, origin: &str) -> Result<Config, ConfigError> {
        let check = Check { origin };
        let data_dir = Some(check.expand("data_dir", &raw.data_dir)?)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        let kafka = raw.kafka.validate(check)?;
        let topics = raw.topics.validate(check)?;
        let decode = raw.decode.validate(check)?;
        let sinks = raw.sinks.validate(check)?;
        let sources = raw.sources.validate(check, &topics.metrics)?;
        let (http_listen, server) = raw.server.validate(check)?;
        let mut enrich = raw.enrich.validate(check)?;
        if enrich.dedupe_dir.is_none()
            && let Some(dir) = &data_dir
        {
            // One store per consumer group: two pipelines sharing a data directory (or a group
            // renamed) must not drop each other's events as repeats.
            let group = kafka
                .client_properties
                .get("group.id")
                .map_or("auditflow", |g| g.expose());
            let safe: String = group
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "._-".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            enrich.dedupe_dir = Some(dir.join("dedupe").join(safe));
        }
        let rules = raw.rules.validate(check)?;
        let window = raw.window.validate(check)?;
        let archive = raw
            .archive
            .map(|mut a| {
                if a.spool_dir.is_none() {
                    a.spool_dir = data_dir.as_ref().map(|d| d.join("archive-spool"));
                }
                a.validate(check)
            })
            .transpose()?;
        let telemetry_otlp = raw.telemetry.validate(check)?;
        Ok(Config {
            data_dir,
            kafka,
            topics,
            decode,
            enrich,
            allowed_lateness: rules.allowed_lateness,
            idle_partition_timeout: rules.idle_partition_timeout,
            rule_dirs: rules.dirs,
            window_retention: window.retention,
            window_max_memory: window.max_memory,
            sinks,
            sources,
            http_listen,
            server,
            archive,
            telemetry_otlp,
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

/// Parses a duration such as `50ms`, `30s`, `5m` or `1h`, naming the key on error.
pub fn duration(origin: &str, key: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text).map_err(|e| ConfigError::Invalid {
        path: origin.to_owned(),
        key: key.to_owned(),
        message: format!("`{text}` is not a duration (e.g. 30s, 5m, 1h): {e}"),
    })
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
    fn data_dir_turns_the_dedupe_store_on_per_group() {
        let c = Config::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(c.data_dir.as_deref(), Some(Path::new("./data")));
        assert_eq!(
            c.enrich.dedupe_dir.as_deref(),
            Some(Path::new("./data/dedupe/auditflow"))
        );
        let text = "data_dir = \"/var/lib/auditflow\"\n[kafka]\nbootstrap_servers = \"x:1\"\ngroup_id = \"Tech01/auditflow\"\n\
                    [archive]\nurl = \"/tmp/archive\"\n";
        let c = Config::parse(text, "t.toml").unwrap();
        assert_eq!(
            c.enrich.dedupe_dir.as_deref(),
            Some(Path::new("/var/lib/auditflow/dedupe/Tech01_auditflow"))
        );
        assert_eq!(
            c.archive.unwrap().spool_dir,
            Path::new("/var/lib/auditflow/archive-spool")
        );
        // An explicit store wins; no data directory keeps none.
        let c = Config::parse(&format!("{MINIMAL}[enrich]\ndedupe_dir = \"/d\"\n"), "t.toml").unwrap();
        assert_eq!(c.enrich.dedupe_dir.as_deref(), Some(Path::new("/d")));
        let c = Config::parse(&format!("data_dir = \"\"\n{MINIMAL}"), "t.toml").unwrap();
        assert!(c.enrich.dedupe_dir.is_none() && c.data_dir.is_none());
    }

    #[test]
    fn bad_duration_names_the_key() {
        let text = format!("{MINIMAL}[window]\nretention = \"soon\"\n");
        let err = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("window.retention"), "{err}");
    }
}
