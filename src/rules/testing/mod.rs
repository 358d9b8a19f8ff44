//! `auditflow rules test DIR`: runs every `NAME.test.yaml` against the rules of `NAME.yaml`
//! beside it, like `promtool test rules`. A test feeds audit events and metric samples at times
//! relative to its start (with `repeat`/`every` shorthands) and states which alerts must fire
//! (rule, status, labels, optionally by when and how often) and which rules must stay silent.
//!
//! ```yaml
//! tests:
//!   - name: fifty failures in a minute fire
//!     input:
//!       - at: 0s
//!         repeat: 50
//!         every: 1s
//!         audit: {type: io.confluent.kafka.server/authentication, result_status: UNAUTHENTICATED, auth_identifier: K1}
//!     expect:
//!       - rule: auth-failure-burst
//!         labels: {auth_identifier: K1}
//!         at: 60s
//!     silent: [password-spray]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use datafusion::execution::context::SessionContext;

mod replay;
use serde::Deserialize;

use super::{RuleEngine, RulesError, parse_rules};
use crate::event::{Alert, AuditRow, AuthzVia, MetricKind, MetricSample, PrincipalType, Text};

/// Test time zero: 2026-01-01T00:00:00Z.
pub(crate) const BASE_US: i64 = 1_767_225_600_000_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    /// Rule files under test, relative to the test file. Default: `NAME.yaml` beside it.
    #[serde(default)]
    rule_files: Vec<PathBuf>,
    tests: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    #[serde(default)]
    input: Vec<Input>,
    #[serde(default)]
    expect: Vec<Expectation>,
    #[serde(default)]
    silent: Vec<String>,
    /// Deliver the input only in this order (default: each of in_order, by_partition and
    /// interleaved, and every one must pass).
    #[serde(default)]
    order: Option<replay::Order>,
    /// Partitions the input is spread over, keyed like the real topics. Default 3.
    #[serde(default = "three")]
    partitions: u32,
}

fn three() -> u32 {
    3
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default = "zero")]
    at: String,
    #[serde(default = "one")]
    repeat: u32,
    #[serde(default = "zero")]
    every: String,
    #[serde(default)]
    audit: Option<TestAuditEvent>,
    #[serde(default)]
    metric: Option<TestMetric>,
}

fn zero() -> String {
    "0s".into()
}
fn one() -> u32 {
    1
}

/// An audit event by its `audit_events` columns. `{n}` in a string becomes the repeat index.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestAuditEvent {
    #[serde(rename = "type", default)]
    event_type: Option<String>,
    id: Option<String>,
    method: Option<String>,
    service: Option<String>,
    organization: Option<String>,
    environment: Option<String>,
    cluster_id: Option<String>,
    resource_type: Option<String>,
    resource_name: Option<String>,
    principal: Option<String>,
    principal_type: Option<String>,
    auth_mechanism: Option<String>,
    auth_identifier: Option<String>,
    granted: Option<bool>,
    operation: Option<String>,
    authz_via: Option<String>,
    role: Option<String>,
    result_status: Option<String>,
    result_message: Option<String>,
    client_ip: Option<String>,
    client_port: Option<u16>,
    client_id: Option<String>,
    resource_app: Option<String>,
    principal_app: Option<String>,
    cross_namespace: Option<bool>,
    principal_name: Option<String>,
    principal_team: Option<String>,
    environment_name: Option<String>,
    region: Option<String>,
    cloud: Option<String>,
}

/// A metric sample by its `metrics` columns.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestMetric {
    name: String,
    value: f64,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    cluster_id: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    partition: Option<i32>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    resource_app: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    rule: String,
    #[serde(default = "firing")]
    status: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// The alert must have been raised by this time.
    #[serde(default)]
    at: Option<String>,
    /// Exactly this many notifications (default: at least one).
    #[serde(default)]
    count: Option<usize>,
}

fn firing() -> String {
    "firing".into()
}

/// One test's outcome.
#[derive(Debug)]
pub struct TestResult {
    pub file: PathBuf,
    pub name: String,
    pub failures: Vec<String>,
}

/// Everything a run found.
#[derive(Debug, Default)]
pub struct TestReport {
    pub results: Vec<TestResult>,
    pub expected_fired: usize,
    pub fired: usize,
    pub expected_silent: usize,
    pub silent: usize,
}

impl TestReport {
    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.failures.is_empty())
    }
}

fn fill(text: &Option<String>, n: u32) -> Option<String> {
    text.as_ref().map(|t| t.replace("{n}", &n.to_string()))
}

fn fill_text(text: &Option<String>, n: u32) -> Option<Text> {
    fill(text, n).map(Text::from)
}

fn audit_row(e: &TestAuditEvent, time_us: i64, n: u32, seq: usize) -> AuditRow {
    AuditRow {
        time_us,
        id: fill(&e.id, n).unwrap_or_else(|| format!("test-{seq}")),
        event_type: fill_text(&e.event_type, n).unwrap_or_else(|| "io.confluent.kafka.server/authorization".into()),
        method: fill_text(&e.method, n),
        service: fill_text(&e.service, n),
        organization: fill_text(&e.organization, n),
        environment: fill_text(&e.environment, n),
        cluster_id: fill_text(&e.cluster_id, n),
        resource_type: fill_text(&e.resource_type, n),
        resource_name: fill_text(&e.resource_name, n),
        principal: fill_text(&e.principal, n),
        principal_type: match e.principal_type.as_deref() {
            Some("user") => PrincipalType::User,
            Some("service_account") => PrincipalType::ServiceAccount,
            _ => PrincipalType::Unknown,
        },
        auth_mechanism: fill_text(&e.auth_mechanism, n),
        auth_identifier: fill_text(&e.auth_identifier, n),
        granted: e.granted,
        operation: fill_text(&e.operation, n),
        authz_via: match e.authz_via.as_deref() {
            Some("acl") => AuthzVia::Acl,
            Some("rbac") => AuthzVia::Rbac,
            Some("super_user") => AuthzVia::SuperUser,
            _ => AuthzVia::None,
        },
        role: fill_text(&e.role, n),
        result_status: fill_text(&e.result_status, n),
        result_message: fill_text(&e.result_message, n),
        client_ip: fill_text(&e.client_ip, n),
        client_port: e.client_port,
        client_id: fill_text(&e.client_id, n),
        resource_app: fill_text(&e.resource_app, n),
        principal_app: fill_text(&e.principal_app, n),
        cross_namespace: e.cross_namespace,
        principal_name: fill_text(&e.principal_name, n),
        principal_team: fill_text(&e.principal_team, n),
        environment_name: fill_text(&e.environment_name, n),
        region: fill_text(&e.region, n),
        cloud: fill_text(&e.cloud, n),
        raw: crate::event::Raw::from(&b"{}"[..]),
        origin: None,
    }
}

fn metric_sample(m: &TestMetric, time_us: i64, n: u32) -> MetricSample {
    let mut labels = m.labels.clone();
    if let Some(t) = &m.topic {
        labels.insert("topic".into(), t.replace("{n}", &n.to_string()));
    }
    MetricSample {
        time_us,
        name: m.name.clone(),
        value: m.value,
        kind: match m.kind.as_deref() {
            Some("gauge") => MetricKind::Gauge,
            Some("cumulative") => MetricKind::Cumulative,
            _ => MetricKind::Counter,
        },
        cluster_id: m.cluster_id.clone(),
        topic: fill(&m.topic, n),
        partition: m.partition,
        labels,
        resource_app: m.resource_app.clone(),
    }
}

#[derive(Clone)]
enum Item {
    Audit(Box<AuditRow>),
    Metric(MetricSample),
}

fn micros(path: &Path, test: &str, what: &str, text: &str) -> Result<i64, RulesError> {
    humantime::parse_duration(text)
        .map(|d| d.as_micros() as i64)
        .map_err(|e| RulesError::Parse {
            path: path.to_owned(),
            message: format!("test `{test}`: {what} `{text}` is not a duration: {e}"),
        })
}

/// Runs a query future to completion: on the ambient runtime's other threads when called from
/// one (`auditflow rules test`), else on a runtime of its own (unit tests).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => futures::executor::block_on(f),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds")
            .block_on(f),
    }
}

/// Runs one test case against freshly loaded rules (so tests do not share state).
fn run_case(
    ctx: &SessionContext,
    rule_texts: &[(PathBuf, String)],
    path: &Path,
    case: &TestCase,
    order: replay::Order,
) -> Result<(Vec<Alert>, i64), RulesError> {
    let mut rules = Vec::new();
    for (file, text) in rule_texts {
        rules.extend(parse_rules(ctx, text, file)?);
    }
    let mut engine = RuleEngine::new(rules);
    let mut sql_rules = engine.take_sql_rules();
    // `sql` rules query a window holding every input of the test.
    let window = crate::query::window::Window::new(std::time::Duration::from_secs(3650 * 86_400));
    let mut items: Vec<(i64, Item)> = Vec::new();
    let mut seq = 0;
    for input in &case.input {
        let at = micros(path, &case.name, "at", &input.at)?;
        let every = micros(path, &case.name, "every", &input.every)?;
        for n in 0..input.repeat {
            let t = BASE_US + at + every * i64::from(n);
            seq += 1;
            match (&input.audit, &input.metric) {
                (Some(a), None) => items.push((t, Item::Audit(Box::new(audit_row(a, t, n, seq))))),
                (None, Some(m)) => items.push((t, Item::Metric(metric_sample(m, t, n)))),
                _ => {
                    return Err(RulesError::Parse {
                        path: path.to_owned(),
                        message: format!(
                            "test `{}`: each input needs exactly one of `audit` or `metric`",
                            case.name
                        ),
                    });
                }
            }
        }
    }
    items.sort_by_key(|(t, _)| *t);
    let (mut alerts, end) = replay::run(&mut engine, &window, items, order, case.partitions);
    if !sql_rules.is_empty() {
        let query = crate::query::engine::QueryEngine::new(&window);
        for rule in &mut sql_rules {
            if let super::RuleKind::Sql(sql) = &mut rule.kind {
                alerts.extend(block_on(sql.run(&rule.meta, &query, end)));
            }
        }
    }
    Ok((alerts, end))
}

fn describe(a: &Alert) -> String {
    format!(
        "{} {} at +{}s labels {:?} value {}",
        a.rule_id,
        a.status.as_str(),
        (a.time_us - BASE_US) / 1_000_000,
        a.labels,
        a.value
    )
}

/// Runs one test file.
pub fn run_file(ctx: &SessionContext, path: &Path, report: &mut TestReport) -> Result<(), RulesError> {
    let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
        path: path.to_owned(),
        source,
    })?;
    let file: TestFile = serde_yaml::from_str(&text).map_err(|e| RulesError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let rule_files = if file.rule_files.is_empty() {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        vec![PathBuf::from(
            name.replace(".test.yaml", ".yaml").replace(".test.yml", ".yml"),
        )]
    } else {
        file.rule_files.clone()
    };
    let mut rule_texts = Vec::new();
    for f in rule_files {
        let full = dir.join(f);
        let text = std::fs::read_to_string(&full).map_err(|source| RulesError::Read {
            path: full.clone(),
            source,
        })?;
        rule_texts.push((full, text));
    }
    for case in &file.tests {
        let orders = match case.order {
            Some(o) => vec![o],
            None => replay::Order::ALL.to_vec(),
        };
        for order in orders {
            check_case(ctx, &rule_texts, path, case, order, report)?;
        }
    }
    Ok(())
}

/// Runs one test case in one delivery order and records what it found.
fn check_case(
    ctx: &SessionContext,
    rule_texts: &[(PathBuf, String)],
    path: &Path,
    case: &TestCase,
    order: replay::Order,
    report: &mut TestReport,
) -> Result<(), RulesError> {
    let (alerts, _) = run_case(ctx, rule_texts, path, case, order)?;
    let mut failures = Vec::new();
    for e in &case.expect {
        report.expected_fired += 1;
        let by = e.at.as_ref().map(|a| micros(path, &case.name, "at", a)).transpose()?;
        let matching: Vec<&Alert> = alerts
            .iter()
            .filter(|a| a.rule_id == e.rule && a.status.as_str() == e.status)
            .filter(|a| e.labels.iter().all(|(k, v)| a.labels.get(k) == Some(v)))
            .filter(|a| by.is_none_or(|by| a.time_us <= BASE_US + by))
            .collect();
        let ok = match e.count {
            Some(c) => matching.len() == c,
            None => !matching.is_empty(),
        };
        if ok {
            report.fired += 1;
        } else {
            let got: Vec<String> = alerts.iter().filter(|a| a.rule_id == e.rule).map(describe).collect();
            failures.push(format!(
                "expected {} {} {:?}{}{}, got {} matching; alerts of that rule: {}",
                e.rule,
                e.status,
                e.labels,
                e.at.as_ref().map(|a| format!(" by +{a}")).unwrap_or_default(),
                e.count.map(|c| format!(" x{c}")).unwrap_or_default(),
                matching.len(),
                if got.is_empty() { "none".into() } else { got.join("; ") }
            ));
        }
    }
    // Templates must render whole: a label a series lacks leaves no hole in the text.
    for a in &alerts {
        let hole = a.summary.contains("  ") || a.summary.contains("()") || a.summary.contains(" ,");
        if hole || a.summary.starts_with(' ') || a.summary.ends_with(' ') {
            failures.push(format!("{}: summary has a hole: {:?}", a.rule_id, a.summary));
        }
    }
    for rule in &case.silent {
        report.expected_silent += 1;
        let raised: Vec<String> = alerts.iter().filter(|a| &a.rule_id == rule).map(describe).collect();
        if raised.is_empty() {
            report.silent += 1;
        } else {
            failures.push(format!(
                "expected {rule} to stay silent, it raised: {}",
                raised.join("; ")
            ));
        }
    }
    report.results.push(TestResult {
        file: path.to_owned(),
        name: if case.order.is_some() {
            case.name.clone()
        } else {
            format!("{} [{}]", case.name, order.name())
        },
        failures,
    });
    Ok(())
}

/// Runs every `*.test.yaml` under `dir`.
pub fn run_dir(dir: &Path) -> Result<TestReport, RulesError> {
    let ctx = SessionContext::new();
    let files = super::find_files(dir, super::is_test_file)?;
    let mut report = TestReport::default();
    for f in files {
        run_file(&ctx, &f, &mut report)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The golden test: every shipped rule's test file passes.
    #[test]
    fn the_shipped_pack_passes_its_tests() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let report = run_dir(&dir).unwrap();
        let failures: Vec<String> = report
            .results
            .iter()
            .flat_map(|r| {
                r.failures
                    .iter()
                    .map(move |f| format!("{} / {}: {f}", r.file.display(), r.name))
            })
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert!(report.results.len() >= 10, "{} tests", report.results.len());
        assert_eq!(report.fired, report.expected_fired);
        assert_eq!(report.silent, report.expected_silent);
    }
}
