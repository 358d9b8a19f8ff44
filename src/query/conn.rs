//! What the SQL endpoints' connections share, so no client can hold more of the process than
//! its share: a cap on open connections (per endpoint and per client address), a connection
//! that stalls or idles is closed, an over-long Postgres message is refused as its header
//! arrives, failed logins are logged, counted and slowed, and TLS from one certificate.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use datafusion_postgres::pgwire::tokio::tokio_rustls::rustls;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::config::{ConnectionLimits, TlsFiles};
use crate::telemetry::{EndpointLabel, Telemetry};

/// Admits connections to one endpoint: at most `max_connections` open, and at most a quarter
/// of them (at least 4) from one client address, so one host's half-open sockets cannot take
/// every slot (and `/healthz` with them).
#[derive(Clone)]
pub struct ConnectionGate {
    endpoint: &'static str,
    max: usize,
    per_ip: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    total: Arc<std::sync::atomic::AtomicUsize>,
    telemetry: Telemetry,
}

/// A slot held by one connection, given back on drop.
pub struct Admitted {
    gate: ConnectionGate,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = lock(&self.gate.open);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
        self.gate.total.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl ConnectionGate {
    pub fn new(endpoint: &'static str, limits: &ConnectionLimits, telemetry: Telemetry) -> ConnectionGate {
        ConnectionGate {
            endpoint,
            max: limits.max_connections,
            per_ip: (limits.max_connections / 4).max(4).min(limits.max_connections),
            open: Arc::default(),
            total: Arc::default(),
            telemetry,
        }
    }

    /// A slot for a connection from `ip`, or `None` (counted and logged) when full.
    pub fn admit(&self, ip: IpAddr) -> Option<Admitted> {
        let mut open = lock(&self.open);
        let total = self.total.load(std::sync::atomic::Ordering::Relaxed);
        let from_ip = open.get(&ip).copied().unwrap_or(0);
        if total >= self.max || from_ip >= self.per_ip {
            drop(open);
            self.refused();
            tracing::warn!(
                endpoint = self.endpoint,
                %ip,
                open = total,
                from_this_address = from_ip,
                "connection refused: server.max_connections reached (for this endpoint or this client address)"
            );
            return None;
        }
        *open.entry(ip).or_insert(0) += 1;
        self.total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(Admitted { gate: self.clone(), ip })
    }

    /// Counts a connection closed by a limit or a timeout.
    pub fn refused(&self) {
        self.telemetry
            .connections_refused
            .get_or_create(&EndpointLabel {
                endpoint: self.endpoint,
            })
            .inc();
    }
}

/// Failed logins: each one logged and counted; from the third failure in a minute from one
/// address on, the answer waits (doubling to 5 s), so guessing runs at a few tries a second
/// per connection slot instead of thousands.
#[derive(Clone)]
pub struct FailedLogins {
    endpoint: &'static str,
    recent: Arc<Mutex<HashMap<IpAddr, (u32, Instant)>>>,
    telemetry: Telemetry,
}

impl FailedLogins {
    pub fn new(endpoint: &'static str, telemetry: Telemetry) -> FailedLogins {
        FailedLogins {
            endpoint,
            recent: Arc::default(),
            telemetry,
        }
    }

    /// Records a failure from `ip` and returns how long to wait before answering it.
    pub fn failed(&self, ip: IpAddr, user: &str) -> Duration {
        self.telemetry
            .auth_failures
            .get_or_create(&EndpointLabel {
                endpoint: self.endpoint,
            })
            .inc();
        let mut recent = lock(&self.recent);
        let now = Instant::now();
        // Bounded: an address space sweep cannot grow the table past this.
        if recent.len() > 10_000 {
            recent.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(60));
        }
        let entry = recent.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= Duration::from_secs(60) {
            *entry = (0, now);
        }
        entry.0 += 1;
        entry.1 = now;
        let failures = entry.0;
        drop(recent);
        tracing::warn!(endpoint = self.endpoint, %ip, user, failures_in_the_last_minute = failures, "failed login");
        if failures < 3 {
            Duration::ZERO
        } else {
            (Duration::from_millis(100) * 2u32.saturating_pow((failures - 3).min(6))).min(Duration::from_secs(5))
        }
    }

    /// A successful login clears the address's count.
    pub fn succeeded(&self, ip: IpAddr) {
        lock(&self.recent).remove(&ip);
    }
}

/// Closes a connection that makes no progress: `poll_write` pending for `write_stall` (a client
/// that does not take its answer), or nothing read or written for `idle`. With a
/// [`FrameCap`], also refuses a Postgres message longer than its cap as its header arrives.
pub struct Guarded<IO> {
    io: IO,
    write_stall: Duration,
    idle: Duration,
    write_timer: Option<Pin<Box<Sleep>>>,
    idle_timer: Pin<Box<Sleep>>,
    frames: Option<FrameCap>,
}

impl<IO> Guarded<IO> {
    pub fn new(io: IO, write_stall: Duration, idle: Duration, frames: Option<FrameCap>) -> Guarded<IO> {
        Guarded {
            io,
            write_stall,
            idle,
            write_timer: None,
            idle_timer: Box::pin(tokio::time::sleep(idle)),
            frames,
        }
    }

    fn progressed(&mut self) {
        let next = Instant::now() + self.idle;
        self.idle_timer.as_mut().reset(next);
    }

    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.idle_timer.as_mut().poll(cx).is_ready()
    }

    fn write_pending(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let stall = self.write_stall;
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        if timer.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took no data for {stall:?} (server.client_timeout)"),
            ));
        }
        Ok(())
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() {
                    if let Some(frames) = self.frames.as_mut() {
                        frames.feed(new)?;
                    }
                    self.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.idle_expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("nothing asked for {:?} (server.idle_timeout)", self.idle),
            ))),
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, data) {
            Poll::Pending => match self.write_pending(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => {
                self.write_timer = None;
                self.progressed();
                ready
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Pending => match self.write_pending(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => {
                self.write_timer = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Follows Postgres message framing in the bytes a connection reads (after any TLS) and fails
/// the read as soon as a header declares a message longer than `max`: the codec would
/// otherwise buffer up to 1 GiB waiting for it.
///
/// Startup-phase messages have no type byte (`int32 length`, then the payload); SSL and GSSAPI
/// encryption requests keep the connection in that phase; every later message is
/// `byte type, int32 length`.
#[derive(Debug)]
pub struct FrameCap {
    max: usize,
    typed: bool,
    header: [u8; 9],
    have: usize,
    remaining: usize,
}

/// `SSLRequest` and `GSSENCRequest` codes: another untyped message follows them.
const ENCRYPTION_REQUESTS: [u32; 2] = [80_877_103, 80_877_104];

impl FrameCap {
    pub fn new(max: usize) -> FrameCap {
        FrameCap {
            max,
            typed: false,
            header: [0; 9],
            have: 0,
            remaining: 0,
        }
    }

    pub fn feed(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(bytes.len());
                self.remaining -= n;
                bytes = &bytes[n..];
                continue;
            }
            // An untyped header is read with its first 4 payload bytes (the request code).
            let need = if self.typed { 5 } else { 8 };
            let n = (need - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < need {
                continue;
            }
            let at = if self.typed { 1 } else { 0 };
            let len = be_u32(&self.header, at) as usize;
            if len < 4 || len > self.max {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "a Postgres message of {len} bytes is over the {}-byte limit (server.pg_max_message_bytes)",
                        self.max
                    ),
                ));
            }
            self.have = 0;
            if self.typed {
                self.remaining = len - 4;
            } else {
                let code = be_u32(&self.header, 4);
                self.remaining = len.saturating_sub(8);
                self.typed = !(len == 8 && ENCRYPTION_REQUESTS.contains(&code));
            }
        }
        Ok(())
    }
}

fn be_u32(bytes: &[u8; 9], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// A table behind a mutex; a panic elsewhere while holding it leaves counts that are still
/// usable, so a poisoned lock is taken as it is rather than failing every later connection.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The server's TLS configuration from `server.tls_cert_file` and `server.tls_key_file`.
pub fn tls_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| format!("server.tls_cert_file {}: {e}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("server.tls_cert_file {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "server.tls_cert_file {}: no certificate in it",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("server.tls_key_file {}: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("server.tls_cert_file / tls_key_file: {e}"))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(kind: u8, payload: usize) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&((payload + 4) as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(b'x', payload));
        m
    }

    #[test]
    fn frame_cap_follows_messages_split_anywhere() {
        let mut stream = Vec::new();
        // SSLRequest, then the startup message, then queries.
        stream.extend_from_slice(&8u32.to_be_bytes());
        stream.extend_from_slice(&80_877_103u32.to_be_bytes());
        stream.extend_from_slice(&20u32.to_be_bytes());
        stream.extend_from_slice(&196_608u32.to_be_bytes());
        stream.extend_from_slice(b"user\0ab\0\0\0\0\0");
        stream.extend(typed(b'Q', 900));
        stream.extend(typed(b'Q', 1000 - 4));
        for chunk in [1, 2, 3, 7, 64, 4096] {
            let mut cap = FrameCap::new(1000);
            for piece in stream.chunks(chunk) {
                cap.feed(piece).unwrap();
            }
        }
        let mut cap = FrameCap::new(1000);
        let mut over = stream.clone();
        over.extend(typed(b'Q', 1000));
        let e = over.chunks(5).try_for_each(|p| cap.feed(p)).unwrap_err();
        assert!(e.to_string().contains("1004 bytes"), "{e}");
        // The header alone is enough to refuse: no payload is waited for.
        let mut cap = FrameCap::new(1 << 20);
        let mut huge = stream[..28].to_vec();
        huge.push(b'Q');
        huge.extend_from_slice(&(1u32 << 30).to_be_bytes());
        assert!(cap.feed(&huge).is_err());
    }

    #[test]
    fn repeated_failed_logins_slow_down() {
        let f = FailedLogins::new("postgres", Telemetry::new());
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(f.failed(ip, "u"), Duration::ZERO);
        assert_eq!(f.failed(ip, "u"), Duration::ZERO);
        assert_eq!(f.failed(ip, "u"), Duration::from_millis(100));
        assert_eq!(f.failed(ip, "u"), Duration::from_millis(200));
        for _ in 0..20 {
            f.failed(ip, "u");
        }
        assert_eq!(f.failed(ip, "u"), Duration::from_secs(5));
        f.succeeded(ip);
        assert_eq!(f.failed(ip, "u"), Duration::ZERO);
    }

    #[test]
    fn one_address_cannot_take_every_slot() {
        let limits = ConnectionLimits {
            max_connections: 16,
            ..Default::default()
        };
        let gate = ConnectionGate::new("http", &limits, Telemetry::new());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let held: Vec<_> = (0..4).map(|_| gate.admit(a).unwrap()).collect();
        assert!(gate.admit(a).is_none(), "a quarter per address");
        let others: Vec<_> = (0..12).map(|_| gate.admit(b)).collect();
        assert_eq!(others.iter().filter(|o| o.is_some()).count(), 4);
        drop(held);
        assert!(gate.admit(a).is_some(), "slots come back when connections close");
    }
}
