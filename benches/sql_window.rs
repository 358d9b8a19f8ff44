//! SQL over a full window (docs/PRODUCT.md §9): 10 million audit rows and 10 million metric samples over
//! the last hour, queried through the service's own engine (window `TableProvider`, limits,
//! views) on two cores: p50/p99 of a per-minute GROUP BY over the last 15 minutes, the top 10
//! principals by failures over the hour, and a point lookup by event id; and the window's bytes
//! per row, without `raw` (10M rows) and with a ~1 KB `raw` (measured on 1M rows).
//!
//! Run: `cargo bench --bench sql_window` (AUDITFLOW_BENCH_ROWS overrides the row count; under
//! `cargo test --benches` it runs 100,000 rows).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use auditflow::event::arrow::{audit_batch, metrics_batch};
use auditflow::event::{AuditRow, AuthzVia, MetricKind, MetricSample, PrincipalType, Raw, now_us};
use auditflow::query::engine::QueryEngine;
use auditflow::query::window::{Window, WindowTable};

const BATCH: usize = 2000;
const HOUR_US: i64 = 3_600_000_000;

fn audit_rows(start: usize, n: usize, end_us: i64, total: usize, raw: &Raw) -> Vec<AuditRow> {
    (start..start + n)
        .map(|i| {
            // Spread evenly over the hour ending at `end_us`, oldest first.
            let time_us = end_us - HOUR_US + (i as i64 * HOUR_US) / total as i64;
            let principal = i.wrapping_mul(2654435761) % 200;
            let failed = i % 10 == 0;
            let cluster = i % 3;
            AuditRow {
                time_us,
                id: format!("bench-{i}"),
                event_type: if i % 4 == 0 {
                    "io.confluent.kafka.server/authentication".into()
                } else {
                    "io.confluent.kafka.server/authorization".into()
                },
                method: Some(
                    [
                        "kafka.Produce",
                        "kafka.Fetch",
                        "kafka.Authentication",
                        "kafka.JoinGroup",
                    ][i % 4]
                        .into(),
                ),
                service: Some(
                    format!(
                        "crn://confluent.cloud/organization=o-1/environment=env-{cluster}/cloud-cluster=lkc-{cluster}"
                    )
                    .into(),
                ),
                organization: Some("o-1".into()),
                environment: Some(format!("env-{cluster}").into()),
                cluster_id: Some(format!("lkc-{cluster}").into()),
                resource_type: Some("Topic".into()),
                resource_name: Some(format!("Tech{:02}-topic-{}", principal % 20, i % 50).into()),
                principal: Some(format!("User:sa-{principal:06}").into()),
                principal_type: PrincipalType::ServiceAccount,
                auth_mechanism: Some("SASL_SSL/PLAIN".into()),
                auth_identifier: Some(format!("KEY{principal:013}").into()),
                granted: Some(!failed),
                operation: Some(["Write", "Read", "Describe"][i % 3].into()),
                authz_via: AuthzVia::Acl,
                role: None,
                result_status: Some(if failed { "UNAUTHENTICATED" } else { "SUCCESS" }.into()),
                result_message: failed.then(|| "Authentication failed".into()),
                client_ip: Some(format!("10.0.{}.{}", principal % 8, principal).into()),
                client_port: Some(40000 + (i % 20000) as u16),
                client_id: Some(format!("producer-{}", principal % 40).into()),
                resource_app: Some(format!("Tech{:02}", principal % 20).into()),
                principal_app: Some(format!("Tech{:02}", principal % 20).into()),
                cross_namespace: Some(false),
                principal_name: Some(format!("service-{principal}").into()),
                principal_team: Some(format!("team-{}", principal % 10).into()),
                environment_name: Some("prod".into()),
                region: Some("eu-west-1".into()),
                cloud: Some("aws".into()),
                raw: raw.clone(),
                origin: None,
            }
        })
        .collect()
}

fn metric_samples(start: usize, n: usize, end_us: i64, total: usize) -> Vec<MetricSample> {
    const NAMES: [&str; 4] = [
        "io.confluent.kafka.server/received_bytes",
        "io.confluent.kafka.server/sent_bytes",
        "io.confluent.kafka.server/retained_bytes",
        "io.confluent.kafka.server/partition_count",
    ];
    (start..start + n)
        .map(|i| {
            let cluster = format!("lkc-{}", i % 3);
            let topic = format!("Tech{:02}-topic-{}", i % 20, i % 50);
            MetricSample {
                time_us: end_us - HOUR_US + (i as i64 * HOUR_US) / total as i64,
                name: NAMES[i % 4].into(),
                value: (i % 100_000) as f64,
                kind: MetricKind::Gauge,
                cluster_id: Some(cluster.clone()),
                topic: Some(topic.clone()),
                partition: Some((i % 6) as i32),
                labels: BTreeMap::from([("kafka.id".into(), cluster), ("topic".into(), topic)]),
                resource_app: Some(format!("Tech{:02}", i % 20)),
            }
        })
        .collect()
}

fn fill_audit(table: &WindowTable, rows: usize, end_us: i64, raw: &Raw) {
    for start in (0..rows).step_by(BATCH) {
        let batch = audit_rows(start, BATCH.min(rows - start), end_us, rows, raw);
        let newest = batch.last().map_or(end_us, |r| r.time_us);
        table.append(audit_batch(&batch), newest);
    }
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
    (at(0.5), at(0.99))
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let rows: usize = std::env::var("AUDITFLOW_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 100_000 } else { 10_000_000 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let end_us = now_us();
    let window = Window::new(Duration::from_secs(3600 + 600));
    let empty = Raw::default();

    let started = Instant::now();
    fill_audit(&window.audit, rows, end_us, &empty);
    for start in (0..rows).step_by(BATCH) {
        let batch = metric_samples(start, BATCH.min(rows - start), end_us, rows);
        let newest = batch.last().map_or(end_us, |s| s.time_us);
        window.metrics.append(metrics_batch(&batch), newest);
    }
    println!(
        "sql_window: loaded {rows} audit rows and {rows} metric samples in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "sql_window: window bytes per audit row without raw: {:.0}; per metric sample: {:.0}",
        window.audit.num_bytes() as f64 / rows as f64,
        window.metrics.num_bytes() as f64 / rows as f64
    );

    // With a ~1 KB raw event per row, on a tenth of the rows.
    let with_raw_rows = (rows / 10).max(BATCH);
    let raw = Raw::from(vec![b'x'; 1024]);
    let raw_window = Window::new(Duration::from_secs(3600 + 600));
    fill_audit(&raw_window.audit, with_raw_rows, end_us, &raw);
    println!(
        "sql_window: window bytes per audit row with a 1 KB raw: {:.0} (on {with_raw_rows} rows)",
        raw_window.audit.num_bytes() as f64 / with_raw_rows as f64
    );
    drop(raw_window);

    let engine = QueryEngine::new(&window);
    let point = format!("bench-{}", rows * 2 / 3);
    let queries = [
        (
            "per-minute GROUP BY, last 15 minutes",
            "SELECT date_trunc('minute', time) AS minute, count(*) AS events, \
             sum(CASE WHEN granted = false THEN 1 ELSE 0 END) AS denied \
             FROM audit_events WHERE time > now() - INTERVAL '15 minutes' GROUP BY 1 ORDER BY 1"
                .to_owned(),
        ),
        (
            "top 10 principals by failures, last hour",
            "SELECT principal, count(*) AS failures FROM audit_events \
             WHERE time > now() - INTERVAL '1 hour' AND result_status <> 'SUCCESS' \
             GROUP BY principal ORDER BY failures DESC LIMIT 10"
                .to_owned(),
        ),
        (
            "point lookup by id",
            format!("SELECT time, principal, method, resource_name FROM audit_events WHERE id = '{point}'"),
        ),
        (
            "topic_traffic view, last 15 minutes",
            "SELECT topic, sum(ingress_bytes) AS ingress, sum(egress_bytes) AS egress FROM topic_traffic \
             WHERE minute > now() - INTERVAL '15 minutes' GROUP BY topic ORDER BY egress DESC LIMIT 10"
                .to_owned(),
        ),
    ];
    let runs = if quick { 3 } else { 30 };
    runtime.block_on(async {
        for (label, sql) in &queries {
            let mut samples = Vec::with_capacity(runs);
            let mut result_rows = 0;
            for i in 0..runs + 2 {
                let t = Instant::now();
                let (_, batches) = engine.query(sql).await.unwrap();
                if i >= 2 {
                    samples.push(t.elapsed());
                }
                result_rows = batches.iter().map(|b| b.num_rows()).sum::<usize>();
            }
            assert!(result_rows > 0, "{label}: no rows");
            let (p50, p99) = percentiles(samples);
            println!("sql_window: {label} ({rows} rows): p50 {p50:.1} ms, p99 {p99:.1} ms ({result_rows} result rows)");
        }
    });
}
