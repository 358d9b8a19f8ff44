//! The compliance archive: write throughput with the pipeline (decode, dedupe, enrich, shipped
//! rules, window, then the archive's spool and Parquet files), bytes on disk per event, and
//! `verify` speed. Prints figures (no timing assertions). Run: `cargo bench --bench archive`.

use std::path::Path;
use std::time::{Duration, Instant};

use auditflow::archive::verify::{VerifyOptions, verify};
use auditflow::archive::writer::ArchiveWriter;
use auditflow::config::{ArchiveConfig, Config};
use auditflow::enrich::ownership::Ownership;
use auditflow::pipeline::Processor;
use auditflow::query::window::Window;
use auditflow::rules::{RuleEngine, load_dirs};
use auditflow::source::Record;
use auditflow::telemetry::Telemetry;

mod support;

const EVENTS: usize = 200_000;
const BATCH: usize = 2_000;

/// The shipped audit samples with fresh ids, one partition, consecutive offsets.
fn records() -> Vec<Vec<Record>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/samples/audit");
    let mut samples: Vec<serde_json::Value> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    samples.sort_by_key(|v| v["id"].as_str().unwrap().to_owned());
    let start = chrono::Utc::now() - chrono::Duration::hours(1);
    let payloads: Vec<Vec<u8>> = (0..EVENTS)
        .map(|i| {
            let mut v = samples[i % samples.len()].clone();
            v["id"] = serde_json::json!(format!("bench-{i}"));
            // An hour of traffic, so files split by hour as they do live.
            let t = start + chrono::Duration::milliseconds((i as i64) * 3_600_000 / EVENTS as i64);
            v["time"] = serde_json::json!(t.to_rfc3339());
            serde_json::to_vec(&v).unwrap()
        })
        .collect();
    (0..EVENTS)
        .step_by(BATCH)
        .map(|first| support::audit_poll(&payloads[first..(first + BATCH).min(EVENTS)], first))
        .collect()
}

fn processor() -> Processor {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = Config::parse("[kafka]\nbootstrap_servers = \"x:1\"\n", "bench").unwrap();
    let ownership = Ownership::load(&root.join("deploy/namespaces.example.yaml")).unwrap();
    let rules = RuleEngine::new(load_dirs(&[root.join("rules")]).unwrap());
    let (tx, _) = tokio::sync::broadcast::channel(16);
    Processor::new(
        &config,
        ownership,
        Default::default(),
        rules,
        Window::new(Duration::from_secs(7200)),
        Telemetry::new(),
        tx,
    )
}

/// CPU time of this process (user + system).
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

fn dir_bytes(dir: &Path, ext: &str) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            total += dir_bytes(&p, ext);
        } else if p.extension().is_some_and(|e| e == ext) {
            total += std::fs::metadata(&p).unwrap().len();
        }
    }
    total
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let batches = records();
    let raw_bytes: usize = batches
        .iter()
        .flatten()
        .map(|r| r.payload.as_ref().unwrap().len())
        .sum();
    let tmp = tempfile::tempdir().unwrap();
    let config = ArchiveConfig {
        url: tmp.path().join("archive").display().to_string(),
        max_file_rows: 100_000,
        max_file_age: Duration::from_secs(300),
        signing_key: None,
        spool_dir: tmp.path().join("spool"),
    };
    let mut writer = ArchiveWriter::open(&config, vec!["confluent-audit-log-events".into()])
        .await
        .unwrap();

    // The pipeline alone, then the pipeline with the archive, on the same records.
    let mut p = processor();
    let (wall, cpu0) = (Instant::now(), cpu());
    for b in &batches {
        std::hint::black_box(p.process(b));
    }
    let (pipeline_wall, pipeline_cpu) = (wall.elapsed(), cpu() - cpu0);

    let mut p = processor();
    let mut archive_cpu = Duration::ZERO;
    let (wall, cpu0) = (Instant::now(), cpu());
    for b in &batches {
        let batch = p.process(b);
        let c = cpu();
        if let Some(frame) = writer.frame_of(&batch) {
            writer.spool(std::sync::Arc::new(frame)).await.unwrap();
        }
        if writer.is_full() {
            writer.close().await.unwrap();
        }
        archive_cpu += cpu() - c;
    }
    let c = cpu();
    writer.close().await.unwrap();
    archive_cpu += cpu() - c;
    let (total_wall, total_cpu) = (wall.elapsed(), cpu() - cpu0);

    let parquet = dir_bytes(&tmp.path().join("archive"), "parquet");
    let per_s = |d: Duration| EVENTS as f64 / d.as_secs_f64();
    println!(
        "archive write, {EVENTS} shipped-sample audit events (~{} B each), batches of {BATCH}:",
        raw_bytes / EVENTS
    );
    println!(
        "  pipeline alone:           {:>9.0} events/s wall, {:>9.0} events per CPU-second",
        per_s(pipeline_wall),
        per_s(pipeline_cpu)
    );
    println!(
        "  pipeline + archive:       {:>9.0} events/s wall, {:>9.0} events per CPU-second",
        per_s(total_wall),
        per_s(total_cpu)
    );
    println!(
        "  archive stage alone:      {:>9.0} events per CPU-second (spool fsync per batch, Parquet zstd, manifest)",
        per_s(archive_cpu)
    );
    println!(
        "  on disk: {:.1} bytes per event in Parquet (raw JSON {:.0} bytes; {:.1}x smaller)",
        parquet as f64 / EVENTS as f64,
        raw_bytes as f64 / EVENTS as f64,
        raw_bytes as f64 / parquet as f64
    );

    let started = Instant::now();
    let report = verify(&config.url, &VerifyOptions::default()).await.unwrap();
    let took = started.elapsed();
    assert!(report.is_clean(), "{report}");
    println!(
        "  verify: {} bytes in {:.2} s = {:.0} MB/s ({} files, {} rows)",
        report.bytes,
        took.as_secs_f64(),
        report.bytes as f64 / 1e6 / took.as_secs_f64(),
        report.files,
        report.rows
    );
}
