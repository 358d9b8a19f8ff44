//! `threshold`: an aggregate of metric `metric` per `group_by` over an event-time `window`,
//! compared with `value`, holding for `for` before firing. With `absent: true`, a series seen
//! before that has no sample for the whole window holds too: the Metrics API omits series with
//! no traffic, so silence is a signal.
//!
//! A claim about a whole window ("less than 1 byte in 10 minutes", "nothing for 10 minutes")
//! needs the series to have been seen for that long: `<`, `<=` and `absent` hold only for series
//! first seen at least `window` ago, so a topic's first sample is not "nothing for 10 minutes".

use std::collections::{HashMap, HashSet, VecDeque};

use datafusion::arrow::array::{Array, Float64Array};

use super::RuleMeta;
use super::Source;
use super::alert::{Lifecycle, Observation};
use super::engine::{BatchView, labels_of};
use super::load::Fields;
use super::predicate::Predicate;
use crate::event::Alert;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Sum,
    Avg,
    Max,
    Min,
    /// Sum per second of window.
    Rate,
    Last,
}

impl Aggregate {
    pub fn parse(text: &str) -> Result<Aggregate, String> {
        Ok(match text {
            "sum" => Aggregate::Sum,
            "avg" => Aggregate::Avg,
            "max" => Aggregate::Max,
            "min" => Aggregate::Min,
            "rate" => Aggregate::Rate,
            "last" => Aggregate::Last,
            other => return Err(format!("`{other}` is not one of sum, avg, max, min, rate, last")),
        })
    }

    fn apply(self, points: &VecDeque<(i64, f64)>, window_us: i64) -> Option<f64> {
        let values = points.iter().map(|(_, v)| *v);
        let n = points.len();
        if n == 0 {
            // No samples in the window: no bytes moved, but no level or average is known.
            return matches!(self, Aggregate::Sum | Aggregate::Rate).then_some(0.0);
        }
        Some(match self {
            Aggregate::Sum => values.sum(),
            Aggregate::Avg => values.sum::<f64>() / n as f64,
            Aggregate::Max => values.fold(f64::MIN, f64::max),
            Aggregate::Min => values.fold(f64::MAX, f64::min),
            Aggregate::Rate => values.sum::<f64>() / (window_us as f64 / 1e6),
            Aggregate::Last => points.back().map(|(_, v)| *v)?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Gt,
    Ge,
    Lt,
    Le,
}

impl Comparison {
    pub fn parse(text: &str) -> Result<Comparison, String> {
        Ok(match text {
            ">" => Comparison::Gt,
            ">=" => Comparison::Ge,
            "<" => Comparison::Lt,
            "<=" => Comparison::Le,
            other => return Err(format!("`{other}` is not one of >, >=, <, <=")),
        })
    }

    fn holds(self, observed: f64, limit: f64) -> bool {
        match self {
            Comparison::Gt => observed > limit,
            Comparison::Ge => observed >= limit,
            Comparison::Lt => observed < limit,
            Comparison::Le => observed <= limit,
        }
    }
}

struct Series {
    /// (time, value), sorted by time.
    points: VecDeque<(i64, f64)>,
    pending_since: Option<i64>,
    /// Oldest sample time seen.
    first_seen: i64,
}

/// What a threshold rule compares, and for how long.
pub struct ThresholdSettings {
    pub window_us: i64,
    pub aggregate: Aggregate,
    pub comparison: Comparison,
    pub value: f64,
    pub for_us: i64,
    pub max_series: usize,
    /// A series with no sample in the window holds (`absent: true`).
    pub absent: bool,
}

pub struct ThresholdRule {
    pub(super) predicate: Predicate,
    group_by: Vec<String>,
    settings: ThresholdSettings,
    series: HashMap<Vec<String>, Series>,
    lifecycle: Lifecycle,
    num_shed: u64,
}

impl ThresholdRule {
    pub fn new(predicate: Predicate, group_by: Vec<String>, settings: ThresholdSettings) -> ThresholdRule {
        ThresholdRule {
            predicate,
            group_by,
            settings,
            series: HashMap::new(),
            lifecycle: Lifecycle::default(),
            num_shed: 0,
        }
    }

    pub fn num_shed(&self) -> u64 {
        self.num_shed
    }

    pub fn evaluate(&mut self, meta: &RuleMeta, view: &mut BatchView<'_>, now: i64) -> Result<Vec<Alert>, String> {
        let mask = self.predicate.evaluate(view.batch)?;
        let values = view
            .batch
            .column_by_name("value")
            .and_then(|c| c.as_any().downcast_ref::<Float64Array>().cloned())
            .ok_or("threshold rules read the metrics table's `value` column")?;
        let cutoff = now - self.settings.window_us;
        let mut touched: HashSet<Vec<String>> = HashSet::new();
        let keys = view.key_reader(&self.group_by);
        for row in (0..mask.len()).filter(|&i| mask.value(i)) {
            let t = view.time(row);
            if t <= cutoff || values.is_null(row) {
                continue;
            }
            let key = keys.key(row);
            if !self.series.contains_key(&key) && self.series.len() >= self.settings.max_series {
                self.num_shed += 1;
                continue;
            }
            let s = self.series.entry(key.clone()).or_insert_with(|| Series {
                points: VecDeque::new(),
                pending_since: None,
                first_seen: t,
            });
            s.first_seen = s.first_seen.min(t);
            let at = s.points.partition_point(|&(x, _)| x <= t);
            s.points.insert(at, (t, values.value(row)));
            touched.insert(key);
        }
        // Every series is re-evaluated as time moves: a `<` rule (traffic dropping) must see
        // series that stopped receiving samples.
        touched.extend(self.series.keys().cloned());

        let mut alerts = Vec::new();
        let mut dead = Vec::new();
        for key in touched {
            let Some(s) = self.series.get_mut(&key) else { continue };
            while s.points.front().is_some_and(|&(t, _)| t <= cutoff) {
                s.points.pop_front();
            }
            let observed = self.settings.aggregate.apply(&s.points, self.settings.window_us);
            let covered = now - s.first_seen >= self.settings.window_us;
            let about_the_whole_window = matches!(self.settings.comparison, Comparison::Lt | Comparison::Le);
            let absent = self.settings.absent && s.points.is_empty() && covered;
            let compared = observed.is_some_and(|v| self.settings.comparison.holds(v, self.settings.value))
                && (covered || !about_the_whole_window);
            let holds = absent || compared;
            let due = if holds {
                let since = *s.pending_since.get_or_insert(now);
                now - since >= self.settings.for_us
            } else {
                s.pending_since = None;
                true
            };
            if due && self.lifecycle.would_notify(meta, &key, holds, now) {
                let obs = Observation {
                    key: &key,
                    labels: labels_of(&self.group_by, &key),
                    value: observed.unwrap_or(0.0),
                    threshold: Some(self.settings.value).filter(|v| !v.is_nan()),
                    evidence: Vec::new(),
                    context: Default::default(),
                };
                alerts.extend(if holds {
                    self.lifecycle.firing(meta, obs, now)
                } else {
                    self.lifecycle.clear(meta, obs, now)
                });
            }
            // An `absent` rule must remember a series that went quiet; others forget it.
            if !holds && s.points.is_empty() && !self.settings.absent && !self.lifecycle.is_firing(&key) {
                dead.push(key);
            }
        }
        for key in dead {
            self.series.remove(&key);
        }
        Ok(alerts)
    }
}

impl ThresholdRule {
    /// On `metrics`: `metric` and `window` (required), `value` (required unless `absent`),
    /// `aggregate`, `op`, `for`, `absent`, `where`, `group_by`.
    pub(super) fn validate(f: &Fields<'_>) -> Result<ThresholdRule, super::RulesError> {
        if f.source != Source::Metrics {
            return Err(f.err("source", "a threshold rule reads `metrics`"));
        }
        let metric = f.required("metric", &f.raw.metric)?;
        let window_us = f.required("window", &f.window_us)?;
        let absent = f.raw.absent.unwrap_or(false);
        let value = match (f.raw.value, absent) {
            (Some(v), _) => v,
            // Absence alone: no sample compares, only silence holds.
            (None, true) => f64::NAN,
            (None, false) => f.required("value", &f.raw.value)?,
        };
        let aggregate =
            Aggregate::parse(f.raw.aggregate.as_deref().unwrap_or("sum")).map_err(|m| f.err("aggregate", m))?;
        let comparison = Comparison::parse(f.raw.op.as_deref().unwrap_or(">")).map_err(|m| f.err("op", m))?;
        let for_us = f.duration_us("for", &f.raw.for_)?.unwrap_or(0);
        let escaped = metric.replace('\'', "''");
        let sql = match &f.raw.where_ {
            Some(w) => format!("name = '{escaped}' AND ({w})"),
            None => format!("name = '{escaped}'"),
        };
        let settings = ThresholdSettings {
            window_us,
            aggregate,
            comparison,
            value,
            for_us,
            max_series: f.max_series,
            absent,
        };
        Ok(ThresholdRule::new(f.predicate(&sql)?, f.raw.group_by.clone(), settings))
    }
}
