//! Keeping a table's batches few and large: a bucket's run of small batches is concatenated,
//! and a bucket two minutes behind the newest event is sealed into batches of ~65k rows.

use std::sync::atomic::Ordering;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::compute::concat;

use super::{BUCKET_US, Stored, WindowTable, dictionary_type};
use crate::event::arrow::label_sets_type;
use crate::query::window::buckets::bucket_of;
use crate::query::window::dictionary::{concat_dictionaries, concat_label_sets};

/// A stored batch under this many rows counts as small (a quiet stream polls a few records at a
/// time); a bucket's run of trailing small batches is concatenated into one once it reaches
/// [`MAX_SMALL_RUN`] batches, so a quiet hour does not become 100,000 tiny batches, each with
/// its own per-column overhead and per-batch query cost.
const SMALL_BATCH_ROWS: usize = 1024;
pub(super) const MAX_SMALL_RUN: usize = 16;

/// Once a bucket is two minutes behind the newest event it is sealed: its batches are merged
/// into batches of about this many rows, so a query over the hour handles a few hundred
/// batches instead of one per poll, each column with one dictionary.
const SEALED_BATCH_ROWS: usize = 65_536;
const SEAL_AFTER_US: i64 = 2 * BUCKET_US;

impl WindowTable {
    /// Concatenates a bucket's trailing run of small batches once it is [`MAX_SMALL_RUN`]
    /// long; answers the change in stored bytes.
    pub(super) fn compact_small_run(&self, bucket: &mut Vec<Stored>) -> isize {
        let run = bucket
            .iter()
            .rev()
            .take_while(|s| !s.compacted && s.batch.num_rows() < SMALL_BATCH_ROWS)
            .count();
        if run < MAX_SMALL_RUN {
            return 0;
        }
        let small: Vec<Stored> = bucket.split_off(bucket.len() - run);
        let before: usize = small.iter().map(|s| s.bytes).sum();
        let Some(mut merged) = self.merge(&small) else {
            bucket.extend(small);
            return 0;
        };
        merged.compacted = true;
        let after = merged.bytes;
        bucket.push(merged);
        after as isize - before as isize
    }

    /// One stored batch with the rows of `parts`, in order, each dictionary column with one
    /// dictionary instead of the parts' dictionaries laid end to end.
    /// `None` (logged; the parts stay as they are) if they do not concatenate, which batches
    /// stored in one schema always do.
    fn merge(&self, parts: &[Stored]) -> Option<Stored> {
        let columns: Result<Vec<ArrayRef>, String> = self
            .schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, field)| {
                let column: Vec<&dyn Array> = parts.iter().map(|s| s.batch.column(i).as_ref()).collect();
                if field.data_type() == &dictionary_type() {
                    concat_dictionaries(&column).map_err(|e| e.to_string())
                } else if field.data_type() == &label_sets_type() {
                    concat_label_sets(&column).map_err(|e| e.to_string())
                } else {
                    concat(&column).map_err(|e| e.to_string())
                }
            })
            .collect();
        let merged = columns.and_then(|c| RecordBatch::try_new(self.schema.clone(), c).map_err(|e| e.to_string()));
        match merged {
            Ok(merged) => Some(self.store(merged, parts[0].oldest_us)),
            Err(error) => {
                tracing::error!(%error, batches = parts.len(), "window batches not merged; kept apart");
                None
            }
        }
    }

    /// Seals the oldest bucket that is two minutes behind the newest event and still holds
    /// more than one batch under [`SEALED_BATCH_ROWS`]. The merge runs outside the lock
    /// (queries and appends go on meanwhile); the result replaces the merged batches only if
    /// they are all still there (eviction may have taken some).
    pub(super) fn seal_one(&self, reference_us: i64) {
        let sealable = bucket_of(reference_us) - SEAL_AFTER_US;
        // What a seal merges: the bucket's batches since its last seal (sealing replaces its
        // batches with sealed ones in place and appends go to the end, so they are a suffix).
        let unsealed = |stored: &[Stored]| stored.iter().position(|s| !s.sealed).unwrap_or(stored.len());
        let (start, first, parts) = {
            let buckets = self.buckets.read().unwrap_or_else(|e| e.into_inner());
            let Some((start, stored)) = buckets.range(..=sealable).find(|(_, stored)| {
                stored[unsealed(stored)..]
                    .iter()
                    .filter(|s| s.batch.num_rows() < SEALED_BATCH_ROWS)
                    .count()
                    > 1
            }) else {
                return;
            };
            let first = unsealed(stored);
            let parts: Vec<Stored> = stored[first..].iter().map(Stored::shallow_clone).collect();
            (*start, first, parts)
        };
        // Consecutive runs of about SEALED_BATCH_ROWS rows each; a batch that is a run by
        // itself is kept (stored again, with its id filter).
        let finish = |run: &[Stored]| {
            let mut stored = match run {
                [single] => self.store(single.batch.clone(), single.oldest_us),
                _ => self.merge(run)?,
            };
            stored.sealed = true;
            Some(stored)
        };
        let mut merged = Vec::new();
        let mut run_start = 0;
        let mut rows = 0;
        for (i, part) in parts.iter().enumerate() {
            rows += part.batch.num_rows();
            if rows >= SEALED_BATCH_ROWS {
                let Some(run) = finish(&parts[run_start..=i]) else {
                    return;
                };
                merged.push(run);
                run_start = i + 1;
                rows = 0;
            }
        }
        if run_start < parts.len() {
            let Some(run) = finish(&parts[run_start..]) else { return };
            merged.push(run);
        }
        let mut buckets = self.buckets.write().unwrap_or_else(|e| e.into_inner());
        let Some(stored) = buckets.get_mut(&start) else { return };
        let end = first + parts.len();
        let unchanged = stored.len() >= end && stored[first..end].iter().zip(&parts).all(|(a, b)| a.seq == b.seq);
        if !unchanged {
            return;
        }
        let before: usize = parts.iter().map(|s| s.bytes).sum();
        let after: usize = merged.iter().map(|s| s.bytes).sum();
        stored.splice(first..end, merged);
        let total = self.num_bytes.load(Ordering::Relaxed) as isize + after as isize - before as isize;
        self.num_bytes.store(total.max(0) as usize, Ordering::Relaxed);
    }
}
