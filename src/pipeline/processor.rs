//! One poll's records to one batch: decode, drop repeats, enrich and fill the window (the
//! [`Intake`]), then evaluate the rules (the [`Evaluator`]). The pipeline runs the two halves
//! on two threads, the evaluator behind; [`Processor`] runs them in series.

use std::collections::BTreeSet;
use std::sync::Arc;

use tracing::Instrument;

use tokio::sync::{broadcast, mpsc};

use crate::config::Config;
use crate::decode::DecodeError;
use crate::decode::audit::AuditDecoder;
use crate::decode::metrics::{MetricHeaders, MetricsDecoder};
use crate::enrich::dedupe::{Dedupe, IdKey};
use crate::enrich::directory::Directory;
use crate::enrich::ownership::Ownership;
use crate::event::arrow as tables;
use crate::event::{Alert, Batch, DeadLetter, Origin, Positions, now_us};
use crate::query::window::Window;
use crate::rules::clock::EventClock;
use crate::rules::{self, RuleEngine, Source};
use crate::source::{Record, Stream, metrics_api};
use crate::telemetry::{StreamLabel, Telemetry};

use super::decode_helper::{DecodeHelper, DecodedAudit, Enrichment, Part, decode_part};
use super::dispatch::Dispatcher;
use super::evaluator::{
    Decoded, EVALUATE_AHEAD_MIN_ROWS, EVALUATE_AHEAD_POLLS, EVALUATE_AHEAD_ROWS, Evaluator, Step, run_evaluator,
};
use super::window_fill::{WINDOW_AHEAD, fill_window, run_window_fill};
use super::{PipelineError, Polled};

/// At most this many threads decode one poll.
const MAX_DECODE_THREADS: usize = 8;

/// A thread decodes at least this many records: below it, starting one costs more than it saves.
const MIN_RECORDS_PER_THREAD: usize = 256;

/// Decode, dedupe, enrich, evaluate rules and fill the window, one batch at a time.
pub struct Processor {
    intake: Intake,
    evaluator: Evaluator,
}

/// Decodes, drops repeats and enriches, one poll at a time, and moves the event clocks.
pub struct Intake {
    audit: AuditDecoder,
    /// More decoders, one per further core: a large poll's audit records are decoded and
    /// enriched on as many threads as there are cores (the rest of the stage is in order).
    audit_helpers: Vec<DecodeHelper>,
    metrics: MetricsDecoder,
    /// The namespace and directory lookups, shared with the decode helpers.
    enrichment: Enrichment,
    dedupe: Dedupe,
    window: Window,
    /// The audit columns the loaded rules read: the only ones their batches carry; follows
    /// rule reloads.
    rules_columns: BTreeSet<String>,
    telemetry: Telemetry,
    reloads: Option<mpsc::Receiver<crate::reload::Reloaded>>,
    /// Reloaded `sql` rules go to their own task.
    sql_updates: Option<mpsc::Sender<Vec<rules::Rule>>>,
    /// Event time per partition, for the audit and the metrics table.
    clocks: [EventClock; 2],
    /// How long past its last poll the Metrics API poller's pseudo partition holds the metrics
    /// clock (µs; 0 without the poller).
    polled_hold_us: i64,
    seq: u64,
}

impl Processor {
    pub fn new(
        config: &Config,
        ownership: Ownership,
        directory: Arc<Directory>,
        rules: RuleEngine,
        window: Window,
        telemetry: Telemetry,
        alerts_tx: broadcast::Sender<Alert>,
    ) -> Processor {
        let rules_columns = rules.columns_read(Source::Audit);
        let evaluator = Evaluator::new(rules, &directory, window.clone(), telemetry.clone(), alerts_tx);
        let audit = AuditDecoder::new(config.decode.validate_schema, config.decode.max_record_bytes);
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let intake = Intake {
            audit_helpers: (1..cores.min(MAX_DECODE_THREADS))
                .map(|_| DecodeHelper::new(audit.clone()))
                .collect(),
            audit,
            metrics: MetricsDecoder::new(config.decode.clone()),
            enrichment: Enrichment {
                ownership: Arc::new(ownership),
                directory,
            },
            dedupe: Dedupe::new(config.enrich.dedupe_horizon, config.enrich.dedupe_capacity),
            window,
            rules_columns,
            telemetry,
            reloads: None,
            sql_updates: None,
            clocks: [
                EventClock::new(config.idle_partition_timeout, config.allowed_lateness),
                EventClock::new(config.idle_partition_timeout, config.allowed_lateness),
            ],
            seq: 0,
            polled_hold_us: config
                .sources
                .confluent_metrics_api
                .as_ref()
                .filter(|api| api.publish_topic.is_none())
                .map_or(0, |api| {
                    let interval = api.interval.max(crate::source::metrics_api::PER_RESOURCE_SPACING);
                    interval.as_micros().min(i64::MAX as u128) as i64
                }),
        };
        Processor { intake, evaluator }
    }

    /// Follows the consumer's assignment (see [`Intake::set_assignment`]).
    pub fn set_assignment(&mut self, assigned: &[(Arc<str>, i32, Stream)]) {
        self.intake.set_assignment(assigned);
    }

    /// Starts from a dedupe memory loaded from the on-disk store.
    pub fn with_dedupe(mut self, dedupe: Dedupe) -> Processor {
        self.intake.dedupe = dedupe;
        self
    }

    /// Applies reloaded rules and enrichment files between batches; reloaded `sql` rules are
    /// passed on to `sql_updates`.
    pub fn with_reloads(
        mut self,
        rx: mpsc::Receiver<crate::reload::Reloaded>,
        sql_updates: mpsc::Sender<Vec<rules::Rule>>,
    ) -> Processor {
        self.intake.reloads = Some(rx);
        self.intake.sql_updates = Some(sql_updates);
        self
    }

    /// Decodes, enriches and evaluates one poll's records. Records that cannot be decoded come
    /// back in [`Batch::dead_letters`], whole, for the dead-letter sink.
    pub fn process(&mut self, records: &[Record]) -> Batch {
        let (mut batch, step) = self.intake.take(records);
        batch.alerts = self.evaluator.evaluate(step);
        batch
    }

    pub fn rules(&self) -> &RuleEngine {
        self.evaluator.rules()
    }

    /// The two halves, for running them on two threads.
    pub(super) fn into_stages(self) -> (Intake, Evaluator) {
        (self.intake, self.evaluator)
    }
}

impl Intake {
    /// Follows the consumer's assignment: newly assigned partitions hold their table's clock
    /// until they deliver (or go idle), revoked ones leave it.
    pub fn set_assignment(&mut self, assigned: &[(Arc<str>, i32, Stream)]) {
        let wall = now_us();
        for (slot, stream) in [(0, Stream::Audit), (1, Stream::Metrics)] {
            let mut mine: Vec<(Arc<str>, i32)> = assigned
                .iter()
                .filter(|(_, _, s)| *s == stream)
                .map(|(t, p, _)| (t.clone(), *p))
                .collect();
            if stream == Stream::Metrics && self.polled_hold_us > 0 {
                // The poller's pseudo partition is no consumer's to revoke.
                mine.push((Arc::from(metrics_api::TOPIC), 0));
            }
            self.clocks[slot].retain_assigned(&mine, wall);
        }
    }

    /// Applies reloaded enrichment files here; what the evaluator applies (rules, the
    /// directory the rules read) travels in `step`, so it takes effect from the same batch on.
    fn apply_reloads(&mut self, step: &mut Step) {
        let Some(rx) = self.reloads.as_mut() else { return };
        while let Ok(r) = rx.try_recv() {
            if let Some(o) = r.ownership {
                self.enrichment.ownership = Arc::new(o);
                tracing::info!("namespace file reloaded");
            }
            if let Some(d) = r.directory {
                self.enrichment.directory = d.clone();
                step.directory = Some(d);
                tracing::info!("directory reloaded");
            }
            if let Some(rules) = r.rules {
                let (sql, rules): (Vec<rules::Rule>, Vec<rules::Rule>) = rules
                    .into_iter()
                    .partition(|r| matches!(r.kind, rules::RuleKind::Sql(_)));
                if let Some(tx) = &self.sql_updates
                    && tx.try_send(sql).is_err()
                {
                    tracing::warn!("sql rules not reloaded: their task is busy or stopped");
                }
                self.rules_columns = crate::rules::engine::columns_read(&rules, Source::Audit);
                step.rules = Some(rules);
            }
        }
    }

    /// Decodes and enriches one poll's records, drops repeats and fills the window; returns the
    /// batch (without alerts) and what the [`Evaluator`] needs. Records that cannot be decoded come
    /// back in [`Batch::dead_letters`], whole, for the dead-letter sink.
    pub fn take(&mut self, records: &[Record]) -> (Batch, Step) {
        let (batch, step) = self.take_rows(records);
        fill_window(&self.window, &batch, step.now);
        (batch, step)
    }

    /// [`Intake::take`] without filling the window: the pipeline fills it beside the processor
    /// ([`super::window_fill`]).
    fn take_rows(&mut self, records: &[Record]) -> (Batch, Step) {
        let now = now_us();
        let mut step = Step {
            audit: None,
            metrics: None,
            watermarks: [crate::rules::clock::Watermark::Unknown; 2],
            now,
            rules: None,
            directory: None,
        };
        self.apply_reloads(&mut step);
        let mut batch = Batch::default();
        // Counted per batch: a label lookup per record costs more than the count.
        let (mut audit_in, mut metrics_in) = (0u64, 0u64);
        // Rows stay where the decode put them (they are ~600 bytes each: moving every one
        // into another vector was a twentieth of this stage); repeats are cut out after.
        let DecodedAudit { mut rows, failed } = self.decode_audit(records);
        let keys: Vec<IdKey> = rows.iter().map(|row| self.dedupe.key(&row.id)).collect();
        self.dedupe.warm(&keys);
        let mut failed = failed.into_iter().peekable();
        let mut repeats = Vec::new();
        let mut next_row = 0;
        for record in records {
            match record.stream {
                Stream::Audit => {
                    // Its position among the poll's audit records, as `failed` counts them.
                    let position = audit_in as usize;
                    audit_in += 1;
                    if let Some((_, e)) = failed.next_if(|(at, _)| *at == position) {
                        batch.dead_letters.push(dead_letter(record, &e));
                        continue;
                    }
                    let row = &mut rows[next_row];
                    next_row += 1;
                    let origin = Origin {
                        topic: record.topic.clone(),
                        partition: record.partition,
                        offset: record.offset,
                    };
                    self.clocks[0].observe(&record.topic, record.partition, row.time_us, now);
                    if self.dedupe.insert_key(keys[next_row - 1], now) {
                        row.origin = Some(origin);
                    } else {
                        repeats.push(next_row - 1);
                        batch.duplicates.push(origin);
                        self.telemetry.duplicates.inc();
                    }
                }
                Stream::Metrics => {
                    metrics_in += 1;
                    let payload = record.payload.as_deref().unwrap_or_default();
                    let headers = MetricHeaders {
                        content_type: record.header("content-type").map(str::to_owned),
                        metric: record.header("metric").map(str::to_owned),
                        cluster_id: record.header("resource.kafka.id").map(str::to_owned),
                    };
                    match self.metrics.decode(payload, &headers) {
                        Ok(samples) => {
                            // The endpoint lags minutes behind: its partition stays active until
                            // the next poll is due, so the clock waits for it.
                            let active = if self.polled_hold_us > 0 && &*record.topic == metrics_api::TOPIC {
                                now.saturating_add(self.polled_hold_us)
                            } else {
                                now
                            };
                            for mut s in samples {
                                self.clocks[1].observe(&record.topic, record.partition, s.time_us, active);
                                self.enrichment.ownership.enrich_metric(&mut s);
                                batch.metrics.push(s);
                            }
                        }
                        Err(e) => batch.dead_letters.push(dead_letter(record, &e)),
                    }
                }
            }
        }
        if !repeats.is_empty() {
            let (mut repeats, mut at) = (repeats.into_iter().peekable(), 0);
            rows.retain(|_| {
                at += 1;
                repeats.next_if_eq(&(at - 1)).is_none()
            });
        }
        batch.audit = rows;
        for (stream, n) in [(Stream::Audit, audit_in), (Stream::Metrics, metrics_in)] {
            if n > 0 {
                self.telemetry
                    .records_in
                    .get_or_create(&StreamLabel {
                        stream: stream.as_str(),
                    })
                    .inc_by(n);
            }
        }
        self.telemetry
            .rows_decoded
            .get_or_create(&StreamLabel { stream: "audit" })
            .inc_by(batch.audit.len() as u64);
        self.telemetry
            .rows_decoded
            .get_or_create(&StreamLabel { stream: "metrics" })
            .inc_by(batch.metrics.len() as u64);
        // The rules' batches carry only the columns some rule reads.
        if !batch.audit.is_empty() {
            let columns = &self.rules_columns;
            step.audit = Some(tables::audit_batch_keeping(&batch.audit, &|c| columns.contains(c)));
        }
        if !batch.metrics.is_empty() {
            step.metrics = Some(tables::metrics_batch(&batch.metrics));
        }
        step.watermarks = [self.clocks[0].watermark(now), self.clocks[1].watermark(now)];
        self.seq += 1;
        batch.seq = self.seq;
        (batch, step)
    }

    /// Decodes and enriches a poll's audit records, in order, on up to one thread per core.
    /// Nothing here depends on another record (the dedupe memory and the clocks, which do, are
    /// applied afterwards in order), so the split changes no result.
    fn decode_audit(&mut self, records: &[Record]) -> DecodedAudit {
        let audit: Vec<&Record> = records.iter().filter(|r| r.stream == Stream::Audit).collect();
        let enrichment = &self.enrichment;
        let threads = (audit.len() / MIN_RECORDS_PER_THREAD).clamp(1, self.audit_helpers.len() + 1);
        if threads == 1 {
            let payloads = audit.iter().map(|r| r.payload.as_ref());
            return decode_part(&mut self.audit, enrichment, payloads, 0, audit.len());
        }
        let per_thread = audit.len().div_ceil(threads);
        let mut parts = audit.chunks(per_thread).enumerate();
        let mine = parts.next().map(|(_, part)| part).unwrap_or_default();
        // Each later part goes to a helper; one without a thread comes back to be decoded here.
        let mut pending = Vec::new();
        for ((i, part), helper) in parts.zip(self.audit_helpers.iter_mut()) {
            let handed = helper.start(Part {
                payloads: part.iter().map(|r| r.payload.clone()).collect(),
                first: i * per_thread,
                enrichment: enrichment.clone(),
            });
            pending.push((helper, handed.err()));
        }
        let payloads = mine.iter().map(|r| r.payload.as_ref());
        let mut out = decode_part(&mut self.audit, enrichment, payloads, 0, audit.len());
        for (helper, returned) in pending {
            let more = match returned {
                None => helper.finish(),
                Some(part) => {
                    let payloads = part.payloads.iter().map(Option::as_ref);
                    decode_part(&mut self.audit, enrichment, payloads, part.first, part.payloads.len())
                }
            };
            out.rows.extend(more.rows);
            out.failed.extend(more.failed);
        }
        out
    }
}

/// A record that could not be decoded, as the dead-letter sink takes it.
fn dead_letter(record: &Record, error: &DecodeError) -> DeadLetter {
    tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset, class = error.class(), error = %error, "sent to dead-letter topic");
    DeadLetter {
        topic: record.topic.clone(),
        partition: record.partition,
        offset: record.offset,
        key: record.key.clone(),
        payload: record.payload.as_deref().map(<[u8]>::to_vec).unwrap_or_default(),
        class: error.class(),
        message: error.to_string(),
    }
}

/// Decodes and dispatches polls in the order they were read, and hands them on to the
/// evaluator, until the poll side stops (then what it already handed over is still processed
/// and dispatched).
///
/// A poll's events go to the sinks as soon as they are decoded; its positions go to the
/// committer behind the alerts its rows raise. The committer finalises in order, so offsets
/// are still stored only once every sink has accepted both the events and those alerts.
pub(super) async fn run_processor(
    processor: Processor,
    dispatcher: Dispatcher,
    mut rx: mpsc::Receiver<Polled>,
    idle: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), PipelineError> {
    use std::sync::atomic::Ordering;
    let (mut intake, evaluator) = processor.into_stages();
    let (to_evaluator, evaluate_rx) = mpsc::channel(EVALUATE_AHEAD_POLLS);
    let evaluate_ahead = Arc::new(tokio::sync::Semaphore::new(EVALUATE_AHEAD_ROWS));
    let evaluating = tokio::spawn(run_evaluator(evaluator, dispatcher.clone(), evaluate_rx));
    let (to_window, window_rx) = mpsc::channel(WINDOW_AHEAD);
    let filling = tokio::spawn(run_window_fill(intake.window.clone(), window_rx));
    let decoding = async {
        loop {
            // Idle while waiting with nothing queued: the poll side then hands over what it has at once.
            idle.store(rx.is_empty(), Ordering::Release);
            let Some(polled) = rx.recv().await else { break };
            idle.store(false, Ordering::Release);
            // A span per batch (exported as OTLP traces with `telemetry.otlp.traces`, sampled).
            let span = tracing::info_span!(
                "process_batch",
                "messaging.system" = "kafka",
                "messaging.operation.type" = "process",
                "messaging.batch.message_count" = polled.records.len(),
                rows = tracing::field::Empty,
            );
            let inside = span.clone();
            let started = std::time::Instant::now();
            // Decoding is CPU work of milliseconds per poll: on the blocking pool it keeps the
            // runtime's workers free for polling and HTTP meanwhile.
            let (returned, batch, step, polled) = tokio::task::spawn_blocking(move || {
                let _entered = inside.enter();
                if let Some(assigned) = &polled.assigned {
                    intake.set_assignment(assigned);
                }
                let (batch, step) = intake.take_rows(&polled.records);
                (intake, batch, step, polled)
            })
            .await
            .map_err(|e| PipelineError::Task(format!("processing a poll: {e}")))?;
            intake = returned;
            let processed = std::time::Instant::now();
            let rows = batch.len();
            span.record("rows", rows);
            let seq = batch.seq;
            let batch = Arc::new(batch);
            if (!batch.audit.is_empty() || !batch.metrics.is_empty())
                && to_window.send((batch.clone(), step.now)).await.is_err()
            {
                break; // the window's task stopped: its error is the cause
            }
            // An idle tick (no records) has nothing to deliver but still moves the clocks on.
            if !polled.records.is_empty() {
                // The poll's share of the in-flight budget goes with its events: it comes back
                // once they are delivered, whether or not the rules have caught up.
                let inflight = dispatcher.reserve(polled.bytes).await?;
                dispatcher
                    .dispatch(batch, Positions::default(), Some(inflight))
                    .instrument(tracing::info_span!(parent: &span, "dispatch"))
                    .await?;
                tracing::debug!(
                    records = polled.records.len(),
                    rows,
                    process_ms = (processed - started).as_secs_f64() * 1e3,
                    dispatch_ms = processed.elapsed().as_secs_f64() * 1e3,
                    "processed"
                );
            }
            // The rules' batches hold the poll's rows (`rows`: the batch has no alerts yet).
            let ahead_rows = rows.clamp(EVALUATE_AHEAD_MIN_ROWS, EVALUATE_AHEAD_ROWS);
            let Ok(ahead) = evaluate_ahead.clone().acquire_many_owned(ahead_rows as u32).await else {
                break; // never closed; if it were, nothing more could be evaluated
            };
            let decoded = Decoded {
                seq,
                step,
                positions: polled.positions,
                ahead,
            };
            if to_evaluator.send(decoded).await.is_err() {
                break; // the evaluator stopped: its error is the cause
            }
        }
        Ok::<(), PipelineError>(())
    };
    let decoded = decoding.await;
    drop(to_evaluator);
    drop(to_window);
    let evaluated = match evaluating.await {
        Ok(r) => r,
        Err(e) => Err(PipelineError::Task(format!("evaluating a batch: {e}"))),
    };
    // Every batch handed over is in the window before the processor reports done.
    let filled = match filling.await {
        Ok(r) => r,
        Err(e) => Err(PipelineError::Task(format!("filling the SQL window: {e}"))),
    };
    decoded.and(evaluated).and(filled)
}

#[cfg(test)]
mod tests;
