//! The committer, the pipeline's last stage: it awaits each batch's acknowledgements in poll
//! order and then stores the batch's offsets, so a partition's stored offset is always a
//! contiguous prefix of what every sink accepted (the contract is in [`super::kafka`]).

use std::sync::Arc;

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use super::kafka::KafkaConsumer;
use crate::event::Positions;
use crate::telemetry::Telemetry;

/// Called with delivered batches' audit ids (a block per batch, an id per line) before their
/// offsets are stored (the pipeline passes the dedupe store's append, which syncs to disk). An
/// error is retried: the offsets wait.
pub type RememberDelivered = Arc<dyn Fn(&[String]) -> std::io::Result<()> + Send + Sync>;

/// Batches finalised together: one write and one disk sync for all their ids. A sync costs
/// milliseconds, so one per batch, in series, would bound commits to a few hundred batches a
/// second. (The delivery bench's ~2,900 events/s, first blamed on this, was the bench's own.)
const GROUP_MAX: usize = 64;

/// A batch waiting for its sinks.
pub struct Pending {
    pub positions: Positions,
    pub acks: Vec<oneshot::Receiver<()>>,
    /// Ids of the batch's audit events, one per line (`enrich::dedupe::id_lines`), remembered
    /// (the dedupe store) once delivered.
    pub ids: String,
    /// The batch's share of `kafka.max_inflight_bytes`, given back once it is finalised.
    pub inflight: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Stores offsets of finalised batches, in poll order.
pub async fn run_committer(
    consumer: Arc<KafkaConsumer>,
    mut rx: mpsc::Receiver<Pending>,
    telemetry: Telemetry,
    remember: Option<RememberDelivered>,
) {
    // A batch taken from the queue whose acknowledgements had not all come yet: the next group
    // starts with it.
    let mut carried: Option<Pending> = None;
    loop {
        let mut first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut delivered = Vec::new();
        let mut dropped = !acknowledged(&mut first).await;
        if !dropped {
            delivered.push(first);
        }
        // Batches behind it that every sink has already accepted join its disk sync; waiting
        // for one that is still in flight would delay the commit (and the latency observed).
        while !dropped && delivered.len() < GROUP_MAX {
            let Ok(mut next) = rx.try_recv() else { break };
            match already_acknowledged(&mut next) {
                Some(true) => delivered.push(next),
                Some(false) => dropped = true,
                None => {
                    carried = Some(next);
                    break;
                }
            }
        }
        // Delivered: remember the ids before the offsets move, so a crash after the commit
        // cannot make them look new, and a crash before it finds them remembered.
        if let Some(remember) = &remember {
            let ids: Vec<String> = delivered.iter_mut().map(|p| std::mem::take(&mut p.ids)).collect();
            let ids = Arc::new(ids);
            let mut attempt = 0;
            loop {
                let (remember, batch) = (remember.clone(), ids.clone());
                // The disk sync blocks: off the runtime's workers.
                let result = tokio::task::spawn_blocking(move || remember(&batch))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
                match result {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::error!(error = %e, attempt, "cannot remember the delivered ids; retrying before committing");
                        tokio::time::sleep(crate::retry::backoff(attempt, crate::retry::RETRY_CAP)).await;
                        attempt += 1;
                    }
                }
            }
        }
        for pending in delivered {
            store(&consumer, &telemetry, pending);
        }
        if dropped {
            // A sink gave a batch up. Storing anything past it would skip records, so stop
            // storing: the records are redelivered after a restart.
            tracing::error!("a sink dropped a batch without accepting it; no further offsets will be committed");
            while rx.recv().await.is_some() {}
            return;
        }
    }
}

/// Waits for every sink's answer; false when one gave the batch up.
async fn acknowledged(pending: &mut Pending) -> bool {
    let mut ok = true;
    for ack in std::mem::take(&mut pending.acks) {
        ok &= ack.await.is_ok();
    }
    ok
}

/// Whether every sink has answered already: `Some(true)` all accepted, `Some(false)` one gave
/// the batch up, `None` some answer is still to come (those received are kept off the list).
fn already_acknowledged(pending: &mut Pending) -> Option<bool> {
    let mut failed = false;
    pending.acks.retain_mut(|ack| match ack.try_recv() {
        Ok(()) => false,
        Err(oneshot::error::TryRecvError::Empty) => true,
        Err(oneshot::error::TryRecvError::Closed) => {
            failed = true;
            false
        }
    });
    if failed {
        Some(false)
    } else if pending.acks.is_empty() {
        Some(true)
    } else {
        None
    }
}

/// Stores one finalised batch's offsets and observes its end-to-end latency.
fn store(consumer: &KafkaConsumer, telemetry: &Telemetry, pending: Pending) {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), max) in &pending.positions.max_offsets {
        if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(max + 1)) {
            tracing::warn!(%topic, partition, error = %e, "cannot record an offset");
        }
    }
    // A failure means the partition was revoked meanwhile; its new owner re-reads from the
    // last commit.
    if tpl.count() > 0
        && let Err(e) = consumer.store_offsets(&tpl)
    {
        tracing::debug!(error = %e, "offsets not stored (partition no longer assigned)");
    }
    telemetry.batches_committed.inc();
    if let Some(oldest) = pending.positions.oldest_record_ms {
        let now = chrono::Utc::now().timestamp_millis();
        telemetry.observe_latency_ms((now - oldest).max(0) as u64);
    }
}
