//! Wires the stages: Kafka source -> decode -> dedupe -> enrich -> {rules, window, sinks} ->
//! committer, with bounded channels between tasks, and shuts them down in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::FutureRecord;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::decode::DecodeError;
use crate::decode::audit::AuditDecoder;
use crate::decode::metrics::{MetricHeaders, MetricsDecoder};
use crate::enrich::dedupe::{Dedupe, DedupeStore};
use crate::enrich::directory::Directory;
use crate::enrich::ownership::Ownership;
use crate::event::{Ack, Alert, Batch, Positions, now_us};
use crate::query::engine::QueryEngine;
use crate::query::tables;
use crate::query::window::Window;
use crate::rules::{self, RuleEngine, Source};
use crate::sinks::SinkItem;
use crate::sinks::otlp::OtlpSink;
use crate::sinks::splunk_hec::sink::HecSink;
use crate::source::dead_letter::{DeadLetters, Origin};
use crate::source::kafka::{self, Pending};
use crate::source::{Record, Stream};
use crate::telemetry::{RuleLabel, StreamLabel, Telemetry};

/// Batches queued per sink before the poll loop waits.
const SINK_QUEUE: usize = 8;
/// Batches awaiting acknowledgement before the poll loop waits.
const COMMIT_QUEUE: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{0}")]
    Enrich(#[from] crate::enrich::EnrichError),
    #[error("{0}")]
    Rules(#[from] crate::rules::RulesError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{0}")]
    Sink(#[from] crate::sinks::SinkError),
    #[error("http server on {addr}: {source}")]
    Http { addr: SocketAddr, source: std::io::Error },
    #[error("a pipeline task failed: {0}")]
    Task(String),
}

/// Decode, dedupe, enrich, evaluate rules and fill the window, one batch at a time.
pub struct Processor {
    audit: AuditDecoder,
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
    seq: u64,
}

/// The outcome of processing a batch of records.
pub struct Processed {
    pub batch: Batch,
    /// Records that could not be decoded, by index into the input, with why.
    pub rejected: Vec<(usize, DecodeError)>,
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
        Processor {
            audit: AuditDecoder::new(config.decode.validate_schema, config.decode.max_record_bytes),
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
            seq: 0,
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

    pub fn process(&mut self, records: &[Record]) -> Processed {
        self.apply_reloads();
        let mut batch = Batch::default();
        let mut rejected = Vec::new();
        let now = now_us();
        for (i, record) in records.iter().enumerate() {
            self.telemetry
                .records_in
                .get_or_create(&StreamLabel {
                    stream: record.stream.as_str(),
                })
                .inc();
            let payload = record.payload.as_deref().unwrap_or_default();
            match record.stream {
                Stream::Audit => match self.audit.decode(payload) {
                    Ok(mut row) => {
                        if self.dedupe.insert(&row.id, now) {
                            self.ownership.enrich_audit(&mut row);
                            if self.directory.enrich_audit(&mut row) {
                                crate::enrich::ownership::set_cross_namespace(&mut row);
                            }
                            batch.audit.push(row);
                        } else {
                            self.telemetry.duplicates.inc();
                        }
                    }
                    Err(e) => rejected.push((i, e)),
                },
                Stream::Metrics => {
                    let headers = MetricHeaders {
                        content_type: record.header("content-type").map(str::to_owned),
                        metric: record.header("metric").map(str::to_owned),
                        cluster_id: record.header("resource.kafka.id").map(str::to_owned),
                    };
                    match self.metrics.decode(payload, &headers) {
                        Ok(samples) => {
                            for mut s in samples {
                                self.ownership.enrich_metric(&mut s);
                                batch.metrics.push(s);
                            }
                        }
                        Err(e) => rejected.push((i, e)),
                    }
                }
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

        let mut alerts = Vec::new();
        if !batch.audit.is_empty() {
            let arrow = tables::audit_batch(&batch.audit);
            let (mut raised, micros) = self.rules.evaluate(Source::Audit, &arrow);
            self.telemetry.rule_eval_micros.inc_by(micros);
            alerts.append(&mut raised);
            let newest = batch.audit.iter().map(|r| r.time_us).max().unwrap_or(now);
            self.window.audit.append(arrow, newest);
        }
        if !batch.metrics.is_empty() {
            let arrow = tables::metrics_batch(&batch.metrics);
            let (mut raised, micros) = self.rules.evaluate(Source::Metrics, &arrow);
            self.telemetry.rule_eval_micros.inc_by(micros);
            alerts.append(&mut raised);
            let newest = batch.metrics.iter().map(|m| m.time_us).max().unwrap_or(now);
            self.window.metrics.append(arrow, newest);
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
            for a in &alerts {
                self.telemetry
                    .alerts
                    .get_or_create(&RuleLabel {
                        rule: a.rule_id.clone(),
                    })
                    .inc();
                let _ = self.alerts_tx.send(a.clone());
            }
        }
        batch.alerts = alerts;
        self.telemetry.rule_series_shed.set(self.rules.num_series_shed() as i64);
        self.seq += 1;
        batch.seq = self.seq;
        Processed { batch, rejected }
    }

    pub fn rules(&self) -> &RuleEngine {
        &self.rules
    }
}

/// Hands batches to the sinks and the committer.
#[derive(Clone)]
struct Dispatcher {
    sinks: Vec<mpsc::Sender<SinkItem>>,
    committer: mpsc::Sender<Pending>,
    /// Whether the committer keeps a dedupe store (then it needs the ids).
    record_ids: bool,
    /// KiB of record bytes in flight (read, not yet finalised): `kafka.max_inflight_bytes`.
    inflight: Arc<tokio::sync::Semaphore>,
    inflight_kib: u32,
}

impl Dispatcher {
    /// Hands `batch` on once its `bytes` fit in the in-flight budget (waiting, with the consumer
    /// paused, while they do not).
    async fn dispatch(&self, batch: Batch, positions: Positions, bytes: usize) -> Result<(), PipelineError> {
        let closed = || PipelineError::Task("a sink or the committer stopped".into());
        // A batch larger than the whole budget still goes, alone.
        let kib = (bytes.div_ceil(1024) as u32).clamp(1, self.inflight_kib);
        let inflight = self
            .inflight
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(|_| closed())?;
        let mut acks = Vec::new();
        let ids = if self.record_ids {
            batch.audit.iter().map(|r| r.id.clone()).collect()
        } else {
            Vec::new()
        };
        if !batch.is_empty() {
            let batch = Arc::new(batch);
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
                inflight: Some(inflight),
            })
            .await
            .map_err(|_| closed())
    }
}

/// A running pipeline and the handles to look inside it.
pub struct RunningPipeline {
    pub query: QueryEngine,
    pub window: Window,
    pub telemetry: Telemetry,
    pub alerts: broadcast::Sender<Alert>,
    pub http_addr: Option<SocketAddr>,
    pub pg_addr: Option<SocketAddr>,
    pub num_rules: usize,
    shutdown: CancellationToken,
    source: JoinHandle<Result<(), PipelineError>>,
    drain: Vec<JoinHandle<()>>,
    consumer: Arc<kafka::KafkaConsumer>,
}

impl RunningPipeline {
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits for the pipeline to stop (after the shutdown token is cancelled, or on a fatal
    /// error), drains the sinks within `drain_timeout`, and commits what was delivered.
    pub async fn wait(self, drain_timeout: Duration) -> Result<(), PipelineError> {
        let result = match self.source.await {
            Ok(r) => r,
            Err(e) => Err(PipelineError::Task(e.to_string())),
        };
        // However the source stopped, every other task stops too (they hold sink senders).
        self.shutdown.cancel();
        let drained = tokio::time::timeout(drain_timeout, futures::future::join_all(self.drain)).await;
        if drained.is_err() {
            tracing::warn!(
                ?drain_timeout,
                "sinks did not drain in time; undelivered records will be re-read on restart"
            );
        }
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || kafka::commit_now(&consumer))
            .await
            .ok();
        self.shutdown.cancel();
        result
    }
}

/// Starts every stage. Fails fast on a bad rule file, namespace file or client setting.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<RunningPipeline, PipelineError> {
    let ownership = match &config.enrich.namespaces {
        Some(path) => Ownership::load(path)?,
        None => Ownership::default(),
    };
    let directory = Arc::new(match &config.enrich.directory {
        Some(path) => Directory::load(path)?,
        None => Directory::default(),
    });
    let rules = rules::load_dirs(&config.rule_dirs)?;
    let num_rules = rules.len();
    let telemetry = Telemetry::new();
    let window = Window::with_max_memory(config.window_retention, config.window_max_memory);
    let query = QueryEngine::with_limits(&window, config.server.limits.clone());
    let (alerts_tx, _) = broadcast::channel(1024);

    let consumer = Arc::new(kafka::consumer(&config)?);
    let dead_letters = DeadLetters::new(
        &config.kafka.client_properties,
        &config.topics.dead_letter,
        telemetry.clone(),
    )?;

    // Sinks. Alerts about the pipeline itself (HEC refusing its token) come back on
    // `system_alerts` and are published like rule alerts.
    let (system_alerts_tx, system_alerts_rx) = mpsc::channel::<Alert>(16);
    let mut sinks = Vec::new();
    let mut drain = Vec::new();
    if let Some(hec) = config.sinks.splunk_hec.clone() {
        let (tx, rx) = mpsc::channel(SINK_QUEUE);
        let sink =
            HecSink::new(hec, dead_letters.clone(), telemetry.clone())?.with_system_alerts(system_alerts_tx.clone());
        drain.push(tokio::spawn(sink.run(rx)));
        sinks.push(tx);
    }
    if let Some(otlp) = config.sinks.otlp.clone() {
        let (tx, rx) = mpsc::channel(SINK_QUEUE);
        let sink = OtlpSink::new(otlp, dead_letters.clone(), telemetry.clone())?;
        drain.push(tokio::spawn(sink.run(rx)));
        sinks.push(tx);
    }
    if let Some(file) = config.sinks.file.clone() {
        let (tx, rx) = mpsc::channel(SINK_QUEUE);
        let t = telemetry.clone();
        drain.push(tokio::spawn(async move {
            if let Err(e) = crate::sinks::file::run(file, rx, t).await {
                tracing::error!(error = %e, "file sink stopped");
            }
        }));
        sinks.push(tx);
    }

    let store = match &config.enrich.dedupe_dir {
        Some(dir) => Some(
            DedupeStore::open(dir, config.enrich.dedupe_horizon)
                .map_err(|e| PipelineError::Task(format!("opening the dedupe store {}: {e}", dir.display())))?,
        ),
        None => None,
    };
    let mut dedupe = Dedupe::new(config.enrich.dedupe_horizon, config.enrich.dedupe_capacity);
    if let Some(store) = &store {
        let n = store
            .load_into(&mut dedupe, now_us())
            .map_err(|e| PipelineError::Task(format!("reading the dedupe store: {e}")))?;
        tracing::info!(ids = n, "dedupe store loaded");
    }
    let record_ids = store.is_some();
    let (commit_tx, commit_rx) = mpsc::channel(COMMIT_QUEUE);
    drain.push(tokio::spawn(kafka::run_committer(
        consumer.clone(),
        commit_rx,
        telemetry.clone(),
        store,
    )));
    let inflight_kib = (config.kafka.max_inflight_bytes / 1024).min(u32::MAX as usize / 2) as u32;
    let dispatcher = Dispatcher {
        record_ids,
        inflight: Arc::new(tokio::sync::Semaphore::new(inflight_kib as usize)),
        inflight_kib,
        sinks,
        committer: commit_tx,
    };

    let http_addr = match config.http_listen {
        Some(addr) => Some(
            crate::query::http::serve(
                addr,
                query.clone(),
                telemetry.clone(),
                window.clone(),
                &config.server,
                shutdown.clone(),
            )
            .await
            .map_err(|source| PipelineError::Http { addr, source })?,
        ),
        None => None,
    };

    let pg_addr = match config.server.pg_listen {
        Some(addr) => Some(
            crate::query::pg::serve(addr, &query, &config.server, telemetry.clone(), shutdown.clone())
                .await
                .map_err(|e| PipelineError::Task(e.to_string()))?,
        ),
        None => None,
    };

    let mut engine = RuleEngine::new(rules).with_allowed_lateness(config.allowed_lateness);
    let sql_rules = engine.take_sql_rules();
    let processor = Processor::new(
        &config,
        ownership,
        directory,
        engine,
        window.clone(),
        telemetry.clone(),
        alerts_tx.clone(),
    );
    let (reload_tx, reload_rx) = mpsc::channel(4);
    tokio::spawn(crate::reload::run(
        crate::reload::Watcher::new(&config),
        reload_tx,
        shutdown.clone(),
    ));
    let (sql_tx, sql_rx) = mpsc::channel(4);
    let processor = processor.with_reloads(reload_rx, sql_tx).with_dedupe(dedupe);
    let publisher = AlertPublisher {
        window: window.clone(),
        telemetry: telemetry.clone(),
        alerts: alerts_tx.clone(),
        dispatcher: dispatcher.clone(),
    };
    tokio::spawn(run_system_alerts(system_alerts_rx, publisher.clone(), shutdown.clone()));
    tokio::spawn(run_sql_rules(
        sql_rules,
        sql_rx,
        query.clone(),
        publisher,
        shutdown.clone(),
    ));
    let source = tokio::spawn(run_source(
        config,
        consumer.clone(),
        processor,
        dead_letters,
        dispatcher,
        shutdown.clone(),
    ));
    Ok(RunningPipeline {
        query,
        window,
        telemetry,
        alerts: alerts_tx,
        http_addr,
        pg_addr,
        num_rules,
        shutdown,
        source,
        drain,
        consumer,
    })
}

async fn run_source(
    config: Config,
    consumer: Arc<kafka::KafkaConsumer>,
    mut processor: Processor,
    dead_letters: DeadLetters,
    dispatcher: Dispatcher,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let max = config.kafka.batch_max_records;
    let linger = config.kafka.batch_linger;
    let mut carried = Vec::new();
    let mut backpressure = kafka::Backpressure::new();
    while let Some(records) = kafka::poll_batch(&consumer, &config.topics, max, linger, &shutdown, &mut carried).await {
        let mut positions = Positions::default();
        for r in &records {
            positions.record(&r.topic, r.partition, r.offset, r.timestamp_ms);
        }
        let processed = processor.process(&records);
        // Dead letters first: the batch's offsets must not be stored before they are in Kafka.
        let parked = processed.rejected.iter().map(|(i, error)| {
            let r = &records[*i];
            tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, class = error.class(), error = %error, "sent to dead-letter topic");
            let origin = Origin { topic: &r.topic, partition: r.partition, offset: r.offset, key: r.key.as_deref() };
            let message = error.to_string();
            let dl = &dead_letters;
            async move { dl.send_until_done(r.payload.as_deref().unwrap_or_default(), error.class(), &message, Some(origin)).await }
        });
        futures::future::join_all(parked).await;
        if let Some(topic) = &config.topics.alerts {
            for alert in &processed.batch.alerts {
                let body = crate::sinks::alert_json(alert).to_string();
                let record: FutureRecord<'_, str, str> =
                    FutureRecord::to(topic).key(alert.id.as_str()).payload(body.as_str());
                if let Err((e, _)) = dead_letters.producer().send(record, Duration::from_secs(5)).await {
                    tracing::warn!(%topic, error = %e, "could not publish an alert to the alerts topic");
                }
            }
        }
        let bytes = records.iter().map(|r| r.payload.as_ref().map_or(0, |p| p.len())).sum();
        let handoff = dispatcher.dispatch(processed.batch, positions, bytes);
        backpressure
            .wait(&consumer, &config.topics, &mut carried, handoff)
            .await?;
    }
    tracing::info!("stopped fetching; draining");
    Ok(())
}

/// Publishes alerts raised outside the batch path (`sql` rules, the pipeline's own alerts) the
/// way the batch path does: alerts table, `/metrics`, subscribers, every sink.
#[derive(Clone)]
struct AlertPublisher {
    window: Window,
    telemetry: Telemetry,
    alerts: broadcast::Sender<Alert>,
    dispatcher: Dispatcher,
}

impl AlertPublisher {
    async fn publish(&self, alerts: Vec<Alert>) -> Result<(), PipelineError> {
        if alerts.is_empty() {
            return Ok(());
        }
        let newest = alerts.iter().map(|a| a.time_us).max().unwrap_or_else(now_us);
        self.window.alerts.append(tables::alerts_batch(&alerts), newest);
        for a in &alerts {
            self.telemetry
                .alerts
                .get_or_create(&RuleLabel {
                    rule: a.rule_id.clone(),
                })
                .inc();
            let _ = self.alerts.send(a.clone());
        }
        let batch = Batch {
            alerts,
            ..Batch::default()
        };
        self.dispatcher.dispatch(batch, Positions::default(), 0).await
    }
}

/// Publishes the alerts sinks raise about themselves until shutdown.
async fn run_system_alerts(mut rx: mpsc::Receiver<Alert>, publisher: AlertPublisher, shutdown: CancellationToken) {
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
async fn run_sql_rules(
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
