//! Detection rules (docs/PRODUCT.md §2): YAML files under `rules/` and the directories the config names,
//! loaded and validated into a closed set of kinds, then evaluated on every Arrow batch.
//!
//! Loading is strict: a wrong key, an unknown column in `where:` or `group_by:`, a predicate that
//! is not boolean, or a bad duration is an error naming the file, the line and the field.
//! Windows run on event time; state per rule is capped (`max_series`).

pub mod alert;
pub mod anomaly;
pub mod clock;
pub mod count;
pub mod engine;
pub mod load;
pub mod match_rule;
pub mod new_value;
pub mod predicate;
pub mod reorder;
pub mod sigma;
pub mod sql_rule;
pub mod testing;
pub mod threshold;

use std::collections::BTreeMap;
use std::path::PathBuf;

use datafusion::arrow::datatypes::SchemaRef;

use crate::event::arrow::{ALERTS_SCHEMA, AUDIT_SCHEMA, METRICS_SCHEMA};
use anomaly::AnomalyRule;
use count::CountRule;
use match_rule::MatchRule;
use new_value::NewValueRule;
use sql_rule::SqlRule;
use threshold::ThresholdRule;

pub use engine::RuleEngine;
pub use load::{find_files, is_test_file, load_dirs, load_file, parse_rules, rule_files};

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("reading rules {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}:{line}: rule `{rule}`: field `{field}`: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        rule: String,
        field: String,
        message: String,
    },
    #[error("rule id `{id}` is defined twice: {first} and {second}")]
    DuplicateId {
        id: String,
        first: PathBuf,
        second: PathBuf,
    },
}

/// Which table a rule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Audit,
    Metrics,
    Alerts,
}

impl Source {
    pub fn schema(self) -> &'static SchemaRef {
        match self {
            Source::Audit => &AUDIT_SCHEMA,
            Source::Metrics => &METRICS_SCHEMA,
            Source::Alerts => &ALERTS_SCHEMA,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validated.

/// What every rule has, whatever its kind.
#[derive(Debug, Clone)]
pub struct RuleMeta {
    pub id: String,
    pub group: String,
    pub source: Source,
    pub severity: String,
    pub summary: String,
    pub description: Option<String>,
    pub runbook: Option<String>,
    pub repeat_interval_us: i64,
    pub labels: BTreeMap<String, String>,
    pub file: PathBuf,
    /// The rule's definition as loaded: a reload keeps the state of rules whose fingerprint
    /// did not change.
    pub fingerprint: String,
    /// The columns of its table the rule reads: its `where`, `group_by`, `distinct`, `field`,
    /// and the row columns its templates name. Rows wait for the rules with only the columns
    /// some rule reads (see [`engine::RuleEngine::columns_read`]).
    pub columns: Vec<String>,
    /// Names principals in alerts (`payments-batch (sa-m3n8zd, Tech03)`), when configured.
    pub directory: Option<std::sync::Arc<crate::enrich::directory::Directory>>,
    /// The names the summary and description read: an alert's template context holds these
    /// only. Building a map of every column of the row (and a template value of each) per
    /// alert was most of an alert's cost, and a burst of 5,000 alerts held the evaluator for
    /// 140-230 ms.
    pub template_names: Vec<String>,
    /// The row columns an alert's context takes from its event: the columns among
    /// `template_names`, and the principal columns the directory names people by.
    pub context_columns: Vec<String>,
    /// The summary (`summary`) and description (`description`), compiled once at load
    /// instead of parsed again for every alert.
    pub templates: std::sync::Arc<minijinja::Environment<'static>>,
}

impl RuleMeta {
    /// Whether the rule reads the `raw` column (templates never see it). Rows wait for the
    /// rules without their `raw` when no rule reads it.
    pub fn reads_raw(&self) -> bool {
        self.columns.iter().any(|c| c == "raw")
    }

    /// Renders the compiled template `name` (`summary` or `description`) with `ctx`; on an
    /// error, its text with the error.
    pub fn render(&self, name: &str, ctx: &BTreeMap<String, minijinja::Value>) -> String {
        match self.templates.get_template(name) {
            Ok(template) => template
                .render(ctx)
                .unwrap_or_else(|e| format!("{} (template error: {e})", template.source())),
            Err(e) => format!("{name} (template error: {e})"),
        }
    }
}

/// A rule: its metadata and its kind-specific logic and state.
pub struct Rule {
    pub meta: RuleMeta,
    pub kind: RuleKind,
}

/// The closed set of rule kinds; one file each.
pub enum RuleKind {
    Match(MatchRule),
    Count(CountRule),
    Threshold(ThresholdRule),
    Anomaly(AnomalyRule),
    NewValue(NewValueRule),
    /// Runs on a schedule in its own task, not on batches.
    Sql(SqlRule),
}

impl RuleKind {
    pub fn name(&self) -> &'static str {
        match self {
            RuleKind::Match(_) => "match",
            RuleKind::Count(_) => "count",
            RuleKind::Threshold(_) => "threshold",
            RuleKind::Anomaly(_) => "anomaly",
            RuleKind::NewValue(_) => "new_value",
            RuleKind::Sql(_) => "sql",
        }
    }

    /// The rule's `where`, compiled (none for `sql` rules, which query the window instead).
    pub fn predicate(&self) -> Option<&predicate::Predicate> {
        match self {
            RuleKind::Match(r) => Some(&r.predicate),
            RuleKind::Count(r) => Some(&r.predicate),
            RuleKind::Threshold(r) => Some(&r.predicate),
            RuleKind::Anomaly(r) => Some(&r.predicate),
            RuleKind::NewValue(r) => Some(&r.predicate),
            RuleKind::Sql(_) => None,
        }
    }
}
