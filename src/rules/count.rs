//! `count`: events matching `where` per `group_by` in a sliding event-time `window`, or distinct
//! values of a column (`distinct`), compared with `threshold` (fires at `>= threshold`).

use std::collections::{HashMap, HashSet, VecDeque};

use super::RuleMeta;
use super::alert::{Lifecycle, Observation};
use super::engine::{BatchView, labels_of};
use super::load::Fields;
use super::predicate::Predicate;
use crate::event::Alert;

/// Evidence kept per series: the ids of the newest contributing events.
const EVIDENCE: usize = 10;

#[derive(Default)]
struct Series {
    /// Event times in the window, sorted.
    times: VecDeque<i64>,
    /// Distinct value -> newest time seen.
    distinct: HashMap<String, i64>,
    recent_ids: VecDeque<String>,
    newest: i64,
}

impl Series {
    fn evict(&mut self, cutoff: i64) {
        while self.times.front().is_some_and(|&t| t <= cutoff) {
            self.times.pop_front();
        }
        self.distinct.retain(|_, t| *t > cutoff);
    }
}

pub struct CountRule {
    pub(super) predicate: Predicate,
    group_by: Vec<String>,
    distinct: Option<String>,
    window_us: i64,
    threshold: f64,
    max_series: usize,
    series: HashMap<Vec<String>, Series>,
    lifecycle: Lifecycle,
    num_shed: u64,
    /// Event time of the last sweep of idle series.
    last_sweep_us: i64,
}

impl CountRule {
    pub fn new(
        predicate: Predicate,
        group_by: Vec<String>,
        distinct: Option<String>,
        window_us: i64,
        threshold: f64,
        max_series: usize,
    ) -> CountRule {
        CountRule {
            predicate,
            group_by,
            distinct,
            window_us,
            threshold,
            max_series,
            series: HashMap::new(),
            lifecycle: Lifecycle::default(),
            num_shed: 0,
            last_sweep_us: i64::MIN,
        }
    }

    pub fn num_shed(&self) -> u64 {
        self.num_shed
    }

    pub fn evaluate(&mut self, meta: &RuleMeta, view: &mut BatchView<'_>, now: i64) -> Result<Vec<Alert>, String> {
        let mask = self.predicate.evaluate(view.batch)?;
        let cutoff = now - self.window_us;
        let mut touched: HashSet<Vec<String>> = HashSet::new();
        for row in (0..mask.len()).filter(|&i| mask.value(i)) {
            let t = view.time(row);
            if t <= cutoff {
                continue; // later than the window can take
            }
            let key = view.key(&self.group_by, row);
            if !self.series.contains_key(&key) {
                if self.series.len() >= self.max_series {
                    self.num_shed += 1;
                    continue;
                }
                self.series.insert(key.clone(), Series::default());
            }
            let Some(s) = self.series.get_mut(&key) else { continue };
            let at = s.times.partition_point(|&x| x <= t);
            s.times.insert(at, t);
            s.newest = s.newest.max(t);
            if let Some(column) = &self.distinct {
                let v = view.text(column, row);
                let slot = s.distinct.entry(v).or_insert(t);
                *slot = (*slot).max(t);
            }
            if let Some(id) = view.id(row) {
                if s.recent_ids.len() == EVIDENCE {
                    s.recent_ids.pop_front();
                }
                s.recent_ids.push_back(id);
            }
            touched.insert(key);
        }
        touched.extend(self.lifecycle.firing_keys());

        let mut alerts = Vec::new();
        for key in touched {
            let Some(s) = self.series.get_mut(&key) else { continue };
            s.evict(cutoff);
            let value = if self.distinct.is_some() {
                s.distinct.len()
            } else {
                s.times.len()
            } as f64;
            let fires = value >= self.threshold;
            if !self.lifecycle.would_notify(meta, &key, fires, now) {
                continue;
            }
            let obs = Observation {
                key: &key,
                labels: labels_of(&self.group_by, &key),
                value,
                threshold: Some(self.threshold),
                evidence: s.recent_ids.iter().cloned().collect(),
                context: Default::default(),
            };
            let alert = if fires {
                self.lifecycle.firing(meta, obs, now)
            } else {
                self.lifecycle.clear(meta, obs, now)
            };
            alerts.extend(alert);
        }
        // Every quarter window of event time, forget idle series so state follows the live key
        // space (by event time, not by call: the rules are called once per one-second cell).
        if now.saturating_sub(self.last_sweep_us) >= (self.window_us / 4).max(1) {
            self.last_sweep_us = now;
            let lifecycle = &self.lifecycle;
            self.series.retain(|k, s| s.newest > cutoff || lifecycle.is_firing(k));
        }
        Ok(alerts)
    }
}

impl CountRule {
    /// `window` and `threshold` (required), `where`, `group_by`, `distinct`.
    pub(super) fn validate(f: &Fields<'_>) -> Result<CountRule, super::RulesError> {
        let window_us = f.required("window", &f.window_us)?;
        let threshold = f.required("threshold", &f.raw.threshold)?;
        Ok(CountRule::new(
            f.predicate(f.where_or_all())?,
            f.raw.group_by.clone(),
            f.raw.distinct.clone(),
            window_us,
            threshold,
            f.max_series,
        ))
    }
}
