//! How a rule test's input reaches the rules: in time order, partition by partition, or
//! interleaved, through the same per-partition clocks and reorder buffers the pipeline uses. A
//! rule pack whose tests pass in all three orders fires the same way when auditflow reads a
//! backlog as when it follows the live tail.
//!
//! Records are keyed as on the real topics: audit events by principal (else API key, else id),
//! metric samples by series (name, cluster, topic, partition), so a series stays in one partition.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::Deserialize;

use super::Item;
use crate::event::Alert;
use crate::event::arrow as tables;
use crate::query::window::Window;
use crate::rules::clock::{EventClock, Watermark};
use crate::rules::{RuleEngine, Source};

/// The order a test's input is delivered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Everything at one instant, instant after instant.
    #[serde(rename = "in_order")]
    Chronological,
    /// All of partition 0, then all of partition 1, ... (a consumer catching up one partition
    /// at a time).
    ByPartition,
    /// A few records of each partition in turn (fetches of uneven partitions).
    Interleaved,
}

impl Order {
    pub const ALL: [Order; 3] = [Order::Chronological, Order::ByPartition, Order::Interleaved];

    pub fn name(self) -> &'static str {
        match self {
            Order::Chronological => "in_order",
            Order::ByPartition => "by_partition",
            Order::Interleaved => "interleaved",
        }
    }
}

/// Records of one partition taken in turn when interleaving (uneven on purpose: partitions
/// advance at different speeds).
const INTERLEAVE_CHUNK: [usize; 3] = [7, 3, 11];

fn partition_of(item: &Item, partitions: u32) -> i32 {
    let mut h = std::hash::DefaultHasher::new();
    match item {
        Item::Audit(r) => r
            .principal
            .as_deref()
            .or(r.auth_identifier.as_deref())
            .unwrap_or(&r.id)
            .hash(&mut h),
        Item::Metric(m) => (&m.name, &m.cluster_id, &m.topic, m.partition).hash(&mut h),
    }
    (h.finish() % u64::from(partitions.max(1))) as i32
}

/// Polls as the consumer would hand them over: each a list of (partition, item).
fn polls(items: Vec<(i64, Item)>, order: Order, partitions: u32) -> Vec<Vec<(i32, Item)>> {
    let keyed: Vec<(i64, i32, Item)> = items
        .into_iter()
        .map(|(t, item)| (t, partition_of(&item, partitions), item))
        .collect();
    match order {
        Order::Chronological => {
            let mut out: Vec<Vec<(i32, Item)>> = Vec::new();
            let mut last = None;
            for (t, p, item) in keyed {
                if last != Some(t) {
                    out.push(Vec::new());
                    last = Some(t);
                }
                if let Some(poll) = out.last_mut() {
                    poll.push((p, item));
                }
            }
            out
        }
        Order::ByPartition | Order::Interleaved => {
            let mut queues: Vec<std::collections::VecDeque<(i32, Item)>> =
                (0..partitions.max(1)).map(|_| Default::default()).collect();
            for (_, p, item) in keyed {
                queues[p as usize].push_back((p, item));
            }
            let mut out = Vec::new();
            if order == Order::ByPartition {
                for q in queues {
                    // One poll per 50 records, like fetches of a long backlog.
                    let all: Vec<(i32, Item)> = q.into_iter().collect();
                    let mut rest = all.into_iter().peekable();
                    while rest.peek().is_some() {
                        out.push(rest.by_ref().take(50).collect());
                    }
                }
            } else {
                let mut turn = 0;
                while queues.iter().any(|q| !q.is_empty()) {
                    for (i, q) in queues.iter_mut().enumerate() {
                        let n = INTERLEAVE_CHUNK[(i + turn) % INTERLEAVE_CHUNK.len()].min(q.len());
                        if n > 0 {
                            out.push(q.drain(..n).collect());
                        }
                    }
                    turn += 1;
                }
            }
            out
        }
    }
}

/// Delivers `items` (sorted by time) in `order` over `partitions` partitions; returns the alerts
/// raised and the newest event time.
pub(super) fn run(
    engine: &mut RuleEngine,
    window: &Window,
    items: Vec<(i64, Item)>,
    order: Order,
    partitions: u32,
) -> (Vec<Alert>, i64) {
    let end = items.last().map_or(super::BASE_US, |(t, _)| *t);
    let topics: [Arc<str>; 2] = [Arc::from("audit"), Arc::from("metrics")];
    // No wall time passes in a test: no partition goes idle, only the end of input flushes.
    let mut clocks = [
        EventClock::new(std::time::Duration::MAX, std::time::Duration::ZERO),
        EventClock::new(std::time::Duration::MAX, std::time::Duration::ZERO),
    ];
    // Only partitions with input take part, as if each had traffic of its own.
    for (_, item) in &items {
        let slot = usize::from(matches!(item, Item::Metric(_)));
        clocks[slot].assign(&topics[slot], partition_of(item, partitions), 0);
    }
    let mut alerts = Vec::new();
    for poll in polls(items, order, partitions) {
        let mut audit = Vec::new();
        let mut metrics = Vec::new();
        for (p, item) in poll {
            match item {
                Item::Audit(r) => {
                    clocks[0].observe(&topics[0], p, r.time_us, 0);
                    audit.push(*r);
                }
                Item::Metric(m) => {
                    clocks[1].observe(&topics[1], p, m.time_us, 0);
                    metrics.push(m);
                }
            }
        }
        let mut raised = Vec::new();
        let audit = (!audit.is_empty()).then(|| {
            let newest = audit.iter().map(|r| r.time_us).max().unwrap_or(end);
            window.audit.append(tables::audit_batch(&audit), newest);
            // The rules get what the pipeline gives them: only the columns some rule reads.
            let read = engine.columns_read(Source::Audit);
            tables::audit_batch_keeping(&audit, &|c| read.contains(c))
        });
        raised.extend(engine.ingest(Source::Audit, audit, clocks[0].watermark(0)).0);
        let metrics = (!metrics.is_empty()).then(|| {
            let b = tables::metrics_batch(&metrics);
            let newest = metrics.iter().map(|m| m.time_us).max().unwrap_or(end);
            window.metrics.append(b.clone(), newest);
            b
        });
        raised.extend(engine.ingest(Source::Metrics, metrics, clocks[1].watermark(0)).0);
        alerts.extend(second_order(engine, window, raised));
    }
    // End of input: whatever the clocks still hold is complete now.
    let mut raised = engine.ingest(Source::Audit, None, Watermark::Idle).0;
    raised.extend(engine.ingest(Source::Metrics, None, Watermark::Idle).0);
    alerts.extend(second_order(engine, window, raised));
    (alerts, end)
}

/// Runs the rules over alerts on `raised` and records both in the window's alerts table.
fn second_order(engine: &mut RuleEngine, window: &Window, mut raised: Vec<Alert>) -> Vec<Alert> {
    if raised.is_empty() {
        return raised;
    }
    let second = engine.evaluate(Source::Alerts, &tables::alerts_batch(&raised)).0;
    raised.extend(second);
    let newest = raised.iter().map(|a| a.time_us).max().unwrap_or_default();
    window.alerts.append(tables::alerts_batch(&raised), newest);
    raised
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::MetricSample;

    fn metric(t: i64, topic: &str) -> (i64, Item) {
        (
            t,
            Item::Metric(MetricSample {
                time_us: t,
                name: "m".into(),
                value: 1.0,
                kind: crate::event::MetricKind::Counter,
                cluster_id: None,
                topic: Some(topic.into()),
                partition: None,
                labels: Default::default(),
                resource_app: None,
            }),
        )
    }

    #[test]
    fn every_order_delivers_every_item_once_and_each_partition_in_time_order() {
        let items: Vec<(i64, Item)> = (0..200).map(|i| metric(i, &format!("t{}", i % 9))).collect();
        for order in Order::ALL {
            let polls = polls(items.iter().map(|(t, i)| (*t, i.clone())).collect(), order, 3);
            let flat: Vec<(i32, i64)> = polls
                .iter()
                .flatten()
                .map(|(p, i)| match i {
                    Item::Metric(m) => (*p, m.time_us),
                    Item::Audit(r) => (*p, r.time_us),
                })
                .collect();
            assert_eq!(flat.len(), 200, "{order:?}");
            for p in 0..3 {
                let times: Vec<i64> = flat.iter().filter(|(q, _)| *q == p).map(|(_, t)| *t).collect();
                assert!(times.windows(2).all(|w| w[0] <= w[1]), "{order:?} partition {p}");
            }
            if order != Order::Chronological {
                let all: Vec<i64> = flat.iter().map(|(_, t)| *t).collect();
                assert!(all.windows(2).any(|w| w[0] > w[1]), "{order:?} must not be time order");
            }
        }
    }
}
