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

/// Called with a delivered batch's audit ids before its offsets are stored (the pipeline
/// passes the dedupe store's append). An error is retried: the offsets wait.
pub type RememberDelivered = Box<dyn Fn(&[String]) -> std::io::Result<()> + Send + Sync>;

/// A batch waiting for its sinks.
pub struct Pending {
    pub positions: Positions,
    pub acks: Vec<oneshot::Receiver<()>>,
    /// Ids of the batch's audit events, remembered (the dedupe store) once delivered.
    pub ids: Vec<String>,
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
    while let Some(pending) = rx.recv().await {
        let mut delivered = true;
        for ack in pending.acks {
            delivered &= ack.await.is_ok();
        }
        if !delivered {
            // A sink gave the batch up. Storing anything past it would skip records, so stop
            // storing: the records are redelivered after a restart.
            tracing::error!("a sink dropped a batch without accepting it; no further offsets will be committed");
            while rx.recv().await.is_some() {}
            return;
        }
        // Delivered: remember the ids before the offsets move, so a crash after the commit
        // cannot make them look new, and a crash before it finds them remembered.
        if let Some(remember) = &remember {
            let mut attempt = 0;
            while let Err(e) = remember(&pending.ids) {
                tracing::error!(error = %e, attempt, "cannot remember the delivered ids; retrying before committing");
                tokio::time::sleep(crate::retry::backoff(attempt, crate::retry::RETRY_CAP)).await;
                attempt += 1;
            }
        }
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
}
