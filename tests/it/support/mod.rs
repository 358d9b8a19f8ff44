//! Test support: real-protocol receivers and Kafka helpers.

pub mod hec;
pub mod kafka;
pub mod metrics_api;
pub mod otlp;
pub mod psql;

use std::time::Duration;

/// The pipeline's logs on the test's output when `AUDITFLOW_LOG` sets a filter (`info`,
/// `auditflow=debug`, ...); silent otherwise.
pub fn logs() {
    if let Ok(filter) = std::env::var("AUDITFLOW_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Polls `check` every 100 ms until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/samples/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

pub fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// An audit event of the given shape with a fresh id and the current time.
pub fn audit_event(kind: &str, principal: &str, key: &str, extra: serde_json::Value) -> (String, Vec<u8>) {
    let id = uuid::Uuid::new_v4().to_string();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let crn = "crn://confluent.cloud/organization=o-1/environment=env-1/cloud-cluster=lkc-test/kafka=lkc-test";
    let mut data = serde_json::json!({
        "serviceName": crn,
        "resourceName": crn,
        "authenticationInfo": {"principal": principal, "metadata": {"mechanism": "SASL_SSL/PLAIN", "identifier": key}},
        "requestMetadata": {"client_address": "/192.0.2.10:50000"},
    });
    if let serde_json::Value::Object(extra) = extra {
        for (k, v) in extra {
            data[k] = v;
        }
    }
    let event = serde_json::json!({
        "specversion": "1.0", "id": id, "source": crn, "type": kind, "time": now,
        "datacontenttype": "application/json", "subject": crn, "data": data,
    });
    (id, serde_json::to_vec(&event).unwrap())
}

/// Held by the tests that `kill -9` an auditflow process and measure what was in flight: run
/// beside each other (two brokers, two pipelines, a blob store) they starve each other of CPU
/// on two cores, and what is in flight at the kill then says nothing about auditflow.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}
