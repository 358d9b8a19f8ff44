//! Drops events whose `id` was already seen within the dedupe horizon (a consumer restart or a
//! rebalance re-delivers what was in flight). Memory is bounded: ids live in time buckets that
//! expire as a whole, and the oldest bucket is dropped early when the capacity is reached. A
//! bucket also ends when it holds a sixtieth of the capacity, so dropping one frees at most
//! that much and no bucket outgrows the capacity however fast ids come.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use siphasher::sip128::{Hasher128, SipHasher13};

pub struct Dedupe {
    bucket_us: i64,
    horizon_us: i64,
    capacity: usize,
    /// The most ids one bucket takes. Buckets were cut by time only: at 2,000,000 ids an hour
    /// in 60 one-minute buckets, anything over ~33,000 ids/s filled one bucket past the
    /// capacity, and since the bucket being filled is never dropped, memory grew with the
    /// rate (9 M ids, ~300 MB, for a minute at 150,000/s) until the minute ended.
    bucket_ids: usize,
    /// Every remembered id, as its [`Key`], in the shard its key's top bits name: one lookup
    /// per event, whatever the number of buckets. One table of a million ids stalled the
    /// processor for 80-140 ms each time it doubled (rehashing every id into 17-35 MB of fresh
    /// pages), long enough to put a drain's p99 latency over 50 ms on its own; a shard doubles
    /// alone, 1/[`SHARDS`] of that.
    seen: Box<[HashSet<Key, foldhash::fast::RandomState>]>,
    /// Ids in `seen`, over all shards: counted as they come and go, since every insert checks
    /// it against the capacity (summing 64 tables per event would not be free).
    len: usize,
    /// (bucket start, ids first seen in it), oldest first: what expires together.
    buckets: VecDeque<(i64, Vec<Key>)>,
    /// This process's secret key for [`Key`]s.
    sip_key: (u64, u64),
}

/// An id as a 128-bit SipHash under a key drawn at start: 16 bytes per remembered id instead
/// of a shared copy of the string (~100 bytes with its allocation and two references), and no
/// allocation per event. Two ids of one horizon meet on one key with a chance of about n²/2¹²⁹
/// (10⁻²⁷ for a million ids), and the key is secret, so a sender cannot make ids that collide
/// to have real events dropped as duplicates.
type Key = u128;

/// Shards of the id memory: a power of two, picked by a key's top bits (keys are uniform).
const SHARDS: usize = 64;

fn shard_of(key: Key) -> usize {
    (key >> (Key::BITS - SHARDS.trailing_zeros())) as usize
}

impl Dedupe {
    pub fn new(horizon: Duration, capacity: usize) -> Dedupe {
        let horizon_us = horizon.as_micros().max(1) as i64;
        Dedupe {
            // Sixty buckets per horizon: expiry is at most 1/60 of the horizon late.
            bucket_us: (horizon_us / 60).max(1),
            horizon_us,
            capacity: capacity.max(1),
            bucket_ids: (capacity / 60).max(1),
            seen: {
                let state = foldhash::fast::RandomState::default();
                (0..SHARDS).map(|_| HashSet::with_hasher(state.clone())).collect()
            },
            len: 0,
            buckets: VecDeque::new(),
            sip_key: {
                let seed = std::collections::hash_map::RandomState::new();
                (seed.hash_one(0u8), seed.hash_one(1u8))
            },
        }
    }

    fn key(&self, id: &str) -> Key {
        let mut hasher = SipHasher13::new_with_keys(self.sip_key.0, self.sip_key.1);
        hasher.write(id.as_bytes());
        hasher.finish128().as_u128()
    }

    /// True if `id` is new (and remembers it); false for a duplicate.
    pub fn insert(&mut self, id: &str, now_us: i64) -> bool {
        self.expire(now_us);
        let id = self.key(id);
        if !self.seen[shard_of(id)].insert(id) {
            return false;
        }
        self.len += 1;
        let start = now_us - now_us.rem_euclid(self.bucket_us);
        match self.buckets.back_mut() {
            Some((s, ids)) if *s >= start && ids.len() < self.bucket_ids => ids.push(id),
            _ => self.buckets.push_back((start, vec![id])),
        }
        true
    }

    fn expire(&mut self, now_us: i64) {
        while let Some((start, _)) = self.buckets.front() {
            let expired = *start + self.bucket_us <= now_us - self.horizon_us;
            if !(expired || (self.len >= self.capacity && self.buckets.len() > 1)) {
                break;
            }
            if let Some((_, ids)) = self.buckets.pop_front() {
                for id in &ids {
                    if self.seen[shard_of(*id)].remove(id) {
                        self.len -= 1;
                    }
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_inside_the_horizon_are_dropped() {
        let mut d = Dedupe::new(Duration::from_secs(60), 1000);
        assert!(d.insert("a", 0));
        assert!(!d.insert("a", 1_000_000));
        assert!(d.insert("b", 1_000_000));
        // After the horizon, `a` is forgotten.
        assert!(d.insert("a", 200_000_000));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn ids_spread_over_every_shard_and_leave_with_their_bucket() {
        let mut d = Dedupe::new(Duration::from_secs(60), 1_000_000);
        for i in 0..20_000 {
            assert!(d.insert(&format!("id-{i}"), 0));
        }
        assert_eq!(d.len(), 20_000);
        assert_eq!(d.seen.iter().map(HashSet::len).sum::<usize>(), 20_000);
        // Uniform keys: every shard holds its share, give or take (expected 312, sd ~18).
        assert!(
            d.seen.iter().all(|s| (200..450).contains(&s.len())),
            "{:?}",
            d.seen.iter().map(HashSet::len).collect::<Vec<_>>()
        );
        assert!(!d.insert("id-19999", 1_000_000));
        // A horizon later the whole bucket goes, from every shard.
        assert!(d.insert("id-0", 200_000_000));
        assert_eq!(d.len(), 1);
        assert_eq!(d.seen.iter().map(HashSet::len).sum::<usize>(), 1);
    }

    /// Ids faster than the buckets' time: the capacity holds anyway, and what is dropped for
    /// it is the oldest sixtieth, not everything remembered.
    #[test]
    fn capacity_bounds_memory_at_any_rate() {
        let mut d = Dedupe::new(Duration::from_secs(3600), 6_000);
        for i in 0..100_000 {
            d.insert(&format!("id-{i}"), 5_000_000);
            assert!(d.len() <= 6_000, "{} ids after {i}", d.len());
        }
        assert!(d.len() >= 5_900, "only the oldest bucket goes: {}", d.len());
        assert!(!d.insert("id-99999", 5_000_000));
        assert!(d.insert("id-0", 5_000_000), "the oldest ids went first");
    }

    #[test]
    fn capacity_bounds_memory() {
        let mut d = Dedupe::new(Duration::from_secs(3600), 100);
        for i in 0..10_000 {
            d.insert(&i.to_string(), i * 60_000_000);
        }
        assert!(d.len() <= 200, "{}", d.len());
    }
}

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
