//! Enrichment: who owns what (namespace prefixes and the directory) and duplicate removal.

pub mod dedupe;
pub mod dedupe_store;
pub mod directory;
pub mod ownership;

#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error("reading namespace file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("namespace file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("namespace file {path}: {message}")]
    Invalid { path: String, message: String },
}
