//! Puts a table's rows back in event-time order for the rules. Rows wait here until the table's
//! clock ([`super::clock`]) says every row of their one-second cell has arrived; a released cell
//! is handed to the rules whole, in time order, and evaluated at the newest event time in it.
//! Because cells are fixed in event time and released complete, the rules see the same cells,
//! with the same contents, whether the records arrived in time order, partition by partition, or
//! interleaved: counts, evidence and alert times do not depend on how the consumer fetched.
//!
//! Only the rows some rule may select wait whole. A rule reads nothing but the rows its `where`
//! selects, and a `where` reads only its own row, so the engine evaluates every rule's `where`
//! as a batch arrives and hands over those rows ([`Reorder::push`]'s `selected`); of the rest
//! (most of a backlog) only each cell's newest event time and row count wait, since a cell is
//! evaluated at its newest time even when no row of it is selected (alerts resolve as time
//! moves). Copying, concatenating and sorting whole rows on every release had been a quarter of
//! the pipeline's CPU.
//!
//! Memory is bounded: past `max_rows` waiting rows (a partition that holds the clock back for
//! long while others stream), everything waiting is released at once and counted.

use std::collections::BTreeMap;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, RecordBatchOptions, TimestampMicrosecondArray, UInt32Array,
};
use datafusion::arrow::compute::{concat_batches, interleave_record_batch, take};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;

use crate::event::arrow::empty_strings;

use super::clock::Watermark;

/// Event-time cell: rows are released a whole second at a time.
pub const CELL_US: i64 = 1_000_000;

/// Rows waiting per table before everything is released regardless of the clock.
pub const MAX_ROWS: usize = 1_000_000;

/// Rows (selected or not) one release hands over at most, in whole cells (at least one): when
/// the clock jumps (idle partitions drop out after a backlog), the seconds that waited behind
/// it are spread over the next polls instead of stalling one poll for hundreds of ms while
/// fresh records queue behind it.
pub const MAX_RELEASE_ROWS: usize = 8_192;

/// One released one-second cell.
#[derive(Debug)]
pub struct Cell {
    /// The newest event time of any row in the cell, selected or not: the rules' clock.
    pub newest_us: i64,
    /// The cell's selected rows, in time order (possibly none).
    pub rows: RecordBatch,
}

/// What waits of one cell beside its selected rows.
#[derive(Clone, Copy)]
struct Waiting {
    newest_us: i64,
    rows: usize,
}

pub struct Reorder {
    /// Selected rows waiting, as pushed, with the oldest and newest event time in each batch.
    pending: Vec<(i64, i64, RecordBatch)>,
    /// Every cell with rows waiting, selected or not.
    cells: BTreeMap<i64, Waiting>,
    /// Rows without a `time` column (no table has none): released at the next call, as one cell.
    untimed: Vec<RecordBatch>,
    schema: Option<SchemaRef>,
    /// Every row before this time (µs) has been released.
    released_until: i64,
    num_rows: usize,
    max_rows: usize,
    max_release_rows: usize,
    num_forced: u64,
    /// Empty strings that the blank columns of waiting rows are slices of (see [`take_rows`]).
    blank: Option<ArrayRef>,
}

impl Default for Reorder {
    fn default() -> Reorder {
        Reorder::with_limits(MAX_ROWS, MAX_RELEASE_ROWS)
    }
}

/// The `time` column every table has (`event::arrow`).
fn times(batch: &RecordBatch) -> Option<&TimestampMicrosecondArray> {
    batch
        .column_by_name("time")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
}

fn cell_of(t: i64) -> i64 {
    t.div_euclid(CELL_US)
}

impl Reorder {
    pub fn with_limits(max_rows: usize, max_release_rows: usize) -> Reorder {
        Reorder {
            pending: Vec::new(),
            cells: BTreeMap::new(),
            untimed: Vec::new(),
            schema: None,
            released_until: i64::MIN,
            num_rows: 0,
            max_rows,
            max_release_rows,
            num_forced: 0,
            blank: None,
        }
    }

    /// Adds `batch`'s rows: each counts in its cell, and those `selected` marks true (all rows
    /// when `None`; a mask of another length is ignored, keeping every row) wait whole.
    pub fn push(&mut self, batch: RecordBatch, selected: Option<&BooleanArray>) {
        if batch.num_rows() == 0 {
            return;
        }
        self.schema = Some(batch.schema());
        self.num_rows += batch.num_rows();
        let Some(t) = times(&batch) else {
            self.untimed.push(batch);
            return;
        };
        // Rows of one partition come in time order: one map update per run of a cell.
        let mut run: Option<(i64, Waiting)> = None;
        for &time in t.values().iter() {
            let cell = cell_of(time);
            match &mut run {
                Some((c, w)) if *c == cell => {
                    w.newest_us = w.newest_us.max(time);
                    w.rows += 1;
                }
                _ => {
                    if let Some((c, w)) = run.take() {
                        self.add_to_cell(c, w);
                    }
                    run = Some((
                        cell,
                        Waiting {
                            newest_us: time,
                            rows: 1,
                        },
                    ));
                }
            }
        }
        if let Some((c, w)) = run {
            self.add_to_cell(c, w);
        }
        // The selected rows wait sorted by time (one copy, here), so a release cuts them at
        // its time by slicing instead of copying every waiting batch that straddles it.
        let times_of = t.values();
        let mut keep: Vec<u32> = match selected {
            Some(mask) if mask.len() == batch.num_rows() && mask.null_count() == 0 => {
                mask.values().set_indices().map(|i| i as u32).collect()
            }
            _ => (0..batch.num_rows() as u32).collect(),
        };
        if keep.is_empty() {
            return;
        }
        let in_order = keep
            .windows(2)
            .all(|w| times_of[w[0] as usize] <= times_of[w[1] as usize]);
        let rows = if in_order && keep.len() == batch.num_rows() {
            batch
        } else {
            if !in_order {
                keep.sort_by_key(|&i| times_of[i as usize]); // stable: ties keep arrival order
            }
            // Indices of the batch's own rows cannot fail to take; if it ever did, say so.
            match take_rows(&batch, &UInt32Array::from(keep), &mut self.blank) {
                Ok(rows) => rows,
                Err(e) => {
                    let schema = batch.schema();
                    lost(&schema, std::slice::from_ref(&batch), e)
                }
            }
        };
        let Some(t) = times(&rows).filter(|t| !t.is_empty()) else {
            return;
        };
        let (min, max) = (t.value(0), t.value(t.len() - 1));
        self.pending.push((min, max, rows));
    }

    fn add_to_cell(&mut self, cell: i64, add: Waiting) {
        let w = self.cells.entry(cell).or_insert(Waiting {
            newest_us: add.newest_us,
            rows: 0,
        });
        w.newest_us = w.newest_us.max(add.newest_us);
        w.rows += add.rows;
    }

    /// Rows waiting (selected or not).
    pub fn num_rows(&self) -> usize {
        self.num_rows
    }

    /// How often the buffer was released whole because it was full.
    pub fn num_forced(&self) -> u64 {
        self.num_forced
    }

    /// The cells the clock allows, oldest first. Rows that arrive after their cell was
    /// released (later than the clock allowed for) come out at the front.
    pub fn release(&mut self, watermark: Watermark) -> Vec<Cell> {
        let mut out = Vec::new();
        if !self.untimed.is_empty() {
            let untimed = std::mem::take(&mut self.untimed);
            let rows = untimed.iter().map(RecordBatch::num_rows).sum::<usize>();
            self.num_rows -= rows;
            if let Some(schema) = &self.schema
                && let Ok(rows) = concat_batches(schema, &untimed)
            {
                out.push(Cell {
                    newest_us: i64::MIN,
                    rows,
                });
            }
        }
        // Everything waiting: up to the end of the newest row's cell.
        let everything = self
            .cells
            .last_key_value()
            .map_or(self.released_until, |(cell, _)| (cell + 1).saturating_mul(CELL_US));
        let mut until = match watermark {
            Watermark::Unknown => self.released_until,
            // The cell holding `w + 1` may still receive rows; every cell before it is complete.
            Watermark::At(w) => cell_of(w.saturating_add(1)).saturating_mul(CELL_US),
            Watermark::Idle => everything,
        };
        if self.num_rows > self.max_rows {
            until = everything;
            self.num_forced += 1;
        } else {
            // At most `max_release_rows` rows of whole cells; the rest go at the next calls.
            let mut rows = 0;
            for (&cell, waiting) in self.cells.range(..cell_of(until)) {
                rows += waiting.rows;
                if rows >= self.max_release_rows {
                    until = until.min((cell + 1).saturating_mul(CELL_US));
                    break;
                }
            }
        }
        until = until.max(self.released_until);
        self.released_until = until;
        let kept = self.cells.split_off(&cell_of(until));
        let released = std::mem::replace(&mut self.cells, kept);
        if released.is_empty() {
            return out;
        }
        self.num_rows -= released.values().map(|w| w.rows).sum::<usize>();
        let Some(schema) = self.schema.clone() else {
            return out;
        };
        let rows = self.take_selected(until, &schema);
        let t = times(&rows);
        // Most cells of a backlog have no selected row: they share one empty batch instead of
        // each slicing every column.
        let empty = rows.slice(0, 0);
        let mut start = 0;
        for (cell, waiting) in released {
            let mut end = start;
            while let Some(t) = t
                && end < rows.num_rows()
                && cell_of(t.value(end)) == cell
            {
                end += 1;
            }
            out.push(Cell {
                newest_us: waiting.newest_us,
                rows: if end == start {
                    empty.clone()
                } else {
                    rows.slice(start, end - start)
                },
            });
            start = end;
        }
        out
    }

    /// The selected rows before `until`, in time order; the rest stay. Each waiting batch is
    /// sorted, so it is cut by slicing; the pieces are merged by time in one copy (ties keep
    /// the order the rows came in).
    fn take_selected(&mut self, until: i64, schema: &SchemaRef) -> RecordBatch {
        let mut early = Vec::new();
        let mut kept = Vec::new();
        for (min, max, batch) in std::mem::take(&mut self.pending) {
            if min >= until {
                kept.push((min, max, batch));
            } else if max < until {
                early.push(batch); // released whole: no copy
            } else if let Some(t) = times(&batch) {
                let split = t.values().partition_point(|&v| v < until);
                kept.push((t.value(split), max, batch.slice(split, batch.num_rows() - split)));
                early.push(batch.slice(0, split));
            } else {
                early.push(batch); // `push` keeps only timed batches here
            }
        }
        self.pending = kept;
        match early.len() {
            0 => RecordBatch::new_empty(schema.clone()),
            1 => early.remove(0),
            _ => merge_by_time(schema, &early),
        }
    }
}

/// `batch`'s rows at `indices`, like `take_record_batch`, except for blank columns: a text
/// column of empty strings only (each column no rule reads, see
/// `event::arrow::audit_batch_keeping`) becomes a slice of `blank`, one column of empty strings
/// shared by every waiting batch. Taken, each blank column got 4 bytes of offsets per row: ~25
/// of the audit table's columns, 19 MB of the ~50 MB waiting here at heaptrack's peak in a
/// 600,000-event run of the drain bench.
fn take_rows(
    batch: &RecordBatch,
    indices: &UInt32Array,
    blank: &mut Option<ArrayRef>,
) -> Result<RecordBatch, ArrowError> {
    let n = indices.len();
    let columns = batch
        .columns()
        .iter()
        .map(|column| {
            if is_blank(column) {
                Ok(blank_strings(blank, n))
            } else {
                take(column, indices, None)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new_with_options(
        batch.schema(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(n)),
    )
}

/// Whether every row of `column` is an empty string (a sliced column whose buffer holds text
/// elsewhere does not count: it is taken as usual).
fn is_blank(column: &ArrayRef) -> bool {
    column.null_count() == 0 && column.as_string_opt::<i32>().is_some_and(|s| s.value_data().is_empty())
}

/// `n` empty strings, sliced from `blank` (made, or made longer, when it is too short).
fn blank_strings(blank: &mut Option<ArrayRef>, n: usize) -> ArrayRef {
    if blank.as_ref().is_some_and(|b| b.len() < n) {
        *blank = None;
    }
    let shared = blank.get_or_insert_with(|| empty_strings(n.max(MAX_RELEASE_ROWS)));
    shared.slice(0, n)
}

/// `batches`, each sorted by time, as one batch sorted by time (stable across batches).
fn merge_by_time(schema: &SchemaRef, batches: &[RecordBatch]) -> RecordBatch {
    let mut order: Vec<(i64, usize, usize)> = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    for (b, batch) in batches.iter().enumerate() {
        if let Some(t) = times(batch) {
            order.extend(t.values().iter().enumerate().map(|(r, &time)| (time, b, r)));
        }
    }
    // Already in order when the batches do not overlap (one partition's rows, or a backlog
    // read in order): concatenating is then enough.
    if order.windows(2).all(|w| w[0].0 <= w[1].0) {
        return concat_batches(schema, batches).unwrap_or_else(|e| lost(schema, batches, e));
    }
    order.sort_by_key(|&(time, _, _)| time);
    let indices: Vec<(usize, usize)> = order.into_iter().map(|(_, b, r)| (b, r)).collect();
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    interleave_record_batch(&refs, &indices).unwrap_or_else(|e| lost(schema, batches, e))
}

/// Rows of one table share its schema, so combining them cannot fail; if it did, say so.
fn lost(schema: &SchemaRef, batches: &[RecordBatch], error: datafusion::arrow::error::ArrowError) -> RecordBatch {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    tracing::error!(rows, %error, "rows waiting for the rules could not be combined; the rules skip them");
    RecordBatch::new_empty(schema.clone())
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::compute::take_record_batch;

    use super::*;
    use crate::event::AuditRow;
    use crate::event::arrow::audit_batch;

    const S: i64 = 1_000_000;

    fn batch(times_s: &[f64]) -> RecordBatch {
        let rows: Vec<AuditRow> = times_s
            .iter()
            .map(|t| AuditRow {
                time_us: (t * S as f64) as i64,
                id: format!("e{t}"),
                raw: crate::event::Raw::from(&b"{}"[..]),
                ..AuditRow::default()
            })
            .collect();
        audit_batch(&rows)
    }

    /// The selected rows' times of each released cell, in ms.
    fn shape(cells: &[Cell]) -> Vec<Vec<i64>> {
        cells
            .iter()
            .map(|c| {
                times(&c.rows)
                    .unwrap()
                    .iter()
                    .map(|t| t.unwrap_or_default() / 1000)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn cells_are_released_whole_sorted_and_only_once_complete() {
        let mut r = Reorder::default();
        r.push(batch(&[3.5, 1.2, 2.0]), None);
        r.push(batch(&[1.9, 3.1]), None);
        // The clock is at 3.2 s: cells 1 and 2 are complete, cell 3 is not.
        let cells = r.release(Watermark::At(3_200_000));
        assert_eq!(shape(&cells), vec![vec![1200, 1900], vec![2000]]);
        assert_eq!(
            cells.iter().map(|c| c.newest_us / 1000).collect::<Vec<_>>(),
            [1900, 2000]
        );
        assert_eq!(r.num_rows(), 2);
        assert!(r.release(Watermark::At(3_999_998)).is_empty());
        let cells = r.release(Watermark::At(3_999_999));
        assert_eq!(shape(&cells), vec![vec![3100, 3500]]);
        assert_eq!(r.num_rows(), 0);
    }

    #[test]
    fn unknown_holds_everything_idle_releases_everything_and_late_rows_come_first() {
        let mut r = Reorder::default();
        r.push(batch(&[5.0, 7.5]), None);
        assert!(r.release(Watermark::Unknown).is_empty());
        assert_eq!(shape(&r.release(Watermark::Idle)), vec![vec![5000], vec![7500]]);
        r.push(batch(&[9.0, 1.0]), None);
        let cells = r.release(Watermark::Unknown);
        assert_eq!(
            shape(&cells),
            vec![vec![1000]],
            "a row behind what Idle released is late"
        );
        assert_eq!(r.num_rows(), 1, "9.0 waits for the clock again");
    }

    #[test]
    fn a_full_buffer_is_released_whole() {
        let mut r = Reorder::with_limits(3, MAX_RELEASE_ROWS);
        r.push(batch(&[1.0, 2.0]), None);
        assert!(r.release(Watermark::Unknown).is_empty());
        r.push(batch(&[3.0, 4.0]), None);
        assert_eq!(r.release(Watermark::Unknown).len(), 4);
        assert_eq!(r.num_forced(), 1);
    }

    /// Rows no rule selects do not wait whole, but their cells still come out, in order, at
    /// their newest event time, so rules move their clocks as before.
    #[test]
    fn unselected_rows_release_their_cells_without_rows() {
        let mut r = Reorder::default();
        let mask = |v: &[bool]| BooleanArray::from(v.to_vec());
        r.push(batch(&[1.2, 1.7, 2.4, 3.9]), Some(&mask(&[false, true, false, false])));
        r.push(batch(&[2.8, 1.1]), Some(&mask(&[false, false])));
        assert_eq!(r.num_rows(), 6, "every row counts while it waits");
        assert_eq!(r.pending.len(), 1, "only the selected row waits whole");
        let cells = r.release(Watermark::At(3_000_000));
        assert_eq!(shape(&cells), vec![vec![1700], vec![]]);
        assert_eq!(
            cells.iter().map(|c| c.newest_us / 1000).collect::<Vec<_>>(),
            [1700, 2800],
            "each cell at its newest row, selected or not"
        );
        assert!(cells.iter().all(|c| c.rows.schema() == batch(&[]).schema()));
        assert_eq!(r.num_rows(), 1);
        let cells = r.release(Watermark::Idle);
        assert_eq!(shape(&cells), vec![Vec::<i64>::new()]);
        assert_eq!(cells[0].newest_us, 3_900_000);
        assert_eq!(r.num_rows(), 0);
    }

    /// Columns no rule reads arrive as empty strings; the selected rows of each batch keep
    /// them as slices of one shared column instead of 4 bytes of offsets per row and column,
    /// and come out the same as taking every column would give.
    #[test]
    fn blank_columns_of_waiting_rows_share_one_buffer() {
        let rows: Vec<AuditRow> = [1.5, 1.2, 2.5, 2.2]
            .iter()
            .map(|t| AuditRow {
                time_us: (t * S as f64) as i64,
                id: format!("e{t}"),
                principal: Some(format!("User:{t}").into()),
                ..AuditRow::default()
            })
            .collect();
        let keeping = |rows: &[AuditRow]| crate::event::arrow::audit_batch_keeping(rows, &|c| c == "id");
        let mask = BooleanArray::from(vec![true, true, false, true]);
        let mut r = Reorder::default();
        r.push(keeping(&rows[..2]), None);
        r.push(keeping(&rows), Some(&mask));
        let principal = keeping(&rows).schema().index_of("principal").unwrap();
        let offsets = |b: &RecordBatch| {
            b.column(principal)
                .as_string::<i32>()
                .offsets()
                .inner()
                .inner()
                .as_ptr()
        };
        assert_eq!(r.pending.len(), 2);
        assert_eq!(
            offsets(&r.pending[0].2),
            offsets(&r.pending[1].2),
            "both waiting batches view one column of empty strings"
        );
        let cells = r.release(Watermark::Idle);
        assert_eq!(shape(&cells), vec![vec![1200, 1200, 1500, 1500], vec![2200]]);
        let expected = take_record_batch(&keeping(&rows), &UInt32Array::from(vec![3])).unwrap();
        assert_eq!(cells[1].rows, expected, "the same rows as taking every column");
        let ids = cells[0].rows.column_by_name("id").unwrap().as_string::<i32>();
        assert_eq!(
            ids.iter().flatten().collect::<Vec<_>>(),
            ["e1.2", "e1.2", "e1.5", "e1.5"]
        );
        let blank = cells[0].rows.column(principal).as_string::<i32>();
        assert!(blank.iter().all(|v| v == Some("")));
    }

    /// Interleaved partitions: waiting batches overlap in time and straddle each release. Every
    /// selected row comes out once, in time order, with rows of equal time in arrival order.
    #[test]
    fn overlapping_batches_are_cut_and_merged_in_time_order() {
        let mut r = Reorder::default();
        let mask = |v: &[bool]| BooleanArray::from(v.to_vec());
        r.push(batch(&[4.5, 1.1, 2.6, 3.3]), Some(&mask(&[true, true, false, true])));
        r.push(batch(&[2.2, 1.5, 4.25, 3.3]), None);
        r.push(batch(&[1.8, 5.2]), None);
        let mut released = Vec::new();
        let mut ids = Vec::new();
        for watermark in [1_999_999, 2_500_000, 3_999_999, 4_999_999] {
            for cell in r.release(Watermark::At(watermark)) {
                released.extend(times(&cell.rows).unwrap().values().iter().map(|t| t / 1000));
                let id = cell.rows.column_by_name("id").unwrap();
                let id = id
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::StringArray>()
                    .unwrap();
                ids.extend(id.iter().map(|v| v.unwrap().to_owned()));
            }
        }
        assert_eq!(released, [1100, 1500, 1800, 2200, 3300, 3300, 4250, 4500]);
        // 3.3 came first in the first batch.
        assert_eq!(ids[4..6], ["e3.3", "e3.3"]);
        assert_eq!(r.num_rows(), 1, "5.2 waits");
        assert_eq!(shape(&r.release(Watermark::Idle)), vec![vec![5200]]);
    }

    #[test]
    fn a_jump_of_the_clock_is_released_over_several_calls_in_order() {
        let mut r = Reorder::with_limits(MAX_ROWS, 4);
        r.push(batch(&[1.1, 1.2, 1.3, 2.1, 2.2, 3.1, 4.0, 4.2, 4.3, 4.4, 4.5]), None);
        assert!(r.release(Watermark::Unknown).is_empty());
        // Idle allows everything: whole cells of at least 4 rows per call.
        let shapes: Vec<Vec<Vec<i64>>> = (0..3).map(|_| shape(&r.release(Watermark::Idle))).collect();
        assert_eq!(
            shapes,
            vec![
                vec![vec![1100, 1200, 1300], vec![2100, 2200]],
                vec![vec![3100], vec![4000, 4200, 4300, 4400, 4500]],
                vec![],
            ]
        );
        assert_eq!(r.num_rows(), 0);
    }
}
