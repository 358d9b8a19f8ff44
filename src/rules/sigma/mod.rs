//! Sigma in and out. Security teams write detections in Sigma (<https://sigmahq.io>); auditflow
//! exports its `match` and `count` rules as Sigma rules and correlation rules, and imports Sigma
//! detections and correlations as auditflow rules.
//!
//! - Log source: `product: confluent, service: audit` (the `audit_events` table).
//! - Fields: the audit columns as they are (`method`, `principal`, `granted`, `result_status`,
//!   `auth_identifier`, ...); on import the CloudEvent's own JSON paths (`data.methodName`,
//!   `data.authenticationInfo.principal`, ...) map to them ([`column_of`]).
//! - `count` rules become a base rule plus an `event_count` correlation (`value_count` with
//!   `distinct`); a correlation imports as a `count` rule over its base rules.
//! - What has no equivalent is an error naming the file, the rule and the construct.
//! - What Sigma cannot say (`group_by` of a `match` rule, `repeat_interval`, the summary
//!   template, the runbook) travels in a custom `auditflow:` attribute, so a round trip keeps it.

pub mod condition;
pub mod export;
pub mod import;
pub mod import_value;

use std::path::{Path, PathBuf};

/// Sigma's log source for the audit table.
pub const PRODUCT: &str = "confluent";
pub const SERVICE: &str = "audit";

#[derive(Debug, thiserror::Error)]
pub enum SigmaError {
    #[error("{path}: rule `{rule}`: {message}")]
    Convert {
        path: PathBuf,
        rule: String,
        message: String,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// What `rules export` did.
#[derive(Debug, Default)]
pub struct ExportReport {
    pub written: Vec<PathBuf>,
    /// Rules without a Sigma form, each with why.
    pub skipped: Vec<String>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SigmaError + '_ {
    move |source| SigmaError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Exports the `match` and `count` rules of every rule file under `dir` into `out`, a file per
/// rule (`ID.yml`).
pub fn export_dir(dir: &Path, out: &Path) -> Result<ExportReport, SigmaError> {
    let files = super::rule_files(dir).map_err(|e| SigmaError::Parse {
        path: dir.to_owned(),
        message: e.to_string(),
    })?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut report = ExportReport::default();
    for f in files {
        let (exported, skipped) = export::export_file(&f)?;
        for e in exported {
            let path = out.join(&e.file_name);
            std::fs::write(&path, e.yaml).map_err(io(&path))?;
            report.written.push(path);
        }
        report.skipped.extend(skipped);
    }
    Ok(report)
}

/// Imports a Sigma file, or every `*.yml`/`*.yaml` under a directory, into `out` (one auditflow
/// rule file per Sigma file), checking each written file loads as auditflow rules.
pub fn import_path(path: &Path, out: &Path) -> Result<Vec<PathBuf>, SigmaError> {
    let files = if path.is_dir() {
        super::find_files(path, |n| n.ends_with(".yml") || n.ends_with(".yaml")).map_err(|e| SigmaError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?
    } else {
        vec![path.to_owned()]
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let ctx = datafusion::execution::context::SessionContext::new();
    let mut written = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(io(&f))?;
        let rules = import::import_text(&text, &f)?;
        let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or("sigma");
        let target = out.join(format!("{stem}.yaml"));
        // What was written must load: a conversion bug is reported here, not at the next start.
        super::parse_rules(&ctx, &rules, &target).map_err(|e| SigmaError::Parse {
            path: f.clone(),
            message: format!("the converted rules do not load: {e}"),
        })?;
        std::fs::write(&target, rules).map_err(io(&target))?;
        written.push(target);
    }
    Ok(written)
}

/// The audit column named `name` (every column of `audit_events` but `raw`).
pub fn audit_column(name: &str) -> Option<&'static str> {
    let schema: &'static datafusion::arrow::datatypes::SchemaRef = &crate::event::arrow::AUDIT_SCHEMA;
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .find(|c| *c == name && *c != "raw")
}

/// The audit column a Sigma field names: a column as it is, or a CloudEvent JSON path.
pub fn column_of(field: &str) -> Option<&'static str> {
    if let Some(c) = audit_column(field) {
        return Some(c);
    }
    Some(match field {
        "specversion" | "source" | "subject" => return None,
        "data.methodName" => "method",
        "data.serviceName" => "service",
        "data.resourceName" => "resource_name",
        "data.authenticationInfo.principal" => "principal",
        "data.authenticationInfo.metadata.mechanism" => "auth_mechanism",
        "data.authenticationInfo.metadata.identifier" => "auth_identifier",
        "data.authorizationInfo.granted" => "granted",
        "data.authorizationInfo.operation" => "operation",
        "data.authorizationInfo.resourceType" => "resource_type",
        "data.authorizationInfo.resourceName" => "resource_name",
        "data.authorizationInfo.rbacAuthorization.role" => "role",
        "data.result.status" => "result_status",
        "data.result.message" => "result_message",
        "data.requestMetadata.client_address" | "data.clientAddress.ip" => "client_ip",
        "data.request.client_id" | "data.requestMetadata.client_id" => "client_id",
        _ => return None,
    })
}

/// auditflow severities to Sigma levels and back.
pub fn level_of(severity: &str) -> &'static str {
    match severity {
        "info" => "informational",
        "low" => "low",
        "medium" => "medium",
        "high" => "high",
        _ => "critical",
    }
}

pub fn severity_of(level: &str) -> Option<&'static str> {
    Some(match level {
        "informational" => "info",
        "low" => "low",
        "medium" => "medium",
        "high" => "high",
        "critical" => "critical",
        _ => return None,
    })
}

/// A stable UUID for a rule id (Sigma ids are UUIDs): the same rule exports the same id.
pub fn uuid_for(name: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("auditflow-rule:{name}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shipped rule test passes when its `match` and `count` rules are replaced by
    /// their Sigma round trip (export, then import): an imported rule fires exactly as the
    /// original.
    #[test]
    fn shipped_rules_survive_a_sigma_round_trip_in_their_tests() {
        let pack = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let work = tempfile::tempdir().unwrap();
        let ctx = datafusion::execution::context::SessionContext::new();
        let mut replaced = std::collections::BTreeSet::new();
        let mut report = crate::rules::testing::TestReport::default();
        for test in crate::rules::find_files(&pack, crate::rules::is_test_file).unwrap() {
            let mut spec: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&test).unwrap()).unwrap();
            let name = test.file_name().unwrap().to_str().unwrap();
            let rule_files: Vec<String> = match spec.get("rule_files") {
                Some(serde_yaml::Value::Sequence(s)) => s.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
                _ => vec![name.replace(".test.yaml", ".yaml")],
            };
            let dir = work.path().join(name.replace(".test.yaml", ""));
            std::fs::create_dir_all(&dir).unwrap();
            let mut new_files = Vec::new();
            for rf in rule_files {
                let original = pack.join(&rf);
                let (exported, _) = export::export_file(&original).unwrap();
                let mut ids = Vec::new();
                for e in &exported {
                    let sigma_file = dir.join(&e.file_name);
                    std::fs::write(&sigma_file, &e.yaml).unwrap();
                    let imported = import::import_text(&e.yaml, &sigma_file).unwrap();
                    let target = dir.join(e.file_name.replace(".yml", ".imported.yaml"));
                    crate::rules::parse_rules(&ctx, &imported, &target).unwrap();
                    std::fs::write(&target, imported).unwrap();
                    new_files.push(target.file_name().unwrap().to_str().unwrap().to_owned());
                    ids.push(e.file_name.trim_end_matches(".yml").to_owned());
                }
                replaced.extend(ids.iter().cloned());
                // The rest of the original file, as it was.
                let mut rest: serde_yaml::Value =
                    serde_yaml::from_str(&std::fs::read_to_string(&original).unwrap()).unwrap();
                for group in rest["groups"].as_sequence_mut().unwrap() {
                    group["rules"]
                        .as_sequence_mut()
                        .unwrap()
                        .retain(|r| !ids.iter().any(|id| r["id"].as_str() == Some(id)));
                }
                let rest_name = rf.replace(".yaml", ".rest.yaml");
                std::fs::write(dir.join(&rest_name), serde_yaml::to_string(&rest).unwrap()).unwrap();
                new_files.push(rest_name);
            }
            spec["rule_files"] = serde_yaml::to_value(&new_files).unwrap();
            let copy = dir.join(name);
            std::fs::write(&copy, serde_yaml::to_string(&spec).unwrap()).unwrap();
            crate::rules::testing::run_file(&ctx, &copy, &mut report).unwrap();
        }
        let failures: Vec<String> = report
            .results
            .iter()
            .flat_map(|r| r.failures.iter().map(move |f| format!("{}: {f}", r.name)))
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert_eq!(
            replaced.len(),
            13,
            "every shipped match and count rule on audit went through Sigma"
        );
        assert_eq!(report.fired, report.expected_fired);
    }

    #[test]
    fn fields_map_from_columns_and_cloudevent_paths() {
        assert_eq!(column_of("principal"), Some("principal"));
        assert_eq!(column_of("data.authenticationInfo.principal"), Some("principal"));
        assert_eq!(column_of("data.methodName"), Some("method"));
        assert_eq!(column_of("data.result.status"), Some("result_status"));
        assert_eq!(column_of("CommandLine"), None);
        assert_eq!(uuid_for("a"), uuid_for("a"));
        assert_ne!(uuid_for("a"), uuid_for("b"));
        assert!(uuid::Uuid::parse_str(&uuid_for("a")).is_ok());
    }
}
