//! Gzip for HEC bodies, with the compressors and output buffers kept from body to body.
//!
//! A fresh compressor allocates and clears ~300 KB of state (window, hash chains) per body,
//! and a fresh output buffer is faulted in page by page as it fills: in a drain profile,
//! making the encoder and its first pages cost about a fifth of what compressing did. A kept
//! compressor is reset (its tables cleared, nothing allocated) and a kept buffer is already
//! mapped.

use std::sync::Mutex;

use flate2::{Compress, CompressError, Compression, FlushCompress, Status};

/// Level 1: the cheapest setting that still shrinks audit JSON ~10x.
fn level() -> Compression {
    Compression::fast()
}

/// `bytes` gzipped with a compressor of its own (tests, and the sink when its blocking pool
/// cannot run the kept one).
pub fn gzip(bytes: &[u8]) -> Result<Vec<u8>, CompressError> {
    let mut out = Vec::new();
    Gzip::default().compress_into(bytes, &mut out)?;
    Ok(out)
}

/// A gzip compressor (gzip header and trailer included) reused across bodies.
pub struct Gzip {
    compress: Compress,
}

impl Default for Gzip {
    fn default() -> Gzip {
        Gzip {
            // 15: zlib's largest window, as `GzEncoder` uses.
            compress: Compress::new_gzip(level(), 15),
        }
    }
}

impl std::fmt::Debug for Gzip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gzip")
    }
}

impl Gzip {
    /// `bytes` as one gzip member, written into `out` (cleared first; it grows as needed).
    /// Only a misused stream fails, and this one is reset first; a compressor that failed is
    /// not to be used again.
    pub fn compress_into(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), CompressError> {
        self.compress.reset();
        out.clear();
        out.reserve(bytes.len() / 6 + 64);
        loop {
            let read = usize::try_from(self.compress.total_in())
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            match self.compress.compress_vec(&bytes[read..], out, FlushCompress::Finish)? {
                Status::StreamEnd => return Ok(()),
                // Out of room in `out`: more, and go on where it stopped.
                Status::Ok | Status::BufError => out.reserve(out.capacity().max(4096)),
            }
        }
    }
}

/// Compressors and output buffers kept for the next bodies; at most `keep` of each wait here,
/// so what is held is bounded by the sink's concurrency.
#[derive(Debug)]
pub struct GzipPool {
    compressors: Mutex<Vec<Gzip>>,
    buffers: Mutex<Vec<Vec<u8>>>,
    keep: usize,
}

impl GzipPool {
    pub fn new(keep: usize) -> GzipPool {
        GzipPool {
            compressors: Mutex::new(Vec::with_capacity(keep)),
            buffers: Mutex::new(Vec::with_capacity(keep)),
            keep,
        }
    }

    /// A compressor and an output buffer: kept ones when there are.
    pub fn take(&self) -> (Gzip, Vec<u8>) {
        let gzip = self
            .compressors
            .lock()
            .ok()
            .and_then(|mut c| c.pop())
            .unwrap_or_default();
        let out = self.buffers.lock().ok().and_then(|mut b| b.pop()).unwrap_or_default();
        (gzip, out)
    }

    /// Keeps a compressor for the next body.
    pub fn give_compressor(&self, gzip: Gzip) {
        if let Ok(mut kept) = self.compressors.lock()
            && kept.len() < self.keep
        {
            kept.push(gzip);
        }
    }

    /// Keeps the buffer of a sent body, unless the HTTP client still holds it.
    pub fn give_body(&self, body: bytes::Bytes) {
        let Ok(buffer) = body.try_into_mut() else {
            return;
        };
        if let Ok(mut kept) = self.buffers.lock()
            && kept.len() < self.keep
        {
            kept.push(buffer.into());
        }
    }

    #[cfg(test)]
    fn kept(&self) -> (usize, usize) {
        (
            self.compressors.lock().map_or(0, |c| c.len()),
            self.buffers.lock().map_or(0, |b| b.len()),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
        out
    }

    /// One compressor and one buffer, reused for bodies of different sizes (the second
    /// larger than the buffer the first left), each a whole gzip member that reads back
    /// exactly, and smaller than its input.
    #[test]
    fn a_reused_compressor_writes_whole_members() {
        let pool = GzipPool::new(1);
        let small = br#"{"event":{"id":"a"},"sourcetype":"confluent:audit"}"#.repeat(20);
        // Incompressible-ish: output larger than the initial reservation, so `out` must grow.
        let mut noisy = Vec::new();
        let mut x: u32 = 12345;
        for _ in 0..300_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            noisy.push((x >> 16) as u8);
        }
        for input in [&small[..], &noisy[..], &small[..], b""] {
            let (mut gz, mut out) = pool.take();
            gz.compress_into(input, &mut out).unwrap();
            assert_eq!(&out[..2], [0x1f, 0x8b], "a gzip header");
            assert_eq!(gunzip(&out), input);
            assert_eq!(gunzip(&out), gunzip(&gzip(input).unwrap()));
            if input == &small[..] {
                assert!(out.len() < input.len() / 4, "{} bytes from {}", out.len(), input.len());
            }
            pool.give_compressor(gz);
            pool.give_body(bytes::Bytes::from(out));
            assert_eq!(pool.kept(), (1, 1));
        }
    }

    /// A body the HTTP client still holds is not taken back, and no more than `keep` are kept.
    #[test]
    fn shared_bodies_are_not_kept_and_the_pool_is_bounded() {
        let pool = GzipPool::new(1);
        let body = bytes::Bytes::from(vec![1u8; 100]);
        let held = body.clone();
        pool.give_body(body);
        assert_eq!(pool.kept(), (0, 0));
        drop(held);
        pool.give_body(bytes::Bytes::from(vec![1u8; 100]));
        pool.give_body(bytes::Bytes::from(vec![2u8; 100]));
        pool.give_compressor(Gzip::default());
        pool.give_compressor(Gzip::default());
        assert_eq!(pool.kept(), (1, 1));
        let (_, out) = pool.take();
        assert!(out.capacity() >= 100, "the kept buffer comes back");
    }
}
