//! Detection rules (PRODUCT 2): YAML files under `rules/` and the directories the config names,
//! loaded and validated into a closed set of kinds, then evaluated on every Arrow batch.
//!
//! Loading is strict: a wrong key, an unknown column in `where:` or `group_by:`, a predicate that
//! is not boolean, or a bad duration is an error naming the file, the line and the field.
//! Windows run on event time; state per rule is capped (`max_series`).

pub mod alert;
pub mod anomaly;
pub mod count;
pub mod engine;
pub mod match_rule;
pub mod new_value;
pub mod predicate;
pub mod sql_rule;
pub mod testing;
pub mod threshold;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::context::SessionContext;
use serde::Deserialize;

use crate::query::tables::{ALERTS_SCHEMA, AUDIT_SCHEMA, METRICS_SCHEMA};
use anomaly::{AnomalyRule, AnomalySettings};
use count::CountRule;
use match_rule::MatchRule;
use new_value::NewValueRule;
use predicate::Predicate;
use sql_rule::SqlRule;
use threshold::{Aggregate, Comparison, ThresholdRule, ThresholdSettings};

pub use engine::RuleEngine;

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
// Raw, as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuleFile {
    groups: Vec<RawGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: String,
    #[serde(default)]
    rules: Vec<RawRule>,
}

/// One rule as written. Kind-specific fields are checked in `validate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    /// Unique, stable id: alerts and tests refer to it.
    id: String,
    /// `match`, `count` or `threshold`.
    kind: String,
    /// `audit` (default), `metrics` or `alerts`.
    #[serde(default)]
    source: Option<String>,
    /// SQL boolean expression over the source table's columns.
    #[serde(rename = "where", default)]
    where_: Option<String>,
    /// Columns whose values key a series (Sigma: `group-by`).
    #[serde(default, alias = "group-by")]
    group_by: Vec<String>,
    /// Sliding window on event time (Sigma: `timespan`).
    #[serde(default, alias = "timespan")]
    window: Option<String>,
    /// `count`: fire when the count reaches this.
    #[serde(default)]
    threshold: Option<f64>,
    /// `count`: count distinct values of this column instead of events.
    #[serde(default)]
    distinct: Option<String>,
    /// `threshold`: the metric name.
    #[serde(default)]
    metric: Option<String>,
    /// `threshold`: sum (default), avg, max, min, rate (per second), last.
    #[serde(default)]
    aggregate: Option<String>,
    /// `threshold`: `>` (default), `>=`, `<`, `<=`.
    #[serde(default)]
    op: Option<String>,
    /// `threshold`: the value compared with.
    #[serde(default)]
    value: Option<f64>,
    /// `threshold`: how long the condition must hold before firing. Default 0s.
    #[serde(rename = "for", default)]
    for_: Option<String>,
    /// info, low, medium, high or critical.
    severity: String,
    /// Template: `{{ label }}`, `{{ value }}`, `{{ threshold }}`, and (match) any column.
    summary: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    runbook: Option<String>,
    /// Repeats of a firing alert are suppressed this long. Default 1h.
    #[serde(default)]
    repeat_interval: Option<String>,
    /// Extra labels every alert of the rule carries.
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Most series tracked; new series past it are shed and counted. Default 100000.
    #[serde(default)]
    max_series: Option<usize>,
    /// `anomaly`: time constant of the baseline (EWMA), e.g. `1h`. Default `1h`.
    #[serde(default)]
    baseline: Option<String>,
    /// `anomaly`: standard deviations above the baseline that make a bucket anomalous. Default 4.
    #[serde(default)]
    sigma: Option<f64>,
    /// `anomaly`: smallest bucket value that may alert (ignores spikes of nothing). Default 0.
    #[serde(default)]
    min_value: Option<f64>,
    /// `anomaly`: buckets seen before a series may alert. Default 10.
    #[serde(default)]
    min_samples: Option<u32>,
    /// `new_value`: the column whose new values alert.
    #[serde(default)]
    field: Option<String>,
    /// `new_value`: how long values are only learned, e.g. `24h`. Default `24h`.
    #[serde(default)]
    learn: Option<String>,
    /// `sql`: the query; each returned row is an alert.
    #[serde(default)]
    query: Option<String>,
    /// `sql`: how often the query runs, e.g. `1m`. Default `1m`.
    #[serde(default)]
    every: Option<String>,
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
    /// Names principals in alerts (`payments-batch (sa-m3n8zd, Tech03)`), when configured.
    pub directory: Option<std::sync::Arc<crate::enrich::directory::Directory>>,
}

static TEMPLATES: LazyLock<minijinja::Environment<'static>> = LazyLock::new(minijinja::Environment::new);

impl RuleMeta {
    pub fn render(&self, template: &str, ctx: &BTreeMap<String, minijinja::Value>) -> String {
        TEMPLATES
            .render_str(template, ctx)
            .unwrap_or_else(|e| format!("{template} (template error: {e})"))
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
}

/// Files under `dir` (recursively) whose name `keep` accepts, sorted.
pub fn find_files(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>, RulesError> {
    let read_error = |path: &Path| {
        let path = path.to_owned();
        move |source| RulesError::Read { path, source }
    };
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(read_error(&d))? {
            let path = entry.map_err(read_error(&d))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().and_then(|n| n.to_str()).is_some_and(&keep) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Whether a file name is a rule test file (`NAME.test.yaml`).
pub fn is_test_file(name: &str) -> bool {
    name.ends_with(".test.yaml") || name.ends_with(".test.yml")
}

/// Rule files in `dir`: `*.yaml`/`*.yml`, except `*.test.yaml`, sorted by name.
pub fn rule_files(dir: &Path) -> Result<Vec<PathBuf>, RulesError> {
    find_files(dir, |name| {
        (name.ends_with(".yaml") || name.ends_with(".yml")) && !is_test_file(name)
    })
}

/// Loads and validates every rule under `dirs`.
pub fn load_dirs(dirs: &[PathBuf]) -> Result<Vec<Rule>, RulesError> {
    let ctx = SessionContext::new();
    let mut rules: Vec<Rule> = Vec::new();
    for dir in dirs {
        for file in rule_files(dir)? {
            for rule in load_file(&ctx, &file)? {
                if let Some(first) = rules.iter().find(|r| r.meta.id == rule.meta.id) {
                    return Err(RulesError::DuplicateId {
                        id: rule.meta.id.clone(),
                        first: first.meta.file.clone(),
                        second: file.clone(),
                    });
                }
                rules.push(rule);
            }
        }
    }
    Ok(rules)
}

/// Loads one rule file.
pub fn load_file(ctx: &SessionContext, path: &Path) -> Result<Vec<Rule>, RulesError> {
    let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_rules(ctx, &text, path)
}

static RULE_FILE_SCHEMA: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("rule_file.schema.json")).expect("the rule file schema is valid JSON");
    jsonschema::validator_for(&schema).expect("the rule file schema compiles")
});

/// Checks rule text against the rule-file JSON Schema; the error names the line and field.
fn check_schema(text: &str, path: &Path) -> Result<(), RulesError> {
    let Ok(value) = serde_yaml::from_str::<serde_json::Value>(text) else {
        return Ok(()); // not YAML at all: the typed parse reports it with its location
    };
    let Some(e) = RULE_FILE_SCHEMA.iter_errors(&value).next() else {
        return Ok(());
    };
    let pointer = e.instance_path().to_string();
    let parts: Vec<&str> = pointer.split('/').filter(|p| !p.is_empty()).collect();
    // `/groups/G/rules/R/FIELD...`: name the rule and the field.
    let (rule, field) = match parts.as_slice() {
        ["groups", g, "rules", r, field, ..] => {
            let id = value
                .pointer(&format!("/groups/{g}/rules/{r}/id"))
                .and_then(|v| v.as_str())
                .unwrap_or("?");
            (id.to_owned(), (*field).to_owned())
        }
        ["groups", g, "rules", r] => {
            let id = value
                .pointer(&format!("/groups/{g}/rules/{r}/id"))
                .and_then(|v| v.as_str())
                .unwrap_or("?");
            (id.to_owned(), "kind".to_owned())
        }
        _ => {
            return Err(RulesError::Parse {
                path: path.to_owned(),
                message: format!("at {pointer}: {e}"),
            });
        }
    };
    Err(RulesError::Invalid {
        path: path.to_owned(),
        line: line_of(text, &rule, &field),
        rule,
        field,
        message: format!("{e} (rule file schema)"),
    })
}

/// Parses and validates rule text; `path` names it in errors.
pub fn parse_rules(ctx: &SessionContext, text: &str, path: &Path) -> Result<Vec<Rule>, RulesError> {
    // Typed parse first: it names unknown keys with their line; then the schema's checks.
    let raw: RawRuleFile = serde_yaml::from_str(text).map_err(|e| RulesError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    check_schema(text, path)?;
    let mut out = Vec::new();
    for group in raw.groups {
        for rule in group.rules {
            out.push(validate(ctx, rule, &group.name, text, path)?);
        }
    }
    Ok(out)
}

/// The line of `field:` inside the rule `id` (1-based), or the rule's own line.
fn line_of(text: &str, id: &str, field: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let is_id = |l: &str| {
        let t = l.trim_start().trim_start_matches("- ").trim();
        t.strip_prefix("id:")
            .is_some_and(|v| v.trim().trim_matches(|c| c == '"' || c == '\'') == id)
    };
    let Some(start) = lines.iter().position(|l| is_id(l)) else {
        return 1;
    };
    let key = format!("{field}:");
    for (i, l) in lines.iter().enumerate().skip(start) {
        if i > start && l.trim_start().starts_with("- id:") {
            break;
        }
        if l.trim_start().trim_start_matches("- ").starts_with(&key) {
            return i + 1;
        }
    }
    start + 1
}

fn validate(ctx: &SessionContext, r: RawRule, group: &str, text: &str, path: &Path) -> Result<Rule, RulesError> {
    let fingerprint = format!("{group}/{r:?}");
    let err = |field: &str, message: String| RulesError::Invalid {
        path: path.to_owned(),
        line: line_of(text, &r.id, field),
        rule: r.id.clone(),
        field: field.to_owned(),
        message,
    };
    if r.id.is_empty()
        || !r
            .id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(err(
            "id",
            "must be non-empty lowercase letters, digits, `-` or `_`".into(),
        ));
    }
    let source = match r
        .source
        .as_deref()
        .unwrap_or(if r.kind == "threshold" { "metrics" } else { "audit" })
    {
        "audit" => Source::Audit,
        "metrics" => Source::Metrics,
        "alerts" => Source::Alerts,
        other => return Err(err("source", format!("`{other}` is not one of audit, metrics, alerts"))),
    };
    if !["info", "low", "medium", "high", "critical"].contains(&r.severity.as_str()) {
        return Err(err(
            "severity",
            format!("`{}` is not one of info, low, medium, high, critical", r.severity),
        ));
    }
    for (field, template) in [("summary", Some(&r.summary)), ("description", r.description.as_ref())] {
        if let Some(t) = template
            && let Err(e) = TEMPLATES.template_from_str(t)
        {
            return Err(err(field, format!("bad template: {e}")));
        }
    }
    let dur = |field: &str, v: &Option<String>| -> Result<Option<i64>, RulesError> {
        v.as_deref()
            .map(|t| {
                humantime::parse_duration(t)
                    .map(|d| d.as_micros() as i64)
                    .map_err(|e| err(field, format!("`{t}` is not a duration (e.g. 30s, 5m, 1h): {e}")))
            })
            .transpose()
    };
    let repeat_interval_us = dur("repeat_interval", &r.repeat_interval)?.unwrap_or(3_600_000_000);
    let window_us = dur("window", &r.window)?;
    let schema = source.schema();
    for column in r.group_by.iter().chain(r.distinct.iter()).chain(r.field.iter()) {
        if schema.field_with_name(column).is_err() {
            let field = if r.distinct.as_ref() == Some(column) {
                "distinct"
            } else if r.field.as_ref() == Some(column) {
                "field"
            } else {
                "group_by"
            };
            return Err(err(field, format!("unknown column `{column}`")));
        }
    }
    let predicate = |sql: &str| Predicate::compile(ctx, sql, schema).map_err(|m| err("where", m));
    let max_series = r.max_series.unwrap_or(100_000);

    let kind = match r.kind.as_str() {
        "match" => {
            let sql = r
                .where_
                .as_deref()
                .ok_or_else(|| err("where", "a match rule needs `where`".into()))?;
            RuleKind::Match(MatchRule::new(predicate(sql)?, r.group_by.clone()))
        }
        "count" => {
            let window_us = window_us.ok_or_else(|| err("window", "a count rule needs `window`".into()))?;
            let threshold = r
                .threshold
                .ok_or_else(|| err("threshold", "a count rule needs `threshold`".into()))?;
            let sql = r.where_.as_deref().unwrap_or("true");
            RuleKind::Count(CountRule::new(
                predicate(sql)?,
                r.group_by.clone(),
                r.distinct.clone(),
                window_us,
                threshold,
                max_series,
            ))
        }
        "threshold" => {
            if source != Source::Metrics {
                return Err(err("source", "a threshold rule reads `metrics`".into()));
            }
            let metric = r
                .metric
                .as_deref()
                .ok_or_else(|| err("metric", "a threshold rule needs `metric`".into()))?;
            let window_us = window_us.ok_or_else(|| err("window", "a threshold rule needs `window`".into()))?;
            let value = r
                .value
                .ok_or_else(|| err("value", "a threshold rule needs `value`".into()))?;
            let aggregate =
                Aggregate::parse(r.aggregate.as_deref().unwrap_or("sum")).map_err(|m| err("aggregate", m))?;
            let comparison = Comparison::parse(r.op.as_deref().unwrap_or(">")).map_err(|m| err("op", m))?;
            let for_us = dur("for", &r.for_)?.unwrap_or(0);
            let escaped = metric.replace('\'', "''");
            let sql = match &r.where_ {
                Some(w) => format!("name = '{escaped}' AND ({w})"),
                None => format!("name = '{escaped}'"),
            };
            let settings = ThresholdSettings {
                window_us,
                aggregate,
                comparison,
                value,
                for_us,
                max_series,
            };
            RuleKind::Threshold(ThresholdRule::new(predicate(&sql)?, r.group_by.clone(), settings))
        }
        "anomaly" => {
            let sql = match (source, &r.metric, &r.where_) {
                (Source::Metrics, Some(metric), w) => {
                    let m = format!("name = '{}'", metric.replace('\'', "''"));
                    w.as_ref().map_or(m.clone(), |w| format!("{m} AND ({w})"))
                }
                (Source::Metrics, None, _) => {
                    return Err(err("metric", "an anomaly rule on metrics needs `metric`".into()));
                }
                (_, _, w) => w.clone().unwrap_or_else(|| "true".into()),
            };
            let sigma = r.sigma.unwrap_or(4.0);
            if sigma <= 0.0 {
                return Err(err("sigma", "must be positive".into()));
            }
            let settings = AnomalySettings {
                bucket_us: window_us.unwrap_or(60_000_000),
                baseline_us: dur("baseline", &r.baseline)?.unwrap_or(3_600_000_000),
                sigma,
                min_value: r.min_value.unwrap_or(0.0),
                min_samples: r.min_samples.unwrap_or(10),
                for_us: dur("for", &r.for_)?.unwrap_or(0),
                max_series,
            };
            RuleKind::Anomaly(AnomalyRule::new(
                predicate(&sql)?,
                r.group_by.clone(),
                source == Source::Metrics,
                settings,
            ))
        }
        "new_value" => {
            let field = r
                .field
                .clone()
                .ok_or_else(|| err("field", "a new_value rule needs `field`".into()))?;
            let learn_us = dur("learn", &r.learn)?.unwrap_or(86_400_000_000);
            let sql = r.where_.as_deref().unwrap_or("true");
            RuleKind::NewValue(NewValueRule::new(
                predicate(sql)?,
                r.group_by.clone(),
                field,
                learn_us,
                max_series,
            ))
        }
        "sql" => {
            let query = r
                .query
                .clone()
                .ok_or_else(|| err("query", "a sql rule needs `query`".into()))?;
            // Plan it now against the (empty) tables: unknown tables and columns fail at load.
            // Planning in-memory tables does no IO, so a plain executor serves, from sync and
            // async callers alike.
            let window = crate::query::window::Window::new(std::time::Duration::from_secs(60));
            let engine = crate::query::engine::QueryEngine::new(&window);
            futures::executor::block_on(engine.plan(&query)).map_err(|e| err("query", e.to_string()))?;
            let every_us = dur("every", &r.every)?.unwrap_or(60_000_000);
            RuleKind::Sql(SqlRule::new(query, every_us))
        }
        other => {
            return Err(err(
                "kind",
                format!("`{other}` is not one of match, count, threshold, anomaly, new_value, sql"),
            ));
        }
    };
    Ok(Rule {
        meta: RuleMeta {
            id: r.id.clone(),
            group: group.to_owned(),
            source,
            severity: r.severity.clone(),
            summary: r.summary.clone(),
            description: r.description.clone(),
            runbook: r.runbook.clone(),
            repeat_interval_us,
            labels: r.labels.clone(),
            file: path.to_owned(),
            fingerprint,
            directory: None,
        },
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Rule>, RulesError> {
        parse_rules(&SessionContext::new(), text, Path::new("rules/x.yaml"))
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let text = "groups:\n  - name: g\n    rules:\n      - id: r1\n        kind: count\n        where: \"nope = 1\"\n        window: 5m\n        threshold: 3\n        severity: high\n        summary: s\n";
        let e = parse(text).err().unwrap().to_string();
        assert!(
            e.contains("rules/x.yaml:6") && e.contains("`where`") && e.contains("nope"),
            "{e}"
        );

        let text = "groups:\n  - name: g\n    rules:\n      - id: r1\n        kind: count\n        window: 5m\n        threshold: 3\n        group_by: [principle]\n        severity: high\n        summary: s\n";
        let e = parse(text).err().unwrap().to_string();
        assert!(e.contains(":8:") && e.contains("principle"), "{e}");

        let text = "groups:\n  - name: g\n    rules:\n      - id: r1\n        kind: match\n        wher: \"true\"\n";
        let e = parse(text).err().unwrap().to_string();
        assert!(e.contains("wher") && e.contains("line 6"), "{e}");
    }

    #[test]
    fn the_rule_file_schema_names_line_and_field() {
        let text = "groups:\n  - name: g\n    rules:\n      - id: r1\n        kind: count\n        window: 5m\n        threshold: 3\n        severity: urgent\n        summary: s\n";
        let e = parse(text).err().unwrap().to_string();
        assert!(
            e.contains("x.yaml:8") && e.contains("`severity`") && e.contains("urgent"),
            "{e}"
        );
        let text = "groups:\n  - name: g\n    rules:\n      - id: r1\n        kind: threshold\n        metric: m\n        window: five minutes\n        value: 3\n        severity: low\n        summary: s\n";
        let e = parse(text).err().unwrap().to_string();
        assert!(e.contains("x.yaml:7") && e.contains("`window`"), "{e}");
    }

    #[test]
    fn sigma_spellings_are_accepted() {
        let text = "groups:\n  - name: g\n    rules:\n      - id: r1\n        kind: count\n        group-by: [principal]\n        timespan: 5m\n        threshold: 3\n        severity: high\n        summary: s\n";
        let rules = parse(text).unwrap();
        assert_eq!(rules[0].kind.name(), "count");
    }

    #[test]
    fn the_shipped_pack_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let rules = load_dirs(&[dir]).unwrap();
        for id in ["auth-failure-burst", "cross-namespace-denied", "egress-bytes-high"] {
            assert!(rules.iter().any(|r| r.meta.id == id), "missing {id}");
        }
    }
}
