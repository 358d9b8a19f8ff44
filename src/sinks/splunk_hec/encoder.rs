//! HEC event encoding: concatenated JSON objects, one per event.
//!
//! Audit events embed `raw` verbatim (no re-serialisation, so integers above 2^53 keep every
//! digit); field values that need escaping are escaped through serde_json.

use serde_json::{Map, Value, json};

use crate::config::HecSinkConfig;
use crate::event::{Alert, AuditRow, Batch, MetricSample};
use crate::sinks::{alert_json, visit_audit_fields};

pub const AUDIT_SOURCETYPE: &str = "confluent:audit";
pub const ALERT_SOURCETYPE: &str = "auditflow:alert";
pub const METRIC_SOURCETYPE: &str = "auditflow:metric";

/// Encodes events into request bodies of at most `max_bytes` / `max_events`, remembering
/// where each event starts so a rejected request can be split.
pub struct Encoder<'a> {
    config: &'a HecSinkConfig,
    /// An audit event's envelope after its time (see [`write_envelope_tail`]), written once.
    audit_tail: Vec<u8>,
    pub bodies: Vec<Body>,
    /// Where a new body's buffer comes from, when the sink keeps delivered ones.
    buffers: Option<&'a BodyBuffers>,
}

/// Beyond `batch_max_bytes`, room reserved in a new body for the event that ends it.
const BODY_SLACK: usize = 64 << 10;

/// The most a new body reserves up front.
const MAX_BODY_RESERVE: usize = 16 << 20;

/// Buffers of delivered bodies, kept for the next ones. A body grows to ~1 MB; a fresh buffer
/// of that size is mapped and faulted in page by page as it fills (2-3% of a drain's CPU went
/// to those page faults and the reallocations before them); a kept one is already there.
/// At most `keep` buffers wait here, so the memory held is bounded by what is in flight.
#[derive(Debug)]
pub struct BodyBuffers {
    free: std::sync::Mutex<Vec<Vec<u8>>>,
    keep: usize,
}

impl BodyBuffers {
    pub fn new(keep: usize) -> BodyBuffers {
        BodyBuffers {
            free: std::sync::Mutex::new(Vec::with_capacity(keep)),
            keep,
        }
    }

    /// An empty buffer: a kept one if there is one.
    fn take(&self) -> Vec<u8> {
        self.free
            .lock()
            .map(|mut free| free.pop())
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Keeps the buffer of a delivered `body`, unless it is still shared (an HTTP client
    /// holding it a little longer) or enough are kept already.
    pub fn give(&self, body: Body) {
        let Ok(mut bytes) = std::sync::Arc::try_unwrap(body.bytes) else {
            return;
        };
        if let Ok(mut free) = self.free.lock()
            && free.len() < self.keep
        {
            bytes.clear();
            free.push(bytes);
        }
    }

    /// Buffers kept now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.free.lock().map_or(0, |free| free.len())
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One request body and the byte offsets of its events. The bytes are shared: sending hands
/// them to gzip on another thread (or to the HTTP client) without a copy of the ~1 MB body.
#[derive(Debug, Default, Clone)]
pub struct Body {
    pub bytes: std::sync::Arc<Vec<u8>>,
    pub starts: Vec<usize>,
}

impl Body {
    pub fn num_events(&self) -> usize {
        self.starts.len()
    }

    /// Bytes of event `i`.
    pub fn event(&self, i: usize) -> &[u8] {
        let end = self.starts.get(i + 1).copied().unwrap_or(self.bytes.len());
        &self.bytes[self.starts[i]..end]
    }

    /// Splits into two halves by events (for isolating a rejected event).
    pub fn split(&self) -> (Body, Body) {
        let mid = self.starts.len() / 2;
        let part = |range: std::ops::Range<usize>| {
            let mut b = Body::default();
            let bytes = std::sync::Arc::make_mut(&mut b.bytes);
            for i in range {
                b.starts.push(bytes.len());
                bytes.extend_from_slice(self.event(i));
            }
            b
        };
        (part(0..mid), part(mid..self.starts.len()))
    }
}

/// What follows an event's time in its envelope: sourcetype, source, host and index, which
/// depend only on the configuration and the kind of event.
fn write_envelope_tail(out: &mut Vec<u8>, config: &HecSinkConfig, sourcetype: &str, index: Option<&str>) {
    out.extend_from_slice(b",\"sourcetype\":\"");
    out.extend_from_slice(sourcetype.as_bytes());
    out.extend_from_slice(b"\",\"source\":");
    write_str(out, &config.source);
    if let Some(host) = &config.host {
        out.extend_from_slice(b",\"host\":");
        write_str(out, host);
    }
    if let Some(index) = index {
        out.extend_from_slice(b",\"index\":");
        write_str(out, index);
    }
}

impl<'a> Encoder<'a> {
    pub fn new(config: &'a HecSinkConfig) -> Encoder<'a> {
        Encoder {
            config,
            audit_tail: {
                let mut tail = Vec::with_capacity(128);
                write_envelope_tail(&mut tail, config, AUDIT_SOURCETYPE, config.index.as_deref());
                tail
            },
            bodies: Vec::new(),
            buffers: None,
        }
    }

    /// An encoder whose bodies start from the buffers `buffers` keeps.
    pub fn with_buffers(config: &'a HecSinkConfig, buffers: &'a BodyBuffers) -> Encoder<'a> {
        Encoder {
            buffers: Some(buffers),
            ..Encoder::new(config)
        }
    }

    /// The body the next event goes to: the last one, unless it holds `batch_max_events`
    /// already or is over `batch_max_bytes` (an event bigger than that on its own).
    fn current(&mut self) -> &mut Body {
        let full = self.bodies.last().is_none_or(|b| {
            !b.starts.is_empty()
                && (b.bytes.len() > self.config.batch_max_bytes || b.starts.len() >= self.config.batch_max_events)
        });
        if full {
            self.new_body();
        }
        self.bodies.last_mut().expect("pushed above")
    }

    fn new_body(&mut self) {
        let mut bytes = self.buffers.map(BodyBuffers::take).unwrap_or_default();
        // Room for a full body and the event that ends it, made once: grown by doubling, a
        // fresh buffer was copied ~20 times on its way to 1 MiB and ended with 2 MiB. Capped,
        // so a huge `batch_max_bytes` is not claimed up front. (A kept buffer has the room.)
        bytes.reserve((self.config.batch_max_bytes + BODY_SLACK).min(MAX_BODY_RESERVE));
        self.bodies.push(Body {
            bytes: std::sync::Arc::new(bytes),
            starts: Vec::new(),
        });
    }

    /// Ends the event written at the end of the current body. One that took the body past
    /// `batch_max_bytes` moves to a new body (once per body; every other event is written
    /// where it stays, not copied from a scratch buffer).
    fn push_event(&mut self) {
        let max_bytes = self.config.batch_max_bytes;
        let body = self.bodies.last_mut().expect("envelope started the event in a body");
        if body.starts.len() < 2 || body.bytes.len() <= max_bytes {
            return;
        }
        let start = body.starts.pop().expect("the body holds this event");
        let bytes = std::sync::Arc::make_mut(&mut body.bytes);
        let event = bytes[start..].to_vec();
        bytes.truncate(start);
        self.new_body();
        let body = self.bodies.last_mut().expect("pushed above");
        body.starts.push(0);
        std::sync::Arc::make_mut(&mut body.bytes).extend_from_slice(&event);
    }

    /// Starts an event at the end of the current body, with its envelope.
    fn envelope(&mut self, time_us: i64, sourcetype: &str, index: Option<&str>) -> &mut Vec<u8> {
        let config = self.config;
        let out = self.envelope_with(time_us, &[]);
        write_envelope_tail(out, config, sourcetype, index);
        out
    }

    /// Starts an event: its time, then `tail` (see [`write_envelope_tail`]).
    fn envelope_with(&mut self, time_us: i64, tail: &[u8]) -> &mut Vec<u8> {
        let body = self.current();
        body.starts.push(body.bytes.len());
        // Not shared while it is being filled: no copy.
        let out = std::sync::Arc::make_mut(&mut body.bytes);
        out.extend_from_slice(b"{\"time\":");
        write_epoch_seconds(out, time_us);
        out.extend_from_slice(tail);
        out
    }

    pub fn audit(&mut self, row: &AuditRow) {
        // The same for every audit event: written once per encoder, copied per event.
        let tail = std::mem::take(&mut self.audit_tail);
        let out = self.envelope_with(row.time_us, &tail);
        out.extend_from_slice(b",\"fields\":{");
        let mut first = true;
        visit_audit_fields(row, &mut |k, v| {
            if !first {
                out.push(b',');
            }
            first = false;
            // Keys are our own plain names (a test holds them to that): no escaping to do.
            out.push(b'"');
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b"\":");
            write_str(out, v);
        });
        out.extend_from_slice(b"},\"event\":");
        out.extend_from_slice(&row.raw);
        out.push(b'}');
        self.audit_tail = tail;
        self.push_event();
    }

    pub fn alert(&mut self, alert: &Alert) {
        let config = self.config;
        let index = config.alert_index.as_deref().or(config.index.as_deref());
        let out = self.envelope(alert.time_us, ALERT_SOURCETYPE, index);
        let mut fields = Map::new();
        fields.insert("rule_id".into(), Value::String(alert.rule_id.clone()));
        fields.insert("severity".into(), Value::String(alert.severity.clone()));
        fields.insert("status".into(), Value::String(alert.status.as_str().into()));
        fields.insert("alert_id".into(), Value::String(alert.id.clone()));
        out.extend_from_slice(b",\"fields\":");
        out.extend_from_slice(Value::Object(fields).to_string().as_bytes());
        out.extend_from_slice(b",\"event\":");
        out.extend_from_slice(alert_json(alert).to_string().as_bytes());
        out.push(b'}');
        self.push_event();
    }

    pub fn metric(&mut self, m: &MetricSample) {
        let config = self.config;
        let index = config.metrics_index.as_deref().or(config.index.as_deref());
        let out = self.envelope(m.time_us, METRIC_SOURCETYPE, index);
        // Dimensions must be strings; the measurement is the number under `metric_name:NAME`.
        let mut fields = Map::new();
        for (k, v) in &m.labels {
            fields.insert(k.clone(), Value::String(v.clone()));
        }
        if let Some(c) = &m.cluster_id {
            fields.insert("cluster_id".into(), Value::String(c.clone()));
        }
        if let Some(app) = &m.resource_app {
            fields.insert("resource_app".into(), Value::String(app.clone()));
        }
        fields.insert("metric_kind".into(), Value::String(m.kind.as_str().into()));
        fields.insert(format!("metric_name:{}", m.name), json!(m.value));
        out.extend_from_slice(b",\"event\":\"metric\",\"fields\":");
        out.extend_from_slice(Value::Object(fields).to_string().as_bytes());
        out.push(b'}');
        self.push_event();
    }
}

/// Encodes every event of `batches` (audit rows, metric samples, alerts) into request bodies,
/// made from the buffers `buffers` keeps.
pub fn encode<'b>(
    config: &HecSinkConfig,
    buffers: &BodyBuffers,
    batches: impl IntoIterator<Item = &'b Batch>,
) -> Vec<Body> {
    let mut encoder = Encoder::with_buffers(config, buffers);
    for batch in batches {
        for row in &batch.audit {
            encoder.audit(row);
        }
        for m in &batch.metrics {
            encoder.metric(m);
        }
        for a in &batch.alerts {
            encoder.alert(a);
        }
    }
    encoder.bodies
}

/// `time_us` as HEC's epoch seconds, exact to the microsecond, in integer digits: an `f64` holds
/// ~16 significant digits (a microsecond time needs 16) and took a float formatter per event.
fn write_epoch_seconds(out: &mut Vec<u8>, time_us: i64) {
    if time_us < 0 {
        out.push(b'-');
    }
    let time_us = time_us.unsigned_abs();
    let (seconds, mut micros) = (time_us / 1_000_000, time_us % 1_000_000);
    out.extend_from_slice(itoa::Buffer::new().format(seconds).as_bytes());
    if micros == 0 {
        return;
    }
    let mut digits = [b'0'; 6];
    for d in digits.iter_mut().rev() {
        *d = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    let len = 6 - digits.iter().rev().take_while(|&&d| d == b'0').count();
    out.push(b'.');
    out.extend_from_slice(&digits[..len]);
}

/// `s` as a JSON string. Nearly every value needs no escaping (ids, names, addresses): those are
/// copied between quotes; the rest go through `serde_json`.
fn write_str(out: &mut Vec<u8>, s: &str) {
    // Folded without stopping early, so the check runs over many bytes at a time.
    let needs_escaping = s
        .bytes()
        .fold(false, |any, b| any | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if !needs_escaping {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::audit::AuditDecoder;
    use crate::sinks::audit_fields;

    fn config() -> HecSinkConfig {
        let raw: crate::config::RawHecSink =
            toml::from_str("endpoints = [\"http://x\"]\ntoken = \"t\"\nindex = \"audit\"\nbatch_max_bytes = 4096\n")
                .unwrap();
        raw.validate(crate::config::Check { origin: "test" }).unwrap()
    }

    #[test]
    fn audit_event_envelope_keeps_raw_and_flat_fields() {
        let raw = std::fs::read(format!(
            "{}/tests/fixtures/samples/audit/cloud-authentication-failure-unknown-user.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let row = AuditDecoder::new(true, 1 << 20).decode(&raw).unwrap();
        let cfg = config();
        let mut e = Encoder::new(&cfg);
        e.audit(&row);
        let body = &e.bodies[0];
        let v: Value = serde_json::from_slice(&body.bytes).unwrap();
        assert_eq!(v["sourcetype"], "confluent:audit");
        assert_eq!(v["index"], "audit");
        assert_eq!(v["time"].as_f64().unwrap(), 1795511703.001);
        assert_eq!(v["event"]["id"], "a7d4e2c0-1f5b-4c3a-8e9d-6b2f0c1a7e55");
        assert!(v["fields"].as_object().unwrap().values().all(Value::is_string));
        assert_eq!(v["fields"]["action"], "failure");
        // The integer above 2^53 is forwarded digit for digit.
        assert!(std::str::from_utf8(&body.bytes).unwrap().contains("170112233445566901"));
    }

    /// The quick path writes exactly what serde_json writes.
    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        for s in [
            "",
            "plain",
            "User:sa-1",
            "or\"ders",
            "back\\slash",
            "tab\there",
            "nl\n",
            "\u{1}",
            "\u{7f}",
            "é ü 漢 🦀",
        ] {
            let mut out = Vec::new();
            write_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap(),
                "{s:?}"
            );
        }
    }

    /// Field names are written without escaping: every one must be a plain name.
    #[test]
    fn audit_field_names_need_no_escaping() {
        let text = |s: &str| Some(crate::event::Text::from(s));
        let row = AuditRow {
            cluster_id: text("lkc-1"),
            organization: text("o"),
            environment: text("env-1"),
            resource_app: text("payments"),
            principal_app: text("batch"),
            cross_namespace: Some(true),
            auth_identifier: text("KEY"),
            principal: text("User:sa-1"),
            method: text("kafka.Produce"),
            operation: text("Write"),
            resource_type: text("Topic"),
            resource_name: text("or\"ders"),
            client_ip: text("10.0.0.1"),
            client_port: Some(9092),
            client_id: text("client"),
            result_status: text("SUCCESS"),
            result_message: text("ok"),
            granted: Some(true),
            service: text("crn://confluent.cloud/kafka=lkc-1"),
            event_type: crate::event::Text::from("io.confluent.kafka.server/authorization"),
            raw: crate::event::Raw::from(&b"{}"[..]),
            ..AuditRow::default()
        };
        let names: Vec<&str> = audit_fields(&row).iter().map(|(k, _)| *k).collect();
        assert!(names.len() > 15, "{names:?}");
        for name in &names {
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{name}");
        }
        let cfg = config();
        let mut e = Encoder::new(&cfg);
        e.audit(&row);
        let v: Value = serde_json::from_slice(&e.bodies[0].bytes).unwrap();
        assert_eq!(v["fields"]["object"], "or\"ders", "values are escaped");
        assert_eq!(v["fields"].as_object().unwrap().len(), names.len());
    }

    #[test]
    fn event_times_are_exact_decimal_seconds() {
        let text = |us: i64| {
            let mut out = Vec::new();
            write_epoch_seconds(&mut out, us);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(text(1_795_511_703_001_000), "1795511703.001");
        assert_eq!(text(1_795_511_703_000_000), "1795511703");
        assert_eq!(text(1_795_511_703_123_456), "1795511703.123456");
        assert_eq!(text(1_500_000), "1.5");
        assert_eq!(text(1), "0.000001");
        assert_eq!(text(0), "0");
        assert_eq!(text(-1_500_000), "-1.5");
        assert_eq!(text(-1), "-0.000001");
        // The same number a float would have written, for every millisecond and microsecond.
        for us in [
            1_795_511_703_001_000i64,
            1_700_000_000_999_999,
            1_234_567,
            86_400_000_001,
        ] {
            assert_eq!(
                text(us).parse::<f64>().unwrap(),
                crate::event::epoch_seconds(us),
                "{us}"
            );
        }
    }

    #[test]
    fn bodies_respect_the_byte_limit_and_split() {
        let cfg = config();
        let mut e = Encoder::new(&cfg);
        let row = AuditRow {
            id: "x".into(),
            raw: crate::event::Raw::from(format!("\"{}\"", "a".repeat(998)).into_bytes()),
            ..AuditRow::default()
        };
        for _ in 0..10 {
            e.audit(&row);
        }
        assert!(e.bodies.len() >= 3);
        assert!(e.bodies.iter().all(|b| b.bytes.len() <= 4096));
        // Every event whole, each in the first body it fits: a body ends only where the next
        // event would have taken it past the limit.
        assert_eq!(e.bodies.iter().map(Body::num_events).sum::<usize>(), 10);
        for (i, b) in e.bodies.iter().enumerate() {
            for j in 0..b.num_events() {
                serde_json::from_slice::<Value>(b.event(j)).unwrap();
            }
            if let Some(next) = e.bodies.get(i + 1) {
                assert!(b.bytes.len() + next.event(0).len() > 4096);
            }
        }
        let (a, b) = e.bodies[0].split();
        assert_eq!(a.num_events() + b.num_events(), e.bodies[0].num_events());
        assert_eq!([a.bytes.as_slice(), b.bytes.as_slice()].concat(), *e.bodies[0].bytes);
    }

    #[test]
    fn delivered_body_buffers_are_reused_up_to_the_limit_and_never_while_shared() {
        let cfg = config();
        let buffers = BodyBuffers::new(3);
        let row = AuditRow {
            id: "x".into(),
            raw: crate::event::Raw::from(format!("\"{}\"", "a".repeat(998)).into_bytes()),
            ..AuditRow::default()
        };
        let mut e = Encoder::with_buffers(&cfg, &buffers);
        for _ in 0..15 {
            e.audit(&row);
        }
        let mut bodies = std::mem::take(&mut e.bodies).into_iter();
        assert!(bodies.len() >= 5);
        let expected: Vec<Vec<u8>> = bodies.as_slice().iter().map(|b| b.bytes.to_vec()).collect();

        // A body still shared (its bytes with an HTTP client) is not kept.
        let first = bodies.next().unwrap();
        let shared = first.bytes.clone();
        buffers.give(first);
        assert!(buffers.is_empty());
        drop(shared);
        // Kept up to the limit.
        for body in bodies {
            buffers.give(body);
        }
        assert_eq!(buffers.len(), 3);

        // New bodies start from the kept buffers, empty, and encode exactly as fresh ones.
        let mut e = Encoder::with_buffers(&cfg, &buffers);
        for _ in 0..15 {
            e.audit(&row);
        }
        assert!(buffers.is_empty(), "every kept buffer taken");
        let again: Vec<Vec<u8>> = e.bodies.iter().map(|b| b.bytes.to_vec()).collect();
        assert_eq!(again, expected);
    }
}
