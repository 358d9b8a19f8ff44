//! One table of the window: minute buckets of Arrow batches, appended, sealed, evicted, and
//! scanned by DataFusion.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringViewArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column};
use datafusion::physical_expr::projection::ProjectionExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;

use super::buckets::{bucket_of, split_by_bucket, time_range};
use super::dictionary::concat_label_sets;
use super::pruning::{IdFilter, Pruning, pruning};
use crate::event::arrow::label_sets_type;
use crate::event::now_us;

/// Most an event may run ahead of the wall clock before it stops moving the window forward.
const MAX_CLOCK_SKEW_US: i64 = 5 * 60 * 1_000_000;

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
    /// Unique per stored batch: sealing checks that the batches it merged are still there.
    seq: u64,
    /// Made by sealing: a later seal of its bucket leaves it alone (re-merging it with every
    /// late piece would copy the bucket's rows again for each one).
    sealed: bool,
    /// Made by concatenating a run of small batches: it ends the next run instead of joining
    /// it, so a row is concatenated once before its bucket is sealed, not again with every
    /// following run while its batch stays small.
    compacted: bool,
}

impl Stored {
    /// The same batch (its buffers are shared) and metadata; the id filter is not needed by
    /// the merge that uses this, so it is left out.
    fn shallow_clone(&self) -> Stored {
        Stored {
            oldest_us: self.oldest_us,
            newest_us: self.newest_us,
            ids: None,
            bytes: self.bytes,
            batch: self.batch.clone(),
            seq: self.seq,
            sealed: self.sealed,
            compacted: self.compacted,
        }
    }
}

mod sealing;

/// The schema queries see of a table stored as `stored`: label-set columns as the maps they were
/// appended as (in `input`), every other column as stored.
fn served_schema_of(stored: &Schema, input: &Schema) -> SchemaRef {
    let fields: Vec<Field> = stored
        .fields()
        .iter()
        .map(|f| match input.field_with_name(f.name()) {
            Ok(appended) if f.data_type() == &label_sets_type() => appended.clone(),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// What a stored batch holds in memory. A string-view column counts the bytes its rows use in
/// its blocks, not the blocks' size: `raw` views a poll's whole chunk of payloads (shared by the
/// batches of that poll and by merged batches), so counting whole blocks would count a chunk
/// once per batch that views it.
fn stored_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|column| match column.as_any().downcast_ref::<StringViewArray>() {
            Some(views) => {
                std::mem::size_of::<StringViewArray>()
                    + views.views().inner().capacity()
                    + views.nulls().map_or(0, |n| n.buffer().capacity())
                    + views.total_buffer_bytes_used()
            }
            None => column.get_array_memory_size(),
        })
        .sum()
}

#[cfg(test)]
use sealing::MAX_SMALL_RUN;

/// Width of an event-time bucket: every stored batch holds rows of one minute only, so a
/// query's time filter picks whole buckets and retention drops whole buckets.
pub const BUCKET_US: i64 = 60_000_000;

/// One table of the window.
#[derive(Debug)]
pub struct WindowTable {
    /// What the pipeline appends (plain strings).
    input_schema: SchemaRef,
    /// What is stored: repetitive strings dictionary-encoded, label sets kept once per batch.
    schema: SchemaRef,
    /// What queries see: the stored schema with label-set columns as the maps they hold (a
    /// scan turns them back, batch by batch, only when the query reads them).
    served_schema: SchemaRef,
    retention_us: i64,
    max_bytes: usize,
    /// Stored batches by the start of their event-time bucket, oldest bucket first; within a
    /// bucket in arrival order.
    buckets: RwLock<BTreeMap<i64, Vec<Stored>>>,
    newest_us: AtomicU64,
    num_bytes: AtomicUsize,
    num_evicted_rows: AtomicU64,
    next_seq: AtomicU64,
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
        let schema = Arc::new(Schema::new(fields));
        WindowTable {
            served_schema: schema.clone(),
            schema,
            input_schema,
            retention_us: retention.as_micros() as i64,
            max_bytes,
            buckets: RwLock::new(BTreeMap::new()),
            newest_us: AtomicU64::new(0),
            num_bytes: AtomicUsize::new(0),
            num_evicted_rows: AtomicU64::new(0),
            next_seq: AtomicU64::new(0),
        }
    }

    /// Stores the text columns `columns` as string views: merging batches (compaction, sealing)
    /// then moves each row's 16-byte view and shares the text buffers instead of copying the
    /// text. For `raw`, the original event, ~1 KB of a ~1.3 KB row, which every merge copied.
    pub fn stored_as_views(mut self, columns: &[&str]) -> WindowTable {
        let fields: Vec<Field> = self
            .schema
            .fields()
            .iter()
            .map(|f| {
                if columns.contains(&f.name().as_str()) && f.data_type() == &DataType::Utf8 {
                    Field::new(f.name(), DataType::Utf8View, f.is_nullable())
                } else {
                    f.as_ref().clone()
                }
            })
            .collect();
        self.schema = Arc::new(Schema::new(fields));
        self.served_schema = served_schema_of(&self.schema, &self.input_schema);
        self
    }

    /// Stores the map columns `columns` as a dictionary of the batch's distinct maps
    /// ([`label_sets_type`]); queries still see maps.
    pub fn stored_as_label_sets(mut self, columns: &[&str]) -> WindowTable {
        let fields: Vec<Field> = self
            .schema
            .fields()
            .iter()
            .map(|f| {
                if columns.contains(&f.name().as_str()) && matches!(f.data_type(), DataType::Map(..)) {
                    Field::new(f.name(), label_sets_type(), f.is_nullable())
                } else {
                    f.as_ref().clone()
                }
            })
            .collect();
        self.schema = Arc::new(Schema::new(fields));
        self.served_schema = served_schema_of(&self.schema, &self.input_schema);
        self
    }

    /// The batch in the stored schema; `None` (logged) if a column does not cast to it, which
    /// a batch of the table's input schema always does.
    fn encode(&self, batch: &RecordBatch) -> Option<RecordBatch> {
        if self.schema == self.input_schema {
            return Some(batch.clone());
        }
        let columns: Result<Vec<ArrayRef>, _> = batch
            .columns()
            .iter()
            .zip(self.schema.fields())
            .map(|(column, field)| {
                if column.data_type() == field.data_type() {
                    Ok(column.clone())
                } else if field.data_type() == &label_sets_type() {
                    concat_label_sets(&[column.as_ref()])
                } else {
                    cast(column, field.data_type())
                }
            })
            .collect();
        match columns.and_then(|c| RecordBatch::try_new(self.schema.clone(), c)) {
            Ok(encoded) => Some(encoded),
            Err(error) => {
                tracing::error!(%error, rows = batch.num_rows(), "batch not in the window's schema; left out of the window");
                None
            }
        }
    }

    /// A stored batch: `batch` in the stored schema, with its time range, id filter and size.
    fn store(&self, batch: RecordBatch, fallback_us: i64) -> Stored {
        let (oldest_us, newest_us) = time_range(&batch).unwrap_or((fallback_us, fallback_us));
        let ids = batch
            .column_by_name("id")
            .and_then(|c| c.as_any().downcast_ref::<datafusion::arrow::array::StringArray>())
            .map(IdFilter::build);
        let bytes = stored_bytes(&batch) + ids.as_ref().map_or(0, IdFilter::num_bytes);
        Stored {
            oldest_us,
            newest_us,
            ids,
            bytes,
            batch,
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            sealed: false,
            compacted: false,
        }
    }

    /// Appends a batch whose newest event time is `newest_us`, then evicts what fell out of the
    /// retention or over the memory cap.
    pub fn append(&self, batch: RecordBatch, newest_us: i64) {
        if batch.num_rows() == 0 {
            return;
        }
        // Encoding and id filters are built before taking the lock: queries keep reading.
        let pieces: Vec<(i64, Stored)> = split_by_bucket(&batch, newest_us)
            .into_iter()
            .filter_map(|(bucket, piece)| Some((bucket, self.store(self.encode(&piece)?, newest_us))))
            .collect();
        self.insert(pieces, newest_us);
    }

    /// [`WindowTable::append`] of rows not yet in Arrow: each minute's rows go to `build`,
    /// which makes them a batch in the stored schema directly (no plain batch to cut by
    /// minute and dictionary-encode afterwards, which copied every row's strings twice).
    pub fn append_rows<R>(
        &self,
        rows: &[R],
        time_us: impl Fn(&R) -> i64,
        build: impl Fn(&[&R], &SchemaRef) -> RecordBatch,
        newest_us: i64,
    ) {
        if rows.is_empty() {
            return;
        }
        let mut by_bucket: BTreeMap<i64, Vec<&R>> = BTreeMap::new();
        for row in rows {
            by_bucket.entry(bucket_of(time_us(row))).or_default().push(row);
        }
        let pieces: Vec<(i64, Stored)> = by_bucket
            .into_iter()
            .map(|(bucket, rows)| (bucket, self.store(build(&rows, &self.schema), newest_us)))
            .collect();
        self.insert(pieces, newest_us);
    }

    /// Stores `pieces` (each in its bucket), then evicts what fell out of the retention or over
    /// the memory cap, and seals a bucket that is due.
    fn insert(&self, pieces: Vec<(i64, Stored)>, newest_us: i64) {
        let clamped = newest_us.min(now_us() + MAX_CLOCK_SKEW_US).max(0) as u64;
        let reference = self.newest_us.fetch_max(clamped, Ordering::Relaxed).max(clamped) as i64;
        let mut buckets = self.buckets.write().unwrap_or_else(|e| e.into_inner());
        let mut total = self.num_bytes.load(Ordering::Relaxed) as isize;
        for (start, stored) in pieces {
            total += stored.bytes as isize;
            let bucket = buckets.entry(start).or_default();
            bucket.push(stored);
            total += self.compact_small_run(bucket);
        }
        let (mut evicted_rows, mut evicted_bytes) = (0, 0);
        // Whole buckets whose every row is older than the retention.
        let cutoff = reference - self.retention_us;
        while let Some(entry) = buckets.first_entry()
            && entry.key().saturating_add(BUCKET_US) <= cutoff
        {
            for s in entry.remove() {
                evicted_rows += s.batch.num_rows();
                evicted_bytes += s.bytes;
            }
        }
        total -= evicted_bytes as isize;
        // Over the memory cap: the oldest data goes first (the newest batch always stays).
        while total.max(0) as usize > self.max_bytes && buckets.values().map(Vec::len).sum::<usize>() > 1 {
            let mut oldest = buckets.first_entry().expect("more than one batch is stored");
            let s = oldest.get_mut().remove(0);
            if oldest.get().is_empty() {
                oldest.remove();
            }
            evicted_rows += s.batch.num_rows();
            total -= s.bytes as isize;
        }
        self.num_bytes.store(total.max(0) as usize, Ordering::Relaxed);
        self.num_evicted_rows.fetch_add(evicted_rows as u64, Ordering::Relaxed);
        drop(buckets);
        self.seal_one(reference);
    }

    /// The batches currently held (cheap: record batches share their buffers).
    pub fn snapshot(&self) -> Vec<RecordBatch> {
        self.snapshot_matching(&Pruning::default())
    }

    /// The batches that may hold rows `pruning` allows: only the buckets in its time range are
    /// visited.
    fn snapshot_matching(&self, pruning: &Pruning) -> Vec<RecordBatch> {
        let buckets = self.buckets.read().unwrap_or_else(|e| e.into_inner());
        // Bucket `s` holds [s, s + BUCKET_US): it may matter when s + BUCKET_US > from.
        let first = pruning.from_us.saturating_sub(BUCKET_US - 1);
        if first > pruning.to_us {
            return Vec::new();
        }
        buckets
            .range(first..=pruning.to_us)
            .flat_map(|(_, stored)| stored)
            .filter(|s| s.newest_us >= pruning.from_us && s.oldest_us <= pruning.to_us)
            .filter(|s| match (&pruning.ids, &s.ids) {
                (Some(wanted), Some(filter)) => wanted.iter().any(|id| filter.may_contain(id)),
                _ => true,
            })
            .map(|s| s.batch.clone())
            .collect()
    }

    pub fn num_rows(&self) -> usize {
        let buckets = self.buckets.read().unwrap_or_else(|e| e.into_inner());
        buckets.values().flatten().map(|s| s.batch.num_rows()).sum()
    }

    /// Event-time buckets currently held.
    pub fn num_buckets(&self) -> usize {
        self.buckets.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn num_bytes(&self) -> usize {
        self.num_bytes.load(Ordering::Relaxed)
    }

    pub fn num_evicted_rows(&self) -> u64 {
        self.num_evicted_rows.load(Ordering::Relaxed)
    }
}

impl WindowTable {
    /// `scan` (columns of the stored schema) as the served schema: a label-set column it reads
    /// is turned back into maps, batch by batch, as the query pulls them.
    fn served(&self, scan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
        let stored = scan.schema();
        if !stored.fields().iter().any(|f| f.data_type() == &label_sets_type()) {
            return Ok(scan);
        }
        let columns: Vec<ProjectionExpr> = stored
            .fields()
            .iter()
            .enumerate()
            .map(|(i, field)| {
                let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(field.name(), i));
                let served = self.served_schema.field_with_name(field.name())?.data_type();
                let expr: Arc<dyn PhysicalExpr> = if served == field.data_type() {
                    column
                } else {
                    Arc::new(CastExpr::new(column, served.clone(), None))
                };
                Ok(ProjectionExpr {
                    expr,
                    alias: field.name().clone(),
                })
            })
            .collect::<DfResult<_>>()?;
        Ok(Arc::new(ProjectionExec::try_new(columns, scan)?))
    }
}

#[async_trait]
impl TableProvider for WindowTable {
    fn schema(&self) -> SchemaRef {
        self.served_schema.clone()
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
        self.served(exec)
    }
}

#[cfg(test)]
pub(super) mod tests;
