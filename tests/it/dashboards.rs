//! Dashboards are code: every Grafana panel's SQL runs against the engine, and every field a
//! Splunk search names is one the pipeline emits.

use std::collections::HashSet;
use std::time::Duration;

use auditflow::event::{AuditRow, AuthzVia, PrincipalType};
use auditflow::query::engine::QueryEngine;
use auditflow::query::window::Window;
use serde_json::Value;

use crate::support::repo;

#[tokio::test]
async fn every_grafana_panel_query_runs() {
    let text = std::fs::read_to_string(repo("dashboards/grafana-auditflow-sre.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let engine = QueryEngine::new(&Window::new(Duration::from_secs(3600)));
    let mut n = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let body: Value = serde_json::from_str(target["url_options"]["data"].as_str().unwrap()).unwrap();
            let sql = body["sql"].as_str().unwrap();
            engine
                .query(sql)
                .await
                .unwrap_or_else(|e| panic!("panel {:?}: {sql}: {e}", panel["title"]));
            n += 1;
        }
    }
    assert!(n >= 4);
}

#[test]
fn every_splunk_field_is_emitted() {
    // What the HEC sink emits: indexed fields of audit events (a fully populated row), alert
    // event keys and fields, and HEC's own metadata.
    let row = AuditRow {
        cluster_id: Some("c".into()),
        organization: Some("o".into()),
        environment: Some("e".into()),
        principal_type: PrincipalType::User,
        authz_via: AuthzVia::Acl,
        resource_app: Some("a".into()),
        principal_app: Some("b".into()),
        cross_namespace: Some(true),
        auth_identifier: Some("k".into()),
        principal: Some("p".into()),
        client_ip: Some("1.2.3.4".into()),
        method: Some("kafka.CreateAcls".into()),
        auth_mechanism: Some("SSL".into()),
        resource_name: Some("r".into()),
        resource_type: Some("Topic".into()),
        ..AuditRow::default()
    };
    let mut emitted: HashSet<String> = auditflow::sinks::audit_fields(&row)
        .into_iter()
        .map(|(k, _)| k.to_owned())
        .collect();
    let alert = auditflow::event::Alert {
        id: "i".into(),
        rule_id: "r".into(),
        severity: "low".into(),
        status: auditflow::event::AlertStatus::Firing,
        started_at_us: 0,
        resolved_at_us: None,
        time_us: 0,
        labels: Default::default(),
        value: 1.0,
        threshold: None,
        summary: "s".into(),
        description: None,
        runbook: None,
        evidence: vec![],
    };
    emitted.extend(
        auditflow::sinks::alert_json(&alert)
            .as_object()
            .unwrap()
            .keys()
            .cloned(),
    );
    emitted.extend(["sourcetype", "index", "source", "host", "alert_id"].map(String::from));
    // Metric samples: HEC's metric_name and the dimensions the encoder writes.
    emitted.extend(["metric_name", "metric_kind", "cluster_id", "topic", "resource_app"].map(String::from));
    // auditflow's JSON log (`--log-format json`, sourcetype auditflow:log): tracing's level and
    // target, and the fields of the dead-letter warning (pipeline::processor::dead_letter) as
    // props.conf aliases them.
    emitted.extend(["level", "target", "message", "class", "topic", "error"].map(String::from));

    // Every search of the Splunk app: dashboard queries, saved searches and eventtypes.
    let app = repo("dashboards/splunk/auditflow/default");
    let mut queries: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(app.join("data/ui/views")).unwrap() {
        let xml = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        queries.extend(
            xml.split("<query>")
                .skip(1)
                .map(|q| q.split("</query>").next().unwrap().replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")),
        );
    }
    for conf in ["savedsearches.conf", "eventtypes.conf"] {
        let text = std::fs::read_to_string(app.join(conf)).unwrap();
        queries.extend(text.lines().filter_map(|l| l.strip_prefix("search = ")).map(str::to_owned));
    }
    assert!(queries.len() >= 20, "{} searches", queries.len());
    let mut checked = 0;
    for query in &queries {
        let mut names: Vec<String> = Vec::new();
        // `field=value` filters.
        for token in query.split_whitespace() {
            if let Some((name, _)) = token.split_once('=')
                && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                && !name.is_empty()
            {
                names.push(name.to_owned());
            }
        }
        // `by a, b, c` clauses, up to the next pipe.
        for clause in query.split(" by ").skip(1) {
            let clause = clause.split('|').next().unwrap();
            names.extend(clause.split(',').map(|f| f.trim().to_owned()).filter(|f| !f.is_empty()));
        }
        // Aggregated fields: latest(x), dc(x).
        for func in ["latest(", "dc("] {
            for part in query.split(func).skip(1) {
                names.push(part.split(')').next().unwrap().to_owned());
            }
        }
        for name in names {
            if name == "span" {
                continue;
            }
            assert!(
                emitted.contains(&name),
                "Splunk query names `{name}`, which the pipeline never emits: {query}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 60, "{checked}");
}
