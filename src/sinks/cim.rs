//! Splunk Common Information Model fields for the Authentication and Change data models, as flat
//! strings for HEC's `fields` (indexed fields must be strings or arrays of strings).

use std::borrow::Cow;

use crate::event::AuditRow;

/// Methods that change configuration, for the Change data model.
fn change_type(method: &str) -> Option<&'static str> {
    let m = method.strip_prefix("kafka.").unwrap_or(method);
    if m.contains("Acl") || m.contains("RoleBinding") || m.contains("ApiKey") || m.contains("ServiceAccount") {
        Some("AAA")
    } else if m.starts_with("Create")
        || m.starts_with("Delete")
        || m.starts_with("Alter")
        || m.starts_with("IncrementalAlter")
        || m.starts_with("Update")
    {
        Some("kafka")
    } else {
        None
    }
}

/// Each CIM field of an audit event (empty ones left out), in a fixed order, handed to `f`
/// without collecting them: the HEC encoder writes them straight into its body.
pub fn visit(row: &AuditRow, f: &mut dyn FnMut(&'static str, &str)) {
    let failed = row.granted == Some(false) || row.result_status.as_deref().is_some_and(|s| s != "SUCCESS");
    let action = if failed { "failure" } else { "success" };
    f("action", action);
    f("status", action);
    f("app", "confluent:kafka");
    f("vendor_product", "Confluent Kafka");
    let mut push = |k: &'static str, v: Option<&str>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            f(k, v);
        }
    };
    push("user", row.principal.as_deref());
    push("src", row.client_ip.as_deref());
    push("dest", row.cluster_id.as_deref());
    push("signature", row.method.as_deref());
    push("authentication_method", row.auth_mechanism.as_deref());
    push("object", row.resource_name.as_deref());
    push(
        "object_category",
        row.resource_type.as_deref().map(lowercase).as_deref(),
    );
    push("change_type", row.method.as_deref().and_then(change_type));
}

/// The resource types Kafka and Confluent Cloud name, in lower case: nearly every event has one,
/// and copying it to lower-case it was an allocation and a free per event on the HEC path.
const RESOURCE_TYPES: &[&str] = &[
    "topic",
    "group",
    "cluster",
    "transactionalid",
    "delegationtoken",
    "subject",
    "connector",
    "environment",
    "organization",
    "serviceaccount",
    "apikey",
    "ksqlcluster",
    "schemaregistry",
];

/// `t` in lower case, copied only when it has an upper-case letter and is not one of
/// [`RESOURCE_TYPES`].
fn lowercase(t: &str) -> Cow<'_, str> {
    if let Some(lower) = RESOURCE_TYPES.iter().find(|lower| lower.eq_ignore_ascii_case(t)) {
        return Cow::Borrowed(lower);
    }
    if t.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(t.to_ascii_lowercase())
    } else {
        Cow::Borrowed(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_authorisation_is_a_failure_and_acl_change_is_aaa() {
        let row = AuditRow {
            granted: Some(false),
            method: Some("kafka.CreateAcls".into()),
            principal: Some("User:sa-1".into()),
            resource_type: Some("Topic".into()),
            ..AuditRow::default()
        };
        let mut f: Vec<(&str, String)> = Vec::new();
        visit(&row, &mut |k, v| f.push((k, v.to_owned())));
        let get = |k| f.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("action"), Some("failure"));
        assert_eq!(get("user"), Some("User:sa-1"));
        assert_eq!(get("object_category"), Some("topic"));
        assert_eq!(get("change_type"), Some("AAA"));
        assert_eq!(get("src"), None);
    }

    /// The constant resource types are the same text as lower-casing them would give.
    #[test]
    fn known_resource_types_lower_case_as_any_other() {
        for t in ["Topic", "TransactionalId", "KsqlCluster"]
            .into_iter()
            .map(String::from)
            .chain(RESOURCE_TYPES.iter().map(|t| t.to_ascii_uppercase()))
        {
            assert!(matches!(lowercase(&t), Cow::Borrowed(_)), "{t}");
            assert_eq!(lowercase(&t), t.to_ascii_lowercase());
        }
        assert_eq!(lowercase("MyType"), "mytype");
        assert!(matches!(lowercase("topic"), Cow::Borrowed("topic")));
    }
}
