//! Alert lifecycle shared by every rule kind: a stable id per rule and group key, `firing` once,
//! repeats suppressed for `repeat_interval`, `resolved` when the condition clears.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};

use super::RuleMeta;
use crate::event::{Alert, AlertStatus};

/// Stable alert id: the same rule and group key always give the same id.
pub fn alert_id(rule_id: &str, key: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(rule_id.as_bytes());
    for part in key {
        h.update([0u8]);
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{rule_id}-{hex}")
}

struct Active {
    id: String,
    started_at_us: i64,
    last_notified_us: i64,
}

/// What one evaluation of one series found.
pub struct Observation<'a> {
    pub key: &'a [String],
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    pub threshold: Option<f64>,
    pub evidence: Vec<String>,
    /// Extra template context (e.g. the columns of the triggering event).
    pub context: BTreeMap<String, String>,
}

#[derive(Default)]
pub struct Lifecycle {
    active: HashMap<Vec<String>, Active>,
}

impl Lifecycle {
    /// Whether the condition holding for `key` at `now_us` would notify (a new alert, or a
    /// repeat past `repeat_interval`): callers skip building an observation that would be
    /// suppressed.
    pub fn notifies(&self, meta: &RuleMeta, key: &[String], now_us: i64) -> bool {
        self.active
            .get(key)
            .is_none_or(|a| now_us - a.last_notified_us >= meta.repeat_interval_us)
    }

    /// Whether [`firing`](Self::firing) (the condition `holds`) or [`clear`](Self::clear) (it
    /// does not) would notify for `key` at `now_us`: a new alert or a repeat past
    /// `repeat_interval`, or the resolution of a firing one. Rules that re-evaluate every series
    /// as time moves skip building observations that change nothing.
    pub fn would_notify(&self, meta: &RuleMeta, key: &[String], holds: bool, now_us: i64) -> bool {
        if holds {
            self.notifies(meta, key, now_us)
        } else {
            self.is_firing(key)
        }
    }

    /// The condition holds for `obs` at `now_us`: fire, repeat, or stay quiet.
    pub fn firing(&mut self, meta: &RuleMeta, obs: Observation<'_>, now_us: i64) -> Option<Alert> {
        match self.active.get_mut(obs.key) {
            Some(a) => {
                if now_us - a.last_notified_us < meta.repeat_interval_us {
                    return None;
                }
                a.last_notified_us = now_us;
                let (id, started) = (a.id.clone(), a.started_at_us);
                Some(render(meta, id, AlertStatus::Firing, started, None, now_us, obs))
            }
            None => {
                let id = alert_id(&meta.id, obs.key);
                self.active.insert(
                    obs.key.to_vec(),
                    Active {
                        id: id.clone(),
                        started_at_us: now_us,
                        last_notified_us: now_us,
                    },
                );
                Some(render(meta, id, AlertStatus::Firing, now_us, None, now_us, obs))
            }
        }
    }

    /// The condition no longer holds for `obs.key`: resolve if it was firing.
    pub fn clear(&mut self, meta: &RuleMeta, obs: Observation<'_>, now_us: i64) -> Option<Alert> {
        let a = self.active.remove(obs.key)?;
        Some(render(
            meta,
            a.id,
            AlertStatus::Resolved,
            a.started_at_us,
            Some(now_us),
            now_us,
            obs,
        ))
    }

    pub fn is_firing(&self, key: &[String]) -> bool {
        self.active.contains_key(key)
    }

    pub fn firing_keys(&self) -> Vec<Vec<String>> {
        self.active.keys().cloned().collect()
    }

    /// Forgets alerts that were last notified before `cutoff_us` (match rules never resolve).
    pub fn forget_before(&mut self, cutoff_us: i64) {
        self.active.retain(|_, a| a.last_notified_us >= cutoff_us);
    }
}

fn render(
    meta: &RuleMeta,
    id: String,
    status: AlertStatus,
    started_at_us: i64,
    resolved_at_us: Option<i64>,
    now_us: i64,
    obs: Observation<'_>,
) -> Alert {
    let mut obs = obs;
    if let Some(directory) = &meta.directory {
        // Name the principal for the analyst: from the labels, else the triggering event.
        let who = ["principal", "auth_identifier"].iter().find_map(|k| {
            obs.labels
                .get(*k)
                .or_else(|| obs.context.get(*k))
                .filter(|v| !v.is_empty())
                .cloned()
        });
        if let Some(who) = who
            && let Some(entry) = directory.lookup(&who)
        {
            obs.labels.insert("principal_display".into(), directory.display(&who));
            if let Some(app) = entry.application {
                obs.labels.entry("principal_app".into()).or_insert(app);
            }
            if let Some(team) = entry.team {
                obs.labels.entry("principal_team".into()).or_insert(team);
            }
        }
    }
    // Only what the templates name; the same precedence as ever: the alert's own fields, then
    // its labels, then the triggering event's columns.
    let mut ctx: BTreeMap<String, minijinja::Value> = BTreeMap::new();
    for name in &meta.template_names {
        let value = match name.as_str() {
            "value" => format_number(obs.value).into(),
            "threshold" => obs.threshold.map(format_number).unwrap_or_default().into(),
            "rule_id" => meta.id.clone().into(),
            "status" => status.as_str().into(),
            "labels" => minijinja::Value::from_serialize(&obs.labels),
            other => match obs.labels.get(other).or_else(|| obs.context.get(other)) {
                Some(v) => minijinja::Value::from(v.clone()),
                None => continue,
            },
        };
        ctx.insert(name.clone(), value);
    }
    let summary = meta.render("summary", &ctx);
    let description = meta.description.as_ref().map(|_| meta.render("description", &ctx));
    let mut labels = meta.labels.clone();
    labels.extend(obs.labels);
    Alert {
        id,
        rule_id: meta.id.clone(),
        severity: meta.severity.clone(),
        status,
        started_at_us,
        resolved_at_us,
        time_us: now_us,
        labels,
        value: obs.value,
        threshold: obs.threshold,
        summary,
        description,
        runbook: meta.runbook.clone(),
        evidence: obs.evidence,
    }
}

/// `3` rather than `3.0`; large byte counts without exponent.
pub fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e18 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = alert_id("r", &["k1".into()]);
        assert_eq!(a, alert_id("r", &["k1".into()]));
        assert_ne!(a, alert_id("r", &["k2".into()]));
        assert_ne!(
            alert_id("r", &["a".into(), "bc".into()]),
            alert_id("r", &["ab".into(), "c".into()])
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(format_number(50.0), "50");
        assert_eq!(format_number(0.25), "0.250");
    }
}
