//! `audit_archive`: the compliance archive as a table (docs/PRODUCT.md §5, §6), the columns of
//! `audit_events`, read from the archive's Parquet files.
//!
//! Files live under `date=YYYY-MM-DD/hour=HH/`. A filter on `time` (`time > now() - INTERVAL
//! '30 days'`, folded to a literal before it gets here) becomes a filter on those directories,
//! so only the hours it can match are listed and opened; inside a file, Parquet's row-group
//! statistics on `time` skip the rest.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{col, lit};

use super::window::time_bounds;
use crate::event::arrow::{ARCHIVE_SCHEMA, AUDIT_SCHEMA};

const HOUR_US: i64 = 3_600_000_000;

/// The archive's files as a table.
#[derive(Debug)]
pub struct ArchiveTable {
    inner: ListingTable,
    /// The columns shown: `audit_events`' (SQL) or all of the files' (exports).
    schema: SchemaRef,
}

impl ArchiveTable {
    /// The table over the archive at `table_url` (`file:///dir/`, `az://container/prefix/`),
    /// whose object store is registered with the session under its URL. `kafka_columns` adds
    /// `kafka_topic`, `kafka_partition` and `kafka_offset` after the `audit_events` columns.
    pub fn new(table_url: &str, kafka_columns: bool) -> DfResult<ArchiveTable> {
        let url = ListingTableUrl::parse(table_url)?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![("date".into(), DataType::Utf8), ("hour".into(), DataType::Utf8)]);
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(ARCHIVE_SCHEMA.clone());
        let schema = if kafka_columns {
            ARCHIVE_SCHEMA.clone()
        } else {
            AUDIT_SCHEMA.clone()
        };
        Ok(ArchiveTable {
            inner: ListingTable::try_new(config)?,
            schema,
        })
    }
}

/// `date=..., hour=...` of the hour holding `us`.
fn date_hour(us: i64) -> (String, String) {
    let t = chrono::DateTime::from_timestamp_micros(us.div_euclid(HOUR_US) * HOUR_US).unwrap_or_default();
    (t.format("%Y-%m-%d").to_string(), t.format("%H").to_string())
}

/// Filters on the `date` and `hour` directories equivalent to the time range of `filters`
/// (zero-padded, so text order is time order).
fn partition_filters(filters: &[Expr]) -> Vec<Expr> {
    let (from, to) = time_bounds(filters);
    let mut out = Vec::new();
    if from != i64::MIN {
        let (d, h) = date_hour(from);
        out.push(
            col("date")
                .gt(lit(d.clone()))
                .or(col("date").eq(lit(d)).and(col("hour").gt_eq(lit(h)))),
        );
    }
    if to != i64::MAX {
        let (d, h) = date_hour(to);
        out.push(
            col("date")
                .lt(lit(d.clone()))
                .or(col("date").eq(lit(d)).and(col("hour").lt_eq(lit(h)))),
        );
    }
    out
}

#[async_trait]
impl TableProvider for ArchiveTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Filters prune directories and row groups; they are still applied above the scan.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        // The shown columns come first in the files' schema, so their indices are the same;
        // the directory columns (after them) are never shown.
        let all: Vec<usize> = (0..self.schema.fields().len()).collect();
        let projection = projection.cloned().unwrap_or(all);
        let mut pushed = filters.to_vec();
        pushed.extend(partition_filters(filters));
        self.inner.scan(state, Some(&projection), &pushed, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::common::ScalarValue;

    #[test]
    fn time_ranges_become_hour_directories() {
        let ts = |v: i64| lit(ScalarValue::TimestampMicrosecond(Some(v), Some("UTC".into())));
        // 2026-12-02T17:30:00Z .. 2026-12-03T01:00:00Z
        let from = 1_796_232_600_000_000;
        let to = from + 7 * HOUR_US + 30 * 60_000_000;
        let shown: Vec<String> = partition_filters(&[col("time").gt_eq(ts(from)).and(col("time").lt(ts(to)))])
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "date > Utf8(\"2026-12-02\") OR date = Utf8(\"2026-12-02\") AND hour >= Utf8(\"17\")",
                "date < Utf8(\"2026-12-03\") OR date = Utf8(\"2026-12-03\") AND hour <= Utf8(\"01\")",
            ]
        );
        assert!(partition_filters(&[col("principal").eq(lit("x"))]).is_empty());
    }
}
