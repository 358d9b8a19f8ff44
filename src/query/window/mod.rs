//! The window store: the last `window.retention` of event time per table, held as Arrow record
//! batches and served to DataFusion through [`WindowTable`], a `TableProvider`.
//!
//! Each batch the pipeline appends (one per Kafka poll) is cut by event-time minute into
//! buckets, with repetitive strings dictionary-encoded and each piece tagged with its oldest and
//! newest event time; a quiet stream's many small pieces are concatenated within their bucket.
//! Whole buckets are evicted once they fall out of the retention, and the oldest batches go
//! first once the table is over its share of `window.max_memory`. Retention is measured against
//! the newest event time seen (never more than five minutes ahead of the wall clock), so a
//! replayed backlog stays queryable instead of expiring on arrival. A scan visits only the
//! buckets its filter on `time` allows ([`pruning`]), skips the batches whose id filter rules
//! out a point lookup, and reads only the projected columns.

mod buckets;
mod dictionary;
mod pruning;
mod table;

use std::sync::Arc;
use std::time::Duration;

pub(crate) use pruning::time_bounds;
pub use table::{BUCKET_US, WindowTable};

/// Columns of repetitive strings, stored dictionary-encoded (a 4-byte key per row instead of
/// the string): the memory targets of docs/PRODUCT.md §9.
/// Audit columns stored as string views: `raw`, unique per row and most of its bytes, is then
/// never copied again after the row is first built (compaction and sealing share its buffers).
pub const AUDIT_VIEW_COLUMNS: &[&str] = &["raw"];

pub const AUDIT_DICTIONARY_COLUMNS: &[&str] = &[
    "type",
    "method",
    "service",
    "organization",
    "environment",
    "cluster_id",
    "resource_type",
    "resource_name",
    "principal",
    "principal_type",
    "auth_mechanism",
    "auth_identifier",
    "operation",
    "authz_via",
    "role",
    "result_status",
    "result_message",
    "client_ip",
    "client_id",
    "resource_app",
    "principal_app",
    "principal_name",
    "principal_team",
    "environment_name",
    "region",
    "cloud",
];
pub const METRICS_DICTIONARY_COLUMNS: &[&str] = &["name", "kind", "cluster_id", "topic", "resource_app"];

/// The three tables of the window.
#[derive(Debug, Clone)]
pub struct Window {
    pub audit: Arc<WindowTable>,
    pub metrics: Arc<WindowTable>,
    pub alerts: Arc<WindowTable>,
}

impl Window {
    pub fn new(retention: Duration) -> Window {
        Window::with_max_memory(retention, usize::MAX)
    }

    /// A window holding at most `max_memory` bytes: 70% for audit events, 25% for metrics, 5%
    /// for alerts; each table evicts its oldest batches beyond its share.
    pub fn with_max_memory(retention: Duration, max_memory: usize) -> Window {
        use crate::event::arrow::{ALERTS_SCHEMA, AUDIT_SCHEMA, METRICS_SCHEMA};
        let share = |percent: usize| max_memory / 100 * percent;
        Window {
            audit: Arc::new(
                WindowTable::with_options(AUDIT_SCHEMA.clone(), retention, AUDIT_DICTIONARY_COLUMNS, share(70))
                    .stored_as_views(AUDIT_VIEW_COLUMNS),
            ),
            metrics: Arc::new(
                WindowTable::with_options(METRICS_SCHEMA.clone(), retention, METRICS_DICTIONARY_COLUMNS, share(25))
                    .stored_as_label_sets(&["labels"]),
            ),
            alerts: Arc::new(WindowTable::with_options(
                ALERTS_SCHEMA.clone(),
                retention,
                &[],
                share(5),
            )),
        }
    }

    /// Rows, bytes and evicted rows of each table, for the service's metrics.
    pub fn stats(&self) -> [crate::telemetry::TableStats; 3] {
        let stats = |table: &'static str, t: &WindowTable| crate::telemetry::TableStats {
            table,
            rows: t.num_rows(),
            bytes: t.num_bytes(),
            evicted_rows: usize::try_from(t.num_evicted_rows()).unwrap_or(usize::MAX),
        };
        [
            stats("audit_events", &self.audit),
            stats("metrics", &self.metrics),
            stats("alerts", &self.alerts),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::arrow::metrics_batch;
    use crate::event::now_us;
    use table::tests::sample;

    /// The result of `sql` as a text table.
    async fn pretty(engine: &crate::query::engine::QueryEngine, sql: &str) -> String {
        let (_, batches) = engine.query(sql).await.unwrap();
        datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn a_query_reads_only_the_batches_in_its_time_range() {
        let window = Window::new(Duration::from_secs(3600));
        let base = now_us() - 30 * 60 * 1_000_000 + 30_000_000;
        for minute in 0..30 {
            let t = base + minute * 60_000_000;
            window.metrics.append(metrics_batch(&[sample(t), sample(t + 1)]), t + 1);
        }
        let engine = crate::query::engine::QueryEngine::new(&window);
        let (_, batches) = engine
            .query("SELECT count(*) AS n FROM metrics WHERE time > now() - INTERVAL '10 minutes'")
            .await
            .unwrap();
        let n = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(n, 20);
        let text = pretty(
            &engine,
            "EXPLAIN SELECT count(*) FROM metrics WHERE time > now() - INTERVAL '10 minutes'",
        )
        .await;
        // 10 of the 30 batches are scanned (5 per partition).
        assert!(text.contains("partitions=2, partition_sizes=[5, 5]"), "{text}");
    }

    #[tokio::test]
    async fn labels_stored_as_label_sets_read_as_maps() {
        use datafusion::arrow::array::AsArray;
        let window = Window::new(Duration::from_secs(3600));
        let t = now_us() - 60_000_000;
        let samples: Vec<_> = (0..6)
            .map(|i| crate::event::MetricSample {
                labels: std::collections::BTreeMap::from([
                    ("kafka.id".to_string(), "lkc-1".to_string()),
                    ("topic".to_string(), format!("t{}", i % 2)),
                ]),
                ..sample(t + i)
            })
            .collect();
        window.metrics.append(metrics_batch(&samples), t + 5);
        let engine = crate::query::engine::QueryEngine::new(&window);
        let text = pretty(
            &engine,
            "SELECT labels['topic'] AS topic, count(*) AS n FROM metrics GROUP BY 1 ORDER BY 1",
        )
        .await;
        assert!(
            text.contains("| t0    | 3 |") && text.contains("| t1    | 3 |"),
            "{text}"
        );
        let (schema, batches) = engine
            .query("SELECT labels, arrow_typeof(labels) AS type FROM metrics LIMIT 1")
            .await
            .unwrap();
        assert_eq!(
            schema.field_with_name("labels").unwrap().data_type(),
            crate::event::arrow::METRICS_SCHEMA
                .field_with_name("labels")
                .unwrap()
                .data_type(),
            "served as the map it was appended as"
        );
        assert!(batches[0].column(1).as_string::<i32>().value(0).starts_with("Map("));
        // As `POST /v1/sql` writes it.
        let mut json = datafusion::arrow::json::LineDelimitedWriter::new(Vec::new());
        json.write(&batches[0]).unwrap();
        json.finish().unwrap();
        let body = String::from_utf8(json.into_inner()).unwrap();
        assert!(body.contains(r#""labels":{"kafka.id":"lkc-1","topic":"t0"}"#), "{body}");
    }
}
