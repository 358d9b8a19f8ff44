//! Result encoders of `POST /v1/sql`: JSON rows, CSV or an Arrow IPC stream, batch by batch so
//! large results stream instead of being buffered.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use super::ARROW_STREAM;
use crate::query::nested_text::Nested;

#[derive(Clone, Copy)]
pub enum Format {
    Json,
    Csv,
    Arrow,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv",
            Format::Arrow => ARROW_STREAM,
        }
    }
}

/// Encodes a result batch by batch, so large results stream instead of being buffered.
pub struct StreamEncoder {
    format: Format,
    /// JSON: whether a row was written (separators); CSV: whether the header was.
    started: bool,
    arrow: Option<datafusion::arrow::ipc::writer::StreamWriter<Vec<u8>>>,
}

impl StreamEncoder {
    pub fn new(format: Format, schema: &SchemaRef) -> Result<StreamEncoder, datafusion::arrow::error::ArrowError> {
        let arrow = match format {
            Format::Arrow => Some(datafusion::arrow::ipc::writer::StreamWriter::try_new(
                Vec::new(),
                schema,
            )?),
            _ => None,
        };
        Ok(StreamEncoder {
            format,
            started: false,
            arrow,
        })
    }

    /// The bytes of one batch (for Arrow, the schema message comes with the first).
    pub fn batch(&mut self, batch: &RecordBatch) -> Result<bytes::Bytes, datafusion::arrow::error::ArrowError> {
        let mut out = Vec::new();
        match self.format {
            Format::Json => {
                let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(Vec::new());
                writer.write(batch)?;
                writer.finish()?;
                // One object per line; JSON strings escape newlines, so each '\n' ends a row.
                for row in writer.into_inner().split(|b| *b == b'\n').filter(|r| !r.is_empty()) {
                    out.push(if self.started { b',' } else { b'[' });
                    self.started = true;
                    out.extend_from_slice(row);
                }
            }
            Format::Csv => {
                let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(!self.started)
                    .build(&mut out);
                writer.write(&Nested::All.batch(batch.clone())?)?;
                self.started = true;
            }
            Format::Arrow => {
                let writer = self.arrow.as_mut().expect("set for Arrow");
                writer.write(batch)?;
                out = std::mem::take(writer.get_mut());
            }
        }
        Ok(out.into())
    }

    /// The closing bytes: `]` of the JSON array (`[]` when empty), the Arrow end-of-stream.
    pub fn finish(&mut self) -> Result<bytes::Bytes, datafusion::arrow::error::ArrowError> {
        Ok(match self.format {
            Format::Json if self.started => bytes::Bytes::from_static(b"]"),
            Format::Json => bytes::Bytes::from_static(b"[]"),
            Format::Csv => bytes::Bytes::new(),
            Format::Arrow => {
                let writer = self.arrow.as_mut().expect("set for Arrow");
                writer.finish()?;
                std::mem::take(writer.get_mut()).into()
            }
        })
    }
}
