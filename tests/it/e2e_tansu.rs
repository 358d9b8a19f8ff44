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

struct Tansu(Child);

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

fn start_tansu() -> (Tansu, String) {
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
async fn create_topics(bootstrap: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let topics = [
        NewTopic::new("confluent-audit-log-events", 2, TopicReplication::Fixed(1)),
        NewTopic::new("confluent-metrics", 1, TopicReplication::Fixed(1)),
        NewTopic::new("auditflow-dead-letter", 1, TopicReplication::Fixed(1)),
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

/// `kill -9` mid-stream, then a restart: every produced id is delivered; duplicates are bounded
/// by one HEC request (what was acknowledged but not yet recorded when the process died), and
/// re-read records that were already delivered are dropped by the on-disk dedupe store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_loses_nothing() {
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
    .replace(
        "[rules]",
        &format!("dedupe_dir = \"{}\"\n[rules]", dir.path().join("dedupe").display()),
    );
    assert!(
        text.contains("batch_max_records = 20")
            && text.contains("batch_max_events = 20")
            && text.contains("dedupe_dir")
    );
    let file = dir.path().join("run.toml");
    std::fs::write(&file, text).unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_auditflow"))
            .args(["run", "--config", file.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };

    let mut first = run();
    eventually(Duration::from_secs(60), "some events at HEC", || {
        hec.audit_ids().len() >= 60
    })
    .await;
    first.kill().unwrap(); // SIGKILL: no drain, no final commit
    first.wait().unwrap();
    let before = hec.audit_ids().len();
    assert!(
        before < ids.len(),
        "the kill must land mid-stream ({before} of {} delivered)",
        ids.len()
    );

    let mut second = run();
    eventually(Duration::from_secs(90), "every id at HEC after the restart", || {
        let got = hec.audit_ids();
        ids.iter().all(|id| got.contains(id))
    })
    .await;
    second.kill().unwrap();
    second.wait().unwrap();
    let total = hec.of_sourcetype("confluent:audit").len();
    let duplicates = total - ids.len();
    eprintln!("kill -9 after {before} distinct ids delivered: {duplicates} duplicates");
    // The HEC sink has one request in flight; the committer records the previous one's ids
    // while the next is sent, so at most two requests' events can be unrecorded at the kill.
    assert!(
        duplicates <= 40,
        "{duplicates} duplicates: more than two HEC requests' worth"
    );
}
