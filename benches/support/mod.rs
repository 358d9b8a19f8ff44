//! What the end-to-end benchmarks share: the shipped audit samples, events made from them, and
//! the HEC acknowledgement endpoint of a receiver that keeps up.

// Each bench compiles this module on its own and uses only some of it.
#![allow(dead_code)]

use std::path::Path;

use axum::body::Bytes;
use axum::http::StatusCode;

/// One poll's audit records at offsets `first_offset..` of partition 0, their payloads in one
/// shared chunk as the source holds them (`source::kafka`).
pub fn audit_poll(payloads: &[Vec<u8>], first_offset: usize) -> Vec<auditflow::source::Record> {
    let topic: std::sync::Arc<str> = std::sync::Arc::from("confluent-audit-log-events");
    let bytes = payloads.iter().map(Vec::len).sum();
    let mut chunker = auditflow::event::RawChunker::with_capacity(bytes, payloads.len());
    for p in payloads {
        chunker.push(p);
    }
    (first_offset..)
        .zip(chunker.finish())
        .map(|(offset, payload)| auditflow::source::Record {
            stream: auditflow::source::Stream::Audit,
            topic: topic.clone(),
            partition: 0,
            offset: offset as i64,
            timestamp_ms: None,
            key: None,
            payload: Some(payload),
            headers: Vec::new(),
        })
        .collect()
}

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
///
/// Each sample is serialised once, with markers where the id and the time go; an event is the
/// template with those filled in. Serialising a JSON value per event cost the benchmarks'
/// producers several microseconds of the two cores the measured process runs on.
pub fn event_bytes(samples: &[serde_json::Value], i: usize, time: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    thread_local! {
        static TEMPLATES: std::cell::RefCell<Option<Templates>> = const { std::cell::RefCell::new(None) };
    }
    TEMPLATES.with_borrow_mut(|cached| {
        let key = (samples.as_ptr() as usize, samples.len());
        if cached.as_ref().is_none_or(|t| t.key != key) {
            *cached = Some(Templates::new(samples, key));
        }
        cached.as_ref().unwrap().event(i, time)
    })
}

/// Where the id and the time go in a template (quotes included).
const ID_MARK: &str = "\"BENCH-ID-MARK\"";
const TIME_MARK: &str = "\"BENCH-TIME-MARK\"";

struct Templates {
    key: (usize, usize),
    /// Ids are unique across runs (the dedupe store outlives a run) without a random draw per
    /// event.
    run: u64,
    pieces: Vec<Vec<Piece>>,
}

enum Piece {
    Bytes(Vec<u8>),
    Id,
    Time,
}

impl Templates {
    fn new(samples: &[serde_json::Value], key: (usize, usize)) -> Templates {
        let pieces = samples
            .iter()
            .map(|sample| {
                let mut v = sample.clone();
                v["id"] = serde_json::json!("BENCH-ID-MARK");
                v["time"] = serde_json::json!("BENCH-TIME-MARK");
                let text = serde_json::to_string(&v).unwrap();
                let mut pieces = Vec::new();
                let mut rest = text.as_str();
                loop {
                    let id = rest.find(ID_MARK).map(|at| (at, ID_MARK, Piece::Id));
                    let time = rest.find(TIME_MARK).map(|at| (at, TIME_MARK, Piece::Time));
                    let next = match (id, time) {
                        (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
                        (a, b) => a.or(b),
                    };
                    let Some((at, mark, piece)) = next else { break };
                    pieces.push(Piece::Bytes(rest.as_bytes()[..at].to_vec()));
                    pieces.push(piece);
                    rest = &rest[at + mark.len()..];
                }
                pieces.push(Piece::Bytes(rest.as_bytes().to_vec()));
                pieces
            })
            .collect();
        Templates {
            key,
            run: rand::random(),
            pieces,
        }
    }

    fn event(&self, i: usize, time: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
        use std::io::Write;
        let pieces = &self.pieces[i % self.pieces.len()];
        let mut out = Vec::with_capacity(1536);
        for piece in pieces {
            match piece {
                Piece::Bytes(b) => out.extend_from_slice(b),
                Piece::Id => write!(out, "\"bench-{i}-{:016x}\"", self.run).unwrap(),
                // The same text as `%Y-%m-%dT%H:%M:%S%.3fZ`, without parsing a format per event.
                Piece::Time => {
                    write!(out, "\"{}\"", time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)).unwrap()
                }
            }
        }
        out
    }
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
