//! The second half of processing a poll: the rules evaluate its rows in event-time order
//! (alerts over alerts included), and the alerts are announced and go to the alerts table.
//!
//! It runs beside [`super::processor::Intake`], behind it: a poll's events go to the sinks as
//! soon as they are decoded, so their delivery never waits for a release of the rules' reorder
//! buffer (once a second a one-second cell; after a backlog, when its partitions go idle, ten
//! at once: half a second of work). The rules run on a thread of their own at a lower priority,
//! so such a burst does not hold up the intake either.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

use crate::enrich::directory::Directory;
use crate::event::arrow as tables;
use datafusion::arrow::array::RecordBatch;

use crate::event::{Alert, Batch, Positions};
use crate::query::window::Window;
use crate::rules::clock::Watermark;
use crate::rules::{self, RuleEngine, Source};
use crate::telemetry::{RuleLabel, Telemetry};

use super::PipelineError;
use super::background::{BACKGROUND_NICE, Background};
use super::dispatch::Dispatcher;

/// What the intake hands on from a poll: its rows as the rules read them (`raw` left empty
/// unless a rule reads it), how far each table's clock has moved, and what was reloaded before
/// the poll (applied before its rows are evaluated, as the intake applied its share).
pub struct Step {
    pub audit: Option<RecordBatch>,
    pub metrics: Option<RecordBatch>,
    /// The audit and the metrics table's watermarks when the poll was taken.
    pub watermarks: [Watermark; 2],
    pub now: i64,
    pub rules: Option<Vec<rules::Rule>>,
    pub directory: Option<Arc<Directory>>,
}

/// Evaluates the rules and announces their alerts, one poll at a time.
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

    /// Evaluates a poll's rows; returns the alerts raised (also in the alerts table and
    /// announced). A poll without rows still moves idle clocks on.
    pub fn evaluate(&mut self, mut step: Step) -> Vec<Alert> {
        self.apply(&mut step);
        let now = step.now;
        // Rules see each table in event-time order (the clocks release whole one-second cells).
        let (audit, metrics) = (step.audit.take(), step.metrics.take());
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

/// Rows decoded but not yet evaluated. The evaluator's work comes in bursts (about a second
/// when ten cells go at once after a backlog's partitions fall idle), which the intake rides
/// over without waiting. What waits is the rules' batches, without `raw` (~300 bytes a row):
/// at most ~40 MB. The bound is in rows, not polls: live traffic comes in polls of a few
/// hundred records, the fewer the faster the intake, and 64 of them (the bound before) were
/// under 0.6 s of it at 40,000/s. A cell raising 10,000 alerts takes the evaluator longer than
/// that, and the intake stopped behind it: events waited up to a second.
pub(super) const EVALUATE_AHEAD_ROWS: usize = 131_072;

/// What a poll counts against [`EVALUATE_AHEAD_ROWS`] at least, however few its rows (idle
/// ticks have none): it bounds the polls waiting too.
pub(super) const EVALUATE_AHEAD_MIN_ROWS: usize = 256;

/// Polls waiting for the evaluator: as many as the rows allow.
pub(super) const EVALUATE_AHEAD_POLLS: usize = EVALUATE_AHEAD_ROWS / EVALUATE_AHEAD_MIN_ROWS;

/// A decoded poll on its way to the evaluator, with the positions it will commit.
pub(super) struct Decoded {
    pub(super) seq: u64,
    pub(super) step: Step,
    pub(super) positions: Positions,
    /// The poll's rows' share of [`EVALUATE_AHEAD_ROWS`], given back once they are evaluated.
    pub(super) ahead: tokio::sync::OwnedSemaphorePermit,
}

/// Evaluates the rules on decoded polls in order; dispatches each poll's alerts with its
/// positions (the committer stores them once every sink has accepted the alerts).
pub(super) async fn run_evaluator(
    mut evaluator: Evaluator,
    dispatcher: Dispatcher,
    mut rx: mpsc::Receiver<Decoded>,
) -> Result<(), PipelineError> {
    // Rules are CPU work of up to tens of milliseconds per poll, on a thread that yields to
    // the intake (see `background`).
    let thread = Background::spawn("auditflow-rules", BACKGROUND_NICE)?;
    while let Some(Decoded {
        seq,
        step,
        positions,
        ahead,
    }) = rx.recv().await
    {
        let started = std::time::Instant::now();
        let (returned, alerts) = thread
            .run("evaluating a batch", move || {
                let alerts = evaluator.evaluate(step);
                (evaluator, alerts)
            })
            .await?;
        evaluator = returned;
        drop(ahead);
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
        dispatcher.dispatch(Arc::new(batch), positions, None).await?;
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
