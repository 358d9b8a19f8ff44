//! What an export response means for the poller: a [`Verdict`] from the status and headers
//! (a pure function, tested from a table), and how long the rate-limit headers say to wait
//! before the next request even when this one succeeded.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use crate::retry::Verdict;

/// The verdict on one export response. 200 is delivered; 429 and 5xx are passing (with the
/// delay the server named); 401/403 (a cluster key instead of a Cloud key, a revoked key) and
/// other 4xx are refusals only an operator can fix, retried slowly.
pub fn verdict(status: StatusCode, headers: &HeaderMap) -> Verdict {
    match status.as_u16() {
        200 => Verdict::Delivered,
        429 => Verdict::Retry {
            after: retry_after(headers).or_else(|| reset_after(headers)),
            reason: "rate limited (429)".into(),
        },
        401 => Verdict::Hold {
            reason: "the Metrics API refused the credentials (401): api_key and api_secret must be a Cloud API key, not a cluster key".into(),
        },
        403 => Verdict::Hold {
            reason: "the Metrics API refused access (403): the API key's owner needs the MetricsViewer role on these resources".into(),
        },
        408 | 500..=599 => Verdict::Retry {
            after: retry_after(headers),
            reason: format!("the Metrics API answered {status}"),
        },
        _ => Verdict::Hold {
            reason: format!("the Metrics API refused the request ({status}): check the resource ids and metrics"),
        },
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by the Metrics API).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    seconds(headers, "retry-after")
}

/// `RateLimit-Reset` / `X-RateLimit-Reset`: seconds until the window resets. A value larger
/// than a day is taken as a Unix time, as some servers send.
fn reset_after(headers: &HeaderMap) -> Option<Duration> {
    let reset = seconds(headers, "ratelimit-reset").or_else(|| seconds(headers, "x-ratelimit-reset"))?;
    if reset > Duration::from_secs(86_400) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Some(reset.saturating_sub(now))
    } else {
        Some(reset)
    }
}

/// How long to wait before the next request after a successful one: until the reset when the
/// rate-limit headers say no request is left in this window.
pub fn pause_after_success(headers: &HeaderMap) -> Option<Duration> {
    let remaining = seconds(headers, "ratelimit-remaining").or_else(|| seconds(headers, "x-ratelimit-remaining"))?;
    if remaining.is_zero() {
        reset_after(headers)
    } else {
        None
    }
}

fn seconds(headers: &HeaderMap, name: &str) -> Option<Duration> {
    let text = headers.get(name)?.to_str().ok()?.trim();
    // `RateLimit-Remaining: 0` and `Retry-After: 12` are integers; tolerate `12.5`.
    let secs: f64 = text.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn verdicts_by_status() {
        let none = HeaderMap::new();
        assert_eq!(verdict(StatusCode::OK, &none), Verdict::Delivered);
        assert!(matches!(
            verdict(StatusCode::TOO_MANY_REQUESTS, &headers(&[("retry-after", "7")])),
            Verdict::Retry { after: Some(d), .. } if d == Duration::from_secs(7)
        ));
        assert!(matches!(
            verdict(StatusCode::TOO_MANY_REQUESTS, &headers(&[("rateLimit-reset", "30"), ("rateLimit-remaining", "0")])),
            Verdict::Retry { after: Some(d), .. } if d == Duration::from_secs(30)
        ));
        assert!(matches!(
            verdict(StatusCode::TOO_MANY_REQUESTS, &none),
            Verdict::Retry { after: None, .. }
        ));
        assert!(matches!(verdict(StatusCode::BAD_GATEWAY, &none), Verdict::Retry { .. }));
        for status in [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN, StatusCode::BAD_REQUEST] {
            assert!(matches!(verdict(status, &none), Verdict::Hold { .. }), "{status}");
        }
        let Verdict::Hold { reason } = verdict(StatusCode::UNAUTHORIZED, &none) else {
            unreachable!()
        };
        assert!(reason.contains("Cloud API key"), "{reason}");
    }

    #[test]
    fn rate_limit_headers_pause_when_the_window_is_spent() {
        assert_eq!(
            pause_after_success(&headers(&[("ratelimit-remaining", "3"), ("ratelimit-reset", "20")])),
            None
        );
        assert_eq!(
            pause_after_success(&headers(&[("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", "20")])),
            Some(Duration::from_secs(20))
        );
        assert_eq!(pause_after_success(&headers(&[("ratelimit-remaining", "junk")])), None);
        assert_eq!(pause_after_success(&HeaderMap::new()), None);
    }
}
