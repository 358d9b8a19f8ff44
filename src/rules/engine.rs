//! Runs every rule on every batch. Audit and metrics rows reach the rules in event-time order,
//! through a [`Reorder`] buffer per table released by the table's [`super::clock`]; alerts are
//! evaluated as they come.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::array_value_to_string;

use super::clock::Watermark;
use super::reorder::Reorder;
use super::{Rule, RuleKind, Source};
use crate::event::Alert;

/// Read access to the rows of one batch, as rules need them.
pub struct BatchView<'a> {
    pub batch: &'a RecordBatch,
    time: &'a TimestampMicrosecondArray,
    id: Option<&'a StringArray>,
    strings: BTreeMap<String, ArrayRef>,
}

impl<'a> BatchView<'a> {
    pub fn new(batch: &'a RecordBatch) -> BatchView<'a> {
        let time = batch
            .column_by_name("time")
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
            .expect("every table has a microsecond `time` column");
        let id = batch
            .column_by_name("id")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>());
        BatchView {
            batch,
            time,
            id,
            strings: BTreeMap::new(),
        }
    }

    pub fn time(&self, row: usize) -> i64 {
        self.time.value(row)
    }

    pub fn id(&self, row: usize) -> Option<String> {
        self.id.map(|a| a.value(row).to_owned())
    }

    pub fn max_time(&self) -> Option<i64> {
        datafusion::arrow::compute::max(self.time)
    }

    /// Reads `column` as text at any row, without a lookup by name per row.
    pub fn text_reader(&mut self, column: &str) -> TextReader {
        TextReader(self.text_column(column).clone())
    }

    /// `column` as text, cast once per batch.
    fn text_column(&mut self, column: &str) -> &ArrayRef {
        if !self.strings.contains_key(column) {
            let array = self
                .batch
                .column_by_name(column)
                .expect("columns are validated at load");
            let utf8 = cast(array, &DataType::Utf8).unwrap_or_else(|_| array.clone());
            self.strings.insert(column.to_owned(), utf8);
        }
        &self.strings[column]
    }

    /// The columns `columns` of `row` (those the batch has), for an alert's templates.
    pub fn row_context(&mut self, columns: &[String], row: usize) -> BTreeMap<String, String> {
        let schema = self.batch.schema();
        columns
            .iter()
            .filter(|c| schema.field_with_name(c).is_ok())
            .map(|c| (c.clone(), text_at(self.text_column(c), row)))
            .collect()
    }

    /// Reads the group key `columns` of any row; built once per batch, so that a key costs
    /// no lookup of its columns by name.
    pub fn key_reader(&mut self, columns: &[String]) -> KeyReader {
        KeyReader(columns.iter().map(|c| self.text_reader(c)).collect())
    }
}

/// One column of one batch, as text ([`BatchView::text_reader`]).
pub struct TextReader(ArrayRef);

impl TextReader {
    /// The value at `row` (NULL as the empty string).
    pub fn text(&self, row: usize) -> String {
        text_at(&self.0, row)
    }
}

/// The group key columns of one batch, as text ([`BatchView::key_reader`]).
pub struct KeyReader(Vec<TextReader>);

impl KeyReader {
    /// The key of `row`: one text per column (NULL as the empty string).
    pub fn key(&self, row: usize) -> Vec<String> {
        self.0.iter().map(|column| column.text(row)).collect()
    }
}

fn text_at(array: &ArrayRef, row: usize) -> String {
    if array.is_null(row) {
        return String::new();
    }
    match array.as_any().downcast_ref::<StringArray>() {
        Some(s) => s.value(row).to_owned(),
        None => array_value_to_string(array, row).unwrap_or_default(),
    }
}

/// `batch` with its `raw` column (the original event, most of a row's bytes) emptied, for rules
/// that do not read it: the reorder buffer copies every column when it releases rows. The
/// schema stays the same, so batches buffered before and after a rule reload still concatenate;
/// rows already waiting when a rule that reads `raw` is loaded are seen with `raw` empty.
fn without_raw(batch: RecordBatch) -> RecordBatch {
    let Ok(index) = batch.schema().index_of("raw") else {
        return batch;
    };
    let column = batch.column(index);
    if column.data_type() != &datafusion::arrow::datatypes::DataType::Utf8
        || column
            .as_any()
            .downcast_ref::<StringArray>()
            .is_some_and(|s| s.values().is_empty())
    {
        return batch;
    }
    let empty = datafusion::arrow::array::StringArray::new(
        datafusion::arrow::buffer::OffsetBuffer::new_zeroed(batch.num_rows()),
        datafusion::arrow::buffer::Buffer::from_vec(Vec::<u8>::new()),
        None,
    );
    let mut columns = batch.columns().to_vec();
    columns[index] = std::sync::Arc::new(empty);
    RecordBatch::try_new(batch.schema(), columns).unwrap_or(batch)
}

/// The columns of `source`'s table that `rules` read: what each rule names (its `where`,
/// `group_by`, `distinct`, `field`, templates), plus what every evaluation reads (`time`, `id`
/// for evidence) and what names a principal in an alert (`principal`, `auth_identifier`).
/// A batch for the rules may leave every other text column empty: building and buffering the
/// columns no rule reads was most of the cost of handing rows to the rules.
pub fn columns_read(rules: &[Rule], source: Source) -> BTreeSet<String> {
    let mut columns: BTreeSet<String> = ["time", "id", "principal", "auth_identifier"]
        .into_iter()
        .map(String::from)
        .collect();
    for rule in rules.iter().filter(|r| r.meta.source == source) {
        columns.extend(rule.meta.columns.iter().cloned());
    }
    columns
}

/// Labels of a series: group-by column names to the key's values.
pub fn labels_of(columns: &[String], key: &[String]) -> BTreeMap<String, String> {
    columns.iter().cloned().zip(key.iter().cloned()).collect()
}

/// Every loaded rule with its state.
pub struct RuleEngine {
    rules: Vec<Rule>,
    watermarks: [i64; 3],
    directory: Option<Arc<crate::enrich::directory::Directory>>,
    lateness_us: i64,
    /// Audit and metrics rows waiting for their table's clock.
    reorder: [Reorder; 2],
    /// The newest `now` each table's rules were evaluated at (it never goes back).
    last_now: [i64; 3],
}

impl RuleEngine {
    pub fn new(rules: Vec<Rule>) -> RuleEngine {
        RuleEngine {
            rules,
            watermarks: [i64::MIN; 3],
            directory: None,
            lateness_us: 0,
            reorder: [Reorder::default(), Reorder::default()],
            last_now: [i64::MIN; 3],
        }
    }

    /// Evaluate windows this far behind the newest event time, so late events still count.
    pub fn with_allowed_lateness(mut self, lateness: std::time::Duration) -> RuleEngine {
        self.lateness_us = lateness.as_micros() as i64;
        self
    }

    /// Removes the `sql` rules, which run on a schedule in their own task.
    pub fn take_sql_rules(&mut self) -> Vec<Rule> {
        let (sql, rest): (Vec<Rule>, Vec<Rule>) = std::mem::take(&mut self.rules)
            .into_iter()
            .partition(|r| matches!(r.kind, RuleKind::Sql(_)));
        self.rules = rest;
        sql
    }

    /// Swaps in a reloaded rule set. Rules whose definition is unchanged keep their state;
    /// returns (kept, new or changed, removed).
    pub fn replace(&mut self, rules: Vec<Rule>) -> (usize, usize, usize) {
        let mut old: std::collections::HashMap<String, Rule> =
            self.rules.drain(..).map(|r| (r.meta.id.clone(), r)).collect();
        let (mut kept, mut fresh) = (0, 0);
        for rule in rules {
            match old.remove(&rule.meta.id) {
                Some(previous) if previous.meta.fingerprint == rule.meta.fingerprint => {
                    kept += 1;
                    self.rules.push(previous);
                }
                _ => {
                    fresh += 1;
                    self.rules.push(rule);
                }
            }
        }
        if let Some(d) = self.directory.clone() {
            self.set_directory(d);
        }
        (kept, fresh, old.len())
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Lets alerts name principals through the directory.
    pub fn set_directory(&mut self, directory: Arc<crate::enrich::directory::Directory>) {
        self.directory = Some(directory.clone());
        for r in &mut self.rules {
            r.meta.directory = Some(directory.clone());
        }
    }

    /// Evaluates the rules reading `source` on `batch` at once, its clock the newest event
    /// time seen (minus `allowed_lateness`); returns the alerts raised and the microseconds
    /// spent. For alerts, and for callers that deliver in time order; the pipeline uses
    /// [`ingest`](Self::ingest).
    pub fn evaluate(&mut self, source: Source, batch: &RecordBatch) -> (Vec<Alert>, u64) {
        let started = Instant::now();
        if batch.num_rows() == 0 {
            return (Vec::new(), 0);
        }
        let slot = source as usize;
        if let Some(max) = BatchView::new(batch).max_time() {
            self.watermarks[slot] = self.watermarks[slot].max(max);
        }
        let now = self.watermarks[slot].saturating_sub(self.lateness_us);
        let alerts = self.evaluate_at(source, batch, now);
        (alerts, started.elapsed().as_micros() as u64)
    }

    /// Buffers `batch` of the audit or metrics table and evaluates, oldest first, the one-second
    /// cells `watermark` completes, each at the newest event time in it. Alerts go straight to
    /// [`evaluate`](Self::evaluate).
    pub fn ingest(&mut self, source: Source, batch: Option<RecordBatch>, watermark: Watermark) -> (Vec<Alert>, u64) {
        let slot = source as usize;
        if slot >= self.reorder.len() {
            return batch.map_or((Vec::new(), 0), |b| self.evaluate(source, &b));
        }
        let started = Instant::now();
        if let Some(batch) = batch {
            let batch = if self.reads_raw(source) {
                batch
            } else {
                without_raw(batch)
            };
            let selected = self.selected(source, &batch);
            self.reorder[slot].push(batch, selected.as_ref());
        }
        let mut alerts = Vec::new();
        for cell in self.reorder[slot].release(watermark) {
            let now = cell.newest_us.max(self.last_now[slot]);
            alerts.append(&mut self.evaluate_at(source, &cell.rows, now));
        }
        (alerts, started.elapsed().as_micros() as u64)
    }

    /// The rows of `batch` some loaded rule over `source` selects (its `where` is true): the
    /// only rows any rule reads. `None` keeps every row (a `where` that failed to evaluate).
    /// Rows waiting across a rule reload were selected by the rules loaded when they came.
    fn selected(&self, source: Source, batch: &RecordBatch) -> Option<BooleanArray> {
        let mut any = BooleanArray::from(vec![false; batch.num_rows()]);
        for rule in self.rules.iter().filter(|r| r.meta.source == source) {
            let Some(predicate) = rule.kind.predicate() else {
                continue;
            };
            let mask = predicate.evaluate(batch).ok()?;
            any = datafusion::arrow::compute::or(&any, &mask).ok()?;
        }
        Some(any)
    }

    /// Whether a loaded rule over `source` reads its `raw` column.
    pub fn reads_raw(&self, source: Source) -> bool {
        self.rules.iter().any(|r| r.meta.source == source && r.meta.reads_raw())
    }

    /// The columns of `source`'s table a batch must carry for the loaded rules (see
    /// [`columns_read`]).
    pub fn columns_read(&self, source: Source) -> BTreeSet<String> {
        columns_read(&self.rules, source)
    }

    /// Rows waiting for their clock, per table (audit, metrics).
    pub fn num_buffered(&self) -> [usize; 2] {
        [self.reorder[0].num_rows(), self.reorder[1].num_rows()]
    }

    /// How often a full reorder buffer was released whole.
    pub fn num_forced_releases(&self) -> u64 {
        self.reorder.iter().map(Reorder::num_forced).sum()
    }

    /// Runs the rules over `source` on `batch` at `now`; an empty batch still moves their clock
    /// (windows slide, alerts resolve).
    fn evaluate_at(&mut self, source: Source, batch: &RecordBatch, now: i64) -> Vec<Alert> {
        let mut alerts = Vec::new();
        let slot = source as usize;
        self.last_now[slot] = self.last_now[slot].max(now);
        let mut view = BatchView::new(batch);
        for rule in self.rules.iter_mut().filter(|r| r.meta.source == source) {
            let result = match &mut rule.kind {
                RuleKind::Match(m) => m.evaluate(&rule.meta, &mut view, now),
                RuleKind::Count(c) => c.evaluate(&rule.meta, &mut view, now),
                RuleKind::Threshold(t) => t.evaluate(&rule.meta, &mut view, now),
                RuleKind::Anomaly(a) => a.evaluate(&rule.meta, &mut view, now),
                RuleKind::NewValue(n) => n.evaluate(&rule.meta, &mut view, now),
                RuleKind::Sql(_) => continue,
            };
            match result {
                Ok(mut raised) => alerts.append(&mut raised),
                Err(e) => tracing::warn!(rule = %rule.meta.id, error = %e, "rule evaluation failed for a batch"),
            }
        }
        alerts
    }

    /// Total series shed by all rules because of `max_series`.
    pub fn num_series_shed(&self) -> u64 {
        self.rules
            .iter()
            .map(|r| match &r.kind {
                RuleKind::Count(c) => c.num_shed(),
                RuleKind::Threshold(t) => t.num_shed(),
                RuleKind::Anomaly(a) => a.num_shed(),
                RuleKind::NewValue(n) => n.num_shed(),
                RuleKind::Match(_) | RuleKind::Sql(_) => 0,
            })
            .sum()
    }
}

/// Shared handle used by the pipeline.
pub type SharedRuleEngine = Arc<std::sync::Mutex<RuleEngine>>;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod lateness_tests;

#[cfg(test)]
mod clock_tests;
