//! The alert raised while HEC refuses the token or configuration: one incident for the sink,
//! whichever endpoint, fired once per outage and resolved when HEC accepts again. Endpoint URLs
//! are shown without any `user:password@`.

use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::mpsc;

use crate::config::redact_url;
use crate::event::{Alert, AlertStatus, now_us};

pub const REFUSED_RULE_ID: &str = "auditflow-hec-refused";

/// One sink's refused-token incident: since when it is firing (µs; 0 when it is not), and
/// where its alert goes (the pipeline publishes it to every sink).
#[derive(Default)]
pub struct Outage {
    since_us: AtomicI64,
    alerts: Option<mpsc::Sender<Alert>>,
}

impl Outage {
    pub fn alerting(alerts: mpsc::Sender<Alert>) -> Outage {
        Outage {
            since_us: AtomicI64::new(0),
            alerts: Some(alerts),
        }
    }

    /// `endpoint` refused the token: raises the alert unless the outage already began.
    /// True if this call began it.
    pub fn begin(&self, endpoint: &str, status: u16, code: u64, text: &str) -> bool {
        let now = now_us();
        if self
            .since_us
            .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return false;
        }
        self.publish(firing(endpoint, now, status, code, text));
        true
    }

    /// `endpoint` accepted data: resolves the outage if there was one. True if this call ended it.
    pub fn end(&self, endpoint: &str) -> bool {
        let since = self.since_us.swap(0, Ordering::SeqCst);
        if since == 0 {
            return false;
        }
        self.publish(resolved(endpoint, since, now_us()));
        true
    }

    fn publish(&self, alert: Alert) {
        if let Some(tx) = &self.alerts
            && tx.try_send(alert).is_err()
        {
            tracing::warn!("the HEC refused-token alert could not be queued");
        }
    }
}

/// The firing alert: `endpoint` answered `status` and HEC `code` (`u64::MAX`: none) with `text`.
pub fn firing(endpoint: &str, now_us: i64, status: u16, code: u64, text: &str) -> Alert {
    let endpoint = redact_url(endpoint);
    let code = if code == u64::MAX {
        "none".to_owned()
    } else {
        code.to_string()
    };
    let summary = format!(
        "Splunk HEC {endpoint} refused the token or configuration (HTTP {status}, code {code}: {text}); auditflow holds the data and has paused consumption"
    );
    alert(&endpoint, now_us, None, summary)
}

/// The resolved alert of the outage that began at `since_us`.
pub fn resolved(endpoint: &str, since_us: i64, now_us: i64) -> Alert {
    let endpoint = redact_url(endpoint);
    let summary = format!("Splunk HEC {endpoint} accepts data again; held data is being delivered");
    alert(&endpoint, since_us, Some(now_us), summary)
}

/// The alert raised while HEC refuses the token: one incident for the sink, whichever endpoint.
fn alert(endpoint: &str, started_at_us: i64, resolved_at_us: Option<i64>, summary: String) -> Alert {
    Alert {
        id: crate::rules::alert::alert_id(REFUSED_RULE_ID, &["splunk_hec".to_owned()]),
        rule_id: REFUSED_RULE_ID.to_owned(),
        severity: "critical".into(),
        status: if resolved_at_us.is_some() {
            AlertStatus::Resolved
        } else {
            AlertStatus::Firing
        },
        started_at_us,
        resolved_at_us,
        time_us: resolved_at_us.unwrap_or(started_at_us),
        labels: [
            ("sink".to_owned(), "splunk_hec".to_owned()),
            ("endpoint".to_owned(), endpoint.to_owned()),
        ]
        .into(),
        value: 1.0,
        threshold: None,
        summary,
        description: Some(
            "HEC answered 401/403 or a token/configuration code (1-4, 14, 16). Nothing is lost: events are held, offsets are not committed, and delivery resumes by itself once the token or HEC configuration is fixed.".into(),
        ),
        runbook: Some("Check the HEC token in [sinks.splunk_hec] token (and that it is enabled in Splunk), then watch auditflow_hec_refused drop to 0.".into()),
        evidence: Vec::new(),
    }
}
