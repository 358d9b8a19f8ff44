//! Restart-safe memory of delivered event ids, read into the [`Dedupe`] memory at start.

use std::time::Duration;

use crate::enrich::dedupe::Dedupe;

/// Restart-safe memory of delivered event ids: one append-only file of ids per time bucket
/// (`<bucket start, unix seconds>.ids`) in a directory, expired whole with the horizon.
///
/// Ids are written only once their batch is delivered (by the committer, before the batch's
/// offsets are stored), so after a crash the records re-read from the last commit are dropped
/// when they were delivered and pass when they were not: nothing is lost, and duplicates are
/// bounded by the narrow gap between a sink's acknowledgement and this write.
pub struct DedupeStore {
    dir: std::path::PathBuf,
    bucket_s: i64,
    horizon_s: i64,
    /// The current bucket's file, kept open between appends (opening, closing and joining its
    /// path per batch cost as much as writing to it). Files are deleted only by
    /// [`DedupeStore::load_into`] at start, never the current bucket's.
    current: std::sync::Mutex<Option<(i64, std::fs::File)>>,
}

/// Delivered ids as the store writes them: one per line, each line ended. An id holding a
/// newline (CloudEvents ids are free text) would split into two remembered ids, so newlines
/// are dropped from it. Built once per batch, in one allocation.
pub fn id_lines(rows: &[crate::event::AuditRow]) -> String {
    let mut out = String::with_capacity(rows.iter().map(|r| r.id.len() + 1).sum());
    for row in rows {
        for part in row.id.split('\n') {
            out.push_str(part);
        }
        out.push('\n');
    }
    out
}

impl DedupeStore {
    pub fn open(dir: &std::path::Path, horizon: Duration) -> std::io::Result<DedupeStore> {
        std::fs::create_dir_all(dir)?;
        let horizon_s = (horizon.as_secs() as i64).max(60);
        Ok(DedupeStore {
            dir: dir.to_owned(),
            bucket_s: (horizon_s / 60).max(1),
            horizon_s,
            current: std::sync::Mutex::new(None),
        })
    }

    fn bucket_of(&self, now_us: i64) -> i64 {
        let s = now_us / 1_000_000;
        s - s.rem_euclid(self.bucket_s)
    }

    /// Reads every unexpired id into `dedupe` and deletes expired files.
    pub fn load_into(&self, dedupe: &mut Dedupe, now_us: i64) -> std::io::Result<usize> {
        let mut n = 0;
        let cutoff = now_us / 1_000_000 - self.horizon_s - self.bucket_s;
        let mut files: Vec<(i64, std::path::PathBuf)> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| {
                let start = p.file_name()?.to_str()?.strip_suffix(".ids")?.parse::<i64>().ok()?;
                Some((start, p))
            })
            .collect();
        files.sort();
        for (start, path) in files {
            if start < cutoff {
                std::fs::remove_file(&path)?;
                continue;
            }
            for id in std::fs::read_to_string(&path)?.lines().filter(|l| !l.is_empty()) {
                // Remembered at the bucket's time, so they expire with it.
                dedupe.insert(id, start * 1_000_000);
                n += 1;
            }
        }
        Ok(n)
    }

    /// Durably records delivered ids: `lines` holds one block per batch, as [`id_lines`] makes
    /// them.
    pub fn append(&self, lines: &[String], now_us: i64) -> std::io::Result<()> {
        use std::io::Write;
        if lines.iter().all(String::is_empty) {
            return Ok(());
        }
        let bucket = self.bucket_of(now_us);
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut file = match current.take() {
            Some((open, file)) if open == bucket => file,
            _ => {
                let path = self.dir.join(format!("{bucket}.ids"));
                std::fs::OpenOptions::new().create(true).append(true).open(path)?
            }
        };
        let written = lines
            .iter()
            .try_for_each(|block| file.write_all(block.as_bytes()))
            .and_then(|()| file.sync_data());
        // After a failure the retry opens the file again (it may have gone with its directory).
        if written.is_ok() {
            *current = Some((bucket, file));
        }
        written
    }
}

#[cfg(test)]
mod store_tests {
    use super::*;

    #[test]
    fn ids_survive_a_restart_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = DedupeStore::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let now = 1_767_225_600_000_000;
        store.append(&["a\nb\n".into(), String::new()], now).unwrap();
        store.append(&[], now).unwrap();
        let mut fresh = Dedupe::new(Duration::from_secs(3600), 1000);
        assert_eq!(store.load_into(&mut fresh, now + 1_000_000).unwrap(), 2);
        assert!(
            !fresh.insert("a", now + 2_000_000),
            "a delivered id is a duplicate after a restart"
        );
        assert!(fresh.insert("c", now + 2_000_000));
        // Two hours later the bucket has expired and its file is gone.
        let mut later = Dedupe::new(Duration::from_secs(3600), 1000);
        assert_eq!(store.load_into(&mut later, now + 7_200_000_000).unwrap(), 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A batch's ids are one line each (a newline inside an id dropped, not splitting it), and
    /// appends in one bucket go to the file kept open, all read back.
    #[test]
    fn ids_are_lines_and_appends_share_the_open_file() {
        let row = |id: &str| crate::event::AuditRow {
            id: id.into(),
            ..Default::default()
        };
        let block = id_lines(&[row("a"), row("b\nc")]);
        assert_eq!(block, "a\nbc\n");
        let dir = tempfile::tempdir().unwrap();
        let store = DedupeStore::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let now = 1_767_225_600_000_000;
        store.append(&[block], now).unwrap();
        store.append(&[id_lines(&[row("d")])], now + 1_000_000).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "one bucket, one file"
        );
        let mut fresh = Dedupe::new(Duration::from_secs(3600), 1000);
        assert_eq!(store.load_into(&mut fresh, now + 2_000_000).unwrap(), 3);
        for id in ["a", "bc", "d"] {
            assert!(!fresh.insert(id, now + 3_000_000), "{id} remembered");
        }
    }
}
