//! `match`: an alert for each event matching `where` (repeats per group key suppressed for
//! `repeat_interval`; without `group_by` every event is its own alert).

use super::RuleMeta;
use super::alert::{Lifecycle, Observation};
use super::engine::{BatchView, labels_of};
use super::load::Fields;
use super::predicate::Predicate;
use crate::event::Alert;

pub struct MatchRule {
    pub(super) predicate: Predicate,
    group_by: Vec<String>,
    lifecycle: Lifecycle,
}

impl MatchRule {
    pub fn new(predicate: Predicate, group_by: Vec<String>) -> MatchRule {
        MatchRule {
            predicate,
            group_by,
            lifecycle: Lifecycle::default(),
        }
    }

    pub fn evaluate(&mut self, meta: &RuleMeta, view: &mut BatchView<'_>, now: i64) -> Result<Vec<Alert>, String> {
        let mask = self.predicate.evaluate(view.batch)?;
        let mut alerts = Vec::new();
        let keys = view.key_reader(&self.group_by);
        for row in (0..mask.len()).filter(|&i| mask.value(i)) {
            let id = view.id(row);
            let key = if self.group_by.is_empty() {
                vec![id.clone().unwrap_or_default()]
            } else {
                keys.key(row)
            };
            let at = view.time(row);
            // A repeat inside `repeat_interval` is suppressed: skip rendering its context.
            if !self.lifecycle.notifies(meta, &key, at) {
                continue;
            }
            let labels = if self.group_by.is_empty() {
                Default::default()
            } else {
                labels_of(&self.group_by, &key)
            };
            let obs = Observation {
                key: &key,
                labels,
                value: 1.0,
                threshold: None,
                evidence: id.into_iter().collect(),
                context: view.row_context(&meta.context_columns, row),
            };
            alerts.extend(self.lifecycle.firing(meta, obs, at));
        }
        // Match alerts do not resolve; forget them once they can no longer suppress a repeat.
        self.lifecycle.forget_before(now - meta.repeat_interval_us);
        Ok(alerts)
    }
}

impl MatchRule {
    /// `where` (required) and `group_by`.
    pub(super) fn validate(f: &Fields<'_>) -> Result<MatchRule, super::RulesError> {
        let sql = f.required("where", &f.raw.where_)?;
        Ok(MatchRule::new(f.predicate(&sql)?, f.raw.group_by.clone()))
    }
}
