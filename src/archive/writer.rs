//! The archive writer: accepted batches into the spool, closed segments into Parquet files and
//! a chained manifest, and a crashed run's segment finished on the next start.
//!
//! The writer keeps, per topic partition, the next offset to archive (read back from the
//! newest manifest on start, then moved on by every frame). Records below it were archived
//! already: a batch re-read after a crash or a rebalance adds nothing, so nothing is archived
//! twice. Every object is written with "create only": the writer never rewrites or deletes an
//! object of the archive, which is what lets the archive sit in a WORM container.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutPayload};

use super::ArchiveError;
use super::files::{Built, build};
use super::manifest::{
    MANIFEST_DIR, Manifest, ManifestKind, NextOffset, PUBLIC_KEY_FILE, Previous, PublicKey, Signer, manifest_path,
    ranges, sequence_of, sha256_hex, signature_path,
};
use super::spool::{Frame, FrameMeta, Segment, Spool, sync_dir};
use super::store::ArchiveStore;
use crate::config::ArchiveConfig;
use crate::event::arrow::archive_batch;
use crate::event::{Batch, Origin};

/// The newest manifest of the chain.
#[derive(Debug, Clone)]
struct Head {
    sequence: u64,
    path: String,
    sha256: String,
    segment: Option<String>,
}

pub struct ArchiveWriter {
    store: ArchiveStore,
    spool: Spool,
    signer: Option<Signer>,
    max_file_rows: usize,
    audit_topics: Vec<String>,
    head: Option<Head>,
    next: BTreeMap<(String, i32), i64>,
    open: Option<(Segment, Instant)>,
}

fn store_error(store: &ArchiveStore, what: &str, e: object_store::Error) -> ArchiveError {
    ArchiveError::Store {
        url: store.display.clone(),
        message: format!("{what}: {e}"),
    }
}

/// Writes `bytes` at `relative` unless an object is there; an object with the same bytes (our
/// own, from an attempt cut short by a crash) is fine, another one is a conflict.
pub async fn put_once(store: &ArchiveStore, relative: &str, bytes: Vec<u8>) -> Result<(), ArchiveError> {
    let path = store.path(relative);
    let sha = sha256_hex(&bytes);
    match store
        .store
        .put_opts(&path, PutPayload::from(bytes), PutMode::Create.into())
        .await
    {
        Ok(_) => Ok(()),
        Err(object_store::Error::AlreadyExists { .. }) => {
            let existing = get(store, relative).await?;
            if sha256_hex(&existing) == sha {
                Ok(())
            } else {
                Err(ArchiveError::Conflict {
                    url: store.display.clone(),
                    message: format!(
                        "{relative} already exists with other content; the archive never overwrites an object (is another writer using this archive?)"
                    ),
                })
            }
        }
        Err(e) => Err(store_error(store, &format!("writing {relative}"), e)),
    }
}

/// The bytes of `relative`.
pub async fn get(store: &ArchiveStore, relative: &str) -> Result<bytes::Bytes, ArchiveError> {
    let read = async { store.store.get(&store.path(relative)).await?.bytes().await };
    read.await
        .map_err(|e| store_error(store, &format!("reading {relative}"), e))
}

/// Every object under the archive's root (or under `prefix` in it), as (relative path, size),
/// sorted by path.
pub async fn list(store: &ArchiveStore, prefix: Option<&str>) -> Result<Vec<(String, u64)>, ArchiveError> {
    let at: Path = match prefix {
        Some(p) => store.path(p),
        None => store.root.clone(),
    };
    let metas: Vec<_> = store
        .store
        .list(Some(&at))
        .try_collect()
        .await
        .map_err(|e| store_error(store, "listing", e))?;
    let mut out: Vec<(String, u64)> = metas
        .into_iter()
        .filter_map(|m| Some((store.relative(&m.location)?, m.size)))
        .collect();
    out.sort();
    Ok(out)
}

impl ArchiveWriter {
    /// Opens the archive: checks the key (publishing its public half), reads the chain's head,
    /// and finishes any segment a crashed run left in the spool.
    pub async fn open(config: &ArchiveConfig, audit_topics: Vec<String>) -> Result<ArchiveWriter, ArchiveError> {
        let store = ArchiveStore::open(&config.url)?;
        let signer = config.signing_key.as_deref().map(Signer::load).transpose()?;
        let spool = Spool::open(&config.spool_dir)?;
        let mut writer = ArchiveWriter {
            store,
            spool,
            signer,
            max_file_rows: config.max_file_rows,
            audit_topics,
            head: None,
            next: BTreeMap::new(),
            open: None,
        };
        writer.publish_key().await?;
        writer.read_head().await?;
        for (id, path) in writer.spool.leftovers()? {
            if writer.head.as_ref().and_then(|h| h.segment.as_deref()) == Some(id.as_str()) {
                // Its manifest was written; the crash came before the segment was removed.
                remove_segment(&path)?;
                continue;
            }
            tracing::info!(segment = %id, "finishing a spool segment left by an earlier run");
            writer.close_segment(&id, &path).await?;
        }
        Ok(writer)
    }

    async fn publish_key(&self) -> Result<(), ArchiveError> {
        let Some(signer) = &self.signer else { return Ok(()) };
        let pem = signer.public().to_pem();
        match put_once(&self.store, PUBLIC_KEY_FILE, pem.into_bytes()).await {
            Err(ArchiveError::Conflict { url, .. }) => Err(ArchiveError::Conflict {
                url,
                message: format!(
                    "{PUBLIC_KEY_FILE} holds another key: this archive was signed with a different key (start a new archive prefix to rotate keys)"
                ),
            }),
            other => other,
        }
    }

    async fn read_head(&mut self) -> Result<(), ArchiveError> {
        let newest = list(&self.store, Some(MANIFEST_DIR))
            .await?
            .into_iter()
            .filter_map(|(p, _)| Some((sequence_of(&p)?, p)))
            .max();
        let Some((sequence, path)) = newest else { return Ok(()) };
        let bytes = get(&self.store, &path).await?;
        let manifest = Manifest::parse(&bytes).map_err(|m| ArchiveError::Conflict {
            url: self.store.display.clone(),
            message: format!("the newest manifest {path} cannot be read ({m}); run `auditflow verify`"),
        })?;
        self.next = manifest
            .next_offsets
            .iter()
            .map(|n| ((n.topic.clone(), n.partition), n.offset))
            .collect();
        if let Some(signer) = &self.signer {
            // A crash between a manifest and its signature.
            put_once(&self.store, &signature_path(&path), signer.sign(&bytes)).await?;
        }
        self.head = Some(Head {
            sequence,
            sha256: sha256_hex(&bytes),
            path,
            segment: manifest.segment,
        });
        Ok(())
    }

    /// The public key manifests are signed with, if any.
    pub fn public_key(&self) -> Option<PublicKey> {
        self.signer.as_ref().map(Signer::public)
    }

    /// Whether `offset` is new to the archive; moves the partition on if it is.
    fn take(&mut self, origin: &Origin) -> bool {
        let key = (origin.topic.to_string(), origin.partition);
        match self.next.get_mut(&key) {
            Some(next) if origin.offset < *next => false,
            Some(next) => {
                if origin.offset > *next {
                    tracing::warn!(topic = %origin.topic, partition = origin.partition, from = *next, to = origin.offset - 1, "offsets never consumed: the archive will show this gap");
                }
                *next = origin.offset + 1;
                true
            }
            None => {
                self.next.insert(key, origin.offset + 1);
                true
            }
        }
    }

    /// What `batch` adds to the archive: its audit rows, dead letters and duplicates not
    /// archived yet, in offset order per partition.
    pub fn frame_of(&mut self, batch: &Batch) -> Option<Frame> {
        enum What {
            Row(usize),
            DeadLetter,
            Duplicate,
        }
        let mut items: Vec<(Origin, What)> = Vec::new();
        for (i, row) in batch.audit.iter().enumerate() {
            if let Some(o) = &row.origin {
                items.push((o.clone(), What::Row(i)));
            }
        }
        for d in &batch.dead_letters {
            if self.audit_topics.iter().any(|t| **t == *d.topic) {
                let origin = Origin {
                    topic: d.topic.clone(),
                    partition: d.partition,
                    offset: d.offset,
                };
                items.push((origin, What::DeadLetter));
            }
        }
        items.extend(batch.duplicates.iter().map(|o| (o.clone(), What::Duplicate)));
        if items.is_empty() {
            return None;
        }
        items.sort_by(|(a, _), (b, _)| (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset)));
        let mut rows = Vec::new();
        let mut dead = Vec::new();
        let mut dups = Vec::new();
        for (origin, what) in items {
            if !self.take(&origin) {
                continue;
            }
            match what {
                What::Row(i) => rows.push(i),
                What::DeadLetter => dead.push(origin),
                What::Duplicate => dups.push(origin),
            }
        }
        if rows.is_empty() && dead.is_empty() && dups.is_empty() {
            return None;
        }
        rows.sort_unstable();
        let to_ranges = |v: &[Origin]| ranges(v.iter().map(|o| (&*o.topic, o.partition, o.offset)));
        Some(Frame {
            rows: (!rows.is_empty()).then(|| archive_batch(&batch.audit, &rows)),
            meta: FrameMeta {
                dead_letters: to_ranges(&dead),
                duplicates: to_ranges(&dups),
            },
        })
    }

    /// Appends `frame` to the open segment (opening one if needed) and syncs it: once this
    /// returns, the frame survives a crash.
    pub async fn spool(&mut self, frame: Arc<Frame>) -> Result<(), ArchiveError> {
        let (mut segment, since) = match self.open.take() {
            Some(open) => open,
            None => {
                let spool = self.spool.clone();
                let segment = tokio::task::spawn_blocking(move || spool.create())
                    .await
                    .map_err(|e| ArchiveError::Format(format!("the spool task failed: {e}")))??;
                (segment, Instant::now())
            }
        };
        let (segment, result) = tokio::task::spawn_blocking(move || {
            let r = segment.append(&frame);
            (segment, r)
        })
        .await
        .map_err(|e| ArchiveError::Format(format!("the spool task failed: {e}")))?;
        self.open = Some((segment, since));
        result
    }

    /// Whether the open segment holds `max_file_rows`.
    pub fn is_full(&self) -> bool {
        self.open.as_ref().is_some_and(|(s, _)| s.rows >= self.max_file_rows)
    }

    /// When the open segment was opened.
    pub fn open_since(&self) -> Option<Instant> {
        self.open.as_ref().map(|(_, since)| *since)
    }

    /// Closes the open segment: its files and manifest uploaded, the segment removed. Safe to
    /// call again after a failure.
    pub async fn close(&mut self) -> Result<(), ArchiveError> {
        let Some((segment, _)) = &self.open else { return Ok(()) };
        let (id, path) = (segment.id.clone(), segment.path.clone());
        self.close_segment(&id, &path).await?;
        self.open = None;
        Ok(())
    }

    async fn close_segment(&mut self, id: &str, path: &std::path::Path) -> Result<(), ArchiveError> {
        let built: Built = {
            let (path, id) = (path.to_owned(), id.to_owned());
            tokio::task::spawn_blocking(move || build(&path, &id))
                .await
                .map_err(|e| ArchiveError::Format(format!("the encoding task failed: {e}")))??
        };
        if built.covered.is_empty() {
            return remove_segment(path);
        }
        // A leftover segment's offsets move the writer on too (a no-op for the open one).
        for r in &built.covered {
            let next = self.next.entry((r.topic.clone(), r.partition)).or_insert(r.last + 1);
            *next = (*next).max(r.last + 1);
        }
        let mut entries = Vec::with_capacity(built.files.len());
        for file in built.files {
            put_once(&self.store, &file.entry.path, file.bytes).await?;
            self.make_durable(&file.entry.path)?;
            entries.push(file.entry);
        }
        let sequence = self.head.as_ref().map_or(1, |h| h.sequence + 1);
        let manifest = Manifest {
            format: super::manifest::FORMAT.to_owned(),
            kind: ManifestKind::Archive,
            sequence,
            created: super::files::rfc3339(crate::event::now_us()),
            previous: self.head.as_ref().map(|h| Previous {
                path: h.path.clone(),
                sha256: h.sha256.clone(),
            }),
            files: entries,
            dead_letters: built.dead_letters,
            duplicates: built.duplicates,
            next_offsets: self
                .next
                .iter()
                .map(|((topic, partition), offset)| NextOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                })
                .collect(),
            segment: Some(id.to_owned()),
            export: None,
            signing_key_sha256: self.signer.as_ref().map(|s| s.public().fingerprint()),
        };
        let relative = manifest_path(sequence);
        let bytes = self.put_manifest(&relative, manifest.to_bytes(), id).await?;
        if let Some(signer) = &self.signer {
            put_once(&self.store, &signature_path(&relative), signer.sign(&bytes)).await?;
        }
        self.make_durable(&relative)?;
        tracing::info!(manifest = %relative, segment = %id, "archive segment closed");
        self.head = Some(Head {
            sequence,
            sha256: sha256_hex(&bytes),
            path: relative,
            segment: Some(id.to_owned()),
        });
        remove_segment(path)
    }

    /// Writes a manifest; if one is there already it must be this segment's (a crash after
    /// the write), and its bytes are the chain's.
    async fn put_manifest(&self, relative: &str, bytes: Vec<u8>, segment: &str) -> Result<Vec<u8>, ArchiveError> {
        let path = self.store.path(relative);
        match self
            .store
            .store
            .put_opts(&path, PutPayload::from(bytes.clone()), PutMode::Create.into())
            .await
        {
            Ok(_) => Ok(bytes),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let existing = get(&self.store, relative).await?;
                match Manifest::parse(&existing) {
                    Ok(m) if m.segment.as_deref() == Some(segment) => Ok(existing.to_vec()),
                    _ => Err(ArchiveError::Conflict {
                        url: self.store.display.clone(),
                        message: format!(
                            "{relative} exists and is not this writer's: is another auditflow writing to this archive?"
                        ),
                    }),
                }
            }
            Err(e) => Err(store_error(&self.store, &format!("writing {relative}"), e)),
        }
    }

    /// A local archive's file is synced to disk before the spool lets go of its rows.
    fn make_durable(&self, relative: &str) -> Result<(), ArchiveError> {
        let Some(dir) = &self.store.local_dir else {
            return Ok(());
        };
        let path = dir.join(relative);
        let sync = || -> std::io::Result<()> {
            std::fs::File::open(&path)?.sync_all()?;
            if let Some(parent) = path.parent() {
                sync_dir(parent)?;
            }
            Ok(())
        };
        sync().map_err(|source| ArchiveError::Spool { path, source })
    }
}

fn remove_segment(path: &std::path::Path) -> Result<(), ArchiveError> {
    let spool_err = |source| ArchiveError::Spool {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(spool_err(e)),
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir).map_err(spool_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::verify::{VerifyOptions, verify};
    use crate::event::{AuditRow, DeadLetter};

    fn config(dir: &std::path::Path, max_file_rows: usize) -> ArchiveConfig {
        ArchiveConfig {
            url: dir.join("archive").display().to_string(),
            max_file_rows,
            max_file_age: std::time::Duration::from_secs(300),
            signing_key: None,
            spool_dir: dir.join("spool"),
        }
    }

    /// Records `from..to` of partition 0: rows, with every tenth a dead letter and every
    /// 25th a duplicate.
    fn batch(from: i64, to: i64) -> Batch {
        let mut b = Batch::default();
        let topic: Arc<str> = Arc::from("audit");
        for offset in from..to {
            let origin = Origin {
                topic: topic.clone(),
                partition: 0,
                offset,
            };
            if offset % 10 == 9 {
                b.dead_letters.push(DeadLetter {
                    topic: topic.clone(),
                    partition: 0,
                    offset,
                    key: None,
                    payload: b"x".to_vec(),
                    class: "NotJson",
                    message: "not JSON".into(),
                });
            } else if offset % 25 == 0 {
                b.duplicates.push(origin);
            } else {
                b.audit.push(AuditRow {
                    // Two hours of event time: files split by hour.
                    time_us: 1_796_230_000_000_000 + offset * 60_000_000,
                    id: format!("id-{offset}"),
                    raw: crate::event::Raw::from(format!("{{\"id\":\"id-{offset}\"}}").as_bytes()),
                    origin: Some(origin),
                    ..Default::default()
                });
            }
        }
        // Rows of another topic's dead letters are not the archive's.
        b.dead_letters.push(DeadLetter {
            topic: Arc::from("metrics"),
            partition: 0,
            offset: from,
            key: None,
            payload: Vec::new(),
            class: "NotJson",
            message: String::new(),
        });
        b
    }

    async fn spool(w: &mut ArchiveWriter, b: &Batch) {
        if let Some(frame) = w.frame_of(b) {
            w.spool(Arc::new(frame)).await.unwrap();
        }
        if w.is_full() {
            w.close().await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_leaves_nothing_lost_and_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 60);
        let mut w = ArchiveWriter::open(&config, vec!["audit".into()]).await.unwrap();
        for start in (0..200).step_by(20) {
            spool(&mut w, &batch(start, start + 20)).await;
        }
        // A crash: the open segment stays in the spool; Kafka hands back 160..260 (re-read
        // from the committed offset, then new records).
        assert!(w.open_since().is_some(), "a segment is open at the crash");
        drop(w);
        let mut w = ArchiveWriter::open(&config, vec!["audit".into()]).await.unwrap();
        assert!(
            w.frame_of(&batch(160, 200)).is_none(),
            "records archived already add nothing"
        );
        spool(&mut w, &batch(160, 260)).await;
        w.close().await.unwrap();
        let report = verify(&config.url, &VerifyOptions::default()).await.unwrap();
        assert!(report.is_clean(), "{report}");
        let rows = (0..260).filter(|o| o % 10 != 9 && o % 25 != 0).count() as u64;
        assert_eq!(report.rows, rows, "{report}");
        assert_eq!(report.partitions, 1);
        assert!(
            std::fs::read_dir(&config.spool_dir).unwrap().next().is_none(),
            "the spool is empty"
        );
    }
}
