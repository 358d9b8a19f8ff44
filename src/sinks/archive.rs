//! Archive sink: every audit event into the compliance archive (docs/PRODUCT.md §6).
//!
//! A batch is acknowledged once its rows are in the fsync'd spool segment (see
//! `archive::spool`), so its offsets are committed only after the archive holds it durably;
//! the segment is uploaded with its manifest when it fills, ages, or the pipeline stops, and
//! on the next start if the process died first. Failures are retried for as long as it takes
//! (the bounded channel then pauses the consumer); nothing is dropped.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{SinkError, SinkItem};
use crate::archive::ArchiveError;
use crate::archive::manifest::Signer;
use crate::archive::writer::ArchiveWriter;
use crate::config::ArchiveConfig;
use crate::retry::{Verdict, wait_after};
use crate::telemetry::{SinkLabel, Telemetry};

/// `$attempt` (a future of `Result<T, ArchiveError>`) until it succeeds, with the wait its
/// error's verdict sets between attempts.
macro_rules! retrying {
    ($sink:expr, $what:expr, $attempt:expr) => {{
        let mut n = 0;
        loop {
            match $attempt.await {
                Ok(v) => break v,
                Err(e) => $sink.after_failure($what, &e, &mut n).await,
            }
        }
    }};
}

const LABEL: SinkLabel = SinkLabel { sink: "archive" };

pub struct ArchiveSink {
    config: ArchiveConfig,
    audit_topics: Vec<String>,
    telemetry: Telemetry,
}

impl ArchiveSink {
    /// Checks what can be checked before the pipeline starts (the signing key).
    pub fn new(
        config: ArchiveConfig,
        audit_topics: Vec<String>,
        telemetry: Telemetry,
    ) -> Result<ArchiveSink, SinkError> {
        if let Some(key) = &config.signing_key {
            Signer::load(key).map_err(|e| SinkError::Rejected {
                sink: "archive",
                message: e.to_string(),
            })?;
        }
        Ok(ArchiveSink {
            config,
            audit_topics,
            telemetry,
        })
    }

    /// Waits after failed attempt `n`, as the error's verdict says.
    async fn after_failure(&self, what: &str, e: &ArchiveError, n: &mut u32) {
        let verdict = e.verdict();
        match &verdict {
            Verdict::Hold { .. } => {
                tracing::error!(error = %e, "archive: {what} refused; holding the data and retrying (an operator must fix this)")
            }
            _ => tracing::warn!(error = %e, "archive: {what} failed; retrying"),
        }
        self.telemetry.sink_retries.get_or_create(&LABEL).inc();
        tokio::time::sleep(wait_after(&verdict, *n).unwrap_or_default()).await;
        *n = n.saturating_add(1);
    }

    /// Runs until the channel closes, then closes the open segment.
    pub async fn run(self, mut rx: mpsc::Receiver<SinkItem>) {
        let mut writer = retrying!(
            self,
            "opening the archive",
            ArchiveWriter::open(&self.config, self.audit_topics.clone())
        );
        loop {
            let deadline = writer
                .open_since()
                .map(|since| tokio::time::Instant::from_std(since + self.config.max_file_age));
            let age = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                item = rx.recv() => {
                    let Some(item) = item else { break };
                    if let Some(frame) = writer.frame_of(&item.batch) {
                        let rows = frame.rows.as_ref().map_or(0, |r| r.num_rows());
                        let frame = Arc::new(frame);
                        retrying!(self, "spooling a batch", writer.spool(frame.clone()));
                        self.telemetry.sink_events.get_or_create(&LABEL).inc_by(rows as u64);
                    }
                    item.ack.accept();
                    if writer.is_full() {
                        retrying!(self, "closing a full segment", writer.close());
                    }
                }
                () = age => retrying!(self, "closing a segment at max_file_age", writer.close()),
            }
        }
        // Stopping: upload what is spooled (if this is cut short, the next start does it).
        retrying!(self, "closing the segment at shutdown", writer.close());
    }
}
