//! What the end-to-end benchmarks share: the shipped audit samples, events made from them, and
//! the HEC acknowledgement endpoint of a receiver that keeps up.

// Each bench compiles this module on its own and uses only some of it.
#![allow(dead_code)]

use std::path::Path;

use axum::body::Bytes;
use axum::http::StatusCode;

/// Bytes per partition the backlog may use (the mock cluster keeps 5 MB).
pub const PARTITION_BUDGET: usize = 4_300_000;

/// The shipped audit samples (~1 KB each), in file-name order, to be given fresh ids.
pub fn samples() -> Vec<serde_json::Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/samples/audit");
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

/// About one event in a thousand raises an alert (two in 1,000 here: an API key created, a
/// topic deleted); the rest cycle through the samples no shipped rule fires on by itself.
/// The samples as they are cycle to a quarter of events raising an alert (alert-heavy).
pub fn realistic_mix(samples: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    let alerting = |s: &serde_json::Value| {
        let method = s["data"]["methodName"].as_str().unwrap_or_default();
        method == "CreateApiKey" || method == "kafka.DeleteTopics"
    };
    let (loud, quiet): (Vec<_>, Vec<_>) = samples.into_iter().partition(alerting);
    assert!(
        !loud.is_empty() && !quiet.is_empty(),
        "the samples changed: {} alerting",
        loud.len()
    );
    (0..1000)
        .map(|i| match i {
            0 => loud[0].clone(),
            500 => loud[loud.len() - 1].clone(),
            _ => quiet[i % quiet.len()].clone(),
        })
        .collect()
}

/// Event `i`: sample `i` (cyclically) with a fresh id and the given time.
pub fn event_bytes(samples: &[serde_json::Value], i: usize, time: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    let mut v = samples[i % samples.len()].clone();
    v["id"] = serde_json::json!(format!("bench-{i}-{}", uuid::Uuid::new_v4()));
    v["time"] = serde_json::json!(time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    serde_json::to_vec(&v).unwrap()
}

/// `/services/collector/ack`: every ackId asked about is indexed (an indexer that keeps up).
pub async fn ack(body: Bytes) -> (StatusCode, String) {
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let acks: serde_json::Map<String, serde_json::Value> = request["acks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_u64())
        .map(|id| (id.to_string(), serde_json::Value::Bool(true)))
        .collect();
    (StatusCode::OK, serde_json::json!({ "acks": acks }).to_string())
}
