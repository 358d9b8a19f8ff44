//! OTLP sink (gRPC, or HTTP/protobuf): audit events and alerts as log records, metric samples as
//! gauges and sums with the cluster id as a resource attribute.
//!
//! It speaks the protocol through the generated OTLP messages and clients of
//! `opentelemetry-proto` rather than the SDK's batch exporters, because at-least-once needs to
//! know when *this* batch was accepted: a batch is acknowledged only after the collector answered
//! OK. What each answer means is decided in [`response`] (retry, with the receiver's delay when
//! it names one; hold while it refuses our credentials; dead-letter when it refuses the request
//! for what it is); partial successes are counted and logged.

pub mod encode;
pub mod response;
pub mod transport;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use tokio::sync::mpsc;

pub use encode::{alert_log_record, audit_log_record, logs_request, metrics_request};
use transport::Transport;

use super::{SinkError, SinkItem};
use crate::config::OtlpSinkConfig;
use crate::event::Batch;
use crate::retry::{Verdict, wait_after};
use crate::sinks::dead_letter::DeadLetters;
use crate::telemetry::{SinkLabel, Telemetry};

pub struct OtlpSink {
    transport: Transport,
    dead_letters: DeadLetters,
    telemetry: Telemetry,
    label: SinkLabel,
}

/// One OTLP request.
pub enum Signal {
    Logs(ExportLogsServiceRequest),
    Metrics(ExportMetricsServiceRequest),
}

impl Signal {
    fn name(&self) -> &'static str {
        match self {
            Signal::Logs(_) => "logs",
            Signal::Metrics(_) => "metrics",
        }
    }
}

impl OtlpSink {
    pub fn new(config: OtlpSinkConfig, dead_letters: DeadLetters, telemetry: Telemetry) -> Result<OtlpSink, SinkError> {
        Ok(OtlpSink {
            transport: Transport::new(&config)?,
            dead_letters,
            telemetry,
            label: SinkLabel { sink: "otlp" },
        })
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<SinkItem>) {
        while let Some(item) = rx.recv().await {
            if let Some(logs) = logs_request(&item.batch)
                && let Err(reason) = self.export(Signal::Logs(logs)).await
            {
                // Refused for what it is: park the audit events, never drop them.
                let message = format!("OTLP {reason}");
                for row in &item.batch.audit {
                    self.dead_letters
                        .send_until_done(&row.raw, "OtlpRejected", &message, None)
                        .await;
                }
            }
            if let Some(metrics) = metrics_request(&item.batch.metrics)
                && let Err(reason) = self.export(Signal::Metrics(metrics)).await
            {
                let message = format!("OTLP {reason}");
                let mut lines = Vec::new();
                crate::sinks::file::encode(
                    &Batch {
                        metrics: item.batch.metrics.clone(),
                        ..Batch::default()
                    },
                    &mut lines,
                );
                self.dead_letters
                    .send_until_done(&lines, "OtlpRejected", &message, None)
                    .await;
            }
            self.telemetry
                .sink_events
                .get_or_create(&self.label)
                .inc_by(item.batch.len() as u64);
            item.ack.accept();
        }
    }

    /// Exports until the receiver accepts (counting partial rejections), or refuses the request
    /// for good (the reason is returned, for the dead-letter topic).
    async fn export(&mut self, signal: Signal) -> Result<(), String> {
        let mut attempt: u32 = 0;
        loop {
            let verdict = match self.transport.send_once(&signal).await {
                Ok(partial) => {
                    if let Some((rejected, message)) = partial.filter(|(n, _)| *n > 0) {
                        tracing::warn!(rejected, message = %message, signal = signal.name(), "OTLP receiver rejected part of a request");
                        self.telemetry.otlp_partial_rejections.inc_by(rejected.max(0) as u64);
                    }
                    return Ok(());
                }
                Err(verdict) => verdict,
            };
            match &verdict {
                Verdict::Delivered => return Ok(()),
                Verdict::DeadLetter { reason } => {
                    tracing::error!(%reason, signal = signal.name(), "OTLP receiver rejected a request permanently");
                    return Err(reason.clone());
                }
                Verdict::Retry { reason, .. } => {
                    tracing::warn!(%reason, attempt, signal = signal.name(), "OTLP export failed; retrying")
                }
                Verdict::Hold { reason } => {
                    tracing::error!(%reason, signal = signal.name(), "OTLP receiver refused our credentials; holding data and retrying")
                }
            }
            self.telemetry.sink_retries.get_or_create(&self.label).inc();
            if let Some(wait) = wait_after(&verdict, attempt) {
                tokio::time::sleep(wait).await;
            }
            attempt = attempt.saturating_add(1);
        }
    }
}
