//! Sources: where records come from, and where their offsets go back. `kafka` is the real one
//! (consumer, offsets, rebalances); `committer` stores offsets once every sink accepted a batch;
//! `metrics_api` polls the Confluent Cloud Metrics API into the same metrics path.

pub mod committer;
pub mod kafka;
pub mod metrics_api;

use std::sync::Arc;

use crate::event::Raw;

/// Which decoder a record needs, decided by its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Audit,
    Metrics,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Audit => "audit",
            Stream::Metrics => "metrics",
        }
    }
}

/// One Kafka record, detached from the consumer.
#[derive(Debug, Clone)]
pub struct Record {
    pub stream: Stream,
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    /// A range of its poll's shared chunk: a decoded audit row keeps these bytes as its `raw`
    /// without copying them again.
    pub payload: Option<Raw>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}
