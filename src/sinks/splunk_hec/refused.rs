//! The alert raised while HEC refuses the token or configuration: one incident for the sink,
//! whichever endpoint, fired once per outage and resolved when HEC accepts again. Endpoint URLs
//! are shown without any `user:password@`.

use crate::config::redact_url;
use crate::event::{Alert, AlertStatus};

pub const REFUSED_RULE_ID: &str = "auditflow-hec-refused";

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
