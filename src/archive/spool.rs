//! The spool: archive rows made durable locally before their offsets may be committed.
//!
//! One open segment file at a time. Each accepted batch is appended as one frame and the file
//! is fsync'd before the batch is acknowledged, so a crash at any point leaves every
//! acknowledged row on disk; the segment is uploaded (as Parquet, with its manifest) when it
//! closes, or on the next start if the process died first. A frame torn by a crash mid-write
//! was never acknowledged: reading stops before it and the file is cut back to the last whole
//! frame (its records are re-read from Kafka).
//!
//! A frame is `length (u32 LE) | crc32 of the body (u32 LE) | body`, and a body is
//! `meta length (u32 LE) | meta JSON | Arrow IPC stream of the rows`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use serde::{Deserialize, Serialize};

use super::ArchiveError;
use super::manifest::OffsetRange;
use crate::event::arrow::ARCHIVE_SCHEMA;

/// Largest frame read back (a batch is bounded far below this by `kafka.max_inflight_bytes`).
const MAX_FRAME: u32 = 1 << 30;

/// What one accepted batch adds to the archive.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Rows in the archive schema (none when only dead letters or duplicates were added).
    pub rows: Option<RecordBatch>,
    pub meta: FrameMeta,
}

/// The offsets of a frame that are covered without a row.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FrameMeta {
    pub dead_letters: Vec<OffsetRange>,
    pub duplicates: Vec<OffsetRange>,
}

fn spool_error(path: &Path, source: std::io::Error) -> ArchiveError {
    ArchiveError::Spool {
        path: path.to_owned(),
        source,
    }
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

impl Frame {
    fn encode(&self) -> Result<Vec<u8>, std::io::Error> {
        let meta = serde_json::to_vec(&self.meta).map_err(|e| invalid(e.to_string()))?;
        let mut body = Vec::with_capacity(meta.len() + 4 + self.rows.as_ref().map_or(0, |r| r.get_array_memory_size()));
        body.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        body.extend_from_slice(&meta);
        if let Some(rows) = &self.rows {
            let mut w = StreamWriter::try_new(&mut body, &ARCHIVE_SCHEMA).map_err(|e| invalid(e.to_string()))?;
            w.write(rows).map_err(|e| invalid(e.to_string()))?;
            w.finish().map_err(|e| invalid(e.to_string()))?;
        }
        let mut frame = Vec::with_capacity(body.len() + 8);
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        frame.extend_from_slice(&body);
        Ok(frame)
    }

    fn decode(body: &[u8]) -> Result<Frame, std::io::Error> {
        let short = || invalid("frame shorter than its header".into());
        let meta_len = u32::from_le_bytes(body.get(..4).ok_or_else(short)?.try_into().expect("4 bytes")) as usize;
        let meta = body.get(4..4 + meta_len).ok_or_else(short)?;
        let meta: FrameMeta = serde_json::from_slice(meta).map_err(|e| invalid(format!("frame meta: {e}")))?;
        let ipc = &body[4 + meta_len..];
        let rows = if ipc.is_empty() {
            None
        } else {
            let reader = StreamReader::try_new(ipc, None).map_err(|e| invalid(e.to_string()))?;
            let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().map_err(|e| invalid(e.to_string()))?;
            match batches.len() {
                0 => None,
                1 => batches.into_iter().next(),
                _ => Some(
                    datafusion::arrow::compute::concat_batches(&ARCHIVE_SCHEMA, &batches)
                        .map_err(|e| invalid(e.to_string()))?,
                ),
            }
        };
        Ok(Frame { rows, meta })
    }
}

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    pub fn open(dir: &Path) -> Result<Spool, ArchiveError> {
        std::fs::create_dir_all(dir).map_err(|e| spool_error(dir, e))?;
        Ok(Spool { dir: dir.to_owned() })
    }

    /// Segments left by an earlier run, oldest first, as (id, path).
    pub fn leftovers(&self) -> Result<Vec<(String, PathBuf)>, ArchiveError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| spool_error(&self.dir, e))? {
            let path = entry.map_err(|e| spool_error(&self.dir, e))?.path();
            let id = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("segment-"))
                .and_then(|n| n.strip_suffix(".spool"));
            if let Some(id) = id {
                out.push((id.to_owned(), path.clone()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// A new, empty segment. Its id orders segments by creation and names their files.
    pub fn create(&self) -> Result<Segment, ArchiveError> {
        let id = format!(
            "{:013}-{:08x}",
            chrono::Utc::now().timestamp_millis(),
            rand::random::<u32>()
        );
        let path = self.dir.join(format!("segment-{id}.spool"));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| spool_error(&path, e))?;
        sync_dir(&self.dir).map_err(|e| spool_error(&self.dir, e))?;
        Ok(Segment {
            id,
            path,
            file,
            len: 0,
            rows: 0,
        })
    }
}

/// Makes a file's creation or removal durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The open segment.
#[derive(Debug)]
pub struct Segment {
    pub id: String,
    pub path: PathBuf,
    file: File,
    /// Bytes of whole frames.
    len: u64,
    pub rows: usize,
}

impl Segment {
    /// Appends `frame` and syncs it to disk. On failure the file is cut back to its last whole
    /// frame, so the append can be retried.
    pub fn append(&mut self, frame: &Frame) -> Result<(), ArchiveError> {
        let bytes = frame.encode().map_err(|e| spool_error(&self.path, e))?;
        let written = self.file.write_all(&bytes).and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.file.set_len(self.len);
            return Err(spool_error(&self.path, e));
        }
        self.len += bytes.len() as u64;
        self.rows += frame.rows.as_ref().map_or(0, |r| r.num_rows());
        Ok(())
    }
}

/// Reads a segment's whole frames in order, handing each to `each`; cuts a torn tail off the
/// file. Returns the number of frames.
pub fn read_frames(
    path: &Path,
    mut each: impl FnMut(Frame) -> Result<(), ArchiveError>,
) -> Result<usize, ArchiveError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| spool_error(path, e))?;
    let total = file.metadata().map_err(|e| spool_error(path, e))?.len();
    let mut good: u64 = 0;
    let mut frames = 0;
    let mut header = [0u8; 8];
    let mut body = Vec::new();
    loop {
        if total - good < 8 {
            break;
        }
        file.read_exact(&mut header).map_err(|e| spool_error(path, e))?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len > MAX_FRAME || total - good - 8 < u64::from(len) {
            break;
        }
        body.resize(len as usize, 0);
        file.read_exact(&mut body).map_err(|e| spool_error(path, e))?;
        if crc32fast::hash(&body) != crc {
            break;
        }
        let frame = Frame::decode(&body).map_err(|e| spool_error(path, e))?;
        each(frame)?;
        frames += 1;
        good += 8 + u64::from(len);
    }
    if good < total {
        tracing::warn!(path = %path.display(), cut = total - good, "spool segment ends in a torn frame (never acknowledged); cutting it off");
        file.set_len(good).map_err(|e| spool_error(path, e))?;
        file.sync_all().map_err(|e| spool_error(path, e))?;
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::arrow::archive_batch;
    use crate::event::{AuditRow, Origin};

    fn rows(n: i64) -> RecordBatch {
        let rows: Vec<AuditRow> = (0..n)
            .map(|i| AuditRow {
                time_us: 1_700_000_000_000_000 + i,
                id: format!("id-{i}"),
                raw: crate::event::Raw::from(&b"{}"[..]),
                origin: Some(Origin {
                    topic: "audit".into(),
                    partition: 0,
                    offset: i,
                }),
                ..Default::default()
            })
            .collect();
        archive_batch(&rows, &(0..n as usize).collect::<Vec<_>>())
    }

    #[test]
    fn frames_survive_a_torn_tail_and_the_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut seg = spool.create().unwrap();
        let meta = FrameMeta {
            dead_letters: vec![OffsetRange {
                topic: "audit".into(),
                partition: 0,
                first: 5,
                last: 5,
            }],
            duplicates: vec![],
        };
        seg.append(&Frame {
            rows: Some(rows(3)),
            meta: meta.clone(),
        })
        .unwrap();
        seg.append(&Frame {
            rows: None,
            meta: FrameMeta::default(),
        })
        .unwrap();
        let whole = std::fs::metadata(&seg.path).unwrap().len();
        // A third frame torn mid-write by a crash.
        let torn = Frame {
            rows: Some(rows(10)),
            meta: FrameMeta::default(),
        }
        .encode()
        .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&seg.path)
            .unwrap()
            .write_all(&torn[..torn.len() / 2])
            .unwrap();
        assert_eq!(spool.leftovers().unwrap(), vec![(seg.id.clone(), seg.path.clone())]);
        let mut got = Vec::new();
        let n = read_frames(&seg.path, |f| {
            got.push(f);
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(got[0].rows.as_ref().unwrap().num_rows(), 3);
        assert_eq!(got[0].meta, meta);
        assert!(got[1].rows.is_none());
        assert_eq!(std::fs::metadata(&seg.path).unwrap().len(), whole);
        // A flipped bit in the last frame is a torn frame too.
        let mut bytes = std::fs::read(&seg.path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&seg.path, &bytes).unwrap();
        assert_eq!(read_frames(&seg.path, |_| Ok(())).unwrap(), 1);
    }
}
