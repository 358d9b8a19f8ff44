//! The throughput harness (issue 14): the release `auditflow` binary, as its own process, drains
//! a preloaded backlog of ~1 KB Confluent audit events from librdkafka's mock cluster through
//! decode -> validate -> dedupe -> enrich -> shipped rules -> window -> Splunk HEC, into a lean
//! receiver in this process (token check, gunzip, parse every event, answer 200 or ackIds).
//!
//! Reported per mode (gzip with acknowledgements off and on, no compression):
//! - steady events/s at the receiver (first to last arrival), and events per CPU-second of the
//!   auditflow process over the same span (`/proc/<pid>/stat`, so neither the broker nor the
//!   receiver is counted; both share the two cores, as in production on a small box);
//! - peak RSS (`VmHWM`) and the window's own bytes (from `/metrics`) at the end of the drain, and
//!   how much of the RSS is mapped files (`RssFile`: the binary's code, ~100 MB of the release
//!   build), not memory the process allocated;
//! - the time from process start, and from the consumer's assignment, to the first event at HEC;
//! - latency percentiles at half of the measured peak: each event's own `time` (set when it is
//!   produced) to its arrival at the receiver; on stderr, the process's events per CPU-second
//!   during that phase and the harness's own share of the cores (producer, mock broker and
//!   receiver), which together say how close to saturated the two cores were;
//! - with `DRAIN_LATENCY_TIMELINE=1`, each 100 ms of the latency phase whose slowest event took
//!   40 ms or more (stderr, with its time since the epoch to find it in `DRAIN_LOG`);
//!   `DRAIN_LATENCY_TIMELINE=N` sets that bound to N ms (0: every 100 ms).
//!
//! The mock cluster keeps only the newest 5 MB of a partition, so the backlog is spread over as
//! many partitions as it needs. Run: `cargo bench --bench drain` (`DRAIN_EVENTS=600000` for the
//! memory figure; `DRAIN_MODES=gzip` to run one mode; `DRAIN_KAFKA_PROPERTIES="k=v,..."` for more consumer properties; `DRAIN_LATENCY_RATE=50000` for the latency
//! phase at a fixed rate instead of half of the measured peak; `DRAIN_BIN=path` to run a wrapper
//! or another build in place of the binary; `DRAIN_MODES=broker` for the harness's own
//! ceiling: a bare consumer's drain rate, and producer -> mock broker -> bare consumer latency,
//! which bounds every latency figure here from below).

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hdrhistogram::Histogram;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Deserialize;

mod support;

const TOKEN: &str = "00000000-0000-0000-0000-00000000drain";
const TOPIC: &str = "confluent-audit-log-events";
/// The event times a backlog spans.
const BACKLOG_SPAN: chrono::TimeDelta = chrono::TimeDelta::minutes(10);
/// Partitions the live traffic of the latency phases goes to: 6 (the topic of issue 14), or
/// `DRAIN_LATENCY_PARTITIONS`. Spread over all 79 of the backlog's, librdkafka's mock broker
/// itself fell seconds behind: a bare consumer measured p50 267 ms / p99 6.8 s at 34,000
/// events/s, against 6 ms / 9 ms over 6 partitions.
fn latency_partitions(partitions: i32) -> i32 {
    std::env::var("DRAIN_LATENCY_PARTITIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
        .clamp(1, partitions)
}

#[derive(Default)]
struct Receiver {
    events: AtomicU64,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
    next_ack: AtomicU64,
    /// Milliseconds from each event's `time` to its arrival, once `measuring` is set.
    latency: Mutex<Option<Histogram<u64>>>,
    /// With `DRAIN_LATENCY_TIMELINE` set (read once, not per request): the slowest event, in
    /// ms, that puts 100 ms of the timeline on stderr.
    timeline_worst_ms: Option<u64>,
    /// With `timeline_worst_ms`: for each 100 ms of arrivals (its index: milliseconds since the epoch
    /// / 100), the events and the worst latency, to show where a tail comes from.
    timeline: Mutex<Vec<(i64, u64, u64)>>,
}

impl Receiver {
    /// Times the audit events of one body that arrived at `now_ms`: in the histogram, and in
    /// the timeline when it is on.
    fn record_latencies(&self, now_ms: f64, latencies: &[u64]) {
        if let Some(h) = self.latency.lock().unwrap().as_mut() {
            for &ms in latencies {
                h.saturating_record(ms);
            }
        }
        if self.timeline_worst_ms.is_none() {
            return;
        }
        let slot = now_ms as i64 / 100;
        let mut t = self.timeline.lock().unwrap();
        if t.last().is_none_or(|l| l.0 != slot) {
            t.push((slot, 0, 0));
        }
        let last = t.last_mut().unwrap();
        last.1 += latencies.len() as u64;
        last.2 = latencies.iter().fold(last.2, |worst, &ms| worst.max(ms));
    }
}

/// How an audit event in a HEC body names its sourcetype: the receiver finds events by it.
const AUDIT_SOURCETYPE: &[u8] = br#""sourcetype":"confluent:audit""#;

#[derive(Deserialize)]
struct HecEvent {
    time: f64,
    sourcetype: String,
}

async fn event(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Splunk {TOKEN}")) {
        return (StatusCode::FORBIDDEN, r#"{"text":"Invalid token","code":4}"#.into());
    }
    let gzipped = headers.get("content-encoding").is_some_and(|v| v == "gzip");
    let mut raw = Vec::new();
    let body: &[u8] = if gzipped {
        if flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut raw).is_err() {
            return (
                StatusCode::BAD_REQUEST,
                r#"{"text":"Invalid data format","code":6}"#.into(),
            );
        }
        &raw
    } else {
        &body
    };
    let measuring = r.latency.lock().unwrap().is_some();
    if !measuring {
        // Counting only: the events are found by their sourcetype rather than parsed, so this
        // receiver, on the same two cores, takes as little as it can from the process measured.
        let n = memchr::memmem::find_iter(body, AUDIT_SOURCETYPE).count() as u64;
        return r.accepted(n);
    }
    let now_ms = chrono::Utc::now().timestamp_millis() as f64;
    let latency_of = |time: f64| (now_ms - time * 1000.0).max(1.0) as u64;
    if let Some(times) = audit_event_times(body) {
        let latencies: Vec<u64> = times.into_iter().map(latency_of).collect();
        r.record_latencies(now_ms, &latencies);
        return r.accepted(latencies.len() as u64);
    }
    let mut n = 0;
    let mut latencies = Vec::new();
    for item in serde_json::Deserializer::from_slice(body).into_iter::<HecEvent>() {
        match item {
            // Alerts are HEC events too; only the audit events are counted and timed.
            Ok(e) if e.sourcetype == "confluent:audit" => latencies.push(latency_of(e.time)),
            Ok(_) => continue,
            Err(_) => {
                return (
                    StatusCode::BAD_REQUEST,
                    r#"{"text":"Invalid data format","code":6}"#.into(),
                );
            }
        }
        n += 1;
    }
    r.record_latencies(now_ms, &latencies);
    r.accepted(n)
}

/// The `time` of each audit event in a HEC body, found the way the counting above finds the
/// events: by their sourcetype, each preceded by its envelope's opening `{"time":<seconds>`
/// (the encoder writes time, host, source and sourcetype before the fields and the raw event).
/// Parsing every event to read its time took a third of a core at 80,000 events/s, of the two
/// this receiver shares with the process whose latency it measures. `None` for a body not laid
/// out so; the caller then parses it.
fn audit_event_times(body: &[u8]) -> Option<Vec<f64>> {
    const OPEN: &[u8] = br#"{"time":"#;
    let mut times = Vec::new();
    let mut from = 0;
    for at in memchr::memmem::find_iter(body, AUDIT_SOURCETYPE) {
        let start = memchr::memmem::rfind(&body[from..at], OPEN)? + from + OPEN.len();
        let digits = body[start..at]
            .iter()
            .position(|b| !(b.is_ascii_digit() || *b == b'.'))
            .map_or(&body[start..at], |end| &body[start..start + end]);
        times.push(std::str::from_utf8(digits).ok()?.parse::<f64>().ok()?);
        from = at;
    }
    Some(times)
}

impl Receiver {
    /// Counts `n` audit events in and answers the request.
    fn accepted(&self, n: u64) -> (StatusCode, String) {
        self.events.fetch_add(n, Ordering::Relaxed);
        let now = Instant::now();
        self.first.lock().unwrap().get_or_insert(now);
        *self.last.lock().unwrap() = Some(now);
        // One counter across channels: ackIds only need to be unique per channel.
        let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        (StatusCode::OK, format!(r#"{{"text":"Success","code":0,"ackId":{id}}}"#))
    }
}

async fn start_receiver() -> (Arc<Receiver>, String) {
    let receiver = Arc::new(Receiver {
        // `1` turns it on at the default bound; another number is the bound.
        timeline_worst_ms: std::env::var("DRAIN_LATENCY_TIMELINE")
            .ok()
            .map(|v| v.parse().ok().filter(|&ms| ms != 1).unwrap_or(40)),
        ..Receiver::default()
    });
    let app = Router::new()
        .route("/services/collector/event", post(event))
        .route("/services/collector/ack", post(support::ack))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (receiver, url)
}

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "2")
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .create()
        .unwrap()
}

async fn produce(p: &FutureProducer, topic: &'static str, partitions: i32, payloads: Vec<(usize, Vec<u8>)>) {
    let sends = payloads.into_iter().map(|(i, bytes)| {
        let p = p.clone();
        async move {
            let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(topic)
                .partition((i % partitions as usize) as i32)
                .payload(&bytes);
            p.send(record, Duration::from_secs(60))
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        }
    });
    for r in futures::future::join_all(sends).await {
        r.unwrap();
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Gzip,
    GzipAcks,
    Plain,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Gzip => "gzip, acks off",
            Mode::GzipAcks => "gzip, acks on",
            Mode::Plain => "no compression",
        }
    }
}

fn write_config(dir: &Path, bootstrap: &str, hec: &str, group: &str, mode: Mode, http: &str) -> std::path::PathBuf {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let (compression, acks) = match mode {
        Mode::Gzip => (true, false),
        Mode::GzipAcks => (true, true),
        Mode::Plain => (false, false),
    };
    // State (the restart-safe dedupe store, on by default) in the run's own directory.
    let text = format!(
        r#"
data_dir = "{data}"
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
[kafka.properties]
"session.timeout.ms" = "6000"
# librdkafka's mock broker answers a fetch with no data only when fetch.wait.max.ms ends, not
# when data arrives as a broker does: at the default 100 ms a bare consumer alone measured p50
# 53 ms / p99 103 ms. 5 ms keeps the harness out of the latency measured.
"fetch.wait.max.ms" = "5"
{extra}
[rules]
dirs = ["{rules}"]
[server]
http_listen = "{http}"
[sinks.splunk_hec]
endpoints = ["{hec}"]
token = "{TOKEN}"
compression = {compression}
acknowledgements = {acks}
ack_poll_interval = "20ms"
"#,
        data = dir.join("data").display(),
        rules = rules.display(),
        extra = extra_kafka_properties()
    );
    let path = dir.join(format!("{group}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// `DRAIN_KAFKA_PROPERTIES="key=value,key=value"`: more librdkafka properties for the
/// process's consumer, to try fetch settings without rebuilding.
fn extra_kafka_properties() -> String {
    let list = std::env::var("DRAIN_KAFKA_PROPERTIES").unwrap_or_default();
    list.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| format!("{:?} = {:?}\n", k.trim(), v.trim()))
        .collect()
}

/// `(utime, stime)` of `pid` in seconds: in its own code and in the kernel for it (page
/// faults, socket copies, futex waits and wake-ups).
fn cpu_seconds(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) / 100.0, ticks(12) / 100.0) // USER_HZ is 100 on Linux
}

fn status_kb(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Sum of a gauge family on the process's `/metrics` page.
async fn scrape_sum(http: &str, family: &str) -> u64 {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    if let Some(path) = std::env::var_os("DRAIN_METRICS") {
        std::fs::write(path, &text).unwrap();
    }
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

struct Process {
    child: Child,
    /// When the consumer logged its assignment.
    assigned: Arc<Mutex<Option<Instant>>>,
}

fn spawn(config: &Path) -> Process {
    // `DRAIN_BIN` runs another program in its place: a wrapper that runs the binary under a
    // profiler (`link/symbol-order.sh`), or another build of it.
    let binary = std::env::var_os("DRAIN_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_auditflow").into());
    let mut child = Command::new(binary)
        .args(["run", "--config"])
        .arg(config)
        .env(
            "AUDITFLOW_LOG",
            std::env::var("DRAIN_LOG_LEVEL").unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let assigned = Arc::new(Mutex::new(None));
    let stderr = child.stderr.take().unwrap();
    let seen = assigned.clone();
    // `DRAIN_LOG=path` keeps the process's whole log, to read what it did while draining.
    let mut keep = std::env::var_os("DRAIN_LOG").map(|p| std::fs::File::create(p).unwrap());
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if let Some(f) = keep.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            if line.contains("partitions assigned") {
                seen.lock().unwrap().get_or_insert(Instant::now());
            }
            if line.contains("ERROR") {
                eprintln!("auditflow: {line}");
            }
        }
    });
    Process { child, assigned }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

struct Drained {
    rate: f64,
    per_cpu_second: f64,
    /// The part of that CPU time spent in the kernel.
    kernel_share: f64,
    peak_rss_mb: f64,
    window_mb: f64,
    /// Resident pages backed by files (the binary's code, shared libraries) at the end of the
    /// drain: part of the peak RSS, but not memory the process allocated.
    mapped_files_mb: f64,
    start_ms: u128,
    after_assignment_ms: u128,
}

/// Drains the backlog of `n` events with a fresh consumer group, then measures latency at half
/// the drain rate on the same process.
async fn run_mode(
    mode: Mode,
    bootstrap: &str,
    n: usize,
    partitions: i32,
    samples: &[serde_json::Value],
) -> (Drained, [u64; 4], f64) {
    let dir = tempfile::tempdir().unwrap();
    let (receiver, url) = start_receiver().await;
    let http = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let group = format!("drain-{}", rand::random::<u32>());
    let config = write_config(dir.path(), bootstrap, &url, &group, mode, &http);
    let started = Instant::now();
    let process = spawn(&config);
    let pid = process.child.id();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut cpu_at_first = None;
    while receiver.events.load(Ordering::Relaxed) < n as u64 {
        assert!(Instant::now() < deadline, "backlog not drained");
        if cpu_at_first.is_none() && receiver.events.load(Ordering::Relaxed) > 0 {
            cpu_at_first = Some(cpu_seconds(pid));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (user, system) = cpu_seconds(pid);
    let (user_at_first, system_at_first) = cpu_at_first.unwrap_or((0.0, 0.0));
    let (user, system) = (user - user_at_first, system - system_at_first);
    let cpu = user + system;
    let first = receiver.first.lock().unwrap().unwrap();
    let last = receiver.last.lock().unwrap().unwrap();
    let span = (last - first).as_secs_f64();
    let assigned = process.assigned.lock().unwrap().unwrap_or(started);
    let drained = Drained {
        rate: n as f64 / span,
        per_cpu_second: n as f64 / cpu.max(0.01),
        kernel_share: system / cpu.max(0.01),
        peak_rss_mb: status_kb(pid, "VmHWM:") as f64 / 1024.0,
        window_mb: scrape_sum(&http, "auditflow_window_bytes").await as f64 / 1e6,
        mapped_files_mb: status_kb(pid, "RssFile:") as f64 / 1024.0,
        start_ms: (first - started).as_millis(),
        after_assignment_ms: first.saturating_duration_since(assigned).as_millis(),
    };

    // Latency at half of the drain rate, on the same process.
    *receiver.latency.lock().unwrap() = Some(Histogram::new_with_bounds(1, 600_000, 3).unwrap());
    let base = receiver.events.load(Ordering::Relaxed);
    // `DRAIN_LATENCY_RATE` fixes the rate instead, so builds that drain at different speeds are
    // compared under the same load.
    let rate = std::env::var("DRAIN_LATENCY_RATE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(drained.rate / 2.0);
    let seconds = 15.0;
    // Not bounded by what the mock broker keeps (the newest 5 MB per partition): a process more
    // than that behind loses records, and the phase below says so instead of timing them.
    let total = (rate * seconds) as usize;
    let p = producer(bootstrap);
    // A new producer looks the topic up on its first send, and holds its records until the
    // answer comes: that belongs to the producer's start, not to the process's latency.
    let warming = p.clone();
    tokio::task::spawn_blocking(move || {
        warming
            .client()
            .fetch_metadata(Some(TOPIC), Duration::from_secs(10))
            .map(|_| ())
    })
    .await
    .unwrap()
    .unwrap();
    let cpu_before = (cpu_seconds(pid), cpu_seconds(std::process::id()));
    let tick = Duration::from_millis(5);
    let mut interval = tokio::time::interval(tick);
    let began = Instant::now();
    let mut produced = 0;
    let mut pending = Vec::new();
    while produced < total {
        interval.tick().await;
        let due = ((began.elapsed().as_secs_f64() * rate) as usize).min(total);
        let now = chrono::Utc::now();
        let batch: Vec<(usize, Vec<u8>)> = (produced..due)
            .map(|i| (n + i, support::event_bytes(samples, n + i, now)))
            .collect();
        produced = due;
        let p = p.clone();
        pending.push(tokio::spawn(async move {
            produce(&p, TOPIC, latency_partitions(partitions), batch).await
        }));
    }
    for h in pending {
        h.await.unwrap();
    }
    // Until everything arrived, or nothing more for 10 s: a process that fell more than 5 MB per
    // partition behind lost the oldest records to the mock broker, and that is reported (the
    // percentiles then leave out the records that waited longest).
    let mut seen = (receiver.events.load(Ordering::Relaxed), Instant::now());
    loop {
        let now = receiver.events.load(Ordering::Relaxed);
        if now >= base + total as u64 {
            break;
        }
        if now != seen.0 {
            seen = (now, Instant::now());
        } else if seen.1.elapsed() > Duration::from_secs(10) {
            println!(
                "drain/{}: latency phase short: {} of {total} delivered; the mock broker dropped the rest (the process fell more than 5 MB per partition behind), so the percentiles below leave out the slowest",
                mode.name(),
                now - base
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let achieved = total as f64 / began.elapsed().as_secs_f64();
    // Where the two cores went during the phase: the process's CPU per event, and the harness's
    // own share (producer, mock broker and receiver), which sets how much is left for the process.
    let (process_cpu, harness_cpu) = (cpu_seconds(pid), cpu_seconds(std::process::id()));
    let used = |(a, b): (f64, f64), (c, d): (f64, f64)| (a + b) - (c + d);
    let elapsed = began.elapsed().as_secs_f64();
    eprintln!(
        "drain: latency phase: process {:.0} events per CPU-second ({:.0}% of a core), harness {:.0}% of a core",
        total as f64 / used(process_cpu, cpu_before.0).max(1e-9),
        100.0 * used(process_cpu, cpu_before.0) / elapsed,
        100.0 * used(harness_cpu, cpu_before.1) / elapsed
    );
    let h = receiver.latency.lock().unwrap().take().unwrap();
    let timeline = std::mem::take(&mut *receiver.timeline.lock().unwrap());
    if let Some(&(start, _, _)) = timeline.first() {
        for (slot, n, worst) in timeline.iter().filter(|s| Some(s.2) >= receiver.timeline_worst_ms) {
            eprintln!(
                "drain: timeline +{} ms (at {} ms since the epoch): {n} events, worst {worst} ms",
                (slot - start) * 100,
                slot * 100
            );
        }
    }
    let percentiles = [0.5, 0.9, 0.99, 0.999].map(|q| h.value_at_quantile(q));
    drop(process);
    (drained, percentiles, achieved)
}

/// How fast a bare librdkafka consumer (no processing) drains the backlog: the ceiling the mock
/// cluster sets for every mode.
/// Timing the live records that follow a backlog: the reader tells `caught_up` once it has read
/// the `backlog` records, then records each later one's latency in `histogram`.
struct LiveTiming<'a> {
    backlog: usize,
    caught_up: std::sync::mpsc::Sender<()>,
    histogram: &'a mut Histogram<u64>,
}

fn broker_ceiling(bootstrap: &str, n: usize, mut timing: Option<LiveTiming<'_>>) -> f64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("ceiling-{}", rand::random::<u32>()))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("fetch.wait.max.ms", "5")
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .unwrap();
    consumer.subscribe(&[TOPIC]).unwrap();
    let mut seen = 0;
    let mut first = None;
    while seen < n {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            if let Some(t) = timing.as_mut() {
                if seen + 1 == t.backlog {
                    let _ = t.caught_up.send(());
                }
                if seen >= t.backlog
                    && let Some(ms) = rdkafka::Message::timestamp(&m).to_millis()
                {
                    t.histogram
                        .saturating_record((chrono::Utc::now().timestamp_millis() - ms).max(1) as u64);
                }
            }
            seen += 1;
        }
    }
    n as f64 / first.unwrap().elapsed().as_secs_f64()
}

fn main() {
    // `cargo test --benches` runs benches without `--bench`: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("DRAIN_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 5_000 } else { 300_000 });
    let modes: Vec<Mode> = match std::env::var("DRAIN_MODES").as_deref() {
        Ok("gzip") => vec![Mode::Gzip],
        Ok("acks") => vec![Mode::GzipAcks],
        Ok("plain") => vec![Mode::Plain],
        Ok("broker") => Vec::new(),
        _ if quick => vec![Mode::Gzip],
        _ => vec![Mode::Gzip, Mode::GzipAcks, Mode::Plain],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let samples = match std::env::var("DRAIN_MIX").as_deref() {
            Ok("realistic") => support::realistic_mix(support::samples()),
            _ => support::samples(),
        };
        let mean = samples.iter().map(|s| serde_json::to_vec(s).unwrap().len() + 40).sum::<usize>() / samples.len();
        let partitions = (n * mean).div_ceil(support::PARTITION_BUDGET).max(6) as i32;
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic(TOPIC, partitions, 1).unwrap();
        cluster.create_topic("confluent-metrics", 1, 1).unwrap();
        cluster.create_topic("auditflow-dead-letter", 1, 1).unwrap();
        let bootstrap = cluster.bootstrap_servers();
        let p = producer(&bootstrap);
        let loading = Instant::now();
        // A backlog's events span time, in order: the rules' event-time clocks advance while it
        // drains, so rules are evaluated as it goes (with one timestamp for all, every row
        // would wait for the clock until the backlog ended, and the drain would skip the rules).
        let start = chrono::Utc::now() - BACKLOG_SPAN;
        let step = BACKLOG_SPAN / n as i32;
        for chunk in (0..n).collect::<Vec<_>>().chunks(50_000) {
            let payloads = chunk
                .iter()
                .map(|&i| (i, support::event_bytes(&samples, i, start + step * i as i32)))
                .collect();
            produce(&p, TOPIC, partitions, payloads).await;
        }
        println!(
            "drain: {n} events (~{mean} bytes) preloaded over {partitions} partitions in {:.1} s",
            loading.elapsed().as_secs_f64()
        );
        if std::env::var("DRAIN_MODES").as_deref() == Ok("broker") {
            let b = bootstrap.clone();
            let rate = tokio::task::spawn_blocking(move || broker_ceiling(&b, n, None))
                .await
                .unwrap();
            println!("drain/broker: a bare consumer in this process reads {rate:.0} events/s from the mock cluster");
            // The harness's own latency: produce at 10,000 events/s (or DRAIN_BROKER_RATE), read
            // with a bare consumer.
            let broker_rate: f64 = std::env::var("DRAIN_BROKER_RATE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(10_000.0);
            let total = (broker_rate * 10.0) as usize;
            let b = bootstrap.clone();
            let (caught_up_tx, caught_up) = std::sync::mpsc::channel();
            let reader = tokio::task::spawn_blocking(move || {
                let mut h = Histogram::<u64>::new_with_bounds(1, 600_000, 3).unwrap();
                let timing = LiveTiming {
                    backlog: n,
                    caught_up: caught_up_tx,
                    histogram: &mut h,
                };
                broker_ceiling(&b, n + total, Some(timing));
                [0.5, 0.99].map(|q| h.value_at_quantile(q))
            });
            tokio::task::spawn_blocking(move || caught_up.recv()).await.unwrap().unwrap();
            let p = producer(&bootstrap);
            let began = Instant::now();
            let mut produced = 0;
            let mut interval = tokio::time::interval(Duration::from_millis(5));
            let mut pending = Vec::new();
            while produced < total {
                interval.tick().await;
                let due = ((began.elapsed().as_secs_f64() * broker_rate) as usize).min(total);
                let now = chrono::Utc::now();
                let batch: Vec<(usize, Vec<u8>)> = (produced..due).map(|i| (n + i, support::event_bytes(&samples, n + i, now))).collect();
                produced = due;
                let p = p.clone();
                pending.push(tokio::spawn(async move { produce(&p, TOPIC, latency_partitions(partitions), batch).await }));
            }
            let [p50, p99] = reader.await.unwrap();
            println!("drain/broker: producer -> bare consumer at {broker_rate:.0} events/s: p50 {p50} ms, p99 {p99} ms");
            return;
        }
        for mode in modes {
            let (d, [p50, p90, p99, p999], achieved) = run_mode(mode, &bootstrap, n, partitions, &samples).await;
            let load = if std::env::var("DRAIN_LATENCY_RATE").is_ok() {
                "fixed rate"
            } else {
                "half of peak"
            };
            println!(
                "drain/{}: {:.0} events/s steady, {:.0} events per CPU-second ({:.0}% of it in the kernel), peak RSS {:.0} MB (window {:.0} MB, rest {:.0} MB of which {:.0} MB mapped files), first event {} ms after start, {} ms after assignment",
                mode.name(),
                d.rate,
                d.per_cpu_second,
                d.kernel_share * 100.0,
                d.peak_rss_mb,
                d.window_mb,
                d.peak_rss_mb - d.window_mb,
                d.mapped_files_mb,
                d.start_ms,
                d.after_assignment_ms,
            );
            println!(
                "drain/{}: at {achieved:.0} events/s ({load}): latency event time -> HEC received p50 {p50} ms, p90 {p90} ms, p99 {p99} ms, p99.9 {p999} ms",
                mode.name()
            );
        }
        drop(cluster);
    });
}
