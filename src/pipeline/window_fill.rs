//! The SQL window's appends, beside the processor.
//!
//! Building a poll's rows into the window's stored form (Arrow columns by minute, dictionaries,
//! string views) and sealing finished minutes was a third of the processor's wall time; while
//! a backlog drains, the processor, one poll at a time, is what bounds the throughput (8.8 µs
//! of wall time per record against ~15% of both cores idle). Here the window takes a batch
//! while the processor decodes the next one. Appends stay in poll order (one task, one
//! batch at a time) and the queue between them is short, so the window trails the sinks by a
//! poll or two and holds no more than that.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::event::arrow as tables;
use crate::event::{AuditRow, Batch};
use crate::query::window::Window;

use super::PipelineError;

/// Batches waiting for the window: the processor waits beyond this.
pub(super) const WINDOW_AHEAD: usize = 2;

/// Appends `batch`'s rows to the window, each table's built by minute straight into its
/// stored form. `now` (µs) is the batch's processing time: what an empty table counts from.
pub(super) fn fill_window(window: &Window, batch: &Batch, now: i64) {
    if !batch.audit.is_empty() {
        let newest = batch.audit.iter().map(|r| r.time_us).max().unwrap_or(now);
        // Which of the poll's chunks its rows fill, judged over the whole poll (the window
        // takes it in one batch per minute).
        let dense = tables::DenseChunks::of(batch.audit.iter());
        let build = |rows: &[&AuditRow], schema: &_| tables::audit_batch_viewing(rows, schema, &dense);
        window.audit.append_rows(&batch.audit, |r| r.time_us, build, newest);
    }
    if !batch.metrics.is_empty() {
        let newest = batch.metrics.iter().map(|m| m.time_us).max().unwrap_or(now);
        (window.metrics).append_rows(&batch.metrics, |m| m.time_us, tables::metrics_batch_as, newest);
    }
}

/// Fills the window with each batch received, in order, until the processor stops.
pub(super) async fn run_window_fill(
    window: Window,
    mut rx: mpsc::Receiver<(Arc<Batch>, i64)>,
) -> Result<(), PipelineError> {
    while let Some((batch, now)) = rx.recv().await {
        let window = window.clone();
        // CPU work of milliseconds per poll: on the blocking pool, off the runtime's workers.
        tokio::task::spawn_blocking(move || fill_window(&window, &batch, now))
            .await
            .map_err(|e| PipelineError::Task(format!("filling the SQL window: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::event::now_us;

    fn batch(ids: &[&str], time_us: i64) -> Arc<Batch> {
        Arc::new(Batch {
            audit: ids
                .iter()
                .map(|id| AuditRow {
                    id: (*id).into(),
                    time_us,
                    raw: crate::event::Raw::from(format!("{{\"id\":\"{id}\"}}").into_bytes()),
                    ..AuditRow::default()
                })
                .collect(),
            ..Batch::default()
        })
    }

    /// Every batch handed over is in the window once the task ends (the processor awaits it
    /// before reporting done), and an empty one changes nothing.
    #[tokio::test]
    async fn every_batch_handed_over_is_in_the_window_when_the_task_ends() {
        let window = Window::new(Duration::from_secs(3600));
        let (tx, rx) = mpsc::channel(WINDOW_AHEAD);
        let filling = tokio::spawn(run_window_fill(window.clone(), rx));
        let now = now_us();
        for (i, ids) in [&["a", "b"][..], &[], &["c"]].into_iter().enumerate() {
            tx.send((batch(ids, now - 1_000_000 + i as i64), now)).await.unwrap();
        }
        drop(tx);
        filling.await.unwrap().unwrap();
        assert_eq!(window.audit.num_rows(), 3);
        assert_eq!(window.metrics.num_rows(), 0);
    }
}
