//! Event time per partition, as stream processors keep it (Flink's Kafka source, Kafka Streams'
//! stream time). Each assigned partition holds its own high-water event time; a table's clock is
//! the minimum over its active partitions, minus `rules.allowed_lateness`. So while auditflow
//! catches up and one partition runs ahead of the others, the events of the partitions behind
//! are not late: the clock waits for them.
//!
//! A partition holds the clock back only while it is active: it delivered a record, or was
//! assigned, less than `rules.idle_partition_timeout` ago (wall time). A partition that went
//! quiet stops holding it back; one that was revoked leaves. When no partition is active, nothing
//! is expected to come before what is buffered, and everything may be evaluated.

use std::collections::HashMap;
use std::sync::Arc;

/// How far rules may evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watermark {
    /// An active partition has delivered nothing yet: evaluate nothing new.
    Unknown,
    /// Every event at or before this time (µs) has arrived, lateness allowed for.
    At(i64),
    /// No partition is active: evaluate everything that arrived.
    Idle,
}

#[derive(Debug, Clone, Copy)]
struct PartitionTime {
    /// Newest event time seen (µs); None until the partition delivers a record.
    high_water: Option<i64>,
    /// Wall time (µs) of its last record, or of its assignment.
    last_active_wall: i64,
}

/// The event-time clock of one table (audit or metrics).
#[derive(Debug, Clone)]
pub struct EventClock {
    partitions: HashMap<(Arc<str>, i32), PartitionTime>,
    idle_us: i64,
    lateness_us: i64,
}

impl EventClock {
    pub fn new(idle_timeout: std::time::Duration, allowed_lateness: std::time::Duration) -> EventClock {
        EventClock {
            partitions: HashMap::new(),
            idle_us: idle_timeout.as_micros().min(i64::MAX as u128) as i64,
            lateness_us: allowed_lateness.as_micros().min(i64::MAX as u128) as i64,
        }
    }

    /// A partition was assigned: it holds the clock until it delivers or goes idle.
    pub fn assign(&mut self, topic: &Arc<str>, partition: i32, wall_us: i64) {
        self.partitions
            .entry((topic.clone(), partition))
            .or_insert(PartitionTime {
                high_water: None,
                last_active_wall: wall_us,
            });
    }

    /// A partition was revoked: it no longer holds the clock.
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        self.partitions.retain(|(t, p), _| !(&**t == topic && *p == partition));
    }

    /// Keeps exactly these partitions (the consumer's assignment for this table's topic).
    pub fn retain_assigned(&mut self, assigned: &[(Arc<str>, i32)], wall_us: i64) {
        self.partitions
            .retain(|k, _| assigned.iter().any(|(t, p)| *t == k.0 && *p == k.1));
        for (topic, partition) in assigned {
            self.assign(topic, *partition, wall_us);
        }
    }

    /// A record of `partition` with event time `event_us` arrived.
    pub fn observe(&mut self, topic: &Arc<str>, partition: i32, event_us: i64, wall_us: i64) {
        let p = self
            .partitions
            .entry((topic.clone(), partition))
            .or_insert(PartitionTime {
                high_water: None,
                last_active_wall: wall_us,
            });
        p.high_water = Some(p.high_water.map_or(event_us, |h| h.max(event_us)));
        p.last_active_wall = wall_us;
    }

    /// The clock at wall time `wall_us`.
    pub fn watermark(&self, wall_us: i64) -> Watermark {
        let mut min: Option<i64> = None;
        let mut any_active = false;
        for p in self.partitions.values() {
            if wall_us.saturating_sub(p.last_active_wall) >= self.idle_us {
                continue;
            }
            any_active = true;
            match p.high_water {
                None => return Watermark::Unknown,
                Some(h) => min = Some(min.map_or(h, |m| m.min(h))),
            }
        }
        match min {
            Some(m) => Watermark::At(m.saturating_sub(self.lateness_us)),
            None if any_active => Watermark::Unknown,
            None => Watermark::Idle,
        }
    }

    pub fn num_partitions(&self) -> usize {
        self.partitions.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const S: i64 = 1_000_000;

    fn clock() -> EventClock {
        EventClock::new(Duration::from_secs(30), Duration::ZERO)
    }

    #[test]
    fn the_clock_is_the_slowest_active_partition() {
        let t: Arc<str> = Arc::from("audit");
        let mut c = clock();
        c.observe(&t, 0, 100 * S, 0);
        assert_eq!(c.watermark(0), Watermark::At(100 * S));
        c.observe(&t, 1, 40 * S, 0);
        assert_eq!(c.watermark(0), Watermark::At(40 * S), "the partition behind holds it");
        c.observe(&t, 1, 120 * S, S);
        assert_eq!(c.watermark(S), Watermark::At(100 * S));
    }

    #[test]
    fn an_assigned_partition_holds_the_clock_until_it_delivers_or_idles() {
        let t: Arc<str> = Arc::from("audit");
        let mut c = clock();
        c.assign(&t, 2, 0);
        c.observe(&t, 0, 100 * S, 0);
        assert_eq!(c.watermark(0), Watermark::Unknown);
        assert_eq!(c.watermark(29 * S), Watermark::Unknown);
        // Partition 0 is idle too by then: nothing is active, so everything may go.
        assert_eq!(c.watermark(30 * S), Watermark::Idle);
        c.observe(&t, 0, 110 * S, 31 * S);
        assert_eq!(
            c.watermark(31 * S),
            Watermark::At(110 * S),
            "partition 2 no longer holds it"
        );
    }

    #[test]
    fn revoked_partitions_leave_and_lateness_is_subtracted() {
        let t: Arc<str> = Arc::from("audit");
        let mut c = EventClock::new(Duration::from_secs(30), Duration::from_secs(5));
        c.observe(&t, 0, 100 * S, 0);
        c.observe(&t, 1, 10 * S, 0);
        assert_eq!(c.watermark(0), Watermark::At(5 * S));
        c.revoke("audit", 1);
        assert_eq!(c.watermark(0), Watermark::At(95 * S));
        c.retain_assigned(&[(t.clone(), 0), (t.clone(), 3)], 0);
        assert_eq!(c.num_partitions(), 2);
        assert_eq!(
            c.watermark(0),
            Watermark::Unknown,
            "newly assigned partition 3 holds it"
        );
    }
}
