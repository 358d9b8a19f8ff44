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

/// A panel's SQL with the macros Grafana's PostgreSQL data source expands before sending it
/// (`$__timeFilter`, `$__timeGroup`, `$__timeGroupAlias`), for a 6-hour range.
fn expand_grafana_macros(sql: &str) -> String {
    let (from, to) = ("2026-12-03T10:00:00Z", "2026-12-03T16:00:00Z");
    let mut out = sql.to_owned();
    while let Some(start) = out.find("$__") {
        let open = start + out[start..].find('(').expect("a macro with arguments");
        let close = open + out[open..].find(')').unwrap();
        let name = &out[start + 3..open];
        let args: Vec<&str> = out[open + 1..close].split(',').map(str::trim).collect();
        let seconds = |interval: &str| -> u64 {
            let interval = interval.trim_matches('\'');
            let (n, unit) = interval.split_at(interval.len() - 1);
            let n: u64 = n.parse().unwrap();
            n * match unit {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                other => panic!("interval unit {other}"),
            }
        };
        let expanded = match name {
            "timeFilter" => format!("{} BETWEEN '{from}' AND '{to}'", args[0]),
            "timeGroup" => format!("floor(extract(epoch from {})/{s})*{s}", args[0], s = seconds(args[1])),
            "timeGroupAlias" => format!(
                "floor(extract(epoch from {})/{s})*{s} AS \"time\"",
                args[0],
                s = seconds(args[1])
            ),
            other => panic!("macro $__{other} is not expanded here"),
        };
        out.replace_range(start..=close, &expanded);
    }
    out
}

#[tokio::test]
async fn every_grafana_postgres_panel_runs_with_macros_expanded() {
    let dir = repo("dashboards/grafana/dashboards");
    let engine = QueryEngine::new(&Window::new(Duration::from_secs(3600)));
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap()).unwrap();
        for panel in dashboard["panels"].as_array().unwrap() {
            assert_eq!(panel["datasource"]["uid"], "auditflow-pg", "{:?}", panel["title"]);
            for target in panel["targets"].as_array().unwrap() {
                let sql = expand_grafana_macros(target["rawSql"].as_str().unwrap());
                engine
                    .query(&sql)
                    .await
                    .unwrap_or_else(|e| panic!("panel {:?}: {sql}: {e}", panel["title"]));
                n += 1;
            }
        }
    }
    assert!(n >= 6, "{n} panels");
    // The provisioning files name that data source and that folder.
    let datasource =
        std::fs::read_to_string(repo("dashboards/grafana/provisioning/datasources/auditflow.yaml")).unwrap();
    let datasource: serde_yaml::Value = serde_yaml::from_str(&datasource).unwrap();
    assert_eq!(datasource["datasources"][0]["uid"], "auditflow-pg");
    assert_eq!(datasource["datasources"][0]["type"], "grafana-postgresql-datasource");
    let provider = std::fs::read_to_string(repo("dashboards/grafana/provisioning/dashboards/auditflow.yaml")).unwrap();
    let provider: serde_yaml::Value = serde_yaml::from_str(&provider).unwrap();
    assert_eq!(provider["providers"][0]["type"], "file");
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
        queries.extend(xml.split("<query>").skip(1).map(|q| {
            q.split("</query>")
                .next()
                .unwrap()
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&")
        }));
    }
    for conf in ["savedsearches.conf", "eventtypes.conf"] {
        let text = std::fs::read_to_string(app.join(conf)).unwrap();
        queries.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("search = "))
                .map(str::to_owned),
        );
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
