use super::tests::{denied_row, rules_of};
use super::*;
use crate::event::AuditRow;
use crate::event::arrow::audit_batch;

fn denied(t_s: i64) -> AuditRow {
    denied_row(t_s * 1_000_000, format!("e{t_s}"))
}

/// An event later than the window is dropped without lateness and counted with it.
#[test]
fn allowed_lateness_counts_late_events() {
    let text = "groups:\n  - name: g\n    rules:\n      - id: c\n        kind: count\n        where: \"granted = false\"\n        window: 1m\n        threshold: 2\n        severity: low\n        summary: s\n";
    let load = || rules_of(text);
    for (lateness, fires) in [(0, false), (120, true)] {
        let mut engine = RuleEngine::new(load()).with_allowed_lateness(std::time::Duration::from_secs(lateness));
        engine.evaluate(Source::Audit, &audit_batch(&[denied(200)]));
        // Arrives 100 s late, out of order.
        let (alerts, _) = engine.evaluate(Source::Audit, &audit_batch(&[denied(100), denied(101)]));
        assert_eq!(!alerts.is_empty(), fires, "lateness {lateness}s");
    }
}
