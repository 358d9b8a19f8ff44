//! One shared copy of each recently seen short string.
//!
//! An audit event's fields repeat from event to event: a few dozen types, methods and results,
//! a few hundred clusters, principals and topics. Allocating, copying and freeing each of them
//! per row was a third of the decoder's time and most of the cost of dropping a delivered
//! batch; handing out a reference-counted copy costs a hash and an increment.

use std::collections::HashSet;

use crate::event::Text;

/// Strings longer than this are not kept (free text): they rarely repeat. Confluent Cloud names
/// a service and a resource by CRN, 130-250 characters repeated on every event of a cluster; at
/// 128 (the limit before), every Cloud event's `service` was copied anew, then hashed by value
/// and stored once per row in the window's dictionary (two thirds of a realistic poll's rows).
const MAX_LEN: usize = 512;

/// Remembered strings, and their bytes, before the set starts over, so an attacker sending
/// unique values cannot grow it without bound (at most ~8 MB of text, ~2 MB of table).
const MAX_ENTRIES: usize = 1 << 16;
const MAX_BYTES: usize = 8 << 20;

/// The decoder's string set. One per decoding thread; it is not shared.
pub struct Interner {
    set: HashSet<Text, foldhash::fast::RandomState>,
    /// The bytes of the strings in `set`.
    bytes: usize,
}

impl Default for Interner {
    fn default() -> Interner {
        Interner {
            set: HashSet::with_capacity_and_hasher(1024, foldhash::fast::RandomState::default()),
            bytes: 0,
        }
    }
}

impl Interner {
    /// The shared copy of `s`, made on first sight.
    pub fn text(&mut self, s: &str) -> Text {
        if s.len() > MAX_LEN {
            return Text::from(s);
        }
        if let Some(t) = self.set.get(s) {
            return t.clone();
        }
        if self.set.len() >= MAX_ENTRIES || self.bytes + s.len() > MAX_BYTES {
            // Starting over is cheaper than tracking recency, and the values that matter are
            // back after one batch.
            self.set.clear();
            self.bytes = 0;
        }
        let t = Text::from(s);
        self.set.insert(t.clone());
        self.bytes += s.len();
        t
    }

    /// [`Interner::text`] of a non-empty string; `None` for an empty or absent one.
    pub fn non_empty(&mut self, s: Option<&str>) -> Option<Text> {
        s.filter(|s| !s.is_empty()).map(|s| self.text(s))
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn repeated_values_share_one_copy() {
        let mut i = Interner::default();
        let a = i.text("kafka.Authentication");
        let b = i.text(&String::from("kafka.Authentication"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "kafka.Authentication");
        assert_eq!(i.len(), 1);
        assert_eq!(i.non_empty(Some("")), None);
        assert_eq!(i.non_empty(None), None);
        assert_eq!(i.non_empty(Some("x")).as_deref(), Some("x"));
    }

    #[test]
    fn long_and_endless_unique_values_do_not_grow_the_set() {
        let mut i = Interner::default();
        let long = "x".repeat(MAX_LEN + 1);
        let a = i.text(&long);
        let b = i.text(&long);
        assert!(!Arc::ptr_eq(&a, &b), "long strings are not kept");
        assert_eq!(&*a, long);
        for n in 0..(MAX_ENTRIES + 10) {
            i.text(&format!("principal-{n}"));
            assert!(i.len() <= MAX_ENTRIES);
        }
        assert!(i.len() <= MAX_ENTRIES);
        assert_eq!(&*i.text("principal-3"), "principal-3");
        // Long unique values are bounded by their bytes before their number.
        let mut i = Interner::default();
        for n in 0..(2 * MAX_BYTES / MAX_LEN) {
            i.text(&format!("{n:0>width$}", width = MAX_LEN));
            assert!(i.bytes <= MAX_BYTES && i.len() <= MAX_BYTES / MAX_LEN);
        }
    }

    /// A Confluent Cloud CRN (a service's or a resource's name, longer than most values) repeats
    /// on every event of its cluster: one copy is shared.
    #[test]
    fn cloud_crns_are_shared() {
        let crn = "crn://confluent.cloud/organization=5d1c2b7e-8f3a-4c21-9e6d-0a4b7c3e9f12/environment=env-q7k2m/cloud-cluster=lkc-7x3p9w/kafka=lkc-7x3p9w/topic=Tech02-payments.orders";
        assert!(crn.len() > 128);
        let mut i = Interner::default();
        let a = i.text(crn);
        let copy = String::from(crn);
        let b = i.text(&copy);
        assert!(Arc::ptr_eq(&a, &b));
    }
}
