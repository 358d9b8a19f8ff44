//! Pausing the assignment while the sinks hold the pipeline up, so the consumer stays in its
//! group (see [`Backpressure`]).

use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;

use super::{KafkaConsumer, detach_all};
use crate::config::TopicsConfig;
use crate::source::Record;

/// Keeps the consumer in its group while a sink holds the pipeline up.
///
/// Waiting on a full sink channel without polling would exceed `max.poll.interval.ms` and make
/// librdkafka leave the group (a rebalance storm during a long HEC outage). Instead, after a
/// short wait the assignment is paused, the consumer keeps being polled (records it had already
/// prefetched are carried over, bounded by `queued.max.messages.kbytes`), and the assignment is
/// resumed once the batch is handed over.
pub struct Backpressure {
    paused: Option<TopicPartitionList>,
    pub num_pauses: u64,
}

impl Default for Backpressure {
    fn default() -> Self {
        Backpressure::new()
    }
}

impl Backpressure {
    pub fn new() -> Backpressure {
        Backpressure {
            paused: None,
            num_pauses: 0,
        }
    }

    /// Drives `handoff` to completion, pausing and polling meanwhile if it takes long.
    pub async fn wait<T>(
        &mut self,
        consumer: &KafkaConsumer,
        topics: &TopicsConfig,
        carried: &mut Vec<Record>,
        handoff: impl std::future::Future<Output = T>,
    ) -> T {
        let mut handoff = std::pin::pin!(handoff);
        let pause_after = tokio::time::sleep(Duration::from_millis(500));
        let mut pause_after = std::pin::pin!(pause_after);
        // A rebalance while paused assigns partitions unpaused: pause them too, or the carried
        // records would grow for as long as the sinks are backed up.
        let mut repause = tokio::time::interval(Duration::from_secs(1));
        let result = loop {
            tokio::select! {
                r = &mut handoff => break r,
                _ = repause.tick(), if self.paused.as_ref().is_some_and(|p| p.count() > 0) => {
                    if let Ok(tpl) = consumer.assignment()
                        && let Err(e) = consumer.pause(&tpl)
                    {
                        tracing::warn!(error = %e, "could not pause partitions");
                    }
                }
                _ = &mut pause_after, if self.paused.is_none() => {
                    match consumer.assignment() {
                        Ok(tpl) => match consumer.pause(&tpl) {
                            Ok(()) => {
                                tracing::warn!(partitions = tpl.count(), "sinks are backed up; partitions paused");
                                self.num_pauses += 1;
                                self.paused = Some(tpl);
                            }
                            Err(e) => tracing::warn!(error = %e, "could not pause partitions"),
                        },
                        Err(e) => tracing::warn!(error = %e, "could not read the assignment"),
                    }
                    // Whether or not the pause worked, keep polling from here on.
                    if self.paused.is_none() {
                        self.paused = Some(TopicPartitionList::new());
                    }
                }
                m = consumer.recv(), if self.paused.is_some() => match m {
                    Ok(m) => carried.extend(detach_all(std::slice::from_ref(&m), topics)),
                    Err(e) => tracing::warn!(error = %e, "kafka consumer error while paused"),
                },
            }
        };
        if let Some(paused) = self.paused.take()
            && paused.count() > 0
        {
            // The current assignment: a rebalance meanwhile may have changed it.
            let tpl = consumer.assignment().unwrap_or(paused);
            match consumer.resume(&tpl) {
                Ok(()) => tracing::info!(partitions = tpl.count(), "sinks caught up; partitions resumed"),
                Err(e) => tracing::warn!(error = %e, "could not resume partitions"),
            }
        }
        result
    }
}
