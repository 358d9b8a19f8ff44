//! auditflow: Kafka audit logs and metrics in; security alerts, Splunk HEC, OTLP and SQL out.
//!
//! ```text
//!  Kafka (audit, metrics topics)
//!    │  source::kafka     poll a batch; offsets stored only when finalised (see its docs)
//!    ▼
//!  decode::{audit, metrics}   typed rows; failures -> source::dead_letter (Connect-style headers)
//!    ▼
//!  enrich::{dedupe, ownership}   drop repeated ids; resource_app / principal_app / cross_namespace
//!    ▼
//!  query::tables      one Arrow RecordBatch per batch ──► rules (DataFusion predicates) ─► alerts
//!    │                                               └──► query::window (SQL over the last hour)
//!    ▼
//!  sinks::{splunk_hec, otlp, file}   bounded channels; each accepts (acks) the batch when durable
//!    ▼
//!  source::kafka::run_committer   stores offsets per partition, in poll order, once every sink acked
//! ```
//!
//! Delivery guarantee: at least once. An offset is stored for commit only after every enabled
//! sink has accepted every record at or below it (or the record is in the dead-letter topic);
//! channels are bounded, so a slow or failing sink pauses consumption instead of growing memory;
//! duplicates re-delivered after a restart are removed by `enrich::dedupe`.

pub mod config;
pub mod decode;
pub mod demo;
pub mod enrich;
pub mod event;
pub mod pipeline;
pub mod query;
pub mod reload;
pub mod rules;
pub mod sinks;
pub mod source;
pub mod telemetry;
