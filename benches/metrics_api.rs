//! The Metrics API poller's work per poll for 1,000 topics x 6 metrics (6,000 series): parse the
//! export's Prometheus text, key each series for the repeat check, write canonical JSON, and
//! decode it again in the processor. Also prints the resident-memory growth of one poll.

use auditflow::config::DecodeConfig;
use auditflow::decode::metrics::{MetricHeaders, MetricsDecoder};
use auditflow::source::metrics_api::export;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const TOPICS: usize = 1000;
const METRICS: [&str; 6] = [
    "confluent_kafka_server_received_bytes",
    "confluent_kafka_server_sent_bytes",
    "confluent_kafka_server_retained_bytes",
    "confluent_kafka_server_received_records",
    "confluent_kafka_server_sent_records",
    "confluent_kafka_server_partition_count",
];

/// An export body in the real shape: HELP/TYPE per family, trailing commas, ms timestamps.
fn body() -> String {
    let mut out = String::new();
    for m in METRICS {
        out.push_str(&format!("# HELP {m} A Confluent Cloud metric.\n# TYPE {m} gauge\n"));
        for t in 0..TOPICS {
            out.push_str(&format!(
                "{m}{{kafka_id=\"lkc-9kg320\",topic=\"Tech{:02}-topic-{t:04}\",}} {}.0 1638297960000\n",
                t % 40,
                (t * 7919) % 1_000_003
            ));
        }
    }
    out
}

fn poll(body: &str, decoder: &MetricsDecoder) -> usize {
    let exported = export::parse(body, 0).unwrap();
    let mut keys = std::collections::HashSet::with_capacity(exported.samples.len());
    let mut payload = Vec::with_capacity(body.len() * 2);
    for s in &exported.samples {
        keys.insert(s.series_key());
        serde_json::to_writer(&mut payload, s).unwrap();
        payload.push(b'\n');
    }
    let decoded = decoder.decode(&payload, &MetricHeaders::default()).unwrap();
    assert_eq!(decoded.len(), keys.len());
    decoded.len()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn bench(c: &mut Criterion) {
    let body = body();
    let decoder = MetricsDecoder::new(DecodeConfig {
        max_record_bytes: 64 << 20,
        ..DecodeConfig::default()
    });
    let before = rss_kib();
    let n = poll(&body, &decoder);
    println!(
        "one poll: {} series, {} KiB of Prometheus text, peak RSS +{} KiB",
        n,
        body.len() / 1024,
        rss_kib().saturating_sub(before)
    );
    let mut group = c.benchmark_group("metrics_api");
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(20);
    group.bench_function("poll_1000_topics_x_6_metrics", |b| b.iter(|| poll(&body, &decoder)));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
