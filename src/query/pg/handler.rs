//! Simple and extended query protocol over the engine. Each statement is parsed once (the
//! Postgres-compatible parser, which rewrites catalog queries from psql, Grafana and drivers
//! into ones DataFusion plans), and that parsed statement is either answered here (harmless
//! connection settings, transaction no-ops, a few `SHOW`s) or planned once by the gate in a
//! session of its own. No text is ever parsed a second time.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Expr, ObjectName, Set, Statement, Value};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters;
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::pgwire::api::portal::{Format, Portal};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use datafusion_postgres::pgwire::api::stmt::QueryParser;
use datafusion_postgres::pgwire::api::store::PortalStore;
use datafusion_postgres::pgwire::api::{ClientInfo, ClientPortalStore, Type};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::PgWireBackendMessage;
use datafusion_postgres::pgwire::types::format::FormatOptions;
use futures::{Sink, StreamExt};

use crate::query::engine::{QueryEngine, QueryError};
use crate::query::gate;
use crate::query::nested_text::Nested;

/// `SET`s clients send on connect, answered `SET` and kept on the connection only (never on
/// the engine). Formatting ones (`DateStyle`, `extra_float_digits`, ...) shape this
/// connection's text output.
const HARMLESS_SETTINGS: [&str; 14] = [
    "application_name",
    "extra_float_digits",
    "datestyle",
    "intervalstyle",
    "bytea_output",
    "client_encoding",
    "client_min_messages",
    "search_path",
    "standard_conforming_strings",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "default_transaction_read_only",
    "jit",
];

/// What one parsed statement becomes.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// A query the gate planned.
    Plan(LogicalPlan),
    /// Answered with this command tag and nothing else.
    Tag(&'static str),
    /// A setting shown as one text row: the connection's own value if it set one, else this.
    Show { name: String, value: String },
    /// A harmless `SET`, applied to this connection's settings when executed.
    Set { name: String, value: String },
}

/// The query handlers of every connection (they keep no per-connection state: that lives in
/// the client's metadata).
pub struct PgHandler {
    parser: Arc<PgParser>,
}

/// Parses and prepares statements; the extended protocol's [`QueryParser`].
pub struct PgParser {
    engine: QueryEngine,
    parser: PostgresCompatibilityParser,
}

impl PgHandler {
    pub fn new(engine: QueryEngine) -> PgHandler {
        PgHandler {
            parser: Arc::new(PgParser {
                engine,
                parser: PostgresCompatibilityParser::new(),
            }),
        }
    }
}

impl PgParser {
    fn parse(&self, sql: &str) -> PgWireResult<Vec<Statement>> {
        gate::check_text(sql, &PostgreSqlDialect {}, &self.engine.limits().gate).map_err(user_error)?;
        self.parser
            .parse(sql)
            .map_err(|e| user_error(QueryError::Sql(format!("SQL error: {e}"))))
    }

    /// Classifies and (for queries) plans one statement in `ctx`, a session of its own.
    async fn prepare(&self, ctx: &SessionContext, statement: Statement) -> PgWireResult<Prepared> {
        if let Some(p) = answered_here(&statement)? {
            return Ok(p);
        }
        let state = ctx.state();
        let limits = &self.engine.limits().gate;
        let plan = gate::plan(&state, DfStatement::Statement(Box::new(statement)), limits)
            .await
            .map_err(user_error)?;
        Ok(Prepared::Plan(plan))
    }
}

impl PgHandler {
    /// Runs a prepared statement for `client` in `ctx`, rows formatted as `format` asks.
    async fn execute<C: ClientInfo>(
        &self,
        client: &mut C,
        ctx: SessionContext,
        prepared: Prepared,
        format: &Format,
    ) -> PgWireResult<Response> {
        match prepared {
            Prepared::Tag(tag) => Ok(Response::Execution(Tag::new(tag))),
            Prepared::Set { name, value } => {
                client.metadata_mut().insert(name, value);
                Ok(Response::Execution(Tag::new("SET")))
            }
            Prepared::Show { name, value } => {
                let value = client.metadata().get(&name).cloned().unwrap_or(value);
                let field = FieldInfo::new(name, None, None, Type::TEXT, FieldFormat::Text);
                let fields = Arc::new(vec![field]);
                let mut encoder = DataRowEncoder::new(fields.clone());
                encoder.encode_field(&Some(value))?;
                let row = encoder.take_row();
                Ok(Response::Query(QueryResponse::new(
                    fields,
                    futures::stream::iter([Ok(row)]),
                )))
            }
            Prepared::Plan(plan) => {
                let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
                let engine = &self.parser.engine;
                let (schema, batches) = engine.stream_plan(ctx, plan).await.map_err(user_error)?;
                let schema = Nested::Maps.schema(&schema);
                let fields = Arc::new(arrow_schema_to_pg_fields(&schema, format, Some(options))?);
                let encode_fields = fields.clone();
                let rows = batches
                    .map(move |batch| -> Box<dyn Iterator<Item = PgWireResult<_>> + Send> {
                        let batch = batch.and_then(|b| {
                            Nested::Maps
                                .batch(b)
                                .map_err(|e| QueryError::Sql(format!("a map column as text: {e}")))
                        });
                        match batch {
                            Ok(batch) => encode_recordbatch(encode_fields.clone(), batch),
                            Err(e) => Box::new(std::iter::once(Err(user_error(e)))),
                        }
                    })
                    .flat_map(futures::stream::iter);
                Ok(Response::Query(QueryResponse::new(fields, rows)))
            }
        }
    }
}

/// The statements answered without the engine, and the refusals worth a clearer message
/// than the planner's.
fn answered_here(statement: &Statement) -> PgWireResult<Option<Prepared>> {
    let prepared = match statement {
        Statement::StartTransaction { .. } => Prepared::Tag("BEGIN"),
        Statement::Commit { .. } => Prepared::Tag("COMMIT"),
        Statement::Rollback { .. } => Prepared::Tag("ROLLBACK"),
        Statement::Discard { .. } => Prepared::Tag("DISCARD ALL"),
        Statement::Deallocate { .. } => Prepared::Tag("DEALLOCATE"),
        Statement::Declare { .. } | Statement::Fetch { .. } | Statement::Close { .. } => {
            return Err(user_error(QueryError::Refused(
                "cursors (DECLARE, FETCH, CLOSE) are not supported: page with LIMIT and OFFSET, or read the result \
                 as it streams"
                    .into(),
            )));
        }
        Statement::Set(set) => set_statement(set)?,
        Statement::Reset(_) => {
            return Err(user_error(QueryError::Refused(
                "auditflow is read-only: `RESET` is not allowed (the engine's settings come from the server's \
                 configuration)"
                    .into(),
            )));
        }
        Statement::ShowVariable { variable } => {
            let name = variable
                .iter()
                .map(|i| i.value.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(" ");
            let harmless = HARMLESS_SETTINGS.contains(&name.as_str());
            match postgres_setting(&name).or(harmless.then_some("")) {
                Some(value) => Prepared::Show {
                    name: name.replace(' ', "_"),
                    value: value.to_owned(),
                },
                // DataFusion's own (`SHOW datafusion.execution.batch_size`, `SHOW ALL`): a read
                // of information_schema, planned like any query.
                None => return Ok(None),
            }
        }
        other => match write_verb(other) {
            Some(verb) => return Err(user_error(gate::refused(verb))),
            None => return Ok(None),
        },
    };
    Ok(Some(prepared))
}

/// The verb of a statement that writes or defines something, looking inside `EXPLAIN`: such
/// statements are refused by name here (the planner would refuse them too, some only as
/// "not supported").
fn write_verb(statement: &Statement) -> Option<&'static str> {
    Some(match statement {
        Statement::Explain { statement, .. } => return write_verb(statement),
        Statement::Insert(_) => "INSERT",
        Statement::Update(_) => "UPDATE",
        Statement::Delete(_) => "DELETE",
        Statement::Copy { .. } | Statement::CopyIntoSnowflake { .. } => "COPY",
        Statement::Truncate(_) => "TRUNCATE",
        Statement::Merge(_) => "MERGE",
        Statement::Drop { .. } => "DROP",
        Statement::CreateTable(_) => "CREATE TABLE",
        Statement::CreateView(_) => "CREATE VIEW",
        Statement::CreateIndex(_) => "CREATE INDEX",
        Statement::CreateSchema { .. } => "CREATE SCHEMA",
        Statement::CreateDatabase { .. } => "CREATE DATABASE",
        Statement::CreateFunction(_) => "CREATE FUNCTION",
        Statement::AlterTable(_) => "ALTER TABLE",
        Statement::Grant(_) => "GRANT",
        Statement::Revoke(_) => "REVOKE",
        Statement::Prepare { .. } => "PREPARE",
        Statement::Execute { .. } => "EXECUTE",
        Statement::Unload { .. } => "UNLOAD",
        Statement::Install { .. } | Statement::Load { .. } => "LOAD",
        Statement::AttachDatabase { .. } => "ATTACH",
        _ => return None,
    })
}

/// Values the Postgres endpoint reports for settings clients ask about.
fn postgres_setting(name: &str) -> Option<&'static str> {
    Some(match name {
        "server_version" => "16.0",
        "server_version_num" => "160000",
        "server_encoding" | "client_encoding" => "UTF8",
        "standard_conforming_strings" => "on",
        "transaction_isolation" | "transaction isolation level" => "read committed",
        "transaction_read_only" | "default_transaction_read_only" => "on",
        "timezone" | "time zone" => "UTC",
        "datestyle" => "ISO, MDY",
        "integer_datetimes" => "on",
        "search_path" => "public",
        "max_identifier_length" => "63",
        "is_superuser" => "off",
        _ => return None,
    })
}

/// A `SET`: a harmless setting kept on the connection, the no-op time zone, or a refusal.
fn set_statement(set: &Set) -> PgWireResult<Prepared> {
    let refuse = |what: String| -> PgWireResult<Prepared> {
        Err(user_error(QueryError::Refused(format!(
            "auditflow is read-only: `SET {what}` is not allowed; a connection may set only {} \
             (the engine's settings come from the server's configuration)",
            HARMLESS_SETTINGS.join(", ")
        ))))
    };
    match set {
        Set::SingleAssignment { variable, values, .. } => {
            let name = setting_name(variable);
            if !HARMLESS_SETTINGS.contains(&name.as_str()) {
                return refuse(name);
            }
            let value = values.iter().map(setting_value).collect::<Vec<_>>().join(", ");
            Ok(Prepared::Set { name, value })
        }
        // The engine works in UTC; a client asking for UTC changes nothing.
        Set::SetTimeZone { value, .. } => {
            let zone = setting_value(value);
            if ["utc", "gmt", "etc/utc", "z", "+00:00", "0"].contains(&zone.to_ascii_lowercase().as_str()) {
                Ok(Prepared::Tag("SET"))
            } else {
                refuse(format!("TIME ZONE {zone} (auditflow answers in UTC only)"))
            }
        }
        Set::SetNames { charset_name, .. }
            if ["utf8", "utf-8", "unicode"].contains(&charset_name.value.to_ascii_lowercase().as_str()) =>
        {
            Ok(Prepared::Tag("SET"))
        }
        // Every transaction here is read-only already.
        Set::SetTransaction { .. } => Ok(Prepared::Tag("SET")),
        other => refuse(other.to_string().trim_start_matches("SET ").to_owned()),
    }
}

fn setting_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| part.to_string().trim_matches('"').to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(".")
}

fn setting_value(value: &Expr) -> String {
    match value {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        Expr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}

/// A refusal or query error as the client sees it: a SQLSTATE and the message.
pub fn user_error(e: QueryError) -> PgWireError {
    let code = match &e {
        QueryError::Refused(m) if m.contains("read-only") => "25006",
        QueryError::Refused(_) => "54000",
        QueryError::Timeout(_) => "57014",
        QueryError::TooManyRows(_) => "54000",
        QueryError::Sql(_) => "42601",
    };
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), e.to_string())))
}

#[async_trait]
impl SimpleQueryHandler for PgHandler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = self.parser.parse(query)?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        for statement in statements {
            // Planned and run in one session of its own.
            let ctx = self.parser.engine.session();
            let prepared = self.parser.prepare(&ctx, statement).await?;
            responses.push(self.execute(client, ctx, prepared, &Format::UnifiedText).await?);
        }
        Ok(responses)
    }
}

/// The extended protocol's statement: the text (for logs) and what it was prepared into.
pub type PgStatement = (String, Prepared);

#[async_trait]
impl QueryParser for PgParser {
    type Statement = PgStatement;

    async fn parse_sql<C>(&self, _client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<PgStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut statements = self.parse(sql)?;
        if statements.len() > 1 {
            return Err(user_error(QueryError::Sql(
                "a prepared statement holds one statement".into(),
            )));
        }
        let Some(statement) = statements.pop() else {
            return Ok(None);
        };
        let ctx = self.engine.session();
        Ok(Some((sql.to_owned(), self.prepare(&ctx, statement).await?)))
    }

    fn get_parameter_types(&self, stmt: &PgStatement) -> PgWireResult<Vec<Type>> {
        let Prepared::Plan(plan) = &stmt.1 else {
            return Ok(Vec::new());
        };
        parameter_types(plan)?
            .iter()
            .map(|t| t.as_ref().map_or(Ok(Type::UNKNOWN), into_pg_type))
            .collect()
    }

    fn get_result_schema(&self, stmt: &PgStatement, column_format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        match &stmt.1 {
            Prepared::Plan(plan) => arrow_schema_to_pg_fields(
                &Nested::Maps.schema(plan.schema().as_arrow()),
                column_format.unwrap_or(&Format::UnifiedText),
                None,
            ),
            Prepared::Show { name, .. } => Ok(vec![FieldInfo::new(
                name.clone(),
                None,
                None,
                Type::TEXT,
                FieldFormat::Text,
            )]),
            Prepared::Tag(_) | Prepared::Set { .. } => Ok(Vec::new()),
        }
    }
}

/// The types of `$1`, `$2`, ... in order (`None` where the plan leaves one open).
fn parameter_types(plan: &LogicalPlan) -> PgWireResult<Vec<Option<DataType>>> {
    let types = plan
        .get_parameter_types()
        .map_err(|e| user_error(QueryError::Sql(e.to_string())))?;
    let mut numbered: Vec<(usize, Option<DataType>)> = types
        .into_iter()
        .map(|(id, t)| (id.trim_start_matches('$').parse().unwrap_or(usize::MAX), t))
        .collect();
    numbered.sort_by_key(|(n, _)| *n);
    Ok(numbered.into_iter().map(|(_, t)| t).collect())
}

#[async_trait]
impl ExtendedQueryHandler for PgHandler {
    type Statement = PgStatement;
    type QueryParser = PgParser;

    fn query_parser(&self) -> Arc<PgParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<PgStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = match &portal.statement.statement.1 {
            Prepared::Plan(plan) => {
                let types = parameter_types(plan)?;
                let refs: Vec<Option<&DataType>> = types.iter().map(Option::as_ref).collect();
                let params = deserialize_parameters(portal, &refs)?;
                let bound = plan
                    .clone()
                    .replace_params_with_values(&params)
                    .map_err(|e| user_error(QueryError::Sql(e.to_string())))?;
                Prepared::Plan(bound)
            }
            other => other.clone(),
        };
        let ctx = self.parser.engine.session();
        self.execute(client, ctx, prepared, &portal.result_column_format).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::window::Window;

    async fn prepare(parser: &PgParser, sql: &str) -> Result<Vec<Prepared>, String> {
        let mut out = Vec::new();
        for statement in parser.parse(sql).map_err(|e| e.to_string())? {
            let ctx = parser.engine.session();
            out.push(parser.prepare(&ctx, statement).await.map_err(|e| format!("{e:?}"))?);
        }
        Ok(out)
    }

    /// The gate over the statement forms a Postgres client can send: keyword and option-list
    /// `EXPLAIN`, nested `COPY`, several statements in one string, comments, case and quoting.
    #[tokio::test]
    async fn the_postgres_dialect_gets_the_same_gate() {
        let window = Window::new(std::time::Duration::from_secs(3600));
        let engine = QueryEngine::new(&window);
        engine.install_pg_catalog().unwrap();
        let parser = PgParser {
            engine,
            parser: PostgresCompatibilityParser::new(),
        };
        for sql in [
            "SELECT count(*) FROM audit_events",
            "select 1; select 2",
            "EXPLAIN SELECT * FROM metrics",
            "EXPLAIN (ANALYZE) SELECT 1",
            "SELECT 'COPY x TO ''/tmp/y''' AS text",
            "-- COPY (SELECT 1) TO '/tmp/x'\nSELECT 1",
            "SELECT relname FROM pg_catalog.pg_class",
            "SET application_name = 'psql'",
            "SET extra_float_digits = 3",
            "set DateStyle to 'ISO, MDY'",
            "SET TIME ZONE 'UTC'",
            "SHOW transaction_isolation",
            "SHOW datafusion.execution.batch_size",
            "BEGIN",
            "COMMIT",
            "DISCARD ALL",
        ] {
            prepare(&parser, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        for sql in [
            "COPY (SELECT 'x' AS x) TO '/tmp/auditflow-pg-gate.csv'",
            "copy audit_events to '/tmp/auditflow-pg-gate.csv'",
            "EXPLAIN COPY (SELECT 1) TO '/tmp/auditflow-pg-gate.csv'",
            "EXPLAIN ANALYZE COPY (SELECT 1) TO '/tmp/auditflow-pg-gate.csv'",
            "EXPLAIN (ANALYZE) COPY (SELECT 'x' AS x) TO '/tmp/auditflow-pg-gate.csv'",
            "EXPLAIN (ANALYZE true, VERBOSE true) COPY (SELECT 1) TO '/tmp/auditflow-pg-gate.csv'",
            "explain analyze insert into alerts (id) values ('x')",
            "SELECT 1; COPY (SELECT 1) TO '/tmp/auditflow-pg-gate.csv'",
            "/* c */ INSERT INTO alerts (id) VALUES ('x')",
            "DELETE FROM audit_events",
            "UPDATE metrics SET value = 0",
            "CREATE TABLE t (a INT)",
            "CREATE TABLE t AS SELECT 1",
            "CREATE VIEW v AS SELECT 1",
            "DROP TABLE audit_events",
            "ALTER TABLE audit_events ADD COLUMN x INT",
            "TRUNCATE audit_events",
            "PREPARE p AS SELECT 1",
            "SET datafusion.execution.batch_size = 1",
            "SET \"datafusion\".runtime.memory_limit = '64G'",
            "SET \"datafusion\".\"execution\".\"batch_size\" = 1",
            "SET timezone = '+05:00'",
            "SET TIME ZONE 'Asia/Tokyo'",
            "SET LOCAL datafusion.execution.target_partitions = 64",
            "SET ROLE admin",
            "DECLARE c CURSOR FOR SELECT 1",
            "FETCH 10 FROM c",
        ] {
            let e = prepare(&parser, sql).await.expect_err(sql);
            assert!(
                e.contains("read-only")
                    || e.contains("not allowed")
                    || e.contains("cursors")
                    || e.contains("SQL error"),
                "{sql}: {e}"
            );
        }
        assert!(!std::path::Path::new("/tmp/auditflow-pg-gate.csv").exists());
    }
}
