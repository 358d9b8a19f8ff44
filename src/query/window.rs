//! The window store: the last `window.retention` of event time per table, held as Arrow record
//! batches and served to DataFusion through [`WindowTable`], a `TableProvider`.
//!
//! Batches are appended as the pipeline builds them (one per Kafka poll), tagged with their
//! newest event time, and evicted whole once that time falls out of the retention. Retention is
//! measured against the newest event time seen (never more than five minutes ahead of the wall
//! clock), so a replayed backlog stays queryable instead of expiring on arrival.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::event::now_us;

/// Most an event may run ahead of the wall clock before it stops moving the window forward.
const MAX_CLOCK_SKEW_US: i64 = 5 * 60 * 1_000_000;

#[derive(Debug)]
struct Stored {
    newest_us: i64,
    batch: RecordBatch,
}

/// One table of the window.
#[derive(Debug)]
pub struct WindowTable {
    schema: SchemaRef,
    retention_us: i64,
    batches: RwLock<VecDeque<Stored>>,
    newest_us: AtomicU64,
    num_evicted_rows: AtomicU64,
}

impl WindowTable {
    pub fn new(schema: SchemaRef, retention: Duration) -> WindowTable {
        WindowTable {
            schema,
            retention_us: retention.as_micros() as i64,
            batches: RwLock::new(VecDeque::new()),
            newest_us: AtomicU64::new(0),
            num_evicted_rows: AtomicU64::new(0),
        }
    }

    /// Appends a batch whose newest event time is `newest_us`, then evicts what fell out.
    pub fn append(&self, batch: RecordBatch, newest_us: i64) {
        if batch.num_rows() == 0 {
            return;
        }
        let clamped = newest_us.min(now_us() + MAX_CLOCK_SKEW_US).max(0) as u64;
        let reference = self.newest_us.fetch_max(clamped, Ordering::Relaxed).max(clamped) as i64;
        let mut batches = self.batches.write().unwrap_or_else(|e| e.into_inner());
        batches.push_back(Stored { newest_us, batch });
        let cutoff = reference - self.retention_us;
        // Batches arrive roughly in time order; evict every expired one, wherever it sits.
        let mut evicted = 0;
        batches.retain(|s| {
            let keep = s.newest_us > cutoff;
            if !keep {
                evicted += s.batch.num_rows();
            }
            keep
        });
        self.num_evicted_rows.fetch_add(evicted as u64, Ordering::Relaxed);
    }

    /// The batches currently held (cheap: record batches share their buffers).
    pub fn snapshot(&self) -> Vec<RecordBatch> {
        let batches = self.batches.read().unwrap_or_else(|e| e.into_inner());
        batches.iter().map(|s| s.batch.clone()).collect()
    }

    pub fn num_rows(&self) -> usize {
        let batches = self.batches.read().unwrap_or_else(|e| e.into_inner());
        batches.iter().map(|s| s.batch.num_rows()).sum()
    }

    pub fn num_bytes(&self) -> usize {
        let batches = self.batches.read().unwrap_or_else(|e| e.into_inner());
        batches.iter().map(|s| s.batch.get_array_memory_size()).sum()
    }

    pub fn num_evicted_rows(&self) -> u64 {
        self.num_evicted_rows.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl TableProvider for WindowTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let exec = MemorySourceConfig::try_new_exec(&[self.snapshot()], self.schema.clone(), projection.cloned())?;
        Ok(exec)
    }
}

/// The three tables of the window.
#[derive(Debug, Clone)]
pub struct Window {
    pub audit: Arc<WindowTable>,
    pub metrics: Arc<WindowTable>,
    pub alerts: Arc<WindowTable>,
}

impl Window {
    pub fn new(retention: Duration) -> Window {
        use super::tables::{ALERTS_SCHEMA, AUDIT_SCHEMA, METRICS_SCHEMA};
        Window {
            audit: Arc::new(WindowTable::new(AUDIT_SCHEMA.clone(), retention)),
            metrics: Arc::new(WindowTable::new(METRICS_SCHEMA.clone(), retention)),
            alerts: Arc::new(WindowTable::new(ALERTS_SCHEMA.clone(), retention)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::MetricSample;
    use crate::query::tables::{METRICS_SCHEMA, metrics_batch};

    fn sample(time_us: i64) -> MetricSample {
        MetricSample {
            time_us,
            name: "m".into(),
            value: 1.0,
            kind: crate::event::MetricKind::Gauge,
            cluster_id: None,
            topic: None,
            partition: None,
            labels: Default::default(),
            resource_app: None,
        }
    }

    #[test]
    fn old_batches_are_evicted_by_event_time() {
        let t = WindowTable::new(METRICS_SCHEMA.clone(), Duration::from_secs(3600));
        let base = now_us() - 10 * 3600 * 1_000_000;
        t.append(metrics_batch(&[sample(base)]), base);
        t.append(metrics_batch(&[sample(base + 1)]), base + 1);
        assert_eq!(t.num_rows(), 2);
        let later = base + 2 * 3600 * 1_000_000;
        t.append(metrics_batch(&[sample(later)]), later);
        assert_eq!(t.num_rows(), 1);
        assert_eq!(t.num_evicted_rows(), 2);
    }
}
