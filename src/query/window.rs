//! The window store: the last `window.retention` of event time per table, held as Arrow record
//! batches and served to DataFusion through [`WindowTable`], a `TableProvider`.
//!
//! Batches are appended as the pipeline builds them (one per Kafka poll), with repetitive
//! strings dictionary-encoded, tagged with their oldest and newest event time, and evicted whole
//! once that time falls out of the retention, or oldest first once the table is over its share
//! of `window.max_memory`. Retention is measured against the newest event time seen (never more
//! than five minutes ahead of the wall clock), so a replayed backlog stays queryable instead of
//! expiring on arrival. A scan only reads the batches whose time range meets the query's filter
//! on `time`, and only the projected columns.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, TimestampMicrosecondArray};
use datafusion::arrow::compute::{cast, max, min};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use crate::event::now_us;

/// Most an event may run ahead of the wall clock before it stops moving the window forward.
const MAX_CLOCK_SKEW_US: i64 = 5 * 60 * 1_000_000;

/// Columns of repetitive strings, stored dictionary-encoded (a 4-byte key per row instead of
/// the string): PRODUCT 9's memory targets.
pub const AUDIT_DICTIONARY_COLUMNS: &[&str] = &[
    "type",
    "method",
    "service",
    "organization",
    "environment",
    "cluster_id",
    "resource_type",
    "resource_name",
    "principal",
    "principal_type",
    "auth_mechanism",
    "auth_identifier",
    "operation",
    "authz_via",
    "role",
    "result_status",
    "result_message",
    "client_ip",
    "client_id",
    "resource_app",
    "principal_app",
    "principal_name",
    "principal_team",
    "environment_name",
    "region",
    "cloud",
];
pub const METRICS_DICTIONARY_COLUMNS: &[&str] = &["name", "kind", "cluster_id", "topic", "resource_app"];

fn dictionary_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

#[derive(Debug)]
struct Stored {
    /// Oldest and newest event time of the batch's rows (µs): for pruning and eviction.
    oldest_us: i64,
    newest_us: i64,
    /// Which `id`s the batch may hold (tables with an `id` column): a point lookup reads only
    /// the batches whose filter says maybe.
    ids: Option<IdFilter>,
    bytes: usize,
    batch: RecordBatch,
}

/// A Bloom filter over a batch's ids: 16 bits per id and 3 probes (about 0.2% false
/// positives), 2 bytes of memory per row.
#[derive(Debug)]
struct IdFilter {
    bits: Vec<u64>,
}

impl IdFilter {
    fn probes(id: &str, num_bits: usize) -> [usize; 3] {
        use std::hash::{BuildHasher, Hasher};
        // A fixed-key hasher: the filter must answer the same for the same id at query time.
        let mut h =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().build_hasher();
        h.write(id.as_bytes());
        let x = h.finish();
        let (a, b) = (x as u32 as usize, (x >> 32) as usize | 1);
        [
            a % num_bits,
            a.wrapping_add(b) % num_bits,
            a.wrapping_add(b.wrapping_mul(2)) % num_bits,
        ]
    }

    fn build(ids: &datafusion::arrow::array::StringArray) -> IdFilter {
        let num_bits = (ids.len() * 16).max(64).next_power_of_two();
        let mut bits = vec![0u64; num_bits / 64];
        for id in ids.iter().flatten() {
            for p in IdFilter::probes(id, num_bits) {
                bits[p / 64] |= 1 << (p % 64);
            }
        }
        IdFilter { bits }
    }

    fn may_contain(&self, id: &str) -> bool {
        let num_bits = self.bits.len() * 64;
        IdFilter::probes(id, num_bits)
            .iter()
            .all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }

    fn num_bytes(&self) -> usize {
        self.bits.len() * 8
    }
}

/// One table of the window.
#[derive(Debug)]
pub struct WindowTable {
    /// What the pipeline appends (plain strings).
    input_schema: SchemaRef,
    /// What is stored and served: repetitive strings dictionary-encoded.
    schema: SchemaRef,
    retention_us: i64,
    max_bytes: usize,
    batches: RwLock<VecDeque<Stored>>,
    newest_us: AtomicU64,
    num_bytes: AtomicUsize,
    num_evicted_rows: AtomicU64,
}

/// Oldest and newest value of the `time` column (the first column of every table).
fn time_range(batch: &RecordBatch) -> Option<(i64, i64)> {
    let times = batch.column(0).as_any().downcast_ref::<TimestampMicrosecondArray>()?;
    Some((min(times)?, max(times)?))
}

impl WindowTable {
    pub fn new(schema: SchemaRef, retention: Duration) -> WindowTable {
        WindowTable::with_options(schema, retention, &[], usize::MAX)
    }

    /// A table storing `dictionary_columns` dictionary-encoded and holding at most `max_bytes`
    /// (oldest batches evicted first).
    pub fn with_options(
        input_schema: SchemaRef,
        retention: Duration,
        dictionary_columns: &[&str],
        max_bytes: usize,
    ) -> WindowTable {
        let fields: Vec<Field> = input_schema
            .fields()
            .iter()
            .map(|f| {
                if dictionary_columns.contains(&f.name().as_str()) && f.data_type() == &DataType::Utf8 {
                    Field::new(f.name(), dictionary_type(), f.is_nullable())
                } else {
                    f.as_ref().clone()
                }
            })
            .collect();
        WindowTable {
            schema: Arc::new(Schema::new(fields)),
            input_schema,
            retention_us: retention.as_micros() as i64,
            max_bytes,
            batches: RwLock::new(VecDeque::new()),
            newest_us: AtomicU64::new(0),
            num_bytes: AtomicUsize::new(0),
            num_evicted_rows: AtomicU64::new(0),
        }
    }

    /// The batch in the stored schema.
    fn encode(&self, batch: &RecordBatch) -> RecordBatch {
        if self.schema == self.input_schema {
            return batch.clone();
        }
        let columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .zip(self.schema.fields())
            .map(|(column, field)| {
                if column.data_type() == field.data_type() {
                    column.clone()
                } else {
                    cast(column, field.data_type()).expect("Utf8 casts to a Utf8 dictionary")
                }
            })
            .collect();
        RecordBatch::try_new(self.schema.clone(), columns).expect("same columns, dictionary-encoded")
    }

    /// Appends a batch whose newest event time is `newest_us`, then evicts what fell out of the
    /// retention or over the memory cap.
    pub fn append(&self, batch: RecordBatch, newest_us: i64) {
        if batch.num_rows() == 0 {
            return;
        }
        let (oldest_us, newest_in_batch) = time_range(&batch).unwrap_or((newest_us, newest_us));
        let clamped = newest_us.min(now_us() + MAX_CLOCK_SKEW_US).max(0) as u64;
        let reference = self.newest_us.fetch_max(clamped, Ordering::Relaxed).max(clamped) as i64;
        let batch = self.encode(&batch);
        let ids = batch
            .column_by_name("id")
            .and_then(|c| c.as_any().downcast_ref::<datafusion::arrow::array::StringArray>())
            .map(IdFilter::build);
        let bytes = batch.get_array_memory_size() + ids.as_ref().map_or(0, IdFilter::num_bytes);
        let mut batches = self.batches.write().unwrap_or_else(|e| e.into_inner());
        batches.push_back(Stored {
            oldest_us,
            newest_us: newest_in_batch.max(newest_us),
            ids,
            bytes,
            batch,
        });
        let mut total = self.num_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let cutoff = reference - self.retention_us;
        // Batches arrive roughly in time order; evict every expired one, wherever it sits.
        let (mut evicted_rows, mut evicted_bytes) = (0, 0);
        batches.retain(|s| {
            let keep = s.newest_us > cutoff;
            if !keep {
                evicted_rows += s.batch.num_rows();
                evicted_bytes += s.bytes;
            }
            keep
        });
        total -= evicted_bytes;
        // Over the memory cap: the oldest data goes first (the newest batch always stays).
        while total > self.max_bytes && batches.len() > 1 {
            let oldest = batches
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.newest_us)
                .map(|(i, _)| i)
                .expect("more than one batch");
            let s = batches.remove(oldest).expect("index from the iteration");
            evicted_rows += s.batch.num_rows();
            evicted_bytes += s.bytes;
            total -= s.bytes;
        }
        self.num_bytes.fetch_sub(evicted_bytes, Ordering::Relaxed);
        self.num_evicted_rows.fetch_add(evicted_rows as u64, Ordering::Relaxed);
    }

    /// The batches currently held (cheap: record batches share their buffers).
    pub fn snapshot(&self) -> Vec<RecordBatch> {
        self.snapshot_matching(&Pruning::default())
    }

    /// The batches that may hold rows `pruning` allows.
    fn snapshot_matching(&self, pruning: &Pruning) -> Vec<RecordBatch> {
        let batches = self.batches.read().unwrap_or_else(|e| e.into_inner());
        batches
            .iter()
            .filter(|s| s.newest_us >= pruning.from_us && s.oldest_us <= pruning.to_us)
            .filter(|s| match (&pruning.ids, &s.ids) {
                (Some(wanted), Some(filter)) => wanted.iter().any(|id| filter.may_contain(id)),
                _ => true,
            })
            .map(|s| s.batch.clone())
            .collect()
    }

    pub fn num_rows(&self) -> usize {
        let batches = self.batches.read().unwrap_or_else(|e| e.into_inner());
        batches.iter().map(|s| s.batch.num_rows()).sum()
    }

    pub fn num_bytes(&self) -> usize {
        self.num_bytes.load(Ordering::Relaxed)
    }

    pub fn num_evicted_rows(&self) -> u64 {
        self.num_evicted_rows.load(Ordering::Relaxed)
    }
}

/// A timestamp literal in microseconds since the epoch.
fn timestamp_us(expr: &Expr) -> Option<i64> {
    let Expr::Literal(value, _) = expr else { return None };
    match value {
        ScalarValue::TimestampMicrosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(v.div_euclid(1000)),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1000),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000),
        _ => None,
    }
}

fn is_time_column(expr: &Expr) -> bool {
    matches!(expr, Expr::Column(c) if c.name == "time")
}

/// What a scan's filters allow: an event-time range and, for point lookups, a set of ids.
#[derive(Debug)]
struct Pruning {
    from_us: i64,
    to_us: i64,
    ids: Option<Vec<String>>,
}

impl Default for Pruning {
    fn default() -> Self {
        Pruning {
            from_us: i64::MIN,
            to_us: i64::MAX,
            ids: None,
        }
    }
}

fn string_literal(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Literal(
            ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)),
            _,
        ) => Some(s),
        _ => None,
    }
}

fn is_id_column(expr: &Expr) -> bool {
    matches!(expr, Expr::Column(c) if c.name == "id")
}

/// The ids a top-level conjunct `id = '...'` or `id IN ('...', ...)` pins the scan to.
fn id_lookup(filters: &[Expr]) -> Option<Vec<String>> {
    let mut stack: Vec<&Expr> = filters.iter().collect();
    while let Some(e) = stack.pop() {
        match e {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And,
                right,
            }) => {
                stack.push(left);
                stack.push(right);
            }
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) => {
                if is_id_column(left)
                    && let Some(v) = string_literal(right)
                {
                    return Some(vec![v.to_owned()]);
                }
                if is_id_column(right)
                    && let Some(v) = string_literal(left)
                {
                    return Some(vec![v.to_owned()]);
                }
            }
            Expr::InList(list) if !list.negated && is_id_column(&list.expr) => {
                let ids: Option<Vec<String>> = list.list.iter().map(|e| string_literal(e).map(str::to_owned)).collect();
                if ids.is_some() {
                    return ids;
                }
            }
            _ => {}
        }
    }
    None
}

fn pruning(filters: &[Expr]) -> Pruning {
    let (from_us, to_us) = time_bounds(filters);
    Pruning {
        from_us,
        to_us,
        ids: id_lookup(filters),
    }
}

/// The event-time range `[from, to]` (µs) the filters allow: conjuncts comparing `time` with
/// a timestamp literal (`now() - INTERVAL ...` is folded to one before it gets here).
fn time_bounds(filters: &[Expr]) -> (i64, i64) {
    let (mut from, mut to) = (i64::MIN, i64::MAX);
    let mut apply = |op: Operator, v: i64| match op {
        Operator::Gt | Operator::GtEq => from = from.max(v),
        Operator::Lt | Operator::LtEq => to = to.min(v),
        Operator::Eq => {
            from = from.max(v);
            to = to.min(v);
        }
        _ => {}
    };
    let mut stack: Vec<&Expr> = filters.iter().collect();
    while let Some(e) = stack.pop() {
        match e {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And,
                right,
            }) => {
                stack.push(left);
                stack.push(right);
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if is_time_column(left)
                    && let Some(v) = timestamp_us(right)
                {
                    apply(*op, v);
                } else if is_time_column(right)
                    && let Some(v) = timestamp_us(left)
                    && let Some(swapped) = op.swap()
                {
                    apply(swapped, v);
                }
            }
            Expr::Between(b) if !b.negated && is_time_column(&b.expr) => {
                if let Some(v) = timestamp_us(&b.low) {
                    apply(Operator::GtEq, v);
                }
                if let Some(v) = timestamp_us(&b.high) {
                    apply(Operator::LtEq, v);
                }
            }
            _ => {}
        }
    }
    (from, to)
}

#[async_trait]
impl TableProvider for WindowTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Every filter is seen (for the time range) but still applied above the scan: pruning
    /// skips whole batches, it does not filter rows.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let batches = self.snapshot_matching(&pruning(filters));
        // Two partitions (the machines have two cores): batches alternate between them.
        let mut partitions = vec![Vec::new(), Vec::new()];
        for (i, b) in batches.into_iter().enumerate() {
            partitions[i % 2].push(b);
        }
        let exec = MemorySourceConfig::try_new_exec(&partitions, self.schema.clone(), projection.cloned())?;
        Ok(exec)
    }
}

/// The three tables of the window.
#[derive(Debug, Clone)]
pub struct Window {
    pub audit: Arc<WindowTable>,
    pub metrics: Arc<WindowTable>,
    pub alerts: Arc<WindowTable>,
}

impl Window {
    pub fn new(retention: Duration) -> Window {
        Window::with_max_memory(retention, usize::MAX)
    }

    /// A window holding at most `max_memory` bytes: 70% for audit events, 25% for metrics, 5%
    /// for alerts; each table evicts its oldest batches beyond its share.
    pub fn with_max_memory(retention: Duration, max_memory: usize) -> Window {
        use super::tables::{ALERTS_SCHEMA, AUDIT_SCHEMA, METRICS_SCHEMA};
        let share = |percent: usize| max_memory / 100 * percent;
        Window {
            audit: Arc::new(WindowTable::with_options(
                AUDIT_SCHEMA.clone(),
                retention,
                AUDIT_DICTIONARY_COLUMNS,
                share(70),
            )),
            metrics: Arc::new(WindowTable::with_options(
                METRICS_SCHEMA.clone(),
                retention,
                METRICS_DICTIONARY_COLUMNS,
                share(25),
            )),
            alerts: Arc::new(WindowTable::with_options(
                ALERTS_SCHEMA.clone(),
                retention,
                &[],
                share(5),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::MetricSample;
    use crate::query::tables::{METRICS_SCHEMA, metrics_batch};

    fn sample(time_us: i64) -> MetricSample {
        MetricSample {
            time_us,
            name: "m".into(),
            value: 1.0,
            kind: crate::event::MetricKind::Gauge,
            cluster_id: None,
            topic: None,
            partition: None,
            labels: Default::default(),
            resource_app: None,
        }
    }

    #[test]
    fn old_batches_are_evicted_by_event_time() {
        let t = WindowTable::new(METRICS_SCHEMA.clone(), Duration::from_secs(3600));
        let base = now_us() - 10 * 3600 * 1_000_000;
        t.append(metrics_batch(&[sample(base)]), base);
        t.append(metrics_batch(&[sample(base + 1)]), base + 1);
        assert_eq!(t.num_rows(), 2);
        let later = base + 2 * 3600 * 1_000_000;
        t.append(metrics_batch(&[sample(later)]), later);
        assert_eq!(t.num_rows(), 1);
        assert_eq!(t.num_evicted_rows(), 2);
    }

    #[test]
    fn over_the_memory_cap_the_oldest_go_first() {
        let base = now_us() - 60_000_000;
        let one = metrics_batch(&[sample(base)]).get_array_memory_size();
        let t = WindowTable::with_options(
            METRICS_SCHEMA.clone(),
            Duration::from_secs(3600),
            super::METRICS_DICTIONARY_COLUMNS,
            one * 5 / 2,
        );
        for i in 0..10 {
            t.append(metrics_batch(&[sample(base + i)]), base + i);
        }
        assert!(
            t.num_bytes() <= one * 5 / 2 || t.num_rows() == 1,
            "{} bytes",
            t.num_bytes()
        );
        assert_eq!(t.num_rows() as u64 + t.num_evicted_rows(), 10);
        assert!(t.num_evicted_rows() >= 7);
        // The newest rows are the ones kept.
        let kept = t.snapshot();
        let times = kept[kept.len() - 1]
            .column(0)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap()
            .value(0);
        assert_eq!(times, base + 9);
    }

    #[test]
    fn time_filters_bound_the_scan() {
        use datafusion::prelude::{col, lit};
        let ts = |v: i64| lit(ScalarValue::TimestampMicrosecond(Some(v), Some("UTC".into())));
        assert_eq!(time_bounds(&[col("time").gt_eq(ts(100))]), (100, i64::MAX));
        assert_eq!(time_bounds(&[ts(100).gt(col("time"))]), (i64::MIN, 100));
        assert_eq!(
            time_bounds(&[
                col("time").gt(ts(100)).and(col("time").lt(ts(200))),
                col("name").eq(lit("x"))
            ]),
            (100, 200)
        );
        assert_eq!(time_bounds(&[col("time").between(ts(5), ts(9))]), (5, 9));
        assert_eq!(
            time_bounds(&[col("time").gt(ts(1)).or(col("time").lt(ts(0)))]),
            (i64::MIN, i64::MAX)
        );
    }

    #[test]
    fn id_filters_answer_maybe_for_every_member() {
        let ids: Vec<String> = (0..2000).map(|i| format!("id-{i}")).collect();
        let filter = IdFilter::build(&datafusion::arrow::array::StringArray::from(ids.clone()));
        assert!(ids.iter().all(|id| filter.may_contain(id)));
        let false_positives = (0..10_000)
            .filter(|i| filter.may_contain(&format!("other-{i}")))
            .count();
        assert!(false_positives < 100, "{false_positives} false positives in 10000");
        use datafusion::prelude::{col, lit};
        assert_eq!(id_lookup(&[col("id").eq(lit("a"))]), Some(vec!["a".to_owned()]));
        assert_eq!(
            id_lookup(&[col("id").in_list(vec![lit("a"), lit("b")], false)]),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(
            id_lookup(&[col("id").eq(lit("a")).or(col("principal").eq(lit("b")))]),
            None
        );
    }

    #[tokio::test]
    async fn a_query_reads_only_the_batches_in_its_time_range() {
        let window = Window::new(Duration::from_secs(3600));
        let base = now_us() - 30 * 60 * 1_000_000 + 30_000_000;
        for minute in 0..30 {
            let t = base + minute * 60_000_000;
            window.metrics.append(metrics_batch(&[sample(t), sample(t + 1)]), t + 1);
        }
        let engine = crate::query::engine::QueryEngine::new(&window);
        let (_, batches) = engine
            .query("SELECT count(*) AS n FROM metrics WHERE time > now() - INTERVAL '10 minutes'")
            .await
            .unwrap();
        let n = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(n, 20);
        let (_, plan) = engine
            .query("EXPLAIN SELECT count(*) FROM metrics WHERE time > now() - INTERVAL '10 minutes'")
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&plan)
            .unwrap()
            .to_string();
        // 10 of the 30 batches are scanned (5 per partition).
        assert!(text.contains("partitions=2, partition_sizes=[5, 5]"), "{text}");
    }
}
