//! `[enrich]`, `[rules]` and `[window]`: the settings of the stages between decoding and the sinks.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Check, ConfigError};

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
    /// A partition that delivered nothing for this long (wall time) stops holding its table's
    /// event-time clock back, e.g. `10s`. It is also the longest a lone event in a quiet stream
    /// waits for the rules. Default `10s`.
    #[serde(default = "default_idle_partition_timeout")]
    pub idle_partition_timeout: String,
}

fn default_lateness() -> String {
    "0s".into()
}

fn default_idle_partition_timeout() -> String {
    "10s".into()
}

impl Default for RawRules {
    fn default() -> Self {
        RawRules {
            dirs: default_rule_dirs(),
            allowed_lateness: default_lateness(),
            idle_partition_timeout: default_idle_partition_timeout(),
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

#[derive(Debug, Clone)]
pub struct EnrichConfig {
    pub namespaces: Option<PathBuf>,
    pub directory: Option<PathBuf>,
    pub dedupe_horizon: Duration,
    pub dedupe_capacity: usize,
    pub dedupe_dir: Option<PathBuf>,
}

/// `[rules]`, validated.
#[derive(Debug, Clone)]
pub struct RulesConfig {
    pub dirs: Vec<PathBuf>,
    pub allowed_lateness: Duration,
    pub idle_partition_timeout: Duration,
}

/// `[window]`, validated.
#[derive(Debug, Clone)]
pub struct WindowConfig {
    pub retention: Duration,
    pub max_memory: usize,
}

impl RawEnrich {
    pub(super) fn validate(self, check: Check<'_>) -> Result<EnrichConfig, ConfigError> {
        Ok(EnrichConfig {
            namespaces: self.namespaces,
            directory: self.directory,
            dedupe_horizon: check.duration("enrich.dedupe_horizon", &self.dedupe_horizon)?,
            dedupe_capacity: self.dedupe_capacity,
            dedupe_dir: self.dedupe_dir,
        })
    }
}

impl RawRules {
    pub(super) fn validate(self, check: Check<'_>) -> Result<RulesConfig, ConfigError> {
        Ok(RulesConfig {
            allowed_lateness: check.duration("rules.allowed_lateness", &self.allowed_lateness)?,
            idle_partition_timeout: check.duration("rules.idle_partition_timeout", &self.idle_partition_timeout)?,
            dirs: self.dirs,
        })
    }
}

impl RawWindow {
    pub(super) fn validate(self, check: Check<'_>) -> Result<WindowConfig, ConfigError> {
        if self.max_memory < 1 << 20 {
            return Err(check.invalid("window.max_memory", "must be at least 1048576"));
        }
        Ok(WindowConfig {
            retention: check.duration("window.retention", &self.retention)?,
            max_memory: self.max_memory,
        })
    }
}
