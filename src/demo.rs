//! `auditflow demo`: everything on one machine with nothing installed. An in-process Kafka
//! (librdkafka's mock cluster), a generator of audit events and metric samples for three
//! applications with incidents mixed in, the full pipeline, and the SQL endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::FileSinkConfig;
use crate::config::{Config, RawConfig};
use crate::event::now_us;
use crate::pipeline;

pub const AUDIT_TOPIC: &str = "confluent-audit-log-events";
pub const METRICS_TOPIC: &str = "confluent-metrics";
pub const DEAD_LETTER_TOPIC: &str = "auditflow-dead-letter";

/// The shipped rule pack and namespace file, embedded so the demo runs from anywhere.
const EMBEDDED: [(&str, &str); 7] = [
    (
        "rules/authentication.yaml",
        include_str!("../rules/authentication.yaml"),
    ),
    ("rules/authorization.yaml", include_str!("../rules/authorization.yaml")),
    ("rules/traffic.yaml", include_str!("../rules/traffic.yaml")),
    ("rules/limits.yaml", include_str!("../rules/limits.yaml")),
    ("rules/correlation.yaml", include_str!("../rules/correlation.yaml")),
    ("namespaces.yaml", include_str!("../deploy/namespaces.example.yaml")),
    ("directory.yaml", include_str!("../deploy/directory.example.yaml")),
];

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("mock kafka cluster: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("writing demo files: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Pipeline(#[from] pipeline::PipelineError),
}

/// Options of `auditflow demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub duration: Option<Duration>,
    pub http_listen: SocketAddr,
    /// Address of the PostgreSQL wire protocol endpoint.
    pub pg_listen: SocketAddr,
    pub output: PathBuf,
    /// Audit events per second of normal traffic.
    pub rate: u32,
    /// Sinks (HEC, OTLP) from a config file, replacing the file sink when given.
    pub sinks_from: Option<Config>,
}

struct App {
    principal: &'static str,
    api_key: &'static str,
    topics: [&'static str; 2],
    group: &'static str,
}

const APPS: [App; 3] = [
    App {
        principal: "User:sa-r8v2kq",
        api_key: "KQ4ZT7WJ3NFXD2LB",
        topics: ["Tech01-orders", "Tech01-invoices"],
        group: "Tech01-Consumer-Group-01",
    },
    App {
        principal: "User:sa-k2p9wd",
        api_key: "PL7XW2QH9ZD4MN3R",
        topics: ["Tech02-payments", "Tech02-refunds"],
        group: "Tech02-Consumer-Group-01",
    },
    App {
        principal: "User:sa-m3n8zd",
        api_key: "HX2VB8KL5TQ9WC1J",
        topics: ["Tech03-shipments", "Tech03-tracking"],
        group: "Tech03-Consumer-Group-01",
    },
];

const ORG: &str = "5d1c2b7e-8f3a-4c21-9e6d-0a4b7c3e9f12";
const ENV: &str = "env-q7k2m";
const CLUSTER: &str = "lkc-7x3p9w";

fn crn(resource: Option<(&str, &str)>) -> String {
    let base =
        format!("crn://confluent.cloud/organization={ORG}/environment={ENV}/cloud-cluster={CLUSTER}/kafka={CLUSTER}");
    match resource {
        Some((k, v)) => format!("{base}/{k}={v}"),
        None => base,
    }
}

fn time_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn authentication(principal: &str, key: &str, ok: bool, ip: &str) -> Value {
    json!({
        "specversion": "1.0", "id": uuid::Uuid::new_v4().to_string(), "source": crn(None),
        "type": "io.confluent.kafka.server/authentication", "datacontenttype": "application/json",
        "subject": crn(None), "time": time_now(),
        "data": {
            "serviceName": crn(None), "methodName": "kafka.Authentication", "resourceName": crn(None),
            "authenticationInfo": {
                "principal": if ok { principal } else { "None:UNKNOWN_USER" },
                "metadata": { "mechanism": "SASL_SSL/PLAIN", "identifier": key }
            },
            "requestMetadata": { "connection_id": 170112233445566000u64 + rand::random_range(0..100000u64), "client_address": format!("/{ip}:{}", rand::random_range(40000..60000)) },
            "result": if ok { json!({"status": "SUCCESS"}) } else { json!({"status": "UNAUTHENTICATED", "message": "Authentication failed"}) }
        }
    })
}

fn authorization(
    principal: &str,
    method: &str,
    operation: &str,
    kind: (&str, &str),
    resource: &str,
    granted: bool,
) -> Value {
    let (crn_key, resource_type) = kind;
    let mut info = json!({
        "granted": granted, "operation": operation, "resourceType": resource_type,
        "resourceName": resource, "patternType": "LITERAL"
    });
    if granted {
        info["aclAuthorization"] = json!({"permissionType": "ALLOW", "host": "*"});
    }
    json!({
        "specversion": "1.0", "id": uuid::Uuid::new_v4().to_string(), "source": crn(None),
        "type": "io.confluent.kafka.server/authorization", "datacontenttype": "application/json",
        "subject": crn(Some((crn_key, resource))), "time": time_now(),
        "data": {
            "serviceName": crn(None), "methodName": method, "resourceName": crn(Some((crn_key, resource))),
            "authenticationInfo": { "principal": principal },
            "authorizationInfo": info,
            "request": { "correlation_id": rand::random_range(1..100000).to_string(), "client_id": "demo-client" },
            "requestMetadata": { "request_id": 170112233450000000u64 + rand::random_range(0..100000u64), "client_address": "/10.0.4.17" }
        }
    })
}

fn metric(name: &str, value: f64, topic: Option<&str>) -> Value {
    let labels = match topic {
        Some(t) => json!({"topic": t}),
        None => json!({}),
    };
    json!({"metric": name, "timestamp": time_now(), "value": value, "resource": {"kafka.id": CLUSTER}, "labels": labels})
}

/// Writes the embedded rule pack and namespace file to a scratch directory.
fn write_embedded() -> Result<PathBuf, std::io::Error> {
    let dir = std::env::temp_dir().join(format!("auditflow-demo-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("rules"))?;
    for (name, text) in EMBEDDED {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(dir)
}

/// Produces normal traffic and the incidents until `stop`.
async fn generate(producer: FutureProducer, rate: u32, stop: CancellationToken) {
    let send = |topic: &'static str, value: Value| {
        let producer = producer.clone();
        async move {
            let body = value.to_string();
            let headers = OwnedHeaders::new().insert(Header {
                key: "content-type",
                value: Some("application/cloudevents+json; charset=UTF-8"),
            });
            let record: FutureRecord<'_, (), str> = FutureRecord::to(topic).payload(body.as_str()).headers(headers);
            if let Err((e, _)) = producer.send(record, Duration::from_secs(5)).await {
                tracing::warn!(error = %e, "demo generator could not produce");
            }
        }
    };
    let tick = Duration::from_millis(100);
    let per_tick = (rate / 10).max(1);
    let mut step: u64 = 0;
    let mut interval = tokio::time::interval(tick);
    while !stop.is_cancelled() {
        interval.tick().await;
        step += 1;
        let second = step / 10;
        // Normal traffic: logins and reads/writes on each application's own topics.
        for i in 0..per_tick {
            let app = &APPS[(step as usize + i as usize) % APPS.len()];
            let topic = app.topics[i as usize % 2];
            let event = match i % 4 {
                0 => authentication(app.principal, app.api_key, true, "10.0.4.17"),
                1 => authorization(app.principal, "kafka.Produce", "Write", ("topic", "Topic"), topic, true),
                2 => authorization(
                    app.principal,
                    "kafka.FetchConsumer",
                    "Read",
                    ("topic", "Topic"),
                    topic,
                    true,
                ),
                _ => authorization(
                    app.principal,
                    "kafka.JoinGroup",
                    "Read",
                    ("group", "Group"),
                    app.group,
                    true,
                ),
            };
            send(AUDIT_TOPIC, event).await;
        }
        // Metrics every 5 s: per-topic bytes in and out, storage, cluster-wide counts.
        if step.is_multiple_of(50) {
            for app in &APPS {
                for topic in app.topics {
                    send(
                        METRICS_TOPIC,
                        metric(
                            "io.confluent.kafka.server/received_bytes",
                            4.0e6 + rand::random_range(0.0..1.0e6),
                            Some(topic),
                        ),
                    )
                    .await;
                    send(
                        METRICS_TOPIC,
                        metric(
                            "io.confluent.kafka.server/sent_bytes",
                            8.0e6 + rand::random_range(0.0..2.0e6),
                            Some(topic),
                        ),
                    )
                    .await;
                    send(
                        METRICS_TOPIC,
                        metric("io.confluent.kafka.server/retained_bytes", 2.0e9, Some(topic)),
                    )
                    .await;
                }
            }
            send(
                METRICS_TOPIC,
                metric("io.confluent.kafka.server/partition_count", 1874.0, None),
            )
            .await;
        }
        // Incidents, each once per two-minute cycle.
        if !step.is_multiple_of(10) {
            continue;
        }
        match second % 120 {
            10 => {
                tracing::info!("demo incident: brute-force burst on API key ZZ9X0BADKEY00001");
                for _ in 0..50 {
                    send(
                        AUDIT_TOPIC,
                        authentication("", "ZZ9X0BADKEY00001", false, "198.51.100.77"),
                    )
                    .await;
                }
            }
            25 => {
                tracing::info!("demo incident: password spray from 203.0.113.9");
                for n in 0..12 {
                    send(
                        AUDIT_TOPIC,
                        authentication("", &format!("SPRAYKEY{n:08}"), false, "203.0.113.9"),
                    )
                    .await;
                }
            }
            40 => {
                tracing::info!("demo incident: Tech03's service account reads Tech02-payments");
                send(
                    AUDIT_TOPIC,
                    authorization(
                        "User:sa-m3n8zd",
                        "kafka.FetchConsumer",
                        "Read",
                        ("topic", "Topic"),
                        "Tech02-payments",
                        false,
                    ),
                )
                .await;
            }
            55 => {
                tracing::info!("demo incident: egress spike on Tech01-orders");
                send(
                    METRICS_TOPIC,
                    metric("io.confluent.kafka.server/sent_bytes", 1.2e10, Some("Tech01-orders")),
                )
                .await;
            }
            70 => {
                tracing::info!("demo incident: topic deletion and a poison record");
                send(
                    AUDIT_TOPIC,
                    authorization(
                        "User:bob",
                        "kafka.DeleteTopics",
                        "Delete",
                        ("topic", "Topic"),
                        "Tech02-refunds",
                        true,
                    ),
                )
                .await;
                let record: FutureRecord<'_, (), str> =
                    FutureRecord::to(AUDIT_TOPIC).payload("this is not an audit event");
                let _ = producer.send(record, Duration::from_secs(5)).await;
            }
            _ => {}
        }
    }
}

/// Runs the demo until Ctrl-C or the duration elapses.
pub async fn run(options: DemoOptions) -> Result<(), DemoError> {
    let cluster = MockCluster::new(1)?;
    cluster.create_topic(AUDIT_TOPIC, 3, 1)?;
    cluster.create_topic(METRICS_TOPIC, 1, 1)?;
    cluster.create_topic(DEAD_LETTER_TOPIC, 1, 1)?;
    let bootstrap = cluster.bootstrap_servers();
    let scratch = write_embedded()?;

    // Parsed, not built by hand: every key the demo does not set keeps its documented default.
    let mut raw: RawConfig = toml::from_str(&format!("[kafka]\nbootstrap_servers = {bootstrap:?}\n")).map_err(|e| {
        crate::config::ConfigError::Parse {
            path: "demo".into(),
            message: e.to_string(),
        }
    })?;
    raw.kafka.group_id = "auditflow-demo".into();
    // The demo's broker lives as long as the process: so does what it delivered.
    raw.data_dir = scratch.join("data").display().to_string();
    raw.enrich.namespaces = Some(scratch.join("namespaces.yaml"));
    raw.enrich.directory = Some(scratch.join("directory.yaml"));
    raw.enrich.dedupe_horizon = "1h".into();
    raw.enrich.dedupe_capacity = 2_000_000;
    raw.rules.dirs = vec![scratch.join("rules")];
    raw.window.retention = "1h".into();
    raw.server.http_listen = Some(options.http_listen.to_string());
    raw.server.pg_listen = Some(options.pg_listen.to_string());
    let mut config = Config::validate(raw, "demo")?;
    config.sinks = match &options.sinks_from {
        Some(c) => c.sinks.clone(),
        None => crate::config::SinksConfig {
            file: Some(FileSinkConfig {
                path: options.output.clone(),
            }),
            ..Default::default()
        },
    };

    let shutdown = CancellationToken::new();
    let running = pipeline::start(config, shutdown.clone()).await?;
    let http = running.http_addr.map(|a| a.to_string()).unwrap_or_default();
    println!("auditflow demo");
    println!("  kafka (in-process mock cluster): {bootstrap}");
    println!("  rules loaded: {}", running.num_rules);
    match &options.sinks_from {
        Some(_) => println!("  sinks: from the given config"),
        None => println!("  file sink: {}", options.output.display()),
    }
    println!("  SQL endpoint: http://{http}/v1/sql   metrics: http://{http}/metrics");
    let pg = running.pg_addr.map(|a| (a.ip().to_string(), a.port()));
    if let Some((host, port)) = &pg {
        println!("  PostgreSQL endpoint: {host}:{port} (any user, database auditflow)");
    }
    println!();
    println!("Try, while it runs:");
    println!(
        "  cargo run --release -- sql --url http://{http} \"SELECT rule_id, status, summary FROM alerts ORDER BY time\""
    );
    println!(
        "  curl -s http://{http}/v1/sql --json '{{\"sql\": \"SELECT principal, count(*) AS failures FROM audit_events WHERE result_status <> '\\''SUCCESS'\\'' GROUP BY principal ORDER BY failures DESC LIMIT 10\"}}'"
    );
    println!(
        "  curl -s http://{http}/v1/sql --json '{{\"sql\": \"SELECT topic, sum(value) AS bytes FROM metrics WHERE name = '\\''io.confluent.kafka.server/sent_bytes'\\'' GROUP BY topic ORDER BY bytes DESC\"}}'"
    );
    if let Some((host, port)) = &pg {
        println!(
            "  psql -h {host} -p {port} -U demo -d auditflow -c \"SELECT minute, topic, ingress_bytes, egress_bytes FROM topic_traffic ORDER BY minute DESC LIMIT 10\""
        );
        println!(
            "  psql -h {host} -p {port} -U demo -d auditflow -c \"SELECT principal, count(*) FROM auth_failures GROUP BY 1\""
        );
    }
    println!();

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "5")
        .create()?;
    let generator = tokio::spawn(generate(producer, options.rate, shutdown.clone()));

    let mut alerts = running.alerts.subscribe();
    let printer = tokio::spawn(async move {
        while let Ok(a) = alerts.recv().await {
            println!(
                "ALERT [{}] {} {}: {}",
                a.severity,
                a.status.as_str(),
                a.rule_id,
                a.summary
            );
        }
    });
    let telemetry = running.telemetry.clone();
    let window = running.window.clone();
    let progress_stop = shutdown.clone();
    let progress = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        every.tick().await;
        while !progress_stop.is_cancelled() {
            every.tick().await;
            println!(
                "progress: {} audit events and {} metric samples in the window, {} dead letters, {} batches committed, p99 latency {} ms",
                window.audit.num_rows(),
                window.metrics.num_rows(),
                telemetry.dead_letter_count(),
                telemetry.batches_committed.get(),
                telemetry.latency_percentile_ms(0.99),
            );
        }
    });

    let started = now_us();
    match options.duration {
        Some(d) => tokio::select! {
            _ = tokio::time::sleep(d) => {},
            _ = tokio::signal::ctrl_c() => {},
        },
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    println!("stopping after {:.1} s; draining...", (now_us() - started) as f64 / 1e6);
    shutdown.cancel();
    let _ = generator.await;
    running.wait(Duration::from_secs(10)).await?;
    printer.abort();
    progress.abort();
    let _ = std::fs::remove_dir_all(&scratch);
    drop(cluster);
    println!("demo stopped cleanly");
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The demo embeds the whole shipped pack: a rule file added to `rules/` must be added here.
    #[test]
    fn every_shipped_rule_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        for file in crate::rules::rule_files(&dir).unwrap() {
            let name = format!("rules/{}", file.file_name().unwrap().to_str().unwrap());
            assert!(
                super::EMBEDDED.iter().any(|(n, _)| *n == name),
                "{name} is not embedded in the demo"
            );
        }
    }
}
