//! Catching up on a backlog: an hour of audit and metric traffic with incidents, already in
//! 3-partition topics whose partitions are read at different event-time speeds (one is dense,
//! so it takes several fetches while the others are read whole at once). Every incident must
//! fire exactly as it would in time order, at the event time it happened, and nothing benign.

use std::collections::BTreeSet;
use std::time::Duration;

use auditflow::config::Config;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::kafka::producer;
use crate::support::{audit_event, repo};

const AUDIT: &str = "replay-audit";
const METRICS: &str = "replay-metrics";
const S: i64 = 1_000_000;

/// An audit event at `time_us` (the helper stamps "now").
fn audit_at(time_us: i64, principal: &str, key: &str, status: &str, pad: usize) -> Vec<u8> {
    let extra = json!({
        "methodName": "kafka.Authentication",
        "result": {"status": status, "message": "x".repeat(pad)},
    });
    let (_, bytes) = audit_event("io.confluent.kafka.server/authentication", principal, key, extra);
    let mut v: Value = serde_json::from_slice(&bytes).unwrap();
    v["time"] = json!(rfc3339(time_us));
    serde_json::to_vec(&v).unwrap()
}

fn rfc3339(time_us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(time_us)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn metric_at(time_us: i64, name: &str, topic: &str, value: f64, note: usize) -> Vec<u8> {
    let mut labels = json!({"topic": topic});
    if note > 0 {
        labels["note"] = json!("n".repeat(note));
    }
    json!({"metric": name, "timestamp": rfc3339(time_us), "value": value,
        "resource": {"kafka.id": "lkc-replay"}, "labels": labels})
    .to_string()
    .into_bytes()
}

async fn send_all(p: &FutureProducer, records: &[(&str, i32, i64, Vec<u8>)]) {
    for chunk in records.chunks(500) {
        let sends = chunk.iter().map(|(topic, partition, _, payload)| {
            p.send(
                FutureRecord::<(), [u8]>::to(topic)
                    .partition(*partition)
                    .payload(payload),
                Duration::from_secs(30),
            )
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn an_hour_of_backlog_fires_every_incident_as_in_time_order() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(AUDIT, 3, 1).unwrap();
    cluster.create_topic(METRICS, 3, 1).unwrap();
    cluster.create_topic("auditflow-dead-letter", 1, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    // Two hours ago, on a minute.
    let now = chrono::Utc::now().timestamp_micros();
    let t0 = (now - 7200 * S) / (60 * S) * (60 * S);
    let minute = 60 * S;

    // (topic, partition, event time, payload).
    let mut records: Vec<(&str, i32, i64, Vec<u8>)> = Vec::new();
    // Partition 0: six applications authenticating, one every 2 s, padded to ~1 KB: about
    // 1.8 MB, several fetches of 256 KB. Partitions 1 and 2 are sparse and read whole at once.
    for s in (0..3600).step_by(2) {
        let (t, i) = (t0 + s * S, (s / 2) % 6);
        let (principal, key) = (format!("User:u-app{i}"), format!("KAPP{i}"));
        records.push((AUDIT, 0, t, audit_at(t, &principal, &key, "SUCCESS", 900)));
    }
    for s in (0..3600).step_by(30) {
        let t = t0 + s * S;
        records.push((AUDIT, 1, t, audit_at(t, "User:u-batch", "KBATCH", "SUCCESS", 0)));
        let t = t + 7 * S;
        records.push((AUDIT, 2, t, audit_at(t, "User:u-etl", "KETL", "SUCCESS", 0)));
    }
    // Incident A at 30m: 30 failed logins with one key in a minute, alternating partitions 0
    // and 1. In time order the 20th (at 30m38s) reaches the threshold of 20 in 5 minutes.
    let burst_at = t0 + 30 * minute;
    for n in 0..30 {
        let t = burst_at + 2 * n as i64 * S;
        records.push((
            AUDIT,
            n % 2,
            t,
            audit_at(t, "User:u-mallory", "KBRUTE", "UNAUTHENTICATED", 0),
        ));
    }
    // Metrics. Partition 0: Tech05-ledger's egress, 10 MB a minute +/-20%, then 4 GB at 45m
    // (400 times its baseline). Partition 1: Tech06-export's ingress, which stops after 39m.
    // Partition 2: Tech01-orders' ingress every 2 s with a long label: dense, several fetches.
    let jitter = [0.8, 1.2, 1.0, 0.9, 1.1];
    let (sent, received) = (
        "io.confluent.kafka.server/sent_bytes",
        "io.confluent.kafka.server/received_bytes",
    );
    for m in 0..60 {
        let t = t0 + m * minute;
        let value = if m == 45 { 4.0e9 } else { 1.0e7 * jitter[m as usize % 5] };
        records.push((METRICS, 0, t, metric_at(t, sent, "Tech05-ledger", value, 0)));
        if m < 40 {
            records.push((METRICS, 1, t, metric_at(t, received, "Tech06-export", 2.0e6, 0)));
        }
    }
    for s in (0..3600).step_by(2) {
        let t = t0 + s * S;
        records.push((METRICS, 2, t, metric_at(t, received, "Tech01-orders", 1.0e3, 400)));
    }
    // Each partition in event-time order, as live producers write it.
    records.sort_by_key(|r| r.2);
    let total = records.len();
    send_all(&producer(&bootstrap), &records).await;

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let config = format!(
        r#"
data_dir = "{data}"
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "replay"
batch_linger = "20ms"
[kafka.properties]
"session.timeout.ms" = "6000"
"auto.offset.reset" = "earliest"
"max.partition.fetch.bytes" = "262144"
[topics]
audit = ["{AUDIT}"]
metrics = ["{METRICS}"]
[rules]
dirs = ["{rules}"]
idle_partition_timeout = "10s"
[window]
retention = "3650d"
[sinks.file]
path = "{out}"
"#,
        rules = repo("rules").display(),
        out = out.display(),
        data = dir.path().join("data").display(),
    );
    let config = Config::parse(&config, "replay.toml").unwrap();
    let shutdown = CancellationToken::new();
    let running = auditflow::pipeline::start(config, shutdown.clone()).await.unwrap();
    let read = || {
        ["audit", "metrics"]
            .iter()
            .map(|stream| {
                running
                    .telemetry
                    .records_in
                    .get_or_create(&auditflow::telemetry::StreamLabel { stream })
                    .get() as usize
            })
            .sum::<usize>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while read() < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "read {} of {total} records in 120 s",
            read()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The clocks release the last cells once the partitions are idle (10 s).
    // The last alert to come; on timeout, the table below says what is missing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while tokio::time::Instant::now() < deadline
        && !std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("\"rule_id\":\"ingress-stopped\"")
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    shutdown.cancel();
    running.wait(Duration::from_secs(20)).await.unwrap();

    let alerts: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] == "alert")
        .collect();
    let firing: Vec<&Value> = alerts.iter().filter(|a| a["status"] == "firing").collect();
    let fired: BTreeSet<(String, String)> = firing
        .iter()
        .map(|a| {
            let label = ["auth_identifier", "topic"]
                .iter()
                .find_map(|k| a["labels"][k].as_str())
                .unwrap_or_default();
            (a["rule_id"].as_str().unwrap().to_owned(), label.to_owned())
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("auth-failure-burst", "KBRUTE"),
        ("egress-anomaly-topic", "Tech05-ledger"),
        ("ingress-stopped", "Tech06-export"),
    ]
    .iter()
    .map(|(r, l)| (r.to_string(), l.to_string()))
    .collect();
    let table: Vec<String> = expected
        .iter()
        .map(|e| format!("{} {}: fired {}/1", e.0, e.1, u8::from(fired.contains(e))))
        .collect();
    println!(
        "replay incidents (by partition, skewed fetches):\n  {}",
        table.join("\n  ")
    );
    assert_eq!(fired, expected, "firing alerts: {firing:#?}");
    assert_eq!(firing.len(), 3, "each incident fires once: {firing:#?}");

    // Each fires at the event time of the incident, as in time order.
    let time_of = |rule: &str| {
        let a = firing.iter().find(|a| a["rule_id"] == rule).unwrap();
        chrono::DateTime::parse_from_rfc3339(a["time"].as_str().unwrap())
            .unwrap()
            .timestamp_micros()
    };
    assert_eq!(time_of("auth-failure-burst"), burst_at + 38 * S, "the 20th failure");
    let burst = firing.iter().find(|a| a["rule_id"] == "auth-failure-burst").unwrap();
    assert_eq!(
        burst["value"], 20.0,
        "counted whole: the 20th failure reached the threshold"
    );
    assert_eq!(
        time_of("egress-anomaly-topic"),
        t0 + 46 * minute,
        "the spike's minute closes"
    );
    assert_eq!(
        time_of("ingress-stopped"),
        t0 + 49 * minute,
        "10 minutes after the last sample"
    );
}
