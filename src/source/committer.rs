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

/// The least time from one disk sync of delivered ids to the next. At a steady moderate rate
/// a poll is acknowledged every few milliseconds, and a sync for each (~120 a second at 60,000
/// events/s) was 2-3% of the process's CPU, and as many write operations of a cloud disk's
/// budget. Waiting this long groups the polls acknowledged meanwhile into one sync. Offsets
/// are committed once a second, so storing them this much later changes nothing a broker sees,
/// and the records' memory goes back to the in-flight budget on delivery, not after the sync.
const MIN_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// A batch waiting for its sinks.
pub struct Pending {
    pub positions: Positions,
    pub acks: Vec<oneshot::Receiver<()>>,
    /// Ids of the batch's audit events, one per line (`enrich::dedupe_store::id_lines`), remembered
    /// (the dedupe store) once delivered.
    pub ids: String,
    /// The batch's share of `kafka.max_inflight_bytes`, given back once every sink accepted it
    /// (before its ids are synced and its offsets stored).
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
    let mut last_sync: Option<tokio::time::Instant> = None;
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
            // Only a batch with ids to remember waits: the sync is what the interval spaces.
            if remember.is_some()
                && !first.ids.is_empty()
                && let Some(next_sync) = last_sync.map(|at| at + MIN_SYNC_INTERVAL)
                && next_sync > tokio::time::Instant::now()
            {
                tokio::time::sleep_until(next_sync).await;
            }
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
            if ids.iter().any(|block| !block.is_empty()) {
                last_sync = Some(tokio::time::Instant::now());
            }
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

/// Waits for every sink's answer; false when one gave the batch up. A delivered batch's
/// in-flight share goes back here, before its ids are synced.
async fn acknowledged(pending: &mut Pending) -> bool {
    let mut ok = true;
    for ack in std::mem::take(&mut pending.acks) {
        ok &= ack.await.is_ok();
    }
    if ok {
        pending.inflight = None;
    }
    ok
}

/// Whether every sink has answered already: `Some(true)` all accepted, `Some(false)` one gave
/// the batch up, `None` some answer is still to come (those received are kept off the list).
/// As in [`acknowledged`], a delivered batch's in-flight share goes back here.
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
        pending.inflight = None;
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use rdkafka::mocking::MockCluster;

    use super::*;
    use crate::config::Config;

    /// One call to remember delivered ids, as the test sees it.
    struct SyncSeen {
        began: Instant,
        ids: Vec<String>,
        /// In-flight shares still held when it began, beyond those of polls not yet remembered.
        held_beyond: usize,
    }

    /// Polls delivered every 2 ms: their ids are remembered once each, in order, in syncs spaced
    /// by the interval (so far fewer syncs than polls), and each poll's in-flight share is back
    /// before the sync that remembers its ids.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn syncs_are_spaced_and_group_what_was_delivered_meanwhile() {
        const POLLS: usize = 100;
        let cluster = MockCluster::new(1).unwrap();
        let text = format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"committer-test\"\n",
            cluster.bootstrap_servers()
        );
        let config = Config::parse(&text, "t.toml").unwrap();
        let consumer = Arc::new(super::super::kafka::consumer(&config, Telemetry::new()).unwrap());

        let budget = Arc::new(tokio::sync::Semaphore::new(POLLS));
        let sent = Arc::new(AtomicUsize::new(0));
        let syncs: Arc<Mutex<Vec<SyncSeen>>> = Arc::default();
        let remember: RememberDelivered = {
            let (budget, sent, syncs) = (budget.clone(), sent.clone(), syncs.clone());
            Arc::new(move |blocks: &[String]| {
                let mut syncs = syncs.lock().unwrap();
                let remembered = syncs.iter().map(|s| s.ids.len()).sum::<usize>() + blocks.len();
                let held = POLLS - budget.available_permits();
                let not_remembered = sent.load(Ordering::SeqCst) - remembered;
                syncs.push(SyncSeen {
                    began: Instant::now(),
                    ids: blocks.to_vec(),
                    held_beyond: held.saturating_sub(not_remembered),
                });
                Ok(())
            })
        };
        let (tx, rx) = mpsc::channel(POLLS);
        let committer = tokio::spawn(run_committer(consumer, rx, Telemetry::new(), Some(remember)));
        let started = Instant::now();
        for i in 0..POLLS {
            let (ack, acked) = oneshot::channel();
            ack.send(()).unwrap();
            let inflight = Some(budget.clone().try_acquire_owned().unwrap());
            sent.fetch_add(1, Ordering::SeqCst);
            let ids = format!("id-{i}\n");
            tx.send(Pending {
                positions: Positions::default(),
                acks: vec![acked],
                ids,
                inflight,
            })
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        drop(tx);
        committer.await.unwrap();
        let elapsed = started.elapsed();

        let syncs = syncs.lock().unwrap();
        let ids: Vec<String> = syncs.iter().flat_map(|s| s.ids.iter().cloned()).collect();
        assert_eq!(ids, (0..POLLS).map(|i| format!("id-{i}\n")).collect::<Vec<_>>());
        let most = (elapsed.as_secs_f64() / MIN_SYNC_INTERVAL.as_secs_f64()).ceil() as usize + 1;
        assert!(
            syncs.len() <= most && syncs.len() < POLLS / 4,
            "{} syncs for {POLLS} polls in {elapsed:?}",
            syncs.len()
        );
        for pair in syncs.windows(2) {
            // The interval spaces the syncs' starts; the blocking pool may start one a little late.
            assert!(pair[1].began - pair[0].began >= MIN_SYNC_INTERVAL - Duration::from_millis(5));
        }
        assert!(
            syncs.iter().all(|s| s.held_beyond == 0),
            "in-flight shares held through their sync"
        );
        assert_eq!(budget.available_permits(), POLLS);
    }
}
