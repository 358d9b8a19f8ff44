//! Query limits every front end gets: the session's query planner wraps the root of each
//! physical plan in [`LimitsExec`], which ends the query with an error once its result passes
//! `server.sql_max_rows` or its time passes `server.sql_timeout`. HTTP, `auditflow sql`, the
//! Postgres endpoint and `sql` rules all plan through the same session, so none of them can
//! run a query the limits do not see. (Memory is limited by the session's memory pool.)

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::{QueryPlanner, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, RecordBatchStream, SendableRecordBatchStream,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use futures::{Stream, StreamExt};

use super::engine::QueryError;

/// Plans like DataFusion's default planner, then puts [`LimitsExec`] on top.
#[derive(Debug)]
pub struct LimitedPlanner {
    pub max_rows: usize,
    pub timeout: Duration,
}

#[async_trait]
impl QueryPlanner for LimitedPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn datafusion::catalog::Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let plan = DefaultPhysicalPlanner::default()
            .create_physical_plan(logical_plan, session)
            .await?;
        Ok(Arc::new(LimitsExec::new(plan, self.max_rows, self.timeout)))
    }
}

/// Passes its input's batches through unchanged while the result stays within `max_rows`
/// (counted over every output partition) and the query within `timeout` (from planning).
#[derive(Debug)]
pub struct LimitsExec {
    input: Arc<dyn ExecutionPlan>,
    max_rows: usize,
    timeout: Duration,
    deadline: tokio::time::Instant,
    rows: Arc<AtomicUsize>,
}

impl LimitsExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, max_rows: usize, timeout: Duration) -> LimitsExec {
        LimitsExec {
            input,
            max_rows,
            timeout,
            deadline: tokio::time::Instant::now() + timeout,
            rows: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl DisplayAs for LimitsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "LimitsExec: max_rows={}, timeout={:?}", self.max_rows, self.timeout)
    }
}

impl ExecutionPlan for LimitsExec {
    fn name(&self) -> &str {
        "LimitsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("LimitsExec has exactly one input".into()))?;
        Ok(Arc::new(LimitsExec {
            input,
            max_rows: self.max_rows,
            timeout: self.timeout,
            deadline: self.deadline,
            rows: self.rows.clone(),
        }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let inner = self.input.execute(partition, context)?;
        Ok(Box::pin(LimitedStream {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(self.deadline)),
            rows: self.rows.clone(),
            max_rows: self.max_rows,
            timeout: self.timeout,
            done: false,
        }))
    }
}

struct LimitedStream {
    inner: SendableRecordBatchStream,
    deadline: Pin<Box<tokio::time::Sleep>>,
    rows: Arc<AtomicUsize>,
    max_rows: usize,
    timeout: Duration,
    done: bool,
}

fn limit_error(e: QueryError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl Stream for LimitedStream {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(limit_error(QueryError::Timeout(self.timeout)))));
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(batch))) => {
                let rows = self.rows.fetch_add(batch.num_rows(), Ordering::Relaxed) + batch.num_rows();
                if rows > self.max_rows {
                    self.done = true;
                    return Poll::Ready(Some(Err(limit_error(QueryError::TooManyRows(self.max_rows)))));
                }
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(e)))
            }
            other => other,
        }
    }
}

impl RecordBatchStream for LimitedStream {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

/// The limit a DataFusion error reports, or the error as text.
impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> QueryError {
        if let DataFusionError::External(inner) = e.find_root()
            && let Some(limit) = inner.downcast_ref::<QueryError>()
        {
            return limit.clone();
        }
        QueryError::Sql(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_plan::collect;

    fn numbers(batches: usize, rows: usize) -> Arc<dyn ExecutionPlan> {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(0..rows as i64))],
        )
        .unwrap();
        // Two partitions: the limit counts rows over both.
        let partition = vec![batch; batches];
        MemorySourceConfig::try_new_exec(&[partition.clone(), partition], schema, None).unwrap()
    }

    #[tokio::test]
    async fn rows_over_the_limit_end_the_query() {
        let ctx = Arc::new(TaskContext::default());
        let within = Arc::new(LimitsExec::new(numbers(2, 10), 40, Duration::from_secs(10)));
        let batches = collect(within, ctx.clone()).await.unwrap();
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 40);

        let over = Arc::new(LimitsExec::new(numbers(2, 10), 39, Duration::from_secs(10)));
        let e = collect(over, ctx).await.unwrap_err();
        assert!(matches!(QueryError::from(e), QueryError::TooManyRows(39)));
    }

    #[tokio::test]
    async fn a_query_past_its_deadline_is_cancelled() {
        let plan = Arc::new(LimitsExec::new(numbers(1, 10), 100, Duration::from_millis(1)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let e = collect(plan, Arc::new(TaskContext::default())).await.unwrap_err();
        let e = QueryError::from(e);
        assert!(matches!(e, QueryError::Timeout(_)), "{e}");
        assert!(e.to_string().contains("sql_timeout"), "{e}");
    }
}
