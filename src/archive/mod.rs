//! The compliance archive (docs/PRODUCT.md §6): every audit event, `raw` included, kept in
//! Parquet files whose manifests prove the archive complete and unaltered.
//!
//! ```text
//!  sinks::archive ──► writer ──► spool (fsync'd segment; then the batch is acknowledged)
//!                        │ segment closes (rows, age, shutdown) or found after a crash
//!                        ▼
//!                     files (Parquet per hour) ──► store (object_store) ◄── manifest (chained, signed)
//!                                                      ▲
//!          verify (auditflow verify)  export (auditflow export)  query::archive_table (audit_archive)
//! ```
//!
//! `docs/ARCHIVE.md` has the layout, the manifest format and the WORM setup.

pub mod export;
pub mod files;
pub mod manifest;
pub mod spool;
pub mod store;
pub mod verify;
pub mod writer;

use std::path::PathBuf;

use crate::retry::Verdict;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive {url}: {message}")]
    Store { url: String, message: String },
    /// Somebody else's object where ours belongs: never overwritten.
    #[error("archive {url}: {message}")]
    Conflict { url: String, message: String },
    #[error("archive spool {path}: {source}")]
    Spool { path: PathBuf, source: std::io::Error },
    #[error("archive encoding: {0}")]
    Format(String),
    #[error("signing key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("{0}")]
    Export(String),
}

impl ArchiveError {
    /// Whether trying again can help: the one place the archive decides it. A store or a
    /// disk that fails may recover (retry); a conflicting object needs an operator (hold, and
    /// keep the spool, so nothing is lost).
    pub fn verdict(&self) -> Verdict {
        match self {
            ArchiveError::Store { message, .. } | ArchiveError::Export(message) => Verdict::Retry {
                after: None,
                reason: message.clone(),
            },
            ArchiveError::Spool { source, .. } => Verdict::Retry {
                after: None,
                reason: source.to_string(),
            },
            ArchiveError::Conflict { message, .. } => Verdict::Hold {
                reason: message.clone(),
            },
            ArchiveError::Format(m) | ArchiveError::Key { message: m, .. } => Verdict::Hold { reason: m.clone() },
        }
    }
}
