//! Puts a table's rows back in event-time order for the rules. Rows wait here until the table's
//! clock ([`super::clock`]) says every row of their one-second cell has arrived; a released cell
//! is handed to the rules whole, in time order, and evaluated at the newest event time in it.
//! Because cells are fixed in event time and released complete, the rules see the same cells,
//! with the same contents, whether the records arrived in time order, partition by partition, or
//! interleaved: counts, evidence and alert times do not depend on how the consumer fetched.
//!
//! Memory is bounded: past `max_rows` buffered rows (a partition that holds the clock back for
//! long while others stream), everything buffered is released at once and counted.

use datafusion::arrow::array::{Array, BooleanArray, RecordBatch, TimestampMicrosecondArray};
use datafusion::arrow::compute::{concat_batches, filter_record_batch, sort_to_indices, take_record_batch};

use super::clock::Watermark;

/// Event-time cell: rows are released a whole second at a time.
pub const CELL_US: i64 = 1_000_000;

/// Rows buffered per table before everything is released regardless of the clock.
pub const MAX_ROWS: usize = 1_000_000;

pub struct Reorder {
    /// Buffered batches with the oldest and newest event time in each.
    pending: Vec<(i64, i64, RecordBatch)>,
    /// Every row before this time (µs) has been released.
    released_until: i64,
    num_rows: usize,
    max_rows: usize,
    num_forced: u64,
}

impl Default for Reorder {
    fn default() -> Reorder {
        Reorder::with_max_rows(MAX_ROWS)
    }
}

/// The `time` column every table has (`event::arrow`); a batch without one is not ordered but
/// passed on as it came.
fn times(batch: &RecordBatch) -> Option<&TimestampMicrosecondArray> {
    batch
        .column_by_name("time")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
}

fn cell_of(t: i64) -> i64 {
    t.div_euclid(CELL_US)
}

impl Reorder {
    pub fn with_max_rows(max_rows: usize) -> Reorder {
        Reorder {
            pending: Vec::new(),
            released_until: i64::MIN,
            num_rows: 0,
            max_rows,
            num_forced: 0,
        }
    }

    pub fn push(&mut self, batch: RecordBatch) {
        if batch.num_rows() == 0 {
            return;
        }
        let t = times(&batch);
        let min = t.and_then(datafusion::arrow::compute::min).unwrap_or(i64::MIN);
        let max = t.and_then(datafusion::arrow::compute::max).unwrap_or(i64::MIN);
        self.num_rows += batch.num_rows();
        self.pending.push((min, max, batch));
    }

    pub fn num_rows(&self) -> usize {
        self.num_rows
    }

    /// How often the buffer was released whole because it was full.
    pub fn num_forced(&self) -> u64 {
        self.num_forced
    }

    /// The cells the clock allows, oldest first, each a time-sorted batch. Rows that arrive
    /// after their cell was released (later than the clock allowed for) come out at the front.
    pub fn release(&mut self, watermark: Watermark) -> Vec<RecordBatch> {
        // Everything buffered: up to the end of the newest row's cell.
        let everything = self
            .pending
            .iter()
            .map(|(_, max, _)| (cell_of(*max) + 1).saturating_mul(CELL_US))
            .max()
            .unwrap_or(self.released_until);
        let mut until = match watermark {
            Watermark::Unknown => self.released_until,
            // The cell holding `w + 1` may still receive rows; every cell before it is complete.
            Watermark::At(w) => cell_of(w.saturating_add(1)).saturating_mul(CELL_US),
            Watermark::Idle => everything,
        };
        if self.num_rows > self.max_rows {
            until = everything;
            self.num_forced += 1;
        }
        until = until.max(self.released_until);
        let mut out = Vec::new();
        let mut kept = Vec::new();
        for (min, max, batch) in std::mem::take(&mut self.pending) {
            if min >= until {
                kept.push((min, max, batch));
                continue;
            }
            if max < until {
                // Released whole: no copy.
                self.num_rows -= batch.num_rows();
                out.push(batch);
                continue;
            }
            let Some(t) = times(&batch) else {
                self.num_rows -= batch.num_rows();
                out.push(batch);
                continue;
            };
            let early: BooleanArray = t.iter().map(|v| Some(v.is_some_and(|v| v < until))).collect();
            let late: BooleanArray = early.iter().map(|v| v.map(|b| !b)).collect();
            match (filter_record_batch(&batch, &early), filter_record_batch(&batch, &late)) {
                (Ok(e), Ok(l)) => {
                    self.num_rows -= e.num_rows();
                    out.push(e);
                    if l.num_rows() > 0
                        && let Some(m) = times(&l).and_then(datafusion::arrow::compute::min)
                    {
                        kept.push((m, max, l));
                    }
                }
                // Filtering a batch by a mask of its own length cannot fail; if it ever did,
                // evaluating the whole batch now beats losing it.
                _ => {
                    self.num_rows -= batch.num_rows();
                    out.push(batch);
                }
            }
        }
        self.pending = kept;
        self.released_until = until;
        if out.is_empty() {
            return Vec::new();
        }
        let Some(schema) = out.first().map(RecordBatch::schema) else {
            return Vec::new();
        };
        let all = if out.len() == 1 {
            out.remove(0)
        } else {
            match concat_batches(&schema, &out) {
                Ok(all) => all,
                Err(_) => return out,
            }
        };
        // Rows of one partition come sorted; only a mix of partitions needs the sort (and the
        // copy of every column it makes).
        let Some(t) = times(&all) else {
            return vec![all];
        };
        let sorted = if t.values().windows(2).all(|w| w[0] <= w[1]) {
            all
        } else {
            match sort_to_indices(t, None, None).and_then(|i| take_record_batch(&all, &i)) {
                Ok(s) => s,
                Err(_) => return vec![all],
            }
        };
        let Some(t) = times(&sorted) else {
            return vec![sorted];
        };
        let mut cells = Vec::new();
        let mut start = 0;
        for row in 1..=sorted.num_rows() {
            if row == sorted.num_rows() || cell_of(t.value(row)) != cell_of(t.value(start)) {
                cells.push(sorted.slice(start, row - start));
                start = row;
            }
        }
        cells
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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
                raw: Arc::from(&b"{}"[..]),
                ..AuditRow::default()
            })
            .collect();
        audit_batch(&rows)
    }

    fn shape(cells: &[RecordBatch]) -> Vec<Vec<i64>> {
        cells
            .iter()
            .map(|c| times(c).unwrap().iter().map(|t| t.unwrap_or_default() / 1000).collect())
            .collect()
    }

    #[test]
    fn cells_are_released_whole_sorted_and_only_once_complete() {
        let mut r = Reorder::default();
        r.push(batch(&[3.5, 1.2, 2.0]));
        r.push(batch(&[1.9, 3.1]));
        // The clock is at 3.2 s: cells 1 and 2 are complete, cell 3 is not.
        let cells = r.release(Watermark::At(3_200_000));
        assert_eq!(shape(&cells), vec![vec![1200, 1900], vec![2000]]);
        assert_eq!(r.num_rows(), 2);
        assert!(r.release(Watermark::At(3_999_998)).is_empty());
        let cells = r.release(Watermark::At(3_999_999));
        assert_eq!(shape(&cells), vec![vec![3100, 3500]]);
        assert_eq!(r.num_rows(), 0);
    }

    #[test]
    fn unknown_holds_everything_idle_releases_everything_and_late_rows_come_first() {
        let mut r = Reorder::default();
        r.push(batch(&[5.0, 7.5]));
        assert!(r.release(Watermark::Unknown).is_empty());
        assert_eq!(shape(&r.release(Watermark::Idle)), vec![vec![5000], vec![7500]]);
        r.push(batch(&[9.0, 1.0]));
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
        let mut r = Reorder::with_max_rows(3);
        r.push(batch(&[1.0, 2.0]));
        assert!(r.release(Watermark::Unknown).is_empty());
        r.push(batch(&[3.0, 4.0]));
        assert_eq!(r.release(Watermark::Unknown).len(), 4);
        assert_eq!(r.num_forced(), 1);
    }
}
