//! Wires the stages: Kafka source -> decode -> dedupe -> enrich -> {rules, window, sinks} ->
//! committer, with bounded channels between tasks, and shuts them down in order.
//!
//! [`processor`] turns a poll's records into a batch of events, [`evaluator`] fills the window
//! and raises its alerts; [`dispatch`] hands each batch to every sink and the committer, and
//! publishes the alerts raised outside the batch path the same way; this file starts it all and
//! runs the poll loop.

mod background;
mod decode_helper;
mod dispatch;
mod evaluator;
mod processor;
mod window_fill;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::enrich::dedupe::Dedupe;
use crate::enrich::dedupe_store::DedupeStore;
use crate::enrich::directory::Directory;
use crate::enrich::ownership::Ownership;
use crate::event::{Alert, Positions, now_us};
use crate::query::engine::QueryEngine;
use crate::query::window::Window;
use crate::rules::{self, RuleEngine};
use crate::sinks::archive::ArchiveSink;
use crate::sinks::dead_letter::{DeadLetterSink, DeadLetters};
use crate::sinks::kafka_alerts::KafkaAlertsSink;
use crate::sinks::otlp::OtlpSink;
use crate::sinks::splunk_hec::sink::HecSink;
use crate::source::committer::{self, RememberDelivered};
use crate::source::metrics_api::{self, MetricsApiPoller};
use crate::source::{self, kafka};
use crate::telemetry::Telemetry;
use crate::telemetry::otlp::OtlpTelemetry;
use dispatch::{AlertPublisher, Dispatcher, run_sql_rules, run_system_alerts};
pub use processor::Processor;
use processor::run_processor;

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
    #[error("{0}")]
    Archive(#[from] crate::archive::ArchiveError),
    #[error("{0}")]
    Query(#[from] crate::query::engine::QueryError),
    #[error("{0}")]
    OtlpTelemetry(#[from] crate::telemetry::otlp::OtlpTelemetryError),
    #[error("{0}")]
    MetricsApi(#[from] crate::source::metrics_api::MetricsApiError),
    #[error("http server on {addr}: {source}")]
    Http { addr: SocketAddr, source: std::io::Error },
    #[error("a pipeline task failed: {0}")]
    Task(String),
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
    otlp_telemetry: Option<Arc<OtlpTelemetry>>,
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
        if let Some(otlp) = self.otlp_telemetry {
            // A last export of the final counts; it waits on the runtime, so off its workers.
            tokio::task::spawn_blocking(move || otlp.shutdown()).await.ok();
        }
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
    let mut query = QueryEngine::with_limits(&window, config.server.limits.clone());
    if let Some(archive) = &config.archive {
        let store = crate::archive::store::ArchiveStore::open(&archive.url)?;
        query = query.with_archive(&store.store_url, &store.table_url, store.store.clone())?;
    }
    let (alerts_tx, _) = broadcast::channel(1024);

    let consumer = Arc::new(kafka::consumer(&config, telemetry.clone())?);
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
    {
        let (tx, rx) = mpsc::channel(SINK_QUEUE);
        drain.push(tokio::spawn(DeadLetterSink::new(dead_letters.clone()).run(rx)));
        sinks.push(tx);
    }
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
    if let Some(topic) = &config.topics.alerts {
        let (tx, rx) = mpsc::channel(SINK_QUEUE);
        let sink = KafkaAlertsSink::new(topic, dead_letters.clone(), telemetry.clone());
        drain.push(tokio::spawn(sink.run(rx)));
        sinks.push(tx);
    }
    if let Some(archive) = config.archive.clone() {
        let (tx, rx) = mpsc::channel(SINK_QUEUE);
        let sink = ArchiveSink::new(archive, config.topics.audit.clone(), telemetry.clone())?;
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
    // Delivered ids are remembered before the offsets move, so a crash after the commit cannot
    // make them look new, and a crash before it finds them remembered.
    let remember = store.map(|store| -> RememberDelivered { Arc::new(move |ids| store.append(ids, now_us())) });
    drain.push(tokio::spawn(committer::run_committer(
        consumer.clone(),
        commit_rx,
        telemetry.clone(),
        remember,
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
    // The Metrics API poller feeds the processor beside the consumer, or, with `publish_topic`,
    // produces to a metrics topic the consumer reads.
    let polled = match config.sources.confluent_metrics_api.clone() {
        Some(api) => {
            let (output, rx) = match &api.publish_topic {
                Some(topic) => (
                    metrics_api::Output::Topic {
                        producer: dead_letters.producer().clone(),
                        topic: topic.clone(),
                    },
                    None,
                ),
                None => {
                    let (tx, rx) = mpsc::channel(POLL_AHEAD);
                    (metrics_api::Output::Pipeline(tx), Some(rx))
                }
            };
            let poller = MetricsApiPoller::new(api, telemetry.clone(), output)?;
            tokio::spawn(poller.run(shutdown.clone()));
            rx
        }
        None => None,
    };
    let config_telemetry = config.telemetry_otlp.clone();
    let source = tokio::spawn(run_source(
        config,
        consumer.clone(),
        processor,
        dispatcher,
        polled,
        shutdown.clone(),
    ));
    let otlp_telemetry = match &config_telemetry {
        Some(otlp) => {
            let (t, w) = (telemetry.clone(), window.clone());
            let settings = otlp_export_settings(otlp);
            let families = telemetry.families().to_vec();
            let render = Arc::new(move || t.render(&w.stats()));
            let otlp = OtlpTelemetry::start(&settings, families, render)?;
            telemetry.export_latency(otlp.latency_histogram());
            Some(Arc::new(otlp))
        }
        None => None,
    };
    Ok(RunningPipeline {
        otlp_telemetry,
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

/// One poll's records, with what the poll side learnt about them.
struct Polled {
    records: Vec<source::Record>,
    positions: Positions,
    /// The new assignment, when a rebalance changed it before these records.
    assigned: Option<Vec<(Arc<str>, i32, source::Stream)>>,
    bytes: usize,
}

/// Polls already handed to the processor but not yet taken: enough that the next poll is ready
/// when processing ends, few enough that the in-flight budget still bounds memory.
const POLL_AHEAD: usize = 2;

/// Runs the source as two tasks, so polling (and librdkafka's copying out) overlaps decoding,
/// rules and the window: the poll task keeps the consumer in its group (pausing it while the
/// processor is backed up), the processor task decodes and dispatches in poll order.
async fn run_source(
    config: Config,
    consumer: Arc<kafka::KafkaConsumer>,
    processor: Processor,
    dispatcher: Dispatcher,
    polled: Option<mpsc::Receiver<Vec<source::Record>>>,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let (tx, rx) = mpsc::channel(POLL_AHEAD);
    let processor_idle = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let processing = tokio::spawn(run_processor(processor, dispatcher, rx, processor_idle.clone()));
    if let Some(mut polled) = polled {
        // Polled records have no Kafka positions: nothing to commit, and they queue behind (and
        // between) the consumer's polls. The poller stops on shutdown, closing this sender.
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(records) = polled.recv().await {
                let bytes = records.iter().map(|r| r.payload.as_ref().map_or(0, |p| p.len())).sum();
                let handoff = Polled {
                    records,
                    positions: Positions::default(),
                    assigned: None,
                    bytes,
                };
                if tx.send(handoff).await.is_err() {
                    return;
                }
            }
        });
    }
    let polled = poll_loop(&config, &consumer, tx, &shutdown, &processor_idle).await;
    tracing::info!("stopped fetching; draining");
    let processed = match processing.await {
        Ok(r) => r,
        Err(e) => Err(PipelineError::Task(e.to_string())),
    };
    // The processor's error is the cause; the poll side only saw its channel close.
    processed?;
    polled
}

async fn poll_loop(
    config: &Config,
    consumer: &kafka::KafkaConsumer,
    tx: mpsc::Sender<Polled>,
    shutdown: &CancellationToken,
    processor_idle: &std::sync::atomic::AtomicBool,
) -> Result<(), PipelineError> {
    let max = config.kafka.batch_max_records;
    let linger = config.kafka.batch_linger;
    let mut carried = Vec::new();
    let mut backpressure = kafka::Backpressure::new();
    let mut polling = std::time::Instant::now();
    while let Some(records) = kafka::poll_batch(
        consumer,
        &config.topics,
        max,
        linger,
        shutdown,
        &mut carried,
        processor_idle,
    )
    .await
    {
        let mut positions = Positions::default();
        for r in &records {
            positions.record(&r.topic, r.partition, r.offset, r.timestamp_ms);
        }
        // The stage timeline (`auditflow::pipeline=debug`): what each stage waited on per batch,
        // and how old the oldest record was when polled (the time spent before this process).
        tracing::debug!(
            records = records.len(),
            took_ms = polling.elapsed().as_secs_f64() * 1e3,
            oldest_age_ms = positions.oldest_record_ms.map(|ms| now_us() / 1000 - ms),
            "polled"
        );
        let assigned = kafka::changed_assignment(consumer, &config.topics);
        let bytes = records.iter().map(|r| r.payload.as_ref().map_or(0, |p| p.len())).sum();
        let polled = Polled {
            records,
            positions,
            assigned,
            bytes,
        };
        let handoff = tx.send(polled);
        if backpressure
            .wait(consumer, &config.topics, &mut carried, handoff)
            .await
            .is_err()
        {
            return Err(PipelineError::Task("the processor stopped".into()));
        }
        polling = std::time::Instant::now();
    }
    Ok(())
}

/// The self-telemetry exporter's settings from `[telemetry.otlp]` (telemetry imports nothing
/// of config, so the translation lives here), for metrics and for spans alike.
pub fn otlp_export_settings(otlp: &crate::config::TelemetryOtlpConfig) -> crate::telemetry::otlp::ExportSettings {
    crate::telemetry::otlp::ExportSettings {
        endpoint: otlp.endpoint.clone(),
        grpc: otlp.protocol == crate::config::OtlpProtocol::Grpc,
        headers: otlp
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_owned()))
            .collect(),
        interval: otlp.interval,
        timeout: otlp.timeout,
    }
}
