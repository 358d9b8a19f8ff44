//! The same end to end against a separate broker process: tansu (Apache Kafka compatible).

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use auditflow::config::Config;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use tokio_util::sync::CancellationToken;

use crate::e2e_mock::{config_text, produce_scenario};
use crate::support::eventually;
use crate::support::hec::HecReceiver;
use crate::support::kafka::{committed, read_all};

pub(crate) struct Tansu(Child);

/// A child process killed when the test ends, pass or fail.
pub(crate) struct Process(pub(crate) Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tansu_binary() -> String {
    if let Ok(p) = std::env::var("TANSU") {
        return p;
    }
    let home =
        std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    let installed = format!("{home}/bin/tansu");
    if std::path::Path::new(&installed).exists() {
        installed
    } else {
        "tansu".into()
    }
}

pub(crate) fn start_tansu() -> (Tansu, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(tansu_binary())
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting tansu ({}): {e}; .ci/run installs it", tansu_binary()));
    let tansu = Tansu(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "tansu did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    (tansu, format!("127.0.0.1:{port}"))
}

/// The audit (2 partitions), metrics and dead-letter topics.
pub(crate) async fn create_topics(bootstrap: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let topics = [
        NewTopic::new("confluent-audit-log-events", 2, TopicReplication::Fixed(1)),
        NewTopic::new("confluent-metrics", 1, TopicReplication::Fixed(1)),
        NewTopic::new("auditflow-dead-letter", 1, TopicReplication::Fixed(1)),
        // The config names an alerts topic: a sink, so the pipeline waits for it to exist.
        NewTopic::new("auditflow-alerts", 1, TopicReplication::Fixed(1)),
    ];
    for r in admin.create_topics(&topics, &AdminOptions::new()).await.unwrap() {
        r.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_broker_to_hec_and_sql() {
    let (_tansu, bootstrap) = start_tansu();
    create_topics(&bootstrap).await;

    let hec = HecReceiver::start("00000000-0000-0000-0000-000000000001").await;
    let dir = tempfile::tempdir().unwrap();
    let group = "Tech00-auditflow-tansu";
    let config = Config::parse(
        &config_text(&bootstrap, group, &hec.url(), None, &dir.path().join("o.jsonl")),
        "t.toml",
    )
    .unwrap();
    let produced = produce_scenario(&bootstrap).await;
    // A 10 MB record (the mock cluster keeps only 5 MB per partition, so this case lives here).
    let huge = vec![b'x'; 10 * 1024 * 1024];
    let p = crate::support::kafka::producer(&bootstrap);
    crate::support::kafka::produce(&p, "confluent-audit-log-events", Some(1), &huge, &[]).await;

    let shutdown = CancellationToken::new();
    let running = auditflow::pipeline::start(config, shutdown.clone()).await.unwrap();
    let expected = produced.audit_ids.clone();
    eventually(Duration::from_secs(90), "every audit event at HEC", || {
        let got: HashSet<String> = hec.audit_ids();
        expected.is_subset(&got)
    })
    .await;
    assert_eq!(hec.of_sourcetype("confluent:audit").len(), produced.audit_ids.len());
    eventually(Duration::from_secs(30), "the three shipped alerts", || {
        let rules: HashSet<String> = hec.alert_rules();
        ["auth-failure-burst", "cross-namespace-denied", "egress-bytes-high"]
            .iter()
            .all(|r| rules.contains(*r))
    })
    .await;
    let (_, batches) = running
        .query
        .query("SELECT count(*) AS n FROM audit_events")
        .await
        .unwrap();
    let n = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(n as usize, produced.audit_ids.len());

    let dead = tokio::task::spawn_blocking({
        let b = bootstrap.clone();
        move || read_all(&b, "auditflow-dead-letter", 1, 4, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(dead.len(), produced.num_poison + 1);
    let class = |d: &crate::support::kafka::ReadRecord| d.headers["__connect.errors.exception.class.name"].clone();
    assert_eq!(
        dead.iter().filter(|d| class(d) == "NotJson").count(),
        produced.num_poison
    );
    let too_large = dead.iter().find(|d| class(d) == "RecordTooLarge").unwrap();
    assert!(
        too_large.payload == huge,
        "the 10 MB record is parked whole and unchanged"
    );

    shutdown.cancel();
    running.wait(Duration::from_secs(20)).await.unwrap();
    let offsets = tokio::task::spawn_blocking({
        let b = bootstrap.clone();
        move || committed(&b, group, "confluent-audit-log-events", 2)
    })
    .await
    .unwrap();
    let total: i64 = offsets.iter().map(|o| o.unwrap_or(0)).sum();
    assert_eq!(
        total as usize,
        8 + 50 + 1 + 1 + produced.num_poison + 1,
        "committed offsets cover every audit record: {offsets:?}"
    );
}

/// `kill -9` mid-stream, then a restart with default settings: every produced id is delivered;
/// duplicates are bounded by what was in flight (acknowledged but not yet recorded when the
/// process died), and re-read records that were already delivered are dropped by the on-disk
/// dedupe store that `data_dir` (default `./data`) turns on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_loses_nothing() {
    let _alone = crate::support::exclusive().await;
    let (_tansu, bootstrap) = start_tansu();
    create_topics(&bootstrap).await;
    let p = crate::support::kafka::producer(&bootstrap);
    let mut ids = Vec::new();
    for _ in 0..400 {
        let (id, bytes) = crate::support::audit_event(
            "io.confluent.kafka.server/authentication",
            "User:sa-1",
            "K1",
            serde_json::json!({"result": {"status": "SUCCESS"}}),
        );
        crate::support::kafka::produce(&p, "confluent-audit-log-events", None, &bytes, &[]).await;
        ids.push(id);
    }

    let hec = HecReceiver::start("00000000-0000-0000-0000-000000000001").await;
    // A slow indexer (about 200 events/s) so the kill lands mid-stream.
    hec.state.lock().unwrap().delay = Duration::from_millis(100);
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &bootstrap,
        "Tech00-auditflow-kill9",
        &hec.url(),
        None,
        &dir.path().join("o.jsonl"),
    )
    .replace(
        "batch_linger = \"20ms\"\n[kafka.properties]",
        "batch_linger = \"20ms\"\nbatch_max_records = 20\n[kafka.properties]",
    )
    .replace(
        "index = \"kafka_audit\"\n",
        "index = \"kafka_audit\"\nbatch_max_events = 20\n",
    )
    // No data_dir and no dedupe_dir: the defaults (./data, in the process's working directory)
    // must make the restart safe.
    .lines()
    .filter(|l| !l.starts_with("data_dir"))
    .collect::<Vec<_>>()
    .join("\n");
    assert!(
        text.contains("batch_max_records = 20")
            && text.contains("batch_max_events = 20")
            && !text.contains("dedupe_dir")
            && !text.contains("data_dir")
    );
    let file = dir.path().join("run.toml");
    std::fs::write(&file, text).unwrap();
    let run = || {
        Process(
            Command::new(env!("CARGO_BIN_EXE_auditflow"))
                .args(["run", "--config", file.to_str().unwrap()])
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };

    let mut first = run();
    eventually(Duration::from_secs(60), "some events at HEC", || {
        hec.audit_ids().len() >= 60
    })
    .await;
    first.0.kill().unwrap(); // SIGKILL: no drain, no final commit
    first.0.wait().unwrap();
    let before = hec.audit_ids().len();
    assert!(
        before < ids.len(),
        "the kill must land mid-stream ({before} of {} delivered)",
        ids.len()
    );

    let second = run();
    eventually(Duration::from_secs(90), "every id at HEC after the restart", || {
        let got = hec.audit_ids();
        ids.iter().all(|id| got.contains(id))
    })
    .await;
    drop(second);
    let total = hec.of_sourcetype("confluent:audit").len();
    let duplicates = total - ids.len();
    eprintln!("kill -9 after {before} distinct ids delivered: {duplicates} duplicates");
    // Each of the HEC sink's two connections has one request in flight, and the committer
    // records the ids of what was accepted while the next requests go out: at most three
    // requests' events (of 20) can be accepted but unrecorded at the kill.
    assert!(
        duplicates <= 60,
        "{duplicates} duplicates: more than three HEC requests' worth"
    );
}

/// A resident-memory figure of a process (`VmRSS`, `RssAnon`, ...) from `/proc/PID/status`.
fn rss_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Sum of the samples of `metric` (all label sets) in a Prometheus text exposition.
fn metric_sum(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// HEC answers 503 code 9 for 30 s while 40 MB of audit events arrive: the consumer pauses, so
/// only a bounded part is read and the process's anonymous resident memory minus the SQL
/// window's own bytes stays under a stated bound (docs/PRODUCT.md §9: 150 MB); then HEC recovers, every event arrives,
/// and SIGTERM drains, commits and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hec_busy_for_30s_keeps_memory_bounded_and_loses_nothing() {
    const BOUND: u64 = 150 * 1024 * 1024;
    const N: usize = 40_000;
    let (_tansu, bootstrap) = start_tansu();
    create_topics(&bootstrap).await;
    let hec = HecReceiver::start("00000000-0000-0000-0000-000000000001").await;
    hec.set_busy(true);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let group = "Tech00-auditflow-outage-memory";
    let text = config_text(&bootstrap, group, &hec.url(), None, &dir.path().join("o.jsonl")).replace(
        "http_listen = \"127.0.0.1:0\"",
        &format!("http_listen = \"127.0.0.1:{port}\""),
    );
    assert!(text.contains(&format!(":{port}\"")));
    let file = dir.path().join("run.toml");
    std::fs::write(&file, text).unwrap();
    // AUDITFLOW_BIN measures another build (e.g. target/release/auditflow) with the same test.
    let binary = std::env::var("AUDITFLOW_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_auditflow").to_owned());
    // The service's log goes to a file, shown if the test fails.
    let log = dir.path().join("auditflow.log");
    let mut child = Process(
        Command::new(&binary)
            .args(["run", "--config", file.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let log_tail = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    };
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(std::time::Instant::now() < deadline, "auditflow never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_bytes(pid, "VmRSS").unwrap();

    // 40,000 events of about 1 KB, produced while HEC is busy.
    let p = crate::support::kafka::producer(&bootstrap);
    let padding = "c".repeat(600);
    let mut ids = HashSet::new();
    for chunk in 0..N / 1000 {
        let mut sends = Vec::new();
        for i in 0..1000 {
            let (id, bytes) = crate::support::audit_event(
                "io.confluent.kafka.server/authorization",
                "User:sa-r8v2kq",
                "KQ4ZT7WJ3NFXD2LB",
                serde_json::json!({
                    "methodName": "kafka.Produce",
                    "authorizationInfo": {"granted": true, "operation": "Write", "resourceType": "Topic", "resourceName": format!("Tech01-orders-{}", chunk * 1000 + i)},
                    "request": {"correlation_id": "1", "client_id": padding},
                }),
            );
            ids.insert(id);
            let p = p.clone();
            sends.push(async move {
                crate::support::kafka::produce(&p, "confluent-audit-log-events", None, &bytes, &[]).await
            });
        }
        futures::future::join_all(sends).await;
    }

    let started = std::time::Instant::now();
    let (mut worst, mut peak_rss, mut read) = (0u64, 0u64, 0f64);
    while started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(response) = client.get(format!("{base}/metrics")).send().await else {
            continue;
        };
        let text = response.text().await.unwrap_or_default();
        let window = metric_sum(&text, "auditflow_window_bytes") as u64;
        read = metric_sum(&text, "auditflow_records_in_total");
        // Anonymous memory: what the process allocated. File-backed pages (about 70 MB: the
        // mapped executable and libraries) are shared and reclaimable, and do not grow.
        let anon = rss_bytes(pid, "RssAnon").expect("the process is running");
        worst = worst.max(anon.saturating_sub(window));
        peak_rss = peak_rss.max(rss_bytes(pid, "VmRSS").unwrap_or(0));
    }
    eprintln!(
        "30 s HEC outage: read {read} of {N} records; VmRSS idle {} MB, peak {} MB; peak anonymous RSS minus window bytes {} MB",
        idle >> 20,
        peak_rss >> 20,
        worst >> 20
    );
    assert!(hec.audit_ids().is_empty());
    assert!(
        read > 0.0 && read < (N / 2) as f64,
        "paused: only a bounded part of the backlog is read ({read})"
    );
    assert!(
        worst < BOUND,
        "anonymous RSS minus window bytes peaked at {} MB",
        worst >> 20
    );

    hec.set_busy(false);
    // Counting is cheap; the ids are checked once everything is there.
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let (at_hec, refused) = {
            let s = hec.state.lock().unwrap();
            (s.events.len(), s.num_refused)
        };
        if at_hec >= N {
            break;
        }
        if std::time::Instant::now() > deadline {
            let metrics = match client.get(format!("{base}/metrics")).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(e) => e.to_string(),
            };
            let wanted: Vec<&str> = metrics
                .lines()
                .filter(|l| {
                    !l.starts_with('#') && (l.contains("records_in") || l.contains("sink_") || l.contains("lag"))
                })
                .collect();
            // What the broker itself holds, read back by a fresh consumer.
            let in_topic = tokio::task::spawn_blocking({
                let b = bootstrap.clone();
                move || read_all(&b, "confluent-audit-log-events", 2, N, Duration::from_secs(30)).len()
            })
            .await
            .unwrap();
            panic!(
                "after 240 s HEC has {at_hec} of {N} events ({refused} requests refused while busy); \
                 a fresh consumer reads {in_topic} from the topic\nmetrics:\n{}\nlog tail:\n{}",
                wanted.join("\n"),
                log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let delivered = hec.audit_ids();
    assert!(ids.iter().all(|id| delivered.contains(id)));
    // SIGTERM: drain, commit, exit 0.
    Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let committed = tokio::task::spawn_blocking({
        let b = bootstrap.clone();
        move || committed(&b, group, "confluent-audit-log-events", 2)
    })
    .await
    .unwrap();
    assert_eq!(committed.iter().map(|o| o.unwrap_or(0)).sum::<i64>(), N as i64);
}
