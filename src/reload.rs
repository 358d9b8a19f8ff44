//! Hot reload: rule files, the namespace file and the directory are re-read when they change
//! (checked every two seconds) or on SIGHUP. A file that no longer loads keeps the previous
//! version running and says why; rules whose definition did not change keep their state
//! (windows, baselines, firing alerts), so a reload drops neither state nor events.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::enrich::directory::Directory;
use crate::enrich::ownership::Ownership;
use crate::rules::{self, Rule};

/// What changed, freshly loaded and valid.
#[derive(Default)]
pub struct Reloaded {
    pub rules: Option<Vec<Rule>>,
    pub ownership: Option<Ownership>,
    pub directory: Option<Arc<Directory>>,
}

impl Reloaded {
    pub fn is_empty(&self) -> bool {
        self.rules.is_none() && self.ownership.is_none() && self.directory.is_none()
    }
}

type Stamp = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn stamp(paths: &[PathBuf]) -> Stamp {
    paths
        .iter()
        .map(|p| {
            let meta = std::fs::metadata(p).ok();
            (
                p.clone(),
                meta.as_ref().and_then(|m| m.modified().ok()),
                meta.map_or(0, |m| m.len()),
            )
        })
        .collect()
}

/// Watches the files of one config.
pub struct Watcher {
    rule_dirs: Vec<PathBuf>,
    namespaces: Option<PathBuf>,
    directory: Option<PathBuf>,
    rules_stamp: Stamp,
    namespaces_stamp: Stamp,
    directory_stamp: Stamp,
}

impl Watcher {
    pub fn new(config: &Config) -> Watcher {
        let mut w = Watcher {
            rule_dirs: config.rule_dirs.clone(),
            namespaces: config.enrich.namespaces.clone(),
            directory: config.enrich.directory.clone(),
            rules_stamp: Vec::new(),
            namespaces_stamp: Vec::new(),
            directory_stamp: Vec::new(),
        };
        w.rules_stamp = w.rule_stamp();
        w.namespaces_stamp = stamp(w.namespaces.as_slice());
        w.directory_stamp = stamp(w.directory.as_slice());
        w
    }

    fn rule_stamp(&self) -> Stamp {
        let mut files = Vec::new();
        for d in &self.rule_dirs {
            files.extend(rules::rule_files(d).unwrap_or_default());
        }
        stamp(&files)
    }

    /// Re-reads what changed since the last call (everything when `force`, as on SIGHUP).
    pub fn check(&mut self, force: bool) -> Reloaded {
        let mut out = Reloaded::default();
        let rules_now = self.rule_stamp();
        if force || rules_now != self.rules_stamp {
            match rules::load_dirs(&self.rule_dirs) {
                Ok(r) => {
                    tracing::info!(rules = r.len(), "rules reloaded");
                    out.rules = Some(r);
                }
                Err(e) => tracing::error!(error = %e, "rules not reloaded; the previous rules keep running"),
            }
            self.rules_stamp = rules_now;
        }
        if let Some(path) = &self.namespaces {
            let now = stamp(std::slice::from_ref(path));
            if force || now != self.namespaces_stamp {
                match Ownership::load(path) {
                    Ok(o) => out.ownership = Some(o),
                    Err(e) => tracing::error!(error = %e, "namespace file not reloaded; the previous one stays"),
                }
                self.namespaces_stamp = now;
            }
        }
        if let Some(path) = &self.directory {
            let now = stamp(std::slice::from_ref(path));
            if force || now != self.directory_stamp {
                match Directory::load(path) {
                    Ok(d) => out.directory = Some(Arc::new(d)),
                    Err(e) => tracing::error!(error = %e, "directory not reloaded; the previous one stays"),
                }
                self.directory_stamp = now;
            }
        }
        out
    }
}

/// Runs the watcher until `shutdown`, sending what reloads to the processor.
pub async fn run(mut watcher: Watcher, tx: mpsc::Sender<Reloaded>, shutdown: CancellationToken) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut every = tokio::time::interval(Duration::from_secs(2));
    loop {
        #[cfg(unix)]
        let sighup = async {
            match hup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let sighup = std::future::pending::<Option<()>>();
        let force = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => false,
            _ = sighup => {
                tracing::info!("SIGHUP: reloading rules and enrichment files");
                true
            }
        };
        // File reads and rule compilation stay off the async threads.
        let Ok((w, reloaded)) = tokio::task::spawn_blocking(move || {
            let r = watcher.check(force);
            (watcher, r)
        })
        .await
        else {
            return;
        };
        watcher = w;
        if !reloaded.is_empty() && tx.send(reloaded).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: &str = "groups:\n  - name: g\n    rules:\n      - id: r1\n        kind: match\n        where: \"granted = false\"\n        severity: low\n        summary: s\n";

    #[test]
    fn changed_files_reload_and_broken_files_keep_the_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), RULE).unwrap();
        let config = Config::parse(
            &format!(
                "[kafka]\nbootstrap_servers = \"x:1\"\n[rules]\ndirs = [\"{}\"]\n",
                dir.path().display()
            ),
            "t.toml",
        )
        .unwrap();
        let mut w = Watcher::new(&config);
        assert!(w.check(false).is_empty(), "nothing changed yet");
        // A new rule file: reloaded.
        std::fs::write(dir.path().join("b.yaml"), RULE.replace("r1", "r2")).unwrap();
        let r = w.check(false).rules.expect("reloaded");
        assert_eq!(r.len(), 2);
        // A broken edit: not reloaded (the previous rules stay).
        std::fs::write(dir.path().join("b.yaml"), RULE.replace("granted", "no_such_column")).unwrap();
        assert!(w.check(false).rules.is_none());
        // SIGHUP forces a reload attempt.
        std::fs::write(dir.path().join("b.yaml"), RULE.replace("r1", "r3")).unwrap();
        assert_eq!(w.check(true).rules.unwrap().len(), 2);
    }
}
