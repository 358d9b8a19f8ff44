//! Delivery under faults: every produced id ends up delivered or dead-lettered, none lost, and
//! nothing is committed that was not delivered.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use auditflow::config::Config;
use rdkafka::mocking::MockCluster;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::e2e_mock::config_text;
use crate::support::hec::HecReceiver;
use crate::support::kafka::{committed, produce, producer, read_all};
use crate::support::otlp::OtlpReceiver;
use crate::support::{audit_event, eventually};

pub(crate) const AUDIT: &str = "confluent-audit-log-events";
pub(crate) const TOKEN: &str = "00000000-0000-0000-0000-000000000001";

pub(crate) struct Setup {
    pub cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    pub bootstrap: String,
    pub ids: Vec<String>,
}

pub(crate) async fn setup(n: usize) -> Setup {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(AUDIT, 2, 1).unwrap();
    cluster.create_topic("confluent-metrics", 1, 1).unwrap();
    cluster.create_topic("auditflow-dead-letter", 1, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let p = producer(&bootstrap);
    let mut ids = Vec::new();
    for i in 0..n {
        let (id, bytes) = audit_event(
            "io.confluent.kafka.server/authorization",
            "User:sa-r8v2kq",
            "KQ4ZT7WJ3NFXD2LB",
            json!({"methodName": "kafka.Produce", "authorizationInfo": {"granted": true, "operation": "Write", "resourceType": "Topic", "resourceName": format!("Tech01-orders-{i}")}}),
        );
        produce(&p, AUDIT, None, &bytes, &[]).await;
        ids.push(id);
    }
    Setup {
        cluster,
        bootstrap,
        ids,
    }
}

/// The end-to-end test config for `group`, sending to `hec` and a file in `dir`.
pub(crate) fn default_text(bootstrap: &str, group: &str, hec: &HecReceiver, dir: &tempfile::TempDir) -> String {
    config_text(bootstrap, group, &hec.url(), None, &dir.path().join("o.jsonl"))
}

/// `text` with more `[server]` settings (one per line) after `http_listen`.
pub(crate) fn with_server(text: &str, settings: &str) -> String {
    let listen = "http_listen = \"127.0.0.1:0\"";
    assert!(text.contains(listen), "the config has a [server] http_listen");
    text.replace(listen, &format!("{listen}\n{settings}"))
}

/// Starts a pipeline from config text.
pub(crate) async fn start(text: &str) -> (auditflow::pipeline::RunningPipeline, CancellationToken) {
    crate::support::logs();
    let config = Config::parse(text, "faults.toml").unwrap();
    let shutdown = CancellationToken::new();
    let running = auditflow::pipeline::start(config, shutdown.clone()).await.unwrap();
    (running, shutdown)
}

/// Stops a pipeline cleanly and checks that exactly `expected` audit records were committed.
pub(crate) async fn stop(
    running: auditflow::pipeline::RunningPipeline,
    shutdown: CancellationToken,
    bootstrap: &str,
    group: &'static str,
    expected: i64,
) {
    shutdown.cancel();
    running.wait(Duration::from_secs(20)).await.unwrap();
    assert_eq!(committed_total(bootstrap, group).await, Some(expected));
}

/// Waits until `group` has committed `expected` audit records.
async fn committed_eventually(bootstrap: &str, group: &'static str, expected: i64, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let committed = committed_total(bootstrap, group).await;
        if committed == Some(expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {expected} committed (have {committed:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn committed_total(bootstrap: &str, group: &'static str) -> Option<i64> {
    let b = bootstrap.to_owned();
    let offsets = tokio::task::spawn_blocking(move || committed(&b, group, AUDIT, 2))
        .await
        .unwrap();
    if offsets.iter().all(Option::is_none) {
        None
    } else {
        Some(offsets.iter().map(|o| o.unwrap_or(0)).sum())
    }
}

/// HEC answers 400 code 6 for one event of a batch: that event is dead-lettered with the HEC
/// code and text, the rest is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hec_rejecting_one_event_dead_letters_it_and_delivers_the_rest() {
    let s = setup(40).await;
    let hec = HecReceiver::start(TOKEN).await;
    let poisoned = s.ids[17].clone();
    hec.state.lock().unwrap().poison_ids.insert(poisoned.clone());
    let dir = tempfile::tempdir().unwrap();
    let group = "Tech00-faults-code6";
    let (running, shutdown) = start(&default_text(&s.bootstrap, group, &hec, &dir)).await;
    eventually(Duration::from_secs(30), "the other 39 events at HEC", || {
        hec.audit_ids().len() == 39
    })
    .await;
    let dead = tokio::task::spawn_blocking({
        let b = s.bootstrap.clone();
        move || read_all(&b, "auditflow-dead-letter", 1, 1, Duration::from_secs(20))
    })
    .await
    .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].headers["__connect.errors.exception.class.name"], "HecRejected");
    assert!(dead[0].headers["__connect.errors.exception.message"].contains("code 6"));
    assert!(String::from_utf8_lossy(&dead[0].payload).contains(&poisoned));
    let delivered = hec.audit_ids();
    for id in &s.ids {
        assert!(delivered.contains(id) || *id == poisoned, "{id} lost");
    }
    assert!(!delivered.contains(&poisoned));
    stop(running, shutdown, &s.bootstrap, group, 40).await;
    drop(s.cluster);
}

/// HEC refuses the token (403 code 4) until it is fixed: nothing committed meanwhile, nothing
/// lost, delivery resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hec_bad_token_holds_everything_until_fixed() {
    let s = setup(30).await;
    let hec = HecReceiver::start("a-different-token").await;
    let dir = tempfile::tempdir().unwrap();
    let group = "Tech00-faults-403";
    let (running, shutdown) = start(&default_text(&s.bootstrap, group, &hec, &dir)).await;
    eventually(Duration::from_secs(30), "HEC to refuse the token", || {
        hec.state.lock().unwrap().num_requests >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(hec.audit_ids().is_empty());
    assert_eq!(
        committed_total(&s.bootstrap, group).await,
        None,
        "nothing committed while HEC refuses"
    );
    // Loudly: an alert reaches the other sinks and the alerts table, and /metrics says so.
    let out = dir.path().join("o.jsonl");
    eventually(
        Duration::from_secs(10),
        "the refused-token alert in the file sink",
        || std::fs::read_to_string(&out).is_ok_and(|t| t.contains("\"rule_id\":\"auditflow-hec-refused\"")),
    )
    .await;
    assert_eq!(running.telemetry.hec_refused.get(), 1);
    let (_, rows) = running
        .query
        .query("SELECT status FROM alerts WHERE rule_id = 'auditflow-hec-refused'")
        .await
        .unwrap();
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    hec.state.lock().unwrap().token = TOKEN.into();
    // The sink backs off up to 30 s between tries while the token is refused.
    eventually(
        Duration::from_secs(60),
        "every event at HEC once the token is fixed",
        || hec.audit_ids().len() == 30,
    )
    .await;
    // Splunk itself learns of the outage, firing then resolved, once it accepts again.
    eventually(
        Duration::from_secs(20),
        "the refused alert, firing and resolved, at HEC",
        || {
            let statuses: HashSet<String> = hec
                .of_sourcetype("auditflow:alert")
                .iter()
                .filter(|e| e["event"]["rule_id"] == "auditflow-hec-refused")
                .filter_map(|e| e["event"]["status"].as_str().map(str::to_owned))
                .collect();
            statuses.contains("firing") && statuses.contains("resolved")
        },
    )
    .await;
    assert_eq!(running.telemetry.hec_refused.get(), 0);
    stop(running, shutdown, &s.bootstrap, group, 30).await;
    drop(s.cluster);
}

/// The OTLP receiver is down for the first 30 s and comes up later: nothing is committed
/// meanwhile, and everything arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_receiver_down_then_up_loses_nothing() {
    let s = setup(25).await;
    let hec = HecReceiver::start(TOKEN).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let group = "Tech00-faults-otlp";
    let text = config_text(
        &s.bootstrap,
        group,
        &hec.url(),
        Some(&format!("http://127.0.0.1:{port}")),
        &dir.path().join("o.jsonl"),
    );
    let (running, shutdown) = start(&text).await;
    let down_since = std::time::Instant::now();
    eventually(Duration::from_secs(30), "HEC to get everything", || {
        hec.audit_ids().len() == 25
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(down_since.elapsed())).await;
    assert_eq!(
        committed_total(&s.bootstrap, group).await,
        None,
        "not committed while OTLP is down"
    );
    let otlp = OtlpReceiver::start_on(port).await;
    eventually(Duration::from_secs(60), "every event at the OTLP receiver", || {
        let r = otlp.received.lock().unwrap();
        let ids: HashSet<String> = r
            .logs
            .iter()
            .filter_map(|l| OtlpReceiver::attr(l, "cloudevents.event_id"))
            .collect();
        s.ids.iter().all(|id| ids.contains(id))
    })
    .await;
    stop(running, shutdown, &s.bootstrap, group, 25).await;
    drop(s.cluster);
}

/// SIGTERM mid-stream: the process stops fetching, drains, commits and exits 0; every
/// committed record was delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_commits_and_exits_zero() {
    let s = setup(300).await;
    let hec = HecReceiver::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let group = "Tech00-faults-sigterm";
    let file = dir.path().join("run.toml");
    std::fs::write(&file, default_text(&s.bootstrap, group, &hec, &dir)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_auditflow"))
        .args(["run", "--config", file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(30), "some events at HEC", || {
        !hec.audit_ids().is_empty()
    })
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "auditflow did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(exit.code(), Some(0), "clean exit");
    let delivered = hec.audit_ids();
    let committed = committed_total(&s.bootstrap, group).await.unwrap_or(0);
    assert!(committed > 0, "the drained batches were committed");
    assert_eq!(
        committed as usize,
        delivered.len(),
        "committed exactly what was delivered"
    );
    drop(s.cluster);
}

/// Indexer acknowledgement: some ackIds are acknowledged late and one never is; that batch is
/// sent again after the ack timeout, everything is delivered, the duplicates are counted, and
/// offsets are committed only once every batch is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hec_acknowledgements_late_and_lost() {
    let s = setup(60).await;
    let hec = HecReceiver::start(TOKEN).await;
    {
        let mut st = hec.state.lock().unwrap();
        st.acks_enabled = true;
        st.ack_after_polls = 2;
        st.never_ack.insert(0);
    }
    let dir = tempfile::tempdir().unwrap();
    let group = "Tech00-faults-acks";
    let text = default_text(&s.bootstrap, group, &hec, &dir).replace(
        "index = \"kafka_audit\"\n",
        "index = \"kafka_audit\"\nacknowledgements = true\nack_timeout = \"3s\"\nack_poll_interval = \"200ms\"\n",
    );
    assert!(text.contains("acknowledgements = true"));
    let (running, shutdown) = start(&text).await;
    eventually(Duration::from_secs(30), "every event at HEC", || {
        hec.audit_ids().len() == 60
    })
    .await;
    // The first request's ackId never comes: nothing can be committed before its copy reached
    // HEC. The resend counter moves only once HEC holds the copy, so it is read first.
    if running.telemetry.hec_resent_events.get() == 0 {
        assert_eq!(committed_total(&s.bootstrap, group).await, None);
    }
    committed_eventually(&s.bootstrap, group, 60, Duration::from_secs(60)).await;
    // Everything is acknowledged and committed: no send is in flight, so the counter and the
    // receiver are read at rest.
    let resent = running.telemetry.hec_resent_events.get() as usize;
    assert!(resent > 0, "the unacknowledged batch was sent again");
    let all = hec.of_sourcetype("confluent:audit").len();
    assert_eq!(all, 60 + resent, "duplicates are exactly the resent events");
    stop(running, shutdown, &s.bootstrap, group, 60).await;
    drop(s.cluster);
}

/// An acknowledgement that comes after `ack_timeout` still counts: the batch was sent again
/// meanwhile, but the late ack of the first send completes it, so resending stops (before,
/// every copy's ack was dropped at its own timeout and an indexer slower than `ack_timeout`
/// received copies forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hec_acknowledgement_after_the_timeout_completes_the_batch() {
    let s = setup(30).await;
    let hec = HecReceiver::start(TOKEN).await;
    {
        let mut st = hec.state.lock().unwrap();
        st.acks_enabled = true;
        // 25 polls 200 ms apart: every ackId comes at least 5 s after its send, past the 3 s
        // ack_timeout.
        st.ack_after_polls = 25;
    }
    let dir = tempfile::tempdir().unwrap();
    let group = "Tech00-faults-late-acks";
    let text = default_text(&s.bootstrap, group, &hec, &dir).replace(
        "index = \"kafka_audit\"\n",
        "index = \"kafka_audit\"\nacknowledgements = true\nack_timeout = \"3s\"\nack_poll_interval = \"200ms\"\n",
    );
    assert!(text.contains("acknowledgements = true"));
    let (running, shutdown) = start(&text).await;
    committed_eventually(&s.bootstrap, group, 30, Duration::from_secs(60)).await;
    let resent = running.telemetry.hec_resent_events.get() as usize;
    assert!(
        resent >= 30,
        "every ack came after the timeout, so every batch was sent again"
    );
    assert_eq!(hec.of_sourcetype("confluent:audit").len(), 30 + resent);
    stop(running, shutdown, &s.bootstrap, group, 30).await;
    drop(s.cluster);
}

/// HEC busy (503 code 9) for longer than `max.poll.interval.ms`: the partitions are paused and
/// the consumer keeps polling, so it stays in its group (no redelivery), and everything arrives
/// once HEC recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_hec_outage_pauses_and_keeps_the_group() {
    let s = setup(50).await;
    let hec = HecReceiver::start(TOKEN).await;
    hec.set_busy(true);
    let dir = tempfile::tempdir().unwrap();
    let group = "Tech00-faults-pause";
    let text = default_text(&s.bootstrap, group, &hec, &dir).replace(
        "\"session.timeout.ms\" = \"6000\"",
        "\"session.timeout.ms\" = \"6000\"\n\"max.poll.interval.ms\" = \"6000\"",
    );
    // One record per batch: the bounded queues to the sinks fill and the poll loop must wait.
    let text = text.replace(
        "batch_linger = \"20ms\"\n[kafka.properties]",
        "batch_linger = \"20ms\"\nbatch_max_records = 1\n[kafka.properties]",
    );
    assert!(text.contains("max.poll.interval.ms") && text.contains("batch_max_records = 1"));
    let (running, shutdown) = start(&text).await;
    eventually(Duration::from_secs(30), "HEC to refuse", || {
        hec.state.lock().unwrap().num_refused >= 1
    })
    .await;
    // Well past max.poll.interval.ms.
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(hec.audit_ids().is_empty());
    hec.set_busy(false);
    eventually(Duration::from_secs(60), "every event after HEC recovers", || {
        hec.audit_ids().len() == 50
    })
    .await;
    assert_eq!(
        running.telemetry.duplicates.get(),
        0,
        "no redelivery: the consumer never left its group"
    );
    assert_eq!(hec.of_sourcetype("confluent:audit").len(), 50);
    stop(running, shutdown, &s.bootstrap, group, 50).await;
    drop(s.cluster);
}

/// Produces `n` audit events with fresh ids; returns the ids.
async fn produce_more(bootstrap: &str, n: usize) -> Vec<String> {
    let p = producer(bootstrap);
    let mut ids = Vec::new();
    for _ in 0..n {
        let (id, bytes) = audit_event(
            "io.confluent.kafka.server/authentication",
            "User:sa-1",
            "K1",
            json!({"result": {"status": "SUCCESS"}}),
        );
        produce(&p, AUDIT, None, &bytes, &[]).await;
        ids.push(id);
    }
    ids
}

/// A second instance joins the consumer group mid-stream and leaves again: every produced id
/// reaches HEC (redeliveries of in-flight work are allowed), and the final commit covers all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_mid_stream_loses_nothing() {
    let s = setup(200).await;
    let hec = HecReceiver::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let group = "Tech00-faults-rebalance";
    let text = config_text(&s.bootstrap, group, &hec.url(), None, &dir.path().join("a.jsonl"));
    let (a, a_stop) = start(&text).await;
    eventually(Duration::from_secs(30), "first events at HEC", || {
        !hec.audit_ids().is_empty()
    })
    .await;

    let text_b = config_text(&s.bootstrap, group, &hec.url(), None, &dir.path().join("b.jsonl"));
    let (b, b_stop) = start(&text_b).await;
    let mut ids = s.ids.clone();
    ids.extend(produce_more(&s.bootstrap, 200).await);
    // The group rebalances to two members (with the mock cluster that can take a few rounds):
    // records keep coming until the second instance has been assigned some and delivered them.
    let b_out = dir.path().join("b.jsonl");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&b_out).map_or(0, |text| text.lines().count()) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the second instance was never assigned partitions and never delivered"
        );
        ids.extend(produce_more(&s.bootstrap, 10).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    b_stop.cancel();
    b.wait(Duration::from_secs(20)).await.unwrap(); // leaves: back to one member
    ids.extend(produce_more(&s.bootstrap, 100).await);

    eventually(Duration::from_secs(60), "every id at HEC", || {
        let got = hec.audit_ids();
        ids.iter().all(|id| got.contains(id))
    })
    .await;
    stop(a, a_stop, &s.bootstrap, group, ids.len() as i64).await;
    drop(s.cluster);
}

/// Broker errors injected on fetches and offset commits: retried by the client, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_errors_are_survived() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let s = setup(100).await;
    s.cluster.request_errors(
        RDKafkaApiKey::Fetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 5],
    );
    s.cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 3],
    );
    let hec = HecReceiver::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let group = "Tech00-faults-broker";
    let (running, shutdown) = start(&default_text(&s.bootstrap, group, &hec, &dir)).await;
    eventually(Duration::from_secs(60), "every id at HEC", || {
        hec.audit_ids().len() == 100
    })
    .await;
    stop(running, shutdown, &s.bootstrap, group, 100).await;
    drop(s.cluster);
}

/// The only broker goes down mid-stream (connections cut, new ones refused) while more events are
/// produced, and comes back: the consumer reconnects, resumes from its position, and nothing is
/// lost or committed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_then_up_loses_nothing() {
    let s = setup(40).await;
    let hec = HecReceiver::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let group = "Tech00-faults-broker-down";
    let (running, shutdown) = start(&default_text(&s.bootstrap, group, &hec, &dir)).await;
    eventually(Duration::from_secs(30), "the first 40 at HEC", || {
        hec.audit_ids().len() == 40
    })
    .await;
    s.cluster.broker_down(1).unwrap();
    // Produced while the broker is down: the producer holds them until it is back.
    let p = producer(&s.bootstrap);
    let mut ids = s.ids.clone();
    let mut second = Vec::new();
    for i in 0..40 {
        let (id, bytes) = audit_event(
            "io.confluent.kafka.server/authorization",
            "User:sa-r8v2kq",
            "KQ4ZT7WJ3NFXD2LB",
            json!({"methodName": "kafka.Produce", "authorizationInfo": {"granted": true, "operation": "Write", "resourceType": "Topic", "resourceName": format!("Tech01-payments-{i}")}}),
        );
        ids.push(id);
        second.push(bytes);
    }
    let produced = tokio::spawn(async move {
        for bytes in second {
            produce(&p, AUDIT, None, &bytes, &[]).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        hec.audit_ids().len(),
        40,
        "nothing new can arrive while the broker is down"
    );
    s.cluster.broker_up(1).unwrap();
    produced.await.unwrap();
    eventually(
        Duration::from_secs(60),
        "every id at HEC after the broker is back",
        || hec.audit_ids().len() == 80,
    )
    .await;
    let delivered = hec.audit_ids();
    assert!(ids.iter().all(|id| delivered.contains(id)));
    assert_eq!(hec.of_sourcetype("confluent:audit").len(), 80, "no duplicates");
    stop(running, shutdown, &s.bootstrap, group, 80).await;
    drop(s.cluster);
}

/// Two HEC endpoints, the first failing: batches fail over to the healthy one and stay there;
/// the failing one is used again once its health endpoint answers and it accepts data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hec_failover_to_the_healthy_endpoint() {
    let s = setup(40).await;
    let broken = HecReceiver::start(TOKEN).await;
    broken.set_busy(true);
    let healthy = HecReceiver::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let group = "Tech00-faults-failover";
    let text = config_text(&s.bootstrap, group, &broken.url(), None, &dir.path().join("o.jsonl")).replace(
        &format!("endpoints = [\"{}\"]", broken.url()),
        &format!("endpoints = [\"{}\", \"{}\"]", broken.url(), healthy.url()),
    );
    assert!(text.contains(&healthy.url()));
    let (running, shutdown) = start(&text).await;
    eventually(Duration::from_secs(30), "every event at the healthy endpoint", || {
        healthy.audit_ids().len() == 40
    })
    .await;
    assert!(broken.audit_ids().is_empty());
    let refused = broken.state.lock().unwrap().num_refused;
    assert!(
        refused <= 2,
        "the failing endpoint is skipped while unhealthy ({refused} refusals)"
    );
    stop(running, shutdown, &s.bootstrap, group, 40).await;
    drop(s.cluster);
}

/// An idle HEC sink sends what it has at once: `batch_linger` bounds the wait for more events
/// while every connection is busy; it is not a delay every batch pays (it was: a lone batch
/// waited the whole linger).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_hec_sink_sends_without_lingering() {
    use auditflow::decode::audit::AuditDecoder;
    use auditflow::event::{Ack, Batch};
    use auditflow::sinks::SinkItem;
    use auditflow::sinks::dead_letter::DeadLetters;
    use auditflow::sinks::splunk_hec::sink::HecSink;

    let hec = HecReceiver::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        "127.0.0.1:9",
        "Tech00-linger",
        &hec.url(),
        None,
        &dir.path().join("o.jsonl"),
    );
    let hec_linger = "index = \"kafka_audit\"\nbatch_linger = \"20ms\"";
    assert!(text.contains(hec_linger));
    let text = text.replace(hec_linger, "index = \"kafka_audit\"\nbatch_linger = \"60s\"");
    let config = Config::parse(&text, "linger.toml").unwrap();
    let telemetry = auditflow::telemetry::Telemetry::new();
    let dead_letters = DeadLetters::new(
        &config.kafka.client_properties,
        "auditflow-dead-letter",
        telemetry.clone(),
    )
    .unwrap();
    let sink = HecSink::new(config.sinks.splunk_hec.clone().unwrap(), dead_letters, telemetry).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let task = tokio::spawn(sink.run(rx));

    for round in 0..3 {
        let row = AuditDecoder::new(true, 1 << 20)
            .decode(&crate::support::fixture("audit/cloud-request-create-api-key.json"))
            .unwrap();
        let (ack, acked) = Ack::new();
        let batch = Batch {
            audit: vec![row],
            ..Batch::default()
        };
        tx.send(SinkItem {
            batch: std::sync::Arc::new(batch),
            ack,
        })
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(10), acked)
            .await
            .unwrap_or_else(|_| panic!("batch {round} waited for the 60 s linger"))
            .expect("the sink dropped the acknowledgement");
        assert_eq!(hec.events().len(), round + 1);
    }
    drop(tx);
    task.await.unwrap();
}
