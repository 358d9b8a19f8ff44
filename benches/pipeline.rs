//! Decode + validate + enrich + rules (+ Arrow batch build), and HEC encoding with gzip, on the
//! shipped samples. Reported as events per second on one core (criterion's throughput).

use std::path::Path;
use std::time::Duration;

use auditflow::config::Config;
use auditflow::decode::audit::AuditDecoder;
use auditflow::enrich::ownership::Ownership;
use auditflow::pipeline::Processor;
use auditflow::query::window::Window;
use auditflow::rules::{RuleEngine, load_dirs};
use auditflow::sinks::splunk_hec::encoder::{Encoder, gzip};
use auditflow::source::{Record, Stream};
use auditflow::telemetry::Telemetry;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const BATCH: usize = 2000;

/// A batch of audit records: the shared samples with fresh ids, round-robin.
fn records() -> Vec<Record> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/samples/audit");
    let mut samples: Vec<serde_json::Value> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    samples.sort_by_key(|v| v["id"].as_str().unwrap().to_owned());
    let topic: std::sync::Arc<str> = std::sync::Arc::from("confluent-audit-log-events");
    (0..BATCH)
        .map(|i| {
            let mut v = samples[i % samples.len()].clone();
            v["id"] = serde_json::json!(format!("bench-{i}"));
            Record {
                stream: Stream::Audit,
                topic: topic.clone(),
                partition: 0,
                offset: i as i64,
                timestamp_ms: None,
                key: None,
                payload: Some(serde_json::to_vec(&v).unwrap()),
                headers: Vec::new(),
            }
        })
        .collect()
}

fn processor() -> Processor {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = Config::parse(
        "[kafka]\nbootstrap_servers = \"x:1\"\n[enrich]\ndedupe_capacity = 1\n",
        "bench",
    )
    .unwrap();
    let ownership = Ownership::load(&root.join("deploy/namespaces.example.yaml")).unwrap();
    let rules = RuleEngine::new(load_dirs(&[root.join("rules")]).unwrap());
    let (tx, _) = tokio::sync::broadcast::channel(16);
    Processor::new(
        &config,
        ownership,
        Default::default(),
        rules,
        Window::new(Duration::from_secs(60)),
        Telemetry::new(),
        tx,
    )
}

fn bench(c: &mut Criterion) {
    let records = records();
    let payloads: Vec<Vec<u8>> = records.iter().map(|r| r.payload.clone().unwrap()).collect();
    let mut group = c.benchmark_group("audit");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);

    let decoder = AuditDecoder::new(true, 1 << 20);
    group.bench_function("decode_validate", |b| {
        b.iter(|| {
            payloads
                .iter()
                .map(|p| decoder.decode(p).unwrap().raw.len())
                .sum::<usize>()
        })
    });
    let unvalidated = AuditDecoder::new(false, 1 << 20);
    group.bench_function("decode_only", |b| {
        b.iter(|| {
            payloads
                .iter()
                .map(|p| unvalidated.decode(p).unwrap().raw.len())
                .sum::<usize>()
        })
    });

    // Dedupe capacity 1 keeps the repeated ids of successive iterations from being dropped.
    let mut p = processor();
    group.bench_function("decode_validate_enrich_rules_window", |b| {
        b.iter(|| {
            let out = p.process(&records);
            assert!(out.rejected.is_empty());
            out.batch.audit.len()
        })
    });

    let rows: Vec<_> = payloads.iter().map(|p| decoder.decode(p).unwrap()).collect();
    let hec: auditflow::sinks::splunk_hec::HecSinkConfig =
        toml::from_str("endpoints = [\"http://x\"]\ntoken = \"t\"\n").unwrap();
    group.bench_function("hec_encode_gzip", |b| {
        b.iter(|| {
            let mut e = Encoder::new(&hec);
            for r in &rows {
                e.audit(r);
            }
            e.bodies.iter().map(|body| gzip(&body.bytes).len()).sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
