//! `sql`: a query over the recent window, run every `every`; each returned row is an alert.
//! Columns other than `value` become the alert's labels (and its group key); a numeric `value`
//! column is the observed value. A row that stops being returned resolves its alert.
//!
//! SQL rules run in their own task (queries are asynchronous and read the whole window), not on
//! the batch path.

use std::collections::{BTreeMap, HashSet};

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::array_value_to_string;

use std::sync::LazyLock;
use std::time::Duration;

use super::RuleMeta;
use super::alert::{Lifecycle, Observation};
use super::load::Fields;
use crate::config::SqlLimits;
use crate::event::Alert;
use crate::query::engine::QueryEngine;
use crate::query::window::Window;

/// Plans `sql` rules at load and reload against the (empty) tables, so unknown tables and
/// columns fail there. One per process, built on first use: planning in-memory tables does no
/// IO, and one small runtime serves every load instead of a new one each time.
static PLANNER: LazyLock<QueryEngine> = LazyLock::new(|| {
    let limits = SqlLimits {
        threads: 1,
        ..SqlLimits::default()
    };
    QueryEngine::with_limits(&Window::new(Duration::from_secs(60)), limits)
});

pub struct SqlRule {
    pub query: String,
    pub every_us: i64,
    last_run_us: Option<i64>,
    lifecycle: Lifecycle,
}

impl SqlRule {
    pub fn new(query: String, every_us: i64) -> SqlRule {
        SqlRule {
            query,
            every_us: every_us.max(1_000_000),
            last_run_us: None,
            lifecycle: Lifecycle::default(),
        }
    }

    /// `query` (required, planned now) and `every` (default 1m).
    pub(super) fn validate(f: &Fields<'_>) -> Result<SqlRule, super::RulesError> {
        let query = f.required("query", &f.raw.query)?;
        // A plain executor serves, from sync and async callers alike: planning does no IO.
        futures::executor::block_on(PLANNER.plan(&query)).map_err(|e| f.err("query", e.to_string()))?;
        let every_us = f.duration_us("every", &f.raw.every)?.unwrap_or(60_000_000);
        Ok(SqlRule::new(query, every_us))
    }

    pub fn is_due(&self, now_us: i64) -> bool {
        self.last_run_us.is_none_or(|last| now_us - last >= self.every_us)
    }

    /// Turns a query result into alerts (firing for every row, resolved for keys now absent).
    pub fn alerts_from(&mut self, meta: &RuleMeta, batches: &[RecordBatch], now_us: i64) -> Vec<Alert> {
        self.last_run_us = Some(now_us);
        let mut alerts = Vec::new();
        let mut present: HashSet<Vec<String>> = HashSet::new();
        for batch in batches {
            let schema = batch.schema();
            let value_col = schema.index_of("value").ok();
            let values = value_col.and_then(|i| cast(batch.column(i), &DataType::Float64).ok());
            for row in 0..batch.num_rows() {
                let mut labels = BTreeMap::new();
                for (i, field) in schema.fields().iter().enumerate() {
                    if Some(i) == value_col {
                        continue;
                    }
                    let column = batch.column(i);
                    let text = if column.is_null(row) {
                        String::new()
                    } else {
                        array_value_to_string(column, row).unwrap_or_default()
                    };
                    labels.insert(field.name().clone(), text);
                }
                let key: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let value = values
                    .as_ref()
                    .and_then(|v| {
                        v.as_any()
                            .downcast_ref::<datafusion::arrow::array::Float64Array>()
                            .map(|a| a.value(row))
                    })
                    .unwrap_or(1.0);
                present.insert(key.clone());
                let obs = Observation {
                    key: &key,
                    labels,
                    value,
                    threshold: None,
                    evidence: Vec::new(),
                    context: BTreeMap::new(),
                };
                alerts.extend(self.lifecycle.firing(meta, obs, now_us));
            }
        }
        for key in self.lifecycle.firing_keys() {
            if !present.contains(&key) {
                let labels = key
                    .iter()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                let obs = Observation {
                    key: &key,
                    labels,
                    value: 0.0,
                    threshold: None,
                    evidence: Vec::new(),
                    context: BTreeMap::new(),
                };
                alerts.extend(self.lifecycle.clear(meta, obs, now_us));
            }
        }
        alerts
    }

    /// Runs the query if due; query errors are logged and retried next time.
    pub async fn run(&mut self, meta: &RuleMeta, engine: &QueryEngine, now_us: i64) -> Vec<Alert> {
        if !self.is_due(now_us) {
            return Vec::new();
        }
        match engine.query(&self.query).await {
            Ok((_, batches)) => self.alerts_from(meta, &batches, now_us),
            Err(e) => {
                self.last_run_us = Some(now_us);
                tracing::warn!(rule = %meta.id, error = %e, "sql rule query failed");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    fn result(rows: &[(&str, f64)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("topic", DataType::Utf8, false),
            Field::new("value", DataType::Float64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
                Arc::new(Float64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn rows_fire_and_absent_rows_resolve() {
        let ctx = datafusion::execution::context::SessionContext::new();
        let text = "groups:\n  - name: g\n    rules:\n      - id: q\n        kind: sql\n        query: \"SELECT topic, sum(value) AS value FROM metrics GROUP BY topic\"\n        severity: low\n        summary: \"{{ topic }} {{ value }}\"\n";
        let mut rules = crate::rules::parse_rules(&ctx, text, std::path::Path::new("q.yaml")).unwrap();
        let rule = rules.remove(0);
        let crate::rules::RuleKind::Sql(mut sql) = rule.kind else {
            panic!("not sql")
        };
        let a = sql.alerts_from(&rule.meta, &[result(&[("t1", 5.0), ("t2", 7.0)])], 1);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].summary, "t1 5");
        let a = sql.alerts_from(&rule.meta, &[result(&[("t2", 8.0)])], 2);
        assert_eq!(a.len(), 1, "t2 repeats are suppressed, t1 resolves");
        assert_eq!(a[0].status, crate::event::AlertStatus::Resolved);
        assert_eq!(a[0].labels["topic"], "t1");
        // An unknown table is refused at load.
        let bad = text.replace("FROM metrics", "FROM nope");
        let err = crate::rules::parse_rules(&ctx, &bad, std::path::Path::new("q.yaml"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("query") && err.contains("nope"), "{err}");
    }
}
