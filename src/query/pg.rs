//! The PostgreSQL wire protocol front end (`server.pg_listen`), so `psql`, Grafana's PostgreSQL
//! data source and any Postgres driver can query the window.
//!
//! The protocol (simple and extended query, catalog queries) comes from `datafusion-postgres`
//! (pgwire over the same DataFusion session as `POST /v1/sql`, with its `pg_catalog` and
//! `version()` / `current_database()` functions). What is ours: the accept loop (bound address,
//! shutdown) on the SQL runtime, the optional password, and a read-only gate in front of every
//! statement; the row limit and timeout come with the session (`query::limits`).

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire::api::auth::cleartext::CleartextPasswordAuthStartupHandler;
use datafusion_postgres::pgwire::api::auth::noop::NoopStartupHandler;
use datafusion_postgres::pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use datafusion_postgres::pgwire::api::results::Response;
use datafusion_postgres::pgwire::api::{ClientInfo, PgWireServerHandlers};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::{DfSessionService, QueryHook};
use tokio_util::sync::CancellationToken;

use super::engine::QueryEngine;
use crate::config::Secret;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("postgres endpoint on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("setting up pg_catalog: {0}")]
    Catalog(String),
}

/// Rejects every statement that is not a query, `EXPLAIN`, `SHOW`, a harmless `SET`, or
/// transaction/cursor control, before anything else sees it.
struct ReadOnly;

/// Why `statement` may not run, if it may not.
fn refusal(statement: &Statement) -> Option<String> {
    let allowed = matches!(
        statement,
        Statement::Query(_)
            | Statement::Explain { .. }
            | Statement::ExplainTable { .. }
            | Statement::ShowTables { .. }
            | Statement::ShowColumns { .. }
            | Statement::ShowVariable { .. }
            | Statement::ShowVariables { .. }
            | Statement::Set(_)
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Declare { .. }
            | Statement::Fetch { .. }
            | Statement::Close { .. }
            | Statement::Discard { .. }
            | Statement::Deallocate { .. }
    );
    let text = statement.to_string();
    if !allowed {
        let verb: String = text.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        return Some(format!(
            "auditflow is read-only: `{verb}` is not allowed (queries only)"
        ));
    }
    if matches!(statement, Statement::Set(_)) && text.to_ascii_lowercase().contains("datafusion.") {
        return Some("auditflow is read-only: engine settings (datafusion.*) cannot be changed".into());
    }
    if matches!(statement, Statement::Explain { analyze: true, .. }) {
        // EXPLAIN ANALYZE runs the statement it explains: only for queries.
        if let Statement::Explain { statement, .. } = statement {
            return refusal(statement);
        }
    }
    None
}

fn read_only_error(message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), "25006".into(), message)))
}

#[async_trait]
impl QueryHook for ReadOnly {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        refusal(statement).map(|m| Err(read_only_error(m)))
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        refusal(statement).map(|m| Err(read_only_error(m)))
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _logical_plan: &LogicalPlan,
        _params: &ParamValues,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        refusal(statement).map(|m| Err(read_only_error(m)))
    }
}

/// Any user and database, no password.
struct Open;

impl NoopStartupHandler for Open {}

/// The configured password, whatever the user name.
#[derive(Debug)]
struct ConfiguredPassword(Secret);

#[async_trait]
impl AuthSource for ConfiguredPassword {
    async fn get_password(&self, _login: &LoginInfo) -> PgWireResult<Password> {
        Ok(Password::new(None, self.0.expose().as_bytes().to_vec()))
    }
}

struct Handlers<S> {
    session: Arc<DfSessionService>,
    startup: Arc<S>,
}

impl<S: StartupHandler + 'static> PgWireServerHandlers for Handlers<S> {
    fn simple_query_handler(&self) -> Arc<impl datafusion_postgres::pgwire::api::query::SimpleQueryHandler> {
        self.session.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl datafusion_postgres::pgwire::api::query::ExtendedQueryHandler> {
        self.session.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

/// Binds `addr` and serves until `shutdown`; returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    engine: &QueryEngine,
    password: Option<Secret>,
    shutdown: CancellationToken,
) -> Result<SocketAddr, PgError> {
    let ctx = engine.session().clone();
    setup_pg_catalog(&ctx, "auditflow", EmptyContextProvider).map_err(|e| PgError::Catalog(e.to_string()))?;
    let hooks: Vec<Arc<dyn QueryHook>> = vec![
        Arc::new(ReadOnly),
        Arc::new(CursorStatementHook),
        Arc::new(SetShowHook),
        Arc::new(TransactionStatementHook),
    ];
    let session = Arc::new(DfSessionService::new_with_hooks(Arc::new(ctx), hooks));
    let bind_error = |source| PgError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    // Connections are served on the SQL runtime: their queries execute where they are polled,
    // so a heavy query from psql or Grafana never occupies the pipeline's workers.
    let runtime = engine.runtime();
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener).map_err(bind_error)?
    };
    match password {
        None => {
            let handlers = Arc::new(Handlers {
                session,
                startup: Arc::new(Open),
            });
            runtime.spawn(accept(listener, handlers, shutdown));
        }
        Some(password) => {
            let startup = CleartextPasswordAuthStartupHandler::new(
                ConfiguredPassword(password),
                DefaultServerParameterProvider::default(),
            );
            let handlers = Arc::new(Handlers {
                session,
                startup: Arc::new(startup),
            });
            runtime.spawn(accept(listener, handlers, shutdown));
        }
    }
    tracing::info!(%bound, "postgres endpoint listening");
    Ok(bound)
}

async fn accept<H: PgWireServerHandlers + Send + Sync + 'static>(
    listener: tokio::net::TcpListener,
    handlers: Arc<H>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let handlers = handlers.clone();
                    tokio::spawn(async move {
                        if let Err(e) = datafusion_postgres::pgwire::tokio::process_socket(socket, None, handlers).await {
                            tracing::debug!(%peer, error = %e, "postgres connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "postgres endpoint: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn check(sql: &str) -> Option<String> {
        let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        refusal(&statements[0])
    }

    #[test]
    fn only_reads_pass() {
        assert_eq!(check("SELECT 1"), None);
        assert_eq!(check("SHOW TABLES"), None);
        assert_eq!(check("EXPLAIN SELECT * FROM audit_events"), None);
        assert_eq!(check("SET statement_timeout = 1000"), None);
        assert_eq!(check("BEGIN"), None);
        for sql in [
            "INSERT INTO alerts VALUES (1)",
            "DELETE FROM audit_events",
            "UPDATE metrics SET value = 0",
            "CREATE TABLE t (a int)",
            "DROP TABLE audit_events",
            "COPY audit_events TO '/tmp/x'",
            "SET datafusion.execution.batch_size = 1",
            "EXPLAIN ANALYZE DELETE FROM audit_events",
        ] {
            let refused = check(sql).unwrap_or_else(|| panic!("{sql} passed"));
            assert!(refused.contains("read-only"), "{refused}");
        }
    }
}
