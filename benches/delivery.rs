//! End-to-end delivery: librdkafka's mock cluster -> the whole pipeline (decode, dedupe, enrich,
//! shipped rules, window) -> Splunk HEC over HTTP, with indexer acknowledgement off and on.
//!
//! 1. Peak: a preloaded backlog (32 partitions, ~2 MB each, well under the mock cluster's 5 MB
//!    per partition) is drained; audit events/s is measured from the first to the last audit
//!    event at the receiver (alerts are counted apart: they come when the rules raise them).
//! 2. Latency at half of peak: records are produced at 50% of the measured peak for 20 s; the
//!    pipeline's own hdrhistogram (Kafka record timestamp -> every sink accepted, i.e. HEC
//!    acknowledged when acknowledgements are on) gives the percentiles.
//!
//! The receiver is lean (token check, gunzip, count events, answer ackIds per channel) so that
//! what is measured is auditflow; it shares the two cores. Run: `cargo bench --bench delivery`
//! (`DELIVERY_LOG=<filter>` prints the pipeline's log).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auditflow::config::Config;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

mod support;

const TOKEN: &str = "00000000-0000-0000-0000-00000000bench";
const TOPIC: &str = "confluent-audit-log-events";
/// Partitions of the topic: a backlog big enough to drain for a measurable time, and in the live
/// phase room (5 MB each in the mock cluster) for the consumer to fall behind without the broker
/// dropping records it has not read.
const PARTITIONS: i32 = 32;

/// What the receiver reads of each event: only audit events are counted (alerts are HEC events
/// too, and arrive when the rules raise them, not when the records were read).
#[derive(serde::Deserialize)]
struct HecEvent {
    sourcetype: String,
}

#[derive(Default)]
struct Receiver {
    events: AtomicU64,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
    next_ack: Mutex<HashMap<String, u64>>,
}

async fn event(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Splunk {TOKEN}")) {
        return (StatusCode::FORBIDDEN, r#"{"text":"Invalid token","code":4}"#.into());
    }
    let mut raw = Vec::new();
    if flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut raw).is_err() {
        return (
            StatusCode::BAD_REQUEST,
            r#"{"text":"Invalid data format","code":6}"#.into(),
        );
    }
    let mut n = 0;
    for item in serde_json::Deserializer::from_slice(&raw).into_iter::<HecEvent>() {
        match item {
            Ok(e) if e.sourcetype == "confluent:audit" => n += 1,
            Ok(_) => {}
            Err(_) => {
                return (
                    StatusCode::BAD_REQUEST,
                    r#"{"text":"Invalid data format","code":6}"#.into(),
                );
            }
        }
    }
    r.events.fetch_add(n, Ordering::Relaxed);
    let now = Instant::now();
    r.first.lock().unwrap().get_or_insert(now);
    *r.last.lock().unwrap() = Some(now);
    let channel = headers
        .get("x-splunk-request-channel")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut acks = r.next_ack.lock().unwrap();
    let id = acks.entry(channel).or_insert(0);
    *id += 1;
    (
        StatusCode::OK,
        format!(r#"{{"text":"Success","code":0,"ackId":{}}}"#, *id - 1),
    )
}

async fn start_receiver() -> (Arc<Receiver>, String) {
    let receiver = Arc::new(Receiver::default());
    let app = Router::new()
        .route("/services/collector/event", post(event))
        .route("/services/collector/ack", post(support::ack))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (receiver, url)
}

/// The self-telemetry receiver's URL, when `DELIVERY_OTLP_TELEMETRY` is set.
static OTLP_TELEMETRY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Takes OTLP/HTTP metric exports and answers an empty `ExportMetricsServiceResponse`.
async fn start_otlp_receiver() -> String {
    let app = Router::new().route(
        "/v1/metrics",
        post(|body: axum::body::Bytes| async move {
            std::hint::black_box(body.len());
            ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap()
}

fn config(bootstrap: &str, hec: &str, group: &str, acks: bool) -> Config {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    // State (the restart-safe dedupe store, on by default) in a directory of this run.
    // DELIVERY_NO_STATE=1: no data_dir (dedupe in memory only), to measure the store's cost.
    let data = match std::env::var_os("DELIVERY_NO_STATE") {
        Some(_) => std::path::PathBuf::new(),
        None => tempfile::tempdir().unwrap().keep(),
    };
    let text = format!(
        r#"
data_dir = "{data}"
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
[kafka.properties]
"session.timeout.ms" = "6000"
# The mock broker does not answer a waiting fetch when records arrive; a real one does.
"fetch.wait.max.ms" = "10"
[rules]
dirs = ["{rules}"]
[sinks.splunk_hec]
endpoints = ["{hec}"]
token = "{TOKEN}"
acknowledgements = {acks}
ack_poll_interval = "20ms"
batch_linger = "10ms"
"#,
        rules = rules.display(),
        data = data.display()
    );
    // DELIVERY_OTLP_TELEMETRY=1: the self-telemetry on, exporting every second (60 times the
    // default rate) to a receiver in this process, to measure its cost.
    let text = match OTLP_TELEMETRY.get() {
        Some(url) => {
            format!("{text}[telemetry.otlp]\nendpoint = \"{url}\"\nprotocol = \"http/protobuf\"\ninterval = \"1s\"\n")
        }
        None => text,
    };
    Config::parse(&text, "bench.toml").unwrap()
}

struct Cluster {
    cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    bootstrap: String,
}

fn cluster(partitions: i32) -> Cluster {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, partitions, 1).unwrap();
    cluster.create_topic("confluent-metrics", 1, 1).unwrap();
    cluster.create_topic("auditflow-dead-letter", 1, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    Cluster { cluster, bootstrap }
}

/// Drains a preloaded backlog; events per second between the first and last arrival.
async fn peak(acks: bool) -> f64 {
    let c = cluster(PARTITIONS);
    let samples = support::samples();
    let p = producer(&c.bootstrap);
    let now = chrono::Utc::now();
    // Well within the mock cluster's 5 MB per partition: past it, the broker drops the oldest
    // records (here already at ~4 MB, batches of 5 ms linger), and the drain would wait for
    // records that are gone: the bench's peak had fallen to ~2,900 events/s that way, timing
    // the rules' idle-partition release of the alerts instead of the delivery.
    let mean = (0..samples.len())
        .map(|i| support::event_bytes(&samples, i, now).len())
        .sum::<usize>()
        / samples.len();
    let n = PARTITIONS as usize * (support::PARTITION_BUDGET / 2 / mean);
    // The backlog's event times span two minutes up to now, in order, so the rules' clocks
    // advance while it drains and the rules do their work as it goes (with one timestamp for
    // all, every rule would wait for the end of the backlog and the peak would skip them).
    let start = now - chrono::TimeDelta::minutes(2);
    let step = chrono::TimeDelta::minutes(2) / n as i32;
    let mut sends = Vec::with_capacity(n);
    for i in 0..n {
        let bytes = support::event_bytes(&samples, i, start + step * i as i32);
        let p = p.clone();
        sends.push(async move {
            let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(TOPIC)
                .partition((i % PARTITIONS as usize) as i32)
                .payload(&bytes);
            p.send(record, Duration::from_secs(30))
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        });
    }
    for r in futures::future::join_all(sends).await {
        r.unwrap();
    }
    let (receiver, url) = start_receiver().await;
    let shutdown = CancellationToken::new();
    let running = auditflow::pipeline::start(config(&c.bootstrap, &url, "bench-peak", acks), shutdown.clone())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while receiver.events.load(Ordering::Relaxed) < n as u64 {
        assert!(
            Instant::now() < deadline,
            "backlog not drained: {} of {n} audit events arrived",
            receiver.events.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first = receiver.first.lock().unwrap().unwrap();
    let last = receiver.last.lock().unwrap().unwrap();
    shutdown.cancel();
    running.wait(Duration::from_secs(10)).await.unwrap();
    drop(c.cluster);
    n as f64 / (last - first).as_secs_f64()
}

/// Produces at `rate` events/s for `seconds` and returns the latency percentiles (ms).
async fn latency_at(rate: f64, seconds: u64, acks: bool) -> (f64, [u64; 4]) {
    let c = cluster(PARTITIONS);
    let (receiver, url) = start_receiver().await;
    let shutdown = CancellationToken::new();
    let running = auditflow::pipeline::start(config(&c.bootstrap, &url, "bench-latency", acks), shutdown.clone())
        .await
        .unwrap();
    // Let the group settle before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let samples = support::samples();
    let p = producer(&c.bootstrap);
    let started = Instant::now();
    let total = (rate * seconds as f64) as usize;
    let tick = Duration::from_millis(10);
    let per_tick = (rate * tick.as_secs_f64()).max(1.0);
    let mut produced = 0usize;
    let mut interval = tokio::time::interval(tick);
    let mut pending = Vec::new();
    while produced < total {
        interval.tick().await;
        let due = ((started.elapsed().as_secs_f64() / tick.as_secs_f64()) * per_tick) as usize;
        let now = chrono::Utc::now();
        while produced < due.min(total) {
            let bytes = support::event_bytes(&samples, produced, now);
            let p = p.clone();
            let partition = (produced % PARTITIONS as usize) as i32;
            pending.push(tokio::spawn(async move {
                let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(TOPIC).partition(partition).payload(&bytes);
                let _ = p.send(record, Duration::from_secs(30)).await;
            }));
            produced += 1;
        }
    }
    futures::future::join_all(pending).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.events.load(Ordering::Relaxed) < total as u64 {
        assert!(Instant::now() < deadline, "not everything arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let achieved = total as f64 / started.elapsed().as_secs_f64();
    // The last batches' commits land a moment after their delivery.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = &running.telemetry;
    let percentiles = [
        t.latency_percentile_ms(0.5),
        t.latency_percentile_ms(0.9),
        t.latency_percentile_ms(0.99),
        t.latency_percentile_ms(0.999),
    ];
    shutdown.cancel();
    running.wait(Duration::from_secs(10)).await.unwrap();
    drop(c.cluster);
    (achieved, percentiles)
}

fn main() {
    // `cargo test --benches` runs benches with `--bench` absent: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    // DELIVERY_LOG=<filter> (e.g. `auditflow::pipeline=debug,auditflow::sinks::splunk_hec=debug`)
    // prints the pipeline's log, with its stage timeline, to stderr.
    if let Ok(filter) = std::env::var("DELIVERY_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if std::env::var_os("DELIVERY_OTLP_TELEMETRY").is_some() {
            OTLP_TELEMETRY.set(start_otlp_receiver().await).unwrap();
            println!("delivery: self-telemetry over OTLP/HTTP every 1s");
        }
        for acks in [false, true] {
            let label = if acks { "acks on " } else { "acks off" };
            let runs = if quick { 1 } else { 3 };
            let mut best = 0f64;
            for _ in 0..runs {
                best = best.max(peak(acks).await);
            }
            println!("delivery/{label}: peak {best:.0} events/s (Kafka -> HEC accepted, 2 cores shared with the receiver)");
            let seconds = if quick { 2 } else { 20 };
            let (achieved, [p50, p90, p99, p999]) = latency_at(best / 2.0, seconds, acks).await;
            println!(
                "delivery/{label}: at {achieved:.0} events/s (50% of peak): latency Kafka timestamp -> all sinks accepted p50 {p50} ms, p90 {p90} ms, p99 {p99} ms, p99.9 {p999} ms"
            );
        }
    });
}
