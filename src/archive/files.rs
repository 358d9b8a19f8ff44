//! A closed segment as Parquet: one zstd file per event-time hour, under
//! `date=YYYY-MM-DD/hour=HH/`, with the manifest entry of each.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array,
};
use datafusion::arrow::compute::take_record_batch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;

use super::ArchiveError;
use super::manifest::{FileEntry, OffsetRange, ranges, sha256_hex};
use super::spool::read_frames;
use crate::event::arrow::ARCHIVE_SCHEMA;

const HOUR_US: i64 = 3_600_000_000;
/// Rows per Parquet row group: small enough that the writer's buffer stays modest, large
/// enough for good compression and min/max pruning on `time`.
const ROW_GROUP_ROWS: usize = 65_536;

/// The Parquet settings of every archive and export file.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("a valid level")))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("auditflow {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// RFC 3339 with microseconds, UTC.
pub fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

/// `date=YYYY-MM-DD/hour=HH` of an event time.
pub fn hour_partition(time_us: i64) -> String {
    let t = chrono::DateTime::from_timestamp_micros(time_us.div_euclid(HOUR_US) * HOUR_US).unwrap_or_default();
    t.format("date=%Y-%m-%d/hour=%H").to_string()
}

/// One file ready to upload.
pub struct BuiltFile {
    pub bytes: Vec<u8>,
    pub entry: FileEntry,
}

/// A segment turned into files.
pub struct Built {
    pub files: Vec<BuiltFile>,
    pub dead_letters: Vec<OffsetRange>,
    pub duplicates: Vec<OffsetRange>,
    /// Every range the segment covers (rows, dead letters, duplicates).
    pub covered: Vec<OffsetRange>,
}

/// What the rows of a file have added up to so far.
#[derive(Default)]
pub struct Tally {
    pub rows: u64,
    pub min_us: Option<i64>,
    pub max_us: Option<i64>,
    pub offsets: Vec<(Arc<str>, i32, i64)>,
}

impl Tally {
    /// Adds `batch` (archive schema).
    pub fn add(&mut self, batch: &RecordBatch) -> Result<(), ArchiveError> {
        let time = column::<TimestampMicrosecondArray>(batch, "time")?;
        let topic = column::<StringArray>(batch, "kafka_topic")?;
        let partition = column::<Int32Array>(batch, "kafka_partition")?;
        let offset = column::<Int64Array>(batch, "kafka_offset")?;
        let mut last_topic: Option<Arc<str>> = None;
        for i in 0..batch.num_rows() {
            let t = time.value(i);
            self.min_us = Some(self.min_us.map_or(t, |m| m.min(t)));
            self.max_us = Some(self.max_us.map_or(t, |m| m.max(t)));
            let name = topic.value(i);
            let shared = match &last_topic {
                Some(s) if &**s == name => s.clone(),
                _ => {
                    let s: Arc<str> = Arc::from(name);
                    last_topic = Some(s.clone());
                    s
                }
            };
            self.offsets.push((shared, partition.value(i), offset.value(i)));
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    pub fn entry(&self, path: String, sha256: String, size: u64) -> FileEntry {
        FileEntry {
            path,
            sha256,
            size,
            rows: self.rows,
            min_time: self.min_us.map(rfc3339).unwrap_or_default(),
            max_time: self.max_us.map(rfc3339).unwrap_or_default(),
            offsets: ranges(self.offsets.iter().map(|(t, p, o)| (&**t, *p, *o))),
        }
    }
}

/// A column of an archive-schema batch by name. Batches read back from a spool segment or an
/// archive file are data from disk: a missing or mistyped column is an error, not a panic.
pub fn column<'b, A: 'static>(batch: &'b RecordBatch, name: &str) -> Result<&'b A, ArchiveError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<A>())
        .ok_or_else(|| ArchiveError::Format(format!("rows without a `{name}` column of the archive schema")))
}

struct HourFile {
    writer: ArrowWriter<Vec<u8>>,
    tally: Tally,
}

fn format_error(what: &str, e: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Format(format!("{what}: {e}"))
}

/// Reads segment `id` at `path` and encodes its rows as one Parquet file per hour.
pub fn build(path: &Path, id: &str) -> Result<Built, ArchiveError> {
    let mut hours: BTreeMap<String, HourFile> = BTreeMap::new();
    let mut dead_letters = Vec::new();
    let mut duplicates = Vec::new();
    read_frames(path, |frame| {
        dead_letters.extend(frame.meta.dead_letters);
        duplicates.extend(frame.meta.duplicates);
        let Some(rows) = frame.rows else { return Ok(()) };
        let time = column::<TimestampMicrosecondArray>(&rows, "time")?;
        let mut by_hour: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        let mut last: Option<(i64, String)> = None;
        for i in 0..rows.num_rows() {
            let hour = time.value(i).div_euclid(HOUR_US);
            let key = match &last {
                Some((h, k)) if *h == hour => k.clone(),
                _ => {
                    let k = hour_partition(time.value(i));
                    last = Some((hour, k.clone()));
                    k
                }
            };
            by_hour.entry(key).or_default().push(i as u32);
        }
        let whole = by_hour.len() == 1;
        for (hour, indices) in by_hour {
            let part = if whole {
                rows.clone()
            } else {
                take_record_batch(&rows, &UInt32Array::from(indices))
                    .map_err(|e| format_error("splitting by hour", e))?
            };
            let file = match hours.entry(hour) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => v.insert(HourFile {
                    writer: ArrowWriter::try_new(Vec::new(), ARCHIVE_SCHEMA.clone(), Some(writer_properties()))
                        .map_err(|e| format_error("starting a Parquet file", e))?,
                    tally: Tally::default(),
                }),
            };
            file.writer
                .write(&part)
                .map_err(|e| format_error("writing Parquet", e))?;
            file.tally.add(&part)?;
        }
        Ok(())
    })?;
    let mut files = Vec::new();
    let mut covered = Vec::new();
    for (hour, file) in hours {
        let bytes = file
            .writer
            .into_inner()
            .map_err(|e| format_error("finishing a Parquet file", e))?;
        let entry = file.tally.entry(
            format!("{hour}/auditflow-{id}.parquet"),
            sha256_hex(&bytes),
            bytes.len() as u64,
        );
        covered.extend(entry.offsets.iter().cloned());
        files.push(BuiltFile { bytes, entry });
    }
    covered.extend(dead_letters.iter().cloned());
    covered.extend(duplicates.iter().cloned());
    Ok(Built {
        files,
        dead_letters,
        duplicates,
        covered,
    })
}

/// Rows in a Parquet file, from its footer.
pub fn parquet_rows(bytes: bytes::Bytes) -> Result<u64, String> {
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(bytes).map_err(|e| format!("not a Parquet file: {e}"))?;
    Ok(reader.metadata().file_metadata().num_rows().max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_are_named_by_event_time_in_utc() {
        // 2026-12-02T17:59:59.999999Z and the next microsecond.
        let t = 1_796_234_399_999_999;
        assert_eq!(hour_partition(t), "date=2026-12-02/hour=17");
        assert_eq!(hour_partition(t + 1), "date=2026-12-02/hour=18");
        assert_eq!(rfc3339(t), "2026-12-02T17:59:59.999999Z");
    }
}
