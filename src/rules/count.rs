//! `count`: events matching `where` per `group_by` in a sliding event-time `window`, or distinct
//! values of a column (`distinct`), compared with `threshold` (fires at `>= threshold`).

use std::collections::{HashMap, VecDeque};

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
    /// The call that last touched this series ([`CountRule::calls`]).
    touched_in: u64,
}

impl Series {
    /// Counts an event at `t` in call `call`; whether it is the first of this call.
    fn add(&mut self, t: i64, distinct: Option<String>, id: Option<String>, call: u64) -> bool {
        let at = self.times.partition_point(|&x| x <= t);
        self.times.insert(at, t);
        self.newest = self.newest.max(t);
        if let Some(v) = distinct {
            let slot = self.distinct.entry(v).or_insert(t);
            *slot = (*slot).max(t);
        }
        if let Some(id) = id {
            if self.recent_ids.len() == EVIDENCE {
                self.recent_ids.pop_front();
            }
            self.recent_ids.push_back(id);
        }
        let first = self.touched_in != call;
        self.touched_in = call;
        first
    }

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
    /// Calls of `evaluate` so far, so that a series knows whether this call touched it.
    calls: u64,
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
            calls: 0,
        }
    }

    pub fn num_shed(&self) -> u64 {
        self.num_shed
    }

    pub fn evaluate(&mut self, meta: &RuleMeta, view: &mut BatchView<'_>, now: i64) -> Result<Vec<Alert>, String> {
        let mask = self.predicate.evaluate(view.batch)?;
        let cutoff = now - self.window_us;
        self.calls += 1;
        let call = self.calls;
        // Each series once, in the order first touched: a stamp on the series, not a set of
        // keys hashed again per row.
        let mut touched: Vec<Vec<String>> = Vec::new();
        let keys = view.key_reader(&self.group_by);
        let distinct = self.distinct.as_deref().map(|column| view.text_reader(column));
        let view = &*view;
        // What a counted row adds besides its time: its distinct value and its id.
        let values = |row| (distinct.as_ref().map(|d| d.text(row)), view.id(row));
        for row in (0..mask.len()).filter(|&i| mask.value(i)) {
            let t = view.time(row);
            if t <= cutoff {
                continue; // later than the window can take
            }
            let key = keys.key(row);
            let full = self.series.len() >= self.max_series;
            let first = match self.series.get_mut(&key) {
                Some(s) => {
                    let (distinct, id) = values(row);
                    s.add(t, distinct, id, call)
                }
                None if full => {
                    self.num_shed += 1;
                    continue;
                }
                None => {
                    let (distinct, id) = values(row);
                    (self.series.entry(key.clone()).or_default()).add(t, distinct, id, call)
                }
            };
            if first {
                touched.push(key);
            }
        }
        // Firing series are re-evaluated as the window slides, touched or not.
        for key in self.lifecycle.firing_keys() {
            if let Some(s) = self.series.get_mut(&key)
                && s.touched_in != call
            {
                s.touched_in = call;
                touched.push(key);
            }
        }

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
