//! The SQL engine: a DataFusion session over the window's tables and views, read-only, and
//! limited in time, memory (a DataFusion memory pool shared by every query) and rows.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use futures::{StreamExt, TryStreamExt};

use super::limits::LimitedPlanner;
use super::window::Window;

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Sql(String),
    #[error("query took longer than {0:?} and was cancelled (server.sql_timeout)")]
    Timeout(Duration),
    #[error("the result has more than {0} rows (server.sql_max_rows); add a LIMIT or narrow the query")]
    TooManyRows(usize),
}

/// Query limits (`[server] sql_timeout`, `sql_max_rows`, `sql_memory_limit`, `sql_threads`).
#[derive(Debug, Clone)]
pub struct SqlLimits {
    pub timeout: Duration,
    pub max_rows: usize,
    /// Bytes all running queries may hold together (sorts, joins, aggregations).
    pub memory_limit: usize,
    /// Threads of the runtime queries run on, apart from the pipeline's.
    pub threads: usize,
}

impl Default for SqlLimits {
    fn default() -> Self {
        SqlLimits {
            timeout: Duration::from_secs(30),
            max_rows: 1_000_000,
            memory_limit: 1 << 30,
            threads: 2,
        }
    }
}

/// The runtime queries execute on, so a heavy query competes with the pipeline only for CPU,
/// never for its tokio workers. Shut down in the background when the last engine goes (a
/// runtime may not be dropped from async code).
struct SqlRuntime(Option<tokio::runtime::Runtime>);

impl SqlRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("present until dropped").handle()
    }
}

impl Drop for SqlRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Convenience views over the tables (documented in the README).
pub const VIEWS: [(&str, &str); 2] = [
    (
        "auth_failures",
        "SELECT time, id, principal, principal_name, principal_app, auth_mechanism, auth_identifier, \
         client_ip, cluster_id, result_status, result_message \
         FROM audit_events \
         WHERE type = 'io.confluent.kafka.server/authentication' AND result_status <> 'SUCCESS'",
    ),
    (
        "topic_traffic",
        "SELECT date_trunc('minute', time) AS minute, cluster_id, topic, resource_app, \
         sum(CASE WHEN name = 'io.confluent.kafka.server/received_bytes' THEN value ELSE 0 END) AS ingress_bytes, \
         sum(CASE WHEN name = 'io.confluent.kafka.server/sent_bytes' THEN value ELSE 0 END) AS egress_bytes \
         FROM metrics \
         WHERE topic IS NOT NULL AND name IN ('io.confluent.kafka.server/received_bytes', 'io.confluent.kafka.server/sent_bytes') \
         GROUP BY 1, 2, 3, 4",
    ),
];

/// Answers SQL over the window. Cheap to clone.
#[derive(Clone)]
pub struct QueryEngine {
    ctx: SessionContext,
    limits: SqlLimits,
    runtime: Arc<SqlRuntime>,
}

impl QueryEngine {
    pub fn new(window: &Window) -> QueryEngine {
        QueryEngine::with_limits(window, SqlLimits::default())
    }

    pub fn with_limits(window: &Window, limits: SqlLimits) -> QueryEngine {
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("auditflow", "public");
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(limits.memory_limit)))
            .build_arc()
            .expect("a memory pool is all this runtime has");
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_query_planner(Arc::new(LimitedPlanner {
                max_rows: limits.max_rows,
                timeout: limits.timeout,
            }))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.register_table("audit_events", window.audit.clone())
            .expect("fresh catalog");
        ctx.register_table("metrics", window.metrics.clone())
            .expect("fresh catalog");
        ctx.register_table("alerts", window.alerts.clone())
            .expect("fresh catalog");
        for (name, sql) in VIEWS {
            // Planning a view over in-memory tables does no IO: `block_on` returns at once.
            let view = futures::executor::block_on(ctx.sql(sql))
                .map(|df| df.into_view())
                .unwrap_or_else(|e| panic!("view {name}: {e}"));
            ctx.register_table(name, view).expect("fresh catalog");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(limits.threads.max(1))
            .thread_name("auditflow-sql")
            .enable_all()
            .build()
            .expect("a tokio runtime for queries");
        QueryEngine {
            ctx,
            limits,
            runtime: Arc::new(SqlRuntime(Some(runtime))),
        }
    }

    /// The session, for the Postgres front end (which applies its own read-only check).
    pub fn session(&self) -> &SessionContext {
        &self.ctx
    }

    pub fn limits(&self) -> &SqlLimits {
        &self.limits
    }

    /// Plans a read-only statement without running it (validation of SQL rules).
    pub async fn plan(&self, sql: &str) -> Result<(), QueryError> {
        self.ctx
            .sql_with_options(sql, read_only())
            .await
            .map(|_| ())
            .map_err(|e| QueryError::Sql(e.to_string()))
    }

    /// Runs one read-only statement on the SQL runtime and streams its result back; the
    /// session's [`LimitsExec`](super::limits::LimitsExec) ends it with an error past the row
    /// limit or the timeout.
    pub async fn stream(
        &self,
        sql: &str,
    ) -> Result<
        (
            SchemaRef,
            futures::stream::BoxStream<'static, Result<RecordBatch, QueryError>>,
        ),
        QueryError,
    > {
        let engine = self.clone();
        let sql = sql.to_owned();
        let (schema_tx, schema_rx) = tokio::sync::oneshot::channel();
        // A couple of batches in hand: the query runs ahead of a slow client only that far.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        self.runtime.handle().spawn(async move {
            let mut stream = match engine.execute(&sql).await {
                Ok((schema, stream)) => {
                    let _ = schema_tx.send(Ok(schema));
                    stream
                }
                Err(e) => {
                    let _ = schema_tx.send(Err(e));
                    return;
                }
            };
            while let Some(batch) = stream.next().await {
                let failed = batch.is_err();
                // The client went away: dropping the stream cancels the query.
                if tx.send(batch.map_err(QueryError::from)).await.is_err() || failed {
                    return;
                }
            }
        });
        let schema = schema_rx
            .await
            .map_err(|_| QueryError::Sql("the query task stopped before answering".into()))??;
        Ok((schema, tokio_stream::wrappers::ReceiverStream::new(rx).boxed()))
    }

    /// Runs one read-only statement (on the SQL runtime) and collects its result.
    pub async fn query(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        let engine = self.clone();
        let sql = sql.to_owned();
        self.runtime
            .handle()
            .spawn(async move {
                let (schema, stream) = engine.execute(&sql).await?;
                let batches: Vec<RecordBatch> = stream.try_collect().await?;
                Ok((schema, batches))
            })
            .await
            .map_err(|e| QueryError::Sql(format!("the query task failed: {e}")))?
    }

    /// Plans one read-only statement and starts it, here.
    async fn execute(
        &self,
        sql: &str,
    ) -> Result<(SchemaRef, datafusion::physical_plan::SendableRecordBatchStream), QueryError> {
        let df = self.ctx.sql_with_options(sql, read_only()).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let stream = df.execute_stream().await?;
        Ok((schema, stream))
    }

    /// Where the Postgres endpoint serves its connections (their queries run where they are
    /// polled).
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        self.runtime.handle()
    }
}

/// Queries only: no DDL, no DML, no `SET` of engine options.
fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}
