//! Arrow schemas of the SQL tables and the builders that turn a batch of rows into one
//! `RecordBatch` (built once per batch: rules evaluate on it and the window keeps it).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::NullBufferBuilder;
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, DictionaryArray, Float64Builder, Int32Array, Int32Builder, Int64Array, ListBuilder,
    MapBuilder, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer};
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit};

use super::{Alert, AuditRow, MetricSample, Origin};

mod raw_column;

pub use raw_column::DenseChunks;
use raw_column::raw_column;

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn map_type() -> DataType {
    let mut b = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    datafusion::arrow::array::Array::data_type(&b.finish()).clone()
}

/// How the window stores a `labels` map column: each row a key into the batch's distinct label
/// sets. A series' labels repeat on every sample (and across the metrics of one topic), so a
/// row costs 4 bytes instead of two offsets and the text of every key and value.
pub fn label_sets_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(map_type()))
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
    let audit = audit_batch_of(&picked, &AUDIT_SCHEMA, &|_| true, &DenseChunks::default());
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

/// A text column of the type `data_type` names: plain strings, or a dictionary with Int32 keys
/// (how the window stores repetitive columns).
fn text<'a>(
    data_type: &DataType,
    n: usize,
    values: impl Iterator<Item = Option<&'a str>> + Clone,
    maps: &mut DictionaryMaps<'a>,
) -> ArrayRef {
    match data_type {
        DataType::Dictionary(..) => dictionary(n, values, maps),
        _ => strings(n, values),
    }
}

/// The type `schema` gives the text column `name`: plain strings unless it says otherwise.
fn text_type<'s>(schema: &'s Schema, name: &str) -> &'s DataType {
    schema.field_with_name(name).map_or(&DataType::Utf8, |f| f.data_type())
}

/// The lookups [`dictionary`] builds a column with, kept from one column of a batch to the
/// next: two fresh maps per column and batch were grown (allocated again) for every batch.
struct DictionaryMaps<'a> {
    by_address: HashMap<(usize, usize), i32, foldhash::fast::RandomState>,
    by_value: HashMap<&'a str, i32, foldhash::fast::RandomState>,
}

impl Default for DictionaryMaps<'_> {
    fn default() -> Self {
        let state = foldhash::fast::RandomState::default();
        DictionaryMaps {
            by_address: HashMap::with_hasher(state.clone()),
            by_value: HashMap::with_hasher(state),
        }
    }
}

/// Dictionary-encoded text, each distinct value once, in order of first use. The decoder hands
/// out one shared copy of each repeated value ([`super::Text`]), so a row's value is found by
/// its address (hashing a pointer, not the string); a value met at a new address (long, or
/// decoded before the decoder's set started over) is looked up by its contents once.
/// Building the dictionary this way, instead of plain strings cast to a dictionary, was the
/// window's largest cost per row.
fn dictionary<'a>(n: usize, values: impl Iterator<Item = Option<&'a str>>, maps: &mut DictionaryMaps<'a>) -> ArrayRef {
    maps.by_address.clear();
    maps.by_value.clear();
    let DictionaryMaps { by_address, by_value } = maps;
    let mut keys = Vec::with_capacity(n);
    let mut nulls = NullBufferBuilder::new(n);
    let mut distinct = StringBuilder::new();
    // Neighbouring rows often share a value (a backlog read partition by partition): the last
    // value's key is checked before hashing.
    let mut last = ((0, 0), 0);
    for value in values {
        let Some(value) = value else {
            keys.push(0);
            nulls.append_null();
            continue;
        };
        // Two live strings at one address with one length are the same string.
        let address = (value.as_ptr() as usize, value.len());
        let key = if last.0 == address {
            last.1
        } else {
            match by_address.get(&address) {
                Some(&key) => key,
                None => {
                    let next = by_value.len() as i32;
                    let key = *by_value.entry(value).or_insert_with(|| {
                        distinct.append_value(value);
                        next
                    });
                    by_address.insert(address, key);
                    key
                }
            }
        };
        last = (address, key);
        keys.push(key);
        nulls.append_non_null();
    }
    let keys = Int32Array::new(keys.into(), nulls.finish());
    let array = DictionaryArray::<Int32Type>::try_new(keys, Arc::new(distinct.finish()))
        .expect("every key indexes the dictionary built beside it");
    Arc::new(array)
}

/// A string column of `n` empty strings: no bytes, one offset per row.
pub fn empty_strings(n: usize) -> ArrayRef {
    Arc::new(StringArray::new(
        OffsetBuffer::new_zeroed(n),
        Buffer::from_vec(Vec::<u8>::new()),
        None,
    ))
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

fn labels_map<'a>(rows: impl Iterator<Item = &'a BTreeMap<String, String>>) -> ArrayRef {
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

/// The `labels` column of the type `data_type` names: a plain map per row, or the rows' distinct
/// label sets with a key per row ([`label_sets_type`]).
fn labels<'a>(data_type: &DataType, rows: impl Iterator<Item = &'a BTreeMap<String, String>> + Clone) -> ArrayRef {
    if data_type != &label_sets_type() {
        return labels_map(rows);
    }
    let mut index: HashMap<&BTreeMap<String, String>, i32, _> =
        HashMap::with_hasher(foldhash::fast::RandomState::default());
    let mut distinct = Vec::new();
    let mut keys = Vec::new();
    // A batch often holds one series' samples side by side: the last set is checked first.
    let mut last: Option<(&BTreeMap<String, String>, i32)> = None;
    for labels in rows {
        let key = match last {
            Some((previous, key)) if previous == labels => key,
            _ => *index.entry(labels).or_insert_with(|| {
                distinct.push(labels);
                distinct.len() as i32 - 1
            }),
        };
        last = Some((labels, key));
        keys.push(key);
    }
    let array = DictionaryArray::<Int32Type>::try_new(Int32Array::from(keys), labels_map(distinct.into_iter()))
        .expect("every key indexes the label sets built beside it");
    Arc::new(array)
}

fn batch(schema: &SchemaRef, columns: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_new(schema.clone(), columns).expect("columns are built to match the schema")
}

pub fn audit_batch(rows: &[AuditRow]) -> RecordBatch {
    let refs: Vec<&AuditRow> = rows.iter().collect();
    audit_batch_of(&refs, &AUDIT_SCHEMA, &|_| true, &DenseChunks::default())
}

/// [`audit_batch`] with only the text columns `keep` names filled; every other text column
/// (`raw` included) is empty strings. What the rules read: building and buffering the columns
/// no rule reads (`raw` alone is ~1 KB a row) was most of the cost of handing rows to them.
pub fn audit_batch_keeping(rows: &[AuditRow], keep: &dyn Fn(&str) -> bool) -> RecordBatch {
    let refs: Vec<&AuditRow> = rows.iter().collect();
    audit_batch_of(&refs, &AUDIT_SCHEMA, keep, &DenseChunks::default())
}

/// [`audit_batch`] with `raw` empty.
pub fn audit_batch_without_raw(rows: &[AuditRow]) -> RecordBatch {
    audit_batch_keeping(rows, &|column| column != "raw")
}

/// `rows` in `schema`: the `audit_events` columns, each text column plain or dictionary-encoded
/// as `schema` says (the window's stored form, built without a plain batch in between); `raw`
/// views the chunks these rows fill (see [`DenseChunks`]).
pub fn audit_batch_as(rows: &[&AuditRow], schema: &SchemaRef) -> RecordBatch {
    let dense = DenseChunks::of(rows.iter().copied());
    audit_batch_viewing(rows, schema, &dense)
}

/// [`audit_batch_as`] viewing the chunks `dense` names: those a whole poll's rows fill, when the
/// window takes that poll's rows in several batches (one per minute).
pub fn audit_batch_viewing(rows: &[&AuditRow], schema: &SchemaRef, dense: &DenseChunks) -> RecordBatch {
    audit_batch_of(rows, schema, &|_| true, dense)
}

fn audit_batch_of<'r>(
    rows: &[&'r AuditRow],
    schema: &SchemaRef,
    keep: &dyn Fn(&str) -> bool,
    dense: &DenseChunks,
) -> RecordBatch {
    let n = rows.len();
    let mut maps = DictionaryMaps::default();
    // One array of empty strings serves every column left out.
    let empty = std::cell::OnceCell::new();
    // A macro, not a closure taking `fn` pointers: each column's accessor is inlined into its
    // own loop instead of called through a pointer per row and column.
    macro_rules! s {
        ($name:literal, $value:expr) => {{
            let data_type = text_type(schema, $name);
            if keep($name) || data_type != &DataType::Utf8 {
                text(data_type, n, rows.iter().map(|r| $value(*r)), &mut maps)
            } else {
                empty.get_or_init(|| empty_strings(n)).clone()
            }
        }};
    }
    let mut port = Int32Builder::with_capacity(n);
    for r in rows {
        port.append_option(r.client_port.map(i32::from));
    }
    batch(
        schema,
        vec![
            times(n, rows.iter().map(|r| Some(r.time_us))),
            s!("id", |r: &'r AuditRow| Some(r.id.as_str())),
            s!("type", |r: &'r AuditRow| Some(&*r.event_type)),
            s!("method", |r: &'r AuditRow| r.method.as_deref()),
            s!("service", |r: &'r AuditRow| r.service.as_deref()),
            s!("organization", |r: &'r AuditRow| r.organization.as_deref()),
            s!("environment", |r: &'r AuditRow| r.environment.as_deref()),
            s!("cluster_id", |r: &'r AuditRow| r.cluster_id.as_deref()),
            s!("resource_type", |r: &'r AuditRow| r.resource_type.as_deref()),
            s!("resource_name", |r: &'r AuditRow| r.resource_name.as_deref()),
            s!("principal", |r: &'r AuditRow| r.principal.as_deref()),
            s!("principal_type", |r: &'r AuditRow| Some(r.principal_type.as_str())),
            s!("auth_mechanism", |r: &'r AuditRow| r.auth_mechanism.as_deref()),
            s!("auth_identifier", |r: &'r AuditRow| r.auth_identifier.as_deref()),
            bools(n, rows.iter().map(|r| r.granted)),
            s!("operation", |r: &'r AuditRow| r.operation.as_deref()),
            s!("authz_via", |r: &'r AuditRow| Some(r.authz_via.as_str())),
            s!("role", |r: &'r AuditRow| r.role.as_deref()),
            s!("result_status", |r: &'r AuditRow| r.result_status.as_deref()),
            s!("result_message", |r: &'r AuditRow| r.result_message.as_deref()),
            s!("client_ip", |r: &'r AuditRow| r.client_ip.as_deref()),
            Arc::new(port.finish()),
            s!("client_id", |r: &'r AuditRow| r.client_id.as_deref()),
            s!("resource_app", |r: &'r AuditRow| r.resource_app.as_deref()),
            s!("principal_app", |r: &'r AuditRow| r.principal_app.as_deref()),
            bools(n, rows.iter().map(|r| r.cross_namespace)),
            s!("principal_name", |r: &'r AuditRow| r.principal_name.as_deref()),
            s!("principal_team", |r: &'r AuditRow| r.principal_team.as_deref()),
            s!("environment_name", |r: &'r AuditRow| r.environment_name.as_deref()),
            s!("region", |r: &'r AuditRow| r.region.as_deref()),
            s!("cloud", |r: &'r AuditRow| r.cloud.as_deref()),
            if keep("raw") || text_type(schema, "raw") != &DataType::Utf8 {
                raw_column(rows, text_type(schema, "raw"), dense)
            } else {
                empty.get_or_init(|| empty_strings(n)).clone()
            },
        ],
    )
}

pub fn metrics_batch(rows: &[MetricSample]) -> RecordBatch {
    let refs: Vec<&MetricSample> = rows.iter().collect();
    metrics_batch_as(&refs, &METRICS_SCHEMA)
}

/// `rows` in `schema`: the `metrics` columns, each text column plain or dictionary-encoded as
/// `schema` says.
pub fn metrics_batch_as(rows: &[&MetricSample], schema: &SchemaRef) -> RecordBatch {
    let n = rows.len();
    let mut maps = DictionaryMaps::default();
    let mut s = |name: &str, f: fn(&MetricSample) -> Option<&str>| {
        text(text_type(schema, name), n, rows.iter().map(|r| f(r)), &mut maps)
    };
    let mut value = Float64Builder::with_capacity(n);
    let mut partition = Int32Builder::with_capacity(n);
    for r in rows {
        value.append_value(r.value);
        partition.append_option(r.partition);
    }
    batch(
        schema,
        vec![
            times(n, rows.iter().map(|r| Some(r.time_us))),
            s("name", |r| Some(&r.name)),
            Arc::new(value.finish()),
            s("kind", |r| Some(r.kind.as_str())),
            s("cluster_id", |r| r.cluster_id.as_deref()),
            s("topic", |r| r.topic.as_deref()),
            Arc::new(partition.finish()),
            labels(
                schema.field_with_name("labels").map_or(&map_type(), |f| f.data_type()),
                rows.iter().map(|r| &r.labels),
            ),
            s("resource_app", |r| r.resource_app.as_deref()),
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
            raw: crate::event::Raw::from(&b"{}"[..]),
            ..AuditRow::default()
        };
        let b = audit_batch(&[row]);
        assert_eq!(b.num_rows(), 1);
        assert_eq!(b.schema(), *AUDIT_SCHEMA);
    }

    #[test]
    fn a_dictionary_holds_each_value_once_whatever_its_address() {
        use datafusion::arrow::array::{Array, AsArray};
        use datafusion::arrow::compute::cast;

        use crate::event::Text;
        let shared: Text = Text::from("alice");
        let copy = String::from("alice");
        let other = String::from("bob");
        let values = [
            Some(&*shared),
            None,
            Some(copy.as_str()),
            Some(&*shared),
            Some(other.as_str()),
        ];
        let mut maps = DictionaryMaps::default();
        let column = dictionary(values.len(), values.iter().copied(), &mut maps);
        // The maps kept from a column before change nothing in the next.
        let again = dictionary(values.len(), values.iter().copied(), &mut maps);
        assert_eq!(again.to_data(), column.to_data());
        let keys = column.as_dictionary::<Int32Type>();
        assert_eq!(keys.values().len(), 2, "alice once, bob once");
        assert_eq!(column.null_count(), 1);
        let plain = cast(&column, &DataType::Utf8).unwrap();
        let plain: Vec<Option<&str>> = plain.as_string::<i32>().iter().collect();
        assert_eq!(plain, values);
    }

    #[test]
    fn the_rules_batch_without_raw_differs_only_in_raw() {
        let row = AuditRow {
            id: "x".into(),
            event_type: "t".into(),
            principal: Some("User:1".into()),
            raw: crate::event::Raw::from(&b"{\"a\":1}"[..]),
            ..AuditRow::default()
        };
        let (full, lean) = (audit_batch(std::slice::from_ref(&row)), audit_batch_without_raw(&[row]));
        assert_eq!(full.schema(), lean.schema());
        let raw = AUDIT_SCHEMA.index_of("raw").unwrap();
        for i in 0..full.num_columns() {
            if i == raw {
                assert_eq!(
                    lean.column(i).as_any().downcast_ref::<StringArray>().unwrap().value(0),
                    ""
                );
            } else {
                assert_eq!(full.column(i), lean.column(i), "column {i}");
            }
        }
    }
}
