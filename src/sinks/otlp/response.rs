//! What an OTLP answer means, as the OTLP specification's "Failures" sections say: one pure
//! function per transport from a response to a [`Verdict`].

use std::time::Duration;

use tonic::Code;

use crate::retry::Verdict;

/// A gRPC status. OTLP/gRPC names UNAVAILABLE, RESOURCE_EXHAUSTED (with `RetryInfo`), ABORTED,
/// CANCELLED, DEADLINE_EXCEEDED, OUT_OF_RANGE and DATA_LOSS as retryable; UNKNOWN is a
/// transport that broke mid-call, retried too. Anything else refuses this request for what it
/// is (INVALID_ARGUMENT, UNIMPLEMENTED, ...), and retrying cannot help.
pub fn classify_grpc(code: Code, message: &str, retry_after: Option<Duration>) -> Verdict {
    let reason = format!("gRPC {code:?}: {message}");
    match code {
        Code::Ok => Verdict::Delivered,
        Code::Unavailable
        | Code::ResourceExhausted
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Cancelled
        | Code::OutOfRange
        | Code::DataLoss
        | Code::Unknown => Verdict::Retry {
            after: retry_after,
            reason,
        },
        // A collector that refuses our credentials: hold, as with HEC's token, not drop.
        Code::Unauthenticated | Code::PermissionDenied => Verdict::Hold { reason },
        _ => Verdict::DeadLetter { reason },
    }
}

/// An HTTP status of OTLP/HTTP. 429, 502, 503 and 504 are retryable by the specification; other
/// 5xx are treated the same (a failing collector is no reason to drop data); 401 and 403 refuse
/// our credentials (hold); other 4xx mean this request will never be taken.
pub fn classify_http(status: u16, retry_after: Option<Duration>, body: &str) -> Verdict {
    let shown: String = body.chars().filter(|c| !c.is_control()).take(200).collect();
    let reason = format!("HTTP {status}: {shown}");
    match status {
        200..=299 => Verdict::Delivered,
        429 | 500..=599 => Verdict::Retry {
            after: retry_after,
            reason,
        },
        401 | 403 => Verdict::Hold { reason },
        _ => Verdict::DeadLetter { reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(v: &Verdict) -> &'static str {
        match v {
            Verdict::Delivered => "delivered",
            Verdict::Retry { .. } => "retry",
            Verdict::DeadLetter { .. } => "dead-letter",
            Verdict::Hold { .. } => "hold",
        }
    }

    #[test]
    fn grpc_codes_map_to_verdicts() {
        let table = [
            (Code::Ok, "delivered"),
            (Code::Unavailable, "retry"),
            (Code::ResourceExhausted, "retry"),
            (Code::DeadlineExceeded, "retry"),
            (Code::Aborted, "retry"),
            (Code::Cancelled, "retry"),
            (Code::OutOfRange, "retry"),
            (Code::DataLoss, "retry"),
            (Code::Unknown, "retry"),
            (Code::Unauthenticated, "hold"),
            (Code::PermissionDenied, "hold"),
            (Code::InvalidArgument, "dead-letter"),
            (Code::Unimplemented, "dead-letter"),
            (Code::NotFound, "dead-letter"),
            (Code::FailedPrecondition, "dead-letter"),
            (Code::Internal, "dead-letter"),
        ];
        for (code, want) in table {
            assert_eq!(kind(&classify_grpc(code, "m", None)), want, "{code:?}");
        }
        let v = classify_grpc(Code::ResourceExhausted, "slow down", Some(Duration::from_secs(2)));
        assert_eq!(
            v,
            Verdict::Retry {
                after: Some(Duration::from_secs(2)),
                reason: "gRPC ResourceExhausted: slow down".into()
            }
        );
    }

    #[test]
    fn http_statuses_map_to_verdicts() {
        let table = [
            (200, "delivered"),
            (204, "delivered"),
            (400, "dead-letter"),
            (404, "dead-letter"),
            (413, "dead-letter"),
            (401, "hold"),
            (403, "hold"),
            (429, "retry"),
            (500, "retry"),
            (502, "retry"),
            (503, "retry"),
            (504, "retry"),
        ];
        for (status, want) in table {
            assert_eq!(kind(&classify_http(status, None, "")), want, "{status}");
        }
        let v = classify_http(400, None, "bad\nrequest");
        assert_eq!(
            v,
            Verdict::DeadLetter {
                reason: "HTTP 400: badrequest".into()
            }
        );
    }
}
