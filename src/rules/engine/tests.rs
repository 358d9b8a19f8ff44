use std::path::Path;

use datafusion::execution::context::SessionContext;

use super::*;
use crate::event::arrow::audit_batch;
use crate::event::{AlertStatus, AuditRow};

const PACK: &str = "groups:\n  - name: g\n    rules:\n      - id: burst\n        kind: count\n        where: \"granted = false\"\n        window: 5m\n        threshold: 3\n        severity: low\n        summary: s\n      - id: other\n        kind: match\n        where: \"granted = true\"\n        severity: low\n        summary: s\n";

/// A refused authorisation at `time_us`: what the engine tests count.
pub(super) fn denied_row(time_us: i64, id: String) -> AuditRow {
    AuditRow {
        time_us,
        id,
        granted: Some(false),
        raw: crate::event::Raw::from(&b"{}"[..]),
        ..AuditRow::default()
    }
}

/// The rules of one rule file's text.
pub(super) fn rules_of(text: &str) -> Vec<crate::rules::Rule> {
    super::super::parse_rules(&SessionContext::new(), text, Path::new("r.yaml")).unwrap()
}

fn denied(t: i64) -> AuditRow {
    denied_row(t, format!("e{t}"))
}

/// Regression for issue 3 (hot reload): an unchanged rule keeps its window across a reload.
#[test]
fn reload_keeps_the_state_of_unchanged_rules() {
    let ctx = SessionContext::new();
    let load = |text: &str| super::super::parse_rules(&ctx, text, Path::new("r.yaml")).unwrap();
    let mut engine = RuleEngine::new(load(PACK));
    assert!(
        engine
            .evaluate(Source::Audit, &audit_batch(&[denied(1), denied(2)]))
            .0
            .is_empty()
    );
    // Change only the other rule: `burst` keeps its two events.
    let (kept, fresh, removed) = engine.replace(load(&PACK.replace("granted = true", "granted IS NULL")));
    assert_eq!((kept, fresh, removed), (1, 1, 0));
    let (alerts, _) = engine.evaluate(Source::Audit, &audit_batch(&[denied(3)]));
    assert_eq!(
        alerts.len(),
        1,
        "the third event completes the burst started before the reload"
    );
    // Changing `burst` itself starts it afresh.
    engine.replace(load(&PACK.replace("threshold: 3", "threshold: 2")));
    assert!(engine.evaluate(Source::Audit, &audit_batch(&[denied(4)])).0.is_empty());
}

/// An alert's templates see the names they read: its own fields, its labels (over the event's
/// columns of the same name), and the triggering event's columns.
#[test]
fn templates_render_the_names_they_read() {
    let text = "groups:\n  - name: g\n    rules:\n      - id: seen\n        kind: match\n        where: \"granted = false\"\n        group_by: [operation]\n        severity: low\n        summary: \"{{ principal }} {{ operation }}/{{ labels.operation }} {{ rule_id }} {{ status }} {{ value }}{{ missing }}\"\n        description: \"on {{ resource_name }}\"\n";
    let mut engine = RuleEngine::new(rules_of(text));
    let row = AuditRow {
        principal: Some("User:1".into()),
        operation: Some("Write".into()),
        resource_name: Some("orders".into()),
        ..denied_row(1, "e1".into())
    };
    let (alerts, _) = engine.evaluate(Source::Audit, &audit_batch(&[row]));
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].summary, "User:1 Write/Write seen firing 1");
    assert_eq!(alerts[0].description.as_deref(), Some("on orders"));
}

/// A template that fails as it renders gives its own text and the error, not an empty summary.
#[test]
fn a_template_that_fails_to_render_reads_as_its_text() {
    let text = "groups:\n  - name: g\n    rules:\n      - id: seen\n        kind: match\n        where: \"granted = false\"\n        severity: low\n        summary: \"{{ value | nosuchfilter }}\"\n";
    let mut engine = RuleEngine::new(rules_of(text));
    let (alerts, _) = engine.evaluate(Source::Audit, &audit_batch(&[denied_row(1, "e1".into())]));
    assert_eq!(alerts.len(), 1);
    assert!(
        alerts[0]
            .summary
            .starts_with("{{ value | nosuchfilter }} (template error: "),
        "{}",
        alerts[0].summary
    );
}

/// A count rule's evidence is the newest ten contributing events of its series, across
/// batches and with series interleaved; a firing series that no row touches is still
/// re-evaluated as the window slides, and resolves.
#[test]
fn count_evidence_is_the_newest_events_of_each_series() {
    let pack = "groups:\n  - name: g\n    rules:\n      - id: burst\n        kind: count\n        where: \"granted = false\"\n        group_by: [principal]\n        window: 5m\n        threshold: 3\n        severity: low\n        summary: s\n";
    let mut engine = RuleEngine::new(rules_of(pack));
    let by = |who: &str, t: i64, id: String| AuditRow {
        principal: Some(who.into()),
        ..denied_row(t, id)
    };
    // Twelve of `a` and two of `b`, interleaved.
    let mut first: Vec<AuditRow> = (0..12).map(|i| by("User:a", 1_000 + i, format!("a{i}"))).collect();
    first.insert(3, by("User:b", 1_003, "b0".into()));
    first.insert(9, by("User:b", 1_008, "b1".into()));
    let (alerts, _) = engine.evaluate(Source::Audit, &audit_batch(&first));
    assert_eq!(alerts.len(), 1, "only `a` reached 3: {alerts:?}");
    assert_eq!(alerts[0].labels["principal"], "User:a");
    assert_eq!(alerts[0].value, 12.0);
    let newest_a: Vec<String> = (2..12).map(|i| format!("a{i}")).collect();
    assert_eq!(alerts[0].evidence, newest_a);

    let (alerts, _) = engine.evaluate(Source::Audit, &audit_batch(&[by("User:b", 2_000, "b2".into())]));
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].labels["principal"], "User:b");
    assert_eq!(
        alerts[0].evidence,
        ["b0", "b1", "b2"],
        "evidence carried across batches"
    );

    // Six minutes on, only `c` is seen: `a` and `b` slide out of the window and resolve.
    let later = 6 * 60 * 1_000_000;
    let (alerts, _) = engine.evaluate(Source::Audit, &audit_batch(&[by("User:c", later, "c0".into())]));
    let mut resolved: Vec<(&str, AlertStatus)> = alerts
        .iter()
        .map(|a| (a.labels["principal"].as_str(), a.status))
        .collect();
    resolved.sort_by_key(|(who, _)| *who);
    assert_eq!(
        resolved,
        [("User:a", AlertStatus::Resolved), ("User:b", AlertStatus::Resolved)]
    );
}
