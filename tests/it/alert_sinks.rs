//! Every alert reaches every alert sink through the one acknowledgement path: alerts raised off
//! the batch path (a `sql` rule on its schedule, the HEC sink's refused-token alert) reach the
//! Kafka alerts topic and the file sink like rule alerts do.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;

use crate::faults::{default_text, setup, start};
use crate::support::eventually;
use crate::support::hec::HecReceiver;
use crate::support::kafka::read_all;

const SQL_RULE: &str = r#"
groups:
  - name: it
    rules:
      - id: it-audit-events-seen
        kind: sql
        every: 1s
        query: "SELECT count(*) AS value FROM audit_events HAVING count(*) >= 1"
        severity: low
        summary: "{{ value }} audit events in the window"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_rule_and_refused_token_alerts_reach_the_alerts_topic() {
    let s = setup(10).await;
    s.cluster.create_topic("auditflow-alerts", 1, 1).unwrap();
    // HEC refuses the token for the whole test: its alert is raised and must travel anyway.
    let hec = HecReceiver::start("a-different-token").await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(rules.join("it.yaml"), SQL_RULE).unwrap();
    let text = default_text(&s.bootstrap, "Tech00-alert-sinks", &hec, &dir);
    let shipped = format!("dirs = [\"{}\"]", crate::support::repo("rules").display());
    assert!(text.contains(&shipped));
    let text = text.replace(&shipped, &format!("dirs = [\"{}\"]", rules.display()));
    let (running, shutdown) = start(&text).await;

    let wanted = ["it-audit-events-seen", "auditflow-hec-refused"];
    let bootstrap = s.bootstrap.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let on_topic = loop {
        let b = bootstrap.clone();
        let records =
            tokio::task::spawn_blocking(move || read_all(&b, "auditflow-alerts", 1, 2, Duration::from_secs(5)))
                .await
                .unwrap();
        let ids: HashSet<String> = records
            .iter()
            .filter_map(|r| serde_json::from_slice::<Value>(&r.payload).ok())
            .filter_map(|v| v["rule_id"].as_str().map(str::to_owned))
            .collect();
        if wanted.iter().all(|w| ids.contains(*w)) {
            break records;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "alerts topic has {ids:?}, wanted {wanted:?}"
        );
    };
    // Keyed by alert id, the same JSON the other sinks carry.
    for r in &on_topic {
        let v: Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(r.key.as_deref(), v["id"].as_str().map(str::as_bytes), "{v}");
        assert!(v["status"] == "firing" || v["status"] == "resolved", "{v}");
    }
    // The file sink, the other alert sink here, has both too.
    let out = dir.path().join("o.jsonl");
    eventually(Duration::from_secs(20), "both alerts in the file sink", || {
        std::fs::read_to_string(&out).is_ok_and(|t| wanted.iter().all(|w| t.contains(&format!("\"rule_id\":\"{w}\""))))
    })
    .await;
    shutdown.cancel();
    running.wait(Duration::from_secs(5)).await.unwrap();
    drop(s.cluster);
}
