//! The SQL engine: a DataFusion session over the window's tables, read-only and time-limited.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};

use super::window::Window;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Sql(String),
    #[error("query took longer than {0:?} and was cancelled")]
    Timeout(Duration),
}

/// Answers SQL over the window. Cheap to clone.
#[derive(Clone)]
pub struct QueryEngine {
    ctx: SessionContext,
    timeout: Duration,
}

impl QueryEngine {
    pub fn new(window: &Window) -> QueryEngine {
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("auditflow", "public");
        let ctx = SessionContext::new_with_config(config);
        ctx.register_table("audit_events", window.audit.clone())
            .expect("fresh catalog");
        ctx.register_table("metrics", window.metrics.clone())
            .expect("fresh catalog");
        ctx.register_table("alerts", window.alerts.clone())
            .expect("fresh catalog");
        QueryEngine {
            ctx,
            timeout: Duration::from_secs(30),
        }
    }

    /// Plans a read-only statement without running it (validation of SQL rules).
    pub async fn plan(&self, sql: &str) -> Result<(), QueryError> {
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        self.ctx
            .sql_with_options(sql, options)
            .await
            .map(|_| ())
            .map_err(|e| QueryError::Sql(e.to_string()))
    }

    /// Runs one read-only statement and collects its result.
    pub async fn query(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let run = async {
            let df = self.ctx.sql_with_options(sql, options).await?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let batches = df.collect().await?;
            Ok::<_, datafusion::error::DataFusionError>((schema, batches))
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(e)) => Err(QueryError::Sql(e.to_string())),
            Err(_) => Err(QueryError::Timeout(self.timeout)),
        }
    }
}
