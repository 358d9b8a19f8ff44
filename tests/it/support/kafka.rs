//! Kafka helpers: produce, read a topic back, read committed offsets.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The tests' producer writes one record per record batch. tansu 0.6 (memory engine) answers a
/// fetch from an offset inside a batch with the *next* batch, and a fetch inside the last batch
/// with nothing (Apache Kafka returns the batch holding the offset): a consumer resuming
/// mid-batch (after a pause, or from a committed offset) would skip records or stall. That is a
/// broker quirk, not auditflow's; with one record per batch every offset starts a batch.
pub fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.max.bytes", "20000000")
        .set("batch.num.messages", "1")
        .set("linger.ms", "0")
        .create()
        .unwrap()
}

pub async fn produce(
    p: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    payload: &[u8],
    headers: &[(&str, &str)],
) {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let mut record: FutureRecord<'_, (), [u8]> = FutureRecord::to(topic).payload(payload).headers(h);
    if let Some(p) = partition {
        record = record.partition(p);
    }
    p.send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// A record read back, with its headers.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// Reads every partition of `topic` from the beginning until `expected` records arrived or
/// `timeout` passes (record counts are read back, never taken from watermarks).
pub fn read_all(bootstrap: &str, topic: &str, partitions: i32, expected: usize, timeout: Duration) -> Vec<ReadRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("fetch.message.max.bytes", "20000000")
        .set("receive.message.max.bytes", "100000000")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = std::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < expected && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(ReadRecord {
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
    }
    out
}

/// Committed offsets of `group` for `topic`'s partitions (None where nothing is committed).
pub fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let result = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..partitions)
        .map(|p| match result.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect()
}

/// A one-broker mock cluster with the topics the shared end-to-end config names, one partition
/// each: audit, metrics, dead letters and alerts.
pub fn mock_cluster() -> rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    for topic in [
        "confluent-audit-log-events",
        "confluent-metrics",
        "auditflow-dead-letter",
        "auditflow-alerts",
    ] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    cluster
}

/// Produces `n` successful authentication events of one principal to the audit topic.
pub async fn produce_authentications(bootstrap: &str, n: usize) {
    let p = producer(bootstrap);
    for _ in 0..n {
        let (_, event) = super::audit_event(
            "io.confluent.kafka.server/authentication",
            "User:1",
            "KEY1",
            serde_json::json!({"methodName": "kafka.Authentication", "result": {"status": "SUCCESS"}}),
        );
        produce(&p, "confluent-audit-log-events", None, &event, &[]).await;
    }
}
