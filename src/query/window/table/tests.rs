//! The window table's tests: eviction, minute buckets, compaction and sealing, rows built
//! straight into the stored form.

use super::*;
use datafusion::arrow::array::{AsArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::Int32Type;

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

/// A metrics table of an hour, encoded as the window's, without a memory cap.
fn metrics_table() -> WindowTable {
    WindowTable::with_options(
        METRICS_SCHEMA.clone(),
        Duration::from_secs(3600),
        crate::query::window::METRICS_DICTIONARY_COLUMNS,
        usize::MAX,
    )
    .stored_as_label_sets(&["labels"])
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
    let names = name_dictionary(&batches[0]);
    assert_eq!(names.values().len(), 1);
    let times = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .unwrap();
    assert_eq!(times.value(0), base);
    assert_eq!(times.value(31), base + 15);
}

/// Issue 14: `raw` is never copied into the window: each piece's block is its poll's chunk of
/// payloads, and merging small batches carries the blocks over.
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
    let mut chunks = Vec::new();
    let pointers = |batch: &RecordBatch| -> Vec<*const u8> {
        let raw = batch.column_by_name("raw").unwrap().as_string_view();
        raw.data_buffers().iter().map(|b| b.as_ptr()).collect()
    };
    let mut raw_bytes = 0;
    for i in 0..MAX_SMALL_RUN as i64 {
        // One poll of two records: their payloads in one chunk, as the source makes them.
        let mut chunker = crate::event::RawChunker::with_capacity(0, 2);
        for j in 0..2 {
            chunker.push(raw(i * 2 + j).as_bytes());
        }
        let raws = chunker.finish();
        raw_bytes += raws.iter().map(|r| r.len()).sum::<usize>();
        chunks.push(raws[0].chunk().0.as_ptr());
        let rows: Vec<crate::event::AuditRow> = (0..2)
            .zip(raws)
            .map(|(j, raw)| crate::event::AuditRow {
                time_us: base + i * 2 + j,
                id: format!("e{}", i * 2 + j),
                raw,
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
            assert_eq!(
                pointers(&t.snapshot().pop().unwrap()),
                [chunks[i as usize]],
                "the poll's chunk itself"
            );
        }
    }
    let batches = t.snapshot();
    assert_eq!(batches.len(), 1, "the small run was merged");
    let merged = batches[0].column_by_name("raw").unwrap().as_string_view();
    assert_eq!(merged.len(), MAX_SMALL_RUN * 2);
    let shared = pointers(&batches[0]);
    assert_eq!(shared, chunks, "each poll's chunk, carried over");
    for i in 0..merged.len() {
        assert_eq!(merged.value(i), raw(i as i64));
    }
    // The rows' bytes count once, however many batches view their chunks.
    let without_raw: usize = batches[0]
        .columns()
        .iter()
        .zip(batches[0].schema().fields())
        .filter(|(_, f)| f.name() != "raw")
        .map(|(c, _)| c.get_array_memory_size())
        .sum();
    let counted = t.num_bytes() - without_raw;
    assert!(
        (raw_bytes..raw_bytes + 2048).contains(&counted),
        "raw counted as {counted} bytes for {raw_bytes} bytes of rows"
    );
}

#[test]
fn rows_appended_by_minute_read_back_as_an_appended_batch_does() {
    let base = bucket_of(now_us() - 10 * 60 * 1_000_000);
    // Rows of three minutes, interleaved, some names shared and one cluster missing.
    let samples: Vec<MetricSample> = (0..30)
        .map(|i| MetricSample {
            name: format!("m{}", i % 4),
            cluster_id: (i % 5 != 0).then(|| format!("lkc-{}", i % 2)),
            labels: BTreeMap::from([("topic".into(), format!("t{}", i % 7))]),
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
                    .zip(METRICS_SCHEMA.fields())
                    .map(|(c, f)| cast(c, f.data_type()).unwrap())
                    .collect();
                RecordBatch::try_new(METRICS_SCHEMA.clone(), columns).unwrap()
            })
            .collect()
    };
    assert_eq!(plain(&from_rows), plain(&from_batch));
    let stored = from_rows.snapshot();
    assert_eq!(stored[0].schema(), from_rows.schema);
    let names = name_dictionary(&stored[0]);
    assert_eq!(names.values().len(), 4, "each distinct name once");
    let labels = stored[0].column_by_name("labels").unwrap().as_dictionary::<Int32Type>();
    assert_eq!(
        labels.values().len(),
        7.min(stored[0].num_rows()),
        "each label set once"
    );
}

#[test]
fn sealing_keeps_each_label_set_once_per_batch() {
    let t = metrics_table();
    let base = bucket_of(now_us() - 30 * 60 * 1_000_000);
    // Ten polls into one minute, each with the same 5 series, then a row 3 minutes on seals it.
    for poll in 0..10 {
        let samples: Vec<MetricSample> = (0..5)
            .map(|series| MetricSample {
                labels: BTreeMap::from([
                    ("kafka.id".into(), "lkc-1".into()),
                    ("topic".into(), format!("t{series}")),
                ]),
                ..sample(base + poll * 1000 + series)
            })
            .collect();
        t.append(metrics_batch(&samples), base + poll * 1000 + 4);
    }
    let later = base + 3 * BUCKET_US;
    t.append(metrics_batch(&[sample(later)]), later);
    let batches = t.snapshot();
    let sealed = &batches[0];
    assert_eq!(sealed.num_rows(), 50, "the minute's ten polls, merged: {batches:?}");
    let labels = sealed.column_by_name("labels").unwrap().as_dictionary::<Int32Type>();
    assert_eq!(labels.values().len(), 5, "each series' label set once");
    let maps = cast(labels, METRICS_SCHEMA.field_with_name("labels").unwrap().data_type()).unwrap();
    let maps = maps.as_map();
    for row in 0..50 {
        let topics = maps.value(row);
        let keys = topics.column(0).as_string::<i32>();
        let values = topics.column(1).as_string::<i32>();
        assert_eq!(keys.value(1), "topic");
        assert_eq!(values.value(1), format!("t{}", row % 5), "row {row}");
    }
}

/// The `name` column of a stored metrics batch, dictionary-encoded as the window keeps it.
fn name_dictionary(
    batch: &RecordBatch,
) -> &datafusion::arrow::array::DictionaryArray<datafusion::arrow::datatypes::Int32Type> {
    batch.column_by_name("name").unwrap().as_any().downcast_ref().unwrap()
}
