//! The one way a statement reaches the engine, for every front end (HTTP, Postgres simple and
//! extended protocol, `auditflow sql`, `sql` rules):
//!
//! 1. the text is bounded (bytes, then tokens, before anything recursive runs);
//! 2. it is parsed once, and the parsed statement's expression depth is bounded (DataFusion's
//!    planner recurses per level: `SELECT 1+1+...+1` with 2,000 terms overflowed a thread);
//! 3. that same parsed statement is planned once and the plan checked with DataFusion's own
//!    read-only [`SQLOptions`] (no DDL, no DML, no statements; `COPY`, `CREATE`, `INSERT`, `SET`
//!    and an `EXPLAIN ANALYZE` of any of them are refused, nothing touches the disk);
//! 4. the plan's size is bounded, as a tree: a chain of CTEs that each use the previous one
//!    twice is a small DAG whose tree (what the optimiser walks) doubles per CTE.
//!
//! There is no second parse of the text anywhere, so what is checked is what runs.

use std::collections::HashMap;
use std::ops::ControlFlow;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Expr, ObjectName, ObjectNamePart, Query, Statement, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::Dialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use super::engine::QueryError;

pub use crate::config::GateLimits;

/// Queries only: no DDL, no DML, no statements (`SET`, transactions, prepared statements).
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Refuses text too long, or with too many tokens to parse safely.
pub fn check_text(sql: &str, dialect: &dyn Dialect, limits: &GateLimits) -> Result<(), QueryError> {
    if sql.len() > limits.max_query_bytes {
        return Err(QueryError::Refused(format!(
            "the statement is {} bytes, over the {}-byte limit (server.sql_max_query_bytes)",
            sql.len(),
            limits.max_query_bytes
        )));
    }
    let tokens = Tokenizer::new(dialect, sql)
        .tokenize()
        .map_err(|e| QueryError::Sql(format!("SQL error: {e}")))?;
    let significant = tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_))).count();
    if significant > limits.max_tokens {
        return Err(QueryError::Refused(format!(
            "the statement has {significant} tokens, over the limit of {}",
            limits.max_tokens
        )));
    }
    Ok(())
}

/// Parses one statement in the session's dialect (DataFusion's parser: HTTP, `auditflow sql`,
/// `sql` rules), after [`check_text`].
pub fn parse(state: &SessionState, sql: &str, limits: &GateLimits) -> Result<DfStatement, QueryError> {
    let dialect = state.config().options().sql_parser.dialect;
    let generic = datafusion::sql::sqlparser::dialect::GenericDialect {};
    check_text(sql, &generic, limits)?;
    state
        .sql_to_statement(sql, &dialect)
        .map_err(|e| QueryError::Sql(e.to_string()))
}

/// Refuses a parsed statement nested deeper than `max_depth`, stopping at that depth.
pub fn check_depth(statement: &Statement, max_depth: usize) -> Result<(), QueryError> {
    struct Depth {
        now: usize,
        max: usize,
    }
    impl Depth {
        fn enter(&mut self) -> ControlFlow<()> {
            self.now += 1;
            if self.now > self.max {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        fn leave(&mut self) -> ControlFlow<()> {
            self.now -= 1;
            ControlFlow::Continue(())
        }
    }
    impl Visitor for Depth {
        type Break = ();
        fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.enter()
        }
        fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.leave()
        }
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.enter()
        }
        fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.leave()
        }
    }
    let mut depth = Depth { now: 0, max: max_depth };
    match statement.visit(&mut depth) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(QueryError::Refused(format!(
            "the statement nests expressions or subqueries more than {max_depth} deep"
        ))),
    }
}

/// Refuses a statement whose CTEs, expanded where they are used, would pass `max` query
/// blocks: DataFusion plans each use of a CTE as a copy of it, and rewrites the copies while
/// planning, so `c1 AS (SELECT * FROM c0 UNION ALL SELECT * FROM c0), c2 AS (... c1 ... c1)`
/// doubles the work per CTE before any plan exists to measure.
pub fn check_cte_expansion(statement: &Statement, max: u64) -> Result<(), QueryError> {
    /// The expanded size of the CTEs `node` refers to.
    fn references<V: Visit>(node: &V, sizes: &HashMap<String, u64>) -> u64 {
        struct Refs<'a> {
            sizes: &'a HashMap<String, u64>,
            total: u64,
        }
        impl Visitor for Refs<'_> {
            type Break = ();
            fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<()> {
                if let [ObjectNamePart::Identifier(id)] = name.0.as_slice()
                    && let Some(size) = self.sizes.get(&id.value.to_ascii_lowercase())
                {
                    self.total = self.total.saturating_add(*size);
                }
                ControlFlow::Continue(())
            }
        }
        let mut refs = Refs { sizes, total: 0 };
        let _ = node.visit(&mut refs);
        refs.total
    }
    struct Ctes {
        sizes: HashMap<String, u64>,
        worst: u64,
    }
    impl Visitor for Ctes {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            if let Some(with) = &query.with {
                for cte in &with.cte_tables {
                    let size = 1u64.saturating_add(references(&*cte.query, &self.sizes));
                    self.worst = self.worst.max(size);
                    self.sizes.insert(cte.alias.name.value.to_ascii_lowercase(), size);
                }
                let body = 1u64.saturating_add(references(&*query.body, &self.sizes));
                self.worst = self.worst.max(body);
            }
            ControlFlow::Continue(())
        }
    }
    let mut ctes = Ctes {
        sizes: HashMap::new(),
        worst: 0,
    };
    let _ = statement.visit(&mut ctes);
    if ctes.worst > max {
        return Err(QueryError::Refused(format!(
            "the query expands to more than {max} query blocks (each use of a CTE is planned as a copy of it)"
        )));
    }
    Ok(())
}

/// The statement without DataFusion's own extensions, which are all writes or settings.
fn sql_statement(statement: &DfStatement) -> Result<Option<&Statement>, QueryError> {
    match statement {
        DfStatement::Statement(s) => Ok(Some(s)),
        DfStatement::Explain(e) => sql_statement(&e.statement),
        DfStatement::CopyTo(_) => Err(refused("COPY")),
        DfStatement::CreateExternalTable(_) => Err(refused("CREATE EXTERNAL TABLE")),
        DfStatement::Reset(_) => Err(refused("RESET")),
    }
}

pub fn refused(verb: &str) -> QueryError {
    QueryError::Refused(format!(
        "auditflow is read-only: `{verb}` is not allowed (queries only)"
    ))
}

/// Plans `statement` once and checks the plan: read-only, and not too large.
pub async fn plan(
    state: &SessionState,
    statement: DfStatement,
    limits: &GateLimits,
) -> Result<LogicalPlan, QueryError> {
    if let Some(s) = sql_statement(&statement)? {
        check_depth(s, limits.max_depth)?;
        // A query block plans into a handful of nodes at least.
        check_cte_expansion(s, (limits.max_plan_nodes / 20) as u64)?;
    }
    let plan = state
        .statement_to_plan(statement)
        .await
        .map_err(|e| QueryError::Sql(e.to_string()))?;
    read_only().verify_plan(&plan).map_err(|e| {
        QueryError::Refused(format!(
            "auditflow is read-only: {}",
            e.to_string().trim_start_matches("Error during planning: ")
        ))
    })?;
    check_plan_size(&plan, limits.max_plan_nodes)?;
    Ok(plan)
}

/// Counts the plan's nodes as a tree (subqueries included), stopping past `max`.
pub fn check_plan_size(plan: &LogicalPlan, max: usize) -> Result<(), QueryError> {
    let mut nodes = 0usize;
    let _ = plan.apply_with_subqueries(|_| {
        nodes += 1;
        Ok(if nodes > max {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    if nodes > max {
        return Err(QueryError::Refused(format!(
            "the query plan has more than {max} nodes (a CTE used many times is planned once per use)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn check(sql: &str) -> Result<(), QueryError> {
        let config = datafusion::prelude::SessionConfig::new().with_information_schema(true);
        let ctx = SessionContext::new_with_config(config);
        ctx.sql("CREATE TABLE audit_events (id VARCHAR, n BIGINT)")
            .await
            .unwrap();
        let state = ctx.state();
        let limits = GateLimits::default();
        let statement = parse(&state, sql, &limits)?;
        plan(&state, statement, &limits).await.map(|_| ())
    }

    #[tokio::test]
    async fn only_queries_pass_whatever_the_form() {
        for sql in [
            "SELECT 1",
            "select id from audit_events where n > 1",
            "EXPLAIN SELECT * FROM audit_events",
            "EXPLAIN ANALYZE SELECT count(*) FROM audit_events",
            "EXPLAIN (FORMAT TREE) SELECT 1",
            "WITH t AS (SELECT 1 AS x) SELECT * FROM t",
            "SELECT 1 -- COPY x TO '/tmp/y'",
            "/* INSERT INTO audit_events VALUES ('x', 1) */ SELECT 2",
            "SHOW TABLES",
            "SELECT 'COPY (SELECT 1) TO ''/tmp/x''' AS s",
        ] {
            check(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        for sql in [
            "COPY (SELECT 'x' AS x) TO '/tmp/auditflow-gate-test.csv'",
            "copy audit_events to '/tmp/auditflow-gate-test.parquet'",
            "EXPLAIN COPY (SELECT 1) TO '/tmp/auditflow-gate-test.csv'",
            "EXPLAIN ANALYZE COPY (SELECT 1) TO '/tmp/auditflow-gate-test.csv'",
            "EXPLAIN (ANALYZE) COPY (SELECT 'x' AS x) TO '/tmp/auditflow-gate-test.csv'",
            "EXPLAIN (ANALYZE true, VERBOSE) COPY (SELECT 1) TO '/tmp/auditflow-gate-test.csv'",
            "EXPLAIN ANALYZE INSERT INTO audit_events VALUES ('x', 1)",
            "explain analyze verbose insert into audit_events values ('x', 1)",
            "INSERT INTO audit_events VALUES ('x', 1)",
            "DELETE FROM audit_events",
            "UPDATE audit_events SET n = 0",
            "CREATE TABLE t (a INT)",
            "CREATE TABLE t AS SELECT 1",
            "CREATE VIEW v AS SELECT 1",
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
            "DROP TABLE audit_events",
            "DROP VIEW IF EXISTS v",
            "SET datafusion.execution.batch_size = 1",
            "SET \"datafusion\".runtime.memory_limit = '64G'",
            "set datafusion.runtime.memory_limit = '64G'",
            "SET timezone = '+05:00'",
            "SET TIME ZONE 'UTC'",
            "RESET datafusion.execution.batch_size",
            "PREPARE p AS SELECT 1",
            "EXECUTE p",
            "DEALLOCATE p",
            "BEGIN",
            "SELECT 1; COPY (SELECT 1) TO '/tmp/auditflow-gate-test.csv'",
            "SELECT 1; SELECT 2",
        ] {
            let e = check(sql).await.expect_err(sql);
            assert!(matches!(e, QueryError::Refused(_) | QueryError::Sql(_)), "{sql}: {e}");
        }
        assert!(!std::path::Path::new("/tmp/auditflow-gate-test.csv").exists());
        assert!(!std::path::Path::new("/tmp/auditflow-gate-test.parquet").exists());
        let e = check("EXPLAIN (ANALYZE) COPY (SELECT 'x' AS x) TO '/tmp/auditflow-gate-test.csv'")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("read-only"), "{e}");
    }

    #[tokio::test]
    async fn deep_long_and_exploding_statements_are_refused_before_planning() {
        let terms = vec!["1"; 2000].join("+");
        let e = check(&format!("SELECT {terms}")).await.unwrap_err();
        assert!(e.to_string().contains("deep"), "{e}");
        let e = check(&format!("SELECT {}", vec!["1"; 30_000].join("+")))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("tokens"), "{e}");
        let e = check(&format!("SELECT '{}'", "x".repeat(300_000))).await.unwrap_err();
        assert!(e.to_string().contains("bytes"), "{e}");
        let e = check(&format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000)))
            .await
            .unwrap_err();
        assert!(matches!(e, QueryError::Sql(_) | QueryError::Refused(_)), "{e}");
        // Each CTE uses the one before twice: 2^40 nodes as a tree.
        let mut sql = String::from("WITH c0 AS (SELECT 1 AS x)");
        for i in 1..=40 {
            sql.push_str(&format!(
                ", c{i} AS (SELECT x FROM c{} UNION ALL SELECT x FROM c{})",
                i - 1,
                i - 1
            ));
        }
        sql.push_str(" SELECT count(*) FROM c40");
        let e = check(&sql).await.unwrap_err();
        assert!(e.to_string().contains("expands to more than"), "{e}");
        // The same chain inside a subquery.
        let e = check(&format!("SELECT * FROM ({sql}) AS t")).await.unwrap_err();
        assert!(e.to_string().contains("expands to more than"), "{e}");
        // CTEs used a few times each are fine.
        check("WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a UNION ALL SELECT x FROM a) SELECT * FROM b, b AS b2")
            .await
            .unwrap();
        // Moderate nesting still works.
        check(&format!("SELECT {}", vec!["1"; 150].join("+"))).await.unwrap();
    }
}
