//! One poll's records to one batch: decode, drop repeats, enrich, evaluate the rules (alerts
//! over alerts included) and fill the window.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

use crate::config::Config;
use crate::decode::DecodeError;
use crate::decode::audit::AuditDecoder;
use crate::decode::metrics::{MetricHeaders, MetricsDecoder};
use crate::enrich::dedupe::Dedupe;
use crate::enrich::directory::Directory;
use crate::enrich::ownership::Ownership;
use crate::event::arrow as tables;
use crate::event::{Alert, AuditRow, Batch, DeadLetter, Origin, now_us};
use crate::query::window::Window;
use crate::rules::clock::EventClock;
use crate::rules::{self, RuleEngine, Source};
use crate::source::{Record, Stream, metrics_api};
use crate::telemetry::{RuleLabel, StreamLabel, Telemetry};

/// At most this many threads decode one poll.
const MAX_DECODE_THREADS: usize = 8;

/// A thread decodes at least this many records: below it, starting one costs more than it saves.
const MIN_RECORDS_PER_THREAD: usize = 256;

/// Decode, dedupe, enrich, evaluate rules and fill the window, one batch at a time.
pub struct Processor {
    audit: AuditDecoder,
    /// More decoders, one per further core: a large poll's audit records are decoded and
    /// enriched on as many threads as there are cores (the rest of the stage is in order).
    audit_helpers: Vec<AuditDecoder>,
    metrics: MetricsDecoder,
    ownership: Ownership,
    directory: Arc<Directory>,
    dedupe: Dedupe,
    rules: RuleEngine,
    window: Window,
    telemetry: Telemetry,
    alerts_tx: broadcast::Sender<Alert>,
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
        mut rules: RuleEngine,
        window: Window,
        telemetry: Telemetry,
        alerts_tx: broadcast::Sender<Alert>,
    ) -> Processor {
        if !directory.is_empty() {
            rules.set_directory(directory.clone());
        }
        let audit = AuditDecoder::new(config.decode.validate_schema, config.decode.max_record_bytes);
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Processor {
            audit_helpers: (1..cores.min(MAX_DECODE_THREADS)).map(|_| audit.clone()).collect(),
            audit,
            metrics: MetricsDecoder::new(config.decode.clone()),
            ownership,
            directory,
            dedupe: Dedupe::new(config.enrich.dedupe_horizon, config.enrich.dedupe_capacity),
            rules,
            window,
            telemetry,
            alerts_tx,
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
        }
    }

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

    /// Starts from a dedupe memory loaded from the on-disk store.
    pub fn with_dedupe(mut self, dedupe: Dedupe) -> Processor {
        self.dedupe = dedupe;
        self
    }

    /// Applies reloaded rules and enrichment files between batches; reloaded `sql` rules are
    /// passed on to `sql_updates`.
    pub fn with_reloads(
        mut self,
        rx: mpsc::Receiver<crate::reload::Reloaded>,
        sql_updates: mpsc::Sender<Vec<rules::Rule>>,
    ) -> Processor {
        self.reloads = Some(rx);
        self.sql_updates = Some(sql_updates);
        self
    }

    fn apply_reloads(&mut self) {
        let Some(rx) = self.reloads.as_mut() else { return };
        while let Ok(r) = rx.try_recv() {
            if let Some(o) = r.ownership {
                self.ownership = o;
                tracing::info!("namespace file reloaded");
            }
            if let Some(d) = r.directory {
                self.directory = d.clone();
                self.rules.set_directory(d);
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
                let (kept, fresh, removed) = self.rules.replace(rules);
                tracing::info!(kept, new_or_changed = fresh, removed, "rules swapped in");
            }
        }
    }

    /// Decodes, enriches and evaluates one poll's records. Records that cannot be decoded come
    /// back in [`Batch::dead_letters`], whole, for the dead-letter sink.
    pub fn process(&mut self, records: &[Record]) -> Batch {
        self.apply_reloads();
        let mut batch = Batch::default();
        let now = now_us();
        // Counted per batch: a label lookup per record costs more than the count.
        let (mut audit_in, mut metrics_in) = (0u64, 0u64);
        let mut decoded = self.decode_audit(records).into_iter();
        for record in records {
            match record.stream {
                Stream::Audit => audit_in += 1,
                Stream::Metrics => metrics_in += 1,
            }
            let payload = record.payload.as_deref().unwrap_or_default();
            match record.stream {
                Stream::Audit => match decoded.next().expect("one result per audit record") {
                    Ok(mut row) => {
                        let origin = Origin {
                            topic: record.topic.clone(),
                            partition: record.partition,
                            offset: record.offset,
                        };
                        self.clocks[0].observe(&record.topic, record.partition, row.time_us, now);
                        if self.dedupe.insert(&row.id, now) {
                            row.origin = Some(origin);
                            batch.audit.push(row);
                        } else {
                            batch.duplicates.push(origin);
                            self.telemetry.duplicates.inc();
                        }
                    }
                    Err(e) => batch.dead_letters.push(dead_letter(record, &e)),
                },
                Stream::Metrics => {
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
                                self.ownership.enrich_metric(&mut s);
                                batch.metrics.push(s);
                            }
                        }
                        Err(e) => batch.dead_letters.push(dead_letter(record, &e)),
                    }
                }
            }
        }
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

        // Rules see each table in event-time order (the clocks release whole one-second cells);
        // the SQL window takes rows as they come. An empty poll still moves idle clocks on.
        // The window builds its own batches by minute, dictionary-encoded; the rules' batch
        // carries `raw` only when a rule reads it.
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
            let watermark = self.clocks[slot].watermark(now);
            let (mut raised, micros) = self.rules.ingest(source, rows, watermark);
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
        batch.alerts = alerts;
        self.telemetry.rule_series_shed.set(self.rules.num_series_shed() as i64);
        let [audit, metrics] = self.rules.num_buffered();
        self.telemetry.rule_rows_waiting.set((audit + metrics) as i64);
        self.telemetry
            .rule_reorder_forced
            .set(self.rules.num_forced_releases() as i64);
        self.seq += 1;
        batch.seq = self.seq;
        batch
    }

    pub fn rules(&self) -> &RuleEngine {
        &self.rules
    }

    /// Decodes and enriches a poll's audit records, in order, on up to one thread per core.
    /// Nothing here depends on another record (the dedupe memory and the clocks, which do, are
    /// applied afterwards in order), so the split changes no result.
    fn decode_audit(&mut self, records: &[Record]) -> Vec<Result<AuditRow, DecodeError>> {
        let audit: Vec<&Record> = records.iter().filter(|r| r.stream == Stream::Audit).collect();
        let (ownership, directory) = (&self.ownership, &*self.directory);
        let decode = |decoder: &mut AuditDecoder, part: &[&Record]| -> Vec<Result<AuditRow, DecodeError>> {
            part.iter()
                .map(|r| {
                    let Some(payload) = &r.payload else {
                        return Err(DecodeError::Empty);
                    };
                    let mut row = decoder.decode_shared(payload)?;
                    ownership.enrich_audit(&mut row);
                    if directory.enrich_audit(&mut row) {
                        crate::enrich::ownership::set_cross_namespace(&mut row);
                    }
                    Ok(row)
                })
                .collect()
        };
        let threads = (audit.len() / MIN_RECORDS_PER_THREAD).clamp(1, self.audit_helpers.len() + 1);
        if threads == 1 {
            return decode(&mut self.audit, &audit);
        }
        let mut parts = audit.chunks(audit.len().div_ceil(threads));
        let mine = parts.next().unwrap_or_default();
        let (audit_decoder, helpers) = (&mut self.audit, &mut self.audit_helpers);
        std::thread::scope(|scope| {
            let mut pending = Vec::new();
            for (part, helper) in parts.zip(helpers.iter_mut()) {
                // A thread that cannot be started leaves its part to this one.
                let started = std::thread::Builder::new()
                    .name("decode".into())
                    .spawn_scoped(scope, move || decode(helper, part));
                pending.push(started.map_err(|e| {
                    tracing::debug!(error = %e, "no decode thread; decoding in line");
                    part
                }));
            }
            let mut out = decode(audit_decoder, mine);
            for p in pending {
                match p {
                    Ok(handle) => match handle.join() {
                        Ok(rows) => out.extend(rows),
                        Err(panic) => std::panic::resume_unwind(panic),
                    },
                    Err(part) => out.extend(decode(audit_decoder, part)),
                }
            }
            out
        })
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
