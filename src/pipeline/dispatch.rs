//! Hands batches to every sink and the committer (one acknowledgement per sink per batch), and
//! publishes the alerts raised outside the batch path (`sql` rules, the pipeline's own) the
//! same way, so they reach every sink and are acknowledged like the rest.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::PipelineError;
use crate::event::arrow as tables;
use crate::event::{Ack, Alert, Batch, Positions, now_us};
use crate::query::engine::QueryEngine;
use crate::query::window::Window;
use crate::rules;
use crate::sinks::SinkItem;
use crate::source::committer::Pending;
use crate::telemetry::Telemetry;

/// Hands batches to the sinks and the committer.
#[derive(Clone)]
pub(super) struct Dispatcher {
    pub(super) sinks: Vec<mpsc::Sender<SinkItem>>,
    pub(super) committer: mpsc::Sender<Pending>,
    /// Whether the committer keeps a dedupe store (then it needs the ids).
    pub(super) record_ids: bool,
    /// KiB of record bytes in flight (read, not yet finalised): `kafka.max_inflight_bytes`.
    pub(super) inflight: Arc<tokio::sync::Semaphore>,
    pub(super) inflight_kib: u32,
}

impl Dispatcher {
    /// Waits until `bytes` of polled records fit in the in-flight budget (with the consumer
    /// paused meanwhile); the permit goes with the batch's positions to the committer, which
    /// gives it back once they are stored.
    pub(super) async fn reserve(&self, bytes: usize) -> Result<tokio::sync::OwnedSemaphorePermit, PipelineError> {
        // A batch larger than the whole budget still goes, alone.
        let kib = (bytes.div_ceil(1024) as u32).clamp(1, self.inflight_kib);
        self.inflight
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(|_| PipelineError::Task("the committer stopped".into()))
    }

    /// Hands `batch` to every sink, and `positions` (with the in-flight permit) to the committer
    /// behind it.
    pub(super) async fn dispatch(
        &self,
        batch: Arc<Batch>,
        positions: Positions,
        inflight: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<(), PipelineError> {
        let closed = || PipelineError::Task("a sink or the committer stopped".into());
        let mut acks = Vec::new();
        let ids = if self.record_ids {
            crate::enrich::dedupe_store::id_lines(&batch.audit)
        } else {
            String::new()
        };
        if !batch.is_empty() || !batch.dead_letters.is_empty() || !batch.duplicates.is_empty() {
            // Concurrently: a sink that is holding data (HEC refusing its token) must not keep
            // the batch, or an alert about it, from the others.
            let sends = self.sinks.iter().map(|sink| {
                let (ack, rx) = Ack::new();
                acks.push(rx);
                sink.send(SinkItem {
                    batch: batch.clone(),
                    ack,
                })
            });
            for sent in futures::future::join_all(sends).await {
                sent.map_err(|_| closed())?;
            }
        }
        self.committer
            .send(Pending {
                positions,
                acks,
                ids,
                inflight,
            })
            .await
            .map_err(|_| closed())
    }
}

/// Publishes alerts raised outside the batch path (`sql` rules, the pipeline's own alerts) the
/// way the batch path does: alerts table, `/metrics`, subscribers, every sink.
#[derive(Clone)]
pub(super) struct AlertPublisher {
    pub(super) window: Window,
    pub(super) telemetry: Telemetry,
    pub(super) alerts: broadcast::Sender<Alert>,
    pub(super) dispatcher: Dispatcher,
}

impl AlertPublisher {
    async fn publish(&self, alerts: Vec<Alert>) -> Result<(), PipelineError> {
        if alerts.is_empty() {
            return Ok(());
        }
        let newest = alerts.iter().map(|a| a.time_us).max().unwrap_or_else(now_us);
        self.window.alerts.append(tables::alerts_batch(&alerts), newest);
        super::evaluator::announce(&self.telemetry, &self.alerts, &alerts);
        let batch = Batch {
            alerts,
            ..Batch::default()
        };
        self.dispatcher
            .dispatch(Arc::new(batch), Positions::default(), None)
            .await
    }
}

/// Publishes the alerts sinks raise about themselves until shutdown.
pub(super) async fn run_system_alerts(
    mut rx: mpsc::Receiver<Alert>,
    publisher: AlertPublisher,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            alert = rx.recv() => {
                let Some(alert) = alert else { return };
                if publisher.publish(vec![alert]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Runs `sql` rules on their schedules until shutdown; reloaded rules keep the state of those
/// whose definition did not change.
pub(super) async fn run_sql_rules(
    mut rules: Vec<rules::Rule>,
    mut updates: mpsc::Receiver<Vec<rules::Rule>>,
    query: QueryEngine,
    publisher: AlertPublisher,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(new) = updates.recv() => {
                let mut old: std::collections::HashMap<String, rules::Rule> =
                    rules.drain(..).map(|r| (r.meta.id.clone(), r)).collect();
                rules = new
                    .into_iter()
                    .map(|r| match old.remove(&r.meta.id) {
                        Some(prev) if prev.meta.fingerprint == r.meta.fingerprint => prev,
                        _ => r,
                    })
                    .collect();
            }
            _ = tick.tick() => {
                if rules.is_empty() {
                    continue;
                }
                let now = now_us();
                let mut alerts = Vec::new();
                for rule in &mut rules {
                    if let rules::RuleKind::Sql(sql) = &mut rule.kind {
                        alerts.extend(sql.run(&rule.meta, &query, now).await);
                    }
                }
                if publisher.publish(alerts).await.is_err() {
                    return;
                }
            }
        }
    }
}
