//! OTLP beyond plain gRPC: HTTP/protobuf with headers (from a secret file) and retries on
//! 503/429/502, and gRPC over TLS with a private CA. Each asserts every event arrives and the
//! offsets are committed.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::faults::{default_text, setup, start, stop};
use crate::support::eventually;
use crate::support::hec::HecReceiver;
use crate::support::otlp::OtlpReceiver;

const TOKEN: &str = crate::faults::TOKEN;

fn otlp_ids(otlp: &OtlpReceiver) -> HashSet<String> {
    otlp.received
        .lock()
        .unwrap()
        .logs
        .iter()
        .filter_map(|l| OtlpReceiver::attr(l, "cloudevents.event_id"))
        .collect()
}

/// Adds `[sinks.otlp]` with `section` to a default test config.
fn with_otlp(text: String, section: &str) -> String {
    assert!(!text.contains("[sinks.otlp]"));
    format!("{text}\n[sinks.otlp]\n{section}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_protobuf_with_headers_and_retries() {
    let s = setup(30).await;
    let hec = HecReceiver::start(TOKEN).await;
    let (otlp, addr) = OtlpReceiver::start_http().await;
    otlp.http_failures.lock().unwrap().extend([503, 429, 502]);
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("otlp-key");
    std::fs::write(&key_file, "k-7f3a\n").unwrap();
    let group = "Tech00-otlp-http";
    let text = with_otlp(
        default_text(&s.bootstrap, group, &hec, &dir),
        &format!(
            "endpoint = \"http://{addr}\"\nprotocol = \"http/protobuf\"\nheaders = {{ \"x-api-key\" = \"${{file:{}}}\" }}\n",
            key_file.display()
        ),
    );
    let (running, shutdown) = start(&text).await;
    eventually(
        Duration::from_secs(60),
        "every audit event at the OTLP/HTTP receiver",
        || otlp_ids(&otlp).len() == 30,
    )
    .await;
    assert!(s.ids.iter().all(|id| otlp_ids(&otlp).contains(id)));
    assert!(
        otlp.http_failures.lock().unwrap().is_empty(),
        "the failures were answered"
    );
    let keys = otlp.api_keys.lock().unwrap().clone();
    assert!(!keys.is_empty() && keys.iter().all(|k| k == "k-7f3a"), "{keys:?}");
    let retries = running
        .telemetry
        .sink_retries
        .get_or_create(&auditflow::telemetry::SinkLabel { sink: "otlp" })
        .get();
    assert!(retries >= 3, "503, 429 and 502 are each retried, saw {retries}");
    stop(running, shutdown, &s.bootstrap, group, 30).await;
    drop(s.cluster);
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the openssl command (Debian package openssl)");
    assert!(status.success(), "openssl {args:?}");
}

/// A private CA and a server certificate for `localhost` and 127.0.0.1 signed by it.
pub(crate) fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=auditflow-test-ca",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "server.ext",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_grpc_over_tls_with_a_private_ca() {
    let s = setup(20).await;
    let hec = HecReceiver::start(TOKEN).await;
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let cert = std::fs::read(certs.path().join("server.pem")).unwrap();
    let key = std::fs::read(certs.path().join("server.key")).unwrap();
    let (otlp, addr) = OtlpReceiver::start_tls(&cert, &key).await;
    let dir = tempfile::tempdir().unwrap();
    let group = "Tech00-otlp-tls";
    let text = with_otlp(
        default_text(&s.bootstrap, group, &hec, &dir),
        &format!(
            "endpoint = \"https://localhost:{}\"\nheaders = {{ \"x-api-key\" = \"k-tls\" }}\n[sinks.otlp.tls]\nca_file = \"{}\"\n",
            addr.port(),
            certs.path().join("ca.pem").display()
        ),
    );
    let (running, shutdown) = start(&text).await;
    eventually(Duration::from_secs(60), "every audit event at the TLS receiver", || {
        otlp_ids(&otlp).len() == 20
    })
    .await;
    assert!(otlp.api_keys.lock().unwrap().iter().all(|k| k == "k-tls"));
    stop(running, shutdown, &s.bootstrap, group, 20).await;
    drop(s.cluster);
}
