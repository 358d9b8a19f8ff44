//! The HEC sink task: batch, encode, compress, send, retry, isolate rejected events.

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::HecSinkConfig;
use super::encoder::{Body, Encoder, gzip};
use crate::sinks::{SinkError, SinkItem, backoff};
use crate::source::dead_letter::DeadLetters;
use crate::telemetry::{SinkLabel, Telemetry};

/// HEC status codes that blame an event's content: isolate and dead-letter it.
const EVENT_REJECTED: [u64; 5] = [6, 7, 12, 13, 15];
/// HEC status codes that blame the token or the endpoint's configuration: hold and alert.
const CONFIG_REJECTED: [u64; 6] = [1, 2, 3, 4, 14, 16];

#[derive(Deserialize, Default)]
struct HecResponse {
    #[serde(default)]
    text: String,
    #[serde(default)]
    code: Option<u64>,
    #[serde(default, rename = "ackId")]
    ack_id: Option<u64>,
}

#[derive(Deserialize, Default)]
struct AckResponse {
    #[serde(default)]
    acks: std::collections::HashMap<String, bool>,
}

enum Outcome {
    /// Accepted by `endpoint`; with acknowledgements on, under `ack_id`.
    Delivered {
        endpoint: usize,
        ack_id: Option<u64>,
    },
    EventRejected {
        code: u64,
        text: String,
    },
}

/// A body HEC accepted whose indexer acknowledgement is outstanding.
struct AwaitingAck {
    body: Body,
    endpoint: usize,
    ack_id: u64,
    sent: Instant,
}

pub struct HecSink {
    config: HecSinkConfig,
    client: reqwest::Client,
    /// One channel GUID per endpoint: acknowledgements are polled where the batch went.
    channels: Vec<String>,
    endpoint: usize,
    /// Per endpoint: when it failed (unhealthy until `/services/collector/health` says 200).
    unhealthy: Vec<Option<Instant>>,
    dead_letters: DeadLetters,
    telemetry: Telemetry,
    label: SinkLabel,
}

impl HecSink {
    pub fn new(config: HecSinkConfig, dead_letters: DeadLetters, telemetry: Telemetry) -> Result<HecSink, SinkError> {
        let build_error = |message: String| SinkError::Rejected {
            sink: "splunk_hec",
            message,
        };
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout())
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .danger_accept_invalid_certs(!config.tls_verify);
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| build_error(format!("reading ca_file {}: {e}", ca.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| build_error(format!("ca_file {}: {e}", ca.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder
            .build()
            .map_err(|e| build_error(format!("building the HTTP client: {e}")))?;
        let num_endpoints = config.endpoints.len();
        let channels = config
            .endpoints
            .iter()
            .map(|_| uuid::Uuid::new_v4().to_string())
            .collect();
        Ok(HecSink {
            config,
            client,
            channels,
            endpoint: 0,
            unhealthy: vec![None; num_endpoints],
            dead_letters,
            telemetry,
            label: SinkLabel { sink: "splunk_hec" },
        })
    }

    /// Runs until the channel closes, delivering everything received.
    pub async fn run(mut self, mut rx: mpsc::Receiver<SinkItem>) {
        let linger = self.config.linger();
        while let Some(first) = rx.recv().await {
            let mut items = vec![first];
            let mut num_events = items[0].batch.len();
            let mut num_bytes: usize = estimate(&items[0]);
            let deadline = Instant::now() + linger;
            while num_events < self.config.batch_max_events && num_bytes < self.config.batch_max_bytes {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(item)) => {
                        num_events += item.batch.len();
                        num_bytes += estimate(&item);
                        items.push(item);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            let mut encoder = Encoder::new(&self.config);
            for item in &items {
                for row in &item.batch.audit {
                    encoder.audit(row);
                }
                for m in &item.batch.metrics {
                    encoder.metric(m);
                }
                for a in &item.batch.alerts {
                    encoder.alert(a);
                }
            }
            let bodies = std::mem::take(&mut encoder.bodies);
            let mut awaiting = Vec::new();
            for body in bodies {
                self.deliver(body, &mut awaiting).await;
            }
            self.await_acks(awaiting).await;
            self.telemetry
                .sink_events
                .get_or_create(&self.label)
                .inc_by(num_events as u64);
            for item in items {
                item.ack.accept();
            }
        }
    }

    /// Waits until HEC acknowledges every body; a body whose acknowledgement does not come
    /// within `ack_timeout` is sent again (the receiver may then index it twice: at least once).
    async fn await_acks(&mut self, mut awaiting: Vec<AwaitingAck>) {
        let poll = self.config.ack_poll_interval();
        let timeout = self.config.ack_timeout();
        while !awaiting.is_empty() {
            tokio::time::sleep(poll).await;
            for endpoint in 0..self.config.endpoints.len() {
                let ids: Vec<u64> = awaiting
                    .iter()
                    .filter(|a| a.endpoint == endpoint)
                    .map(|a| a.ack_id)
                    .collect();
                if ids.is_empty() {
                    continue;
                }
                let acked = self.poll_acks(endpoint, &ids).await;
                awaiting.retain(|a| a.endpoint != endpoint || !acked.contains(&a.ack_id));
            }
            let (expired, waiting): (Vec<AwaitingAck>, Vec<AwaitingAck>) =
                awaiting.into_iter().partition(|a| a.sent.elapsed() >= timeout);
            awaiting = waiting;
            for a in expired {
                tracing::warn!(
                    ack_id = a.ack_id,
                    events = a.body.num_events(),
                    "HEC never acknowledged a batch; sending it again"
                );
                self.telemetry.sink_retries.get_or_create(&self.label).inc();
                self.telemetry.hec_resent_events.inc_by(a.body.num_events() as u64);
                self.deliver(a.body, &mut awaiting).await;
            }
        }
    }

    /// The endpoint to send to: the current one if healthy, else the next healthy one; an
    /// unhealthy endpoint is probed on `/services/collector/health` at most every 5 s and comes
    /// back when it answers 200. With none healthy, the current one is tried (with backoff).
    async fn pick_endpoint(&mut self) -> usize {
        let n = self.config.endpoints.len();
        for step in 0..n {
            let i = (self.endpoint + step) % n;
            match self.unhealthy[i] {
                None => {
                    self.endpoint = i;
                    return i;
                }
                Some(since) if since.elapsed() >= Duration::from_secs(5) => {
                    if self.healthy(i).await {
                        tracing::info!(endpoint = %self.config.endpoints[i], "HEC endpoint healthy again");
                        self.unhealthy[i] = None;
                        self.endpoint = i;
                        return i;
                    }
                    self.unhealthy[i] = Some(Instant::now());
                }
                Some(_) => {}
            }
        }
        self.endpoint % n
    }

    async fn healthy(&self, endpoint: usize) -> bool {
        let url = format!(
            "{}/services/collector/health",
            self.config.endpoints[endpoint].trim_end_matches('/')
        );
        matches!(self.client.get(&url).send().await, Ok(r) if r.status().is_success())
    }

    /// Asks `endpoint` which of `ids` are indexed; failures just mean "not yet".
    async fn poll_acks(&self, endpoint: usize, ids: &[u64]) -> std::collections::HashSet<u64> {
        let base = &self.config.endpoints[endpoint];
        let url = format!("{}/services/collector/ack", base.trim_end_matches('/'));
        let response = self
            .client
            .post(&url)
            .header("Authorization", format!("Splunk {}", self.config.token.expose()))
            .header("X-Splunk-Request-Channel", &self.channels[endpoint])
            .json(&serde_json::json!({ "acks": ids }))
            .send()
            .await;
        match response {
            Ok(r) if r.status().is_success() => {
                let parsed: AckResponse = r.json().await.unwrap_or_default();
                parsed
                    .acks
                    .into_iter()
                    .filter(|(_, done)| *done)
                    .filter_map(|(id, _)| id.parse().ok())
                    .collect()
            }
            Ok(r) => {
                tracing::warn!(endpoint = %base, status = r.status().as_u16(), "HEC ack poll refused; polling again");
                Default::default()
            }
            Err(e) => {
                tracing::warn!(endpoint = %base, error = %e, "HEC ack poll failed; polling again");
                Default::default()
            }
        }
    }

    /// Delivers a body; events rejected for their content are isolated and dead-lettered.
    /// With acknowledgements on, accepted bodies join `awaiting`.
    async fn deliver(&mut self, body: Body, awaiting: &mut Vec<AwaitingAck>) {
        let mut stack = vec![body];
        while let Some(body) = stack.pop() {
            if body.num_events() == 0 {
                continue;
            }
            match self.send(&body).await {
                Outcome::Delivered {
                    endpoint,
                    ack_id: Some(ack_id),
                } if self.config.acknowledgements => {
                    awaiting.push(AwaitingAck {
                        body,
                        endpoint,
                        ack_id,
                        sent: Instant::now(),
                    });
                }
                Outcome::Delivered { ack_id, .. } => {
                    if self.config.acknowledgements && ack_id.is_none() {
                        tracing::warn!(
                            "acknowledgements are on but HEC returned no ackId (is indexer acknowledgement enabled on the token?); counting the batch as delivered"
                        );
                    }
                }
                Outcome::EventRejected { code, text } if body.num_events() == 1 => {
                    let message = format!("HEC code {code}: {text}");
                    tracing::warn!(code, text = %text, "HEC rejected an event; sending it to the dead-letter topic");
                    self.dead_letters
                        .send_until_done(body.event(0), "HecRejected", &message, None)
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
    async fn send(&mut self, body: &Body) -> Outcome {
        let payload = if self.config.compression {
            let raw = body.bytes.clone();
            tokio::task::spawn_blocking(move || gzip(&raw))
                .await
                .expect("gzip does not panic")
        } else {
            body.bytes.clone()
        };
        let mut attempt: u32 = 0;
        loop {
            let endpoint = self.pick_endpoint().await;
            let base = &self.config.endpoints[endpoint];
            let url = format!("{}/services/collector/event", base.trim_end_matches('/'));
            let mut request = self
                .client
                .post(&url)
                .header("Authorization", format!("Splunk {}", self.config.token.expose()))
                .header("X-Splunk-Request-Channel", &self.channels[endpoint])
                .header("Content-Type", "application/json");
            if self.config.compression {
                request = request.header("Content-Encoding", "gzip");
            }
            let (retry_cap, failover) = match request.body(payload.clone()).send().await {
                Err(e) => {
                    tracing::warn!(endpoint = %base, error = %e, attempt, "HEC request failed; retrying");
                    (Duration::from_secs(10), true)
                }
                Ok(response) => {
                    let status = response.status();
                    let body = response.bytes().await.unwrap_or_default();
                    let parsed: HecResponse = serde_json::from_slice(&body).unwrap_or_default();
                    let code = parsed.code.unwrap_or(u64::MAX);
                    if status == StatusCode::OK {
                        return Outcome::Delivered {
                            endpoint,
                            ack_id: parsed.ack_id,
                        };
                    }
                    if status == StatusCode::BAD_REQUEST && EVENT_REJECTED.contains(&code) {
                        return Outcome::EventRejected {
                            code,
                            text: parsed.text,
                        };
                    }
                    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
                        || CONFIG_REJECTED.contains(&code)
                    {
                        // Nothing is lost: the batch is held, the consumer backs up behind the
                        // bounded channel, and delivery resumes once the token is fixed.
                        tracing::error!(
                            endpoint = %base, status = status.as_u16(), code, text = %parsed.text,
                            "HEC refused the token or configuration; holding data and retrying"
                        );
                        (Duration::from_secs(30), false)
                    } else {
                        tracing::warn!(endpoint = %base, status = status.as_u16(), code, text = %parsed.text, attempt, "HEC busy or failing; retrying");
                        (Duration::from_secs(10), true)
                    }
                }
            };
            self.telemetry.sink_retries.get_or_create(&self.label).inc();
            if failover && self.config.endpoints.len() > 1 {
                self.unhealthy[endpoint] = Some(Instant::now());
                self.endpoint = self.endpoint.wrapping_add(1);
            }
            tokio::time::sleep(backoff(attempt, retry_cap)).await;
            attempt = attempt.saturating_add(1);
        }
    }
}

fn estimate(item: &SinkItem) -> usize {
    item.batch.audit.iter().map(|r| r.raw.len() + 400).sum::<usize>()
        + item.batch.metrics.len() * 300
        + item.batch.alerts.len() * 1000
}
