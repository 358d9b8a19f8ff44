//! `new_value`: the first time a value of `field` is seen for a group key after a `learn`
//! period (a service account connecting from a new address, a principal using a new method).
//! During the learning period values are only remembered. Memory is bounded: at most
//! `max_series` keys, and at most 1000 values per key (the oldest-seen are forgotten).

use std::collections::{HashMap, VecDeque};

use super::RuleMeta;
use super::alert::{Lifecycle, Observation};
use super::engine::{BatchView, labels_of};
use super::load::Fields;
use super::predicate::Predicate;
use crate::event::Alert;

const MAX_VALUES_PER_KEY: usize = 1000;

#[derive(Default)]
struct Known {
    values: HashMap<String, i64>,
    order: VecDeque<String>,
}

pub struct NewValueRule {
    pub(super) predicate: Predicate,
    group_by: Vec<String>,
    field: String,
    learn_us: i64,
    max_series: usize,
    started_at: Option<i64>,
    known: HashMap<Vec<String>, Known>,
    lifecycle: Lifecycle,
    num_shed: u64,
}

impl NewValueRule {
    pub fn new(
        predicate: Predicate,
        group_by: Vec<String>,
        field: String,
        learn_us: i64,
        max_series: usize,
    ) -> NewValueRule {
        NewValueRule {
            predicate,
            group_by,
            field,
            learn_us,
            max_series,
            started_at: None,
            known: HashMap::new(),
            lifecycle: Lifecycle::default(),
            num_shed: 0,
        }
    }

    pub fn num_shed(&self) -> u64 {
        self.num_shed
    }

    pub fn num_series(&self) -> usize {
        self.known.len()
    }

    pub fn evaluate(&mut self, meta: &RuleMeta, view: &mut BatchView<'_>, now: i64) -> Result<Vec<Alert>, String> {
        let mask = self.predicate.evaluate(view.batch)?;
        let mut alerts = Vec::new();
        let keys = view.key_reader(&self.group_by);
        let values = view.text_reader(&self.field);
        for row in (0..mask.len()).filter(|&i| mask.value(i)) {
            let t = view.time(row);
            let started = *self.started_at.get_or_insert(t);
            let value = values.text(row);
            if value.is_empty() {
                continue;
            }
            let key = keys.key(row);
            if !self.known.contains_key(&key) && self.known.len() >= self.max_series {
                self.num_shed += 1;
                continue;
            }
            let known = self.known.entry(key.clone()).or_default();
            if let Some(seen) = known.values.get_mut(&value) {
                *seen = t;
                continue;
            }
            if known.order.len() >= MAX_VALUES_PER_KEY
                && let Some(oldest) = known.order.pop_front()
            {
                known.values.remove(&oldest);
            }
            known.values.insert(value.clone(), t);
            known.order.push_back(value.clone());
            if t < started + self.learn_us {
                continue; // still learning
            }
            let mut alert_key = key.clone();
            alert_key.push(value.clone());
            let mut labels = labels_of(&self.group_by, &key);
            labels.insert(self.field.clone(), value);
            let obs = Observation {
                key: &alert_key,
                labels,
                value: 1.0,
                threshold: None,
                evidence: view.id(row).into_iter().collect(),
                context: view.row_context(&meta.context_columns, row),
            };
            alerts.extend(self.lifecycle.firing(meta, obs, t));
        }
        self.lifecycle.forget_before(now - meta.repeat_interval_us);
        Ok(alerts)
    }
}

impl NewValueRule {
    /// `field` (required), `learn` (default 24h), `where`, `group_by`.
    pub(super) fn validate(f: &Fields<'_>) -> Result<NewValueRule, super::RulesError> {
        let field = f.required("field", &f.raw.field)?;
        let learn_us = f.duration_us("learn", &f.raw.learn)?.unwrap_or(86_400_000_000);
        Ok(NewValueRule::new(
            f.predicate(f.where_or_all())?,
            f.raw.group_by.clone(),
            field,
            learn_us,
            f.max_series,
        ))
    }
}
