//! The SQL engine: DataFusion over the window's tables and views, read-only, and limited in
//! time, memory (a DataFusion memory pool shared by every query), rows, and the size of values
//! functions may build.
//!
//! Every statement gets its own session, cloned from one configured at start: nothing a client
//! sends can change the engine for another client or for the `sql` rules. Every statement goes
//! through [`gate`](super::gate): parsed once, bounded, planned once, checked read-only.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use futures::{StreamExt, TryStreamExt};

use super::gate;
use super::limits::LimitedPlanner;
use super::window::Window;

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Sql(String),
    /// Refused before running: a write, a setting, or past a size limit of the gate.
    #[error("{0}")]
    Refused(String),
    #[error("query took longer than {0:?} and was cancelled (server.sql_timeout)")]
    Timeout(Duration),
    #[error("the result has more than {0} rows (server.sql_max_rows); add a LIMIT or narrow the query")]
    TooManyRows(usize),
}

pub use crate::config::SqlLimits;

/// Stack of each SQL thread. Parsing and planning recurse per nesting level; the gate bounds
/// the nesting (tokens before parsing, depth after), and this holds the deepest it lets
/// through with room to spare, in debug builds too. Only touched pages are ever committed.
const SQL_THREAD_STACK: usize = 64 << 20;

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

/// Starts a checked plan in `ctx`: its schema and its batches.
async fn execute(
    ctx: &SessionContext,
    plan: datafusion::logical_expr::LogicalPlan,
) -> Result<(SchemaRef, datafusion::physical_plan::SendableRecordBatchStream), QueryError> {
    let df = ctx.execute_logical_plan(plan).await?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    Ok((schema, df.execute_stream().await?))
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
    /// The configured session every statement's own session is cloned from; never given to a
    /// client.
    base: SessionContext,
    limits: SqlLimits,
    runtime: Arc<SqlRuntime>,
}

/// A statement's result: its schema and its batches, ended early by an error.
pub type ResultStream = futures::stream::BoxStream<'static, Result<RecordBatch, QueryError>>;

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
        super::capped::install(&ctx, limits.max_value_bytes as u64, (limits.memory_limit / 4) as u64);
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
            .thread_stack_size(SQL_THREAD_STACK)
            .enable_all()
            .build()
            .expect("a tokio runtime for queries");
        QueryEngine {
            base: ctx,
            limits,
            runtime: Arc::new(SqlRuntime(Some(runtime))),
        }
    }

    /// Adds `audit_archive` over the archive at `table_url`, read through `store` (registered
    /// under `store_url`). Its queries run under the same gate and limits as every other.
    pub fn with_archive(
        self,
        store_url: &url::Url,
        table_url: &str,
        store: Arc<dyn object_store::ObjectStore>,
    ) -> Result<QueryEngine, QueryError> {
        self.base.runtime_env().register_object_store(store_url, store);
        let table = super::archive_table::ArchiveTable::new(table_url, false)?;
        self.base
            .register_table("audit_archive", Arc::new(table))
            .map_err(|e| QueryError::Sql(format!("registering audit_archive: {e}")))?;
        Ok(self)
    }

    /// A session of its own for one statement (or one Postgres connection): the configured
    /// tables, functions and limits, sharing only the memory pool.
    pub fn session(&self) -> SessionContext {
        SessionContext::new_with_state(self.base.state())
    }

    /// Adds `pg_catalog` and the Postgres functions clients call on connect (`version()`,
    /// `current_database()`, ...) to the configured session, for the Postgres front end.
    pub fn install_pg_catalog(&self) -> Result<(), QueryError> {
        use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
        datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog(&self.base, "auditflow", EmptyContextProvider)
            .map(|_| ())
            .map_err(|e| QueryError::Sql(format!("setting up pg_catalog: {e}")))
    }

    pub fn limits(&self) -> &SqlLimits {
        &self.limits
    }

    /// Plans a read-only statement without running it (validation of SQL rules).
    pub async fn plan(&self, sql: &str) -> Result<(), QueryError> {
        let engine = self.clone();
        let sql = sql.to_owned();
        self.runtime
            .handle()
            .spawn(async move {
                let state = engine.session().state();
                let statement = gate::parse(&state, &sql, &engine.limits.gate)?;
                gate::plan(&state, statement, &engine.limits.gate).await.map(|_| ())
            })
            .await
            .map_err(|e| QueryError::Sql(format!("the planning task failed: {e}")))?
    }

    /// Runs one read-only statement on the SQL runtime and streams its result back. The
    /// statement has `server.sql_timeout` from now for planning and running; past it the query
    /// is cancelled (and its memory freed) whether or not anybody reads the result. The
    /// session's [`LimitsExec`](super::limits::LimitsExec) ends it past the row limit.
    pub async fn stream(&self, sql: &str) -> Result<(SchemaRef, ResultStream), QueryError> {
        let engine = self.clone();
        let sql = sql.to_owned();
        self.start(async move {
            let ctx = engine.session();
            let state = ctx.state();
            let statement = gate::parse(&state, &sql, &engine.limits.gate)?;
            let plan = gate::plan(&state, statement, &engine.limits.gate).await?;
            execute(&ctx, plan).await
        })
        .await
    }

    /// Runs a plan the gate already checked (`gate::plan`, the Postgres extended protocol's
    /// Parse step) in `ctx`, as [`stream`](Self::stream) does.
    pub async fn stream_plan(
        &self,
        ctx: SessionContext,
        plan: datafusion::logical_expr::LogicalPlan,
    ) -> Result<(SchemaRef, ResultStream), QueryError> {
        self.start(async move { execute(&ctx, plan).await }).await
    }

    /// Starts `begin` (planning and starting a query) on the SQL runtime within the deadline,
    /// and pumps its batches into a channel until the deadline, the end, an error, or the
    /// reader going away.
    async fn start<F>(&self, begin: F) -> Result<(SchemaRef, ResultStream), QueryError>
    where
        F: std::future::Future<
                Output = Result<(SchemaRef, datafusion::physical_plan::SendableRecordBatchStream), QueryError>,
            > + Send
            + 'static,
    {
        let timeout = self.limits.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let (schema_tx, schema_rx) = tokio::sync::oneshot::channel();
        // A couple of batches in hand: the query runs ahead of a slow client only that far.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        // Why the query ended early when the channel had no room to say so: the reader finds
        // it after the last batch, so a cut result never reads as a whole one.
        let failure: Arc<std::sync::Mutex<Option<QueryError>>> = Arc::default();
        let failed = failure.clone();
        self.runtime.handle().spawn(async move {
            let begun = tokio::time::timeout_at(deadline, begin)
                .await
                .unwrap_or(Err(QueryError::Timeout(timeout)));
            let mut stream = match begun {
                Ok((schema, stream)) => {
                    let _ = schema_tx.send(Ok(schema));
                    stream
                }
                Err(e) => {
                    let _ = schema_tx.send(Err(e));
                    return;
                }
            };
            let pumped = tokio::time::timeout_at(deadline, async {
                while let Some(batch) = stream.next().await {
                    let failed = batch.is_err();
                    // The client went away: dropping the stream cancels the query.
                    if tx.send(batch.map_err(QueryError::from)).await.is_err() || failed {
                        return;
                    }
                }
            })
            .await;
            if pumped.is_err() {
                // Past the deadline, even with nobody reading: the query is dropped here (its
                // memory with it); a reader still there is told why, if it takes it soon.
                drop(stream);
                *failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(QueryError::Timeout(timeout));
                let _ = tx.try_send(Err(QueryError::Timeout(timeout)));
            }
        });
        let schema = schema_rx
            .await
            .map_err(|_| QueryError::Sql("the query task stopped before answering".into()))??;
        let batches = futures::stream::unfold(Some(rx), move |rx| {
            let failure = failure.clone();
            async move {
                let mut rx = rx?;
                match rx.recv().await {
                    Some(Err(e)) => Some((Err(e), None)),
                    Some(ok) => Some((ok, Some(rx))),
                    None => failure
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take()
                        .map(|e| (Err(e), None)),
                }
            }
        });
        Ok((schema, batches.boxed()))
    }

    /// Runs one read-only statement (on the SQL runtime) and collects its result.
    pub async fn query(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        let (schema, stream) = self.stream(sql).await?;
        let batches: Vec<RecordBatch> = stream.try_collect().await?;
        Ok((schema, batches))
    }

    /// Where the Postgres endpoint serves its connections (their queries run where they are
    /// polled).
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        self.runtime.handle()
    }
}
