//! The second half of processing a poll: the SQL window takes its rows, the rules evaluate
//! them in event-time order (alerts over alerts included), and the alerts are announced.
//!
//! It runs beside [`super::processor::Intake`], one poll behind: a poll's events go to the sinks
//! as soon as they are decoded, so their delivery never waits for a release of the rules'
//! reorder buffer (a one-second cell of tens of thousands of rows once a second).

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

use crate::enrich::directory::Directory;
use crate::event::arrow as tables;
use crate::event::{Alert, Batch, Positions};
use crate::query::window::Window;
use crate::rules::clock::Watermark;
use crate::rules::{self, RuleEngine, Source};
use crate::telemetry::{RuleLabel, Telemetry};

use super::PipelineError;
use super::dispatch::Dispatcher;

/// What the intake hands on with a batch besides its rows: how far each table's clock has
/// moved, and what was reloaded before the batch (applied before its rows are evaluated, as
/// the intake applied its share).
pub struct Step {
    /// The audit and the metrics table's watermarks when the batch was taken.
    pub watermarks: [Watermark; 2],
    pub now: i64,
    pub rules: Option<Vec<rules::Rule>>,
    pub directory: Option<Arc<Directory>>,
}

/// Fills the window, evaluates the rules and announces their alerts, one batch at a time.
pub struct Evaluator {
    rules: RuleEngine,
    window: Window,
    telemetry: Telemetry,
    alerts_tx: broadcast::Sender<Alert>,
}

impl Evaluator {
    pub fn new(
        mut rules: RuleEngine,
        directory: &Arc<Directory>,
        window: Window,
        telemetry: Telemetry,
        alerts_tx: broadcast::Sender<Alert>,
    ) -> Evaluator {
        if !directory.is_empty() {
            rules.set_directory(directory.clone());
        }
        Evaluator {
            rules,
            window,
            telemetry,
            alerts_tx,
        }
    }

    pub fn rules(&self) -> &RuleEngine {
        &self.rules
    }

    fn apply(&mut self, step: &mut Step) {
        if let Some(d) = step.directory.take() {
            self.rules.set_directory(d);
        }
        if let Some(rules) = step.rules.take() {
            let (kept, fresh, removed) = self.rules.replace(rules);
            tracing::info!(kept, new_or_changed = fresh, removed, "rules swapped in");
        }
    }

    /// Appends `batch`'s rows to the window and evaluates them; returns the alerts raised (also
    /// in the alerts table and announced). A batch without rows still moves idle clocks on.
    pub fn evaluate(&mut self, batch: &Batch, mut step: Step) -> Vec<Alert> {
        self.apply(&mut step);
        let now = step.now;
        // Rules see each table in event-time order (the clocks release whole one-second cells);
        // the SQL window takes rows as they come. The window builds its own batches by minute,
        // dictionary-encoded; the rules' batch carries `raw` only when a rule reads it.
        if !batch.audit.is_empty() {
            let newest = batch.audit.iter().map(|r| r.time_us).max().unwrap_or(now);
            (self.window.audit).append_rows(&batch.audit, |r| r.time_us, tables::audit_batch_as, newest);
        }
        if !batch.metrics.is_empty() {
            let newest = batch.metrics.iter().map(|m| m.time_us).max().unwrap_or(now);
            (self.window.metrics).append_rows(&batch.metrics, |m| m.time_us, tables::metrics_batch_as, newest);
        }
        let audit = (!batch.audit.is_empty()).then(|| {
            if self.rules.reads_raw(Source::Audit) {
                tables::audit_batch(&batch.audit)
            } else {
                tables::audit_batch_without_raw(&batch.audit)
            }
        });
        let metrics = (!batch.metrics.is_empty()).then(|| tables::metrics_batch(&batch.metrics));
        let mut alerts = Vec::new();
        for (slot, (source, rows)) in [(Source::Audit, audit), (Source::Metrics, metrics)]
            .into_iter()
            .enumerate()
        {
            let (mut raised, micros) = self.rules.ingest(source, rows, step.watermarks[slot]);
            self.telemetry.rule_eval_micros.inc_by(micros);
            alerts.append(&mut raised);
        }
        if !alerts.is_empty() {
            let arrow = tables::alerts_batch(&alerts);
            // Rules over alerts see first-order alerts only, so they cannot feed themselves.
            let (mut raised, _) = self.rules.evaluate(Source::Alerts, &arrow);
            let arrow = if raised.is_empty() {
                arrow
            } else {
                alerts.append(&mut raised);
                tables::alerts_batch(&alerts)
            };
            let newest = alerts.iter().map(|a| a.time_us).max().unwrap_or(now);
            self.window.alerts.append(arrow, newest);
            announce(&self.telemetry, &self.alerts_tx, &alerts);
        }
        self.telemetry.rule_series_shed.set(self.rules.num_series_shed() as i64);
        let [audit, metrics] = self.rules.num_buffered();
        self.telemetry.rule_rows_waiting.set((audit + metrics) as i64);
        self.telemetry
            .rule_reorder_forced
            .set(self.rules.num_forced_releases() as i64);
        alerts
    }
}

/// Counts each alert by rule and tells the subscribers (`RunningPipeline::alerts`).
pub(super) fn announce(telemetry: &Telemetry, subscribers: &broadcast::Sender<Alert>, alerts: &[Alert]) {
    for a in alerts {
        telemetry
            .alerts
            .get_or_create(&RuleLabel {
                rule: a.rule_id.clone(),
            })
            .inc();
        // No subscriber is not an error: the alert goes on to the sinks regardless.
        let _ = subscribers.send(a.clone());
    }
}

/// Batches decoded but not yet taken by the evaluator. Its work comes in bursts (a release of
/// the rules' reorder buffer: up to half a second when idle partitions let ten one-second cells
/// go at once), which the intake rides over without waiting; the in-flight byte budget, held
/// until a batch's positions are stored, bounds the memory.
pub(super) const EVALUATE_AHEAD: usize = 64;

/// A decoded batch on its way to the evaluator, with the positions it will commit.
pub(super) struct Decoded {
    pub(super) batch: Arc<Batch>,
    pub(super) step: Step,
    pub(super) positions: Positions,
    pub(super) inflight: tokio::sync::OwnedSemaphorePermit,
}

/// Fills the window and evaluates the rules on decoded batches in order; dispatches each
/// batch's alerts with its positions.
pub(super) async fn run_evaluator(
    mut evaluator: Evaluator,
    dispatcher: Dispatcher,
    mut rx: mpsc::Receiver<Decoded>,
) -> Result<(), PipelineError> {
    while let Some(Decoded {
        batch,
        step,
        positions,
        inflight,
    }) = rx.recv().await
    {
        let started = std::time::Instant::now();
        let seq = batch.seq;
        // Rules and the window are CPU work of up to tens of milliseconds per batch.
        let (returned, alerts) = tokio::task::spawn_blocking(move || {
            let alerts = evaluator.evaluate(&batch, step);
            (evaluator, alerts)
        })
        .await
        .map_err(|e| PipelineError::Task(format!("evaluating a batch: {e}")))?;
        evaluator = returned;
        if alerts.is_empty() && positions.max_offsets.is_empty() {
            continue; // nothing raised and nothing to commit (an idle tick, polled metrics)
        }
        let evaluated = std::time::Instant::now();
        let num_alerts = alerts.len();
        let batch = Batch {
            seq,
            alerts,
            ..Batch::default()
        };
        dispatcher.dispatch(Arc::new(batch), positions, Some(inflight)).await?;
        tracing::debug!(
            seq,
            alerts = num_alerts,
            evaluate_ms = (evaluated - started).as_secs_f64() * 1e3,
            dispatch_ms = evaluated.elapsed().as_secs_f64() * 1e3,
            "evaluated"
        );
    }
    Ok(())
}
