//! Splunk HEC over HTTPS, as Splunk Cloud serves it: a private CA in `ca_file`, `tls_verify =
//! false`, and a certificate nothing vouches for, which is refused. The sink builds its TLS
//! settings once and every connection's client uses them (`sinks/splunk_hec/sink.rs`).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::faults::{default_text, setup, start, stop};
use crate::otlp_transports::make_certificates;
use crate::support::eventually;
use crate::support::hec::HecReceiver;

const TOKEN: &str = crate::faults::TOKEN;

/// A default test config with `settings` added to its HEC section.
fn with_hec(text: String, settings: &str) -> String {
    let section = "[sinks.splunk_hec]\n";
    assert!(text.contains(section), "the config has a HEC section");
    text.replacen(section, &format!("{section}{settings}\n"), 1)
}

/// A HEC receiver over TLS with a certificate from a fresh private CA (`ca.pem` in the dir).
async fn tls_receiver() -> (tempfile::TempDir, HecReceiver) {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let files = auditflow::config::TlsFiles {
        cert: certs.path().join("server.pem"),
        key: certs.path().join("server.key"),
    };
    let hec = HecReceiver::start_tls(TOKEN, &files).await;
    (certs, hec)
}

fn tls_sessions(hec: &HecReceiver) -> usize {
    hec.tls_sessions.as_ref().unwrap().load(Ordering::SeqCst)
}

/// Runs `n` audit events through a pipeline whose HEC section has `settings` (given the
/// directory holding `ca.pem`) to a TLS receiver: every event arrives and is committed.
async fn delivers_over_tls(n: usize, group: &'static str, settings: impl FnOnce(&Path) -> String) -> HecReceiver {
    let s = setup(n).await;
    let (certs, hec) = tls_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let text = with_hec(default_text(&s.bootstrap, group, &hec, &dir), &settings(certs.path()));
    let (running, shutdown) = start(&text).await;
    eventually(Duration::from_secs(60), "every audit event at the TLS receiver", || {
        hec.of_sourcetype("confluent:audit").len() == n
    })
    .await;
    stop(running, shutdown, &s.bootstrap, group, n as i64).await;
    drop(s.cluster);
    hec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hec_over_tls_with_a_private_ca_delivers_over_three_connections() {
    let hec = delivers_over_tls(40, "Tech00-hec-tls-ca", |certs| {
        format!(
            "ca_file = \"{}\"\nconcurrency = 3\nbatch_max_events = 5",
            certs.join("ca.pem").display()
        )
    })
    .await;
    assert!(tls_sessions(&hec) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hec_over_tls_without_verification_delivers() {
    delivers_over_tls(20, "Tech00-hec-tls-noverify", |_| "tls_verify = false".into()).await;
}

/// Verification on and the CA not given: every handshake fails and no event reaches HEC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hec_over_tls_refuses_a_certificate_nothing_vouches_for() {
    let s = setup(10).await;
    let (_certs, hec) = tls_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let group = "Tech00-hec-tls-unknown-ca";
    let text = default_text(&s.bootstrap, group, &hec, &dir);
    let (running, shutdown) = start(&text).await;
    // Long enough for the batch to be read, sent and retried.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(tls_sessions(&hec), 0, "no TLS session with an unknown CA");
    assert!(hec.events().is_empty());
    shutdown.cancel();
    let _ = running.wait(Duration::from_secs(20)).await;
    drop(s.cluster);
}
