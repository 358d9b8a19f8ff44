//! Drops events whose `id` was already seen within the dedupe horizon (a consumer restart or a
//! rebalance re-delivers what was in flight). Memory is bounded: ids live in time buckets that
//! expire as a whole, and the oldest bucket is dropped early when the capacity is reached. A
//! bucket also ends when it holds a sixtieth of the capacity, so dropping one frees at most
//! that much and no bucket outgrows the capacity however fast ids come.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use hashbrown::HashTable;
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
    /// Every remembered id, as an [`Entry`], in the shard its key's top bits name: one lookup
    /// per event, whatever the number of buckets. One table of a million ids stalled the
    /// processor for 80-140 ms each time it doubled (rehashing every id into 17-35 MB of fresh
    /// pages), long enough to put a drain's p99 latency over 50 ms on its own; a shard doubles
    /// alone, 1/[`SHARDS`] of that.
    ///
    /// Entries of expired buckets stay until their shard needs room, and then go in one pass
    /// over the shard ([`Shard::sweep`]): removing each id on its own when its bucket expired
    /// cost a cache miss per id, as many as inserting them, and a list of each bucket's ids to
    /// find them (16 bytes more per id). An expired entry counts as absent meanwhile, and its
    /// id, if it comes again, takes it over.
    seen: Box<[Shard]>,
    /// Live ids, over all shards: the live buckets' counts summed as they come and go.
    len: usize,
    /// The live buckets, oldest first: what expires together.
    buckets: VecDeque<Bucket>,
    /// The stamp the next bucket gets; the live stamps run from the oldest bucket's to this
    /// one, exclusive (modulo 2³², so a stamp wraps after 4 billion buckets: years at the
    /// fastest bucket rate the capacity allows).
    next_stamp: u32,
    /// This process's secret key for ids' hashes.
    sip_key: (u64, u64),
}

/// A time bucket: ids first seen in it carry its stamp.
struct Bucket {
    start_us: i64,
    stamp: u32,
    ids: usize,
}

/// An id as the top 96 bits of its 128-bit SipHash under a key drawn at start, and, in the low
/// 32 bits, the stamp of the bucket it was remembered in: 16 bytes per remembered id instead of
/// a shared copy of the string (~100 bytes with its allocation and two references), and no
/// allocation per event. Two ids of one horizon meet on one hash with a chance of about
/// n²/2⁹⁷ (10⁻¹⁷ for two million ids), and the key is secret, so a sender cannot make ids that
/// collide to have real events dropped as duplicates.
type Entry = u128;

const STAMP_BITS: u32 = 32;
const STAMP_MASK: Entry = (1 << STAMP_BITS) - 1;

/// Shards of the id memory: a power of two, picked by a hash's top bits (hashes are uniform).
const SHARDS: usize = 64;

fn shard_of(entry: Entry) -> usize {
    (entry >> (Entry::BITS - SHARDS.trailing_zeros())) as usize
}

/// An entry's id, without its stamp.
fn identity(entry: Entry) -> u128 {
    entry >> STAMP_BITS
}

/// The table's hash of an entry: bits its shard does not fix (the top ones) and its stamp does
/// not change (the low ones). The SipHash is uniform; hashing it again would add nothing.
fn table_hash(entry: &Entry) -> u64 {
    identity(*entry) as u64
}

/// Which stamps are live: those from the oldest live bucket's to the next bucket's, exclusive.
#[derive(Clone, Copy)]
struct Live {
    oldest: u32,
    next: u32,
}

impl Live {
    fn holds(self, entry: Entry) -> bool {
        (entry as u32).wrapping_sub(self.oldest) < self.next.wrapping_sub(self.oldest)
    }
}

/// One shard of the id memory.
#[derive(Default)]
struct Shard {
    table: HashTable<Entry>,
    /// The entries `table` holds when full, read after each rehash (when none of its room is
    /// taken by the marks removals leave).
    full: usize,
}

impl Shard {
    /// Remembers `entry` unless its id is here with a live stamp (a duplicate: false). An
    /// expired entry of the id takes the new stamp in place.
    fn remember(&mut self, entry: Entry, live: Live) -> bool {
        let hash = table_hash(&entry);
        match self.table.find_mut(hash, |e| identity(*e) == identity(entry)) {
            Some(seen) if live.holds(*seen) => return false,
            Some(expired) => *expired = entry,
            None => {
                if self.table.len() == self.table.capacity() {
                    self.sweep(live);
                }
                self.table.insert_unique(hash, entry, table_hash);
            }
        }
        true
    }

    /// Makes room in a full shard: its expired entries go, in one pass over its memory.
    ///
    /// Removing an entry from a well-filled table leaves a mark that still takes room, so the
    /// table is then rehashed: in place (clearing the marks) while the live entries fill at
    /// most half of it, the most hashbrown rehashes in place, else into twice the room. A shard
    /// thus keeps room for about as many expired entries as live ones, and is swept at most
    /// once per half of its size in inserts.
    fn sweep(&mut self, live: Live) {
        let table = &mut self.table;
        table.retain(|entry| live.holds(*entry));
        let half = self.full / 2;
        if table.len() < half {
            // Asking for more than is free makes hashbrown rehash; for no more than half in all,
            // in place.
            if table.capacity() < half {
                table.reserve(half - table.len(), table_hash);
                self.full = table.capacity();
            }
        } else {
            // One more than is free, for more than half in all: hashbrown moves the table into
            // twice its room (asking for the live entries' number again would be four times).
            table.reserve(table.capacity() - table.len() + 1, table_hash);
            self.full = table.capacity();
        }
    }
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
            seen: (0..SHARDS).map(|_| Shard::default()).collect(),
            len: 0,
            buckets: VecDeque::new(),
            next_stamp: 0,
            sip_key: {
                let seed = std::collections::hash_map::RandomState::new();
                (seed.hash_one(0u8), seed.hash_one(1u8))
            },
        }
    }

    fn key(&self, id: &str) -> u128 {
        let mut hasher = SipHasher13::new_with_keys(self.sip_key.0, self.sip_key.1);
        hasher.write(id.as_bytes());
        hasher.finish128().as_u128()
    }

    /// True if `id` is new (and remembers it); false for a duplicate.
    pub fn insert(&mut self, id: &str, now_us: i64) -> bool {
        self.expire(now_us);
        let stamp = self.current_stamp(now_us);
        let live = self.live();
        let entry = (self.key(id) & !STAMP_MASK) | Entry::from(stamp);
        if !self.seen[shard_of(entry)].remember(entry, live) {
            return false;
        }
        self.len += 1;
        if let Some(bucket) = self.buckets.back_mut() {
            bucket.ids += 1;
        }
        true
    }

    /// The stamp of the bucket an id seen now goes in, starting one when the time or the last
    /// bucket's size asks for it.
    fn current_stamp(&mut self, now_us: i64) -> u32 {
        let start = now_us - now_us.rem_euclid(self.bucket_us);
        match self.buckets.back() {
            Some(b) if b.start_us >= start && b.ids < self.bucket_ids => b.stamp,
            _ => {
                let stamp = self.next_stamp;
                self.next_stamp = stamp.wrapping_add(1);
                self.buckets.push_back(Bucket {
                    start_us: start,
                    stamp,
                    ids: 0,
                });
                stamp
            }
        }
    }

    fn live(&self) -> Live {
        Live {
            oldest: self.buckets.front().map_or(self.next_stamp, |b| b.stamp),
            next: self.next_stamp,
        }
    }

    fn expire(&mut self, now_us: i64) {
        while let Some(oldest) = self.buckets.front() {
            let expired = oldest.start_us + self.bucket_us <= now_us - self.horizon_us;
            if !(expired || (self.len >= self.capacity && self.buckets.len() > 1)) {
                break;
            }
            self.len -= oldest.ids;
            self.buckets.pop_front();
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
        for i in 0..10_000 {
            assert!(d.insert(&format!("id-{i}"), 0));
        }
        assert_eq!(d.len(), 10_000);
        assert_eq!(d.seen.iter().map(|s| s.table.len()).sum::<usize>(), 10_000);
        // Uniform keys: every shard holds its share, give or take (expected 156, sd ~12).
        assert!(
            d.seen.iter().all(|s| (100..220).contains(&s.table.len())),
            "{:?}",
            d.seen.iter().map(|s| s.table.len()).collect::<Vec<_>>()
        );
        // Shards grow by doubling, to no more than twice what they hold (at ~156 ids, room for 224
        // after 112; growing fourfold, as asking for `len` more did, would give 448).
        assert!(
            d.seen
                .iter()
                .all(|s| s.full <= 2 * s.table.len() && s.table.capacity() == s.full),
            "{:?}",
            d.seen.iter().map(|s| (s.table.len(), s.full)).collect::<Vec<_>>()
        );
        assert!(!d.insert("id-9999", 1_000_000));
        // A horizon later the whole bucket goes, from every shard: each of its ids is new again.
        assert!(d.insert("id-0", 200_000_000));
        assert_eq!(d.len(), 1);
        assert!(d.insert("id-9999", 200_000_000));
        assert!(!d.insert("id-0", 200_000_000));
        assert_eq!(d.len(), 2);
    }

    /// Expired ids leave their shards' memory when it is needed: a horizon after horizon of
    /// fresh ids keeps the tables at one horizon's size, not the sum of them all.
    #[test]
    fn expired_ids_make_room_for_new_ones() {
        let mut d = Dedupe::new(Duration::from_secs(60), 1_000_000);
        let mut first_capacity = 0;
        for round in 0..10i64 {
            for i in 0..20_000 {
                assert!(d.insert(&format!("{round}-{i}"), round * 120_000_000));
            }
            assert_eq!(d.len(), 20_000, "round {round}: only its own ids are live");
            assert!(!d.insert(&format!("{round}-7"), round * 120_000_000));
            let capacity: usize = d.seen.iter().map(|s| s.full).sum();
            if round == 0 {
                first_capacity = capacity;
            }
            assert!(
                capacity <= first_capacity * 3 / 2,
                "round {round}: {capacity} > {first_capacity}"
            );
        }
        let entries: usize = d.seen.iter().map(|s| s.table.len()).sum();
        assert!(entries < 40_000, "{entries} entries kept for 20,000 live ids");
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
        // What the shards keep, expired entries included, is bounded too.
        let entries: usize = d.seen.iter().map(|s| s.table.len()).sum();
        assert!(entries <= 4 * 6_000, "{entries} entries kept");
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
