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
    // The first 8 bytes as 16 hex digits, written in one pass (a `String` per byte was a
    // tenth of raising an alert).
    let head = u64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 digest has 32 bytes"));
    format!("{rule_id}-{head:016x}")
}

struct Active {
    id: String,
    started_at_us: i64,
    last_notified_us: i64,
}

impl Active {
    /// Whether [`Lifecycle::forget_before`]`(cutoff_us)` forgot it.
    fn forgotten(&self, cutoff_us: i64) -> bool {
        self.last_notified_us < cutoff_us
    }
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

pub struct Lifecycle {
    /// Keyed per process (keys come from events, so an attacker picks them); foldhash rather
    /// than SipHash, which rehashing a growing map spent most of its time in.
    active: HashMap<Vec<String>, Active, foldhash::fast::RandomState>,
    /// Alerts last notified before this are forgotten ([`Lifecycle::forget_before`]), whether
    /// or not a sweep has removed them from `active` yet: every lookup skips them.
    forgotten_before_us: i64,
    /// Alerts added since `active` was last swept of forgotten ones.
    added_since_sweep: usize,
}

impl Default for Lifecycle {
    fn default() -> Lifecycle {
        Lifecycle {
            active: HashMap::default(),
            forgotten_before_us: i64::MIN,
            added_since_sweep: 0,
        }
    }
}

impl Lifecycle {
    /// The alert kept for `key`, unless it is forgotten.
    fn live(&self, key: &[String]) -> Option<&Active> {
        (self.active.get(key)).filter(|a| !a.forgotten(self.forgotten_before_us))
    }

    /// Whether the condition holding for `key` at `now_us` would notify (a new alert, or a
    /// repeat past `repeat_interval`): callers skip building an observation that would be
    /// suppressed.
    pub fn notifies(&self, meta: &RuleMeta, key: &[String], now_us: i64) -> bool {
        self.live(key)
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
        let cutoff = self.forgotten_before_us;
        match (self.active.get_mut(obs.key)).filter(|a| !a.forgotten(cutoff)) {
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
                self.added_since_sweep += 1;
                // Replaces a forgotten alert of the same key, if the sweep has not yet.
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
        if a.forgotten(self.forgotten_before_us) {
            return None; // nothing is firing to resolve
        }
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
        self.live(key).is_some()
    }

    pub fn firing_keys(&self) -> Vec<Vec<String>> {
        (self.active.iter())
            .filter(|(_, a)| !a.forgotten(self.forgotten_before_us))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Forgets alerts that were last notified before `cutoff_us` (match and new-value rules,
    /// whose alerts never resolve, once they can no longer suppress a repeat).
    ///
    /// Forgetting is immediate; removing is not. A match rule keyed by event id keeps every
    /// alert of its `repeat_interval` (up to a day), and a pass over all of them on each call,
    /// that is each one-second cell, was a sixth of the alert-heavy stage's time. `active` is
    /// swept once the alerts added since the last sweep are half as many as it holds: the
    /// sweeps cost O(1) per alert added, and `active` holds at most half as many again as it
    /// held after the last sweep, plus the alerts one call adds.
    pub fn forget_before(&mut self, cutoff_us: i64) {
        self.forgotten_before_us = self.forgotten_before_us.max(cutoff_us);
        if self.added_since_sweep * 2 >= self.active.len() {
            let cutoff = self.forgotten_before_us;
            self.active.retain(|_, a| !a.forgotten(cutoff));
            self.added_since_sweep = 0;
        }
    }

    /// Alerts kept, forgotten ones not yet swept included.
    #[cfg(test)]
    fn num_kept(&self) -> usize {
        self.active.len()
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
        // Pinned: ids are stored by Splunk and the archive, so their text never changes
        // (sha256("r" 0x00 "k1"), first 8 bytes in hex).
        assert_eq!(alert_id("r", &["k1".into()]), "r-0c588722a22080fc");
        let a = alert_id("r", &["k1".into()]);
        assert_eq!(a, alert_id("r", &["k1".into()]));
        assert_ne!(a, alert_id("r", &["k2".into()]));
        assert_ne!(
            alert_id("r", &["a".into(), "bc".into()]),
            alert_id("r", &["ab".into(), "c".into()])
        );
    }

    const S: i64 = 1_000_000;

    /// A match rule's metadata, repeats suppressed for an hour.
    fn meta() -> RuleMeta {
        let text = "groups:\n  - name: g\n    rules:\n      - id: m\n        kind: match\n        where: \"granted = true\"\n        repeat_interval: 1h\n        severity: low\n        summary: s\n";
        let ctx = datafusion::execution::context::SessionContext::new();
        let mut rules = super::super::parse_rules(&ctx, text, std::path::Path::new("r.yaml")).unwrap();
        rules.remove(0).meta
    }

    fn obs(key: &[String]) -> Observation<'_> {
        Observation {
            key,
            labels: BTreeMap::new(),
            value: 1.0,
            threshold: None,
            evidence: Vec::new(),
            context: BTreeMap::new(),
        }
    }

    /// A forgotten alert is gone at once for every lookup, though the sweep that removes it
    /// comes later: it notifies again as a new alert, is not firing and resolves nothing.
    #[test]
    fn a_forgotten_alert_is_gone_before_the_sweep_removes_it() {
        let meta = meta();
        let mut lifecycle = Lifecycle::default();
        let key = |name: &str| vec![name.to_owned()];
        assert_eq!(lifecycle.firing(&meta, obs(&key("a")), 0).unwrap().started_at_us, 0);
        for i in 0..10 {
            lifecycle.firing(&meta, obs(&key(&format!("k{i}"))), 20 * S);
        }
        lifecycle.forget_before(5 * S);
        assert_eq!(lifecycle.num_kept(), 10, "swept: as many added as kept");
        assert!(!lifecycle.is_firing(&key("a")));

        lifecycle.firing(&meta, obs(&key("b")), 21 * S);
        assert!(
            !lifecycle.notifies(&meta, &key("b"), 22 * S),
            "a repeat within the hour"
        );
        lifecycle.forget_before(30 * S);
        assert_eq!(lifecycle.num_kept(), 11, "not swept: one added against ten kept");
        assert!(lifecycle.firing_keys().is_empty());
        assert!(!lifecycle.is_firing(&key("k0")));
        assert!(
            lifecycle.clear(&meta, obs(&key("k0")), 31 * S).is_none(),
            "nothing to resolve"
        );
        assert!(lifecycle.notifies(&meta, &key("b"), 31 * S), "forgotten, so new");
        let again = lifecycle.firing(&meta, obs(&key("b")), 31 * S).unwrap();
        assert_eq!(
            again.started_at_us,
            31 * S,
            "a new alert, not a repeat of the forgotten one"
        );
        assert_eq!(lifecycle.firing_keys(), [key("b")]);
        assert!(
            lifecycle.firing(&meta, obs(&key("b")), 32 * S).is_none(),
            "its repeats are suppressed"
        );

        for i in 0..6 {
            lifecycle.firing(&meta, obs(&key(&format!("n{i}"))), 40 * S);
        }
        lifecycle.forget_before(30 * S);
        assert_eq!(
            lifecycle.num_kept(),
            7,
            "swept: b and the six new ones are what is live"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(format_number(50.0), "50");
        assert_eq!(format_number(0.25), "0.250");
    }
}
