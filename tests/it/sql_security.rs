//! The SQL endpoints probed as an attacker on the same network would: the real binary (`auditflow
//! demo`) and in-process pipelines, with `psql`, `tokio-postgres`, raw sockets and HTTP. Each
//! attack must be refused with a clear message, leave nothing on disk and no setting changed,
//! hold memory, and leave the process alive and the pipeline delivering.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::faults::{TOKEN, default_text, setup, start, stop, with_server};
use crate::support::eventually;
use crate::support::hec::HecReceiver;
use crate::support::psql::{psql_with as psql, stderr, stdout};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The demo binary, killed when the test ends.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Peak resident memory of a process, bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

async fn http_sql(client: &reqwest::Client, base: &str, sql: &str) -> (u16, String) {
    let r = client
        .post(format!("{base}/v1/sql"))
        .json(&serde_json::json!({ "sql": sql }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn audit_rows(client: &reqwest::Client, base: &str) -> u64 {
    let (status, body) = http_sql(client, base, "SELECT count(*) AS n FROM audit_events").await;
    assert_eq!(status, 200, "{body}");
    let rows: serde_json::Value = serde_json::from_str(&body).unwrap();
    rows[0]["n"].as_u64().unwrap()
}

/// A refusal names why: read-only, or a statement the Postgres dialect does not even parse
/// (DataFusion's own `COPY ... STORED AS`, `CREATE EXTERNAL TABLE`), or more than one where
/// one is taken.
fn refusal(message: &str) -> bool {
    ["read-only", "SQL error", "single SQL statement", "one statement"]
        .iter()
        .any(|m| message.contains(m))
}

/// The statements that wrote files before: refused on every front end, nothing on disk.
fn file_writes(dir: &std::path::Path) -> Vec<(String, std::path::PathBuf)> {
    let csv = dir.join("pwned.csv");
    let parquet = dir.join("sub/dir/pwned.parquet");
    vec![
        (
            format!("EXPLAIN (ANALYZE) COPY (SELECT 'x' AS x) TO '{}'", csv.display()),
            csv.clone(),
        ),
        (
            format!("explain analyze copy (select 'x' as x) to '{}'", csv.display()),
            csv.clone(),
        ),
        (
            format!("EXPLAIN (ANALYZE true, VERBOSE) COPY (SELECT 1) TO '{}'", csv.display()),
            csv.clone(),
        ),
        (format!("COPY (SELECT 'x' AS x) TO '{}'", csv.display()), csv.clone()),
        (
            format!("COPY audit_events TO '{}' STORED AS PARQUET", parquet.display()),
            parquet.clone(),
        ),
        (format!("/* hi */ CoPy (SELECT 1) TO '{}'", csv.display()), csv.clone()),
        ("COPY (SELECT 1) TO '/proc/self/mem'".into(), dir.join("never")),
        (
            format!("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{}'", csv.display()),
            csv.clone(),
        ),
        (format!("SELECT 1; COPY (SELECT 1) TO '{}'", csv.display()), csv),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_binary_survives_the_attacks_and_keeps_delivering() {
    let (http_port, pg_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_auditflow"))
        .args(["demo", "--rate", "50"])
        .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
        .args(["--pg-listen", &format!("127.0.0.1:{pg_port}")])
        .arg("--output")
        .arg(dir.path().join("out.jsonl"))
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut demo = Demo(child);
    let pid = demo.0.id();
    let base = format!("http://127.0.0.1:{http_port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "the demo did not serve /healthz");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while audit_rows(&http, &base).await == 0 {
        assert!(Instant::now() < deadline, "no audit rows in the demo's window");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (pg, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={pg_port} user=attacker dbname=auditflow"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let memory_before = peak_rss(pid);

    // 1. Writes: refused everywhere, with a clear message, nothing on disk.
    for (sql, path) in file_writes(dir.path()) {
        let started = Instant::now();
        let o = tokio::task::spawn_blocking({
            let sql = sql.clone();
            move || psql(pg_port, None, "", &sql)
        })
        .await
        .unwrap();
        assert!(!o.status.success(), "psql: {sql} was accepted");
        assert!(refusal(&stderr(&o)), "psql: {sql}: {}", stderr(&o));
        let e = pg.prepare(&sql).await.expect_err(&sql);
        assert!(refusal(&format!("{e:?}")), "extended: {sql}: {e:?}");
        let e = pg.simple_query(&sql).await.expect_err(&sql);
        assert!(refusal(&format!("{e:?}")), "simple: {sql}: {e:?}");
        let (status, body) = http_sql(&http, &base, &sql).await;
        assert_eq!(status, 400, "http: {sql}: {body}");
        assert!(refusal(&body), "http: {sql}: {body}");
        assert!(!path.exists(), "{sql} wrote {}", path.display());
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{sql} took {:?}",
            started.elapsed()
        );
    }
    assert!(!dir.path().join("sub").exists(), "no directory was created");

    // 2. Settings: refused, or (the harmless ones) kept to the connection.
    for sql in [
        "SET \"datafusion\".runtime.memory_limit = '64G'",
        "SET \"datafusion\".execution.batch_size = 1",
        "SET datafusion.execution.batch_size = 1",
        "SET timezone = '+05:00'",
        "SET TIME ZONE 'Asia/Tokyo'",
        "RESET datafusion.execution.batch_size",
    ] {
        let o = tokio::task::spawn_blocking(move || psql(pg_port, None, "", sql))
            .await
            .unwrap();
        assert!(!o.status.success(), "{sql} was accepted");
        assert!(
            stderr(&o).contains("not allowed") || stderr(&o).contains("read-only"),
            "{sql}: {}",
            stderr(&o)
        );
        let e = pg.simple_query(sql).await.expect_err(sql);
        assert!(
            format!("{e:?}").contains("read-only") || format!("{e:?}").contains("not allowed"),
            "{sql}: {e:?}"
        );
    }
    pg.simple_query("SET application_name = 'probe'").await.unwrap();
    pg.simple_query("SET extra_float_digits = 3").await.unwrap();
    pg.simple_query("SET TIME ZONE 'UTC'").await.unwrap();
    let shown = pg.simple_query("SHOW application_name").await.unwrap();
    assert!(
        shown
            .iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("probe"))),
        "the connection keeps its own setting"
    );
    let o = tokio::task::spawn_blocking(move || psql(pg_port, None, "", "SHOW application_name"))
        .await
        .unwrap();
    assert_ne!(stdout(&o), "probe", "another connection does not see it");
    let (status, body) = http_sql(
        &http,
        &base,
        "SELECT value FROM information_schema.df_settings WHERE name = 'datafusion.execution.batch_size'",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("8192"), "the engine's settings are unchanged: {body}");

    // 3. Deep expressions: a clear refusal, not a crash.
    let deep = format!("SELECT {}", vec!["1"; 2000].join("+"));
    let longer = format!("SELECT {}", vec!["1"; 30_000].join("+"));
    let nested = format!("SELECT {}1{}", "(".repeat(3000), ")".repeat(3000));
    for sql in [&deep, &longer, &nested] {
        let (status, body) = http_sql(&http, &base, sql).await;
        assert_eq!(status, 400, "{body}");
        let e = pg.simple_query(sql).await.unwrap_err();
        assert!(!format!("{e:?}").is_empty());
        let e = pg.prepare(sql).await.unwrap_err();
        assert!(!format!("{e:?}").is_empty());
        let o = tokio::task::spawn_blocking({
            let sql = sql.clone();
            move || psql(pg_port, None, "", &sql)
        })
        .await
        .unwrap();
        assert!(!o.status.success());
    }
    let (_, body) = http_sql(&http, &base, &deep).await;
    assert!(body.contains("deep"), "{body}");

    // 4. Work the limits did not cover: capped, refused, memory held.
    let mut doubling = String::from("WITH c0 AS (SELECT 1 AS x)");
    for i in 1..=40 {
        doubling.push_str(&format!(
            ", c{i} AS (SELECT x FROM c{} UNION ALL SELECT x FROM c{})",
            i - 1,
            i - 1
        ));
    }
    doubling.push_str(" SELECT count(*) FROM c40");
    for sql in [
        "SELECT length(repeat('x', 2000000000))",
        "SELECT length(lpad('x', 2000000000))",
        "SELECT count(*) FROM (SELECT unnest(range(0, 3000000000)))",
        doubling.as_str(),
    ] {
        let started = Instant::now();
        let (status, body) = http_sql(&http, &base, sql).await;
        assert_eq!(status, 400, "{sql}: {body}");
        assert!(
            body.contains("cap") || body.contains("expands to more than"),
            "{sql}: {body}"
        );
        let e = pg.simple_query(sql).await.unwrap_err();
        assert!(
            format!("{e:?}").contains("cap") || format!("{e:?}").contains("expands to"),
            "{e:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{sql} took {:?}",
            started.elapsed()
        );
    }

    // 5. A 1 GiB message header: the connection is closed as the header arrives.
    let mut raw = TcpStream::connect(("127.0.0.1", pg_port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(&startup_message("attacker")).unwrap();
    read_until_ready(&mut raw);
    raw.write_all(b"Q").unwrap();
    raw.write_all(&(1u32 << 30).to_be_bytes()).unwrap();
    let _ = raw.write_all(&vec![b' '; 1 << 20]);
    let mut rest = Vec::new();
    let read = raw.read_to_end(&mut rest);
    assert!(
        read.is_ok() || read.is_err(),
        "closed or reset, not waiting for a gigabyte"
    );
    let memory_after = peak_rss(pid);
    assert!(
        memory_after < memory_before + (512 << 20),
        "peak RSS grew from {memory_before} to {memory_after} bytes"
    );

    // 6. Alive, and the pipeline still delivers.
    assert!(demo.0.try_wait().unwrap().is_none(), "the demo process died");
    let seen = audit_rows(&http, &base).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while audit_rows(&http, &base).await <= seen {
        assert!(
            Instant::now() < deadline,
            "the pipeline stopped delivering after the attacks"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let o = tokio::task::spawn_blocking(move || psql(pg_port, None, "", "SELECT 1"))
        .await
        .unwrap();
    assert_eq!(stdout(&o), "1");
}

fn startup_message(user: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608u32.to_be_bytes());
    for (k, v) in [("user", user), ("database", "auditflow")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut m = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    m.extend(body);
    m
}

/// Reads one backend message: its type and payload.
fn read_message(raw: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 5];
    raw.read_exact(&mut head).unwrap();
    let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
    let mut payload = vec![0u8; len - 4];
    raw.read_exact(&mut payload).unwrap();
    (head[0], payload)
}

fn read_until_ready(raw: &mut TcpStream) {
    loop {
        let (kind, _) = read_message(raw);
        if kind == b'Z' {
            return;
        }
    }
}

/// With a token, a password and a certificate: SCRAM (never cleartext), TLS on both
/// endpoints, failed logins logged, counted and slowed, `/metrics` behind the token, and
/// `POST /v1/sql` only as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_by_scram_tls_and_failed_logins() {
    let s = setup(10).await;
    let hec = HecReceiver::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    crate::otlp_transports::make_certificates(dir.path());
    let group = "Tech00-sql-security-auth";
    let text = with_server(
        &default_text(&s.bootstrap, group, &hec, &dir),
        &format!(
            "pg_listen = \"127.0.0.1:0\"\ntoken = \"t-sec\"\npg_password = \"p-sec\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
            dir.path().join("server.pem").display(),
            dir.path().join("server.key").display()
        ),
    );
    let (running, shutdown) = start(&text).await;
    let port = running.pg_addr.unwrap().port();
    let http_port = running.http_addr.unwrap().port();
    eventually(Duration::from_secs(30), "the events at HEC", || {
        hec.audit_ids().len() == 10
    })
    .await;

    // The server asks for SCRAM-SHA-256 (SASL, code 10), never a cleartext password (code 3).
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(&startup_message("grafana")).unwrap();
    let (kind, payload) = read_message(&mut raw);
    assert_eq!(kind, b'R');
    assert_eq!(u32::from_be_bytes(payload[..4].try_into().unwrap()), 10, "SASL");
    assert!(String::from_utf8_lossy(&payload[4..]).contains("SCRAM-SHA-256"));
    drop(raw);

    let ca = dir.path().join("ca.pem");
    let tls = format!("sslmode=verify-full sslrootcert={}", ca.display());
    let o = tokio::task::spawn_blocking({
        let tls = tls.clone();
        move || psql(port, Some("p-sec"), &tls, "SELECT ssl FROM (SELECT 1 AS ssl)")
    })
    .await
    .unwrap();
    assert_eq!(stdout(&o), "1", "psql over TLS with the password");
    let o = tokio::task::spawn_blocking(move || psql(port, Some("p-sec"), "", "SELECT count(*) FROM audit_events"))
        .await
        .unwrap();
    assert_eq!(stdout(&o), "10");

    // Wrong passwords: each refused, counted, and from the third on answered late.
    let mut last = Duration::ZERO;
    for _ in 0..4 {
        let started = Instant::now();
        let o = tokio::task::spawn_blocking(move || psql(port, Some("wrong"), "", "SELECT 1"))
            .await
            .unwrap();
        last = started.elapsed();
        assert!(!o.status.success());
        assert!(stderr(&o).to_lowercase().contains("password"), "{}", stderr(&o));
    }
    assert!(
        last >= Duration::from_millis(200),
        "the fourth failure in a row waited only {last:?}"
    );

    // HTTPS with the private CA; the token guards /v1/sql and /metrics.
    let pem = std::fs::read(&ca).unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let base = format!("https://localhost:{http_port}");
    let body = serde_json::json!({"sql": "SELECT count(*) AS n FROM audit_events"});
    let r = https.post(format!("{base}/v1/sql")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = https
        .post(format!("{base}/v1/sql"))
        .bearer_auth("t-sec")
        .header("Content-Type", "text/plain")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415, "only JSON bodies");
    assert!(r.text().await.unwrap().contains("application/json"));
    let r = https
        .post(format!("{base}/v1/sql"))
        .bearer_auth("t-sec")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()[0]["n"], 10);
    let r = https.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401, "/metrics follows the token");
    let metrics = https
        .get(format!("{base}/metrics"))
        .bearer_auth("t-sec")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failures = |endpoint: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("auditflow_sql_auth_failures_total{{endpoint=\"{endpoint}\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(failures("postgres") >= 4, "{metrics}");
    assert!(failures("http") >= 2, "{metrics}");
    // Plain HTTP is not served next to HTTPS.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{http_port}/healthz"))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);

    stop(running, shutdown, &s.bootstrap, group, 10).await;
    drop(s.cluster);
}

/// Without a token, `POST /v1/sql` answers only requests that name this server (a DNS
/// rebinding page names its own host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_host_must_be_this_server() {
    let s = setup(5).await;
    let hec = HecReceiver::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let group = "Tech00-sql-security-host";
    let (running, shutdown) = start(&default_text(&s.bootstrap, group, &hec, &dir)).await;
    let addr = running.http_addr.unwrap();
    eventually(Duration::from_secs(30), "the events at HEC", || {
        hec.audit_ids().len() == 5
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/sql");
    let body = serde_json::json!({"sql": "SELECT 1 AS one"});
    for (host, status) in [
        (format!("{addr}"), 200),
        (format!("localhost:{}", addr.port()), 200),
        (format!("attacker.example:{}", addr.port()), 421),
        ("127.0.0.1:1".to_owned(), 421),
    ] {
        let r = client
            .post(&url)
            .header("Host", &host)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "Host: {host}");
    }
    let r = client
        .post(&url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415, "a form post from a web page is refused");
    stop(running, shutdown, &s.bootstrap, group, 5).await;
    drop(s.cluster);
}

/// Hundreds of half-open sockets, a client that never reads its result, and a portal left open
/// after one fetch: all bounded by the connection cap and the timeouts; afterwards `/healthz`,
/// `psql` and the pipeline work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_and_slow_clients_timed_out() {
    let s = setup(10).await;
    let hec = HecReceiver::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let group = "Tech00-sql-security-conns";
    let text = with_server(
        &default_text(&s.bootstrap, group, &hec, &dir),
        "pg_listen = \"127.0.0.1:0\"\nmax_connections = 16\nclient_timeout = \"2s\"\nidle_timeout = \"10s\"\nsql_timeout = \"3s\"",
    );
    let (running, shutdown) = start(&text).await;
    let http = running.http_addr.unwrap();
    let pg_port = running.pg_addr.unwrap().port();
    eventually(Duration::from_secs(30), "the events at HEC", || {
        hec.audit_ids().len() == 10
    })
    .await;

    // 300 half-open sockets per endpoint.
    let mut sockets = Vec::new();
    for port in [http.port(), pg_port] {
        for _ in 0..300 {
            let socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
            socket.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            sockets.push(socket);
        }
    }
    let started = Instant::now();
    for socket in &mut sockets {
        let mut buf = [0u8; 256];
        // Closed by the cap at once, or by client_timeout: never held open.
        let _ = socket.read(&mut buf);
    }
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "half-open sockets held for {:?}",
        started.elapsed()
    );
    drop(sockets);
    let client = reqwest::Client::new();
    let r = client.get(format!("http://{http}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let o = tokio::task::spawn_blocking(move || psql(pg_port, None, "", "SELECT count(*) FROM audit_events"))
        .await
        .unwrap();
    assert_eq!(stdout(&o), "10");
    let metrics = client
        .get(format!("http://{http}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("auditflow_sql_connections_refused_total{endpoint=\"http\"}"),
        "{metrics}"
    );

    // A client that asks for a long result and never reads it is cut off.
    let mut reader = TcpStream::connect(http).unwrap();
    let body = r#"{"sql": "SELECT * FROM generate_series(1, 1000000000)"}"#;
    write!(
        reader,
        "POST /v1/sql HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    reader.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    let mut sink = Vec::new();
    let _ = reader.read_to_end(&mut sink);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the stalled response was not cut off"
    );
    assert!(
        sink.len() < 100 << 20,
        "{} bytes buffered for a client that did not read",
        sink.len()
    );

    // A portal left open after one fetch is closed at sql_timeout; cursors are refused.
    let (mut pg, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={pg_port} user=grafana dbname=auditflow"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let e = pg
        .simple_query("DECLARE c CURSOR FOR SELECT * FROM audit_events")
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("cursors"), "{e:?}");
    let tx = pg.transaction().await.unwrap();
    let portal = tx
        .bind("SELECT * FROM generate_series(1, 1000000000) AS t(n)", &[])
        .await
        .unwrap();
    let first = tx.query_portal(&portal, 1).await.unwrap();
    assert_eq!(first.len(), 1);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let rest = tx.query_portal(&portal, 100_000).await;
    let e = rest.expect_err("the portal outlived sql_timeout");
    assert!(format!("{e:?}").contains("sql_timeout"), "{e:?}");
    drop(tx);

    // The pipeline delivered throughout.
    assert_eq!(hec.audit_ids().len(), 10);
    stop(running, shutdown, &s.bootstrap, group, 10).await;
    drop(s.cluster);
}

/// `auditflow config check` never prints a secret: not a mistyped key's value, not a value with
/// an unterminated `${`, not the password in a URL.
#[test]
fn config_errors_and_output_hide_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| -> String {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_auditflow"))
            .args(["config", "check"])
            .arg(&path)
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let base = "[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\nsasl_username = \"KEY\"\n";
    let out = check(&format!("{base}sasl_pasword = \"hunter2\"\n"));
    assert!(out.contains("sasl_pasword") && out.contains("line 4"), "{out}");
    assert!(!out.contains("hunter2"), "{out}");
    let out = check(&format!("{base}sasl_password = \"hunter2${{oops\"\n"));
    assert!(out.contains("unterminated"), "{out}");
    assert!(!out.contains("hunter2"), "{out}");
    let out = check(&format!(
        "{base}sasl_password = \"hunter2\"\n[sinks.splunk_hec]\nendpoints = [\"https://admin:hunter2@splunk.example:8088\"]\ntoken = \"t\"\n"
    ));
    assert!(out.contains("splunk.example"), "{out}");
    assert!(!out.contains("hunter2"), "{out}");
    let out = check(&format!(
        "{base}sasl_password = \"x\"\n[sinks.splunk_hec]\nendpoints = [\"ftp://admin:hunter2@h\"]\ntoken = \"t\"\n"
    ));
    assert!(out.contains("not an http"), "{out}");
    assert!(!out.contains("hunter2"), "{out}");
}
