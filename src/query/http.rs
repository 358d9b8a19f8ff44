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
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::engine::QueryEngine;
use super::window::Window;
use crate::telemetry::Telemetry;

pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

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
    let (schema, batches) = match state.query.query(&request.sql).await {
        Ok(r) => r,
        Err(e @ crate::query::engine::QueryError::Timeout(_)) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let encoded = if accept.contains(ARROW_STREAM) {
        encode_arrow(&schema, &batches).map(|b| (ARROW_STREAM, b))
    } else if accept.contains("text/csv") {
        encode_csv(&batches).map(|b| ("text/csv", b))
    } else {
        encode_json(&batches).map(|b| ("application/json", b))
    };
    match encoded {
        Ok((content_type, bytes)) => ([(header::CONTENT_TYPE, content_type)], Body::from(bytes)).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the result: {e}")),
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
