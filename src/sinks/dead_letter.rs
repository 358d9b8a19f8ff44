//! The dead-letter topic. A record that cannot be decoded (or that a sink rejects for its
//! content) is produced here unchanged, with Kafka Connect's DLQ headers naming the error class,
//! the message, and the source topic, partition and offset. Sending is awaited: a batch's offsets
//! are committed only after its dead letters are durably in Kafka.
//!
//! Two ways in, one producer: [`DeadLetterSink`] is the sink for the records of a batch that
//! could not be decoded (acknowledged like every other sink), and [`DeadLetters`] is the handle
//! other sinks use to park an event their receiver refused before they acknowledge its batch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;

use super::SinkItem;
use crate::config::Secret;
use crate::telemetry::{ClassLabel, Telemetry};

pub const HEADER_TOPIC: &str = "__connect.errors.topic";
pub const HEADER_PARTITION: &str = "__connect.errors.partition";
pub const HEADER_OFFSET: &str = "__connect.errors.offset";
pub const HEADER_CLASS: &str = "__connect.errors.exception.class.name";
pub const HEADER_MESSAGE: &str = "__connect.errors.exception.message";
pub const HEADER_CONNECTOR: &str = "__connect.errors.connector.name";

/// Librdkafka properties that only a consumer understands (kept off the producer).
const CONSUMER_ONLY: [&str; 10] = [
    "group.id",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "auto.offset.reset",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.commit.interval.ms",
    "max.poll.interval.ms",
    "fetch.min.bytes",
    "partition.assignment.strategy",
];

/// How much of a record the broker refuses whole is parked.
const TRUNCATED_BYTES: usize = 512 * 1024;

/// Where a dead letter came from.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
}

#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: Arc<str>,
    telemetry: Telemetry,
}

impl DeadLetters {
    pub fn new(
        properties: &BTreeMap<String, Secret>,
        topic: &str,
        telemetry: Telemetry,
    ) -> Result<DeadLetters, KafkaError> {
        let mut config = ClientConfig::new();
        for (k, v) in properties {
            if !CONSUMER_ONLY.contains(&k.as_str()) && !k.starts_with("fetch.") {
                config.set(k, v.expose());
            }
        }
        config.set("message.timeout.ms", "30000");
        // A dead letter is the original record, which may be larger than the producer's 1 MB
        // default (an oversized record is one reason to dead-letter). The broker's own limit
        // still applies; see `send_until_done`.
        if !properties.contains_key("message.max.bytes") {
            config.set("message.max.bytes", "104857600");
        }
        let producer: FutureProducer = config.create()?;
        Ok(DeadLetters {
            producer,
            topic: Arc::from(topic),
            telemetry,
        })
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Produces one dead letter and waits for the broker to take it.
    pub async fn send(
        &self,
        payload: &[u8],
        class: &str,
        message: &str,
        origin: Option<Origin<'_>>,
    ) -> Result<(), KafkaError> {
        let partition = origin.map(|o| o.partition.to_string());
        let offset = origin.map(|o| o.offset.to_string());
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: HEADER_CLASS,
                value: Some(class),
            })
            .insert(Header {
                key: HEADER_MESSAGE,
                value: Some(message),
            })
            .insert(Header {
                key: HEADER_CONNECTOR,
                value: Some("auditflow"),
            });
        if let (Some(o), Some(p), Some(off)) = (origin, &partition, &offset) {
            headers = headers
                .insert(Header {
                    key: HEADER_TOPIC,
                    value: Some(o.topic),
                })
                .insert(Header {
                    key: HEADER_PARTITION,
                    value: Some(p.as_str()),
                })
                .insert(Header {
                    key: HEADER_OFFSET,
                    value: Some(off.as_str()),
                });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).payload(payload).headers(headers);
        if let Some(key) = origin.and_then(|o| o.key) {
            record = record.key(key);
        }
        self.producer
            .send(record, Duration::from_secs(5))
            .await
            .map_err(|(e, _)| e)?;
        self.telemetry
            .dead_letters
            .get_or_create(&ClassLabel {
                class: class.to_owned(),
            })
            .inc();
        Ok(())
    }

    /// Like [`send`](Self::send), retrying with backoff until Kafka takes it: a dead letter is
    /// never dropped, and the caller's batch stays unacknowledged meanwhile.
    pub async fn send_until_done(&self, payload: &[u8], class: &str, message: &str, origin: Option<Origin<'_>>) {
        let mut attempt = 0;
        loop {
            match self.send(payload, class, message, origin).await {
                Ok(()) => return,
                Err(KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge))
                    if payload.len() > TRUNCATED_BYTES =>
                {
                    // The broker will never take the whole record. Park its head, say so, and
                    // point at the original (topic, partition and offset are in the headers).
                    tracing::error!(
                        size = payload.len(),
                        "dead letter too large for the broker; parking its first {TRUNCATED_BYTES} bytes"
                    );
                    let note = format!(
                        "{message} (dead letter truncated from {} to {TRUNCATED_BYTES} bytes: the broker refused its size)",
                        payload.len()
                    );
                    return Box::pin(self.send_until_done(&payload[..TRUNCATED_BYTES], class, &note, origin)).await;
                }
                Err(e) => {
                    tracing::error!(topic = %self.topic, error = %e, attempt, "cannot produce to the dead-letter topic; retrying");
                    tokio::time::sleep(crate::retry::backoff(attempt, crate::retry::RETRY_CAP)).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// The sink for the records a batch could not decode: it acknowledges the batch once each of
/// them is in the dead-letter topic.
pub struct DeadLetterSink {
    dead_letters: DeadLetters,
}

impl DeadLetterSink {
    pub fn new(dead_letters: DeadLetters) -> DeadLetterSink {
        DeadLetterSink { dead_letters }
    }

    pub async fn run(self, mut rx: mpsc::Receiver<SinkItem>) {
        while let Some(item) = rx.recv().await {
            // Concurrently: each waits for the broker, and a batch may hold several.
            let parked = item.batch.dead_letters.iter().map(|d| {
                let origin = Origin {
                    topic: &d.topic,
                    partition: d.partition,
                    offset: d.offset,
                    key: d.key.as_deref(),
                };
                self.dead_letters
                    .send_until_done(&d.payload, d.class, &d.message, Some(origin))
            });
            futures::future::join_all(parked).await;
            item.ack.accept();
        }
    }
}
