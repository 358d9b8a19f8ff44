//! `[archive]`: the compliance archive (docs/PRODUCT.md §6).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Check, ConfigError};

/// Schemes the archive writes to, through `object_store`.
pub const ARCHIVE_SCHEMES: [&str; 7] = ["file", "az", "azure", "abfs", "abfss", "adl", "s3"];

/// `[archive]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArchive {
    /// `file:///path`, a plain directory, `az://container/prefix` or `s3://bucket/prefix`.
    pub url: String,
    /// Rows per archive file (one spool segment) before it is closed. Default 100000.
    #[serde(default = "default_max_file_rows")]
    pub max_file_rows: usize,
    /// Age of the oldest row of the open segment at which it is closed. Default 5m.
    #[serde(default = "default_max_file_age")]
    pub max_file_age: String,
    /// PKCS#8 PEM file with an Ed25519 private key (`openssl genpkey -algorithm ed25519`):
    /// manifests are then signed and the public key published beside the archive.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// Local directory of the fsync'd segment not yet uploaded. Default `./data/archive-spool`.
    #[serde(default)]
    pub spool_dir: Option<PathBuf>,
}

fn default_max_file_rows() -> usize {
    100_000
}

fn default_max_file_age() -> String {
    "5m".into()
}

/// `[archive]`, validated.
#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    pub url: String,
    pub max_file_rows: usize,
    pub max_file_age: Duration,
    pub signing_key: Option<PathBuf>,
    pub spool_dir: PathBuf,
}

impl RawArchive {
    pub(super) fn validate(self, check: Check<'_>) -> Result<ArchiveConfig, ConfigError> {
        let url = check.expand("archive.url", &self.url)?;
        if url.trim().is_empty() {
            return Err(check.invalid("archive.url", "must not be empty"));
        }
        if let Some((scheme, _)) = url.split_once("://")
            && !ARCHIVE_SCHEMES.contains(&scheme)
        {
            return Err(check.invalid(
                "archive.url",
                format!(
                    "scheme `{scheme}` is not one of {} (or a plain directory)",
                    ARCHIVE_SCHEMES.join(", ")
                ),
            ));
        }
        if self.max_file_rows == 0 {
            return Err(check.invalid("archive.max_file_rows", "must be at least 1"));
        }
        let max_file_age = check.duration("archive.max_file_age", &self.max_file_age)?;
        if max_file_age < Duration::from_secs(1) {
            return Err(check.invalid("archive.max_file_age", "must be at least 1s"));
        }
        Ok(ArchiveConfig {
            url,
            max_file_rows: self.max_file_rows,
            max_file_age,
            signing_key: self.signing_key,
            spool_dir: self.spool_dir.unwrap_or_else(|| PathBuf::from("./data/archive-spool")),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const MINIMAL: &str = "[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n";

    #[test]
    fn archive_keys_are_validated_and_named() {
        let c = Config::parse(&format!("{MINIMAL}[archive]\nurl = \"az://audit/prefix\"\n"), "t.toml").unwrap();
        let a = c.archive.unwrap();
        assert_eq!(a.url, "az://audit/prefix");
        assert_eq!(a.max_file_rows, 100_000);
        assert_eq!(a.max_file_age, std::time::Duration::from_secs(300));
        for (bad, key) in [
            ("url = \"ftp://x/y\"", "archive.url"),
            ("url = \"\"", "archive.url"),
            ("url = \"/a\"\nmax_file_rows = 0", "archive.max_file_rows"),
            ("url = \"/a\"\nmax_file_age = \"soon\"", "archive.max_file_age"),
            ("url = \"/a\"\nmax_file_age = \"10ms\"", "archive.max_file_age"),
        ] {
            let e = Config::parse(&format!("{MINIMAL}[archive]\n{bad}\n"), "t.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("t.toml"), "{bad}: {e}");
        }
        let e = Config::parse(&format!("{MINIMAL}[archive]\nurl = \"/a\"\nmax_rows = 3\n"), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_rows") && e.contains("line 5"), "{e}");
    }
}
