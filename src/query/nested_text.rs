//! Nested columns (maps, lists, structs) as JSON text, for the result formats without a nested
//! type of their own: CSV has none, and the PostgreSQL wire encoder has no map type, so
//! `SELECT * FROM metrics` (its `labels` map) failed on both instead of answering.
//! `{"kafka.id":"lkc-1","topic":"orders"}` reads back in any client (`labels::json->>'topic'`).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::writer::{EncoderOptions, make_encoder};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

/// Which columns a result format cannot carry as they are.
#[derive(Clone, Copy, Debug)]
pub enum Nested {
    /// Every nested type (CSV).
    All,
    /// Maps only (the PostgreSQL wire carries lists as arrays and structs as records).
    Maps,
}

impl Nested {
    fn converts(self, data_type: &DataType) -> bool {
        match self {
            Nested::All => data_type.is_nested(),
            Nested::Maps => matches!(data_type, DataType::Map(..)),
        }
    }

    /// `schema` with each column this converts as text (the rest unchanged).
    pub fn schema(self, schema: &Schema) -> Schema {
        let fields: Vec<FieldRef> = schema
            .fields()
            .iter()
            .map(|f| {
                if self.converts(f.data_type()) {
                    Arc::new(Field::new(f.name(), DataType::Utf8, f.is_nullable()))
                } else {
                    f.clone()
                }
            })
            .collect();
        Schema::new_with_metadata(fields, schema.metadata().clone())
    }

    /// `batch` with each column this converts as JSON text, one value per row (null stays null).
    pub fn batch(self, batch: RecordBatch) -> Result<RecordBatch, ArrowError> {
        let schema = batch.schema();
        if !schema.fields().iter().any(|f| self.converts(f.data_type())) {
            return Ok(batch);
        }
        let options = EncoderOptions::default();
        let columns = batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(column, field)| {
                if !self.converts(field.data_type()) {
                    return Ok(column.clone());
                }
                let mut text = StringBuilder::with_capacity(column.len(), column.len() * 32);
                match make_encoder(field, column.as_ref(), &options) {
                    Ok(mut encoder) => {
                        let mut row = Vec::new();
                        for i in 0..column.len() {
                            if encoder.is_null(i) {
                                text.append_null();
                                continue;
                            }
                            row.clear();
                            encoder.encode(i, &mut row);
                            let json = std::str::from_utf8(&row)
                                .map_err(|e| ArrowError::JsonError(format!("column {}: {e}", field.name())))?;
                            text.append_value(json);
                        }
                    }
                    // JSON has no form for it (a map keyed by numbers, say): Arrow's display
                    // text, `{k: v}`, rather than an error.
                    Err(_) => {
                        let display = ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default())?;
                        for i in 0..column.len() {
                            if column.is_null(i) {
                                text.append_null();
                            } else {
                                text.append_value(display.value(i).to_string());
                            }
                        }
                    }
                }
                Ok(Arc::new(text.finish()) as ArrayRef)
            })
            .collect::<Result<Vec<_>, ArrowError>>()?;
        RecordBatch::try_new(Arc::new(self.schema(&schema)), columns)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{AsArray, Int32Array, Int64Builder, ListBuilder, MapBuilder};

    use super::*;

    fn labels_and_evidence() -> RecordBatch {
        let mut labels = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        labels.keys().append_value("kafka.id");
        labels.values().append_value("lkc-1");
        labels.keys().append_value("topic");
        labels.values().append_value("a\"b");
        labels.append(true).unwrap();
        labels.append(false).unwrap();
        let mut evidence = ListBuilder::new(StringBuilder::new());
        evidence.values().append_value("e1");
        evidence.append(true);
        evidence.append(true);
        let n: ArrayRef = Arc::new(Int32Array::from(vec![1, 2]));
        RecordBatch::try_from_iter([
            ("n", n),
            ("labels", Arc::new(labels.finish()) as ArrayRef),
            ("evidence", Arc::new(evidence.finish()) as ArrayRef),
        ])
        .unwrap()
    }

    #[test]
    fn maps_become_json_objects_and_lists_stay_for_the_pg_wire() {
        let batch = Nested::Maps.batch(labels_and_evidence()).unwrap();
        let labels = batch.column(1).as_string::<i32>();
        assert_eq!(labels.value(0), r#"{"kafka.id":"lkc-1","topic":"a\"b"}"#);
        assert!(labels.is_null(1));
        assert!(matches!(batch.column(2).data_type(), DataType::List(_)));
        assert_eq!(*batch.schema(), Nested::Maps.schema(&labels_and_evidence().schema()));
    }

    #[test]
    fn a_map_json_cannot_key_reads_as_display_text() {
        let mut numbers = MapBuilder::new(None, Int64Builder::new(), StringBuilder::new());
        numbers.keys().append_value(7);
        numbers.values().append_value("x");
        numbers.append(true).unwrap();
        let column: ArrayRef = Arc::new(numbers.finish());
        let batch = RecordBatch::try_from_iter([("m", column)]).unwrap();
        let batch = Nested::Maps.batch(batch).unwrap();
        assert_eq!(batch.column(0).as_string::<i32>().value(0), "{7: x}");
    }

    #[test]
    fn every_nested_column_becomes_json_for_csv() {
        let batch = Nested::All.batch(labels_and_evidence()).unwrap();
        let evidence = batch.column(2).as_string::<i32>();
        assert_eq!((evidence.value(0), evidence.value(1)), (r#"["e1"]"#, "[]"));
        assert_eq!(batch.column(0).data_type(), &DataType::Int32);
        let mut csv = Vec::new();
        datafusion::arrow::csv::Writer::new(&mut csv).write(&batch).unwrap();
        assert!(String::from_utf8(csv).unwrap().contains(r#""{""kafka.id"":""lkc-1"""#));
    }
}
