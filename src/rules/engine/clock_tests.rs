use super::tests::{denied_row, rules_of};
use super::*;
use crate::event::AuditRow;
use crate::event::arrow::audit_batch;
use crate::rules::clock::EventClock;

const S: i64 = 1_000_000;

fn denied(t_s: i64, partition: i32) -> AuditRow {
    denied_row(t_s * S, format!("e{t_s}-{partition}"))
}

/// A burst spread over three partitions, read one partition at a time (a backlog): with one
/// clock per table the partition read first runs ahead and the others' events are late;
/// with a clock per partition the burst is counted whole, at the time it happened.
#[test]
fn a_burst_read_partition_by_partition_counts_whole_at_its_event_time() {
    let text = "groups:\n  - name: g\n    rules:\n      - id: burst\n        kind: count\n        where: \"granted = false\"\n        window: 5m\n        threshold: 12\n        severity: low\n        summary: s\n";
    let load = || rules_of(text);
    // Partition p: four failures at 100..103 s, and p 0 has traffic ten minutes later.
    let partition = |p: i32| {
        let mut rows: Vec<AuditRow> = (0..4).map(|i| denied(100 + i, p)).collect();
        if p == 0 {
            rows.push(AuditRow {
                granted: Some(true),
                ..denied(700, 0)
            });
        }
        rows
    };

    let mut single_clock = RuleEngine::new(load());
    let fired: usize = (0..3)
        .map(|p| {
            single_clock
                .evaluate(Source::Audit, &audit_batch(&partition(p)))
                .0
                .len()
        })
        .sum();
    assert_eq!(fired, 0, "one clock per table misses it: the defect this fixes");

    let mut engine = RuleEngine::new(load());
    let topic: Arc<str> = Arc::from("audit");
    let mut clock = EventClock::new(std::time::Duration::from_secs(30), std::time::Duration::ZERO);
    for p in 0..3 {
        clock.assign(&topic, p, 0);
    }
    let mut alerts = Vec::new();
    for p in 0..3 {
        let rows = partition(p);
        for r in &rows {
            clock.observe(&topic, p, r.time_us, 0);
        }
        alerts.extend(
            engine
                .ingest(Source::Audit, Some(audit_batch(&rows)), clock.watermark(0))
                .0,
        );
    }
    // Every partition may still send more of second 103: it waits, and so does 700 s.
    assert!(alerts.is_empty(), "{alerts:?}");
    assert_eq!(engine.num_buffered(), [4, 0], "second 103 of each partition, and 700 s");
    // Once the partitions are quiet for the idle timeout, the rest is evaluated in order.
    let alerts = engine.ingest(Source::Audit, None, clock.watermark(30 * S)).0;
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert_eq!(alerts[0].status, crate::event::AlertStatus::Firing);
    assert_eq!(alerts[0].value, 12.0);
    assert_eq!(
        alerts[0].time_us,
        103 * S,
        "the alert carries the incident's event time"
    );
    assert_eq!(alerts[1].status, crate::event::AlertStatus::Resolved);
    assert_eq!(
        alerts[1].time_us,
        700 * S,
        "resolved when the window moved past the burst"
    );
    assert_eq!(engine.num_buffered(), [0, 0]);
}

/// Rows wait for the rules without `raw` unless a rule reads it: a rule over `raw` still
/// sees it through the reorder buffer, and one that does not gets the same rows, emptied.
#[test]
fn raw_waits_for_the_rules_only_when_a_rule_reads_it() {
    let rule = |id: &str, condition: &str| {
        format!(
            "      - id: {id}\n        kind: match\n        where: \"{condition}\"\n        severity: low\n        summary: s\n"
        )
    };
    let text = format!(
        "groups:\n  - name: g\n    rules:\n{}{}",
        rule("needle", "raw LIKE '%needle%'"),
        rule("denied", "granted = false")
    );
    let load = rules_of;
    let rules = load(&text);
    let reads: Vec<(&str, bool)> = rules.iter().map(|r| (r.meta.id.as_str(), r.meta.reads_raw())).collect();
    assert_eq!(reads, [("needle", true), ("denied", false)]);

    let rows = [AuditRow {
        raw: crate::event::Raw::from(&br#"{"data":"a needle"}"#[..]),
        ..denied(100, 0)
    }];
    let topic: Arc<str> = Arc::from("audit");
    let run = |mut engine: RuleEngine| {
        let mut clock = EventClock::new(std::time::Duration::from_secs(30), std::time::Duration::ZERO);
        clock.assign(&topic, 0, 0);
        clock.observe(&topic, 0, rows[0].time_us, 0);
        let mut ids: Vec<String> = engine
            .ingest(Source::Audit, Some(audit_batch(&rows)), clock.watermark(0))
            .0
            .into_iter()
            .chain(engine.ingest(Source::Audit, None, clock.watermark(30 * S)).0)
            .map(|a| a.rule_id)
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(run(RuleEngine::new(rules)), ["denied", "needle"]);
    let only_denied = load(&text.replace("raw LIKE '%needle%'", "principal = 'nobody'"));
    assert!(only_denied.iter().all(|r| !r.meta.reads_raw()));
    assert_eq!(run(RuleEngine::new(only_denied)), ["denied"]);

    let emptied = without_raw(audit_batch(&rows));
    assert_eq!(
        emptied.schema(),
        audit_batch(&rows).schema(),
        "same schema: batches still concatenate"
    );
    let raw = emptied.column_by_name("raw").unwrap();
    let raw = raw
        .as_any()
        .downcast_ref::<datafusion::arrow::array::StringArray>()
        .unwrap();
    assert_eq!((raw.len(), raw.value(0)), (1, ""));
}
/// The rules' batches carry only the columns some rule reads, and the alerts come out the
/// same: a template naming a column no condition reads still gets its value.
#[test]
fn batches_carry_only_the_columns_the_rules_read() {
    let text = "groups:\n  - name: g\n    rules:\n      - id: denied\n        kind: match\n        where: \"granted = false\"\n        group_by: [cluster_id]\n        severity: low\n        summary: \"{{ resource_name }} denied on {{ cluster_id }}\"\n";
    let rules = rules_of(text);
    let mut columns = rules[0].meta.columns.clone();
    columns.sort();
    assert_eq!(columns, ["cluster_id", "granted", "resource_name"]);
    let engine = RuleEngine::new(rules);
    let read = engine.columns_read(Source::Audit);
    assert_eq!(
        read.iter().map(String::as_str).collect::<Vec<_>>(),
        [
            "auth_identifier",
            "cluster_id",
            "granted",
            "id",
            "principal",
            "resource_name",
            "time"
        ]
    );

    let rows = [AuditRow {
        resource_name: Some("payments".into()),
        cluster_id: Some("lkc-1".into()),
        result_message: Some("nobody reads this".into()),
        raw: crate::event::Raw::from(&b"{\"big\": 1}"[..]),
        ..denied(100, 0)
    }];
    let batch = crate::event::arrow::audit_batch_keeping(&rows, &|c| read.contains(c));
    let text_of = |column: &str| {
        let array = batch.column_by_name(column).unwrap();
        array
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .value(0)
            .to_owned()
    };
    assert_eq!(text_of("resource_name"), "payments");
    assert_eq!(
        (text_of("result_message"), text_of("raw")),
        (String::new(), String::new())
    );
    assert_eq!(batch.schema(), audit_batch(&rows).schema(), "batches still concatenate");

    let topic: Arc<str> = Arc::from("audit");
    let mut clock = EventClock::new(std::time::Duration::from_secs(30), std::time::Duration::ZERO);
    clock.assign(&topic, 0, 0);
    clock.observe(&topic, 0, rows[0].time_us, 0);
    let mut engine = engine;
    let mut alerts = engine.ingest(Source::Audit, Some(batch), clock.watermark(0)).0;
    alerts.extend(engine.ingest(Source::Audit, None, clock.watermark(30 * S)).0);
    let summaries: Vec<&str> = alerts.iter().map(|a| a.summary.as_str()).collect();
    assert_eq!(summaries, ["payments denied on lkc-1"]);
}
