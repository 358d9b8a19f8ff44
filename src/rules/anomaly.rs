//! `anomaly`: a per-series baseline of a value per time bucket, alerting when a closed bucket is
//! more than `sigma` standard deviations above it (and at least `min_value`), for `for`.
//!
//! The value of a bucket is the sum of `metric` (source `metrics`) or the number of events
//! matching `where` (source `audit`). The baseline is an exponentially weighted mean and
//! variance whose time constant is `baseline`: recent behaviour weighs most, and a slow drift
//! moves the baseline instead of alerting. A series alerts only after `min_samples` buckets, so a
//! new topic's first minute is not an anomaly. Anomalous buckets do not update the baseline, so
//! a sustained exfiltration does not teach the baseline that it is normal.

use std::collections::{BTreeMap, HashMap, HashSet};

use datafusion::arrow::array::{Array, Float64Array};

use super::RuleMeta;
use super::Source;
use super::alert::{Lifecycle, Observation};
use super::engine::{BatchView, labels_of};
use super::load::Fields;
use super::predicate::Predicate;
use crate::event::Alert;

#[derive(Default)]
struct Series {
    /// Open buckets: start -> value (late events up to one bucket still count).
    buckets: BTreeMap<i64, f64>,
    mean: f64,
    variance: f64,
    num_samples: u32,
    pending_since: Option<i64>,
    /// Start of the newest closed bucket.
    last_closed: Option<i64>,
}

pub struct AnomalyRule {
    pub(super) predicate: Predicate,
    group_by: Vec<String>,
    /// Sum the `value` column (metrics) rather than count rows (audit).
    sum_values: bool,
    bucket_us: i64,
    alpha: f64,
    sigma: f64,
    min_value: f64,
    min_samples: u32,
    for_us: i64,
    max_series: usize,
    series: HashMap<Vec<String>, Series>,
    lifecycle: Lifecycle,
    num_shed: u64,
}

pub struct AnomalySettings {
    pub bucket_us: i64,
    pub baseline_us: i64,
    pub sigma: f64,
    pub min_value: f64,
    pub min_samples: u32,
    pub for_us: i64,
    pub max_series: usize,
}

impl AnomalyRule {
    pub fn new(predicate: Predicate, group_by: Vec<String>, sum_values: bool, s: AnomalySettings) -> AnomalyRule {
        // Weight of one bucket in an EWMA whose time constant is the baseline.
        let alpha = 1.0 - (-(s.bucket_us as f64) / (s.baseline_us.max(1) as f64)).exp();
        AnomalyRule {
            predicate,
            group_by,
            sum_values,
            bucket_us: s.bucket_us.max(1),
            alpha,
            sigma: s.sigma,
            min_value: s.min_value,
            min_samples: s.min_samples,
            for_us: s.for_us,
            max_series: s.max_series,
            series: HashMap::new(),
            lifecycle: Lifecycle::default(),
            num_shed: 0,
        }
    }

    pub fn num_shed(&self) -> u64 {
        self.num_shed
    }

    pub fn num_series(&self) -> usize {
        self.series.len()
    }

    pub fn evaluate(&mut self, meta: &RuleMeta, view: &mut BatchView<'_>, now: i64) -> Result<Vec<Alert>, String> {
        let mask = self.predicate.evaluate(view.batch)?;
        let values = if self.sum_values {
            Some(
                view.batch
                    .column_by_name("value")
                    .and_then(|c| c.as_any().downcast_ref::<Float64Array>().cloned())
                    .ok_or("anomaly rules on metrics read the `value` column")?,
            )
        } else {
            None
        };
        let oldest_open = now - now.rem_euclid(self.bucket_us) - self.bucket_us;
        let keys = view.key_reader(&self.group_by);
        for row in (0..mask.len()).filter(|&i| mask.value(i)) {
            let t = view.time(row);
            let start = t - t.rem_euclid(self.bucket_us);
            if start < oldest_open {
                continue; // its bucket is closed already
            }
            let key = keys.key(row);
            if !self.series.contains_key(&key) && self.series.len() >= self.max_series {
                self.num_shed += 1;
                continue;
            }
            let v = values
                .as_ref()
                .map_or(1.0, |a| if a.is_null(row) { 0.0 } else { a.value(row) });
            *self.series.entry(key).or_default().buckets.entry(start).or_insert(0.0) += v;
        }

        // Close every bucket that ended before the current one began, in time order.
        let current = now - now.rem_euclid(self.bucket_us);
        let mut alerts = Vec::new();
        let mut keys: HashSet<Vec<String>> = self.series.keys().cloned().collect();
        keys.extend(self.lifecycle.firing_keys());
        for key in keys {
            let Some(s) = self.series.get_mut(&key) else { continue };
            let mut closed: Vec<(i64, f64)> = s.buckets.range(..current).map(|(k, v)| (*k, *v)).collect();
            if !self.sum_values
                && let Some(last) = s.last_closed
            {
                // Counted events: a bucket without events is a zero, and the baseline must see it.
                let mut start = last + self.bucket_us;
                let mut filled = 0;
                while start < current && filled < 1440 {
                    if !s.buckets.contains_key(&start) {
                        closed.push((start, 0.0));
                    }
                    start += self.bucket_us;
                    filled += 1;
                }
                closed.sort_by_key(|(k, _)| *k);
            }
            for (start, value) in closed {
                s.buckets.remove(&start);
                s.last_closed = Some(start);
                let deviation = s.variance.sqrt();
                let anomalous = s.num_samples >= self.min_samples
                    && value >= self.min_value
                    && value > s.mean + self.sigma * deviation.max(s.mean.abs() * 0.01);
                let obs = Observation {
                    key: &key,
                    labels: labels_of(&self.group_by, &key),
                    value,
                    threshold: Some(s.mean + self.sigma * deviation),
                    evidence: Vec::new(),
                    context: BTreeMap::from([
                        ("baseline".to_owned(), super::alert::format_number(s.mean)),
                        ("stddev".to_owned(), super::alert::format_number(deviation)),
                    ]),
                };
                let at = start + self.bucket_us;
                if anomalous {
                    let since = *s.pending_since.get_or_insert(at);
                    if at - since >= self.for_us {
                        alerts.extend(self.lifecycle.firing(meta, obs, at));
                    }
                } else {
                    s.pending_since = None;
                    alerts.extend(self.lifecycle.clear(meta, obs, at));
                    // Learn from normal buckets only.
                    let diff = value - s.mean;
                    if s.num_samples == 0 {
                        s.mean = value;
                    } else {
                        s.mean += self.alpha * diff;
                        s.variance = (1.0 - self.alpha) * (s.variance + self.alpha * diff * diff);
                    }
                    s.num_samples = s.num_samples.saturating_add(1);
                }
            }
        }
        Ok(alerts)
    }
}

impl AnomalyRule {
    /// On `metrics`, `metric` (required); elsewhere `where`. `window` is the bucket (default
    /// 1m), `baseline`, `sigma`, `min_value`, `min_samples`, `for`, `group_by`.
    pub(super) fn validate(f: &Fields<'_>) -> Result<AnomalyRule, super::RulesError> {
        let sql = match (f.source, &f.raw.metric, &f.raw.where_) {
            (Source::Metrics, Some(metric), w) => {
                let m = format!("name = '{}'", metric.replace('\'', "''"));
                w.as_ref().map_or(m.clone(), |w| format!("{m} AND ({w})"))
            }
            (Source::Metrics, None, _) => {
                return Err(f.err("metric", "an anomaly rule on metrics needs `metric`"));
            }
            (_, _, w) => w.clone().unwrap_or_else(|| "true".into()),
        };
        let sigma = f.raw.sigma.unwrap_or(4.0);
        if sigma <= 0.0 {
            return Err(f.err("sigma", "must be positive"));
        }
        let settings = AnomalySettings {
            bucket_us: f.window_us.unwrap_or(60_000_000),
            baseline_us: f.duration_us("baseline", &f.raw.baseline)?.unwrap_or(3_600_000_000),
            sigma,
            min_value: f.raw.min_value.unwrap_or(0.0),
            min_samples: f.raw.min_samples.unwrap_or(10),
            for_us: f.duration_us("for", &f.raw.for_)?.unwrap_or(0),
            max_series: f.max_series,
        };
        Ok(AnomalyRule::new(
            f.predicate(&sql)?,
            f.raw.group_by.clone(),
            f.source == Source::Metrics,
            settings,
        ))
    }
}
