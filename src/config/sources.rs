//! `[sources.*]`: inputs besides the Kafka topics. Today one: `confluent_metrics_api`, the
//! Confluent Cloud Metrics API's export endpoint, polled so the traffic rules have samples
//! without a separate scraper (docs/PRODUCT.md §1.2).

use std::time::Duration;

use serde::Deserialize;

use super::{Check, ConfigError, Secret};

/// `[sources]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSources {
    pub confluent_metrics_api: Option<RawMetricsApi>,
}

#[derive(Debug, Clone, Default)]
pub struct SourcesConfig {
    pub confluent_metrics_api: Option<MetricsApiConfig>,
}

impl RawSources {
    pub(super) fn validate(self, check: Check<'_>, metrics_topics: &[String]) -> Result<SourcesConfig, ConfigError> {
        Ok(SourcesConfig {
            confluent_metrics_api: self
                .confluent_metrics_api
                .map(|m| m.validate(check, metrics_topics))
                .transpose()?,
        })
    }
}

/// `[sources.confluent_metrics_api]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetricsApi {
    /// Base URL. Default `https://api.telemetry.confluent.cloud`.
    #[serde(default = "default_url")]
    pub url: String,
    /// Cloud API key (not a cluster key). `${VAR}` and `${file:PATH}` expand.
    pub api_key: Secret,
    /// Cloud API secret. `${VAR}` and `${file:PATH}` expand; never logged.
    pub api_secret: Secret,
    /// How often to export, e.g. `60s`. Default `60s` (the export's own resolution: one
    /// point per minute).
    #[serde(default = "default_interval")]
    pub interval: String,
    /// Per-request timeout. Default `30s`.
    #[serde(default = "default_timeout")]
    pub timeout: String,
    pub resources: RawMetricsApiResources,
    /// Metric names to export (`io.confluent.kafka.server/received_bytes`); default: all the
    /// endpoint exports for the resources.
    #[serde(default)]
    pub metrics: Option<Vec<String>>,
    /// Also produce each sample as canonical JSON to this topic (one of `topics.metrics`), and
    /// read it back from there instead of feeding the pipeline directly.
    #[serde(default)]
    pub publish_topic: Option<String>,
}

/// `[sources.confluent_metrics_api.resources]`: resource ids per kind.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawMetricsApiResources {
    #[serde(default)]
    pub kafka: Vec<String>,
    #[serde(default)]
    pub schema_registry: Vec<String>,
    #[serde(default)]
    pub ksql: Vec<String>,
    #[serde(default)]
    pub connector: Vec<String>,
}

fn default_url() -> String {
    "https://api.telemetry.confluent.cloud".into()
}
fn default_interval() -> String {
    "60s".into()
}
fn default_timeout() -> String {
    "30s".into()
}

/// Validated `[sources.confluent_metrics_api]`.
#[derive(Debug, Clone)]
pub struct MetricsApiConfig {
    /// Base URL without a trailing slash.
    pub url: String,
    pub api_key: Secret,
    pub api_secret: Secret,
    pub interval: Duration,
    pub timeout: Duration,
    /// `(kind, ids)` per resource kind with ids, kind as the export names it (`kafka`,
    /// `schema_registry`, `ksql`, `connector`).
    pub resources: Vec<(&'static str, Vec<String>)>,
    pub metrics: Option<Vec<String>>,
    pub publish_topic: Option<String>,
}

impl RawMetricsApi {
    fn validate(self, check: Check<'_>, metrics_topics: &[String]) -> Result<MetricsApiConfig, ConfigError> {
        const KEY: &str = "sources.confluent_metrics_api";
        let url = check.expand(&format!("{KEY}.url"), &self.url)?;
        let parsed =
            url::Url::parse(&url).map_err(|e| check.invalid(&format!("{KEY}.url"), format!("not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "https" | "http") || parsed.host().is_none() {
            return Err(check.invalid(&format!("{KEY}.url"), "must be an http(s) URL with a host"));
        }
        let interval = check.duration(&format!("{KEY}.interval"), &self.interval)?;
        if interval < Duration::from_secs(1) {
            return Err(check.invalid(&format!("{KEY}.interval"), "must be at least 1s"));
        }
        let timeout = check.duration(&format!("{KEY}.timeout"), &self.timeout)?;
        if timeout.is_zero() {
            return Err(check.invalid(&format!("{KEY}.timeout"), "must be more than 0s"));
        }
        let r = self.resources;
        let mut resources = Vec::new();
        for (kind, ids) in [
            ("kafka", r.kafka),
            ("schema_registry", r.schema_registry),
            ("ksql", r.ksql),
            ("connector", r.connector),
        ] {
            let key = format!("{KEY}.resources.{kind}");
            let mut seen = Vec::new();
            for id in ids {
                let id = check.expand(&key, &id)?;
                // Ids go into a query string and into metric labels: Confluent's own shape only.
                if id.is_empty()
                    || id.len() > 64
                    || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(check.invalid(&key, format!("`{id}` is not a resource id (e.g. lkc-9kg320)")));
                }
                if seen.contains(&id) {
                    return Err(check.invalid(&key, format!("`{id}` is listed twice")));
                }
                seen.push(id);
            }
            if !seen.is_empty() {
                resources.push((kind, seen));
            }
        }
        if resources.is_empty() {
            return Err(check.invalid(
                &format!("{KEY}.resources"),
                "names no resource: list at least one id under kafka, schema_registry, ksql or connector",
            ));
        }
        if let Some(metrics) = &self.metrics {
            for m in metrics {
                if !m.starts_with("io.confluent.") || !m.contains('/') {
                    return Err(check.invalid(
                        &format!("{KEY}.metrics"),
                        format!("`{m}` is not a Metrics API name (e.g. io.confluent.kafka.server/received_bytes)"),
                    ));
                }
            }
        }
        if let Some(topic) = &self.publish_topic
            && !metrics_topics.contains(topic)
        {
            return Err(check.invalid(
                &format!("{KEY}.publish_topic"),
                format!("`{topic}` is not one of topics.metrics, so its samples would never be read back"),
            ));
        }
        Ok(MetricsApiConfig {
            url: url.trim_end_matches('/').to_owned(),
            api_key: check.secret(&format!("{KEY}.api_key"), &self.api_key)?,
            api_secret: check.secret(&format!("{KEY}.api_secret"), &self.api_secret)?,
            interval,
            timeout,
            resources,
            metrics: self.metrics,
            publish_topic: self.publish_topic,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n";

    fn parse(section: &str) -> Result<Config, String> {
        Config::parse(&format!("{BASE}{section}"), "t.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn the_documented_section_parses_with_defaults() {
        let c = parse(
            "[sources.confluent_metrics_api]\napi_key = \"KEY\"\napi_secret = \"SECRET\"\n\
             [sources.confluent_metrics_api.resources]\nkafka = [\"lkc-9kg320\"]\nschema_registry = [\"lsrc-abc123\"]\n\
             ksql = [\"lksqlc-def456\"]\nconnector = []\n",
        )
        .unwrap();
        let m = c.sources.confluent_metrics_api.unwrap();
        assert_eq!(m.url, "https://api.telemetry.confluent.cloud");
        assert_eq!(m.interval, std::time::Duration::from_secs(60));
        assert_eq!(m.api_secret.expose(), "SECRET");
        let kinds: Vec<&str> = m.resources.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, ["kafka", "schema_registry", "ksql"]);
        assert!(!format!("{m:?}").contains("SECRET"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let head = "[sources.confluent_metrics_api]\napi_key = \"K\"\napi_secret = \"S\"\n";
        for (extra, resources, key) in [
            ("", "", "sources.confluent_metrics_api.resources"),
            (
                "",
                "kafka = [\"lkc-1&x=1\"]",
                "sources.confluent_metrics_api.resources.kafka",
            ),
            (
                "",
                "kafka = [\"lkc-1\", \"lkc-1\"]",
                "sources.confluent_metrics_api.resources.kafka",
            ),
            (
                "interval = \"0s\"\n",
                "kafka = [\"lkc-1\"]",
                "sources.confluent_metrics_api.interval",
            ),
            (
                "url = \"ftp://x\"\n",
                "kafka = [\"lkc-1\"]",
                "sources.confluent_metrics_api.url",
            ),
            (
                "metrics = [\"received_bytes\"]\n",
                "kafka = [\"lkc-1\"]",
                "sources.confluent_metrics_api.metrics",
            ),
            (
                "publish_topic = \"other\"\n",
                "kafka = [\"lkc-1\"]",
                "sources.confluent_metrics_api.publish_topic",
            ),
        ] {
            let e = parse(&format!(
                "{head}{extra}[sources.confluent_metrics_api.resources]\n{resources}\n"
            ))
            .unwrap_err();
            assert!(e.contains(key) && e.contains("t.toml"), "{extra}{resources}: {e}");
        }
        let e = parse(&format!(
            "{head}[sources.confluent_metrics_api.resources]\nkafkaa = [\"lkc-1\"]\n"
        ))
        .unwrap_err();
        assert!(e.contains("kafkaa") && e.contains("line"), "{e}");
    }
}
