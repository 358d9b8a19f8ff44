//! Drops events whose `id` was already seen within the dedupe horizon (a consumer restart or a
//! rebalance re-delivers what was in flight). Memory is bounded: ids live in time buckets that
//! expire as a whole, and the oldest bucket is dropped early when the capacity is reached.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

pub struct Dedupe {
    bucket_us: i64,
    horizon_us: i64,
    capacity: usize,
    /// (bucket start, ids first seen in it), oldest first.
    buckets: VecDeque<(i64, HashSet<String>)>,
    len: usize,
}

impl Dedupe {
    pub fn new(horizon: Duration, capacity: usize) -> Dedupe {
        let horizon_us = horizon.as_micros().max(1) as i64;
        Dedupe {
            // Sixty buckets per horizon: expiry is at most 1/60 of the horizon late.
            bucket_us: (horizon_us / 60).max(1),
            horizon_us,
            capacity: capacity.max(1),
            buckets: VecDeque::new(),
            len: 0,
        }
    }

    /// True if `id` is new (and remembers it); false for a duplicate.
    pub fn insert(&mut self, id: &str, now_us: i64) -> bool {
        self.expire(now_us);
        if self.buckets.iter().any(|(_, ids)| ids.contains(id)) {
            return false;
        }
        let start = now_us - now_us.rem_euclid(self.bucket_us);
        match self.buckets.back_mut() {
            Some((s, ids)) if *s >= start => {
                ids.insert(id.to_owned());
            }
            _ => {
                let mut ids = HashSet::new();
                ids.insert(id.to_owned());
                self.buckets.push_back((start, ids));
            }
        }
        self.len += 1;
        true
    }

    fn expire(&mut self, now_us: i64) {
        while let Some((start, ids)) = self.buckets.front() {
            let expired = *start + self.bucket_us <= now_us - self.horizon_us;
            if expired || (self.len >= self.capacity && self.buckets.len() > 1) {
                self.len -= ids.len();
                self.buckets.pop_front();
            } else {
                break;
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
    fn capacity_bounds_memory() {
        let mut d = Dedupe::new(Duration::from_secs(3600), 100);
        for i in 0..10_000 {
            d.insert(&i.to_string(), i * 60_000_000);
        }
        assert!(d.len() <= 200, "{}", d.len());
    }
}
