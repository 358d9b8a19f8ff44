//! The README's first command: `auditflow demo` runs on nothing but itself, fires its first
//! incident's alerts, fills the file sink, and stops cleanly after `--duration`.

use std::process::Command;

/// Regression guard: the demo once built its config by hand and missed a default
/// (`kafka.max_inflight_bytes` = 0), so it refused to start.
#[test]
fn the_demo_runs_fires_alerts_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo.jsonl");
    let o = Command::new(env!("CARGO_BIN_EXE_auditflow"))
        .args([
            "demo",
            "--duration",
            "25",
            "--http-listen",
            "127.0.0.1:0",
            "--pg-listen",
            "127.0.0.1:0",
        ])
        .arg("--output")
        .arg(&out)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("firing auth-failure-burst"), "{stdout}");
    assert!(stdout.contains("demo stopped cleanly"), "{stdout}");
    let lines = std::fs::read_to_string(&out).unwrap();
    assert!(
        lines.lines().filter(|l| l.contains("\"kind\":\"audit\"")).count() > 1000,
        "the file sink holds the demo's traffic"
    );
}
