//! Confluent audit events (CloudEvents, structured mode) to [`AuditRow`].
//!
//! Handles every quirk of PRODUCT 1.1: snake_case and camelCase request fields, principals as
//! strings or objects, integer ids above 2^53 (never read as numbers: they stay in `raw`), both
//! client address shapes, `\u003d`-escaped CRNs (plain JSON escaping, undone by the parser),
//! millisecond and microsecond timestamps, specversion 0.3 with `confluentRouting`, and Schema
//! Registry framing.
//!
//! The record is parsed once into a `serde_json::Value` because the JSON Schema validator needs
//! one; the typed view then borrows its strings from that value instead of parsing again.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::{DecodeError, parse_time_us, schema_registry};
use crate::event::{AuditRow, AuthzVia, PrincipalType};

const AUDIT_SCHEMA: &str = include_str!("audit_event.schema.json");

/// Decodes audit records. Build once (the schema is compiled here), use for every record.
pub struct AuditDecoder {
    validator: Option<jsonschema::Validator>,
    max_record_bytes: usize,
}

impl AuditDecoder {
    pub fn new(validate_schema: bool, max_record_bytes: usize) -> AuditDecoder {
        let validator = validate_schema.then(|| {
            let schema: Value = serde_json::from_str(AUDIT_SCHEMA).expect("the shipped audit schema is valid JSON");
            jsonschema::validator_for(&schema).expect("the shipped audit schema compiles")
        });
        AuditDecoder {
            validator,
            max_record_bytes,
        }
    }

    /// Decodes one record value.
    pub fn decode(&self, payload: &[u8]) -> Result<AuditRow, DecodeError> {
        if payload.len() > self.max_record_bytes {
            return Err(DecodeError::TooLarge {
                size: payload.len(),
                limit: self.max_record_bytes,
            });
        }
        let (_schema_id, json) = schema_registry::strip_framing(payload);
        if json.iter().all(u8::is_ascii_whitespace) {
            return Err(DecodeError::Empty);
        }
        let value: Value = serde_json::from_slice(json)?;
        if let Some(validator) = &self.validator
            && let Err(e) = validator.validate(&value)
        {
            return Err(DecodeError::Schema {
                path: e.instance_path().to_string(),
                message: e.to_string(),
            });
        }
        let envelope = Envelope::deserialize(&value).map_err(|e| DecodeError::InvalidEvent(e.to_string()))?;
        let raw: Arc<[u8]> = Arc::from(json);
        to_row(envelope, raw)
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    #[serde(borrow, default)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    subject: Option<Cow<'a, str>>,
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(borrow, default)]
    data: Option<Data<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Data<'a> {
    #[serde(borrow, default)]
    service_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    method_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    resource_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    authentication_info: Option<AuthenticationInfo<'a>>,
    #[serde(borrow, default)]
    authorization_info: Option<AuthorizationInfo<'a>>,
    #[serde(borrow, default)]
    request: Option<Request<'a>>,
    #[serde(borrow, default)]
    request_metadata: Option<RequestMetadata<'a>>,
    #[serde(borrow, default)]
    result: Option<ResultInfo<'a>>,
    #[serde(borrow, default)]
    cloud_resources: Vec<CloudResource<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthenticationInfo<'a> {
    #[serde(borrow, default)]
    principal: Option<Principal<'a>>,
    #[serde(borrow, default)]
    metadata: Option<AuthenticationMetadata<'a>>,
    #[serde(borrow, default)]
    principal_resource_id: Option<Cow<'a, str>>,
}

/// `User:sa-abc123` on Kafka events, `{"email": ..., "confluentUser": {...}}` on cloud events.
#[derive(Deserialize)]
#[serde(untagged)]
enum Principal<'a> {
    Name(#[serde(borrow)] Cow<'a, str>),
    Object(#[serde(borrow)] PrincipalObject<'a>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PrincipalObject<'a> {
    #[serde(borrow, default)]
    email: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    confluent_user: Option<ResourceIdRef<'a>>,
    #[serde(borrow, default)]
    confluent_service_account: Option<ResourceIdRef<'a>>,
    #[serde(borrow, default)]
    identity_pool: Option<ResourceIdRef<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceIdRef<'a> {
    #[serde(borrow, default)]
    resource_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct AuthenticationMetadata<'a> {
    #[serde(borrow, default)]
    mechanism: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    identifier: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthorizationInfo<'a> {
    #[serde(default)]
    granted: Option<bool>,
    #[serde(borrow, default)]
    operation: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    resource_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    resource_name: Option<Cow<'a, str>>,
    #[serde(default)]
    super_user_authorization: Option<bool>,
    #[serde(default)]
    acl_authorization: Option<serde::de::IgnoredAny>,
    #[serde(borrow, default)]
    rbac_authorization: Option<RbacAuthorization<'a>>,
}

#[derive(Deserialize)]
struct RbacAuthorization<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
}

/// Real events write snake_case, the published schema camelCase: accept both.
#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow, default, alias = "clientId")]
    client_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RequestMetadata<'a> {
    #[serde(borrow, default, alias = "clientAddress")]
    client_address: Option<ClientAddress<'a>>,
}

/// `/10.0.0.4:53422` on Kafka events, `[{"ip": "203.0.113.45"}]` on cloud events.
#[derive(Deserialize)]
#[serde(untagged)]
enum ClientAddress<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    List(#[serde(borrow)] Vec<IpEntry<'a>>),
}

#[derive(Deserialize)]
struct IpEntry<'a> {
    #[serde(borrow, default)]
    ip: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ResultInfo<'a> {
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct CloudResource<'a> {
    #[serde(borrow, default)]
    resource: Option<CloudResourceRef<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CloudResourceRef<'a> {
    #[serde(rename = "type", borrow, default)]
    resource_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    resource_id: Option<Cow<'a, str>>,
}

fn owned(s: Option<Cow<'_, str>>) -> Option<String> {
    s.filter(|s| !s.is_empty()).map(Cow::into_owned)
}

fn to_row(e: Envelope<'_>, raw: Arc<[u8]>) -> Result<AuditRow, DecodeError> {
    let time_us = parse_time_us(&e.time)
        .ok_or_else(|| DecodeError::InvalidEvent(format!("`time` is not RFC 3339: {:?}", e.time)))?;
    if e.id.is_empty() {
        return Err(DecodeError::InvalidEvent("`id` is empty".into()));
    }
    let data = e.data.unwrap_or_default();

    // The resource CRN: the data's resourceName, else the subject, else the source.
    let crn_text = data
        .resource_name
        .as_deref()
        .or(e.subject.as_deref())
        .or(e.source.as_deref())
        .unwrap_or_default();
    let crn = Crn::parse(crn_text);
    let cluster_id = crn
        .get("kafka")
        .or_else(|| crn.get("cloud-cluster"))
        .map(str::to_owned)
        .or_else(|| {
            e.source
                .as_deref()
                .and_then(|s| Crn::parse(s).get("kafka").map(str::to_owned))
        });

    let mut row = AuditRow {
        time_us,
        id: e.id.into_owned(),
        event_type: e.event_type.into_owned(),
        method: owned(data.method_name),
        service: owned(data.service_name),
        organization: crn.get("organization").map(str::to_owned),
        environment: crn.get("environment").map(str::to_owned),
        cluster_id,
        raw,
        ..AuditRow::default()
    };

    // The resource: the authorisation's own fields are the most precise; else the CRN's last
    // segment; else a cloud resource (API keys, service accounts).
    let (crn_type, crn_name) = crn.resource();
    row.resource_type = crn_type.map(str::to_owned);
    row.resource_name = crn_name.map(str::to_owned);
    if let Some(cloud) = data.cloud_resources.into_iter().find_map(|c| c.resource) {
        row.resource_type = owned(cloud.resource_type).or(row.resource_type);
        row.resource_name = owned(cloud.resource_id).or(row.resource_name);
    }

    if let Some(authn) = data.authentication_info {
        let resource_id = owned(authn.principal_resource_id);
        match authn.principal {
            Some(Principal::Name(name)) => {
                row.principal_type = principal_type_of_name(&name);
                row.principal = owned(Some(name));
            }
            Some(Principal::Object(obj)) => {
                let id = obj
                    .confluent_user
                    .and_then(|u| u.resource_id)
                    .or_else(|| obj.confluent_service_account.and_then(|u| u.resource_id))
                    .or_else(|| obj.identity_pool.and_then(|u| u.resource_id));
                row.principal_type = match id.as_deref() {
                    Some(id) if id.starts_with("sa-") => PrincipalType::ServiceAccount,
                    Some(_) => PrincipalType::User,
                    None if obj.email.is_some() => PrincipalType::User,
                    None => PrincipalType::Unknown,
                };
                row.principal = owned(obj.email).or_else(|| owned(id));
            }
            None => row.principal = resource_id,
        }
        if let Some(meta) = authn.metadata {
            row.auth_mechanism = owned(meta.mechanism);
            row.auth_identifier = owned(meta.identifier);
        }
    }

    if let Some(authz) = data.authorization_info {
        row.granted = authz.granted;
        row.operation = owned(authz.operation);
        if let Some(t) = owned(authz.resource_type) {
            row.resource_type = Some(t);
        }
        if let Some(n) = owned(authz.resource_name) {
            row.resource_name = Some(n);
        }
        row.authz_via = if authz.super_user_authorization == Some(true) {
            AuthzVia::SuperUser
        } else if let Some(rbac) = authz.rbac_authorization {
            row.role = owned(rbac.role);
            AuthzVia::Rbac
        } else if authz.acl_authorization.is_some() {
            AuthzVia::Acl
        } else {
            AuthzVia::None
        };
    }

    if let Some(request) = data.request {
        row.client_id = owned(request.client_id);
    }
    if let Some(address) = data.request_metadata.and_then(|m| m.client_address) {
        let (ip, port) = match address {
            ClientAddress::Text(text) => parse_client_address(&text),
            ClientAddress::List(list) => (list.into_iter().find_map(|e| owned(e.ip)), None),
        };
        row.client_ip = ip;
        row.client_port = port;
    }
    if let Some(result) = data.result {
        row.result_status = owned(result.status);
        row.result_message = owned(result.message);
    }
    Ok(row)
}

fn principal_type_of_name(name: &str) -> PrincipalType {
    match name.split_once(':') {
        Some(("User", id)) if id.starts_with("sa-") => PrincipalType::ServiceAccount,
        Some(("User", id)) if id.is_empty() || id == "ANONYMOUS" => PrincipalType::Unknown,
        Some(("User", _)) => PrincipalType::User,
        _ => PrincipalType::Unknown,
    }
}

/// `/172.21.0.1`, `/10.0.0.4:53422`, `/[::1]:9092` or `::1` to (ip, port).
pub fn parse_client_address(text: &str) -> (Option<String>, Option<u16>) {
    let text = text.trim().trim_start_matches('/');
    if text.is_empty() {
        return (None, None);
    }
    if let Some(rest) = text.strip_prefix('[') {
        // Bracketed IPv6, maybe with a port.
        if let Some((ip, tail)) = rest.split_once(']') {
            let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
            return (Some(ip.to_owned()), port);
        }
    }
    match text.rsplit_once(':') {
        // One colon: IPv4 or host name with a port. More colons: a bare IPv6 address.
        Some((ip, port)) if !ip.contains(':') => match port.parse() {
            Ok(port) => (Some(ip.to_owned()), Some(port)),
            Err(_) => (Some(text.to_owned()), None),
        },
        _ => (Some(text.to_owned()), None),
    }
}

/// A Confluent Resource Name: `crn://confluent.cloud/organization=O/environment=E/.../topic=T`
/// or `crn:///kafka=ID/topic=T`.
#[derive(Debug, Default, PartialEq)]
pub struct Crn<'a> {
    pub segments: Vec<(&'a str, &'a str)>,
}

impl<'a> Crn<'a> {
    pub fn parse(text: &'a str) -> Crn<'a> {
        let Some(rest) = text.strip_prefix("crn://") else {
            return Crn::default();
        };
        // Skip the authority (may be empty, as in `crn:///kafka=...`).
        let path = rest.split_once('/').map_or("", |(_, p)| p);
        let segments = path
            .split('/')
            .filter_map(|seg| seg.split_once('='))
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
            .collect();
        Crn { segments }
    }

    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.segments.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// The resource the CRN names: its last segment, typed as Kafka's authoriser names it.
    pub fn resource(&self) -> (Option<&'static str>, Option<&'a str>) {
        let Some((key, value)) = self.segments.last() else {
            return (None, None);
        };
        let kind = match *key {
            "topic" => "Topic",
            "group" => "Group",
            "transactional-id" => "TransactionalId",
            "kafka" | "cloud-cluster" => "Cluster",
            "environment" => "Environment",
            "organization" => "Organization",
            "ksql" => "KsqlCluster",
            "schema-registry" => "SchemaRegistry",
            "subject" => "Subject",
            "connector" => "Connector",
            "service-account" => "ServiceAccount",
            "api-key" => "ApiKey",
            _ => "Other",
        };
        (Some(kind), Some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/samples/audit/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn decode(name: &str) -> AuditRow {
        AuditDecoder::new(true, 1 << 20).decode(&sample(name)).unwrap()
    }

    #[test]
    fn cloud_authentication_failure_unknown_user() {
        let r = decode("cloud-authentication-failure-unknown-user.json");
        assert_eq!(r.id, "a7d4e2c0-1f5b-4c3a-8e9d-6b2f0c1a7e55");
        assert_eq!(r.event_type, "io.confluent.kafka.server/authentication");
        assert_eq!(r.method.as_deref(), Some("kafka.Authentication"));
        assert_eq!(r.principal.as_deref(), Some("None:UNKNOWN_USER"));
        assert_eq!(r.principal_type, PrincipalType::Unknown);
        assert_eq!(r.auth_mechanism.as_deref(), Some("SASL_SSL/PLAIN"));
        assert_eq!(r.auth_identifier.as_deref(), Some("ZZ9X0BADKEY00001"));
        assert_eq!(r.result_status.as_deref(), Some("UNAUTHENTICATED"));
        assert_eq!(r.result_message.as_deref(), Some("Authentication failed"));
        assert_eq!(r.organization.as_deref(), Some("5d1c2b7e-8f3a-4c21-9e6d-0a4b7c3e9f12"));
        assert_eq!(r.environment.as_deref(), Some("env-q7k2m"));
        assert_eq!(r.cluster_id.as_deref(), Some("lkc-7x3p9w"));
        assert_eq!(r.resource_type.as_deref(), Some("Cluster"));
        // Millisecond precision.
        assert_eq!(r.time_us, parse_time_us("2026-11-24T09:15:03.001Z").unwrap());
        assert_eq!(r.time_us % 1000, 0);
        // The raw event keeps the integer above 2^53 digit for digit.
        assert!(std::str::from_utf8(&r.raw).unwrap().contains("170112233445566901"));
    }

    #[test]
    fn cloud_authentication_success_apikey() {
        let r = decode("cloud-authentication-success-apikey.json");
        assert_eq!(r.principal.as_deref(), Some("User:sa-r8v2kq"));
        assert_eq!(r.principal_type, PrincipalType::ServiceAccount);
        assert_eq!(r.auth_identifier.as_deref(), Some("KQ4ZT7WJ3NFXD2LB"));
        assert_eq!(r.result_status.as_deref(), Some("SUCCESS"));
        assert_eq!(r.granted, None);
    }

    #[test]
    fn cloud_authorization_denied_cross_namespace() {
        let r = decode("cloud-authorization-denied-cross-namespace.json");
        assert_eq!(r.granted, Some(false));
        assert_eq!(r.authz_via, AuthzVia::None);
        assert_eq!(r.operation.as_deref(), Some("Read"));
        assert_eq!(r.resource_type.as_deref(), Some("Topic"));
        assert_eq!(r.resource_name.as_deref(), Some("Tech02-payments"));
        assert_eq!(r.client_id.as_deref(), Some("Tech03-consumer-7"));
        assert_eq!(r.principal.as_deref(), Some("User:sa-m3n8zd"));
        assert_eq!(r.cluster_id.as_deref(), Some("lkc-7x3p9w"));
    }

    #[test]
    fn cloud_rbac_granted_create_topic() {
        let r = decode("cloud-authorization-rbac-granted-create-topic.json");
        assert_eq!(r.granted, Some(true));
        assert_eq!(r.authz_via, AuthzVia::Rbac);
        assert_eq!(r.role.as_deref(), Some("DeveloperManage"));
        assert_eq!(r.method.as_deref(), Some("kafka.CreateTopics"));
        assert_eq!(r.resource_name.as_deref(), Some("Tech01-orders"));
        assert_eq!(r.client_id.as_deref(), Some("adminclient-3"));
    }

    #[test]
    fn cloud_request_create_api_key() {
        let r = decode("cloud-request-create-api-key.json");
        assert_eq!(r.event_type, "io.confluent.cloud/request");
        assert_eq!(r.method.as_deref(), Some("CreateApiKey"));
        assert_eq!(r.principal.as_deref(), Some("ops-admin@example.com"));
        assert_eq!(r.principal_type, PrincipalType::User);
        assert_eq!(r.client_ip.as_deref(), Some("203.0.113.45"));
        assert_eq!(r.client_port, None);
        assert_eq!(r.resource_type.as_deref(), Some("API_KEY"));
        assert_eq!(r.resource_name.as_deref(), Some("KQ4ZT7WJ3NFXD2LB"));
        assert_eq!(r.organization.as_deref(), Some("5d1c2b7e-8f3a-4c21-9e6d-0a4b7c3e9f12"));
        assert_eq!(r.environment.as_deref(), Some("env-q7k2m"));
        assert_eq!(r.result_status.as_deref(), Some("SUCCESS"));
    }

    #[test]
    fn platform_mtls_success_escaped_crn_and_port() {
        let r = decode("platform-authentication-mtls-success.json");
        assert_eq!(r.principal.as_deref(), Some("User:alice"));
        assert_eq!(r.principal_type, PrincipalType::User);
        assert_eq!(r.auth_mechanism.as_deref(), Some("SSL"));
        // `\u003d` unescaped.
        assert_eq!(
            r.auth_identifier.as_deref(),
            Some("CN=alice,OU=payments,O=Example Corp,C=GB")
        );
        assert_eq!(r.cluster_id.as_deref(), Some("Qx1vR8mTS0ab-4kLd7PzYw"));
        assert_eq!(r.client_ip.as_deref(), Some("172.16.5.9"));
        assert_eq!(r.client_port, Some(53422));
        // Microsecond precision kept.
        assert_eq!(r.time_us, parse_time_us("2026-11-24T09:22:00.000118Z").unwrap());
        assert_eq!(r.time_us % 1_000_000, 118);
        assert_eq!(r.result_message, None);
    }

    #[test]
    fn platform_delete_topic_acl() {
        let r = decode("platform-authorization-delete-topic-acl.json");
        assert_eq!(r.method.as_deref(), Some("kafka.DeleteTopics"));
        assert_eq!(r.authz_via, AuthzVia::Acl);
        assert_eq!(r.granted, Some(true));
        assert_eq!(r.resource_type.as_deref(), Some("Topic"));
        assert_eq!(r.resource_name.as_deref(), Some("Tech01-orders"));
        assert_eq!(r.client_ip.as_deref(), Some("10.20.30.40"));
        assert_eq!(r.client_port, None);
        assert_eq!(r.cluster_id.as_deref(), Some("Qx1vR8mTS0ab-4kLd7PzYw"));
    }

    #[test]
    fn platform_v03_superuser_camel_case() {
        let r = decode("platform-v03-superuser-join-group.json");
        assert_eq!(r.authz_via, AuthzVia::SuperUser);
        assert_eq!(r.principal.as_deref(), Some("User:admin"));
        assert_eq!(r.client_id.as_deref(), Some("consumer-Tech02-1"));
        assert_eq!(r.client_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(r.resource_type.as_deref(), Some("Group"));
        assert_eq!(r.resource_name.as_deref(), Some("Tech02-Consumer-Group-01"));
        assert_eq!(r.time_us, parse_time_us("2026-11-24T09:23:45.5Z").unwrap());
    }

    #[test]
    fn schema_registry_framing_is_stripped() {
        let mut framed = vec![0, 0, 0, 0, 42];
        framed.extend(sample("platform-authentication-mtls-success.json"));
        let r = AuditDecoder::new(true, 1 << 20).decode(&framed).unwrap();
        assert_eq!(r.id, "5e8a1c4f-2b7d-4906-a3e1-c8f0b2d6e4a9");
        assert_eq!(r.raw.first(), Some(&b'{'));
    }

    #[test]
    fn malformed_inputs_are_errors_not_panics() {
        let d = AuditDecoder::new(true, 1 << 20);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "NotJson"),
            (br#"{"id":"x","specversion":"1.0","#.to_vec(), "NotJson"),
            (vec![0xff, 0xfe, b'{', b'}'], "NotJson"),
            (b"   ".to_vec(), "EmptyRecord"),
            (br#"{"id":"x"}"#.to_vec(), "SchemaViolation"),
            (
                br#"{"id":"x","specversion":"1.0","source":"s","type":"t","time":"yesterday at noon, UTC please","data":{}}"#.to_vec(),
                "InvalidEvent",
            ),
            (
                br#"{"id":"x","specversion":"1.0","source":"s","type":"t","time":"2026-11-24T09:15:03.001Z","data":{"authorizationInfo":{"granted":"yes"}}}"#.to_vec(),
                "SchemaViolation",
            ),
            (format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(), "NotJson"),
            (vec![b' '; (1 << 20) + 1], "RecordTooLarge"),
        ];
        for (input, class) in cases {
            let err = d.decode(&input).unwrap_err();
            assert_eq!(err.class(), class, "{err}");
        }
        // Invalid UTF-8 inside a string.
        let mut bad = sample("platform-authentication-mtls-success.json");
        let at = bad.windows(5).position(|w| w == b"alice").unwrap();
        bad[at] = 0xc3;
        bad[at + 1] = 0x28;
        assert_eq!(d.decode(&bad).unwrap_err().class(), "NotJson");
    }

    #[test]
    fn client_addresses() {
        assert_eq!(parse_client_address("/172.21.0.1"), (Some("172.21.0.1".into()), None));
        assert_eq!(
            parse_client_address("/10.0.0.4:53422"),
            (Some("10.0.0.4".into()), Some(53422))
        );
        assert_eq!(parse_client_address("/[::1]:9092"), (Some("::1".into()), Some(9092)));
        assert_eq!(parse_client_address("fe80::1"), (Some("fe80::1".into()), None));
        assert_eq!(parse_client_address(""), (None, None));
    }

    #[test]
    fn crns() {
        let c = Crn::parse(
            "crn://confluent.cloud/organization=o/environment=env-x/cloud-cluster=lkc-y/kafka=lkc-y/topic=T",
        );
        assert_eq!(c.get("organization"), Some("o"));
        assert_eq!(c.get("kafka"), Some("lkc-y"));
        assert_eq!(c.resource(), (Some("Topic"), Some("T")));
        let c = Crn::parse("crn:///kafka=ID/transactional-id=Tech01-Transaction-ID1");
        assert_eq!(c.get("kafka"), Some("ID"));
        assert_eq!(c.resource(), (Some("TransactionalId"), Some("Tech01-Transaction-ID1")));
        assert_eq!(Crn::parse("not a crn"), Crn::default());
    }
}
