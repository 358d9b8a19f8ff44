//! Every example config parses; a wrong key is named with its line; secrets never print.

use std::process::Command;

use crate::support::repo;

fn auditflow(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_auditflow"))
        .args(args)
        .current_dir(repo(""))
        .env("AUDITFLOW_HEC_TOKEN", "hec-token-should-not-print")
        .env("CONFLUENT_BOOTSTRAP", "pkc-test.eu-west-1.aws.confluent.cloud:9092")
        .env("CONFLUENT_API_KEY", "APIKEY0000000001")
        .env("CONFLUENT_API_SECRET", "api-secret-should-not-print")
        .env("CONFLUENT_CLOUD_API_KEY", "CLOUDKEY00000001")
        .env("CONFLUENT_CLOUD_API_SECRET", "cloud-secret-should-not-print")
        .env("AUDITFLOW_KEY_PASSWORD", "key-password-should-not-print")
        .env("AUDITFLOW_SQL_TOKEN", "sql-token-should-not-print")
        .env("AUDITFLOW_PG_PASSWORD", "pg-password-should-not-print")
        .env("AUDITFLOW_HEC_URL", "https://splunk-hec.example.com:8088")
        .output()
        .unwrap()
}

/// Where the Kubernetes examples mount their Secret; the test stands a folder of files in for it.
const MOUNTED_SECRETS: &str = "/var/run/secrets/auditflow/";

#[test]
fn every_deploy_example_passes_config_check_without_printing_secrets() {
    let secrets = tempfile::tempdir().unwrap();
    for key in [
        "kafka-api-key",
        "kafka-api-secret",
        "hec-token",
        "sql-token",
        "pg-password",
        "metrics-api-key",
        "metrics-api-secret",
    ] {
        std::fs::write(secrets.path().join(key), format!("{key}-should-not-print\n")).unwrap();
    }
    let staged = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let mut dirs = vec![repo("deploy")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            // Examples reading mounted secret files are checked against stand-in files.
            let text = std::fs::read_to_string(&path).unwrap();
            let target = if text.contains(MOUNTED_SECRETS) {
                let copy = staged.path().join(format!("{checked}.toml"));
                let with_files = text.replace(MOUNTED_SECRETS, &format!("{}/", secrets.path().display()));
                std::fs::write(&copy, with_files).unwrap();
                copy
            } else {
                path.clone()
            };
            let out = auditflow(&["config", "check", target.to_str().unwrap()]);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{}: {stderr}", path.display());
            assert!(stdout.contains(": ok"), "{stdout}");
            // Every secret the environment or a file supplies ends in `should-not-print`.
            assert!(
                !stdout.contains("should-not-print") && !stderr.contains("should-not-print"),
                "{}: secret printed:\n{stdout}",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 6, "{checked} example configs");
    // The Kubernetes base's site rules load beside the pack.
    let out = auditflow(&["rules", "check", repo("deploy/kubernetes/base/rules").to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn wrong_key_is_named_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n\n[sinks.splunk_hec]\nendpoints = [\"http://x:8088\"]\ntoken = \"t\"\nbatch_size = 10\n").unwrap();
    let out = auditflow(&["config", "check", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("batch_size") && stderr.contains("line 7"),
        "{stderr}"
    );
}

#[test]
fn missing_environment_variable_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("env.toml");
    std::fs::write(
        &file,
        "[kafka]\nbootstrap_servers = \"${AUDITFLOW_TEST_UNSET_BOOTSTRAP}\"\n",
    )
    .unwrap();
    let out = auditflow(&["config", "check", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("AUDITFLOW_TEST_UNSET_BOOTSTRAP") && stderr.contains("kafka.bootstrap_servers"),
        "{stderr}"
    );
}

#[test]
fn rules_check_accepts_the_pack_and_names_bad_fields() {
    let out = auditflow(&["rules", "check", "rules"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for id in ["auth-failure-burst", "cross-namespace-denied", "egress-bytes-high"] {
        assert!(stdout.contains(id), "{stdout}");
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "groups:\n  - name: g\n    rules:\n      - id: bad-one\n        kind: match\n        where: \"principall = 'x'\"\n        severity: high\n        summary: s\n",
    )
    .unwrap();
    let out = auditflow(&["rules", "check", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml:6") && stderr.contains("where") && stderr.contains("principall"),
        "{stderr}"
    );
}

#[test]
fn sql_command_says_when_the_service_is_unreachable() {
    let out = auditflow(&["sql", "--url", "http://127.0.0.1:9", "SELECT 1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach auditflow"), "{stderr}");
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["demo", "--help"],
        vec!["sql", "--help"],
        vec!["config", "check", "--help"],
    ] {
        let out = auditflow(&args);
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{args:?}");
    }
}
