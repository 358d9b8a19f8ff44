//! What an HEC answer means: one pure function from a response to a [`Verdict`], so the send
//! loop only acts on it. Status codes are HEC's own (Splunk's
//! "Format events for HTTP Event Collector" and "HTTP Event Collector REST API" pages define them).

use std::time::Duration;

use serde::Deserialize;

use crate::retry::Verdict;

/// HEC codes that blame an event's content (invalid data format, event field required or blank,
/// invalid data channel for the event, incorrect index): isolate and dead-letter it.
pub const EVENT_REJECTED: [u64; 5] = [6, 7, 12, 13, 15];
/// HEC codes that blame the token or the endpoint's configuration (token disabled, required,
/// invalid authorization or token, data channel missing, ACK disabled): hold and alert.
pub const CONFIG_REJECTED: [u64; 6] = [1, 2, 3, 4, 14, 16];

/// The body of an answer from `/services/collector/event`.
#[derive(Debug, Deserialize, Default)]
pub struct HecResponse {
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub code: Option<u64>,
    #[serde(default, rename = "ackId")]
    pub ack_id: Option<u64>,
}

impl HecResponse {
    /// An unreadable body reads as empty: the status still decides.
    pub fn parse(body: &[u8]) -> HecResponse {
        serde_json::from_slice(body).unwrap_or_default()
    }
}

/// The body of an answer from `/services/collector/ack`.
#[derive(Debug, Deserialize, Default)]
pub struct AckResponse {
    #[serde(default)]
    pub acks: std::collections::HashMap<String, bool>,
}

/// Classifies one answer of `/services/collector/event`. `retry_after` is the answer's
/// `Retry-After` header, in seconds, if it had one.
pub fn classify(status: u16, retry_after: Option<Duration>, body: &HecResponse) -> Verdict {
    let code = body.code.unwrap_or(u64::MAX);
    let said = || match body.code {
        Some(code) => format!("HTTP {status}, HEC code {code}: {}", body.text),
        None => format!("HTTP {status}: {}", body.text),
    };
    match status {
        200 => Verdict::Delivered,
        400 if EVENT_REJECTED.contains(&code) => Verdict::DeadLetter { reason: said() },
        401 | 403 => Verdict::Hold { reason: said() },
        _ if CONFIG_REJECTED.contains(&code) => Verdict::Hold { reason: said() },
        // Busy (503, code 9), server errors, 429 and anything unexpected: HEC or a proxy in
        // front of it is failing, which passes. Retrying loses nothing; dropping would.
        _ => Verdict::Retry {
            after: retry_after,
            reason: said(),
        },
    }
}

/// A request that got no answer (connect, TLS, timeout): another try, maybe elsewhere.
pub fn classify_transport(error: &dyn std::fmt::Display) -> Verdict {
    Verdict::Retry {
        after: None,
        reason: format!("request failed: {error}"),
    }
}

/// `Retry-After` as seconds (HEC and proxies send seconds; an HTTP date is ignored).
pub fn retry_after(value: Option<&str>) -> Option<Duration> {
    value?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: Option<u64>, text: &str) -> HecResponse {
        HecResponse {
            text: text.into(),
            code,
            ack_id: None,
        }
    }

    #[test]
    fn answers_map_to_verdicts() {
        use Verdict::*;
        let kind = |v: Verdict| match v {
            Delivered => "delivered",
            Retry { .. } => "retry",
            DeadLetter { .. } => "dead-letter",
            Hold { .. } => "hold",
        };
        // (status, code, verdict), as HEC answers.
        let table: &[(u16, Option<u64>, &str)] = &[
            (200, Some(0), "delivered"),
            (200, None, "delivered"),
            (400, Some(6), "dead-letter"),  // Invalid data format
            (400, Some(7), "dead-letter"),  // Incorrect index
            (400, Some(12), "dead-letter"), // Event field is required
            (400, Some(13), "dead-letter"), // Event field cannot be blank
            (400, Some(15), "dead-letter"), // Invalid data channel for event
            (400, Some(5), "retry"),        // No data: nothing in the body to blame
            (400, Some(10), "retry"),       // Data channel is missing (a proxy dropped the header)
            (400, Some(11), "retry"),       // Invalid data channel
            (400, Some(14), "hold"),        // ACK is disabled
            (401, Some(2), "hold"),         // Token is required
            (401, Some(3), "hold"),         // Invalid authorization
            (403, Some(1), "hold"),         // Token disabled
            (403, Some(4), "hold"),         // Invalid token
            (403, None, "hold"),            // a proxy refusing us
            (400, Some(16), "hold"),        // Query string authorization is not enabled
            (429, None, "retry"),
            (500, Some(8), "retry"), // Internal server error
            (503, Some(9), "retry"), // Server is busy
            (502, None, "retry"),
            (404, None, "retry"),
        ];
        for &(status, code, want) in table {
            assert_eq!(
                kind(classify(status, None, &body(code, "x"))),
                want,
                "{status} {code:?}"
            );
        }
    }

    #[test]
    fn reasons_name_status_and_code_and_retry_after_is_kept() {
        let v = classify(400, None, &body(Some(6), "Invalid data format"));
        assert_eq!(
            v,
            Verdict::DeadLetter {
                reason: "HTTP 400, HEC code 6: Invalid data format".into()
            }
        );
        let v = classify(503, retry_after(Some(" 7 ")), &body(Some(9), "Server is busy"));
        assert!(matches!(v, Verdict::Retry { after: Some(d), .. } if d == Duration::from_secs(7)));
        assert_eq!(retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert!(
            matches!(classify_transport(&"connection refused"), Verdict::Retry { after: None, reason } if reason.contains("connection refused"))
        );
    }

    #[test]
    fn bodies_that_are_not_json_read_as_empty() {
        let parsed = HecResponse::parse(b"<html>bad gateway</html>");
        assert_eq!(parsed.code, None);
        assert!(matches!(classify(502, None, &parsed), Verdict::Retry { .. }));
    }
}
