//! The Confluent Cloud Metrics API poller against a strict fake of the export endpoint: samples
//! reach the `metrics` table and fire the shipped traffic rules, a 429 slows the poller without
//! loss, a sample polled twice counts once, wrong credentials give a clear error and a counter
//! (not a crash), and `publish_topic` routes samples through the metrics topic exactly once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use auditflow::config::Config;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::e2e_mock::{config_text, sql};
use crate::support::hec::HecReceiver;
use crate::support::kafka::{mock_cluster, read_all};
use crate::support::metrics_api::FakeMetricsApi;
use crate::support::{eventually, logs};

const TOKEN: &str = "00000000-0000-0000-0000-000000000001";
const KEY: &str = "CLOUDKEY0000001";
const SECRET: &str = "cloud-secret/with+odd=chars";

/// The minute the fake exports: three minutes ago, as the real endpoint lags.
fn lagging_minute_ms() -> i64 {
    let now = chrono::Utc::now().timestamp_millis();
    (now - 180_000) / 60_000 * 60_000
}

/// The shared end-to-end config, with quick idle partitions and the poller section.
fn config(
    bootstrap: &str,
    group: &str,
    hec: &str,
    dir: &std::path::Path,
    api: &str,
    secret: &str,
    extra: &str,
) -> Config {
    let secret_file = dir.join("api-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let mut text = config_text(bootstrap, group, hec, None, &dir.join("events.jsonl"))
        .replace("[rules]\n", "[rules]\nidle_partition_timeout = \"2s\"\n");
    text.push_str(&format!(
        r#"
[sources.confluent_metrics_api]
url = "{api}"
api_key = "{KEY}"
api_secret = "${{file:{secret}}}"
interval = "1s"
{extra}
[sources.confluent_metrics_api.resources]
kafka = ["lkc-9kg320", "lkc-gone"]
schema_registry = ["lsrc-abc123"]
"#,
        secret = secret_file.display(),
    ));
    Config::parse(&text, "metrics_api.toml").unwrap()
}

/// A query's rows; anything but 200 fails the test.
async fn rows(addr: std::net::SocketAddr, query: &str) -> Value {
    let (status, v) = sql(addr, query).await;
    assert_eq!(status, 200, "{query}: {v}");
    v
}

async fn count(addr: std::net::SocketAddr, filter: &str) -> u64 {
    let v = rows(addr, &format!("SELECT count(*) AS n FROM metrics {filter}")).await;
    v[0]["n"].as_u64().unwrap_or_else(|| panic!("{v}"))
}

/// The `metrics` table's row count once it reaches `at_least`, or when `timeout` passes.
async fn rows_within(addr: std::net::SocketAddr, at_least: u64, timeout: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let rows = count(addr, "").await;
        if rows >= at_least || tokio::time::Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A counter's value on the `/metrics` text (0 when absent).
fn counter(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_reach_the_window_and_rules_through_429s_and_repeats() {
    logs();
    let cluster = mock_cluster();
    let hec = HecReceiver::start(TOKEN).await;
    let minute = lagging_minute_ms();
    let known = vec![
        ("kafka", "lkc-9kg320".to_owned()),
        ("schema_registry", "lsrc-abc123".to_owned()),
    ];
    let api = FakeMetricsApi::start(KEY, SECRET, known, minute).await;
    api.state.rate_limit_next.store(2, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        &cluster.bootstrap_servers(),
        "mapi-1",
        &hec.url(),
        dir.path(),
        &api.url(),
        SECRET,
        "",
    );
    let shutdown = CancellationToken::new();
    let running = auditflow::pipeline::start(config, shutdown.clone()).await.unwrap();
    let http = running.http_addr.unwrap();

    // First poll: two 429s, then every sample, none lost. 2 topics x 3 metrics + partitions on
    // the cluster, and the schema count.
    assert_eq!(rows_within(http, 8, Duration::from_secs(40)).await, 8);
    assert_eq!(api.state.num_rate_limited.load(Ordering::SeqCst), 2);
    let metrics = running.telemetry.render(&[]);
    assert_eq!(
        counter(
            &metrics,
            "auditflow_metrics_api_requests_total{outcome=\"rate_limited\"}"
        ),
        2.0,
        "{metrics}"
    );
    assert!(
        counter(&metrics, "auditflow_metrics_api_requests_total{outcome=\"ok\"}") >= 2.0,
        "{metrics}"
    );
    assert!(
        counter(
            &metrics,
            "auditflow_metrics_api_access_errors_total{resource=\"lkc-gone\"}"
        ) >= 1.0,
        "{metrics}"
    );
    // A status series of 0 is a resource the export could read: no error.
    for readable in ["lkc-9kg320", "lsrc-abc123"] {
        let series = format!("auditflow_metrics_api_access_errors_total{{resource=\"{readable}\"}}");
        assert_eq!(counter(&metrics, &series), 0.0, "{metrics}");
    }

    // Names, labels and time as the Metrics API has them.
    let v = rows(
        http,
        "SELECT kind, value, to_unixtime(time) AS t FROM metrics \
         WHERE name = 'io.confluent.kafka.server/sent_bytes' AND cluster_id = 'lkc-9kg320' AND topic = 'payments'",
    )
    .await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["kind"], "counter");
    assert_eq!(v[0]["value"].as_f64(), Some(21474836480.0));
    assert_eq!(v[0]["t"].as_i64(), Some(minute / 1000), "the sample's own timestamp");
    assert_eq!(
        count(http, "WHERE name = 'io.confluent.kafka.schema_registry/schema_count' AND cluster_id = 'lsrc-abc123' AND kind = 'gauge'").await,
        1
    );

    // The shipped egress rule fires on the polled samples.
    eventually(Duration::from_secs(60), "egress-bytes-high at HEC", || {
        hec.of_sourcetype("auditflow:alert")
            .iter()
            .any(|a| a["event"]["rule_id"] == "egress-bytes-high" && a["event"]["labels"]["topic"] == "payments")
    })
    .await;

    // Second poll, same minute: every sample is a repeat and counts once.
    let ok = api.state.num_ok.load(Ordering::SeqCst);
    eventually(Duration::from_secs(40), "a second poll", || {
        api.state.num_ok.load(Ordering::SeqCst) >= ok + 2
    })
    .await;
    eventually(Duration::from_secs(5), "the repeats counted", || {
        counter(
            &running.telemetry.render(&[]),
            "auditflow_metrics_api_repeated_samples_total",
        ) >= 8.0
    })
    .await;
    assert_eq!(count(http, "").await, 8, "a sample polled twice counts once");

    // The next minute is new.
    api.state.minute_ms.store(minute + 60_000, Ordering::SeqCst);
    assert_eq!(rows_within(http, 16, Duration::from_secs(50)).await, 16);
    assert!(
        api.state.bad_requests.lock().unwrap().is_empty(),
        "{:?}",
        api.state.bad_requests
    );
    assert_eq!(api.state.num_unauthorized.load(Ordering::SeqCst), 0);
    shutdown.cancel();
    running.wait(Duration::from_secs(20)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_a_clear_error_and_a_counter_not_a_crash() {
    logs();
    let cluster = mock_cluster();
    let hec = HecReceiver::start(TOKEN).await;
    let api = FakeMetricsApi::start(KEY, SECRET, vec![("kafka", "lkc-9kg320".into())], lagging_minute_ms()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        &cluster.bootstrap_servers(),
        "mapi-2",
        &hec.url(),
        dir.path(),
        &api.url(),
        "wrong",
        "",
    );
    let shutdown = CancellationToken::new();
    let running = auditflow::pipeline::start(config, shutdown.clone()).await.unwrap();
    eventually(Duration::from_secs(20), "a refused export", || {
        let m = running.telemetry.render(&[]);
        counter(&m, "auditflow_metrics_api_requests_total{outcome=\"refused\"}") >= 1.0
            && counter(&m, "auditflow_metrics_api_refused") == 1.0
    })
    .await;
    assert!(api.state.num_unauthorized.load(Ordering::SeqCst) >= 1);
    // The pipeline runs on: SQL answers, and it stops cleanly.
    assert_eq!(count(running.http_addr.unwrap(), "").await, 0);
    shutdown.cancel();
    running.wait(Duration::from_secs(20)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_topic_routes_samples_through_kafka_once() {
    logs();
    let cluster = mock_cluster();
    let bootstrap = cluster.bootstrap_servers();
    let hec = HecReceiver::start(TOKEN).await;
    let known = vec![
        ("kafka", "lkc-9kg320".to_owned()),
        ("schema_registry", "lsrc-abc123".to_owned()),
    ];
    let api = FakeMetricsApi::start(KEY, SECRET, known, lagging_minute_ms()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        &bootstrap,
        "mapi-3",
        &hec.url(),
        dir.path(),
        &api.url(),
        SECRET,
        "publish_topic = \"confluent-metrics\"",
    );
    let shutdown = CancellationToken::new();
    let running = auditflow::pipeline::start(config, shutdown.clone()).await.unwrap();
    let http = running.http_addr.unwrap();
    assert_eq!(rows_within(http, 8, Duration::from_secs(40)).await, 8);
    let records =
        tokio::task::spawn_blocking(move || read_all(&bootstrap, "confluent-metrics", 1, 8, Duration::from_secs(20)))
            .await
            .unwrap();
    assert_eq!(records.len(), 8, "one canonical JSON record per sample on the topic");
    // Read back from the topic, not also fed in directly.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(http, "").await, 8);
    shutdown.cancel();
    running.wait(Duration::from_secs(20)).await.unwrap();
}
