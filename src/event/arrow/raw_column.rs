//! The `raw` column: string views over the rows' shared chunks, or plain strings.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, StringBuilder, StringViewBuilder};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::DataType;

use crate::event::AuditRow;

/// The chunks worth keeping whole for `raw` views: those whose rows use at least half of their
/// bytes. A poll's chunk also holds the bytes of its duplicates and dead letters, which no row
/// counts; viewing a chunk of mostly such bytes (a poll of junk and one good event) would keep
/// them for the window's retention, unbounded by its memory cap. Rows of any other chunk are
/// copied, so while a poll's rows are in the window it keeps at most twice the bytes it counts.
/// A chunk lives until the last of its rows is evicted: rows of one poll many minutes apart in
/// event time (a backlog read with live events) keep it for longer than the older rows count.
#[derive(Debug, Default)]
pub struct DenseChunks(std::collections::HashSet<(usize, usize), foldhash::fast::RandomState>);

impl DenseChunks {
    pub fn of<'r>(rows: impl Iterator<Item = &'r AuditRow>) -> DenseChunks {
        let mut used: HashMap<(usize, usize), usize, _> = HashMap::with_hasher(foldhash::fast::RandomState::default());
        // A poll's rows come together: a run of rows of one chunk is added up before hashing.
        let mut run: Option<((usize, usize), usize)> = None;
        for r in rows {
            let address = chunk_address(r.raw.chunk().0);
            match &mut run {
                Some((a, bytes)) if *a == address => *bytes += r.raw.len(),
                _ => {
                    if let Some((a, bytes)) = run.replace((address, r.raw.len())) {
                        *used.entry(a).or_default() += bytes;
                    }
                }
            }
        }
        if let Some((a, bytes)) = run {
            *used.entry(a).or_default() += bytes;
        }
        DenseChunks(
            used.into_iter()
                .filter(|&((_, len), used)| used.saturating_mul(2) >= len)
                .map(|(address, _)| address)
                .collect(),
        )
    }

    fn contains(&self, chunk: &bytes::Bytes) -> bool {
        self.0.contains(&chunk_address(chunk))
    }
}

/// A chunk by its address and length: two live chunks with bytes cannot share both.
fn chunk_address(chunk: &bytes::Bytes) -> (usize, usize) {
    (chunk.as_ptr() as usize, chunk.len())
}

/// `raw`: string views straight over the rows' shared chunks (the window's form: no byte is
/// copied, see [`super::Raw`]), or plain strings sized from the byte lengths.
pub(super) fn raw_column(rows: &[&AuditRow], data_type: &DataType, dense: &DenseChunks) -> ArrayRef {
    if data_type == &DataType::Utf8View {
        return raw_views(rows, dense);
    }
    let bytes: usize = rows.iter().map(|r| r.raw.len()).sum();
    let mut b = StringBuilder::with_capacity(rows.len(), bytes);
    for r in rows {
        b.append_option(std::str::from_utf8(&r.raw).ok());
    }
    Arc::new(b.finish())
}

/// Each chunk that rows share (a Kafka poll's) becomes one block of the array, and each of its
/// rows a view of its range: checked as UTF-8 once, as a plain string would be, but not copied.
/// A row alone in its chunk (a record built outside a poll, or a poll of one) is copied instead,
/// so the array does not carry a block per row.
fn raw_views(rows: &[&AuditRow], dense: &DenseChunks) -> ArrayRef {
    type Address = (usize, usize);
    let mut b = StringViewBuilder::with_capacity(rows.len());
    // Each chunk's block, or `None` for a chunk whose rows are copied.
    let mut blocks: HashMap<Address, Option<u32>, _> = HashMap::with_hasher(foldhash::fast::RandomState::default());
    // A poll's rows come together: the last chunk is checked before hashing.
    let mut last: Option<(Address, Option<u32>)> = None;
    let mut block_of = |r: &AuditRow, b: &mut StringViewBuilder| -> Option<u32> {
        let (chunk, _) = r.raw.chunk();
        if chunk.len() == r.raw.len() {
            return None; // alone in its chunk
        }
        let address = chunk_address(chunk);
        if let Some((a, block)) = last
            && a == address
        {
            return block;
        }
        let block = *blocks.entry(address).or_insert_with(|| {
            (chunk.len() < u32::MAX as usize && dense.contains(chunk))
                .then(|| b.append_block(Buffer::from(chunk.clone())))
        });
        last = Some((address, block));
        block
    };
    // Blocks first: adding one closes the block that copied rows are being written to.
    for r in rows {
        block_of(r, &mut b);
    }
    for r in rows {
        let (_, start) = r.raw.chunk();
        let viewed = match (block_of(r, &mut b), u32::try_from(start), u32::try_from(r.raw.len())) {
            (Some(block), Ok(start), Ok(len)) => b.try_append_view(block, start, len).is_ok(),
            _ => false,
        };
        if !viewed {
            // Copied (alone in its chunk, or its chunk mostly bytes no row holds), or not UTF-8
            // (the decoder refuses such records).
            b.append_option(std::str::from_utf8(&r.raw).ok());
        }
    }
    Arc::new(b.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A poll's rows are views of its chunk; rows alone in their chunk are copied into one
    /// block, not given a block each; every row reads back whole, in order.
    #[test]
    fn raw_views_share_poll_chunks_and_copy_lone_rows() {
        use datafusion::arrow::array::AsArray;
        let mut poll = crate::event::RawChunker::with_capacity(0, 3);
        // Longer than 12 bytes: shorter strings live inside their views.
        for i in 0..3 {
            poll.push(format!("{{\"poll\":{i},\"pad\":\"{}\"}}", "x".repeat(20)).as_bytes());
        }
        let mut polled = poll.finish().into_iter();
        let lone =
            |i: usize| crate::event::Raw::from(format!("{{\"lone\":{i},\"pad\":\"{}\"}}", "y".repeat(20)).into_bytes());
        let raws = [
            lone(0),
            polled.next().unwrap(),
            lone(1),
            polled.next().unwrap(),
            lone(2),
            polled.next().unwrap(),
        ];
        let chunk = raws[1].chunk().0.as_ptr();
        let rows: Vec<AuditRow> = raws
            .iter()
            .map(|raw| AuditRow {
                raw: raw.clone(),
                ..Default::default()
            })
            .collect();
        let refs: Vec<&AuditRow> = rows.iter().collect();
        let array = raw_views(&refs, &DenseChunks::of(rows.iter()));
        let views = array.as_string_view();
        let read: Vec<&str> = views.iter().map(Option::unwrap).collect();
        let expected: Vec<String> = raws.iter().map(|r| String::from_utf8(r.to_vec()).unwrap()).collect();
        assert_eq!(read, expected);
        let blocks: Vec<*const u8> = views.data_buffers().iter().map(|b| b.as_ptr()).collect();
        assert_eq!(blocks.len(), 2, "the poll's chunk and one block of copies: {blocks:?}");
        assert_eq!(blocks[0], chunk, "the poll's chunk itself, not a copy");
    }

    /// A chunk mostly of bytes no row holds (a poll of dead letters and one good event) is not
    /// kept for the window: its row is copied. A chunk its rows fill is viewed.
    #[test]
    fn a_chunk_of_mostly_unheld_bytes_is_not_viewed() {
        use datafusion::arrow::array::AsArray;
        let event = format!("{{\"good\":1,\"pad\":\"{}\"}}", "x".repeat(40));
        let mut poll = crate::event::RawChunker::with_capacity(0, 2);
        poll.push(event.as_bytes());
        poll.push("junk ".repeat(1000).as_bytes()); // dead-lettered: no row holds it
        let good = poll.finish().remove(0);
        let chunk = good.chunk().0.as_ptr();
        let rows = [AuditRow {
            raw: good,
            ..Default::default()
        }];
        let refs: Vec<&AuditRow> = rows.iter().collect();
        let array = raw_views(&refs, &DenseChunks::of(rows.iter()));
        let views = array.as_string_view();
        assert_eq!(views.value(0), event);
        assert!(
            views.data_buffers().iter().all(|b| b.as_ptr() != chunk),
            "the row is copied out of its mostly dead chunk"
        );
        let all_rows = DenseChunks::default();
        assert_eq!(raw_views(&refs, &all_rows).as_string_view().value(0), event);
    }
}
