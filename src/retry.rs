//! Whether and when to try again: the one vocabulary every output uses.
//!
//! Each sink turns a receiver's answer into a [`Verdict`] with a pure function of that answer
//! (HEC: `sinks::splunk_hec::response`, OTLP: `sinks::otlp::response`), unit-tested from tables
//! of responses; its send loop then only acts on the verdict. Waiting is [`backoff`].

use std::time::Duration;

/// What to do with a batch after one attempt to deliver it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The receiver took it (and, with acknowledgements, holds it durably or will say so).
    Delivered,
    /// A passing failure (busy, overloaded, unreachable): try again, after `after` when the
    /// receiver named a delay, else after the backoff.
    Retry { after: Option<Duration>, reason: String },
    /// The receiver refuses these events for their content: retrying cannot help, so they go to
    /// the dead-letter topic with the reason and the batch is done.
    DeadLetter { reason: String },
    /// The receiver refuses us (token, configuration): nothing is dropped; the batch is held and
    /// retried slowly, an alert is raised, and consumption pauses behind it until it is fixed.
    Hold { reason: String },
}

impl Verdict {
    /// The same verdict, its reason followed by `context` (`from https://...`).
    pub fn context(self, context: &str) -> Verdict {
        let with = |reason: String| format!("{reason} ({context})");
        match self {
            Verdict::Delivered => Verdict::Delivered,
            Verdict::Retry { after, reason } => Verdict::Retry {
                after,
                reason: with(reason),
            },
            Verdict::DeadLetter { reason } => Verdict::DeadLetter { reason: with(reason) },
            Verdict::Hold { reason } => Verdict::Hold { reason: with(reason) },
        }
    }
}

/// Retry delays are capped at this while a receiver is failing…
pub const RETRY_CAP: Duration = Duration::from_secs(10);
/// …and at this while it refuses us, which only an operator can fix.
pub const HOLD_CAP: Duration = Duration::from_secs(30);
/// The longest delay a receiver may ask for (`Retry-After`, gRPC `RetryInfo`).
pub const MAX_NAMED_DELAY: Duration = Duration::from_secs(60);

/// Exponential backoff with jitter: 100 ms doubling to `cap`, each wait between half and all of
/// that, so senders that failed together do not retry together.
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1u32 << attempt.min(16));
    let ceiling = base.min(cap);
    let jitter = rand::random_range(0.5..=1.0);
    ceiling.mul_f64(jitter)
}

/// How long to wait after `attempt` failed with `verdict` (none for a final verdict).
pub fn wait_after(verdict: &Verdict, attempt: u32) -> Option<Duration> {
    match verdict {
        // The receiver's delay is honoured (up to a minute), never shortened below the backoff:
        // a receiver that says "1 s" to every sender must not get them all back in 1 s forever.
        Verdict::Retry { after: Some(d), .. } => Some((*d).min(MAX_NAMED_DELAY).max(backoff(attempt, RETRY_CAP))),
        Verdict::Retry { after: None, .. } => Some(backoff(attempt, RETRY_CAP)),
        Verdict::Hold { .. } => Some(backoff(attempt, HOLD_CAP)),
        Verdict::Delivered | Verdict::DeadLetter { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        for attempt in 0..40 {
            let d = backoff(attempt, RETRY_CAP);
            let ceiling = Duration::from_millis(100)
                .saturating_mul(1 << attempt.min(16))
                .min(RETRY_CAP);
            assert!(d <= ceiling && d >= ceiling / 2, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn a_named_delay_is_honoured_up_to_a_minute_and_never_below_the_backoff() {
        let retry = |after| Verdict::Retry {
            after,
            reason: "busy".into(),
        };
        assert_eq!(
            wait_after(&retry(Some(Duration::from_secs(3))), 0),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            wait_after(&retry(Some(Duration::from_secs(3600))), 0),
            Some(MAX_NAMED_DELAY)
        );
        assert!(wait_after(&retry(Some(Duration::ZERO)), 20).unwrap() >= RETRY_CAP / 2);
        assert!(wait_after(&retry(None), 10).unwrap() <= RETRY_CAP);
        assert!(wait_after(&Verdict::Hold { reason: "token".into() }, 10).unwrap() <= HOLD_CAP);
        assert!(wait_after(&Verdict::Hold { reason: "token".into() }, 10).unwrap() > RETRY_CAP / 2);
        assert_eq!(wait_after(&Verdict::Delivered, 3), None);
        assert_eq!(wait_after(&Verdict::DeadLetter { reason: "bad".into() }, 3), None);
    }
}
