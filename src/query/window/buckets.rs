//! Event-time buckets: which minute a row belongs to, and a batch cut along them.

use std::collections::BTreeMap;

use datafusion::arrow::array::{RecordBatch, TimestampMicrosecondArray, UInt32Array};
use datafusion::arrow::compute::{max, min, take_record_batch};

use super::table::BUCKET_US;

/// The start of the bucket holding `time_us`.
pub(super) fn bucket_of(time_us: i64) -> i64 {
    time_us.div_euclid(BUCKET_US) * BUCKET_US
}

/// Oldest and newest value of the `time` column (the first column of every table).
pub(super) fn time_range(batch: &RecordBatch) -> Option<(i64, i64)> {
    let times = batch.column(0).as_any().downcast_ref::<TimestampMicrosecondArray>()?;
    Some((min(times)?, max(times)?))
}

/// The batch cut into one piece per event-time bucket (the batch itself when it lies in one,
/// the common case: a poll covers milliseconds to seconds of event time).
pub(super) fn split_by_bucket(batch: &RecordBatch, fallback_us: i64) -> Vec<(i64, RecordBatch)> {
    let Some(times) = batch.column(0).as_any().downcast_ref::<TimestampMicrosecondArray>() else {
        return vec![(bucket_of(fallback_us), batch.clone())];
    };
    let Some((oldest, newest)) = time_range(batch) else {
        return vec![(bucket_of(fallback_us), batch.clone())];
    };
    if bucket_of(oldest) == bucket_of(newest) {
        return vec![(bucket_of(oldest), batch.clone())];
    }
    let mut rows_by_bucket: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for (row, time) in times.values().iter().enumerate() {
        rows_by_bucket.entry(bucket_of(*time)).or_default().push(row as u32);
    }
    rows_by_bucket
        .into_iter()
        .map(|(bucket, rows)| {
            let piece = take_record_batch(batch, &UInt32Array::from(rows)).expect("row indices come from the batch");
            (bucket, piece)
        })
        .collect()
}
