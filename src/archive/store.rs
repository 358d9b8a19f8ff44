//! Where the archive lives: one `object_store` for local files, Azure Blob and S3, opened from
//! the archive URL. Credentials come from the environment the way each cloud's own tools read
//! them (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY` or `AZURE_STORAGE_SAS_KEY`;
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, ...), never from the config file.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path;

use super::ArchiveError;

/// An opened archive location.
#[derive(Clone)]
pub struct ArchiveStore {
    pub store: Arc<dyn ObjectStore>,
    /// The archive's root inside `store`.
    pub root: Path,
    /// The store's own URL (`file:///`, `az://container`), for DataFusion's registry.
    pub store_url: url::Url,
    /// The archive as a URL DataFusion lists (`file:///dir/`, `az://container/prefix/`).
    pub table_url: String,
    /// The local directory, for a `file://` archive (closed files are fsync'd there).
    pub local_dir: Option<PathBuf>,
    /// The URL as the user wrote it, for messages.
    pub display: String,
}

impl std::fmt::Debug for ArchiveStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

impl ArchiveStore {
    /// Opens `url`: `file:///dir`, a plain directory (created if missing), `az://`, `azure://`,
    /// `abfs[s]://`, `adl://` or `s3://`.
    pub fn open(url: &str) -> Result<ArchiveStore, ArchiveError> {
        let fail = |message: String| ArchiveError::Store {
            url: url.to_owned(),
            message,
        };
        let local = match url.split_once("://") {
            None => Some(PathBuf::from(url)),
            Some(("file", path)) => Some(PathBuf::from(path)),
            Some(_) => None,
        };
        if let Some(dir) = local {
            std::fs::create_dir_all(&dir).map_err(|e| fail(format!("creating the directory: {e}")))?;
            let dir = dir
                .canonicalize()
                .map_err(|e| fail(format!("resolving the directory: {e}")))?;
            let root = Path::from_filesystem_path(&dir).map_err(|e| fail(e.to_string()))?;
            return Ok(ArchiveStore {
                store: Arc::new(object_store::local::LocalFileSystem::new()),
                root,
                store_url: url::Url::parse("file:///").expect("a valid URL"),
                table_url: format!("file://{}/", dir.display()),
                local_dir: Some(dir),
                display: url.to_owned(),
            });
        }
        let parsed = url::Url::parse(url).map_err(|e| fail(format!("not a URL: {e}")))?;
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "s3" => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| fail(e.to_string()))?,
            ),
            "az" | "azure" | "abfs" | "abfss" | "adl" => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| fail(e.to_string()))?,
            ),
            other => return Err(fail(format!("unsupported scheme `{other}`"))),
        };
        let host = parsed.host_str().unwrap_or_default();
        let store_url = url::Url::parse(&format!("{}://{host}", parsed.scheme())).map_err(|e| fail(e.to_string()))?;
        let root = Path::from(parsed.path().trim_matches('/'));
        let prefix = if root.as_ref().is_empty() {
            String::new()
        } else {
            format!("{root}/")
        };
        Ok(ArchiveStore {
            store,
            root,
            table_url: format!("{}/{prefix}", store_url.as_str().trim_end_matches('/')),
            store_url,
            local_dir: None,
            display: url.to_owned(),
        })
    }

    /// `relative` (`date=.../x.parquet`) under the root.
    pub fn path(&self, relative: &str) -> Path {
        let mut p = self.root.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            p = p.join(part);
        }
        p
    }

    /// The part of `path` under the root (`date=.../x.parquet`), if it is under it.
    pub fn relative(&self, path: &Path) -> Option<String> {
        let parts: Vec<_> = path.prefix_match(&self.root)?.map(|p| p.as_ref().to_owned()).collect();
        Some(parts.join("/"))
    }
}
