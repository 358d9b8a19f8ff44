//! The compliance archive end to end (docs/PRODUCT.md §6), on a local directory and on Azure
//! Blob (Azurite): a run killed with `kill -9` mid-file and restarted leaves an archive that
//! verifies clean and covers every offset, dead letters and duplicates included; each kind of
//! tampering is then detected and named; an export verifies and matches the source.

use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::Digest;

use crate::e2e_mock::config_text;
use crate::e2e_tansu::{Process, create_topics, start_tansu};
use crate::support::eventually;
use crate::support::hec::HecReceiver;
use crate::support::kafka::{committed, produce, producer};

const AUDIT: &str = "confluent-audit-log-events";
/// RFC 8032's first Ed25519 test key, PKCS#8 PEM.
const SIGNING_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";
/// Azurite's well-known account.
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// What was produced: distinct audit ids, and the number of records in all.
struct Produced {
    ids: HashSet<String>,
    records: usize,
    poison: usize,
    duplicates: usize,
}

/// 400 audit events, 5 of them sent twice (same id: dropped as duplicates), and 3 records that
/// are not JSON (dead letters).
async fn produce_audit(bootstrap: &str) -> Produced {
    let p = producer(bootstrap);
    let mut ids = HashSet::new();
    let mut records = 0;
    for i in 0..400 {
        let (id, bytes) = crate::support::audit_event(
            "io.confluent.kafka.server/authentication",
            &format!("User:sa-{}", i % 7),
            "K1",
            serde_json::json!({"result": {"status": "SUCCESS"}}),
        );
        let partition = Some(i % 2);
        produce(&p, AUDIT, partition, &bytes, &[]).await;
        records += 1;
        if i % 80 == 3 {
            produce(&p, AUDIT, partition, &bytes, &[]).await;
            records += 1;
        }
        if i % 150 == 7 {
            produce(&p, AUDIT, partition, b"not json at all", &[]).await;
            records += 1;
        }
        ids.insert(id);
    }
    Produced {
        ids,
        records,
        poison: 3,
        duplicates: 5,
    }
}

fn auditflow(args: &[&str], env: &[(String, String)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_auditflow"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap()
}

/// `auditflow verify TARGET`: (exit success, report).
fn verify(target: &str, env: &[(String, String)]) -> (bool, String) {
    let out = auditflow(&["verify", target], env);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The archive as the test sees it: the store, the archive's root, and the URL and
/// environment auditflow is given.
struct Archive {
    store: Arc<dyn ObjectStore>,
    root: StorePath,
    url: String,
    env: Vec<(String, String)>,
}

impl Archive {
    fn path(&self, relative: &str) -> StorePath {
        let mut p = self.root.clone();
        for part in relative.split('/') {
            p = p.join(part);
        }
        p
    }

    async fn list(&self) -> Vec<String> {
        use futures::TryStreamExt;
        let metas: Vec<_> = self.store.list(Some(&self.root)).try_collect().await.unwrap();
        let mut out: Vec<String> = metas
            .into_iter()
            .map(|m| {
                m.location
                    .prefix_match(&self.root)
                    .unwrap()
                    .map(|p| p.as_ref().to_owned())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect();
        out.sort();
        out
    }

    async fn get(&self, relative: &str) -> Vec<u8> {
        self.store
            .get(&self.path(relative))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec()
    }

    async fn put(&self, relative: &str, bytes: Vec<u8>) {
        self.store
            .put(&self.path(relative), PutPayload::from(bytes))
            .await
            .unwrap();
    }

    async fn delete(&self, relative: &str) {
        self.store.delete(&self.path(relative)).await.unwrap();
    }

    async fn manifests(&self) -> Vec<(String, serde_json::Value)> {
        let mut out = Vec::new();
        for p in self.list().await {
            if p.starts_with("manifest/") && p.ends_with(".json") {
                let v = serde_json::from_slice(&self.get(&p).await).unwrap();
                out.push((p, v));
            }
        }
        out
    }
}

/// Runs the pipeline into `archive` twice (the first killed with `kill -9` mid-file), then a
/// clean stop; checks the result verifies, covers every offset and holds every id once.
async fn write_crash_restart(archive: &Archive, name: &str) -> Produced {
    let _alone = crate::support::exclusive().await;
    let (_tansu, bootstrap) = start_tansu();
    create_topics(&bootstrap).await;
    let produced = produce_audit(&bootstrap).await;
    let hec = HecReceiver::start("00000000-0000-0000-0000-000000000001").await;
    // A slow indexer (about 200 events/s), so the kill lands mid-stream.
    hec.state.lock().unwrap().delay = Duration::from_millis(100);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing.pem");
    std::fs::write(&key, SIGNING_KEY).unwrap();
    let group = format!("Tech00-auditflow-archive-{name}");
    let text = config_text(&bootstrap, &group, &hec.url(), None, &dir.path().join("o.jsonl"))
        .replace(
            "batch_linger = \"20ms\"\n[kafka.properties]",
            "batch_linger = \"20ms\"\nbatch_max_records = 20\n[kafka.properties]",
        )
        .replace(
            "index = \"kafka_audit\"\n",
            "index = \"kafka_audit\"\nbatch_max_events = 20\n",
        )
        .replace(
            "[rules]",
            &format!("dedupe_dir = \"{}\"\n[rules]", dir.path().join("dedupe").display()),
        )
        + &format!(
            "[archive]\nurl = \"{}\"\nmax_file_rows = 50\nmax_file_age = \"3s\"\nsigning_key = \"{}\"\nspool_dir = \"{}\"\n",
            archive.url,
            key.display(),
            dir.path().join("spool").display()
        );
    let file = dir.path().join("run.toml");
    std::fs::write(&file, text).unwrap();
    let run = || {
        Process(
            Command::new(env!("CARGO_BIN_EXE_auditflow"))
                .args(["run", "--config", file.to_str().unwrap()])
                .envs(archive.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    };
    let mut first = run();
    let mut seen = 0;
    for _ in 0..600 {
        seen = archive.manifests().await.len();
        if seen >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen >= 2, "the first run closed {seen} archive files in 60 s");
    first.0.kill().unwrap(); // SIGKILL: an open spool segment, nothing drained
    first.0.wait().unwrap();
    let spooled = std::fs::read_dir(dir.path().join("spool")).unwrap().count();
    let delivered = hec.audit_ids().len();
    assert!(
        delivered < produced.ids.len(),
        "the kill must land mid-stream ({delivered} delivered)"
    );
    eprintln!("{name}: killed with {seen} manifests and {spooled} spool segment(s), {delivered} ids at HEC");

    let mut second = run();
    let total = produced.records as i64;
    let b = bootstrap.clone();
    let g = group.clone();
    let mut offsets = Vec::new();
    for _ in 0..1200 {
        let (b, g) = (b.clone(), g.clone());
        offsets = tokio::task::spawn_blocking(move || committed(&b, &g, AUDIT, 2))
            .await
            .unwrap();
        if offsets.iter().map(|o| o.unwrap_or(0)).sum::<i64>() == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        offsets.iter().map(|o| o.unwrap_or(0)).sum::<i64>(),
        total,
        "every record committed after the restart: {offsets:?}"
    );
    // SIGTERM: drain, close the open segment, exit.
    let pid = second.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = second.0.wait().unwrap();
    assert!(status.success(), "a SIGTERM'd run exits 0: {status}");

    let (ok, report) = verify(&archive.url, &archive.env);
    assert!(ok, "the archive verifies clean after kill -9 and restart:\n{report}");
    assert!(report.contains("signatures verified"), "{report}");

    // Every offset of every partition, from 0 to the committed one, is in exactly one place.
    let mut covered: BTreeMap<i64, Vec<(i64, i64)>> = BTreeMap::new();
    let (mut dead, mut dups, mut rows) = (0, 0, 0);
    for (_, m) in archive.manifests().await {
        let mut add = |r: &serde_json::Value| {
            covered
                .entry(r["partition"].as_i64().unwrap())
                .or_default()
                .push((r["first"].as_i64().unwrap(), r["last"].as_i64().unwrap()));
            r["last"].as_i64().unwrap() - r["first"].as_i64().unwrap() + 1
        };
        for f in m["files"].as_array().unwrap() {
            rows += f["rows"].as_i64().unwrap();
            for r in f["offsets"].as_array().unwrap() {
                add(r);
            }
        }
        for r in m["dead_letters"].as_array().unwrap() {
            dead += add(r);
        }
        for r in m["duplicates"].as_array().unwrap() {
            dups += add(r);
        }
    }
    for (partition, mut runs) in covered {
        runs.sort();
        let mut next = 0;
        for (first, last) in runs {
            assert_eq!(
                first, next,
                "partition {partition}: offsets from {next} are covered once"
            );
            next = last + 1;
        }
        assert_eq!(
            Some(next),
            offsets[partition as usize],
            "partition {partition}: covered up to the committed offset"
        );
    }
    assert_eq!(dead, produced.poison as i64, "dead letters recorded as covered");
    assert_eq!(dups, produced.duplicates as i64, "duplicates recorded as covered");
    assert_eq!(rows, produced.ids.len() as i64, "every id archived once");
    produced
}

/// Each kind of tampering, applied, detected by `verify` and named, then undone.
async fn every_tampering_is_named(archive: &Archive) {
    let manifests = archive.manifests().await;
    assert!(manifests.len() >= 4, "{} manifests", manifests.len());
    let (m2, v2) = manifests[1].clone();
    let (m3, _) = manifests[2].clone();
    let file = v2["files"][0]["path"].as_str().unwrap().to_owned();
    let original = archive.get(&file).await;
    let check = |needles: Vec<String>| {
        let (ok, report) = verify(&archive.url, &archive.env);
        assert!(!ok, "verify must fail:\n{report}");
        for n in &needles {
            assert!(report.contains(n.as_str()), "expected {n:?} in:\n{report}");
        }
    };

    // A data file altered, truncated, deleted, renamed; a file added.
    let mut altered = original.clone();
    let mid = altered.len() / 2;
    altered[mid] ^= 0x40;
    archive.delete(&file).await;
    archive.put(&file, altered).await;
    check(vec![format!("{file}: altered")]);
    archive.delete(&file).await;
    archive.put(&file, original[..original.len() / 2].to_vec()).await;
    check(vec![format!("{file}: truncated")]);
    archive.delete(&file).await;
    check(vec![format!("{file}: deleted")]);
    let renamed = file.replace("auditflow-", "renamed-");
    archive.put(&renamed, original.clone()).await;
    check(vec![format!("{file}: renamed to {renamed}")]);
    archive.delete(&renamed).await;
    archive.put(&file, original.clone()).await;
    let added = "date=2020-01-01/hour=00/extra.parquet";
    archive.put(added, original.clone()).await;
    check(vec![format!("{added}: added")]);
    archive.delete(added).await;
    assert!(verify(&archive.url, &archive.env).0, "undone");

    // A manifest altered, removed, reordered; a signature replaced; the key removed.
    let m2_bytes = archive.get(&m2).await;
    let m3_bytes = archive.get(&m3).await;
    let m2_sig = archive.get(&format!("{m2}.sig")).await;
    let m3_sig = archive.get(&format!("{m3}.sig")).await;
    let text = String::from_utf8(m2_bytes.clone()).unwrap();
    let rows = v2["files"][0]["rows"].as_i64().unwrap();
    let forged = text.replacen(&format!("\"rows\": {rows}"), &format!("\"rows\": {}", rows + 1), 1);
    assert_ne!(forged, text);
    archive.delete(&m2).await;
    archive.put(&m2, forged.into_bytes()).await;
    check(vec![format!("{m2}: altered"), format!("{m2}: bad signature")]);
    archive.delete(&m2).await;
    archive.delete(&format!("{m2}.sig")).await;
    check(vec![
        format!("{m2}: missing (removed)"),
        format!("{file}: added"),
        "in no manifest (a gap".to_owned(),
    ]);
    // Manifests 2 and 3 swap places.
    archive.put(&m2, m3_bytes.clone()).await;
    archive.put(&format!("{m2}.sig"), m3_sig.clone()).await;
    archive.delete(&m3).await;
    archive.put(&m3, m2_bytes.clone()).await;
    archive.delete(&format!("{m3}.sig")).await;
    archive.put(&format!("{m3}.sig"), m2_sig.clone()).await;
    check(vec![format!("{m2}: says it is manifest 3 (renamed or reordered)")]);
    for (path, bytes) in [
        (m2.clone(), m2_bytes.clone()),
        (format!("{m2}.sig"), m2_sig.clone()),
        (m3.clone(), m3_bytes.clone()),
        (format!("{m3}.sig"), m3_sig.clone()),
    ] {
        archive.delete(&path).await;
        archive.put(&path, bytes).await;
    }
    assert!(verify(&archive.url, &archive.env).0, "undone");
    archive.delete(&format!("{m2}.sig")).await;
    archive.put(&format!("{m2}.sig"), m3_sig.clone()).await;
    check(vec![format!("{m2}: bad signature")]);
    archive.delete(&format!("{m2}.sig")).await;
    check(vec![format!("{m2}: not signed")]);
    archive.put(&format!("{m2}.sig"), m2_sig).await;
    let key = "auditflow-archive-public-key.pem";
    let pem = archive.get(key).await;
    archive.delete(key).await;
    check(vec!["there is no public key".to_owned()]);
    archive.put(key, pem).await;
    assert!(verify(&archive.url, &archive.env).0, "undone");
}

/// `export` then `verify` then a count and a checksum of ids against the source.
fn export_round_trip(archive: &Archive, produced: &Produced) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    let o = auditflow(
        &[
            "export",
            "--archive",
            &archive.url,
            "--from",
            "2000-01-01T00:00:00Z",
            "--to",
            "2100-01-01T00:00:00Z",
            "--format",
            "jsonl",
            "--out",
            out.to_str().unwrap(),
        ],
        &archive.env,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (ok, report) = verify(out.to_str().unwrap(), &[]);
    assert!(ok, "the export verifies:\n{report}");
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(&out).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                ids.push(v["id"].as_str().unwrap().to_owned());
            }
        }
    }
    assert_eq!(ids.len(), produced.ids.len(), "one row per event");
    let checksum = |ids: &mut Vec<String>| {
        ids.sort();
        format!("{:x}", sha2::Sha256::digest(ids.join("\n").as_bytes()))
    };
    let mut source: Vec<String> = produced.ids.iter().cloned().collect();
    assert_eq!(checksum(&mut ids), checksum(&mut source), "the same ids");

    // A filtered Parquet export verifies too, and holds only what the filter names; a tampered
    // export is caught.
    let out = dir.path().join("filtered");
    let o = auditflow(
        &[
            "export",
            "--archive",
            &archive.url,
            "--from",
            "2000-01-01T00:00:00Z",
            "--to",
            "2100-01-01T00:00:00Z",
            "--where",
            "principal = 'User:sa-3' AND kafka_partition = 1",
            "--format",
            "parquet",
            "--out",
            out.to_str().unwrap(),
        ],
        &archive.env,
    );
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains("exported ") && !stdout.contains("exported 0 rows"),
        "{stdout}"
    );
    assert!(verify(out.to_str().unwrap(), &[]).0);
    let part = out.join("part-00000.parquet");
    let mut bytes = std::fs::read(&part).unwrap();
    bytes.truncate(bytes.len() - 10);
    std::fs::write(&part, bytes).unwrap();
    let (ok, report) = verify(out.to_str().unwrap(), &[]);
    assert!(!ok && report.contains("part-00000.parquet: truncated"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_archive_survives_kill_9_verifies_and_names_every_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    std::fs::create_dir_all(&root).unwrap();
    let archive = Archive {
        store: Arc::new(object_store::local::LocalFileSystem::new()),
        root: StorePath::from_filesystem_path(root.canonicalize().unwrap()).unwrap(),
        url: format!("file://{}", root.display()),
        env: Vec::new(),
    };
    let produced = write_crash_restart(&archive, "local").await;
    every_tampering_is_named(&archive).await;
    export_round_trip(&archive, &produced);
}

/// Azurite's blob service on a free port, stopped when dropped.
/// (The data directory lives as long as the process.)
struct Azurite(std::process::Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn azurite_binary() -> String {
    if let Ok(p) = std::env::var("AZURITE_BLOB") {
        return p;
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let installed = format!("{home}/.cache/auditflow-azurite/node_modules/.bin/azurite-blob");
    if std::path::Path::new(&installed).exists() {
        installed
    } else {
        "azurite-blob".into()
    }
}

fn start_azurite() -> (Azurite, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = tempfile::tempdir().unwrap();
    let child = Command::new(azurite_binary())
        .args([
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            &port.to_string(),
            "--location",
            data.path().to_str().unwrap(),
            "--silent",
            "--skipApiVersionCheck",
            "--loose",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting azurite ({}): {e}; .ci/run installs it", azurite_binary()));
    let azurite = Azurite(child, data);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "azurite did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    (azurite, port)
}

/// Creates a container with a Shared Key request (the one call object_store does not make).
async fn create_container(endpoint: &str, container: &str) {
    use base64::Engine as _;
    use hmac::Mac as _;
    let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let version = "2021-08-06";
    let to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
    );
    let key = base64::engine::general_purpose::STANDARD.decode(AZURITE_KEY).unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(to_sign.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let response = reqwest::Client::new()
        .put(format!("{endpoint}/{container}?restype=container"))
        .header("x-ms-date", date)
        .header("x-ms-version", version)
        .header("Content-Length", "0")
        .header("Authorization", format!("SharedKey {AZURITE_ACCOUNT}:{signature}"))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "creating container {container}: {} {}",
        response.status(),
        response.text().await.unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_blob_archive_survives_kill_9_verifies_and_names_every_tampering() {
    let (_azurite, port) = start_azurite();
    let endpoint = format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}");
    create_container(&endpoint, "audit").await;
    let store = object_store::azure::MicrosoftAzureBuilder::new()
        .with_account(AZURITE_ACCOUNT)
        .with_access_key(AZURITE_KEY)
        .with_container_name("audit")
        .with_endpoint(endpoint.clone())
        .with_allow_http(true)
        .build()
        .unwrap();
    // The account and its key come from the environment, as Azure's own tools read them.
    let env = vec![
        ("AZURE_STORAGE_ACCOUNT_NAME".to_owned(), AZURITE_ACCOUNT.to_owned()),
        ("AZURE_STORAGE_ACCOUNT_KEY".to_owned(), AZURITE_KEY.to_owned()),
        ("AZURE_STORAGE_ENDPOINT".to_owned(), endpoint),
        ("AZURE_ALLOW_HTTP".to_owned(), "true".to_owned()),
    ];
    let archive = Archive {
        store: Arc::new(store),
        root: StorePath::from("compliance/prod"),
        url: "az://audit/compliance/prod".into(),
        env,
    };
    let produced = write_crash_restart(&archive, "azure").await;
    every_tampering_is_named(&archive).await;
    export_round_trip(&archive, &produced);
}

/// `audit_archive` from psql and HTTP: the columns of `audit_events`, the archived rows, time
/// pruning, and the same row limit as every query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_archive_answers_psql_and_http_under_the_same_limits() {
    use crate::faults::{TOKEN, default_text, setup, start, stop, with_server};
    use crate::support::psql::{psql, stdout};
    let s = setup(12).await;
    let hec = HecReceiver::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let group = "Tech00-archive-sql";
    let root = dir.path().join("archive");
    let text = with_server(
        &default_text(&s.bootstrap, group, &hec, &dir),
        "pg_listen = \"127.0.0.1:0\"\nsql_max_rows = 5",
    ) + &format!(
        "[archive]\nurl = \"{}\"\nmax_file_age = \"1s\"\nspool_dir = \"{}\"\n",
        root.display(),
        dir.path().join("spool").display()
    );
    let (running, shutdown) = start(&text).await;
    let port = running.pg_addr.unwrap().port();
    let http = running.http_addr.unwrap();
    let manifests = root.join("manifest");
    eventually(Duration::from_secs(30), "the 12 events archived", || {
        let Ok(entries) = std::fs::read_dir(&manifests) else {
            return false;
        };
        let rows: i64 = entries
            .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|m| {
                m["files"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f["rows"].as_i64().unwrap())
                    .sum::<i64>()
            })
            .sum();
        rows == 12
    })
    .await;

    let q = |sql: &'static str| tokio::task::spawn_blocking(move || psql(port, None, sql));
    let o = q("SELECT count(*) FROM audit_archive WHERE time > now() - INTERVAL '30 days'")
        .await
        .unwrap();
    assert_eq!(stdout(&o), "12", "{}", String::from_utf8_lossy(&o.stderr));
    let o = q("SELECT count(*) FROM audit_archive WHERE time < now() - INTERVAL '30 days'")
        .await
        .unwrap();
    assert_eq!(stdout(&o), "0");
    let o = q("SELECT count(*) FROM audit_archive a JOIN audit_events e ON a.id = e.id AND a.raw = e.raw")
        .await
        .unwrap();
    assert_eq!(stdout(&o), "12", "the archive holds the window's rows, raw included");
    let o = q("SELECT id FROM audit_archive").await.unwrap();
    assert!(!o.status.success(), "12 rows passed a limit of 5");
    assert!(String::from_utf8_lossy(&o.stderr).contains("more than 5 rows"));
    let o = q("DROP TABLE audit_archive").await.unwrap();
    assert!(!o.status.success(), "the archive table is read-only too");

    let client = reqwest::Client::new();
    let url = format!("http://{http}/v1/sql");
    let columns = |table: &str| {
        serde_json::json!({"sql": format!(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = '{table}' ORDER BY ordinal_position"
        )})
    };
    let archive: serde_json::Value = client
        .post(&url)
        .json(&columns("audit_archive"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events: serde_json::Value = client
        .post(&url)
        .json(&columns("audit_events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(archive, events, "audit_archive has the columns of audit_events");
    let r = client
        .post(&url)
        .json(&serde_json::json!({"sql": "SELECT principal, count(*) AS n FROM audit_archive WHERE time > now() - INTERVAL '30 days' GROUP BY 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!([{"principal": "User:sa-r8v2kq", "n": 12}])
    );
    stop(running, shutdown, &s.bootstrap, group, 12).await;
    drop(s.cluster);
}
