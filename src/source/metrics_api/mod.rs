//! The Confluent Cloud Metrics API as a source: the export endpoint
//! (`GET /v2/metrics/cloud/export`) polled every `interval`, its samples fed into the same
//! metrics path as the metrics topic (decode -> enrich -> rules -> window -> sinks), so the
//! traffic rules work on Confluent Cloud without a separate scraper.
//!
//! - Samples keep their own timestamps. The endpoint lags about three minutes, so the records
//!   carry a pseudo partition ([`TOPIC`]) that holds the metrics clock for one interval past
//!   each poll: the rules wait for the next poll instead of calling its samples late.
//! - The same sample polled twice (same series, same timestamp) counts once.
//! - Rate limits (160 export requests per resource per hour, 300 per IP per minute): requests
//!   naming a resource are spaced at least 22.5 s apart, a 429 waits as long as `Retry-After`
//!   or the rate-limit headers say, and a spent window (`RateLimit-Remaining: 0`) pauses the
//!   next request until its reset. Nothing is skipped: a failed export is retried, never dropped.
//! - Refused credentials are logged with what to fix, counted, and retried slowly; the pipeline
//!   runs on.
//! - With `publish_topic`, samples are produced as canonical JSON to that metrics topic and
//!   read back from it (for other consumers too), not also fed in directly.

pub mod export;
pub mod response;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::MetricsApiConfig;
use crate::event::now_us;
use crate::retry::{self, Verdict};
use crate::source::{Record, Stream};
use crate::telemetry::{OutcomeLabel, ResourceLabel, Telemetry};
use export::CanonicalSample;

/// The pseudo topic of polled records (a `/` no Kafka topic name can hold, so it names no real
/// topic), partition 0.
pub const TOPIC: &str = "source/confluent_metrics_api";
/// 3600 s / 160 requests: the closest two requests naming one resource may be.
pub const PER_RESOURCE_SPACING: Duration = Duration::from_millis(22_500);
/// Largest export body read (1,000 topics x 6 metrics is under 1 MB).
const MAX_BODY_BYTES: usize = 64 << 20;
/// Samples per pseudo record (well under `decode.max_record_bytes`).
const SAMPLES_PER_RECORD: usize = 500;
/// A series not exported for this many polls is forgotten by the repeat check.
const FORGET_AFTER_POLLS: u64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum MetricsApiError {
    #[error("building the Metrics API client for {url}: {source}")]
    Client { url: String, source: reqwest::Error },
    #[error("sources.confluent_metrics_api.url {url}: not a base for the export endpoint: {source}")]
    Url { url: String, source: url::ParseError },
}

/// Where polled samples go.
pub enum Output {
    /// Straight into the processor, as records of the pseudo topic.
    Pipeline(mpsc::Sender<Vec<Record>>),
    /// Produced to a metrics topic, which the consumer reads back.
    Topic { producer: FutureProducer, topic: String },
}

pub struct MetricsApiPoller {
    config: MetricsApiConfig,
    client: reqwest::Client,
    telemetry: Telemetry,
    output: Output,
    /// Per resource kind, its export request's URL (built once: the query never changes).
    exports: Vec<(&'static str, url::Url)>,
    /// Series key -> (newest timestamp fed, poll that last saw it).
    seen: HashMap<String, (i64, u64)>,
    /// Resources the export currently reports it cannot read (logged when that changes).
    failing: BTreeSet<String>,
    polls: u64,
    next_offset: i64,
    /// No request before this (a spent rate-limit window).
    not_before: Instant,
    /// When each resource kind's export last succeeded: the next waits the spacing from it, even
    /// when retries made a cycle overrun its interval.
    last_success: HashMap<&'static str, Instant>,
}

impl MetricsApiPoller {
    pub fn new(
        config: MetricsApiConfig,
        telemetry: Telemetry,
        output: Output,
    ) -> Result<MetricsApiPoller, MetricsApiError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("auditflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| MetricsApiError::Client {
                url: crate::config::redact_url(&config.url),
                source,
            })?;
        let exports = export_urls(&config)?;
        Ok(MetricsApiPoller {
            config,
            client,
            telemetry,
            output,
            exports,
            seen: HashMap::new(),
            failing: BTreeSet::new(),
            polls: 0,
            next_offset: 0,
            not_before: Instant::now(),
            last_success: HashMap::new(),
        })
    }

    /// Polls until `shutdown`, one export per resource kind per interval.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let interval = self.config.interval.max(PER_RESOURCE_SPACING);
        if interval > self.config.interval {
            tracing::warn!(
                configured = ?self.config.interval,
                used = ?interval,
                "sources.confluent_metrics_api.interval is below the export's rate limit (160 requests per resource per hour); polling every 22.5s"
            );
        }
        tracing::info!(url = %crate::config::redact_url(&self.config.url), ?interval, "polling the Confluent Cloud Metrics API");
        let mut next = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
            }
            let started = Instant::now();
            self.polls += 1;
            let mut fresh = Vec::new();
            for index in 0..self.exports.len() {
                match self.export(index, &shutdown).await {
                    Some(mut samples) => fresh.append(&mut samples),
                    None => return,
                }
            }
            let polls = self.polls;
            self.seen
                .retain(|_, (_, last)| last.saturating_add(FORGET_AFTER_POLLS) >= polls);
            tracing::debug!(
                samples = fresh.len(),
                took_ms = started.elapsed().as_millis() as u64,
                "metrics api polled"
            );
            if !fresh.is_empty() && self.emit(fresh, &shutdown).await.is_none() {
                return;
            }
            next = started + interval;
        }
    }

    /// One kind's export, retried until it succeeds; its new samples. None on shutdown.
    async fn export(&mut self, index: usize, shutdown: &CancellationToken) -> Option<Vec<CanonicalSample>> {
        let (kind, url) = self.exports[index].clone();
        let mut attempt = 0u32;
        if let Some(last) = self.last_success.get(kind) {
            self.not_before = self.not_before.max(*last + PER_RESOURCE_SPACING);
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep_until(self.not_before) => {}
            }
            let (verdict, outcome) = match self.request(url.clone()).await {
                Ok((body, pause)) => {
                    self.not_before = Instant::now() + pause.unwrap_or_default();
                    match export::parse(&body, now_us() / 1000) {
                        Ok(exported) => {
                            self.last_success.insert(kind, Instant::now());
                            self.record_success();
                            return Some(self.take_new(exported));
                        }
                        Err(e) => (
                            Verdict::Retry {
                                after: None,
                                reason: e.to_string(),
                            },
                            "failed",
                        ),
                    }
                }
                Err(failure) => failure,
            };
            self.telemetry
                .metrics_api_requests
                .get_or_create(&OutcomeLabel { outcome })
                .inc();
            let mut wait = retry::wait_after(&verdict, attempt).unwrap_or(PER_RESOURCE_SPACING);
            match &verdict {
                Verdict::Hold { reason } => {
                    self.telemetry.metrics_api_refused.set(1);
                    // Slowly: a refused key still spends the rate limit.
                    wait = wait.max(self.config.interval);
                    tracing::error!(resource_kind = kind, attempt, retry_in = ?wait, "{reason}");
                }
                Verdict::Retry { reason, .. } => {
                    tracing::warn!(resource_kind = kind, attempt, retry_in = ?wait, "Metrics API export failed: {reason}")
                }
                Verdict::Delivered | Verdict::DeadLetter { .. } => {}
            }
            self.not_before = self.not_before.max(Instant::now() + wait);
            attempt = attempt.saturating_add(1);
        }
    }

    /// One request: the body and the pause its rate-limit headers ask for, or the verdict and
    /// the outcome it is counted as (`rate_limited`, `refused`, `failed`).
    async fn request(&self, url: url::Url) -> Result<(String, Option<Duration>), (Verdict, &'static str)> {
        let context = crate::config::redact_url(url.as_str());
        let failed = |e: reqwest::Error| {
            let reason = format!("request to {context}: {e}");
            (Verdict::Retry { after: None, reason }, "failed")
        };
        let too_large = || {
            let reason = format!("the export body is larger than {MAX_BODY_BYTES} bytes");
            (Verdict::Retry { after: None, reason }, "failed")
        };
        let mut resp = self
            .client
            .get(url.clone())
            .basic_auth(self.config.api_key.expose(), Some(self.config.api_secret.expose()))
            .header(reqwest::header::ACCEPT, "text/plain")
            .send()
            .await
            .map_err(failed)?;
        let verdict = response::verdict(resp.status(), resp.headers());
        match verdict {
            Verdict::Delivered => {}
            Verdict::Hold { .. } => return Err((verdict, "refused")),
            _ if resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => return Err((verdict, "rate_limited")),
            _ => return Err((verdict, "failed")),
        }
        let pause = response::pause_after_success(resp.headers());
        if resp.content_length().is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        let body = String::from_utf8(body).map_err(|_| {
            let reason = "the export body is not UTF-8".to_owned();
            (Verdict::Retry { after: None, reason }, "failed")
        })?;
        Ok((body, pause))
    }

    fn record_success(&self) {
        self.telemetry
            .metrics_api_requests
            .get_or_create(&OutcomeLabel { outcome: "ok" })
            .inc();
        if self.telemetry.metrics_api_refused.get() != 0 {
            tracing::info!("the Metrics API accepts the credentials again");
        }
        self.telemetry.metrics_api_refused.set(0);
        self.telemetry.metrics_api_last_success.set(now_us() / 1_000_000);
    }

    /// Drops repeats and unasked-for metrics, reports access errors; the new samples.
    fn take_new(&mut self, exported: export::Exported) -> Vec<CanonicalSample> {
        self.report_access_errors(&exported.access_errors);
        let mut fresh = Vec::with_capacity(exported.samples.len());
        for s in exported.samples {
            if let Some(wanted) = &self.config.metrics
                && !wanted.contains(&s.metric)
            {
                continue;
            }
            let key = s.series_key();
            match self.seen.get_mut(&key) {
                Some((newest, last)) if s.time_ms <= *newest => {
                    *last = self.polls;
                    self.telemetry.metrics_api_repeats.inc();
                }
                Some((newest, last)) => {
                    (*newest, *last) = (s.time_ms, self.polls);
                    fresh.push(s);
                }
                None => {
                    self.seen.insert(key, (s.time_ms, self.polls));
                    fresh.push(s);
                }
            }
        }
        fresh
    }

    fn report_access_errors(&mut self, errors: &[BTreeMap<String, String>]) {
        let configured: Vec<&String> = self.config.resources.iter().flat_map(|(_, ids)| ids).collect();
        let mut now_failing = BTreeSet::new();
        for labels in errors {
            // Only configured ids become label values: a response cannot grow the metric's
            // cardinality.
            let resource = labels
                .values()
                .find(|v| configured.contains(v))
                .cloned()
                .unwrap_or_else(|| "unknown".into());
            self.telemetry
                .metrics_api_access_errors
                .get_or_create(&ResourceLabel {
                    resource: resource.clone(),
                })
                .inc();
            if !self.failing.contains(&resource) {
                tracing::error!(
                    resource = %resource,
                    labels = ?labels,
                    "the Metrics API cannot read this resource (confluent_scrape_resource_access_error): check that it exists and that the API key's owner may view its metrics"
                );
            }
            now_failing.insert(resource);
        }
        for gone in self.failing.difference(&now_failing) {
            tracing::info!(resource = %gone, "the Metrics API reads this resource again");
        }
        self.failing = now_failing;
    }

    /// Hands new samples on; None when the pipeline or shutdown stopped it.
    async fn emit(&mut self, samples: Vec<CanonicalSample>, shutdown: &CancellationToken) -> Option<()> {
        let n = samples.len() as u64;
        match &self.output {
            Output::Pipeline(tx) => {
                let received_ms = now_us() / 1000;
                let mut records = Vec::new();
                for chunk in samples.chunks(SAMPLES_PER_RECORD) {
                    let mut payload = Vec::new();
                    for json in chunk.iter().filter_map(sample_json) {
                        payload.extend_from_slice(&json);
                        payload.push(b'\n');
                    }
                    records.push(Record {
                        stream: Stream::Metrics,
                        topic: Arc::from(TOPIC),
                        partition: 0,
                        offset: self.next_offset,
                        timestamp_ms: Some(received_ms),
                        key: None,
                        payload: Some(payload.into()),
                        headers: vec![("content-type".into(), b"application/json".to_vec())],
                    });
                    self.next_offset += 1;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    sent = tx.send(records) => sent.ok()?,
                }
            }
            Output::Topic { producer, topic } => publish(producer, topic, &samples, shutdown).await?,
        }
        self.telemetry.metrics_api_samples.inc_by(n);
        Some(())
    }
}

/// Per resource kind, `GET {url}/v2/metrics/cloud/export?resource.<kind>.id=..[&metric=..]`.
fn export_urls(config: &MetricsApiConfig) -> Result<Vec<(&'static str, url::Url)>, MetricsApiError> {
    let base = format!("{}/v2/metrics/cloud/export", config.url);
    let parsed = url::Url::parse(&base).map_err(|source| MetricsApiError::Url {
        url: crate::config::redact_url(&config.url),
        source,
    })?;
    Ok(config
        .resources
        .iter()
        .map(|(kind, ids)| {
            let mut url = parsed.clone();
            {
                let mut query = url.query_pairs_mut();
                for id in ids {
                    query.append_pair(&format!("resource.{kind}.id"), id);
                }
                for metric in config.metrics.iter().flatten() {
                    query.append_pair("metric", metric);
                }
            }
            (*kind, url)
        })
        .collect())
}

/// A sample as canonical JSON. Serialising plain strings and numbers does not fail; were it to,
/// the sample is skipped with a log line rather than sent as an empty (poison) payload.
fn sample_json(sample: &CanonicalSample) -> Option<Vec<u8>> {
    match serde_json::to_vec(sample) {
        Ok(json) => Some(json),
        Err(e) => {
            tracing::error!(metric = %sample.metric, error = %e, "a Metrics API sample could not be serialised; skipped");
            None
        }
    }
}

/// Produces each sample to `topic`, retrying failed ones until the broker takes them.
async fn publish(
    producer: &FutureProducer,
    topic: &str,
    samples: &[CanonicalSample],
    shutdown: &CancellationToken,
) -> Option<()> {
    let payloads: Vec<(String, Vec<u8>)> = samples
        .iter()
        .filter_map(|s| {
            // Keyed by resource and topic: one series stays in one partition, in order.
            let key = format!(
                "{}/{}",
                s.resource.values().next().map_or("", String::as_str),
                s.labels.get("topic").map_or("", String::as_str)
            );
            Some((key, sample_json(s)?))
        })
        .collect();
    let mut pending: Vec<usize> = (0..payloads.len()).collect();
    let mut attempt = 0u32;
    while !pending.is_empty() {
        let sends = pending.iter().map(|&i| {
            let (key, payload) = &payloads[i];
            let record = FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "content-type",
                    value: Some("application/json"),
                }));
            async move { (i, producer.send(record, Duration::from_secs(30)).await) }
        });
        let results = futures::future::join_all(sends).await;
        let mut failed = Vec::new();
        for (i, result) in results {
            if let Err((e, _)) = result {
                if failed.is_empty() {
                    tracing::warn!(topic, error = %e, attempt, "publishing Metrics API samples failed; retrying");
                }
                failed.push(i);
            }
        }
        pending = failed;
        if !pending.is_empty() {
            let wait = retry::backoff(attempt, retry::RETRY_CAP);
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(wait) => {}
            }
            attempt = attempt.saturating_add(1);
        }
    }
    Some(())
}
