//! Decode + validate + enrich + rules (+ Arrow batch build), and HEC encoding with gzip, on the
//! shipped samples. Reported as events per second on one core (criterion's throughput). The
//! whole stage runs on two mixes: `alert_heavy` (the samples as they are: a quarter of events
//! raise an alert) and `realistic` (about one in a thousand). Beside them: the rules alone over
//! many series (`rules/`), and the dedupe memory full at its default capacity (`dedupe/`).

use std::path::Path;
use std::time::Duration;

use auditflow::config::Config;
use auditflow::decode::audit::AuditDecoder;
use auditflow::enrich::dedupe::Dedupe;
use auditflow::enrich::ownership::Ownership;
use auditflow::pipeline::Processor;
use auditflow::query::window::Window;
use auditflow::rules::{RuleEngine, load_dirs};
use auditflow::sinks::splunk_hec::encoder::Encoder;
use auditflow::sinks::splunk_hec::gzip::Gzip;
use auditflow::source::Record;
use auditflow::telemetry::Telemetry;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use datafusion::arrow::array::{RecordBatch, TimestampMicrosecondArray};

mod support;

const BATCH: usize = 2000;

/// A batch of audit records: `samples` with fresh ids, round-robin.
fn records(samples: &[serde_json::Value]) -> Vec<Record> {
    let payloads: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| {
            let mut v = samples[i % samples.len()].clone();
            v["id"] = serde_json::json!(format!("bench-{i}"));
            serde_json::to_vec(&v).unwrap()
        })
        .collect();
    support::audit_poll(&payloads, 0)
}

fn processor() -> (Processor, Window) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = Config::parse("[kafka]\nbootstrap_servers = \"x:1\"\n", "bench").unwrap();
    let ownership = Ownership::load(&root.join("deploy/namespaces.example.yaml")).unwrap();
    let rules = RuleEngine::new(load_dirs(&[root.join("rules")]).unwrap());
    let (tx, _) = tokio::sync::broadcast::channel(16);
    let window = Window::new(Duration::from_secs(60));
    let processor = Processor::new(
        &config,
        ownership,
        Default::default(),
        rules,
        window.clone(),
        Telemetry::new(),
        tx,
    );
    (processor, window)
}

fn bench(c: &mut Criterion) {
    let records = records(&support::samples());
    let payloads: Vec<Vec<u8>> = records.iter().map(|r| r.payload.as_deref().unwrap().to_vec()).collect();
    let mut group = c.benchmark_group("audit");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);

    let mut decoder = AuditDecoder::new(true, 1 << 20);
    group.bench_function("decode_validate", |b| {
        b.iter(|| {
            payloads
                .iter()
                .map(|p| decoder.decode(p).unwrap().raw.len())
                .sum::<usize>()
        })
    });
    let mut unvalidated = AuditDecoder::new(false, 1 << 20);
    group.bench_function("decode_only", |b| {
        b.iter(|| {
            payloads
                .iter()
                .map(|p| unvalidated.decode(p).unwrap().raw.len())
                .sum::<usize>()
        })
    });

    // Every iteration gets ids of its own (made outside the measurement), or the dedupe stage
    // would drop the whole batch as repeats from the second iteration on; and event times that
    // move on (1 ms per event, from an hour ago), so the rules' clocks release their cells and
    // the window evicts as it does while a backlog drains: a steady state, not a growing one.
    let mixes = [
        ("alert_heavy", support::samples()),
        ("realistic", support::realistic_mix(support::samples())),
    ];
    let start = chrono::Utc::now() - chrono::Duration::hours(1);
    // `PIPELINE_BATCH=N` polls of N records instead (what a poll's fixed costs are worth).
    let poll: usize = std::env::var("PIPELINE_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BATCH);
    group.throughput(Throughput::Elements(poll as u64));
    for (mix, samples) in mixes {
        let (mut p, window) = processor();
        let mut iteration = 0usize;
        let name = if mix == "alert_heavy" {
            // The name the figures in the README were measured under.
            "decode_validate_enrich_rules_window".to_owned()
        } else {
            format!("decode_validate_enrich_rules_window_{mix}")
        };
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    iteration += 1;
                    let first = iteration * poll;
                    let payloads: Vec<Vec<u8>> = (first..first + poll)
                        .map(|n| support::event_bytes(&samples, n, start + chrono::Duration::milliseconds(n as i64)))
                        .collect();
                    support::audit_poll(&payloads, first)
                },
                |batch| {
                    let out = p.process(&batch);
                    assert!(out.dead_letters.is_empty());
                    assert_eq!(out.audit.len(), poll, "no event may be dropped as a repeat");
                    out.audit.len()
                },
                criterion::BatchSize::LargeInput,
            )
        });
        eprintln!(
            "{mix}: after {iteration} batches, window {} MB, {} rows waiting for the rules' clock",
            window.audit.num_bytes() / (1 << 20),
            p.rules().num_buffered()[0]
        );
    }

    group.throughput(Throughput::Elements(BATCH as u64));
    let rows: Vec<_> = payloads.iter().map(|p| decoder.decode(p).unwrap()).collect();
    let hec: auditflow::config::RawHecSink = toml::from_str("endpoints = [\"http://x\"]\ntoken = \"t\"\n").unwrap();
    let hec = hec.validate(auditflow::config::Check { origin: "bench" }).unwrap();
    // The sink keeps its compressors and output buffers from body to body; so does this.
    let (mut compressor, mut out) = (Gzip::default(), Vec::new());
    group.bench_function("hec_encode_gzip", |b| {
        b.iter(|| {
            let mut e = Encoder::new(&hec);
            for r in &rows {
                e.audit(r);
            }
            e.bodies
                .iter()
                .map(|body| {
                    compressor.compress_into(&body.bytes, &mut out).expect("gzip");
                    out.len()
                })
                .sum::<usize>()
        })
    });
    group.finish();
}

/// The dedupe memory at its default capacity (2,000,000 ids), full, taking polls of fresh ids:
/// each insert remembers one id and the capacity makes it forget an old one. Ids look like
/// Confluent's (36-character UUIDs). Also prints what the full memory takes.
fn bench_dedupe(c: &mut Criterion) {
    const CAPACITY: usize = 2_000_000;
    let id = |n: usize| {
        format!(
            "{:08x}-{:04x}-4000-8000-{:012x}",
            n >> 16,
            n & 0xffff,
            n.wrapping_mul(2654435761)
        )
    };
    let before = rss_bytes();
    let mut dedupe = Dedupe::new(Duration::from_secs(3600), CAPACITY);
    let now = 1_767_225_600_000_000;
    let mut next = 0;
    while next < CAPACITY + CAPACITY / 10 {
        assert!(dedupe.insert(&id(next), now));
        next += 1;
    }
    eprintln!(
        "dedupe: {} ids remembered in {} MB",
        dedupe.len(),
        rss_bytes().saturating_sub(before) >> 20
    );
    let mut group = c.benchmark_group("dedupe");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("insert_at_capacity", |b| {
        b.iter_batched(
            || {
                next += BATCH;
                (next - BATCH..next).map(id).collect::<Vec<_>>()
            },
            |ids| ids.iter().filter(|id| dedupe.insert(id, now)).count(),
            criterion::BatchSize::LargeInput,
        )
    });
    // As the processor inserts a poll's ids: keys first, their slots read ahead, then inserts.
    group.bench_function("insert_at_capacity_warmed", |b| {
        b.iter_batched(
            || {
                next += BATCH;
                (next - BATCH..next).map(id).collect::<Vec<_>>()
            },
            |ids| {
                let keys: Vec<_> = ids.iter().map(|id| dedupe.key(id)).collect();
                dedupe.warm(&keys);
                keys.into_iter().filter(|&key| dedupe.insert_key(key, now)).count()
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// Resident set size of this process, in bytes.
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(0)
        * 4096
}

/// 30 active rules (count, distinct count, threshold-free match mix) over 100,000 distinct
/// series: events per second through all of them, and memory per series.
fn bench_rules(c: &mut Criterion) {
    use auditflow::event::AuditRow;
    use auditflow::event::arrow::audit_batch;
    use auditflow::rules::{Source, parse_rules};

    const SERIES: usize = 100_000;
    let mut text = String::from("groups:\n  - name: bench\n    rules:\n");
    for i in 0..30 {
        let (kind, extra) = match i % 3 {
            0 => ("count", "        window: 5m\n        threshold: 1000000\n"),
            1 => (
                "count",
                "        window: 5m\n        threshold: 1000000\n        distinct: client_ip\n",
            ),
            _ => ("count", "        window: 10m\n        threshold: 1000000\n"),
        };
        text.push_str(&format!(
            "      - id: r{i}\n        kind: {kind}\n        where: \"result_status <> 'SUCCESS' AND auth_mechanism = 'SASL_SSL/PLAIN'\"\n        group_by: [auth_identifier]\n{extra}        max_series: 200000\n        severity: low\n        summary: s\n"
        ));
    }
    let ctx = datafusion::execution::context::SessionContext::new();
    // Built on first use, so that selecting another bench does not pay for filling 3M series
    // (long enough to distort a profile of it).
    let fill = || {
        let raw = auditflow::event::Raw::from(&b"{}"[..]);
        let batches: Vec<_> = (0..SERIES / BATCH)
            .map(|b| {
                let rows: Vec<AuditRow> = (0..BATCH)
                    .map(|i| {
                        let n = b * BATCH + i;
                        AuditRow {
                            time_us: 1_767_225_600_000_000 + (n as i64) * 1_000,
                            id: format!("e{n}"),
                            event_type: "io.confluent.kafka.server/authentication".into(),
                            auth_identifier: Some(format!("KEY{n:08}").into()),
                            auth_mechanism: Some("SASL_SSL/PLAIN".into()),
                            client_ip: Some(format!("10.0.{}.{}", n % 200, n % 250).into()),
                            result_status: Some("UNAUTHENTICATED".into()),
                            raw: raw.clone(),
                            ..AuditRow::default()
                        }
                    })
                    .collect();
                audit_batch(&rows)
            })
            .collect();

        // Fill every series once, measuring memory.
        let before = rss_bytes();
        let mut engine = RuleEngine::new(parse_rules(&ctx, &text, Path::new("bench.yaml")).unwrap());
        for b in &batches {
            engine.evaluate(Source::Audit, b);
        }
        let after = rss_bytes();
        eprintln!(
            "rules/30_rules_100k_series: {} series, {:.0} bytes per series (RSS delta {} MB)",
            30 * SERIES,
            (after.saturating_sub(before)) as f64 / (30 * SERIES) as f64,
            (after.saturating_sub(before)) / (1 << 20)
        );
        (engine, batches)
    };
    let mut fixture: Option<(RuleEngine, Vec<RecordBatch>)> = None;

    let mut group = c.benchmark_group("rules");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    // Each pass over the series moves time forward by the span of one pass, so windows slide and
    // state stays at its steady size instead of growing.
    let span_us = (SERIES as i64) * 1_000;
    let mut i = 0;
    let mut pass: i64 = 1;
    group.bench_function("30_rules_100k_series", |bench| {
        let (engine, batches) = fixture.get_or_insert_with(fill);
        bench.iter(|| {
            i += 1;
            if i == batches.len() {
                i = 0;
                pass += 1;
            }
            let moved = shifted(&batches[i], pass * span_us);
            engine.evaluate(Source::Audit, &moved).1
        })
    });
    // The pipeline's path: each batch through the per-partition clock and the reorder buffer
    // (three partitions, each batch from one of them in turn), released whole cells at a time.
    let mut engine = RuleEngine::new(parse_rules(&ctx, &text, Path::new("bench.yaml")).unwrap());
    let topic: std::sync::Arc<str> = std::sync::Arc::from("audit");
    let mut clock = auditflow::rules::clock::EventClock::new(std::time::Duration::MAX, std::time::Duration::ZERO);
    let (mut i, mut pass) = (0, 1_i64);
    group.bench_function("30_rules_100k_series_per_partition_clock", |bench| {
        let batches = &fixture.get_or_insert_with(fill).1;
        bench.iter(|| {
            i += 1;
            if i == batches.len() {
                i = 0;
                pass += 1;
            }
            let moved = shifted(&batches[i], pass * span_us);
            let newest = datafusion::arrow::compute::max(
                moved
                    .column(0)
                    .as_any()
                    .downcast_ref::<TimestampMicrosecondArray>()
                    .unwrap(),
            )
            .unwrap();
            // Partitions 0..3 advance together, as a consumer that keeps up fetches them.
            for p in 0..3 {
                clock.observe(&topic, p, newest, 0);
            }
            engine.ingest(Source::Audit, Some(moved), clock.watermark(0)).1
        })
    });
    group.finish();
}

/// `b` with its event times moved `by_us` later, so windows slide between passes.
fn shifted(b: &RecordBatch, by_us: i64) -> RecordBatch {
    let times = b
        .column(0)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .unwrap();
    let moved: TimestampMicrosecondArray = times
        .iter()
        .map(|t| t.map(|t| t + by_us))
        .collect::<TimestampMicrosecondArray>()
        .with_timezone("UTC");
    let mut columns = b.columns().to_vec();
    columns[0] = std::sync::Arc::new(moved);
    RecordBatch::try_new(b.schema(), columns).unwrap()
}

criterion_group!(benches, bench, bench_rules, bench_dedupe);
criterion_main!(benches);
