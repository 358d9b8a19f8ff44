//! A failing test ends with its failure, even one that fails while a pipeline runs against a
//! mock cluster that is already gone: tearing down its runtime closes the consumer, and that
//! close must not wait forever for a broker (the last report saw it hang CI). The probe test
//! runs in a child process, so a hang fails this test at its limit instead of hanging the run.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::faults::{TOKEN, default_text, setup, start};
use crate::support::eventually;
use crate::support::hec::HecReceiver;

/// Set for the child process that runs [`fails_while_a_pipeline_runs`].
const PROBE: &str = "AUDITFLOW_TEARDOWN_PROBE";

#[test]
fn a_test_failing_mid_pipeline_ends_instead_of_hanging() {
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "teardown::fails_while_a_pipeline_runs",
            "--test-threads=1",
        ])
        .env(PROBE, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let limit = Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a test that failed while a pipeline ran was still tearing down after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!status.success(), "the probe test must fail: {stdout}");
    assert!(
        stdout.contains("the deliberate failure") && stdout.contains("1 failed"),
        "the failure is what ended the run: {stdout}"
    );
}

/// Fails on purpose with a pipeline running; only meaningful in the child process above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in its own process by a_test_failing_mid_pipeline_ends_instead_of_hanging"]
async fn fails_while_a_pipeline_runs() {
    if std::env::var_os(PROBE).is_none() {
        return;
    }
    let s = setup(5).await;
    let hec = HecReceiver::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let (running, shutdown) = start(&default_text(&s.bootstrap, "Tech00-teardown", &hec, &dir)).await;
    eventually(Duration::from_secs(30), "the events at HEC", || {
        hec.audit_ids().len() == 5
    })
    .await;
    // The case named in the last report: the mock cluster gone while the pipeline still runs
    // (so librdkafka's consumer close, at teardown, cannot reach a broker).
    drop(s.cluster);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _still_running = (running, shutdown);
    panic!("the deliberate failure");
}
