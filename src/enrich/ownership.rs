//! Ownership by namespace prefix (docs/PRODUCT.md §1.4). Shared clusters give each application a private
//! prefix (`Tech01-` owns `Tech01-orders`, `Tech01-Consumer-Group-01`, ...); principals belong to
//! the application that lists them. The longest matching prefix wins.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::EnrichError;
use crate::event::{AuditRow, MetricSample, Text};

/// The namespace file, as written (`deploy/namespaces.example.yaml`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceFile {
    pub applications: Vec<Application>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    /// Application name, as alerts and SQL show it.
    pub name: String,
    /// Topic, group and transactional-id prefixes it owns.
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// Principals (service accounts, users) it runs as, e.g. `User:sa-abc123`.
    #[serde(default)]
    pub principals: Vec<String>,
}

/// Prefix and principal lookups, built once from a namespace file.
#[derive(Debug, Default, Clone)]
pub struct Ownership {
    /// Sorted by descending prefix length, so the first match is the longest.
    prefixes: Vec<(String, Text)>,
    principals: HashMap<String, Text>,
}

impl Ownership {
    pub fn load(path: &Path) -> Result<Ownership, EnrichError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| EnrichError::Read {
            path: name.clone(),
            source,
        })?;
        Ownership::parse(&text, &name)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Ownership, EnrichError> {
        let file: NamespaceFile = serde_yaml::from_str(text).map_err(|e| EnrichError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| EnrichError::Invalid {
            path: origin.to_owned(),
            message,
        };
        let mut by_prefix: HashMap<String, String> = HashMap::new();
        let mut principals: HashMap<String, String> = HashMap::new();
        for app in file.applications {
            if app.name.trim().is_empty() {
                return Err(invalid("an application has an empty `name`".into()));
            }
            for prefix in app.prefixes {
                if prefix.is_empty() {
                    return Err(invalid(format!("application `{}` has an empty prefix", app.name)));
                }
                if let Some(other) = by_prefix.insert(prefix.clone(), app.name.clone())
                    && other != app.name
                {
                    return Err(invalid(format!(
                        "prefix `{prefix}` is claimed by both `{other}` and `{}`",
                        app.name
                    )));
                }
            }
            for principal in app.principals {
                let normalised = normalise_principal(&principal).to_owned();
                if let Some(other) = principals.insert(normalised, app.name.clone())
                    && other != app.name
                {
                    return Err(invalid(format!(
                        "principal `{principal}` is listed by both `{other}` and `{}`",
                        app.name
                    )));
                }
            }
        }
        let mut prefixes: Vec<(String, Text)> = by_prefix.into_iter().map(|(p, a)| (p, Text::from(a))).collect();
        prefixes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        let principals = principals.into_iter().map(|(p, a)| (p, Text::from(a))).collect();
        Ok(Ownership { prefixes, principals })
    }

    /// The application owning a resource name, by longest prefix.
    pub fn resource_app(&self, resource: &str) -> Option<&str> {
        self.resource_app_text(resource).map(|a| &**a)
    }

    /// The application a principal runs for.
    pub fn principal_app(&self, principal: &str) -> Option<&str> {
        self.principal_app_text(principal).map(|a| &**a)
    }

    fn resource_app_text(&self, resource: &str) -> Option<&Text> {
        self.prefixes
            .iter()
            .find(|(p, _)| resource.starts_with(p.as_str()))
            .map(|(_, a)| a)
    }

    fn principal_app_text(&self, principal: &str) -> Option<&Text> {
        self.principals.get(normalise_principal(principal))
    }

    pub fn num_applications(&self) -> usize {
        let mut apps: Vec<&Text> = self
            .prefixes
            .iter()
            .map(|(_, a)| a)
            .chain(self.principals.values())
            .collect();
        apps.sort();
        apps.dedup();
        apps.len()
    }

    /// Sets `resource_app`, `principal_app` and `cross_namespace` on an audit row.
    pub fn enrich_audit(&self, row: &mut AuditRow) {
        // Only namespaced resources have owners; a cluster or an organisation has none.
        let namespaced = matches!(
            row.resource_type.as_deref(),
            Some("Topic" | "Group" | "TransactionalId" | "Subject" | "Connector")
        );
        row.resource_app = if namespaced {
            row.resource_name
                .as_deref()
                .and_then(|r| self.resource_app_text(r))
                .cloned()
        } else {
            None
        };
        row.principal_app = row
            .principal
            .as_deref()
            .and_then(|p| self.principal_app_text(p))
            .cloned();
        set_cross_namespace(row);
    }

    pub fn enrich_metric(&self, sample: &mut MetricSample) {
        sample.resource_app = sample
            .topic
            .as_deref()
            .and_then(|t| self.resource_app(t))
            .map(str::to_owned);
    }
}

/// `cross_namespace`: true when principal and resource belong to different applications, unknown
/// when either owner is unknown.
pub fn set_cross_namespace(row: &mut AuditRow) {
    row.cross_namespace = match (&row.principal_app, &row.resource_app) {
        (Some(p), Some(r)) => Some(p != r),
        _ => None,
    };
}

/// `User:sa-abc123` and `sa-abc123` name the same principal.
fn normalise_principal(p: &str) -> &str {
    p.strip_prefix("User:").unwrap_or(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
applications:
  - name: Tech01
    prefixes: ["Tech01-"]
    principals: ["User:sa-abc123"]
  - name: Tech01Special
    prefixes: ["Tech01-special-"]
  - name: Tech02
    prefixes: ["Tech02-"]
    principals: ["sa-def456"]
"#;

    #[test]
    fn longest_prefix_wins_and_principals_normalise() {
        let o = Ownership::parse(FILE, "ns.yaml").unwrap();
        assert_eq!(o.resource_app("Tech01-orders"), Some("Tech01"));
        assert_eq!(o.resource_app("Tech01-special-x"), Some("Tech01Special"));
        assert_eq!(o.resource_app("Other"), None);
        assert_eq!(o.principal_app("User:sa-abc123"), Some("Tech01"));
        assert_eq!(o.principal_app("User:sa-def456"), Some("Tech02"));
        assert_eq!(o.num_applications(), 3);
    }

    #[test]
    fn cross_namespace_only_when_both_known() {
        let o = Ownership::parse(FILE, "ns.yaml").unwrap();
        let mut row = AuditRow {
            principal: Some("User:sa-abc123".into()),
            resource_type: Some("Topic".into()),
            resource_name: Some("Tech02-payments".into()),
            ..AuditRow::default()
        };
        o.enrich_audit(&mut row);
        assert_eq!(row.principal_app.as_deref(), Some("Tech01"));
        assert_eq!(row.resource_app.as_deref(), Some("Tech02"));
        assert_eq!(row.cross_namespace, Some(true));
        row.resource_name = Some("Tech01-orders".into());
        o.enrich_audit(&mut row);
        assert_eq!(row.cross_namespace, Some(false));
        row.principal = Some("User:stranger".into());
        o.enrich_audit(&mut row);
        assert_eq!(row.cross_namespace, None);
    }

    #[test]
    fn a_prefix_claimed_twice_is_an_error() {
        let text = "applications:\n  - name: A\n    prefixes: [\"X-\"]\n  - name: B\n    prefixes: [\"X-\"]\n";
        let err = Ownership::parse(text, "ns.yaml").unwrap_err().to_string();
        assert!(err.contains("X-") && err.contains("ns.yaml"), "{err}");
    }

    #[test]
    fn unknown_key_names_line() {
        let text = "applications:\n  - name: A\n    prefixs: [\"X-\"]\n";
        let err = Ownership::parse(text, "ns.yaml").unwrap_err().to_string();
        assert!(err.contains("prefixs") && err.contains("line 3"), "{err}");
    }
}
