//! The HEC sink: batch, encode, compress, send over several connections, retry, isolate
//! rejected events, and (with indexer acknowledgement) hold each batch until HEC says it is
//! indexed.
//!
//! One task groups incoming batches into request bodies; `concurrency` connection tasks take
//! groups from a bounded queue. Each connection has its own HTTP client (so its own TCP/TLS
//! connection) and its own channel GUID per endpoint, as HEC's acknowledgement protocol expects:
//! ackIds are per channel, and a channel is polled on the endpoint that took the batch. A
//! connection keeps sending while up to `max_pending_acks` groups wait for acknowledgement, so
//! acknowledgement costs latency, not throughput.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::acks::{AwaitingAck, PendingGroup};
use super::encoder::{Body, BodyBuffers, encode};
use super::gzip::{GzipPool, gzip};
use super::refused;
use super::response::{HecResponse, classify, classify_transport, retry_after};
use crate::config::{HecSinkConfig, redact_url};
use crate::event::Alert;
use crate::retry::{Verdict, wait_after};
use crate::sinks::dead_letter::DeadLetters;
use crate::sinks::{SinkError, SinkItem};
use crate::telemetry::{SinkLabel, Telemetry};

/// Rule id of the alert raised while HEC refuses the token or configuration.
pub use super::refused::REFUSED_RULE_ID;

enum Outcome {
    /// Accepted by `endpoint`; with acknowledgements on, under `ack_id`.
    Delivered { endpoint: usize, ack_id: Option<u64> },
    /// HEC refused an event of the body for its content.
    EventRejected { reason: String },
}

/// Sink items sent together, and the request bodies they were encoded into.
struct Group {
    items: Vec<SinkItem>,
    bodies: Vec<Body>,
    num_events: usize,
}

/// Which endpoint is in use and which are known unhealthy; shared by the connections.
struct Endpoints {
    current: usize,
    /// Per endpoint: when it failed (unhealthy until `/services/collector/health` says 200).
    unhealthy: Vec<Option<Instant>>,
}

/// What the connections share.
pub(super) struct Shared {
    pub(super) config: HecSinkConfig,
    endpoints: Mutex<Endpoints>,
    /// For health probes.
    probe: reqwest::Client,
    /// The TLS settings each connection's client is built on.
    tls: native_tls::TlsConnector,
    dead_letters: DeadLetters,
    pub(super) telemetry: Telemetry,
    pub(super) label: SinkLabel,
    /// The refused-token incident and where its alert goes.
    refused: refused::Outage,
    /// Connections waiting for a group, and a signal when one starts waiting: while one is
    /// idle, a group is sent as soon as it is taken instead of lingering for more events
    /// (lingering only pays while every connection is busy).
    idle: AtomicUsize,
    became_idle: tokio::sync::Notify,
    /// Buffers of delivered bodies, for the next ones.
    pub(super) buffers: BodyBuffers,
    /// Gzip compressors and buffers of sent bodies, for the next ones.
    gzips: GzipPool,
}

/// Counts a connection as idle while it waits for a group.
struct IdleGuard<'a>(&'a Shared);

impl<'a> IdleGuard<'a> {
    fn new(shared: &'a Shared) -> IdleGuard<'a> {
        shared.idle.fetch_add(1, Ordering::AcqRel);
        shared.became_idle.notify_one();
        IdleGuard(shared)
    }
}

impl Drop for IdleGuard<'_> {
    fn drop(&mut self) {
        self.0.idle.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct HecSink {
    shared: Arc<Shared>,
}

fn build_error(message: String) -> SinkError {
    SinkError::Rejected {
        sink: "splunk_hec",
        message,
    }
}

/// The TLS settings of every client of the sink, built once. Building them loads and parses the
/// system's CA store (twice, 144 certificates each time): when each connection's client did it
/// again, that was 95% of the process's start-up instructions. Clones share one OpenSSL context.
/// The settings are those reqwest would apply itself: certificate and host name checks unless
/// `tls_verify = false`, the system's roots plus `ca_file`.
fn tls_connector(config: &HecSinkConfig) -> Result<native_tls::TlsConnector, SinkError> {
    let mut builder = native_tls::TlsConnector::builder();
    builder.danger_accept_invalid_certs(!config.tls_verify);
    if let Some(ca) = &config.ca_file {
        let pem = std::fs::read(ca).map_err(|e| build_error(format!("reading ca_file {}: {e}", ca.display())))?;
        let cert = native_tls::Certificate::from_pem(&pem)
            .map_err(|e| build_error(format!("ca_file {}: {e}", ca.display())))?;
        builder.add_root_certificate(cert);
    }
    builder.build().map_err(|e| build_error(format!("setting up TLS: {e}")))
}

/// A client of its own (one connection, one pool) on the sink's shared TLS settings.
fn http_client(config: &HecSinkConfig, tls: &native_tls::TlsConnector) -> Result<reqwest::Client, SinkError> {
    reqwest::Client::builder()
        .timeout(config.request_timeout)
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1)
        .tls_backend_preconfigured(tls.clone())
        .build()
        .map_err(|e| build_error(format!("building the HTTP client: {e}")))
}

impl HecSink {
    pub fn new(config: HecSinkConfig, dead_letters: DeadLetters, telemetry: Telemetry) -> Result<HecSink, SinkError> {
        let tls = tls_connector(&config)?;
        let probe = http_client(&config, &tls)?;
        let num_endpoints = config.endpoints.len();
        // One per connection and one being filled: what is in flight anyway.
        let keep = config.concurrency + 1;
        let buffers = BodyBuffers::new(keep);
        Ok(HecSink {
            shared: Arc::new(Shared {
                config,
                endpoints: Mutex::new(Endpoints {
                    current: 0,
                    unhealthy: vec![None; num_endpoints],
                }),
                probe,
                tls,
                dead_letters,
                telemetry,
                label: SinkLabel { sink: "splunk_hec" },
                refused: refused::Outage::default(),
                idle: AtomicUsize::new(0),
                became_idle: tokio::sync::Notify::new(),
                buffers,
                gzips: GzipPool::new(keep),
            }),
        })
    }

    /// Raises an alert on `tx` while HEC refuses the token or configuration, and resolves it
    /// when HEC accepts again.
    pub fn with_system_alerts(self, tx: mpsc::Sender<Alert>) -> HecSink {
        let mut shared = Arc::into_inner(self.shared).expect("not yet shared");
        shared.refused = refused::Outage::alerting(tx);
        HecSink {
            shared: Arc::new(shared),
        }
    }

    /// Runs until the channel closes, delivering (and with acknowledgements on, awaiting the
    /// acknowledgement of) everything received.
    pub async fn run(self, mut rx: mpsc::Receiver<SinkItem>) {
        let config = &self.shared.config;
        let (groups_tx, groups_rx) = mpsc::channel::<Group>(config.concurrency);
        let groups_rx = Arc::new(tokio::sync::Mutex::new(groups_rx));
        let mut connections = Vec::new();
        for index in 0..config.concurrency {
            let connection = match Connection::new(index, self.shared.clone()) {
                Ok(c) => c,
                Err(e) => {
                    // The probe client was built from the same settings, so this cannot happen
                    // in practice; without connections, nothing can be delivered or acked.
                    tracing::error!(error = %e, "HEC connection could not be set up; the sink stops");
                    return;
                }
            };
            connections.push(tokio::spawn(connection.run(groups_rx.clone())));
        }
        let linger = config.batch_linger;
        while let Some(first) = rx.recv().await {
            let received = Instant::now();
            let mut items = vec![first];
            let mut num_events = items[0].batch.len();
            let mut num_bytes: usize = estimate(&items[0]);
            let deadline = Instant::now() + linger;
            while num_events < config.batch_max_events && num_bytes < config.batch_max_bytes {
                // What is already queued joins the group; then, with a connection idle, the
                // group goes now (waiting would only add latency), else it lingers for more
                // until a connection frees up or the linger ends.
                let item = match rx.try_recv() {
                    Ok(item) => Some(item),
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        let idle = self.shared.became_idle.notified();
                        if self.shared.idle.load(Ordering::Acquire) > 0 {
                            break;
                        }
                        tokio::select! {
                            item = rx.recv() => item,
                            _ = idle => break,
                            _ = tokio::time::sleep_until(deadline) => break,
                        }
                    }
                };
                let Some(item) = item else { break };
                num_events += item.batch.len();
                num_bytes += estimate(&item);
                items.push(item);
            }
            // Encoding is CPU work: off the runtime's workers, beside the next poll's processing.
            let shared = self.shared.clone();
            let encoded = tokio::task::spawn_blocking(move || {
                let bodies = encode(&shared.config, &shared.buffers, items.iter().map(|item| &*item.batch));
                (items, bodies)
            })
            .await;
            let Ok((items, bodies)) = encoded else {
                tracing::error!("encoding a HEC group failed; the sink stops");
                return;
            };
            let encoded = Instant::now();
            let num_items = items.len();
            let group = Group {
                items,
                bodies,
                num_events,
            };
            if groups_tx.send(group).await.is_err() {
                tracing::error!("every HEC connection stopped; the sink stops");
                return;
            }
            tracing::debug!(
                items = num_items,
                events = num_events,
                group_and_encode_ms = (encoded - received).as_secs_f64() * 1e3,
                handoff_ms = encoded.elapsed().as_secs_f64() * 1e3,
                "HEC group"
            );
        }
        drop(groups_tx);
        futures::future::join_all(connections).await;
    }
}

/// One sending connection: its own HTTP client and channel GUIDs.
pub(super) struct Connection {
    pub(super) index: usize,
    pub(super) client: reqwest::Client,
    /// A channel GUID per endpoint.
    pub(super) channels: Vec<String>,
    pub(super) shared: Arc<Shared>,
}

impl Connection {
    fn new(index: usize, shared: Arc<Shared>) -> Result<Connection, SinkError> {
        Ok(Connection {
            index,
            client: http_client(&shared.config, &shared.tls)?,
            channels: shared
                .config
                .endpoints
                .iter()
                .map(|_| uuid::Uuid::new_v4().to_string())
                .collect(),
            shared,
        })
    }

    async fn run(self, groups: Arc<tokio::sync::Mutex<mpsc::Receiver<Group>>>) {
        let config = &self.shared.config;
        let mut pending: Vec<PendingGroup> = Vec::new();
        let mut poll = tokio::time::interval(config.ack_poll_interval);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut closed = false;
        loop {
            if closed && pending.is_empty() {
                return;
            }
            let can_take = !closed && pending.len() < config.max_pending_acks;
            tokio::select! {
                group = async {
                    let _idle = IdleGuard::new(&self.shared);
                    groups.lock().await.recv().await
                }, if can_take => match group {
                    None => closed = true,
                    Some(group) => {
                        let mut awaiting = Vec::new();
                        for body in group.bodies {
                            self.deliver(body, Vec::new(), &mut awaiting).await;
                        }
                        let group = PendingGroup { items: group.items, num_events: group.num_events, awaiting };
                        if group.awaiting.is_empty() {
                            self.finish(group);
                        } else {
                            pending.push(group);
                        }
                    }
                },
                _ = poll.tick(), if !pending.is_empty() => {
                    self.poll_pending(&mut pending).await;
                    let (done, waiting): (Vec<_>, Vec<_>) = pending.into_iter().partition(|g| g.awaiting.is_empty());
                    pending = waiting;
                    for group in done {
                        self.finish(group);
                    }
                }
            }
        }
    }

    fn finish(&self, group: PendingGroup) {
        self.shared
            .telemetry
            .sink_events
            .get_or_create(&self.shared.label)
            .inc_by(group.num_events as u64);
        for item in group.items {
            item.ack.accept();
        }
    }

    /// The shared endpoint state. A connection that panicked while holding it left plain
    /// indices behind, still usable, so a poisoned lock is taken over rather than spread.
    fn endpoint_state(&self) -> std::sync::MutexGuard<'_, Endpoints> {
        self.shared
            .endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The endpoint to send to: the current one if healthy, else the next healthy one; an
    /// unhealthy endpoint is probed on `/services/collector/health` at most every 5 s and comes
    /// back when it answers 200. With none healthy, the current one is tried (with backoff).
    async fn pick_endpoint(&self) -> usize {
        let n = self.shared.config.endpoints.len();
        let start = self.endpoint_state().current;
        for step in 0..n {
            let i = (start + step) % n;
            let since = self.endpoint_state().unhealthy[i];
            match since {
                None => {
                    self.endpoint_state().current = i;
                    return i;
                }
                Some(since) if since.elapsed() >= Duration::from_secs(5) => {
                    let healthy = self.healthy(i).await;
                    let mut state = self.endpoint_state();
                    if healthy {
                        tracing::info!(endpoint = %redact_url(&self.shared.config.endpoints[i]), "HEC endpoint healthy again");
                        state.unhealthy[i] = None;
                        state.current = i;
                        return i;
                    }
                    state.unhealthy[i] = Some(Instant::now());
                }
                Some(_) => {}
            }
        }
        start % n
    }

    async fn healthy(&self, endpoint: usize) -> bool {
        let url = format!(
            "{}/services/collector/health",
            self.shared.config.endpoints[endpoint].trim_end_matches('/')
        );
        matches!(self.shared.probe.get(&url).send().await, Ok(r) if r.status().is_success())
    }

    /// Delivers a body; events rejected for their content are isolated and dead-lettered.
    /// With acknowledgements on, accepted bodies join `awaiting`.
    /// `earlier` are the ackIds of previous sends of `body` (see [`AwaitingAck::earlier`]).
    pub(super) async fn deliver(&self, body: Body, earlier: Vec<(usize, u64)>, awaiting: &mut Vec<AwaitingAck>) {
        let acknowledgements = self.shared.config.acknowledgements;
        let mut stack = vec![body];
        while let Some(body) = stack.pop() {
            if body.num_events() == 0 {
                continue;
            }
            match self.send(&body).await {
                Outcome::Delivered {
                    endpoint,
                    ack_id: Some(ack_id),
                } if acknowledgements => {
                    awaiting.push(AwaitingAck {
                        body,
                        endpoint,
                        ack_id,
                        sent: Instant::now(),
                        earlier: earlier.clone(),
                    });
                }
                Outcome::Delivered { ack_id, .. } => {
                    if acknowledgements && ack_id.is_none() {
                        tracing::warn!(
                            "acknowledgements are on but HEC returned no ackId (is indexer acknowledgement enabled on the token?); counting the batch as delivered"
                        );
                    }
                    self.shared.buffers.give(body);
                }
                Outcome::EventRejected { reason } if body.num_events() == 1 => {
                    tracing::warn!(%reason, "HEC rejected an event; sending it to the dead-letter topic");
                    self.shared
                        .dead_letters
                        .send_until_done(body.event(0), "HecRejected", &reason, None)
                        .await;
                }
                Outcome::EventRejected { .. } => {
                    let (a, b) = body.split();
                    stack.push(b);
                    stack.push(a);
                }
            }
        }
    }

    /// Sends one body until HEC accepts it or rejects an event in it.
    async fn send(&self, body: &Body) -> Outcome {
        let gzipped = if self.shared.config.compression {
            self.gzipped(body).await
        } else {
            None
        };
        match gzipped {
            Some(payload) => {
                let outcome = self.post(body, &payload, true).await;
                self.shared.gzips.give_body(payload);
                outcome
            }
            None => {
                let payload = bytes::Bytes::from_owner(SharedBody(body.bytes.clone()));
                self.post(body, &payload, false).await
            }
        }
    }

    /// `body` gzipped with a kept compressor, off the runtime's workers (here instead when the
    /// blocking pool cannot run it, the runtime shutting down); `None` if compressing failed,
    /// and the body then goes uncompressed, which HEC takes as well.
    async fn gzipped(&self, body: &Body) -> Option<bytes::Bytes> {
        let (mut compressor, mut out) = self.shared.gzips.take();
        let raw = body.bytes.clone();
        let done = tokio::task::spawn_blocking(move || {
            let compressed = compressor.compress_into(&raw, &mut out);
            (compressor, out, compressed)
        })
        .await;
        let compressed = match done {
            Ok((compressor, out, Ok(()))) => {
                self.shared.gzips.give_compressor(compressor);
                Ok(out)
            }
            // A failed compressor is not kept.
            Ok((_, _, Err(e))) => Err(e),
            Err(_) => gzip(&body.bytes),
        };
        match compressed {
            Ok(out) => Some(bytes::Bytes::from(out)),
            Err(e) => {
                tracing::warn!(error = %e, "gzip failed; sending the body uncompressed");
                None
            }
        }
    }

    /// Posts `payload` (the body as sent, gzipped or not) until HEC accepts it or rejects an
    /// event in it.
    async fn post(&self, body: &Body, payload: &bytes::Bytes, gzipped: bool) -> Outcome {
        let config = &self.shared.config;
        let sending = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            let endpoint = self.pick_endpoint().await;
            let base = &config.endpoints[endpoint];
            let url = format!("{}/services/collector/event", base.trim_end_matches('/'));
            let mut request = self
                .client
                .post(&url)
                .header("Authorization", format!("Splunk {}", config.token.expose()))
                .header("X-Splunk-Request-Channel", &self.channels[endpoint])
                .header("Content-Type", "application/json");
            if gzipped {
                request = request.header("Content-Encoding", "gzip");
            }
            let (verdict, answer) = match request.body(payload.clone()).send().await {
                Err(e) => (classify_transport(&e), None),
                Ok(response) => {
                    let status = response.status().as_u16();
                    let after = retry_after(
                        response
                            .headers()
                            .get(reqwest::header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok()),
                    );
                    let body = HecResponse::parse(&response.bytes().await.unwrap_or_default());
                    (classify(status, after, &body), Some((status, body)))
                }
            };
            match &verdict {
                Verdict::Delivered => {
                    tracing::debug!(
                        connection = self.index,
                        events = body.num_events(),
                        bytes = payload.len(),
                        request_ms = sending.elapsed().as_secs_f64() * 1e3,
                        "HEC body delivered"
                    );
                    if self.shared.refused.end(&self.shared.config.endpoints[endpoint]) {
                        self.shared.telemetry.hec_refused.set(0);
                    }
                    return Outcome::Delivered {
                        endpoint,
                        ack_id: answer.and_then(|(_, body)| body.ack_id),
                    };
                }
                Verdict::DeadLetter { reason } => return Outcome::EventRejected { reason: reason.clone() },
                // Nothing is lost: the batch is held, the consumer backs up behind the bounded
                // channel (and pauses), and delivery resumes once the token is fixed.
                Verdict::Hold { reason } => {
                    tracing::error!(
                        endpoint = %redact_url(base), %reason, "HEC refused the token or configuration; holding data and retrying"
                    );
                    if let Some((status, body)) = &answer
                        && self
                            .shared
                            .refused
                            .begin(base, *status, body.code.unwrap_or(u64::MAX), &body.text)
                    {
                        self.shared.telemetry.hec_refused.set(1);
                    }
                }
                Verdict::Retry { reason, .. } => {
                    tracing::warn!(endpoint = %redact_url(base), %reason, attempt, "HEC request failed; retrying");
                    if config.endpoints.len() > 1 {
                        let mut state = self.endpoint_state();
                        state.unhealthy[endpoint] = Some(Instant::now());
                        state.current = state.current.wrapping_add(1);
                    }
                }
            }
            self.shared
                .telemetry
                .sink_retries
                .get_or_create(&self.shared.label)
                .inc();
            if let Some(wait) = wait_after(&verdict, attempt) {
                tokio::time::sleep(wait).await;
            }
            attempt = attempt.saturating_add(1);
        }
    }
}

fn estimate(item: &SinkItem) -> usize {
    item.batch.audit.iter().map(|r| r.raw.len() + 400).sum::<usize>()
        + item.batch.metrics.len() * 300
        + item.batch.alerts.len() * 1000
}

/// A body's shared bytes as the HTTP client's payload, without copying them.
struct SharedBody(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedBody {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}
