//! [`Raw`]: the bytes of one record, shared with the other records of its poll.

use std::fmt;
use std::ops::{Deref, Range};

use bytes::Bytes;

/// The bytes of one record: a range of a chunk that the records of one poll share.
///
/// The source copies a poll's payloads into one allocation (one copy, as before, but one
/// `malloc` per poll instead of one per record), and each record holds its range. The window
/// stores `raw` as string views straight over the chunk (see `event::arrow`), so an event's
/// ~1 KB is neither copied into the window nor kept twice while the sinks hold the row.
///
/// The chunk lives while any range of it does: the window keeps a poll's chunk for its
/// retention, including the bytes of that poll's duplicates and dead letters.
#[derive(Clone, Default)]
pub struct Raw {
    chunk: Bytes,
    start: usize,
    len: usize,
}

impl Raw {
    /// The range `range` of `chunk`.
    ///
    /// # Panics
    /// If `range` is not within `chunk` (the source builds both from one set of lengths).
    pub fn new(chunk: Bytes, range: Range<usize>) -> Raw {
        assert!(
            range.start <= range.end && range.end <= chunk.len(),
            "range {range:?} within a chunk of {} bytes",
            chunk.len()
        );
        Raw {
            chunk,
            start: range.start,
            len: range.end - range.start,
        }
    }

    /// The whole chunk this range is part of, and where in it the range starts.
    pub fn chunk(&self) -> (&Bytes, usize) {
        (&self.chunk, self.start)
    }

    /// A sub-range (relative to this one), sharing the chunk: the record without its Schema
    /// Registry framing.
    pub fn slice(&self, range: Range<usize>) -> Raw {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "sub-range {range:?} within {} bytes",
            self.len
        );
        Raw {
            chunk: self.chunk.clone(),
            start: self.start + range.start,
            len: range.end - range.start,
        }
    }
}

impl Deref for Raw {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.chunk[self.start..self.start + self.len]
    }
}

impl AsRef<[u8]> for Raw {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for Raw {
    fn eq(&self, other: &Raw) -> bool {
        **self == **other
    }
}

impl Eq for Raw {}

impl fmt::Debug for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&bytes::Bytes::copy_from_slice(self), f)
    }
}

/// A chunk of its own (records built outside a poll: tests, replays, other sources).
impl From<Vec<u8>> for Raw {
    fn from(bytes: Vec<u8>) -> Raw {
        let len = bytes.len();
        Raw {
            chunk: Bytes::from(bytes),
            start: 0,
            len,
        }
    }
}

impl From<&[u8]> for Raw {
    fn from(bytes: &[u8]) -> Raw {
        Raw::from(bytes.to_vec())
    }
}

impl From<&str> for Raw {
    fn from(text: &str) -> Raw {
        Raw::from(text.as_bytes())
    }
}

/// Copies records' payloads into one chunk per poll.
#[derive(Debug, Default)]
pub struct RawChunker {
    buffer: Vec<u8>,
    ranges: Vec<Range<usize>>,
}

impl RawChunker {
    /// A chunker for payloads of about `bytes` bytes in all (one allocation when exact).
    pub fn with_capacity(bytes: usize, records: usize) -> RawChunker {
        RawChunker {
            buffer: Vec::with_capacity(bytes),
            ranges: Vec::with_capacity(records),
        }
    }

    /// Copies `payload` in; its [`Raw`] is the one at the same index in [`RawChunker::finish`].
    pub fn push(&mut self, payload: &[u8]) {
        let start = self.buffer.len();
        self.buffer.extend_from_slice(payload);
        self.ranges.push(start..self.buffer.len());
    }

    /// Every payload pushed, in order, sharing one chunk.
    pub fn finish(self) -> Vec<Raw> {
        let chunk = Bytes::from(self.buffer);
        self.ranges.into_iter().map(|r| Raw::new(chunk.clone(), r)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_share_one_chunk_and_read_back_whole() {
        let mut chunker = RawChunker::with_capacity(8, 3);
        for p in [&b"abc"[..], b"", b"defgh"] {
            chunker.push(p);
        }
        let raws = chunker.finish();
        assert_eq!(
            raws.iter().map(|r| &r[..]).collect::<Vec<_>>(),
            [&b"abc"[..], b"", b"defgh"]
        );
        let (first, _) = raws[0].chunk();
        let (last, start) = raws[2].chunk();
        assert_eq!(first.as_ptr(), last.as_ptr(), "one chunk");
        assert_eq!(start, 3);
        assert_eq!(raws[2].slice(1..4), Raw::from("efg"));
    }

    #[test]
    #[should_panic(expected = "within")]
    fn a_range_past_its_chunk_is_refused() {
        Raw::new(Bytes::from_static(b"abc"), 1..4);
    }
}
