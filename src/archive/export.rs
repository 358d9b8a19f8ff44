//! `auditflow export`: events of a time range (and an optional SQL filter) read from the
//! archive and written as Parquet, JSON lines or CSV, with a manifest of their own that
//! `auditflow verify` checks like an archive's.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{SessionContext, col, lit};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::ArchiveError;
use super::files::{Tally, rfc3339, writer_properties};
use super::manifest::{
    ExportQuery, FORMAT, FileEntry, Manifest, ManifestKind, PUBLIC_KEY_FILE, Signer, manifest_path, signature_path,
};
use super::store::ArchiveStore;
use crate::query::archive_table::ArchiveTable;

/// Rows per exported file before the next one starts.
const FILE_ROWS: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Parquet,
    Jsonl,
    Csv,
}

impl ExportFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Parquet => "parquet",
            ExportFormat::Jsonl => "jsonl",
            ExportFormat::Csv => "csv",
        }
    }
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub archive_url: String,
    /// Event times, `from` included, `to` excluded (µs since the epoch).
    pub from_us: i64,
    pub to_us: i64,
    /// A SQL condition on the `audit_events` columns (and `kafka_topic`, `kafka_partition`,
    /// `kafka_offset`).
    pub filter: Option<String>,
    pub format: ExportFormat,
    pub out: PathBuf,
    pub signing_key: Option<PathBuf>,
    pub progress: bool,
}

#[derive(Debug)]
pub struct ExportSummary {
    pub rows: u64,
    pub bytes: u64,
    pub files: usize,
    pub manifest: PathBuf,
}

fn fail(message: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Export(message.to_string())
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    sha: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

type Sink = Hashing<std::io::BufWriter<std::fs::File>>;

enum Out {
    Parquet(ArrowWriter<Sink>),
    Jsonl(datafusion::arrow::json::LineDelimitedWriter<Sink>),
    Csv(datafusion::arrow::csv::Writer<Sink>),
}

struct OpenFile {
    relative: String,
    out: Out,
    tally: Tally,
}

impl OpenFile {
    fn create(dir: &Path, index: usize, format: ExportFormat) -> Result<OpenFile, ArchiveError> {
        let relative = format!("part-{index:05}.{}", format.extension());
        let path = dir.join(&relative);
        let file = std::fs::File::create_new(&path).map_err(|e| fail(format!("creating {}: {e}", path.display())))?;
        let sink = Hashing {
            inner: std::io::BufWriter::new(file),
            sha: Sha256::new(),
            bytes: 0,
        };
        let out = match format {
            ExportFormat::Parquet => Out::Parquet(
                ArrowWriter::try_new(
                    sink,
                    crate::event::arrow::ARCHIVE_SCHEMA.clone(),
                    Some(writer_properties()),
                )
                .map_err(fail)?,
            ),
            ExportFormat::Jsonl => Out::Jsonl(datafusion::arrow::json::LineDelimitedWriter::new(sink)),
            ExportFormat::Csv => Out::Csv(
                datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(sink),
            ),
        };
        Ok(OpenFile {
            relative,
            out,
            tally: Tally::default(),
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), ArchiveError> {
        match &mut self.out {
            Out::Parquet(w) => w.write(batch).map_err(fail)?,
            Out::Jsonl(w) => w.write(batch).map_err(fail)?,
            Out::Csv(w) => w.write(batch).map_err(fail)?,
        }
        self.tally.add(batch)
    }

    fn written(&self) -> u64 {
        match &self.out {
            Out::Parquet(w) => w.inner().bytes + w.in_progress_size() as u64,
            Out::Jsonl(w) => w.get_ref().bytes,
            // The CSV writer does not lend its output: rows are shown, bytes at the end.
            Out::Csv(_) => 0,
        }
    }

    fn finish(self) -> Result<FileEntry, ArchiveError> {
        let sink = match self.out {
            Out::Parquet(w) => w.into_inner().map_err(fail)?,
            Out::Jsonl(mut w) => {
                w.finish().map_err(fail)?;
                w.into_inner()
            }
            Out::Csv(w) => w.into_inner(),
        };
        let Hashing { inner, sha, bytes } = sink;
        let file = inner
            .into_inner()
            .map_err(|e| fail(format!("writing {}: {e}", self.relative)))?;
        file.sync_all()
            .map_err(|e| fail(format!("syncing {}: {e}", self.relative)))?;
        Ok(self.tally.entry(self.relative, format!("{:x}", sha.finalize()), bytes))
    }
}

fn timestamp(us: i64) -> datafusion::logical_expr::Expr {
    lit(ScalarValue::TimestampMicrosecond(Some(us), Some("UTC".into())))
}

/// Runs an export.
pub async fn export(req: &ExportRequest) -> Result<ExportSummary, ArchiveError> {
    if req.from_us >= req.to_us {
        return Err(fail("--from must be before --to"));
    }
    if req.out.exists()
        && std::fs::read_dir(&req.out)
            .map_err(|e| fail(format!("{}: {e}", req.out.display())))?
            .next()
            .is_some()
    {
        return Err(fail(format!(
            "{} is not empty: an export goes to a directory of its own",
            req.out.display()
        )));
    }
    let local = req.archive_url.strip_prefix("file://").unwrap_or(&req.archive_url);
    if (!req.archive_url.contains("://") || req.archive_url.starts_with("file://")) && !Path::new(local).is_dir() {
        return Err(fail(format!("archive {}: no such directory", req.archive_url)));
    }
    let signer = req.signing_key.as_deref().map(Signer::load).transpose()?;
    let store = ArchiveStore::open(&req.archive_url)?;
    std::fs::create_dir_all(req.out.join(super::manifest::MANIFEST_DIR))
        .map_err(|e| fail(format!("creating {}: {e}", req.out.display())))?;

    let ctx = SessionContext::new();
    ctx.runtime_env()
        .register_object_store(&store.store_url, store.store.clone());
    let table = ArchiveTable::new(&store.table_url, true).map_err(fail)?;
    let mut df = ctx
        .read_table(Arc::new(table))
        .map_err(fail)?
        .filter(
            col("time")
                .gt_eq(timestamp(req.from_us))
                .and(col("time").lt(timestamp(req.to_us))),
        )
        .map_err(fail)?;
    if let Some(filter) = &req.filter {
        let condition = df
            .parse_sql_expr(filter)
            .map_err(|e| fail(format!("--where {filter:?}: {e}")))?;
        df = df
            .filter(condition)
            .map_err(|e| fail(format!("--where {filter:?}: {e}")))?;
    }
    let mut stream = df.execute_stream().await.map_err(fail)?;

    let bar = if req.progress {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} exporting: {human_pos} rows, {msg} ({elapsed})")
                .expect("a valid template"),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut entries = Vec::new();
    let mut open: Option<OpenFile> = None;
    let mut done_bytes = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(fail)?;
        if batch.num_rows() == 0 {
            continue;
        }
        let file = match &mut open {
            Some(f) => f,
            None => open.insert(OpenFile::create(&req.out, entries.len(), req.format)?),
        };
        file.write(&batch)?;
        bar.inc(batch.num_rows() as u64);
        bar.set_message(indicatif::HumanBytes(done_bytes + file.written()).to_string());
        if file.tally.rows >= FILE_ROWS
            && let Some(full) = open.take()
        {
            let entry = full.finish()?;
            done_bytes += entry.size;
            entries.push(entry);
        }
    }
    if let Some(file) = open.take() {
        let entry = file.finish()?;
        entries.push(entry);
    }
    bar.finish_and_clear();

    let manifest = Manifest {
        format: FORMAT.to_owned(),
        kind: ManifestKind::Export,
        sequence: 1,
        created: rfc3339(crate::event::now_us()),
        previous: None,
        files: entries.clone(),
        dead_letters: Vec::new(),
        duplicates: Vec::new(),
        next_offsets: Vec::new(),
        segment: None,
        export: Some(ExportQuery {
            source: store.display.clone(),
            from: rfc3339(req.from_us),
            to: rfc3339(req.to_us),
            filter: req.filter.clone(),
            format: req.format.extension().to_owned(),
        }),
        signing_key_sha256: signer.as_ref().map(|s| s.public().fingerprint()),
    };
    let bytes = manifest.to_bytes();
    let relative = manifest_path(1);
    let write = |rel: &str, data: &[u8]| {
        std::fs::write(req.out.join(rel), data).map_err(|e| fail(format!("writing {rel}: {e}")))
    };
    write(&relative, &bytes)?;
    if let Some(signer) = &signer {
        write(&signature_path(&relative), &signer.sign(&bytes))?;
        write(PUBLIC_KEY_FILE, signer.public().to_pem().as_bytes())?;
    }
    Ok(ExportSummary {
        rows: entries.iter().map(|e| e.rows).sum(),
        bytes: entries.iter().map(|e| e.size).sum(),
        files: entries.len(),
        manifest: req.out.join(relative),
    })
}
