use std::path::Path;

use datafusion::execution::context::SessionContext;

use super::*;
use crate::event::AuditRow;
use crate::event::arrow::audit_batch;

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
