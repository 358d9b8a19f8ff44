//! Splunk Common Information Model fields for the Authentication and Change data models, as flat
//! strings for HEC's `fields` (indexed fields must be strings or arrays of strings).

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

/// The CIM fields of an audit event, in a fixed order.
pub fn fields(row: &AuditRow) -> Vec<(&'static str, String)> {
    let failed = row.granted == Some(false) || row.result_status.as_deref().is_some_and(|s| s != "SUCCESS");
    let action = if failed { "failure" } else { "success" };
    let mut out: Vec<(&'static str, String)> = vec![
        ("action", action.into()),
        ("status", action.into()),
        ("app", "confluent:kafka".into()),
        ("vendor_product", "Confluent Kafka".into()),
    ];
    let mut push = |k: &'static str, v: Option<&str>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            out.push((k, v.to_owned()));
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
        row.resource_type.as_deref().map(|t| t.to_ascii_lowercase()).as_deref(),
    );
    push("change_type", row.method.as_deref().and_then(change_type));
    out
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
        let f = fields(&row);
        let get = |k| f.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("action"), Some("failure"));
        assert_eq!(get("user"), Some("User:sa-1"));
        assert_eq!(get("object_category"), Some("topic"));
        assert_eq!(get("change_type"), Some("AAA"));
        assert_eq!(get("src"), None);
    }
}
