//! Loading rule files: YAML parsed into [`RawRule`]s (unknown keys refused, with their line),
//! checked against `rule_file.schema.json`, then validated; what every kind shares is checked
//! here and each kind validates its own fields in its own file, through [`Fields`], which names
//! the file, the line and the field in every error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use datafusion::execution::context::SessionContext;
use serde::Deserialize;

use super::anomaly::AnomalyRule;
use super::count::CountRule;
use super::match_rule::MatchRule;
use super::new_value::NewValueRule;
use super::predicate::Predicate;
use super::sql_rule::SqlRule;
use super::threshold::ThresholdRule;
use super::{Rule, RuleKind, RuleMeta, RulesError, Source};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRuleFile {
    pub(super) groups: Vec<RawGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroup {
    pub(super) name: String,
    #[serde(default)]
    pub(super) rules: Vec<RawRule>,
}

/// One rule as written. Kind-specific fields are checked in `validate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    /// Unique, stable id: alerts and tests refer to it.
    pub(super) id: String,
    /// `match`, `count` or `threshold`.
    pub(super) kind: String,
    /// `audit` (default), `metrics` or `alerts`.
    #[serde(default)]
    pub(super) source: Option<String>,
    /// SQL boolean expression over the source table's columns.
    #[serde(rename = "where", default)]
    pub(super) where_: Option<String>,
    /// Columns whose values key a series (Sigma: `group-by`).
    #[serde(default, alias = "group-by")]
    pub(super) group_by: Vec<String>,
    /// Sliding window on event time (Sigma: `timespan`).
    #[serde(default, alias = "timespan")]
    pub(super) window: Option<String>,
    /// `count`: fire when the count reaches this.
    #[serde(default)]
    pub(super) threshold: Option<f64>,
    /// `count`: count distinct values of this column instead of events.
    #[serde(default)]
    pub(super) distinct: Option<String>,
    /// `threshold`: the metric name.
    #[serde(default)]
    pub(super) metric: Option<String>,
    /// `threshold`: sum (default), avg, max, min, rate (per second), last.
    #[serde(default)]
    pub(super) aggregate: Option<String>,
    /// `threshold`: `>` (default), `>=`, `<`, `<=`.
    #[serde(default)]
    pub(super) op: Option<String>,
    /// `threshold`: the value compared with.
    #[serde(default)]
    pub(super) value: Option<f64>,
    /// `threshold`: how long the condition must hold before firing. Default 0s.
    #[serde(rename = "for", default)]
    pub(super) for_: Option<String>,
    /// `threshold`: a series seen before with no sample for the whole window holds too.
    #[serde(default)]
    pub(super) absent: Option<bool>,
    /// info, low, medium, high or critical.
    pub(super) severity: String,
    /// Template: `{{ label }}`, `{{ value }}`, `{{ threshold }}`, and (match) any column.
    pub(super) summary: String,
    #[serde(default)]
    pub(super) description: Option<String>,
    #[serde(default)]
    pub(super) runbook: Option<String>,
    /// Repeats of a firing alert are suppressed this long. Default 1h.
    #[serde(default)]
    pub(super) repeat_interval: Option<String>,
    /// Extra labels every alert of the rule carries.
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    /// Most series tracked; new series past it are shed and counted. Default 100000.
    #[serde(default)]
    pub(super) max_series: Option<usize>,
    /// `anomaly`: time constant of the baseline (EWMA), e.g. `1h`. Default `1h`.
    #[serde(default)]
    pub(super) baseline: Option<String>,
    /// `anomaly`: standard deviations above the baseline that make a bucket anomalous. Default 4.
    #[serde(default)]
    pub(super) sigma: Option<f64>,
    /// `anomaly`: smallest bucket value that may alert (ignores spikes of nothing). Default 0.
    #[serde(default)]
    pub(super) min_value: Option<f64>,
    /// `anomaly`: buckets seen before a series may alert. Default 10.
    #[serde(default)]
    pub(super) min_samples: Option<u32>,
    /// `new_value`: the column whose new values alert.
    #[serde(default)]
    pub(super) field: Option<String>,
    /// `new_value`: how long values are only learned, e.g. `24h`. Default `24h`.
    #[serde(default)]
    pub(super) learn: Option<String>,
    /// `sql`: the query; each returned row is an alert.
    #[serde(default)]
    pub(super) query: Option<String>,
    /// `sql`: how often the query runs, e.g. `1m`. Default `1m`.
    #[serde(default)]
    pub(super) every: Option<String>,
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

/// A raw rule being validated, and the helpers its kind's validator uses.
pub(super) struct Fields<'a> {
    pub raw: &'a RawRule,
    pub source: Source,
    /// `window`, parsed.
    pub window_us: Option<i64>,
    pub max_series: usize,
    ctx: &'a SessionContext,
    text: &'a str,
    path: &'a Path,
}

impl Fields<'_> {
    /// An error about `field` of this rule, at its line.
    pub fn err(&self, field: &str, message: impl Into<String>) -> RulesError {
        RulesError::Invalid {
            path: self.path.to_owned(),
            line: line_of(self.text, &self.raw.id, field),
            rule: self.raw.id.clone(),
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// A duration field, in microseconds.
    pub fn duration_us(&self, field: &str, value: &Option<String>) -> Result<Option<i64>, RulesError> {
        value
            .as_deref()
            .map(|t| {
                humantime::parse_duration(t)
                    .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
                    .map_err(|e| self.err(field, format!("`{t}` is not a duration (e.g. 30s, 5m, 1h): {e}")))
            })
            .transpose()
    }

    /// A field the kind cannot do without.
    pub fn required<T: Clone>(&self, field: &str, value: &Option<T>) -> Result<T, RulesError> {
        value
            .clone()
            .ok_or_else(|| self.err(field, format!("a {} rule needs `{field}`", self.raw.kind)))
    }

    /// A SQL boolean expression over the source table, compiled (errors name `where`).
    pub fn predicate(&self, sql: &str) -> Result<Predicate, RulesError> {
        Predicate::compile(self.ctx, sql, self.source.schema()).map_err(|m| self.err("where", m))
    }

    /// `where`, or every row.
    pub fn where_or_all(&self) -> &str {
        self.raw.where_.as_deref().unwrap_or("true")
    }
}

fn validate(ctx: &SessionContext, r: RawRule, group: &str, text: &str, path: &Path) -> Result<Rule, RulesError> {
    let fingerprint = format!("{group}/{r:?}");
    let source = match r
        .source
        .as_deref()
        .unwrap_or(if r.kind == "threshold" { "metrics" } else { "audit" })
    {
        "audit" => Ok(Source::Audit),
        "metrics" => Ok(Source::Metrics),
        "alerts" => Ok(Source::Alerts),
        other => Err(other.to_owned()),
    };
    let mut fields = Fields {
        raw: &r,
        source: source.clone().unwrap_or(Source::Audit),
        window_us: None,
        max_series: r.max_series.unwrap_or(100_000),
        ctx,
        text,
        path,
    };
    if r.id.is_empty()
        || !r
            .id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(fields.err("id", "must be non-empty lowercase letters, digits, `-` or `_`"));
    }
    let source =
        source.map_err(|other| fields.err("source", format!("`{other}` is not one of audit, metrics, alerts")))?;
    if !["info", "low", "medium", "high", "critical"].contains(&r.severity.as_str()) {
        return Err(fields.err(
            "severity",
            format!("`{}` is not one of info, low, medium, high, critical", r.severity),
        ));
    }
    // What the templates name: the row columns among them are read from the batch.
    let mut template_names = std::collections::BTreeSet::new();
    let mut templates = minijinja::Environment::new();
    for (field, template) in [("summary", Some(&r.summary)), ("description", r.description.as_ref())] {
        if let Some(t) = template {
            let compiled = templates
                .add_template_owned(field, t.clone())
                .and_then(|()| templates.get_template(field));
            match compiled {
                Ok(compiled) => template_names.extend(compiled.undeclared_variables(false)),
                Err(e) => return Err(fields.err(field, format!("bad template: {e}"))),
            }
        }
    }
    let repeat_interval_us = fields
        .duration_us("repeat_interval", &r.repeat_interval)?
        .unwrap_or(3_600_000_000);
    fields.window_us = fields.duration_us("window", &r.window)?;
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
            return Err(fields.err(field, format!("unknown column `{column}`")));
        }
    }
    let kind = match r.kind.as_str() {
        "match" => RuleKind::Match(MatchRule::validate(&fields)?),
        "count" => RuleKind::Count(CountRule::validate(&fields)?),
        "threshold" => RuleKind::Threshold(ThresholdRule::validate(&fields)?),
        "anomaly" => RuleKind::Anomaly(AnomalyRule::validate(&fields)?),
        "new_value" => RuleKind::NewValue(NewValueRule::validate(&fields)?),
        "sql" => RuleKind::Sql(SqlRule::validate(&fields)?),
        other => {
            return Err(fields.err(
                "kind",
                format!("`{other}` is not one of match, count, threshold, anomaly, new_value, sql"),
            ));
        }
    };
    // What the rule reads: its `where` (as compiled), `group_by`, `distinct`, `field`, and the
    // row columns its templates name (they see every column but `raw`: `BatchView::row_context`).
    let mut columns: std::collections::BTreeSet<String> = r
        .group_by
        .iter()
        .chain(r.distinct.iter())
        .chain(r.field.iter())
        .cloned()
        .collect();
    columns.extend(kind.predicate().into_iter().flat_map(|p| p.columns().iter().cloned()));
    let row_column = |n: &String| n != "raw" && schema.field_with_name(n).is_ok();
    let mut context_columns: Vec<String> = template_names.iter().filter(|n| row_column(n)).cloned().collect();
    columns.extend(context_columns.iter().cloned());
    for principal in ["principal", "auth_identifier"] {
        if schema.field_with_name(principal).is_ok() && !context_columns.iter().any(|c| c == principal) {
            context_columns.push(principal.to_owned());
        }
    }
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
            columns: columns.into_iter().collect(),
            directory: None,
            template_names: template_names.into_iter().collect(),
            context_columns,
            templates: std::sync::Arc::new(templates),
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
