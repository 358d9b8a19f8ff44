//! The threads that decode part of a large poll's audit records beside the processor's own.
//!
//! Each helper is one thread that lives as long as the processor, started on first use, with a
//! decoder of its own. It had been a scoped thread started per poll: creating and ending a
//! thread (its stack mapped and guarded, a fresh allocator cache that the rows it built were
//! then freed into from another thread) cost about a hundredth of the drain's CPU, at ~100
//! polls a second. A part travels to the thread as shared handles on the poll's payload chunk,
//! not copies of the bytes.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc;

use crate::decode::DecodeError;
use crate::decode::audit::AuditDecoder;
use crate::enrich::directory::Directory;
use crate::enrich::ownership::{Ownership, set_cross_namespace};
use crate::event::{AuditRow, Raw};

/// A poll's audit records decoded and enriched: the rows in record order, and the records
/// that failed, by their position among the poll's audit records (ascending).
pub(super) struct DecodedAudit {
    pub(super) rows: Vec<AuditRow>,
    pub(super) failed: Vec<(usize, DecodeError)>,
}

/// What a row is enriched from; shared with the helpers, which read it while the processor
/// decodes its own part.
#[derive(Clone)]
pub(super) struct Enrichment {
    pub(super) ownership: Arc<Ownership>,
    pub(super) directory: Arc<Directory>,
}

/// Decodes and enriches `payloads` (`None`: a record without a value), the first of which is
/// the poll's audit record number `first`, into rows in a vector made for `room` rows.
pub(super) fn decode_part<'a>(
    decoder: &mut AuditDecoder,
    enrichment: &Enrichment,
    payloads: impl Iterator<Item = Option<&'a Raw>>,
    first: usize,
    room: usize,
) -> DecodedAudit {
    let mut out = DecodedAudit {
        rows: Vec::with_capacity(room),
        failed: Vec::new(),
    };
    for (at, payload) in (first..).zip(payloads) {
        let Some(payload) = payload else {
            out.failed.push((at, DecodeError::Empty));
            continue;
        };
        match decoder.decode_shared(payload) {
            Ok(mut row) => {
                enrichment.ownership.enrich_audit(&mut row);
                if enrichment.directory.enrich_audit(&mut row) {
                    set_cross_namespace(&mut row);
                }
                out.rows.push(row);
            }
            Err(e) => out.failed.push((at, e)),
        }
    }
    out
}

/// One part of a poll for a helper.
pub(super) struct Part {
    pub(super) payloads: Vec<Option<Raw>>,
    pub(super) first: usize,
    pub(super) enrichment: Enrichment,
}

type Outcome = std::thread::Result<DecodedAudit>;

/// One helper thread, or the decoder it will take once it is first needed.
pub(super) struct DecodeHelper {
    state: State,
}

enum State {
    NotStarted(AuditDecoder),
    Running {
        parts: mpsc::Sender<Part>,
        decoded: mpsc::Receiver<Outcome>,
    },
    /// The thread could not be started: the processor decodes every part itself.
    Unavailable,
}

impl DecodeHelper {
    pub(super) fn new(decoder: AuditDecoder) -> DecodeHelper {
        DecodeHelper {
            state: State::NotStarted(decoder),
        }
    }

    /// Hands `part` to the thread (starting it if need be); gives it back when there is no
    /// thread, for the caller to decode.
    pub(super) fn start(&mut self, part: Part) -> Result<(), Part> {
        self.state = match std::mem::replace(&mut self.state, State::Unavailable) {
            State::NotStarted(decoder) => spawn(decoder).unwrap_or_else(|e| {
                tracing::debug!(error = %e, "no decode thread; decoding in line");
                State::Unavailable
            }),
            started => started,
        };
        match &self.state {
            State::Running { parts, .. } => parts.send(part).map_err(|mpsc::SendError(part)| part),
            _ => Err(part),
        }
    }

    /// The part handed over last, decoded. A panic while decoding it resumes here, as the
    /// scoped thread's did when joined.
    pub(super) fn finish(&mut self) -> DecodedAudit {
        let State::Running { decoded, .. } = &self.state else {
            panic!("finishing a decode part that no helper thread started");
        };
        match decoded.recv() {
            Ok(Ok(rows)) => rows,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            // The thread catches its panics, so it ends only when `parts` is dropped.
            Err(mpsc::RecvError) => panic!("the decode helper thread ended with a part unanswered"),
        }
    }
}

fn spawn(mut decoder: AuditDecoder) -> std::io::Result<State> {
    let (parts, queue) = mpsc::channel::<Part>();
    let (answer, decoded) = mpsc::channel::<Outcome>();
    std::thread::Builder::new().name("decode".into()).spawn(move || {
        for part in queue {
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let payloads = part.payloads.iter().map(Option::as_ref);
                decode_part(
                    &mut decoder,
                    &part.enrichment,
                    payloads,
                    part.first,
                    part.payloads.len(),
                )
            }));
            if answer.send(outcome).is_err() {
                return;
            }
        }
    })?;
    Ok(State::Running { parts, decoded })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DENIED: &str =
        include_str!("../../tests/fixtures/samples/audit/cloud-authorization-denied-cross-namespace.json");

    fn event(id: &str) -> Raw {
        Raw::from(DENIED.replace("e51a8c3d-7b90-4f2e-8d16-3a9c5b7e1f02", id).into_bytes())
    }

    /// A helper's part comes back as the same rows, failures and positions as decoding it in
    /// line, and the thread takes one part after another.
    #[test]
    fn a_helper_decodes_as_in_line() {
        let enrichment = Enrichment {
            ownership: Arc::new(Ownership::default()),
            directory: Arc::new(Directory::default()),
        };
        let decoder = AuditDecoder::new(true, 1 << 20);
        let mut helper = DecodeHelper::new(decoder.clone());
        let mut in_line = decoder;
        for round in 0..3 {
            let payloads = vec![
                Some(event(&format!("a-{round}"))),
                None,
                Some(Raw::from(&b"{not json"[..])),
                Some(event(&format!("b-{round}"))),
            ];
            let expected = decode_part(&mut in_line, &enrichment, payloads.iter().map(Option::as_ref), 10, 4);
            let part = Part {
                payloads,
                first: 10,
                enrichment: enrichment.clone(),
            };
            assert!(helper.start(part).is_ok(), "the thread starts");
            let got = helper.finish();
            let ids = |d: &DecodedAudit| d.rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
            assert_eq!(ids(&got), ids(&expected));
            assert_eq!(ids(&got), [format!("a-{round}"), format!("b-{round}")]);
            let at = |d: &DecodedAudit| d.failed.iter().map(|(at, e)| (*at, e.class())).collect::<Vec<_>>();
            assert_eq!(at(&got), at(&expected));
            assert_eq!(at(&got).iter().map(|(at, _)| *at).collect::<Vec<_>>(), [11, 12]);
        }
    }
}
