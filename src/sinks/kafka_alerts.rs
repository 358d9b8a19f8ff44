//! The alerts topic (`topics.alerts`): every alert, as the same JSON the other sinks carry,
//! keyed by alert id. A sink like the others, so an alert's offsets (and those of the batch that
//! raised it) are committed only once the broker has it, and alerts raised outside the batch
//! path (`sql` rules, the pipeline's own) reach it the same way.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;

use super::{SinkItem, alert_json};
use crate::event::Alert;
use crate::retry::{Verdict, wait_after};
use crate::sinks::dead_letter::DeadLetters;
use crate::telemetry::{SinkLabel, Telemetry};

pub struct KafkaAlertsSink {
    producer: FutureProducer,
    topic: String,
    dead_letters: DeadLetters,
    telemetry: Telemetry,
    label: SinkLabel,
}

/// What a failed produce means. The broker refusing the record itself (too large, invalid) will
/// not change: dead-letter it. Refusing us (authorization) needs an operator: hold. Anything
/// else (leader moving, broker down, queue full, timeout) passes: retry.
pub fn classify(error: &KafkaError) -> Verdict {
    let reason = format!("producing to the alerts topic: {error}");
    match error.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidMessageSize,
        ) => Verdict::DeadLetter { reason },
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::Authentication,
        ) => Verdict::Hold { reason },
        _ => Verdict::Retry { after: None, reason },
    }
}

impl KafkaAlertsSink {
    /// Produces with the dead-letter topic's producer (same cluster and credentials).
    pub fn new(topic: &str, dead_letters: DeadLetters, telemetry: Telemetry) -> KafkaAlertsSink {
        KafkaAlertsSink {
            producer: dead_letters.producer().clone(),
            topic: topic.to_owned(),
            dead_letters,
            telemetry,
            label: SinkLabel { sink: "kafka_alerts" },
        }
    }

    pub async fn run(self, mut rx: mpsc::Receiver<SinkItem>) {
        while let Some(item) = rx.recv().await {
            for alert in &item.batch.alerts {
                self.produce(alert).await;
            }
            self.telemetry
                .sink_events
                .get_or_create(&self.label)
                .inc_by(item.batch.alerts.len() as u64);
            item.ack.accept();
        }
    }

    /// Produces one alert until the broker has it (or, refused for what it is, the dead-letter
    /// topic has it).
    async fn produce(&self, alert: &Alert) {
        let body = alert_json(alert).to_string();
        let mut attempt = 0;
        loop {
            let record: FutureRecord<'_, str, str> = FutureRecord::to(&self.topic)
                .key(alert.id.as_str())
                .payload(body.as_str());
            let verdict = match self.producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => return,
                Err((e, _)) => classify(&e),
            };
            match &verdict {
                Verdict::DeadLetter { reason } => {
                    tracing::error!(topic = %self.topic, %reason, "the alerts topic refused an alert; sending it to the dead-letter topic");
                    self.dead_letters
                        .send_until_done(body.as_bytes(), "AlertsTopicRejected", reason, None)
                        .await;
                    return;
                }
                Verdict::Retry { reason, .. } | Verdict::Hold { reason } => {
                    tracing::warn!(topic = %self.topic, %reason, attempt, "could not publish an alert; retrying")
                }
                Verdict::Delivered => return,
            }
            self.telemetry.sink_retries.get_or_create(&self.label).inc();
            if let Some(wait) = wait_after(&verdict, attempt) {
                tokio::time::sleep(wait).await;
            }
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_errors_map_to_verdicts() {
        let produce = |code| KafkaError::MessageProduction(code);
        let kind = |v: Verdict| match v {
            Verdict::Delivered => "delivered",
            Verdict::Retry { .. } => "retry",
            Verdict::DeadLetter { .. } => "dead-letter",
            Verdict::Hold { .. } => "hold",
        };
        let table = [
            (RDKafkaErrorCode::MessageSizeTooLarge, "dead-letter"),
            (RDKafkaErrorCode::InvalidRecord, "dead-letter"),
            (RDKafkaErrorCode::TopicAuthorizationFailed, "hold"),
            (RDKafkaErrorCode::SaslAuthenticationFailed, "hold"),
            (RDKafkaErrorCode::NotLeaderForPartition, "retry"),
            (RDKafkaErrorCode::UnknownTopicOrPartition, "retry"),
            (RDKafkaErrorCode::MessageTimedOut, "retry"),
            (RDKafkaErrorCode::QueueFull, "retry"),
            (RDKafkaErrorCode::BrokerTransportFailure, "retry"),
        ];
        for (code, want) in table {
            assert_eq!(kind(classify(&produce(code))), want, "{code:?}");
        }
    }
}
