//! The event model that flows through every stage.
//!
//! The unit of work is a [`Batch`]: the records of one Kafka poll, decoded into typed rows, with
//! the Kafka positions they came from and one [`Ack`] per enabled sink. A batch's offsets are
//! stored for commit only when every sink has accepted it (see `source::kafka`).

pub mod arrow;
mod raw;

pub use raw::{Raw, RawChunker};

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::oneshot;

/// Shared, immutable text: cloning it counts a reference instead of copying the bytes.
pub type Text = Arc<str>;

/// One normalised audit event: the `audit_events` row of docs/PRODUCT.md §1.1.
///
/// Strings are owned because the row outlives the Kafka message it came from (it is held by the
/// sinks until they are acknowledged). Apart from `id`, they are shared [`Text`]: most fields
/// repeat from event to event (types, methods, clusters, principals, topics), so the decoder
/// hands out one copy of each recent value instead of allocating and freeing it per row. `raw`
/// keeps the original JSON bytes (shared with the Kafka poll they came in, see [`Raw`]), so sinks forward the event exactly as Confluent wrote it
/// (integers above 2^53 included) without re-serialising.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditRow {
    /// Event time, microseconds since the Unix epoch (UTC).
    pub time_us: i64,
    pub id: String,
    pub event_type: Text,
    pub method: Option<Text>,
    pub service: Option<Text>,
    pub organization: Option<Text>,
    pub environment: Option<Text>,
    pub cluster_id: Option<Text>,
    pub resource_type: Option<Text>,
    pub resource_name: Option<Text>,
    pub principal: Option<Text>,
    pub principal_type: PrincipalType,
    pub auth_mechanism: Option<Text>,
    pub auth_identifier: Option<Text>,
    pub granted: Option<bool>,
    pub operation: Option<Text>,
    pub authz_via: AuthzVia,
    pub role: Option<Text>,
    pub result_status: Option<Text>,
    pub result_message: Option<Text>,
    pub client_ip: Option<Text>,
    pub client_port: Option<u16>,
    pub client_id: Option<Text>,
    // Enrichment (docs/PRODUCT.md §1.4).
    pub resource_app: Option<Text>,
    pub principal_app: Option<Text>,
    pub cross_namespace: Option<bool>,
    /// Directory: the principal's display name and team.
    pub principal_name: Option<Text>,
    pub principal_team: Option<Text>,
    /// Directory: the cluster's environment name, region and cloud.
    pub environment_name: Option<Text>,
    pub region: Option<Text>,
    pub cloud: Option<Text>,
    /// The original event JSON, Schema Registry framing removed: a range of its poll's shared
    /// chunk of payloads.
    pub raw: Raw,
    /// Where the record was read, for the archive's offset accounting (none for rows built
    /// outside the pipeline).
    pub origin: Option<Origin>,
}

/// Where a record was read in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// Who the principal is, as far as the event tells.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalType {
    User,
    ServiceAccount,
    #[default]
    Unknown,
}

impl PrincipalType {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalType::User => "user",
            PrincipalType::ServiceAccount => "service_account",
            PrincipalType::Unknown => "unknown",
        }
    }
}

/// What granted (or refused) an authorisation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthzVia {
    Acl,
    Rbac,
    SuperUser,
    #[default]
    None,
}

impl AuthzVia {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthzVia::Acl => "acl",
            AuthzVia::Rbac => "rbac",
            AuthzVia::SuperUser => "super_user",
            AuthzVia::None => "none",
        }
    }
}

/// How a metric value is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// A level (`retained_bytes`, `partition_count`).
    Gauge,
    /// A per-interval delta (the Metrics API's per-minute counters, OTLP delta sums).
    Counter,
    /// A running total since `start` (OTLP cumulative sums).
    Cumulative,
}

impl MetricKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Gauge => "gauge",
            MetricKind::Counter => "counter",
            MetricKind::Cumulative => "cumulative",
        }
    }
}

/// One metric sample: the `metrics` row of docs/PRODUCT.md §1.2.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    pub time_us: i64,
    pub name: String,
    pub value: f64,
    pub kind: MetricKind,
    pub cluster_id: Option<String>,
    pub topic: Option<String>,
    pub partition: Option<i32>,
    /// Every label and resource attribute, sorted by key.
    pub labels: BTreeMap<String, String>,
    /// Enrichment: the application owning `topic` by namespace prefix.
    pub resource_app: Option<String>,
}

/// Alert status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// An alert raised by a rule (docs/PRODUCT.md §2).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Stable per rule and group key: the same incident keeps its id from firing to resolved.
    pub id: String,
    pub rule_id: String,
    pub severity: String,
    pub status: AlertStatus,
    /// Microseconds since the epoch (event time).
    pub started_at_us: i64,
    pub resolved_at_us: Option<i64>,
    /// When this alert notification was produced (event time of the evaluation).
    pub time_us: i64,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    pub threshold: Option<f64>,
    pub summary: String,
    pub description: Option<String>,
    pub runbook: Option<String>,
    /// Ids of up to 10 contributing events.
    pub evidence: Vec<String>,
}

/// Where a batch's records came from in Kafka: the highest offset per topic partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions {
    pub max_offsets: BTreeMap<(Arc<str>, i32), i64>,
    /// Oldest Kafka record timestamp in the batch (ms), for end-to-end latency.
    pub oldest_record_ms: Option<i64>,
}

impl Positions {
    pub fn record(&mut self, topic: &Arc<str>, partition: i32, offset: i64, timestamp_ms: Option<i64>) {
        let slot = self.max_offsets.entry((topic.clone(), partition)).or_insert(offset);
        *slot = (*slot).max(offset);
        if let Some(ts) = timestamp_ms {
            self.oldest_record_ms = Some(self.oldest_record_ms.map_or(ts, |o| o.min(ts)));
        }
    }

    pub fn num_partitions(&self) -> usize {
        self.max_offsets.len()
    }
}

/// A sink's promise to say when it has durably accepted a batch.
///
/// Dropping an `Ack` without calling [`Ack::accept`] tells the committer the batch was not
/// delivered, so its offsets are never stored.
#[derive(Debug)]
pub struct Ack(oneshot::Sender<()>);

impl Ack {
    pub fn new() -> (Ack, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Ack(tx), rx)
    }

    /// The sink has accepted every event of the batch (or parked it in the dead-letter topic).
    pub fn accept(self) {
        // The committer may be gone during shutdown; nothing to do then.
        let _ = self.0.send(());
    }
}

/// A record that could not be decoded: kept whole, with where it came from and why, for the
/// dead-letter sink.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// Error class (`NotJson`, `SchemaViolation`, ...): the Connect class-name header.
    pub class: &'static str,
    pub message: String,
}

/// What a sink receives: the decoded, enriched rows of one poll, the alerts they raised, and the
/// records that could not be decoded (for the dead-letter sink; the others ignore them).
#[derive(Debug, Default)]
pub struct Batch {
    /// Monotonic sequence number, for logs.
    pub seq: u64,
    pub audit: Vec<AuditRow>,
    pub metrics: Vec<MetricSample>,
    pub alerts: Vec<Alert>,
    pub dead_letters: Vec<DeadLetter>,
    /// Audit records dropped as repeats of an id already seen: the archive records their
    /// offsets as covered, so its manifests account for every offset.
    pub duplicates: Vec<Origin>,
}

impl Batch {
    /// No event to deliver (dead letters aside).
    pub fn is_empty(&self) -> bool {
        self.audit.is_empty() && self.metrics.is_empty() && self.alerts.is_empty()
    }

    /// Events to deliver: audit rows, metric samples and alerts (dead letters aside).
    pub fn len(&self) -> usize {
        self.audit.len() + self.metrics.len() + self.alerts.len()
    }
}

/// Microseconds since the epoch to fractional epoch seconds, as HEC's `time` wants.
pub fn epoch_seconds(time_us: i64) -> f64 {
    time_us as f64 / 1_000_000.0
}

/// Wall clock now in microseconds since the epoch.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
