//! HTTP endpoints: `POST /v1/sql` (JSON rows, CSV or Arrow IPC stream by `Accept`), `/metrics`
//! (Prometheus text), `/healthz`, `/readyz`.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use futures::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::engine::QueryEngine;
use super::window::Window;
use crate::telemetry::Telemetry;

pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// Rows held before a response starts streaming.
const STREAM_AFTER_ROWS: usize = 8192;

#[derive(Clone)]
struct AppState {
    query: QueryEngine,
    telemetry: Telemetry,
    window: Window,
    /// Bearer token `/v1/sql` asks for, when configured.
    token: Option<crate::config::Secret>,
}

#[derive(Deserialize)]
struct SqlRequest {
    sql: String,
}

/// Binds `addr` and serves until `shutdown`; returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    query: QueryEngine,
    telemetry: Telemetry,
    window: Window,
    token: Option<crate::config::Secret>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/v1/sql", post(sql))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .with_state(AppState {
            query,
            telemetry,
            window,
            token,
        });
    tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    Ok(bound)
}

fn error(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": message }).to_string(),
    )
        .into_response()
}

async fn sql(State(state): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(token) = &state.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given.map(str::as_bytes) != Some(token.expose().as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::json!({ "error": "a bearer token is required (Authorization: Bearer ...)" }).to_string(),
            )
                .into_response();
        }
    }
    let request: SqlRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("body must be {{\"sql\": \"...\"}}: {e}"),
            );
        }
    };
    let (schema, mut stream) = match state.query.stream(&request.sql).await {
        Ok(r) => r,
        Err(e @ crate::query::engine::QueryError::Timeout(_)) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    // The first rows decide the status: a result is held until it ends or passes
    // STREAM_AFTER_ROWS, so small results and errors found early (nearly all of them) get a clean
    // status; past that it streams, and a later failure ends the (chunked) body early.
    let mut head = Vec::new();
    let mut head_rows = 0;
    let mut ended = false;
    while head_rows < STREAM_AFTER_ROWS {
        match stream.next().await {
            Some(Ok(batch)) => {
                head_rows += batch.num_rows();
                head.push(Ok(batch));
            }
            None => {
                ended = true;
                break;
            }
            Some(Err(e @ crate::query::engine::QueryError::Timeout(_))) => {
                return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            }
            Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }
    if ended {
        stream = futures::stream::empty().boxed();
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let format = if accept.contains(ARROW_STREAM) {
        Format::Arrow
    } else if accept.contains("text/csv") {
        Format::Csv
    } else {
        Format::Json
    };
    let encoder = match StreamEncoder::new(format, &schema) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the result: {e}")),
    };
    let batches = futures::stream::iter(head).chain(stream).boxed();
    let body = futures::stream::unfold(Some((batches, encoder)), |state| async move {
        let (mut batches, mut encoder) = state?;
        match batches.next().await {
            Some(Ok(batch)) => {
                let chunk = encoder.batch(&batch).map_err(std::io::Error::other);
                Some((chunk, Some((batches, encoder))))
            }
            // Mid-stream failures (row limit, timeout) end the body without its closing bytes,
            // so no client mistakes a cut result for a whole one.
            Some(Err(e)) => Some((Err(std::io::Error::other(e.to_string())), None)),
            None => Some((encoder.finish().map_err(std::io::Error::other), None)),
        }
    });
    ([(header::CONTENT_TYPE, format.content_type())], Body::from_stream(body)).into_response()
}

#[derive(Clone, Copy)]
enum Format {
    Json,
    Csv,
    Arrow,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv",
            Format::Arrow => ARROW_STREAM,
        }
    }
}

/// Encodes a result batch by batch, so large results stream instead of being buffered.
struct StreamEncoder {
    format: Format,
    /// JSON: whether a row was written (separators); CSV: whether the header was.
    started: bool,
    arrow: Option<datafusion::arrow::ipc::writer::StreamWriter<Vec<u8>>>,
}

impl StreamEncoder {
    fn new(format: Format, schema: &SchemaRef) -> Result<StreamEncoder, datafusion::arrow::error::ArrowError> {
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
    fn batch(&mut self, batch: &RecordBatch) -> Result<bytes::Bytes, datafusion::arrow::error::ArrowError> {
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
                writer.write(batch)?;
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
    fn finish(&mut self) -> Result<bytes::Bytes, datafusion::arrow::error::ArrowError> {
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

pub fn encode_json(batches: &[RecordBatch]) -> Result<Vec<u8>, datafusion::arrow::error::ArrowError> {
    let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    for b in batches {
        writer.write(b)?;
    }
    writer.finish()?;
    let out = writer.into_inner();
    // An empty result is `[]`, not an empty body.
    Ok(if out.is_empty() { b"[]".to_vec() } else { out })
}

pub fn encode_csv(batches: &[RecordBatch]) -> Result<Vec<u8>, datafusion::arrow::error::ArrowError> {
    let mut writer = datafusion::arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(Vec::new());
    for b in batches {
        writer.write(b)?;
    }
    Ok(writer.into_inner())
}

pub fn encode_arrow(
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<u8>, datafusion::arrow::error::ArrowError> {
    let mut writer = datafusion::arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema)?;
    for b in batches {
        writer.write(b)?;
    }
    writer.finish()?;
    writer.into_inner()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.telemetry.render(Some(&state.window));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
