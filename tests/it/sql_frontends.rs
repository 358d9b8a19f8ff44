//! SQL front ends against a running pipeline: the PostgreSQL wire protocol with the real `psql`
//! client and a Rust driver (simple and extended protocol, catalog queries, views, read-only),
//! a password, the HTTP endpoint's bearer token, and the row limit on both.

use std::process::Command;
use std::time::Duration;

use crate::faults::{default_text, setup, start, stop, with_server};
use crate::support::eventually;
use crate::support::hec::HecReceiver;
use crate::support::psql::{psql_async, stdout};

const TOKEN: &str = crate::faults::TOKEN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_a_postgres_driver_query_the_window() {
    let s = setup(20).await;
    let hec = HecReceiver::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let group = "Tech00-sql-pg";
    let text = with_server(
        &default_text(&s.bootstrap, group, &hec, &dir),
        "pg_listen = \"127.0.0.1:0\"",
    );
    assert!(text.contains("pg_listen"));
    let (running, shutdown) = start(&text).await;
    let port = running.pg_addr.unwrap().port();
    eventually(Duration::from_secs(30), "the 20 events in the window", || {
        hec.audit_ids().len() == 20
    })
    .await;

    // psql, simple query protocol.
    let count = psql_async(port, None, "SELECT count(*) FROM audit_events").await;
    assert_eq!(stdout(&count), "20");
    let o = psql_async(
        port,
        None,
        "SELECT resource_name FROM audit_events WHERE resource_name = 'Tech01-orders-7'",
    )
    .await;
    assert_eq!(stdout(&o), "Tech01-orders-7");
    // What clients send on connect.
    let o = psql_async(port, None, "SELECT current_database()").await;
    assert_eq!(stdout(&o), "auditflow");
    let o = psql_async(port, None, "SELECT version()").await;
    assert!(!stdout(&o).is_empty());
    let o = psql_async(
        port,
        None,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name",
    )
    .await;
    assert_eq!(
        stdout(&o).lines().collect::<Vec<_>>(),
        ["alerts", "audit_events", "auth_failures", "metrics", "topic_traffic"]
    );
    let o = psql_async(
        port,
        None,
        "SELECT relname FROM pg_catalog.pg_class WHERE relname = 'audit_events'",
    )
    .await;
    assert_eq!(stdout(&o), "audit_events");
    // Every table reads whole, maps (`labels`) as JSON text: the wire has no map type.
    for table in ["metrics", "alerts"] {
        let o = psql_async(port, None, &format!("SELECT * FROM {table}")).await;
        assert!(o.status.success(), "{table}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let o = psql_async(
        port,
        None,
        "SELECT map(['topic', 'kafka.id'], ['orders', 'lkc-1']) AS labels",
    )
    .await;
    let labels: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("a JSON object");
    assert_eq!(labels, serde_json::json!({"kafka.id": "lkc-1", "topic": "orders"}));
    // Read-only, with a clear message.
    for statement in [
        "DROP TABLE audit_events",
        "INSERT INTO alerts (id) VALUES ('x')",
        "CREATE TABLE t (a INT)",
    ] {
        let o = psql_async(port, None, statement).await;
        assert!(!o.status.success(), "{statement} was accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("read-only"), "{statement}: {err}");
    }

    // A Rust driver: extended query protocol with parameters.
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=grafana dbname=auditflow"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT principal, count(*) AS n FROM audit_events WHERE resource_type = $1 GROUP BY principal",
            &[&"Topic"],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "User:sa-r8v2kq");
    assert_eq!(rows[0].get::<_, i64>(1), 20);
    let rows = client.query("SELECT labels FROM alerts", &[]).await.unwrap();
    assert!(rows.is_empty());
    let rows = client.query("SELECT count(*) FROM auth_failures", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 0);
    let rows = client.simple_query("SHOW TABLES").await.unwrap();
    let shown = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get("table_name").map(str::to_owned),
            _ => None,
        })
        .collect::<Vec<_>>();
    assert!(shown.iter().any(|t| t == "topic_traffic"), "{shown:?}");
    let err = client.execute("DELETE FROM audit_events", &[]).await.unwrap_err();
    assert!(format!("{err:?}").contains("read-only"), "{err:?}");
    // `raw` (stored as string views) reads back as the original event.
    let rows = client.query("SELECT id, raw FROM audit_events", &[]).await.unwrap();
    assert_eq!(rows.len(), 20);
    for r in &rows {
        let raw: serde_json::Value = serde_json::from_str(r.get::<_, &str>(1)).unwrap();
        assert_eq!(raw["id"], r.get::<_, &str>(0));
    }

    // Large results stream over HTTP, in every format, whole.
    let url = format!("http://{}/v1/sql", running.http_addr.unwrap());
    let http = reqwest::Client::new();
    let raw = serde_json::json!({"sql": "SELECT id, raw FROM audit_events"});
    let rows: Vec<serde_json::Value> = http.post(&url).json(&raw).send().await.unwrap().json().await.unwrap();
    assert_eq!(rows.len(), 20);
    for r in &rows {
        let event: serde_json::Value = serde_json::from_str(r["raw"].as_str().unwrap()).unwrap();
        assert_eq!(event["id"], r["id"]);
    }
    let n = arrow_rows(&http, &url, &raw).await;
    assert_eq!(n, 20);
    let big = serde_json::json!({"sql": "SELECT unnest(range(0, 50000)) AS n"});
    let rows: Vec<serde_json::Value> = http.post(&url).json(&big).send().await.unwrap().json().await.unwrap();
    assert_eq!(rows.len(), 50_000);
    assert_eq!(rows[49_999]["n"], 49_999);
    let csv = http
        .post(&url)
        .header("Accept", "text/csv")
        .json(&big)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(csv.lines().count(), 50_001);
    assert_eq!(csv.lines().filter(|l| *l == "n").count(), 1, "one header");
    let n = arrow_rows(&http, &url, &big).await;
    assert_eq!(n, 50_000);

    stop(running, shutdown, &s.bootstrap, group, 20).await;
    drop(s.cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_token_and_row_limit() {
    let s = setup(12).await;
    let hec = HecReceiver::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let group = "Tech00-sql-auth";
    let text = with_server(
        &default_text(&s.bootstrap, group, &hec, &dir),
        "pg_listen = \"127.0.0.1:0\"\ntoken = \"t-sql\"\npg_password = \"p-sql\"\nsql_max_rows = 5",
    );
    let (running, shutdown) = start(&text).await;
    let port = running.pg_addr.unwrap().port();
    let http = running.http_addr.unwrap();
    eventually(Duration::from_secs(30), "the 12 events in the window", || {
        hec.audit_ids().len() == 12
    })
    .await;

    let o = psql_async(port, None, "SELECT 1").await;
    assert!(!o.status.success(), "no password was asked for");
    let o = psql_async(port, Some("wrong"), "SELECT 1").await;
    assert!(!o.status.success(), "a wrong password was accepted");
    let o = psql_async(port, Some("p-sql"), "SELECT count(*) FROM audit_events").await;
    assert_eq!(stdout(&o), "12");
    // The row limit holds on the Postgres endpoint too (the session enforces it).
    let o = psql_async(port, Some("p-sql"), "SELECT id FROM audit_events").await;
    assert!(!o.status.success(), "12 rows passed a limit of 5");
    let message = String::from_utf8_lossy(&o.stderr);
    assert!(message.contains("more than 5 rows"), "{message}");

    let client = reqwest::Client::new();
    let url = format!("http://{http}/v1/sql");
    let body = serde_json::json!({"sql": "SELECT count(*) AS n FROM audit_events"});
    let r = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client.post(&url).bearer_auth("wrong").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client.post(&url).bearer_auth("t-sql").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()[0]["n"], 12);
    let r = client
        .post(&url)
        .bearer_auth("t-sql")
        .json(&serde_json::json!({"sql": "SELECT id FROM audit_events"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let message = r.json::<serde_json::Value>().await.unwrap()["error"].to_string();
    assert!(message.contains("more than 5 rows"), "{message}");

    // `auditflow sql` with the token; without it, a clear refusal.
    let binary = env!("CARGO_BIN_EXE_auditflow");
    let base = format!("http://{http}");
    let o = Command::new(binary)
        .args(["sql", "--url", &base, "--format", "csv", "--token", "t-sql"])
        .arg("SELECT count(*) AS n FROM audit_events")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "n\n12");
    let o = Command::new(binary)
        .args(["sql", "--url", &base])
        .arg("SELECT 1")
        .env_remove("AUDITFLOW_TOKEN")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("bearer token"));

    stop(running, shutdown, &s.bootstrap, group, 12).await;
    drop(s.cluster);
}

/// Rows of the Arrow IPC stream `POST /v1/sql` answers for `query`.
async fn arrow_rows(http: &reqwest::Client, url: &str, query: &serde_json::Value) -> usize {
    let arrow = http
        .post(url)
        .header("Accept", "application/vnd.apache.arrow.stream")
        .json(query)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(arrow), None).unwrap();
    reader.map(|b| b.unwrap().num_rows()).sum()
}
