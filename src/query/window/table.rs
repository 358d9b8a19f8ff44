//! One table of the window: minute buckets of Arrow batches, appended, sealed, evicted, and
//! scanned by DataFusion.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use super::buckets::{bucket_of, split_by_bucket, time_range};
use super::pruning::{IdFilter, Pruning, pruning};
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
    /// What is stored and served: repetitive strings dictionary-encoded.
    schema: SchemaRef,
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
        WindowTable {
            schema: Arc::new(Schema::new(fields)),
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
        self
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
                    cast(column, field.data_type()).expect("Utf8 casts to a Utf8 dictionary and to Utf8View")
                }
            })
            .collect();
        RecordBatch::try_new(self.schema.clone(), columns).expect("same columns, dictionary-encoded or as views")
    }

    /// A stored batch: `batch` in the stored schema, with its time range, id filter and size.
    fn store(&self, batch: RecordBatch, fallback_us: i64) -> Stored {
        let (oldest_us, newest_us) = time_range(&batch).unwrap_or((fallback_us, fallback_us));
        let ids = batch
            .column_by_name("id")
            .and_then(|c| c.as_any().downcast_ref::<datafusion::arrow::array::StringArray>())
            .map(IdFilter::build);
        let bytes = batch.get_array_memory_size() + ids.as_ref().map_or(0, IdFilter::num_bytes);
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
            .map(|(bucket, piece)| (bucket, self.store(self.encode(&piece), newest_us)))
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

/// A timestamp literal in microseconds since the epoch.
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use datafusion::arrow::array::TimestampMicrosecondArray;

    use crate::event::MetricSample;
    use crate::event::arrow::{METRICS_SCHEMA, metrics_batch};

    pub fn sample(time_us: i64) -> MetricSample {
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

    /// A metrics table of an hour, dictionary-encoded as the window's, without a memory cap.
    fn metrics_table() -> WindowTable {
        WindowTable::with_options(
            METRICS_SCHEMA.clone(),
            Duration::from_secs(3600),
            crate::query::window::METRICS_DICTIONARY_COLUMNS,
            usize::MAX,
        )
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
            crate::query::window::METRICS_DICTIONARY_COLUMNS,
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
    fn a_batch_is_cut_into_minute_buckets() {
        let base = bucket_of(now_us() - 10 * 60 * 1_000_000);
        let t = WindowTable::new(METRICS_SCHEMA.clone(), Duration::from_secs(3600));
        let samples: Vec<MetricSample> = (0..30).map(|i| sample(base + i * 6_000_000)).collect();
        // 30 samples 6 s apart from the start of a minute: 10 in each of three minutes.
        t.append(metrics_batch(&samples), base + 29 * 6_000_000);
        assert_eq!(t.num_buckets(), 3);
        assert_eq!(t.num_rows(), 30);
        let rows_per_batch: Vec<usize> = t.snapshot().iter().map(RecordBatch::num_rows).collect();
        assert_eq!(rows_per_batch, vec![10, 10, 10]);
        // A filter on the middle minute reads one bucket.
        let middle = Pruning {
            from_us: base + BUCKET_US,
            to_us: base + 2 * BUCKET_US - 1,
            ids: None,
        };
        let picked = t.snapshot_matching(&middle);
        assert_eq!(picked.len(), 1);
        assert_eq!(
            time_range(&picked[0]),
            Some((base + BUCKET_US, base + BUCKET_US + 9 * 6_000_000))
        );
    }

    #[test]
    fn a_bucket_two_minutes_behind_is_sealed_into_large_batches() {
        let base = bucket_of(now_us() - 30 * 60 * 1_000_000);
        let t = metrics_table();
        for i in 0..10 {
            let samples: Vec<MetricSample> = (0..2000).map(|j| sample(base + i * 2000 + j)).collect();
            t.append(metrics_batch(&samples), base + i * 2000 + 1999);
        }
        assert_eq!(t.snapshot().len(), 10);
        let unsealed_bytes = t.num_bytes();
        // An event three minutes later seals the first minute: one batch of 20,000 rows.
        let later = base + 3 * BUCKET_US;
        t.append(metrics_batch(&[sample(later)]), later);
        let rows: Vec<usize> = t.snapshot().iter().map(RecordBatch::num_rows).collect();
        assert_eq!(rows, vec![20_000, 1]);
        assert_eq!(t.num_rows(), 20_001);
        assert!(t.num_bytes() < unsealed_bytes, "{} vs {unsealed_bytes}", t.num_bytes());
        let times = t.snapshot()[0]
            .column(0)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap()
            .clone();
        assert!(times.values().windows(2).all(|w| w[0] < w[1]), "rows keep their order");

        // Late pieces of the sealed minute are sealed on their own: the sealed batch is kept
        // as it is (same buffers), not copied again with each of them.
        let sealed = t.snapshot()[0].column(1).to_data();
        for i in 0..2 {
            let late: Vec<MetricSample> = (0..100).map(|j| sample(base + 30_000 + i * 100 + j)).collect();
            t.append(metrics_batch(&late), later);
        }
        let rows: Vec<usize> = t.snapshot().iter().map(RecordBatch::num_rows).collect();
        assert_eq!(rows, vec![20_000, 200, 1]);
        assert!(
            t.snapshot()[0].column(1).to_data().ptr_eq(&sealed),
            "the sealed batch was rebuilt"
        );
        assert_eq!(t.num_rows(), 20_201);
    }

    #[test]
    fn small_batches_are_concatenated_within_their_bucket() {
        let base = bucket_of(now_us() - 10 * 60 * 1_000_000);
        let t = metrics_table();
        let mut separate_bytes = 0;
        for i in 0..(MAX_SMALL_RUN as i64 * 2 + 3) {
            let batch = metrics_batch(&[sample(base + i), sample(base + i)]);
            separate_bytes += batch.get_array_memory_size();
            t.append(batch, base + i);
        }
        let batches = t.snapshot();
        // Each run of 16 became one batch of 32 rows, which is not merged again until the
        // bucket is sealed; the last 3 wait for more.
        let rows: Vec<usize> = batches.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(rows, vec![32, 32, 2, 2, 2]);
        assert_eq!(t.num_rows(), 70);
        assert!(
            t.num_bytes() < separate_bytes / 2,
            "{} vs {separate_bytes}",
            t.num_bytes()
        );
        // The merged batch keeps one small dictionary, and the rows read back in order.
        let names = batches[0]
            .column_by_name("name")
            .unwrap()
            .as_any()
            .downcast_ref::<datafusion::arrow::array::DictionaryArray<datafusion::arrow::datatypes::Int32Type>>()
            .unwrap();
        assert_eq!(names.values().len(), 1);
        let times = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(times.value(0), base);
        assert_eq!(times.value(31), base + 15);
    }

    /// Issue 14: `raw` is built once; merging small batches shares its buffers, not copies.
    #[test]
    fn raw_stored_as_views_is_shared_not_copied_when_batches_merge() {
        use datafusion::arrow::array::AsArray;
        let base = bucket_of(now_us() - 10 * 60 * 1_000_000);
        let t = WindowTable::with_options(
            crate::event::arrow::AUDIT_SCHEMA.clone(),
            Duration::from_secs(3600),
            crate::query::window::AUDIT_DICTIONARY_COLUMNS,
            usize::MAX,
        )
        .stored_as_views(crate::query::window::AUDIT_VIEW_COLUMNS);
        let raw = |i: i64| format!("{{\"id\":\"e{i}\",\"pad\":\"{}\"}}", "x".repeat(100));
        let mut buffers = Vec::new();
        let pointers = |batch: &RecordBatch| -> Vec<*const u8> {
            let raw = batch.column_by_name("raw").unwrap().as_string_view();
            raw.data_buffers().iter().map(|b| b.as_ptr()).collect()
        };
        for i in 0..MAX_SMALL_RUN as i64 {
            let rows: Vec<crate::event::AuditRow> = (0..2)
                .map(|j| crate::event::AuditRow {
                    time_us: base + i * 2 + j,
                    id: format!("e{}", i * 2 + j),
                    raw: Arc::from(raw(i * 2 + j).into_bytes()),
                    ..Default::default()
                })
                .collect();
            t.append_rows(
                &rows,
                |r| r.time_us,
                crate::event::arrow::audit_batch_as,
                base + i * 2 + 1,
            );
            if i + 1 < MAX_SMALL_RUN as i64 {
                buffers.extend(pointers(&t.snapshot().pop().unwrap()));
            }
        }
        let batches = t.snapshot();
        assert_eq!(batches.len(), 1, "the small run was merged");
        let merged = batches[0].column_by_name("raw").unwrap().as_string_view();
        assert_eq!(merged.len(), MAX_SMALL_RUN * 2);
        let shared = pointers(&batches[0]);
        assert_eq!(shared.len(), MAX_SMALL_RUN, "one buffer per piece");
        assert_eq!(
            shared[..MAX_SMALL_RUN - 1],
            buffers,
            "each piece's buffer, carried over"
        );
        for i in 0..merged.len() {
            assert_eq!(merged.value(i), raw(i as i64));
        }
    }

    #[test]
    fn rows_appended_by_minute_read_back_as_an_appended_batch_does() {
        let base = bucket_of(now_us() - 10 * 60 * 1_000_000);
        // Rows of three minutes, interleaved, some names shared and one cluster missing.
        let samples: Vec<MetricSample> = (0..30)
            .map(|i| MetricSample {
                name: format!("m{}", i % 4),
                cluster_id: (i % 5 != 0).then(|| format!("lkc-{}", i % 2)),
                ..sample(base + (i % 3) * BUCKET_US + i)
            })
            .collect();
        let newest = samples.iter().map(|s| s.time_us).max().unwrap();
        let (from_rows, from_batch) = (metrics_table(), metrics_table());
        from_rows.append_rows(&samples, |s| s.time_us, crate::event::arrow::metrics_batch_as, newest);
        from_batch.append(metrics_batch(&samples), newest);
        assert_eq!(from_rows.num_buckets(), 3);
        assert_eq!(from_rows.num_rows(), 30);
        let plain = |t: &WindowTable| -> Vec<RecordBatch> {
            t.snapshot()
                .iter()
                .map(|b| {
                    let columns = b
                        .columns()
                        .iter()
                        .map(|c| match c.data_type() {
                            DataType::Dictionary(..) => cast(c, &DataType::Utf8).unwrap(),
                            _ => c.clone(),
                        })
                        .collect();
                    RecordBatch::try_new(METRICS_SCHEMA.clone(), columns).unwrap()
                })
                .collect()
        };
        assert_eq!(plain(&from_rows), plain(&from_batch));
        let stored = from_rows.snapshot();
        assert_eq!(stored[0].schema(), from_rows.schema);
        let names = stored[0]
            .column_by_name("name")
            .unwrap()
            .as_any()
            .downcast_ref::<datafusion::arrow::array::DictionaryArray<datafusion::arrow::datatypes::Int32Type>>()
            .unwrap();
        assert_eq!(names.values().len(), 4, "each distinct name once");
    }
}
