//! Drops events whose `id` was already seen within the dedupe horizon (a consumer restart or a
//! rebalance re-delivers what was in flight). Memory is bounded: ids live in time buckets that
//! expire as a whole, and the oldest bucket is dropped early when the capacity is reached. A
//! bucket also ends when it holds a sixtieth of the capacity, so dropping one frees at most
//! that much and no bucket outgrows the capacity however fast ids come.

use std::collections::VecDeque;
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

/// An id as the top 96 bits of its 128-bit SipHash under a key drawn at start, one of them
/// ([`PRESENT`]) then set, and, in the low 32 bits, the stamp of the bucket it was remembered
/// in: 16 bytes per remembered id instead of a shared copy of the string (~100 bytes with its
/// allocation and two references), and no allocation per event. Two ids of one horizon meet on
/// one hash with a chance of about n²/2⁹⁶ (10⁻¹⁶ for two million ids), and the key is secret,
/// so a sender cannot make ids that collide to have real events dropped as duplicates.
type Entry = u128;

/// An id as the memory keeps it ([`Dedupe::key`]): an [`Entry`] without its stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdKey(Entry);

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

/// One shard of the id memory: an open-addressing table of entries, probed linearly from the
/// slot its hash names, an empty slot holding [`VACANT`].
///
/// Where an id's probe starts follows from its key alone, so a poll's slots can be read ahead
/// ([`Dedupe::warm`]); hashbrown's table, which this replaced, hides its slots. At two million
/// ids its inserts were 14% of the samples of the realistic `--bench pipeline` stage on one
/// core, nearly all of it waiting on memory. (The table alone, without reading ahead, measured
/// no faster: the core already overlapped hashbrown's two misses per insert.)
#[derive(Default)]
struct Shard {
    /// A power of two of slots, or none before the first id.
    slots: Box<[Entry]>,
    /// Slots taken, live and expired entries alike.
    used: usize,
}

/// An empty slot. No entry is this: every entry has [`PRESENT`] set.
const VACANT: Entry = 0;
/// A bit every entry sets, below the shard's bits and above those a slot's index is read from.
const PRESENT: Entry = 1 << (Entry::BITS - SHARDS.trailing_zeros() - 1);

/// At most this share of a shard's slots is taken: past three quarters a linear probe for an
/// absent id reads ~8.5 slots on average, still about two cache lines.
fn room(slots: usize) -> usize {
    slots / 4 * 3
}

impl Shard {
    /// Remembers `entry` unless its id is here with a live stamp (a duplicate: false). An
    /// expired entry of the id takes the new stamp in place.
    fn remember(&mut self, entry: Entry, live: Live) -> bool {
        let mut at = match self.find(entry) {
            Ok(seen) if live.holds(self.slots[seen]) => return false,
            Ok(expired) => {
                self.slots[expired] = entry;
                return true;
            }
            Err(vacant) => vacant,
        };
        if self.used + 1 > room(self.slots.len()) {
            self.sweep(live);
            // Absent still: the vacant slot where its probe now ends.
            at = self.find(entry).unwrap_or_else(|vacant| vacant);
        }
        self.slots[at] = entry;
        self.used += 1;
        true
    }

    /// The slot `entry`'s probe starts at, in a shard with slots: the low bits of its id, which
    /// its shard does not fix (the top ones) and its stamp does not change. The SipHash is
    /// uniform; hashing it again would add nothing.
    fn home(&self, entry: Entry) -> usize {
        identity(entry) as usize & (self.slots.len() - 1)
    }

    /// The slot holding `entry`'s id, or else the vacant slot where its probe ends (none when
    /// there are no slots yet: `usize::MAX`, which [`Shard::remember`] never writes to, since a
    /// shard without slots has no room).
    fn find(&self, entry: Entry) -> Result<usize, usize> {
        if self.slots.is_empty() {
            return Err(usize::MAX);
        }
        let mask = self.slots.len() - 1;
        let mut at = self.home(entry);
        loop {
            let slot = self.slots[at];
            if slot == VACANT {
                return Err(at);
            }
            if identity(slot) == identity(entry) {
                return Ok(at);
            }
            at = (at + 1) & mask;
        }
    }

    /// Makes room in a full shard: its live entries move into fresh slots, with room for twice
    /// as many (a shard full of live ones doubles), so a shard keeps room for about as many expired
    /// entries as live ones and is swept at most once per that many inserts. (A probe runs
    /// over the entries after its slot, so expired ones cannot simply be cleared.)
    fn sweep(&mut self, live: Live) {
        let kept: Vec<Entry> = self
            .slots
            .iter()
            .copied()
            .filter(|&e| e != VACANT && live.holds(e))
            .collect();
        let mut slots = 16;
        while room(slots) < 2 * kept.len() {
            slots *= 2;
        }
        self.slots = vec![VACANT; slots].into_boxed_slice();
        self.used = kept.len();
        for entry in kept {
            // Each id once: its probe ends at a vacant slot.
            let at = self.find(entry).unwrap_or_else(|vacant| vacant);
            self.slots[at] = entry;
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

    /// `id`'s key: its hash, which is all the memory keeps of it.
    pub fn key(&self, id: &str) -> IdKey {
        let mut hasher = SipHasher13::new_with_keys(self.sip_key.0, self.sip_key.1);
        hasher.write(id.as_bytes());
        IdKey((hasher.finish128().as_u128() & !STAMP_MASK) | PRESENT)
    }

    /// Reads the slot where each key's probe starts, so that inserting the keys next finds
    /// those slots in the cache.
    ///
    /// At a few million ids the memory is tens of MB, and each insert missed the cache (and the
    /// TLB) on its slot: ~300 ns an id, a tenth of the processor's time on one core. These reads
    /// depend on nothing but the keys, so the core has many of them in flight at once, where
    /// an insert waits for each miss in turn. (Safe Rust has no prefetch instruction; a read
    /// whose value is kept does the same.)
    pub fn warm(&self, keys: &[IdKey]) {
        let mut read: Entry = 0;
        for key in keys {
            let shard = &self.seen[shard_of(key.0)];
            if !shard.slots.is_empty() {
                read ^= shard.slots[shard.home(key.0)];
            }
        }
        std::hint::black_box(read);
    }

    /// True if `id` is new (and remembers it); false for a duplicate.
    pub fn insert(&mut self, id: &str, now_us: i64) -> bool {
        let key = self.key(id);
        self.insert_key(key, now_us)
    }

    /// [`Dedupe::insert`] for an id's [`IdKey`].
    pub fn insert_key(&mut self, key: IdKey, now_us: i64) -> bool {
        self.expire(now_us);
        let stamp = self.current_stamp(now_us);
        let live = self.live();
        let entry = key.0 | Entry::from(stamp);
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
        assert_eq!(d.seen.iter().map(|s| s.used).sum::<usize>(), 10_000);
        // Uniform keys: every shard holds its share, give or take (expected 156, sd ~12).
        assert!(
            d.seen.iter().all(|s| (100..220).contains(&s.used)),
            "{:?}",
            d.seen.iter().map(|s| s.used).collect::<Vec<_>>()
        );
        // Shards grow by doubling, to room for no more than twice what they hold (at ~156 ids,
        // room for 192 after 96; growing fourfold would give 384).
        assert!(
            d.seen.iter().all(|s| room(s.slots.len()) <= 2 * s.used),
            "{:?}",
            d.seen.iter().map(|s| (s.used, s.slots.len())).collect::<Vec<_>>()
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
            let capacity: usize = d.seen.iter().map(|s| s.slots.len()).sum();
            if round == 0 {
                first_capacity = capacity;
            }
            assert!(
                capacity <= first_capacity * 3 / 2,
                "round {round}: {capacity} > {first_capacity}"
            );
        }
        let entries: usize = d.seen.iter().map(|s| s.used).sum();
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
        let entries: usize = d.seen.iter().map(|s| s.used).sum();
        assert!(entries <= 4 * 6_000, "{entries} entries kept");
        assert!(!d.insert("id-99999", 5_000_000));
        assert!(d.insert("id-0", 5_000_000), "the oldest ids went first");
    }

    /// Ids whose probes start at one slot, the last, run on past each other and wrap to the
    /// first: each is still found, a live one is a duplicate, an expired one is taken over in
    /// place, and a sweep keeps exactly the live ones.
    #[test]
    fn colliding_ids_probe_on_and_wrap() {
        let entry = |n: u128, stamp: u32| ((n << 80) | 15 << STAMP_BITS) | PRESENT | Entry::from(stamp);
        let live = |oldest, next| Live { oldest, next };
        let mut shard = Shard::default();
        for n in 0..12 {
            assert!(shard.remember(entry(n, n as u32), live(0, 12)), "{n}");
        }
        assert_eq!((shard.slots.len(), shard.used), (16, 12));
        assert_eq!(shard.slots[15], entry(0, 0), "the first took the slot its hash names");
        assert_eq!(shard.slots[10], entry(11, 11), "the rest probed on from the first slot");
        for n in 0..12 {
            assert!(!shard.remember(entry(n, 12), live(0, 13)), "{n} is live");
        }
        // Stamps 0..6 expire: their ids are new again, in the same slots.
        assert!(shard.remember(entry(3, 13), live(6, 14)));
        assert_eq!(shard.slots[2], entry(3, 13));
        assert_eq!(shard.used, 12);
        // Full: the next new id sweeps out the expired entries (0, 1, 2, 4 and 5).
        assert!(shard.remember(entry(99, 13), live(6, 14)));
        assert_eq!(shard.used, 12 - 5 + 1);
        assert_eq!(shard.slots.len(), 32, "room for twice the 7 live ones: 24 of 32 slots");
        for n in [3, 6, 7, 8, 9, 10, 11, 99] {
            assert!(!shard.remember(entry(n, 13), live(6, 14)), "{n} kept");
        }
        for n in [0, 1, 2, 4, 5] {
            assert!(shard.find(entry(n, 13)).is_err(), "{n} swept");
        }
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
