//! Sinks: where batches go. Each sink runs as its own task behind a bounded channel, batches on
//! its own terms, and calls [`Ack::accept`](crate::event::Ack::accept) once a batch is durably
//! accepted. A sink never drops data: retriable failures are retried with backoff for as long as
//! it takes (the bounded channel then pauses the consumer), and events a receiver rejects for
//! their content go to the dead-letter topic before the batch is acknowledged.

pub mod archive;
pub mod cim;
pub mod dead_letter;
pub mod file;
pub mod kafka_alerts;
pub mod otlp;
pub mod splunk_hec;

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::event::{Ack, Alert, AuditRow, Batch, epoch_seconds};

/// What a sink task receives.
pub struct SinkItem {
    pub batch: Arc<Batch>,
    pub ack: Ack,
}

/// A sink that cannot be started (bad TLS file, unusable endpoint). Failures while running are
/// never errors: each sink turns an answer into a [`crate::retry::Verdict`] and acts on it.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{sink}: {message}")]
    Rejected { sink: &'static str, message: String },
}

/// Enrichment and CIM fields of an audit event, flat strings (HEC indexed fields, file sink).
pub fn audit_fields(row: &AuditRow) -> Vec<(&'static str, String)> {
    let mut f = Vec::with_capacity(24);
    visit_audit_fields(row, &mut |k, v| f.push((k, v.to_owned())));
    f
}

/// Each of [`audit_fields`] handed to `f`, in order, without collecting them (the HEC encoder
/// writes them straight into its body).
pub fn visit_audit_fields(row: &AuditRow, f: &mut dyn FnMut(&'static str, &str)) {
    let mut push = |k: &'static str, v: Option<&str>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            f(k, v);
        }
    };
    push("cluster_id", row.cluster_id.as_deref());
    push("organization", row.organization.as_deref());
    push("environment", row.environment.as_deref());
    push("principal_type", Some(row.principal_type.as_str()));
    push("authz_via", Some(row.authz_via.as_str()));
    push("resource_app", row.resource_app.as_deref());
    push("principal_app", row.principal_app.as_deref());
    push(
        "cross_namespace",
        row.cross_namespace.map(|b| if b { "true" } else { "false" }),
    );
    push("auth_identifier", row.auth_identifier.as_deref());
    cim::visit(row, f);
}

/// An alert as the JSON object sinks deliver (times as RFC 3339).
pub fn alert_json(a: &Alert) -> Value {
    let rfc3339 = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            .unwrap_or_default()
    };
    json!({
        "id": a.id,
        "rule_id": a.rule_id,
        "severity": a.severity,
        "status": a.status.as_str(),
        "started_at": rfc3339(a.started_at_us),
        "resolved_at": a.resolved_at_us.map(rfc3339),
        "time": rfc3339(a.time_us),
        "labels": a.labels,
        "value": a.value,
        "threshold": a.threshold,
        "summary": a.summary,
        "description": a.description,
        "runbook": a.runbook,
        "evidence": a.evidence,
    })
}

/// Fields object from pairs.
pub fn fields_object(pairs: Vec<(&'static str, String)>) -> Map<String, Value> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::String(v)))
        .collect()
}

/// Epoch seconds of an event, as JSON.
pub fn time_value(time_us: i64) -> Value {
    json!(epoch_seconds(time_us))
}
