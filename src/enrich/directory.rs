//! The directory: principals, service accounts and API keys mapped to a display name, an owning
//! application and a team (YAML or CSV), and cluster ids mapped to an environment name, region
//! and cloud. Alerts carry these names, so an analyst reads `payments-batch (sa-m3n8zd, Tech03)`
//! rather than an id.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::EnrichError;
use crate::event::{AuditRow, Text};

/// One directory entry. `id` is a principal (`User:sa-abc123`), a service-account or user id
/// (`sa-abc123`, `u-xyz`), an e-mail, or an API key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub application: Option<String>,
    #[serde(default)]
    pub team: Option<String>,
    /// For an API key: the principal that owns it.
    #[serde(default)]
    pub owner: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectoryFile {
    #[serde(default)]
    principals: Vec<Entry>,
    #[serde(default)]
    clusters: Vec<Cluster>,
}

/// A cluster's human names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub id: String,
    #[serde(default)]
    pub environment_name: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub cloud: Option<String>,
}

#[derive(Debug, Default, Clone)]
pub struct Directory {
    entries: HashMap<String, Entry>,
    /// What enrichment copies into each row, resolved once at load (API keys to their owners)
    /// and shared, so a row costs a lookup and reference counts, not string copies.
    resolved: HashMap<String, Names>,
    cluster_names: HashMap<String, ClusterNames>,
}

#[derive(Debug, Clone)]
struct Names {
    display_name: Option<Text>,
    application: Option<Text>,
    team: Option<Text>,
}

#[derive(Debug, Clone)]
struct ClusterNames {
    environment_name: Option<Text>,
    region: Option<Text>,
    cloud: Option<Text>,
}

fn shared(s: &Option<String>) -> Option<Text> {
    s.as_deref().map(Text::from)
}

fn normalise(id: &str) -> &str {
    id.strip_prefix("User:").unwrap_or(id)
}

impl Directory {
    /// Loads a `.yaml`/`.yml` (principals and clusters) or `.csv` (principals:
    /// `id,display_name,application,team,owner`) file.
    pub fn load(path: &Path) -> Result<Directory, EnrichError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| EnrichError::Read {
            path: name.clone(),
            source,
        })?;
        if path.extension().is_some_and(|e| e == "csv") {
            Directory::parse_csv(&text, &name)
        } else {
            Directory::parse_yaml(&text, &name)
        }
    }

    pub fn parse_yaml(text: &str, origin: &str) -> Result<Directory, EnrichError> {
        let file: DirectoryFile = serde_yaml::from_str(text).map_err(|e| EnrichError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        Directory::build(file.principals, file.clusters, origin)
    }

    pub fn parse_csv(text: &str, origin: &str) -> Result<Directory, EnrichError> {
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let mut entries = Vec::new();
        for (i, record) in reader.deserialize::<Entry>().enumerate() {
            let entry = record.map_err(|e| EnrichError::Parse {
                path: origin.to_owned(),
                // Line numbers count the header.
                message: format!("line {}: {e}", i + 2),
            })?;
            entries.push(entry);
        }
        Directory::build(entries, Vec::new(), origin)
    }

    fn build(principals: Vec<Entry>, clusters: Vec<Cluster>, origin: &str) -> Result<Directory, EnrichError> {
        let mut entries = HashMap::new();
        for e in principals {
            let key = normalise(&e.id).to_owned();
            if key.is_empty() {
                return Err(EnrichError::Invalid {
                    path: origin.to_owned(),
                    message: "an entry has an empty `id`".into(),
                });
            }
            if entries.insert(key, e.clone()).is_some() {
                return Err(EnrichError::Invalid {
                    path: origin.to_owned(),
                    message: format!("`{}` is listed twice", e.id),
                });
            }
        }
        let mut directory = Directory {
            entries,
            ..Directory::default()
        };
        directory.resolved = directory
            .entries
            .keys()
            .filter_map(|key| {
                let e = directory.lookup(key)?;
                let names = Names {
                    display_name: shared(&e.display_name),
                    application: shared(&e.application),
                    team: shared(&e.team),
                };
                Some((key.clone(), names))
            })
            .collect();
        directory.cluster_names = clusters
            .iter()
            .map(|c| {
                let names = ClusterNames {
                    environment_name: shared(&c.environment_name),
                    region: shared(&c.region),
                    cloud: shared(&c.cloud),
                };
                (c.id.clone(), names)
            })
            .collect();
        Ok(directory)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.cluster_names.is_empty()
    }

    /// The entry of a principal or API key; an API key resolves to its owner's entry, with the
    /// key's own fields taking precedence.
    pub fn lookup(&self, id: &str) -> Option<Entry> {
        let e = self.entries.get(normalise(id))?;
        match e.owner.as_deref().and_then(|o| self.entries.get(normalise(o))) {
            Some(owner) => Some(Entry {
                id: owner.id.clone(),
                display_name: e.display_name.clone().or_else(|| owner.display_name.clone()),
                application: e.application.clone().or_else(|| owner.application.clone()),
                team: e.team.clone().or_else(|| owner.team.clone()),
                owner: e.owner.clone(),
            }),
            None => Some(e.clone()),
        }
    }

    /// `payments-batch (sa-m3n8zd, Tech03)`; the bare id when unknown.
    pub fn display(&self, id: &str) -> String {
        match self.lookup(id) {
            Some(e) => {
                let short = normalise(&e.id);
                match (&e.display_name, &e.application) {
                    (Some(name), Some(app)) => format!("{name} ({short}, {app})"),
                    (Some(name), None) => format!("{name} ({short})"),
                    (None, Some(app)) => format!("{short} ({app})"),
                    (None, None) => id.to_owned(),
                }
            }
            None => id.to_owned(),
        }
    }

    /// Fills the directory columns of an audit row; `principal_app` only where the namespace
    /// file left it unknown. Returns true when `principal_app` changed (so `cross_namespace`
    /// must be recomputed).
    pub fn enrich_audit(&self, row: &mut AuditRow) -> bool {
        let mut changed = false;
        let resolved = |id: &str| self.resolved.get(normalise(id));
        let entry = row
            .principal
            .as_deref()
            .and_then(resolved)
            .or_else(|| row.auth_identifier.as_deref().and_then(resolved));
        if let Some(e) = entry {
            row.principal_name = e.display_name.clone();
            row.principal_team = e.team.clone();
            if row.principal_app.is_none() && e.application.is_some() {
                row.principal_app = e.application.clone();
                changed = true;
            }
        }
        if let Some(c) = row.cluster_id.as_deref().and_then(|c| self.cluster_names.get(c)) {
            row.environment_name = c.environment_name.clone();
            row.region = c.region.clone();
            row.cloud = c.cloud.clone();
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
principals:
  - id: "User:sa-m3n8zd"
    display_name: payments-batch
    application: Tech03
    team: payments
  - id: HX2VB8KL5TQ9WC1J
    owner: "User:sa-m3n8zd"
clusters:
  - id: lkc-7x3p9w
    environment_name: production
    region: eu-west-1
    cloud: aws
"#;

    #[test]
    fn principals_keys_and_clusters() {
        let d = Directory::parse_yaml(YAML, "dir.yaml").unwrap();
        assert_eq!(d.display("User:sa-m3n8zd"), "payments-batch (sa-m3n8zd, Tech03)");
        assert_eq!(d.display("HX2VB8KL5TQ9WC1J"), "payments-batch (sa-m3n8zd, Tech03)");
        assert_eq!(d.display("User:stranger"), "User:stranger");
        let mut row = AuditRow {
            auth_identifier: Some("HX2VB8KL5TQ9WC1J".into()),
            cluster_id: Some("lkc-7x3p9w".into()),
            ..AuditRow::default()
        };
        assert!(d.enrich_audit(&mut row));
        assert_eq!(row.principal_app.as_deref(), Some("Tech03"));
        assert_eq!(row.principal_name.as_deref(), Some("payments-batch"));
        assert_eq!(row.region.as_deref(), Some("eu-west-1"));
        assert_eq!(row.environment_name.as_deref(), Some("production"));
    }

    #[test]
    fn csv_directory_and_errors_with_lines() {
        let csv = "id,display_name,application,team,owner\nUser:sa-1,orders-api,Tech01,orders,\nKEY1,,,,User:sa-1\n";
        let d = Directory::parse_csv(csv, "dir.csv").unwrap();
        assert_eq!(d.display("KEY1"), "orders-api (sa-1, Tech01)");
        let bad = "id,display_name,application,team,owner\nUser:sa-1,a,b,c,d,e\n";
        let err = Directory::parse_csv(bad, "dir.csv").unwrap_err().to_string();
        assert!(err.contains("dir.csv") && err.contains("line 2"), "{err}");
        let err = Directory::parse_yaml("principals:\n  - id: x\n    nmae: y\n", "d.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nmae") && err.contains("line 3"), "{err}");
    }
}
