//! Splunk HTTP Event Collector sink (`/services/collector/event`).
//!
//! Audit events go with sourcetype `confluent:audit` (the original JSON as `event`, enrichment
//! and CIM fields as flat indexed `fields`), alerts with `auditflow:alert`, metrics in HEC's
//! metric format (`"event":"metric"`, `metric_name:NAME` fields). `time` is the event's own.
//! Requests are batched by bytes, count and linger, gzip-compressed off the async threads, and
//! retried with backoff and jitter on 503, other 5xx, 429 and transport errors, failing over
//! across endpoints. Events HEC rejects for their content (codes 6, 7, 12, 13, 15) are isolated
//! by splitting the request and sent to the dead-letter topic; the rest is delivered.

mod acks;
pub mod encoder;
pub mod gzip;
pub mod refused;
pub mod response;
pub mod sink;
