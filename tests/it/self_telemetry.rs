//! auditflow's own metrics through the OpenTelemetry SDK to the OTLP receivers the tests run
//! (gRPC and HTTP/protobuf): resource `service.name = "auditflow"`, semantic-convention names,
//! headers sent, and the same values the Prometheus `/metrics` page shows.

use std::time::Duration;

use auditflow::config::Config;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, metric, number_data_point};
use tokio_util::sync::CancellationToken;

use crate::e2e_mock::config_text;
use crate::support::hec::HecReceiver;
use crate::support::kafka::{mock_cluster, produce_authentications};
use crate::support::logs;
use crate::support::otlp::OtlpReceiver;

const TOKEN: &str = "00000000-0000-0000-0000-000000000001";

fn string_attr(attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match &kv.value.as_ref()?.value {
            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
}

/// The newest value of `name` with `attr = value` among what the receiver got from auditflow.
fn newest(received: &[ResourceMetrics], name: &str, attr: (&str, &str)) -> Option<f64> {
    let mut found = None;
    for rm in received {
        let resource = rm.resource.as_ref()?;
        if string_attr(&resource.attributes, "service.name").as_deref() != Some("auditflow") {
            continue;
        }
        for m in rm
            .scope_metrics
            .iter()
            .flat_map(|s| &s.metrics)
            .filter(|m| m.name == name)
        {
            let points = match &m.data {
                Some(metric::Data::Sum(s)) => &s.data_points,
                Some(metric::Data::Gauge(g)) => &g.data_points,
                _ => continue,
            };
            for p in points {
                if string_attr(&p.attributes, attr.0).as_deref() == Some(attr.1) {
                    found = match p.value {
                        Some(number_data_point::Value::AsDouble(v)) => Some(v),
                        Some(number_data_point::Value::AsInt(v)) => Some(v as f64),
                        None => found,
                    };
                }
            }
        }
    }
    found
}

async fn exports_own_metrics(http: bool) {
    logs();
    let cluster = mock_cluster();
    let bootstrap = cluster.bootstrap_servers();
    let hec = HecReceiver::start(TOKEN).await;
    let (otlp, addr) = if http {
        OtlpReceiver::start_http().await
    } else {
        OtlpReceiver::start().await
    };
    let dir = tempfile::tempdir().unwrap();
    let protocol = if http { "http/protobuf" } else { "grpc" };
    let mut text = config_text(
        &bootstrap,
        "self-telemetry",
        &hec.url(),
        None,
        &dir.path().join("out.jsonl"),
    )
    .replace(
        "\"session.timeout.ms\" = \"6000\"",
        "\"session.timeout.ms\" = \"6000\"\n\"statistics.interval.ms\" = \"500\"",
    );
    assert!(text.contains("statistics.interval.ms"));
    text.push_str(&format!(
        "[telemetry.otlp]\nendpoint = \"http://{addr}\"\nprotocol = \"{protocol}\"\ninterval = \"1s\"\n[telemetry.otlp.headers]\nx-api-key = \"collector-key\"\n"
    ));
    let config = Config::parse(&text, "self_telemetry.toml").unwrap();
    produce_authentications(&bootstrap, 3).await;
    let shutdown = CancellationToken::new();
    let running = auditflow::pipeline::start(config, shutdown.clone()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = {
            let received = otlp.received.lock().unwrap();
            newest(
                &received.metrics,
                "messaging.client.consumed.messages",
                ("auditflow.stream", "audit"),
            )
        };
        if got == Some(3.0) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let received = otlp.received.lock().unwrap();
            let names: Vec<String> = received
                .metrics
                .iter()
                .flat_map(|rm| {
                    rm.scope_metrics
                        .iter()
                        .flat_map(|s| s.metrics.iter().map(|m| m.name.clone()))
                })
                .collect();
            panic!(
                "records_in over OTLP: newest {got:?}; {} exports, names {names:?}; /metrics:\n{}",
                received.metrics.len(),
                running.telemetry.render(&[])
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    {
        let received = otlp.received.lock().unwrap();
        // The same value on the Prometheus page: one set of instruments.
        assert!(
            running
                .telemetry
                .render(&[])
                .contains("auditflow_records_in_total{stream=\"audit\"} 3")
        );
        assert!(
            newest(
                &received.metrics,
                "messaging.client.consumed.messages",
                ("messaging.system", "kafka")
            )
            .is_some()
        );
        assert!(
            newest(
                &received.metrics,
                "auditflow.window.bytes",
                ("auditflow.table", "audit_events")
            )
            .is_some()
        );
        assert!(newest(&received.metrics, "auditflow.end_to_end.latency", ("quantile", "0.99")).is_some());
    }
    // End-to-end latency as an OTLP histogram too: one observation per committed batch.
    crate::support::eventually(Duration::from_secs(20), "the latency histogram over OTLP", || {
        let received = otlp.received.lock().unwrap();
        received
            .metrics
            .iter()
            .flat_map(|rm| rm.scope_metrics.iter().flat_map(|s| &s.metrics))
            .filter(|m| m.name == "auditflow.end_to_end.duration" && m.unit == "s")
            .filter_map(|m| match &m.data {
                Some(metric::Data::Histogram(h)) => Some(h),
                _ => None,
            })
            .flat_map(|h| &h.data_points)
            .any(|p| p.count >= 1 && p.bucket_counts.iter().sum::<u64>() == p.count && p.explicit_bounds.len() == 13)
    })
    .await;
    assert!(otlp.api_keys.lock().unwrap().iter().any(|k| k == "collector-key"));
    // Consumer lag per partition, from librdkafka's statistics, with messaging.* attributes.
    crate::support::eventually(Duration::from_secs(20), "consumer lag over OTLP", || {
        let received = otlp.received.lock().unwrap();
        newest(
            &received.metrics,
            "messaging.kafka.consumer.lag",
            ("messaging.destination.name", "confluent-audit-log-events"),
        ) == Some(0.0)
    })
    .await;
    shutdown.cancel();
    running.wait(Duration::from_secs(20)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_metrics_over_otlp_grpc() {
    exports_own_metrics(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_metrics_over_otlp_http() {
    exports_own_metrics(true).await;
}

/// `auditflow run` with `traces = true`: the batch spans reach the OTLP receiver as traces,
/// `dispatch` a child of `process_batch`, with the resource and messaging attributes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_spans_over_otlp_traces() {
    let cluster = mock_cluster();
    let bootstrap = cluster.bootstrap_servers();
    let hec = HecReceiver::start(TOKEN).await;
    let (otlp, addr) = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut text = config_text(
        &bootstrap,
        "self-traces",
        &hec.url(),
        None,
        &dir.path().join("out.jsonl"),
    );
    text.push_str(&format!(
        "[telemetry.otlp]\nendpoint = \"http://{addr}\"\ninterval = \"1s\"\ntraces = true\ntrace_sample_ratio = 1.0\n"
    ));
    let file = dir.path().join("traces.toml");
    std::fs::write(&file, text).unwrap();
    produce_authentications(&bootstrap, 3).await;
    let _process = crate::e2e_tansu::Process(
        std::process::Command::new(env!("CARGO_BIN_EXE_auditflow"))
            .args(["run", "--config", file.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    crate::support::eventually(Duration::from_secs(40), "process_batch and dispatch spans", || {
        let received = otlp.received.lock().unwrap();
        let spans: Vec<_> = received
            .spans
            .iter()
            .filter(|rs| {
                rs.resource
                    .as_ref()
                    .is_some_and(|r| string_attr(&r.attributes, "service.name").as_deref() == Some("auditflow"))
            })
            .flat_map(|rs| rs.scope_spans.iter().flat_map(|s| &s.spans))
            .collect();
        spans.iter().any(|batch| {
            batch.name == "process_batch"
                && string_attr(&batch.attributes, "messaging.system").as_deref() == Some("kafka")
                && spans
                    .iter()
                    .any(|d| d.name == "dispatch" && d.parent_span_id == batch.span_id && d.trace_id == batch.trace_id)
        })
    })
    .await;
}
