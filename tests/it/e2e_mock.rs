//! End to end, in process: librdkafka's mock cluster -> pipeline -> strict HEC receiver, real
//! OTLP receiver, file sink, dead-letter topic and SQL; offsets committed only after acceptance.

use std::collections::HashSet;
use std::time::Duration;

use auditflow::config::Config;
use rdkafka::mocking::MockCluster;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::hec::HecReceiver;
use crate::support::kafka::{committed, produce, producer, read_all};
use crate::support::otlp::OtlpReceiver;
use crate::support::{audit_event, eventually, fixture, repo};

const AUDIT: &str = "confluent-audit-log-events";
const METRICS: &str = "confluent-metrics";
const DLQ: &str = "auditflow-dead-letter";
const TOKEN: &str = "00000000-0000-0000-0000-000000000001";

const SAMPLES: [&str; 8] = [
    "cloud-authentication-failure-unknown-user.json",
    "cloud-authentication-success-apikey.json",
    "cloud-authorization-denied-cross-namespace.json",
    "cloud-authorization-rbac-granted-create-topic.json",
    "cloud-request-create-api-key.json",
    "platform-authentication-mtls-success.json",
    "platform-authorization-delete-topic-acl.json",
    "platform-v03-superuser-join-group.json",
];

/// The shared test configuration. The shared samples carry fixed dates (2026-11-24), so the
/// window keeps ten years: they stay queryable whatever day the tests run.
pub fn config_text(bootstrap: &str, group: &str, hec: &str, otlp: Option<&str>, out: &std::path::Path) -> String {
    let otlp = otlp
        .map(|o| format!("[sinks.otlp]\nendpoint = \"{o}\"\n"))
        .unwrap_or_default();
    format!(
        r#"
data_dir = "{data}"
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
batch_linger = "20ms"
[kafka.properties]
"session.timeout.ms" = "6000"
[topics]
audit = ["{AUDIT}"]
metrics = ["{METRICS}"]
dead_letter = "{DLQ}"
alerts = "auditflow-alerts"
[enrich]
namespaces = "{namespaces}"
directory = "{directory}"
[rules]
dirs = ["{rules}"]
[window]
retention = "3650d"
[sinks.splunk_hec]
endpoints = ["{hec}"]
token = "{TOKEN}"
index = "kafka_audit"
batch_linger = "20ms"
{otlp}
[sinks.file]
path = "{out}"
[server]
http_listen = "127.0.0.1:0"
"#,
        namespaces = repo("deploy/namespaces.example.yaml").display(),
        directory = repo("deploy/directory.example.yaml").display(),
        rules = repo("rules").display(),
        out = out.display(),
        // State beside the output file: one test's delivered ids are not another's.
        data = out.with_extension("data").display(),
    )
}

pub(crate) async fn sql(addr: std::net::SocketAddr, query: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/sql"))
        .json(&json!({ "sql": query }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// What the producer side of an end-to-end test wrote.
pub struct Produced {
    pub audit_ids: HashSet<String>,
    pub num_poison: usize,
}

/// Writes the shared samples, an authentication-failure burst, a cross-namespace denial, metric
/// samples with an egress spike, and poison records.
pub async fn produce_scenario(bootstrap: &str) -> Produced {
    let p = producer(bootstrap);
    let mut audit_ids = HashSet::new();
    let ce = [("content-type", "application/cloudevents+json; charset=UTF-8")];
    for name in SAMPLES {
        let bytes = fixture(&format!("audit/{name}"));
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        audit_ids.insert(v["id"].as_str().unwrap().to_owned());
        produce(&p, AUDIT, None, &bytes, &ce).await;
    }
    // 50 failed logins with one API key within seconds: auth-failure-burst must fire.
    for _ in 0..50 {
        let (id, bytes) = audit_event(
            "io.confluent.kafka.server/authentication",
            "None:UNKNOWN_USER",
            "BRUTEFORCEKEY001",
            json!({"methodName": "kafka.Authentication", "result": {"status": "UNAUTHENTICATED", "message": "Authentication failed"}}),
        );
        audit_ids.insert(id);
        produce(&p, AUDIT, None, &bytes, &ce).await;
    }
    // Tech03's service account denied on Tech02's topic: cross-namespace-denied must fire.
    let (id, bytes) = audit_event(
        "io.confluent.kafka.server/authorization",
        "User:sa-m3n8zd",
        "HX2VB8KL5TQ9WC1J",
        json!({
            "methodName": "kafka.FetchConsumer",
            "resourceName": "crn://confluent.cloud/organization=o-1/environment=env-1/cloud-cluster=lkc-test/kafka=lkc-test/topic=Tech02-payments",
            "authorizationInfo": {"granted": false, "operation": "Read", "resourceType": "Topic", "resourceName": "Tech02-payments", "patternType": "LITERAL"}
        }),
    );
    audit_ids.insert(id);
    produce(&p, AUDIT, None, &bytes, &ce).await;
    // A duplicate of an event already sent (a redelivery): dropped by dedupe, not delivered twice.
    produce(
        &p,
        AUDIT,
        None,
        &fixture("audit/cloud-authentication-success-apikey.json"),
        &ce,
    )
    .await;

    // Metrics: the canonical samples, and an egress spike now.
    produce(&p, METRICS, None, &fixture("metrics/canonical-samples.jsonl"), &[]).await;
    let now = chrono::Utc::now().to_rfc3339();
    let spike = json!({"metric": "io.confluent.kafka.server/sent_bytes", "timestamp": now, "value": 12.0e9,
        "resource": {"kafka.id": "lkc-test"}, "labels": {"topic": "Tech01-orders"}});
    produce(&p, METRICS, None, spike.to_string().as_bytes(), &[]).await;
    produce(&p, METRICS, None, &fixture("metrics/otlp-json-metrics.json"), &[]).await;

    // Poison: not JSON, truncated JSON, invalid UTF-8.
    produce(&p, AUDIT, None, b"definitely not json", &[]).await;
    produce(&p, AUDIT, None, br#"{"specversion":"1.0","id":"trunc"#, &[]).await;
    produce(&p, AUDIT, None, &[b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'], &[]).await;
    Produced {
        audit_ids,
        num_poison: 3,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_cluster_to_hec_otlp_sql() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(AUDIT, 2, 1).unwrap();
    cluster.create_topic(METRICS, 1, 1).unwrap();
    cluster.create_topic(DLQ, 1, 1).unwrap();
    cluster.create_topic("auditflow-alerts", 1, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();

    let hec = HecReceiver::start(TOKEN).await;
    let (otlp, otlp_addr) = OtlpReceiver::start().await;
    otlp.reject_logs.store(1, std::sync::atomic::Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let group = "Tech00-auditflow-it";
    let text = config_text(
        &bootstrap,
        group,
        &hec.url(),
        Some(&format!("http://{otlp_addr}")),
        &out,
    );
    let config = Config::parse(&text, "e2e.toml").unwrap();

    let produced = produce_scenario(&bootstrap).await;
    // HEC starts busy: nothing may be committed while it refuses.
    hec.set_busy(true);
    let shutdown = CancellationToken::new();
    let running = auditflow::pipeline::start(config, shutdown.clone()).await.unwrap();
    let http = running.http_addr.unwrap();
    eventually(Duration::from_secs(30), "HEC to refuse a few requests", || {
        hec.state.lock().unwrap().num_refused >= 3
    })
    .await;
    let before = tokio::task::spawn_blocking({
        let b = bootstrap.clone();
        move || committed(&b, group, AUDIT, 2)
    })
    .await
    .unwrap();
    assert_eq!(
        before,
        vec![None, None],
        "offsets committed before HEC accepted anything"
    );
    hec.set_busy(false);

    let expected_ids = produced.audit_ids.clone();
    eventually(Duration::from_secs(60), "every audit event at HEC", || {
        let got: HashSet<String> = hec.audit_ids();
        expected_ids.is_subset(&got)
    })
    .await;
    eventually(Duration::from_secs(30), "alerts at HEC", || {
        let rules: HashSet<String> = hec.alert_rules();
        ["auth-failure-burst", "cross-namespace-denied", "egress-bytes-high"]
            .iter()
            .all(|r| rules.contains(*r))
    })
    .await;

    // HEC envelope.
    let audit = hec.of_sourcetype("confluent:audit");
    assert_eq!(
        audit.len(),
        produced.audit_ids.len(),
        "each audit event exactly once (the duplicate was dropped)"
    );
    let denied = audit
        .iter()
        .find(|e| {
            e["event"]["data"]["authorizationInfo"]["resourceName"] == "Tech02-payments"
                && e["fields"]["principal_app"] == "Tech03"
        })
        .unwrap();
    assert_eq!(denied["fields"]["resource_app"], "Tech02");
    assert_eq!(denied["fields"]["cross_namespace"], "true");
    assert_eq!(denied["fields"]["action"], "failure");
    assert_eq!(denied["index"], "kafka_audit");
    let sample = audit
        .iter()
        .find(|e| e["event"]["id"] == "a7d4e2c0-1f5b-4c3a-8e9d-6b2f0c1a7e55")
        .unwrap();
    assert_eq!(sample["time"].as_f64().unwrap(), 1795511703.001);
    assert_eq!(
        sample["event"]["data"]["requestMetadata"]["connection_id"].as_u64(),
        Some(170112233445566901)
    );
    let burst = hec
        .of_sourcetype("auditflow:alert")
        .into_iter()
        .find(|e| e["event"]["rule_id"] == "auth-failure-burst")
        .unwrap();
    assert_eq!(burst["event"]["status"], "firing");
    assert_eq!(burst["event"]["severity"], "high");
    assert_eq!(burst["event"]["labels"]["auth_identifier"], "BRUTEFORCEKEY001");
    assert!(burst["event"]["value"].as_f64().unwrap() >= 20.0);
    assert!(!burst["event"]["evidence"].as_array().unwrap().is_empty());
    assert!(burst["event"]["summary"].as_str().unwrap().contains("BRUTEFORCEKEY001"));
    // Alerts name the principal through the directory.
    let cross = hec
        .of_sourcetype("auditflow:alert")
        .into_iter()
        .find(|e| e["event"]["rule_id"] == "cross-namespace-denied")
        .unwrap();
    assert_eq!(
        cross["event"]["labels"]["principal_display"],
        "payments-batch (sa-m3n8zd, Tech03)"
    );
    assert_eq!(cross["event"]["labels"]["principal_team"], "logistics");
    let metrics = hec.of_sourcetype("auditflow:metric");
    assert!(metrics.iter().any(|m| m["event"] == "metric"
        && m["fields"]["metric_name:io.confluent.kafka.server/sent_bytes"].as_f64() == Some(12.0e9)));
    // A channel GUID per sending connection (default concurrency 2, one endpoint): how many
    // of them took a batch depends on timing, but never more than there are connections.
    let channels = hec.state.lock().unwrap().channels.len();
    assert!((1..=2).contains(&channels), "{channels} channels for 2 connections");

    // OTLP.
    eventually(Duration::from_secs(30), "OTLP logs and metrics", || {
        let r = otlp.received.lock().unwrap();
        let ids: HashSet<String> = r
            .logs
            .iter()
            .filter_map(|l| OtlpReceiver::attr(l, "cloudevents.event_id"))
            .collect();
        produced.audit_ids.is_subset(&ids) && !r.metrics.is_empty()
    })
    .await;
    {
        let r = otlp.received.lock().unwrap();
        let alert = r
            .logs
            .iter()
            .find(|l| OtlpReceiver::attr(l, "alert.rule_id").as_deref() == Some("cross-namespace-denied"))
            .unwrap();
        assert_eq!(alert.severity_text, "ERROR");
        let with_cluster = r.metrics.iter().any(|rm| {
            rm.resource
                .as_ref()
                .is_some_and(|res| res.attributes.iter().any(|kv| kv.key == "kafka.cluster.id"))
        });
        assert!(with_cluster, "metrics carry kafka.cluster.id as a resource attribute");
    }

    // SQL.
    let (status, rows) = sql(http, "SELECT count(*) AS n FROM audit_events").await;
    assert_eq!(status, 200);
    assert_eq!(rows[0]["n"], produced.audit_ids.len());
    let (_, rows) = sql(http, "SELECT auth_identifier, count(*) AS failures FROM audit_events WHERE result_status <> 'SUCCESS' GROUP BY auth_identifier ORDER BY failures DESC LIMIT 1").await;
    assert_eq!(rows[0]["auth_identifier"], "BRUTEFORCEKEY001");
    assert_eq!(rows[0]["failures"], 50);
    // The shared sample and the generated event: both are Tech03's account on Tech02's topic.
    let (_, rows) = sql(
        http,
        "SELECT principal_app, resource_app FROM audit_events WHERE granted = false AND cross_namespace",
    )
    .await;
    assert_eq!(rows.as_array().unwrap().len(), 2, "{rows}");
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["principal_app"] == "Tech03" && r["resource_app"] == "Tech02")
    );
    let (_, rows) = sql(
        http,
        "SELECT principal_name, environment_name, region FROM audit_events WHERE id = '3f0c9a51-6b2e-4d7f-9a18-2c5e7b9d0a41'",
    )
    .await;
    assert_eq!(rows[0]["principal_name"], "orders-service", "{rows}");
    assert_eq!(rows[0]["environment_name"], "production");
    assert_eq!(rows[0]["region"], "eu-west-1");
    let (_, rows) = sql(http, "SELECT DISTINCT rule_id FROM alerts ORDER BY rule_id").await;
    let rules: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["rule_id"].as_str())
        .collect();
    for r in ["auth-failure-burst", "cross-namespace-denied", "egress-bytes-high"] {
        assert!(rules.contains(&r), "{r} in {rules:?}");
    }
    let (_, rows) = sql(http, "SELECT name, kind, cluster_id, topic, value FROM metrics WHERE name = 'io.confluent.kafka.server/retained_bytes' ORDER BY value").await;
    assert_eq!(rows.as_array().unwrap().len(), 2, "{rows}");
    // `labels` (stored as label sets) reads back as the map it came in as, in every format.
    let (_, rows) = sql(
        http,
        "SELECT topic, labels['topic'] AS label, labels FROM metrics WHERE name = 'io.confluent.kafka.server/retained_bytes'",
    )
    .await;
    for r in rows.as_array().unwrap() {
        assert_eq!(r["label"], r["topic"], "{rows}");
        assert_eq!(r["labels"]["topic"], r["topic"], "{rows}");
    }
    let csv = reqwest::Client::new()
        .post(format!("http://{http}/v1/sql"))
        .header("Accept", "text/csv")
        .json(&json!({"sql": "SELECT * FROM metrics WHERE name = 'io.confluent.kafka.server/retained_bytes'"}))
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    let csv = csv.text().await.unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.contains(r#"{""kafka.id"":""#), "labels as JSON text: {csv}");
    let (status, err) = sql(http, "SELECT nope FROM audit_events").await;
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("nope"));
    let (status, _) = sql(http, "DROP TABLE audit_events").await;
    assert_eq!(status, 400);
    let metrics_text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics_text.contains("auditflow_duplicates_dropped_total 1"),
        "{metrics_text}"
    );
    // The OTLP receiver reports one rejected record per request: counted, not just logged.
    let rejected = metrics_text
        .lines()
        .find_map(|l| l.strip_prefix("auditflow_otlp_partial_rejections_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(rejected >= 1, "{metrics_text}");

    // Dead letters: every poison record, unchanged, with Connect-style headers.
    let dead = tokio::task::spawn_blocking({
        let b = bootstrap.clone();
        move || read_all(&b, DLQ, 1, 3, Duration::from_secs(20))
    })
    .await
    .unwrap();
    assert_eq!(dead.len(), produced.num_poison);
    assert!(dead.iter().any(|d| d.payload == b"definitely not json"));
    for d in &dead {
        assert_eq!(d.headers["__connect.errors.topic"], AUDIT);
        assert_eq!(d.headers["__connect.errors.exception.class.name"], "NotJson");
        assert!(d.headers["__connect.errors.offset"].parse::<i64>().is_ok());
        assert!(!d.headers["__connect.errors.exception.message"].is_empty());
    }

    // The alerts topic gets every alert as JSON, keyed by alert id.
    let num_alerts = hec.of_sourcetype("auditflow:alert").len();
    let published = tokio::task::spawn_blocking({
        let b = bootstrap.clone();
        move || read_all(&b, "auditflow-alerts", 1, num_alerts, Duration::from_secs(20))
    })
    .await
    .unwrap();
    let published: HashSet<String> = published
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.payload).ok())
        .filter_map(|v| v["rule_id"].as_str().map(str::to_owned))
        .collect();
    for r in ["auth-failure-burst", "cross-namespace-denied", "egress-bytes-high"] {
        assert!(published.contains(r), "{r} not on the alerts topic: {published:?}");
    }

    // File sink.
    let lines = std::fs::read_to_string(&out).unwrap();
    assert!(lines.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()));
    assert_eq!(
        lines.lines().filter(|l| l.contains("\"kind\":\"audit\"")).count(),
        produced.audit_ids.len()
    );

    // Clean stop: everything delivered is committed.
    shutdown.cancel();
    running.wait(Duration::from_secs(20)).await.unwrap();
    let after = tokio::task::spawn_blocking({
        let b = bootstrap.clone();
        move || committed(&b, group, AUDIT, 2)
    })
    .await
    .unwrap();
    let total: i64 = after.iter().map(|o| o.expect("committed after delivery")).sum();
    assert_eq!(
        total as usize,
        SAMPLES.len() + 50 + 1 + 1 + produced.num_poison,
        "every audit record's offset committed"
    );
}
