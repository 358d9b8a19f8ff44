//! HTTP endpoints: `POST /v1/sql` (JSON rows, CSV or Arrow IPC stream by `Accept`), `/metrics`
//! (Prometheus text), `/healthz`, `/readyz`.
//!
//! Served by hyper under axum with what `axum::serve` lacks: a cap on connections, a
//! header-read timeout, stalled and idle connections closed (`query::conn`), and TLS.
//! `POST /v1/sql` asks for `Content-Type: application/json` (a web page cannot send that to
//! another origin without a preflight), and, when no token is set, a `Host` that names this
//! server, so a DNS-rebinding page cannot reach it through the browser either.

mod encode;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use datafusion_postgres::pgwire::tokio::tokio_rustls::TlsAcceptor;
use futures::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

pub use self::encode::{Format, StreamEncoder};
use super::conn::{ConnectionGate, FailedLogins, Guarded};
use super::engine::QueryEngine;
use super::window::Window;
use crate::config::{Secret, ServerConfig};
use crate::telemetry::Telemetry;

pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// Rows held before a response starts streaming.
const STREAM_AFTER_ROWS: usize = 8192;

#[derive(Clone)]
struct AppState {
    query: QueryEngine,
    telemetry: Telemetry,
    window: Window,
    /// Bearer token `/v1/sql` (and `/metrics`, unless turned off) asks for, when configured.
    token: Option<Secret>,
    metrics_require_token: bool,
    /// The address the server listens on and the extra names it answers to (the `Host` check).
    listen: SocketAddr,
    allowed_hosts: Arc<Vec<String>>,
    failures: FailedLogins,
}

/// The client's address, set per connection.
#[derive(Clone, Copy)]
struct Peer(SocketAddr);

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
    server: &ServerConfig,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let tls = match &server.tls {
        Some(files) => Some(TlsAcceptor::from(
            super::conn::tls_config(files, &[b"http/1.1"]).map_err(std::io::Error::other)?,
        )),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let gate = ConnectionGate::new("http", &server.connections, telemetry.clone());
    let app = Router::new()
        .route("/v1/sql", post(sql))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .with_state(AppState {
            query,
            failures: FailedLogins::new("http", telemetry.clone()),
            telemetry,
            window,
            token: server.token.clone(),
            metrics_require_token: server.metrics_require_token,
            listen: bound,
            allowed_hosts: Arc::new(server.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect()),
        });
    let limits = server.connections.clone();
    tokio::spawn(async move {
        loop {
            let (socket, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors, typically: wait rather than spin.
                        tracing::warn!(error = %e, "http endpoint: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Some(admitted) = gate.admit(peer.ip()) else {
                // Best effort, never waiting on the client: a full server says so and closes.
                let mut socket = socket;
                tokio::spawn(async move {
                    let busy = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), socket.write_all(busy)).await;
                });
                continue;
            };
            let app = app.clone().layer(Extension(Peer(peer)));
            let (tls, limits, shutdown, gate) = (tls.clone(), limits.clone(), shutdown.clone(), gate.clone());
            tokio::spawn(async move {
                let _admitted = admitted;
                let io = Guarded::new(socket, limits.client_timeout, limits.idle_timeout, None);
                let served = match tls {
                    Some(tls) => match tokio::time::timeout(limits.client_timeout, tls.accept(io)).await {
                        Ok(Ok(stream)) => serve_connection(stream, app, &limits, &shutdown).await,
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("the TLS handshake took longer than server.client_timeout".into()),
                    },
                    None => serve_connection(io, app, &limits, &shutdown).await,
                };
                if let Err(e) = served {
                    if e.contains("timed out") || e.contains("client_timeout") || e.contains("idle_timeout") {
                        gate.refused();
                    }
                    tracing::debug!(%peer, error = %e, "http connection ended with an error");
                }
            });
        }
    });
    tracing::info!(%bound, tls = server.tls.is_some(), token = server.token.is_some(), "http endpoint listening");
    Ok(bound)
}

/// HTTP/1.1 on one connection, with a header-read timeout, ending gracefully on shutdown.
async fn serve_connection<IO>(
    io: IO,
    app: Router,
    limits: &crate::config::ConnectionLimits,
    shutdown: &CancellationToken,
) -> Result<(), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.client_timeout)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    tokio::pin!(connection);
    let result = tokio::select! {
        r = connection.as_mut() => r,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    result.map_err(|e| {
        format!(
            "{e}: {}",
            std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
        )
    })
}

fn error(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": message }).to_string(),
    )
        .into_response()
}

/// Why a request may not go on, if it may not. With a token set: it does not carry it (a
/// failure is logged, counted and, when repeated, answered late). Without one: its `Host` does
/// not name this server.
async fn refusal(state: &AppState, headers: &HeaderMap, peer: IpAddr) -> Option<Response> {
    let Some(token) = &state.token else {
        return host_allowed(state, headers).err().map(|why| {
            error(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "{why}; without server.token, requests must name this server (or a host in server.allowed_hosts)"
                ),
            )
        });
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| token.matches(g.as_bytes())) {
        state.failures.succeeded(peer);
        return None;
    }
    let wait = state.failures.failed(peer, "");
    tokio::time::sleep(wait).await;
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "error": "a bearer token is required (Authorization: Bearer ...)" }).to_string(),
        )
            .into_response(),
    )
}

/// `Host` must be the listen address, `localhost` on a loopback listener, an address literal
/// on an all-interfaces listener, or a name in `server.allowed_hosts`; and its port the
/// listen port.
fn host_allowed(state: &AppState, headers: &HeaderMap) -> Result<(), String> {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return Err("no Host header".into());
    };
    let Ok(authority) = host.parse::<axum::http::uri::Authority>() else {
        return Err("the Host header is not a host and port".into());
    };
    let port = authority.port_u16().unwrap_or(80);
    let name = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if port != state.listen.port() {
        return Err(format!("Host names port {port}, not this server's"));
    }
    let listen_ip = state.listen.ip();
    let allowed = match name.parse::<IpAddr>() {
        Ok(ip) => ip == listen_ip || listen_ip.is_unspecified(),
        Err(_) => (name == "localhost" && listen_ip.is_loopback()) || state.allowed_hosts.contains(&name),
    };
    if allowed {
        Ok(())
    } else {
        Err(format!("Host `{name}` is not this server"))
    }
}

async fn sql(
    State(state): State<AppState>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = refusal(&state, &headers, peer.ip()).await {
        return refused;
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "POST /v1/sql takes Content-Type: application/json (curl --json '{\"sql\": \"...\"}')".into(),
        );
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

async fn metrics(
    State(state): State<AppState>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    // Read-only counters: the token guards them when set (and asked for); without one they are
    // open to scrapers under any name (a Service, a pod IP), unlike `POST /v1/sql`.
    if state.token.is_some()
        && state.metrics_require_token
        && let Some(refused) = refusal(&state, &headers, peer.ip()).await
    {
        return refused;
    }
    let text = state.telemetry.render(&state.window.stats());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
