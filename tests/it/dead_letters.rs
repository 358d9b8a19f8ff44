//! Malformed input never stops the pipeline and is never dropped: each record lands in the
//! dead-letter topic unchanged, with its error class and origin.

use std::time::Duration;

use auditflow::config::Config;
use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

use crate::e2e_mock::config_text;
use crate::support::hec::HecReceiver;
use crate::support::kafka::{committed, produce, producer, read_all};
use crate::support::{eventually, fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_go_to_the_dead_letter_topic() {
    let cluster = MockCluster::new(1).unwrap();
    // One partition per poison record keeps each under the mock cluster's 5 MB per partition.
    cluster.create_topic("confluent-audit-log-events", 6, 1).unwrap();
    cluster.create_topic("confluent-metrics", 1, 1).unwrap();
    cluster.create_topic("auditflow-dead-letter", 1, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let hec = HecReceiver::start("00000000-0000-0000-0000-000000000001").await;
    let dir = tempfile::tempdir().unwrap();
    let group = "Tech00-auditflow-dlq";
    let config = Config::parse(
        &config_text(&bootstrap, group, &hec.url(), None, &dir.path().join("o.jsonl")),
        "t.toml",
    )
    .unwrap();

    let p = producer(&bootstrap);
    let big = vec![b' '; 3 * 1024 * 1024]; // over the 1 MiB default limit
    let nested = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("NotJson", b"not json at all".to_vec()),
        ("NotJson", br#"{"specversion":"1.0","id":"x","#.to_vec()),
        ("RecordTooLarge", big),
        ("NotJson", nested.into_bytes()),
        ("NotJson", vec![b'"', 0xc3, 0x28, b'"']),
        ("SchemaViolation", br#"{"id":"only-an-id"}"#.to_vec()),
    ];
    for (i, (_, payload)) in poison.iter().enumerate() {
        produce(&p, "confluent-audit-log-events", Some(i as i32), payload, &[]).await;
    }
    // A good event after the poison still arrives.
    produce(
        &p,
        "confluent-audit-log-events",
        Some(0),
        &fixture("audit/platform-authentication-mtls-success.json"),
        &[],
    )
    .await;

    let shutdown = CancellationToken::new();
    let running = auditflow::pipeline::start(config, shutdown.clone()).await.unwrap();
    eventually(Duration::from_secs(30), "the good event at HEC", || {
        !hec.of_sourcetype("confluent:audit").is_empty()
    })
    .await;

    let dead = tokio::task::spawn_blocking({
        let b = bootstrap.clone();
        move || read_all(&b, "auditflow-dead-letter", 1, 6, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(dead.len(), poison.len());
    for (partition, (class, payload)) in poison.iter().enumerate() {
        let d = dead
            .iter()
            .find(|d| d.headers["__connect.errors.partition"] == partition.to_string())
            .unwrap_or_else(|| panic!("no dead letter for partition {partition}"));
        assert_eq!(
            d.headers["__connect.errors.exception.class.name"], *class,
            "partition {partition}"
        );
        assert_eq!(&d.payload, payload, "partition {partition}: payload unchanged");
        assert_eq!(d.headers["__connect.errors.offset"], "0");
        assert_eq!(d.headers["__connect.errors.topic"], "confluent-audit-log-events");
    }
    assert_eq!(running.telemetry.dead_letter_count(), poison.len() as u64);
    shutdown.cancel();
    running.wait(Duration::from_secs(20)).await.unwrap();
    let offsets = tokio::task::spawn_blocking(move || committed(&bootstrap, group, "confluent-audit-log-events", 6))
        .await
        .unwrap();
    assert_eq!(
        offsets,
        vec![Some(2), Some(1), Some(1), Some(1), Some(1), Some(1)],
        "dead-lettered records are committed"
    );
}

/// The dead-letter sink acknowledges a batch only once the dead-letter topic holds its records:
/// with the broker down it keeps the batch (so its offsets stay uncommitted), and delivers it
/// when the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_sink_acknowledges_only_once_the_topic_has_the_record() {
    use auditflow::event::{Ack, Batch, DeadLetter};
    use auditflow::sinks::SinkItem;
    use auditflow::sinks::dead_letter::{DeadLetterSink, DeadLetters};

    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("auditflow-dead-letter", 1, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let properties = [(
        "bootstrap.servers".to_owned(),
        auditflow::config::Secret::new(bootstrap.as_str()),
    )]
    .into_iter()
    .collect();
    let telemetry = auditflow::telemetry::Telemetry::new();
    let dead_letters = DeadLetters::new(&properties, "auditflow-dead-letter", telemetry.clone()).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let sink = tokio::spawn(DeadLetterSink::new(dead_letters).run(rx));

    cluster.broker_down(1).unwrap();
    let batch = Batch {
        dead_letters: vec![DeadLetter {
            topic: "confluent-audit-log-events".into(),
            partition: 3,
            offset: 41,
            key: Some(b"k".to_vec()),
            payload: b"not json".to_vec(),
            class: "NotJson",
            message: "expected value at line 1 column 1".into(),
        }],
        ..Batch::default()
    };
    let (ack, mut acked) = Ack::new();
    tx.send(SinkItem {
        batch: std::sync::Arc::new(batch),
        ack,
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(acked.try_recv().is_err(), "acknowledged while the broker was down");
    assert_eq!(telemetry.dead_letter_count(), 0);

    cluster.broker_up(1).unwrap();
    tokio::time::timeout(Duration::from_secs(60), &mut acked)
        .await
        .expect("no acknowledgement once the broker was back")
        .expect("the sink dropped the acknowledgement");
    assert_eq!(telemetry.dead_letter_count(), 1);
    let dead = tokio::task::spawn_blocking(move || {
        read_all(&bootstrap, "auditflow-dead-letter", 1, 1, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, b"not json");
    assert_eq!(dead[0].headers["__connect.errors.exception.class.name"], "NotJson");
    assert_eq!(dead[0].headers["__connect.errors.partition"], "3");
    assert_eq!(dead[0].headers["__connect.errors.offset"], "41");
    drop(tx);
    sink.await.unwrap();
}
