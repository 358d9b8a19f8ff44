//! Indexer acknowledgement: the bodies HEC accepted and has not yet said are indexed, polling
//! `/services/collector/ack` per endpoint and channel, and resending what stays unacknowledged
//! past `ack_timeout`.

use std::collections::HashSet;

use tokio::time::Instant;

use super::encoder::Body;
use super::response::AckResponse;
use super::sink::Connection;
use crate::config::redact_url;
use crate::sinks::SinkItem;

/// A body HEC accepted whose indexer acknowledgement is outstanding.
pub(super) struct AwaitingAck {
    pub(super) body: Body,
    pub(super) endpoint: usize,
    pub(super) ack_id: u64,
    pub(super) sent: Instant,
    /// `(endpoint, ackId)` of earlier sends of this body that timed out. Their acknowledgement
    /// may still come (a loaded indexer answers late); any one of them completes the body, so a
    /// late ack ends the resending instead of causing another copy.
    pub(super) earlier: Vec<(usize, u64)>,
}

/// How many timed-out sends of one body are still polled for: enough for an indexer a few
/// `ack_timeout`s behind, bounded so a body HEC never acknowledges keeps a fixed size.
const MAX_EARLIER_SENDS: usize = 4;

impl AwaitingAck {
    pub(super) fn ids(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        std::iter::once((self.endpoint, self.ack_id)).chain(self.earlier.iter().copied())
    }
}

/// A group whose bodies were accepted, some of them not yet acknowledged.
pub(super) struct PendingGroup {
    pub(super) items: Vec<SinkItem>,
    pub(super) num_events: usize,
    pub(super) awaiting: Vec<AwaitingAck>,
}

impl Connection {
    /// Polls every endpoint once for the ackIds it holds (one request per endpoint), and sends
    /// again the bodies whose acknowledgement did not come within `ack_timeout` (the receiver
    /// may then index them twice: at least once).
    pub(super) async fn poll_pending(&self, pending: &mut [PendingGroup]) {
        let timeout = self.shared.config.ack_timeout;
        for endpoint in 0..self.shared.config.endpoints.len() {
            let ids: Vec<u64> = pending
                .iter()
                .flat_map(|g| g.awaiting.iter())
                .flat_map(AwaitingAck::ids)
                .filter(|(e, _)| *e == endpoint)
                .map(|(_, id)| id)
                .collect();
            if ids.is_empty() {
                continue;
            }
            let acked = self.poll_acks(endpoint, &ids).await;
            for group in pending.iter_mut() {
                let (indexed, waiting): (Vec<AwaitingAck>, Vec<AwaitingAck>) = std::mem::take(&mut group.awaiting)
                    .into_iter()
                    .partition(|a| a.ids().any(|(e, id)| e == endpoint && acked.contains(&id)));
                group.awaiting = waiting;
                for a in indexed {
                    self.shared.buffers.give(a.body);
                }
            }
        }
        for group in pending.iter_mut() {
            let (expired, waiting): (Vec<AwaitingAck>, Vec<AwaitingAck>) = std::mem::take(&mut group.awaiting)
                .into_iter()
                .partition(|a| a.sent.elapsed() >= timeout);
            group.awaiting = waiting;
            for a in expired {
                tracing::warn!(
                    ack_id = a.ack_id,
                    events = a.body.num_events(),
                    connection = self.index,
                    "HEC never acknowledged a batch; sending it again"
                );
                let telemetry = &self.shared.telemetry;
                telemetry.sink_retries.get_or_create(&self.shared.label).inc();
                let num_events = a.body.num_events() as u64;
                let mut earlier: Vec<(usize, u64)> = a.ids().collect();
                earlier.truncate(MAX_EARLIER_SENDS);
                self.deliver(a.body, earlier, &mut group.awaiting).await;
                // Counted once HEC has the copy (deliver returns when it is accepted or dead-
                // lettered), so the figure is what reached the indexer, not what was planned.
                telemetry.hec_resent_events.inc_by(num_events);
            }
        }
    }

    /// Asks `endpoint` which of `ids` are indexed; failures just mean "not yet".
    async fn poll_acks(&self, endpoint: usize, ids: &[u64]) -> HashSet<u64> {
        let config = &self.shared.config;
        let base = &config.endpoints[endpoint];
        let url = format!("{}/services/collector/ack", base.trim_end_matches('/'));
        let response = self
            .client
            .post(&url)
            .header("Authorization", format!("Splunk {}", config.token.expose()))
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
                tracing::warn!(endpoint = %redact_url(base), status = r.status().as_u16(), "HEC ack poll refused; polling again");
                Default::default()
            }
            Err(e) => {
                tracing::warn!(endpoint = %redact_url(base), error = %e, "HEC ack poll failed; polling again");
                Default::default()
            }
        }
    }
}
