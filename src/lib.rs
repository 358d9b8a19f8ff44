//! auditflow: Kafka audit logs and metrics in; security alerts, Splunk HEC, OTLP and SQL out.
//!
//! ```text
//!  Kafka (audit, metrics topics)
//!    │  source::kafka     poll a batch; offsets stored only when finalised (see its docs)
//!    ▼
//!  decode::{audit, metrics}   typed rows; failures ride the batch as event::DeadLetter
//!    ▼
//!  enrich::{dedupe, ownership, directory}   drop repeated ids; who owns what, who is who
//!    ▼
//!  event::arrow       one Arrow RecordBatch per batch ──► rules (DataFusion predicates) ─► alerts
//!    │                                               └──► query::window (SQL over the last hour)
//!    ▼
//!  pipeline::dispatch   the batch, alerts included, to every sink with one Ack each
//!    ▼
//!  sinks::{splunk_hec, otlp, file, kafka_alerts, dead_letter}   bounded channels; each acks when durable
//!    ▼
//!  source::committer   stores offsets per partition, in poll order, once every sink acked
//! ```
//!
//! Delivery guarantee: at least once. An offset is stored for commit only after every enabled
//! sink has accepted every record at or below it (or the record is in the dead-letter topic);
//! channels are bounded, so a slow or failing sink pauses consumption instead of growing memory;
//! duplicates re-delivered after a restart are removed by `enrich::dedupe`. Imports run one way,
//! down this list (checked by `tests/it/architecture.rs`); `docs/ARCHITECTURE.md` has the rest.

// Layer 0, the leaves: settings, the event model (and its Arrow form), retry verdicts and
// backoff, the service's own metrics.
pub mod config;
pub mod event;
pub mod retry;
pub mod telemetry;

// Layer 1: records to rows; ownership, directory and dedupe.
pub mod decode;
pub mod enrich;

// Layer 2: the SQL engine, window and front ends; detection rules, one file per kind.
pub mod query;
pub mod rules;

// Layer 3: every output (HEC, OTLP, file, alerts topic, dead letters, archive); the Kafka
// consumer and committer; the compliance archive's files, manifests, verify and export.
pub mod archive;
pub mod sinks;
pub mod source;

// Layer 4: re-reads rule and enrichment files.
pub mod reload;

// Layer 5: wires the stages.
pub mod pipeline;

// Layer 6: the one-command demo (the CLI, `main.rs`, sits on top).
pub mod demo;
