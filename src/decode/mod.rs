//! Decoding: Kafka record bytes to typed rows.
//!
//! `audit` turns Confluent CloudEvents into [`AuditRow`](crate::event::AuditRow)s, `metrics` turns
//! the three metric encodings into [`MetricSample`](crate::event::MetricSample)s. A record that
//! cannot be decoded yields a [`DecodeError`] whose [`class`](DecodeError::class) and message go
//! into the dead-letter record's headers.

pub mod audit;
pub mod intern;
pub mod metrics;
pub mod schema_registry;
pub mod strict;

/// Why a record could not be decoded. Never retriable: the same bytes fail the same way, so the
/// record goes to the dead-letter topic.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("record is empty")]
    Empty,
    #[error("record is not valid JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("audit event fails the JSON Schema at {path}: {message}")]
    Schema { path: String, message: String },
    #[error("invalid audit event: {0}")]
    InvalidEvent(String),
    #[error("invalid metric record: {0}")]
    InvalidMetric(String),
    #[error("record is not OTLP protobuf: {0}")]
    NotProtobuf(#[from] prost::DecodeError),
}

impl DecodeError {
    /// A short, stable error class for the dead-letter headers and counters.
    pub fn class(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "RecordTooLarge",
            DecodeError::Empty => "EmptyRecord",
            DecodeError::NotJson(_) => "NotJson",
            DecodeError::Schema { .. } => "SchemaViolation",
            DecodeError::InvalidEvent(_) => "InvalidEvent",
            DecodeError::InvalidMetric(_) => "InvalidMetric",
            DecodeError::NotProtobuf(_) => "NotProtobuf",
        }
    }
}

/// Parses an RFC 3339 timestamp of any fractional precision to microseconds since the epoch.
pub fn parse_time_us(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_micros())
}
