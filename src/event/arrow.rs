//! Arrow schemas of the SQL tables and the builders that turn a batch of rows into one
//! `RecordBatch` (built once per batch: rules evaluate on it and the window keeps it).

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Array, Int32Builder, Int64Array, ListBuilder, MapBuilder,
    RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::{Alert, AuditRow, MetricSample, Origin};

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn map_type() -> DataType {
    let mut b = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    datafusion::arrow::array::Array::data_type(&b.finish()).clone()
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

/// `audit_events`: docs/PRODUCT.md §1.1's normalised row, enrichment, and `raw`.
pub static AUDIT_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("time", ts(), false),
        Field::new("id", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        utf8("method"),
        utf8("service"),
        utf8("organization"),
        utf8("environment"),
        utf8("cluster_id"),
        utf8("resource_type"),
        utf8("resource_name"),
        utf8("principal"),
        Field::new("principal_type", DataType::Utf8, false),
        utf8("auth_mechanism"),
        utf8("auth_identifier"),
        Field::new("granted", DataType::Boolean, true),
        utf8("operation"),
        Field::new("authz_via", DataType::Utf8, false),
        utf8("role"),
        utf8("result_status"),
        utf8("result_message"),
        utf8("client_ip"),
        Field::new("client_port", DataType::Int32, true),
        utf8("client_id"),
        utf8("resource_app"),
        utf8("principal_app"),
        Field::new("cross_namespace", DataType::Boolean, true),
        utf8("principal_name"),
        utf8("principal_team"),
        utf8("environment_name"),
        utf8("region"),
        utf8("cloud"),
        Field::new("raw", DataType::Utf8, false),
    ]))
});

/// The compliance archive's files (docs/PRODUCT.md §6): the `audit_events` columns, then where
/// each event was read in Kafka, so an auditor can trace a row to its record.
pub static ARCHIVE_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields: Vec<Field> = AUDIT_SCHEMA.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("kafka_topic", DataType::Utf8, false));
    fields.push(Field::new("kafka_partition", DataType::Int32, false));
    fields.push(Field::new("kafka_offset", DataType::Int64, false));
    Arc::new(Schema::new(fields))
});

/// The archive rows of `rows[i]` for each index (rows without an origin are not archivable
/// and must not be named).
pub fn archive_batch(rows: &[AuditRow], indices: &[usize]) -> RecordBatch {
    let picked: Vec<&AuditRow> = indices.iter().map(|&i| &rows[i]).collect();
    let audit = audit_batch_of(&picked);
    fn origin<'r>(r: &&'r AuditRow) -> &'r Origin {
        r.origin.as_ref().expect("archived rows have an origin")
    }
    let mut columns = audit.columns().to_vec();
    columns.push(strings(picked.len(), picked.iter().map(|r| Some(&*origin(r).topic))));
    columns.push(Arc::new(Int32Array::from_iter_values(
        picked.iter().map(|r| origin(r).partition),
    )));
    columns.push(Arc::new(Int64Array::from_iter_values(
        picked.iter().map(|r| origin(r).offset),
    )));
    batch(&ARCHIVE_SCHEMA, columns)
}

/// `metrics`: docs/PRODUCT.md §1.2.
pub static METRICS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("time", ts(), false),
        Field::new("name", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
        Field::new("kind", DataType::Utf8, false),
        utf8("cluster_id"),
        utf8("topic"),
        Field::new("partition", DataType::Int32, true),
        Field::new("labels", map_type(), false),
        utf8("resource_app"),
    ]))
});

/// `alerts`: every alert notification (firing, repeated, resolved).
pub static ALERTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("time", ts(), false),
        Field::new("id", DataType::Utf8, false),
        Field::new("rule_id", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        utf8("cluster_id"),
        Field::new("started_at", ts(), false),
        Field::new("resolved_at", ts(), true),
        Field::new("labels", map_type(), false),
        Field::new("value", DataType::Float64, false),
        Field::new("threshold", DataType::Float64, true),
        Field::new("summary", DataType::Utf8, false),
        utf8("description"),
        utf8("runbook"),
        Field::new(
            "evidence",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
    ]))
});

fn strings<'a>(capacity: usize, values: impl Iterator<Item = Option<&'a str>> + Clone) -> ArrayRef {
    // Sized exactly: growing the value buffer row by row (`raw` is ~1 KB a row) reallocated
    // and copied it a dozen times per batch.
    let bytes = values.clone().map(|v| v.map_or(0, str::len)).sum();
    let mut b = StringBuilder::with_capacity(capacity, bytes);
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

fn times(capacity: usize, values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    let mut b = TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC");
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

fn bools(capacity: usize, values: impl Iterator<Item = Option<bool>>) -> ArrayRef {
    let mut b = BooleanBuilder::with_capacity(capacity);
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

fn labels_map<'a>(rows: impl Iterator<Item = &'a std::collections::BTreeMap<String, String>>) -> ArrayRef {
    let mut b = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    for labels in rows {
        for (k, v) in labels {
            b.keys().append_value(k);
            b.values().append_value(v);
        }
        b.append(true).expect("keys and values are appended in pairs");
    }
    Arc::new(b.finish())
}

fn batch(schema: &SchemaRef, columns: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_new(schema.clone(), columns).expect("columns are built to match the schema")
}

pub fn audit_batch(rows: &[AuditRow]) -> RecordBatch {
    let refs: Vec<&AuditRow> = rows.iter().collect();
    audit_batch_of(&refs)
}

fn audit_batch_of(rows: &[&AuditRow]) -> RecordBatch {
    let n = rows.len();
    let s = |f: fn(&AuditRow) -> Option<&str>| strings(n, rows.iter().map(|r| f(r)));
    let mut port = Int32Builder::with_capacity(n);
    for r in rows {
        port.append_option(r.client_port.map(i32::from));
    }
    batch(
        &AUDIT_SCHEMA,
        vec![
            times(n, rows.iter().map(|r| Some(r.time_us))),
            s(|r| Some(&r.id)),
            s(|r| Some(&r.event_type)),
            s(|r| r.method.as_deref()),
            s(|r| r.service.as_deref()),
            s(|r| r.organization.as_deref()),
            s(|r| r.environment.as_deref()),
            s(|r| r.cluster_id.as_deref()),
            s(|r| r.resource_type.as_deref()),
            s(|r| r.resource_name.as_deref()),
            s(|r| r.principal.as_deref()),
            s(|r| Some(r.principal_type.as_str())),
            s(|r| r.auth_mechanism.as_deref()),
            s(|r| r.auth_identifier.as_deref()),
            bools(n, rows.iter().map(|r| r.granted)),
            s(|r| r.operation.as_deref()),
            s(|r| Some(r.authz_via.as_str())),
            s(|r| r.role.as_deref()),
            s(|r| r.result_status.as_deref()),
            s(|r| r.result_message.as_deref()),
            s(|r| r.client_ip.as_deref()),
            Arc::new(port.finish()),
            s(|r| r.client_id.as_deref()),
            s(|r| r.resource_app.as_deref()),
            s(|r| r.principal_app.as_deref()),
            bools(n, rows.iter().map(|r| r.cross_namespace)),
            s(|r| r.principal_name.as_deref()),
            s(|r| r.principal_team.as_deref()),
            s(|r| r.environment_name.as_deref()),
            s(|r| r.region.as_deref()),
            s(|r| r.cloud.as_deref()),
            // Raw is valid UTF-8: it parsed as JSON.
            raw_column(rows),
        ],
    )
}

/// `raw`, sized from the byte lengths (validating each row's UTF-8 once, not twice).
fn raw_column(rows: &[&AuditRow]) -> ArrayRef {
    let mut b = StringBuilder::with_capacity(rows.len(), rows.iter().map(|r| r.raw.len()).sum());
    for r in rows {
        b.append_option(std::str::from_utf8(&r.raw).ok());
    }
    Arc::new(b.finish())
}

pub fn metrics_batch(rows: &[MetricSample]) -> RecordBatch {
    let n = rows.len();
    let s = |f: fn(&MetricSample) -> Option<&str>| strings(n, rows.iter().map(f));
    let mut value = Float64Builder::with_capacity(n);
    let mut partition = Int32Builder::with_capacity(n);
    for r in rows {
        value.append_value(r.value);
        partition.append_option(r.partition);
    }
    batch(
        &METRICS_SCHEMA,
        vec![
            times(n, rows.iter().map(|r| Some(r.time_us))),
            s(|r| Some(&r.name)),
            Arc::new(value.finish()),
            s(|r| Some(r.kind.as_str())),
            s(|r| r.cluster_id.as_deref()),
            s(|r| r.topic.as_deref()),
            Arc::new(partition.finish()),
            labels_map(rows.iter().map(|r| &r.labels)),
            s(|r| r.resource_app.as_deref()),
        ],
    )
}

pub fn alerts_batch(rows: &[Alert]) -> RecordBatch {
    let n = rows.len();
    let s = |f: fn(&Alert) -> Option<&str>| strings(n, rows.iter().map(f));
    let mut value = Float64Builder::with_capacity(n);
    let mut threshold = Float64Builder::with_capacity(n);
    let mut evidence = ListBuilder::new(StringBuilder::new());
    for a in rows {
        value.append_value(a.value);
        threshold.append_option(a.threshold);
        for id in &a.evidence {
            evidence.values().append_value(id);
        }
        evidence.append(true);
    }
    batch(
        &ALERTS_SCHEMA,
        vec![
            times(n, rows.iter().map(|a| Some(a.time_us))),
            s(|a| Some(&a.id)),
            s(|a| Some(&a.rule_id)),
            s(|a| Some(&a.severity)),
            s(|a| Some(a.status.as_str())),
            s(|a| a.labels.get("cluster_id").map(String::as_str)),
            times(n, rows.iter().map(|a| Some(a.started_at_us))),
            times(n, rows.iter().map(|a| a.resolved_at_us)),
            labels_map(rows.iter().map(|a| &a.labels)),
            Arc::new(value.finish()),
            Arc::new(threshold.finish()),
            s(|a| Some(&a.summary)),
            s(|a| a.description.as_deref()),
            s(|a| a.runbook.as_deref()),
            Arc::new(evidence.finish()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_filled_batches_match_their_schemas() {
        assert_eq!(audit_batch(&[]).num_rows(), 0);
        assert_eq!(metrics_batch(&[]).num_rows(), 0);
        assert_eq!(alerts_batch(&[]).num_rows(), 0);
        let row = AuditRow {
            id: "x".into(),
            event_type: "t".into(),
            raw: Arc::from(&b"{}"[..]),
            ..AuditRow::default()
        };
        let b = audit_batch(&[row]);
        assert_eq!(b.num_rows(), 1);
        assert_eq!(b.schema(), *AUDIT_SCHEMA);
    }
}
