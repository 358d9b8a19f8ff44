//! Rule predicates: SQL boolean expressions over the table columns, compiled once with
//! DataFusion into a physical expression and evaluated on each Arrow batch.

use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::execution::context::SessionContext;
use datafusion::physical_expr::PhysicalExpr;

/// A compiled `where:`.
#[derive(Debug, Clone)]
pub struct Predicate {
    pub text: String,
    /// Compiled against the table's schema narrowed to [`Predicate::columns`].
    expr: Arc<dyn PhysicalExpr>,
    /// The columns the expression reads, in the table's order: it is evaluated on a batch of
    /// these alone. DataFusion evaluates the right side of a selective `AND` on the rows the
    /// left side kept, filtering the whole batch first; handed every column, it filtered all
    /// thirty of them for the two or three it reads.
    columns: Vec<String>,
}

impl Predicate {
    /// Compiles `sql` against `schema`. Errors name the unknown column or the type problem.
    pub fn compile(ctx: &SessionContext, sql: &str, schema: &SchemaRef) -> Result<Predicate, String> {
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| e.to_string())?;
        let expr = ctx.parse_sql_expr(sql, &df_schema).map_err(|e| clean(e.to_string()))?;
        let mut read = Vec::new();
        for column in expr.column_refs() {
            if schema.field_with_name(&column.name).is_err() {
                return Err(format!("unknown column `{}`", column.name));
            }
            read.push(column.name.clone());
        }
        let narrowed = Schema::new(
            schema
                .fields()
                .iter()
                .filter(|f| read.contains(f.name()))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let df_narrowed = DFSchema::try_from(narrowed.clone()).map_err(|e| e.to_string())?;
        let physical = ctx
            .create_physical_expr(expr, &df_narrowed)
            .map_err(|e| clean(e.to_string()))?;
        let data_type = physical.data_type(&narrowed).map_err(|e| clean(e.to_string()))?;
        if data_type != DataType::Boolean {
            return Err(format!("`{sql}` is {data_type}, not a boolean condition"));
        }
        Ok(Predicate {
            text: sql.to_owned(),
            expr: physical,
            columns: narrowed.fields().iter().map(|f| f.name().clone()).collect(),
        })
    }

    /// The columns the expression reads, in the table's order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Rows for which the predicate is true (NULL counts as false).
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<BooleanArray, String> {
        if batch.num_rows() == 0 {
            return Ok(BooleanArray::from(Vec::<bool>::new()));
        }
        let schema = batch.schema();
        let indices = self
            .columns
            .iter()
            .map(|c| {
                schema
                    .index_of(c)
                    .map_err(|_| format!("`{}` reads `{c}`, which the batch lacks", self.text))
            })
            .collect::<Result<Vec<usize>, String>>()?;
        let narrowed = batch.project(&indices).map_err(|e| e.to_string())?;
        let value = self.expr.evaluate(&narrowed).map_err(|e| e.to_string())?;
        let array = value.into_array(batch.num_rows()).map_err(|e| e.to_string())?;
        let mask = array
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| format!("`{}` did not evaluate to booleans", self.text))?;
        if mask.null_count() == 0 {
            Ok(mask.clone())
        } else {
            Ok(mask.iter().map(|v| Some(v.unwrap_or(false))).collect())
        }
    }
}

fn clean(message: String) -> String {
    message
        .replace("Schema error: ", "")
        .replace("Error during planning: ", "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::AuditRow;
    use crate::event::arrow::{AUDIT_SCHEMA, audit_batch};

    fn rows() -> RecordBatch {
        let base = AuditRow {
            id: "1".into(),
            event_type: "t".into(),
            raw: crate::event::Raw::from(&b"{}"[..]),
            ..AuditRow::default()
        };
        audit_batch(&[
            AuditRow {
                result_status: Some("SUCCESS".into()),
                principal: Some("User:sa-1".into()),
                ..base.clone()
            },
            AuditRow {
                result_status: Some("UNAUTHENTICATED".into()),
                principal: Some("User:sa-2".into()),
                ..base.clone()
            },
            AuditRow {
                granted: Some(false),
                principal: Some("User:bob".into()),
                ..base
            },
        ])
    }

    #[test]
    fn evaluates_sql_on_batches() {
        let ctx = SessionContext::new();
        let p = Predicate::compile(
            &ctx,
            "result_status <> 'SUCCESS' AND principal LIKE 'User:sa-%'",
            &AUDIT_SCHEMA,
        )
        .unwrap();
        let mask = p.evaluate(&rows()).unwrap();
        assert_eq!(
            mask.iter().collect::<Vec<_>>(),
            vec![Some(false), Some(true), Some(false)]
        );
        let p = Predicate::compile(&ctx, "granted = false", &AUDIT_SCHEMA).unwrap();
        assert_eq!(p.evaluate(&rows()).unwrap().true_count(), 1);
    }

    /// The columns a predicate does not read are left out of its evaluation, not its result.
    #[test]
    fn a_selective_and_evaluates_as_on_the_whole_batch() {
        let ctx = SessionContext::new();
        let rows: Vec<AuditRow> = (0..1000)
            .map(|i| AuditRow {
                id: format!("e{i}"),
                event_type: if i % 50 == 0 { "auth" } else { "other" }.into(),
                principal: Some(format!("User:sa-{}", i % 7).into()),
                resource_name: Some(format!("topic-{i}").into()),
                raw: crate::event::Raw::from(&b"{}"[..]),
                ..AuditRow::default()
            })
            .collect();
        let batch = audit_batch(&rows);
        let p = Predicate::compile(&ctx, "principal = 'User:sa-3' AND type = 'auth'", &AUDIT_SCHEMA).unwrap();
        assert_eq!(p.columns, ["type", "principal"], "only what it reads, in table order");
        let mask = p.evaluate(&batch).unwrap();
        let expected: Vec<bool> = (0..1000).map(|i| i % 50 == 0 && i % 7 == 3).collect();
        assert_eq!(mask.iter().map(Option::unwrap).collect::<Vec<_>>(), expected);
        assert!(mask.true_count() > 0);
    }

    /// A condition naming no column still answers one value per row.
    #[test]
    fn a_condition_without_columns_covers_every_row() {
        let ctx = SessionContext::new();
        let p = Predicate::compile(&ctx, "1 = 1", &AUDIT_SCHEMA).unwrap();
        assert!(p.columns.is_empty());
        assert_eq!(p.evaluate(&rows()).unwrap().true_count(), 3);
        let p = Predicate::compile(&ctx, "1 = 2", &AUDIT_SCHEMA).unwrap();
        assert_eq!(p.evaluate(&rows()).unwrap().len(), 3);
    }

    #[test]
    fn unknown_columns_and_non_booleans_are_rejected() {
        let ctx = SessionContext::new();
        let err = Predicate::compile(&ctx, "no_such_column = 'x'", &AUDIT_SCHEMA).unwrap_err();
        assert!(err.contains("no_such_column"), "{err}");
        let err = Predicate::compile(&ctx, "principal", &AUDIT_SCHEMA).unwrap_err();
        assert!(err.contains("boolean"), "{err}");
        assert!(Predicate::compile(&ctx, "principal = ", &AUDIT_SCHEMA).is_err());
    }
}
