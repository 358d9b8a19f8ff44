//! The PostgreSQL wire protocol front end (`server.pg_listen`), so `psql`, Grafana's PostgreSQL
//! data source and any Postgres driver can query the window.
//!
//! The protocol (messages, simple and extended query, SCRAM, TLS negotiation) comes from
//! `pgwire`, and `pg_catalog` from `datafusion-postgres`. What is ours: the accept loop on the
//! SQL runtime with its connection cap, the message loop with its timeouts and message-size
//! cap (`query::conn`), the login ([`auth`]), and the query handlers ([`handler`]), which send
//! every statement through the engine's gate.

pub mod auth;
pub mod handler;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use datafusion_postgres::pgwire::api::{ClientInfo, NoopHandler, PgWireConnectionState};
use datafusion_postgres::pgwire::messages::PgWireFrontendMessage;
use datafusion_postgres::pgwire::tokio::server::{negotiate_tls, process_error, process_message};
use datafusion_postgres::pgwire::tokio::tokio_rustls::TlsAcceptor;
use futures::StreamExt;
use tokio_util::codec::{Framed, FramedParts};
use tokio_util::sync::CancellationToken;

use self::auth::{Open, SaltedPassword, ScramLogin};
use self::handler::PgHandler;
use super::conn::{ConnectionGate, FailedLogins, FrameCap, Guarded};
use super::engine::QueryEngine;
use crate::config::ServerConfig;
use crate::telemetry::Telemetry;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("postgres endpoint on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("postgres endpoint: {0}")]
    Setup(String),
}

/// What every connection shares.
struct Shared {
    handler: Arc<PgHandler>,
    password: Option<Arc<SaltedPassword>>,
    failures: FailedLogins,
    tls: Option<TlsAcceptor>,
    gate: ConnectionGate,
    server: ServerConfig,
}

/// Binds `addr` and serves until `shutdown`; returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    engine: &QueryEngine,
    server: &ServerConfig,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> Result<SocketAddr, PgError> {
    engine.install_pg_catalog().map_err(|e| PgError::Setup(e.to_string()))?;
    let tls = match &server.tls {
        Some(files) => Some(TlsAcceptor::from(
            super::conn::tls_config(files, &[b"postgresql"]).map_err(PgError::Setup)?,
        )),
        None => None,
    };
    let shared = Arc::new(Shared {
        handler: Arc::new(PgHandler::new(engine.clone())),
        password: server.pg_password.as_ref().map(|p| Arc::new(SaltedPassword::new(p))),
        failures: FailedLogins::new("postgres", telemetry.clone()),
        tls,
        gate: ConnectionGate::new("postgres", &server.connections, telemetry),
        server: server.clone(),
    });
    let bind_error = |source| PgError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    // Connections are served on the SQL runtime: their queries execute where they are polled,
    // so a heavy query from psql or Grafana never occupies the pipeline's workers.
    let runtime = engine.runtime();
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener).map_err(bind_error)?
    };
    runtime.spawn(accept(listener, shared, shutdown));
    tracing::info!(%bound, tls = server.tls.is_some(), password = server.pg_password.is_some(), "postgres endpoint listening");
    Ok(bound)
}

async fn accept(listener: tokio::net::TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    // Over the cap, the socket is closed at once: it holds nothing.
                    let Some(admitted) = shared.gate.admit(peer.ip()) else { continue };
                    let shared = shared.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        let _admitted = admitted;
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            served = serve_connection(socket, &shared) => if let Err(e) = served {
                                if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::InvalidData {
                                    shared.gate.refused();
                                    tracing::info!(%peer, error = %e, "postgres connection closed");
                                } else {
                                    tracing::debug!(%peer, error = %e, "postgres connection ended with an error");
                                }
                            }
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors, typically: wait rather than spin.
                    tracing::warn!(error = %e, "postgres endpoint: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// One connection: TLS negotiation and login within `server.client_timeout`, then messages
/// until the client leaves, idles past `server.idle_timeout`, or stalls.
async fn serve_connection(socket: tokio::net::TcpStream, shared: &Shared) -> io::Result<()> {
    let limits = &shared.server.connections;
    let login_deadline = tokio::time::Instant::now() + limits.client_timeout;
    let timed_out = |what: &str| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} took longer than server.client_timeout"),
        )
    };
    let negotiated = tokio::time::timeout_at(login_deadline, negotiate_tls(socket, shared.tls.clone()))
        .await
        .map_err(|_| timed_out("TLS negotiation"))??;
    let Some(framed) = negotiated else {
        // Direct TLS without a certificate configured.
        return Ok(());
    };
    let parts = framed.into_parts();
    let mut cap = FrameCap::new(limits.pg_max_message_bytes);
    cap.feed(&parts.read_buf)?;
    let io = Guarded::new(parts.io, limits.client_timeout, limits.idle_timeout, Some(cap));
    let mut rebuilt = FramedParts::new(io, parts.codec);
    rebuilt.read_buf = parts.read_buf;
    rebuilt.write_buf = parts.write_buf;
    let mut socket = Framed::from_parts(rebuilt);

    let scram = shared
        .password
        .as_ref()
        .map(|p| Arc::new(ScramLogin::new(p.clone(), shared.failures.clone())));
    let open = Arc::new(Open);
    let noop = Arc::new(NoopHandler);
    loop {
        let logging_in = matches!(
            socket.state(),
            PgWireConnectionState::AwaitingStartup | PgWireConnectionState::AuthenticationInProgress
        );
        let next = if logging_in {
            tokio::time::timeout_at(login_deadline, socket.next())
                .await
                .map_err(|_| timed_out("login"))?
        } else {
            socket.next().await
        };
        let message = match next {
            None => return Ok(()),
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(io::Error::other(e.to_string())),
        };
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            return Ok(());
        }
        let is_extended = match socket.state() {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => message.is_extended_query(),
        };
        let handler = shared.handler.clone();
        let result = match &scram {
            Some(scram) => {
                process_message(
                    message,
                    &mut socket,
                    scram.clone(),
                    handler.clone(),
                    handler,
                    noop.clone(),
                    noop.clone(),
                )
                .await
            }
            None => {
                process_message(
                    message,
                    &mut socket,
                    open.clone(),
                    handler.clone(),
                    handler,
                    noop.clone(),
                    noop.clone(),
                )
                .await
            }
        };
        if let Err(e) = result {
            process_error(&mut socket, e, is_extended).await?;
        }
    }
}
