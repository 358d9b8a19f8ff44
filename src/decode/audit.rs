//! Confluent audit events (CloudEvents, structured mode) to [`AuditRow`].
//!
//! Handles every quirk of PRODUCT 1.1: snake_case and camelCase request fields, principals as
//! strings or objects, integer ids above 2^53 (never read as numbers: they stay in `raw`), both
//! client address shapes, `\u003d`-escaped CRNs (plain JSON escaping, undone by the parser),
//! millisecond and microsecond timestamps, specversion 0.3 with `confluentRouting`, and Schema
//! Registry framing.
//!
//! The typed view is read straight from the record bytes, borrowing its strings, with the JSON
//! Schema's constraints compiled into its types ([`super::strict`]) and
//! [`Envelope::schema_problem`]; only a record that fails that is parsed into a
//! `serde_json::Value` and run through the `jsonschema` validator, whose error names the
//! offending path. A test mutates every property the schema names and checks that the fast
//! path never accepts what the validator refuses.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::strict::{IntegerOrString, IntegerStringOrArray, Object, Str, present};
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
        // Fast path: the typed view straight from the bytes. Its types refuse whatever the
        // schema's types refuse and `schema_problem` checks the rest, so an event that passes
        // both satisfies the schema.
        if let Ok(Object(envelope)) = serde_json::from_slice::<Object<Envelope>>(json)
            && (self.validator.is_none() || envelope.schema_problem().is_none())
        {
            return to_row(envelope, Arc::from(json));
        }
        // Anything else (bad JSON, a schema violation, an event the typed view is stricter
        // about, duplicate keys) takes the slow path, whose errors say exactly what is wrong.
        self.decode_slowly(json)
    }

    /// Parses into a `serde_json::Value`, checks it with the JSON Schema validator, and reads
    /// the typed view from the value.
    fn decode_slowly(&self, json: &[u8]) -> Result<AuditRow, DecodeError> {
        let value: Value = serde_json::from_slice(json)?;
        if let Some(validator) = &self.validator
            && let Err(e) = validator.validate(&value)
        {
            return Err(DecodeError::Schema {
                path: e.instance_path().to_string(),
                message: e.to_string(),
            });
        }
        let Object(envelope) =
            Object::<Envelope>::deserialize(&value).map_err(|e| DecodeError::InvalidEvent(e.to_string()))?;
        to_row(envelope, Arc::from(json))
    }
}

/// The typed view of an event: every property `audit_event.schema.json` describes, with the
/// types it allows (see [`strict`]), plus [`Envelope::schema_problem`] for its value
/// constraints. Strings borrow from the record where they hold no escapes.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: Str<'a>,
    #[serde(default, deserialize_with = "present", borrow)]
    specversion: Option<Str<'a>>,
    #[serde(rename = "type", borrow)]
    event_type: Str<'a>,
    #[serde(default, deserialize_with = "present", borrow)]
    source: Option<Str<'a>>,
    #[serde(default, deserialize_with = "present", borrow)]
    subject: Option<Str<'a>>,
    #[serde(borrow)]
    time: Str<'a>,
    #[serde(rename = "datacontenttype", default, deserialize_with = "present", borrow)]
    _datacontenttype: Option<Str<'a>>,
    #[serde(rename = "route", default, deserialize_with = "present", borrow)]
    _route: Option<Str<'a>>,
    #[serde(rename = "confluentRouting", default, deserialize_with = "present", borrow)]
    _confluent_routing: Option<Object<Routing<'a>>>,
    #[serde(default, deserialize_with = "present", borrow)]
    data: Option<Object<Data<'a>>>,
}

impl Envelope<'_> {
    /// What the schema asks beyond types (required properties, lengths, the specversion
    /// enum), or `None` when the event satisfies it.
    fn schema_problem(&self) -> Option<&'static str> {
        let id_chars = self.id.num_chars();
        if id_chars == 0 || id_chars > 256 {
            return Some("`id` must have 1 to 256 characters");
        }
        if !matches!(self.specversion.as_ref().map(Str::as_str), Some("1.0" | "0.3")) {
            return Some("`specversion` must be \"1.0\" or \"0.3\"");
        }
        if self.source.is_none() {
            return Some("`source` is required");
        }
        if self.event_type.num_chars() == 0 {
            return Some("`type` must not be empty");
        }
        if self.time.num_chars() < 20 {
            return Some("`time` must have at least 20 characters");
        }
        if self.data.is_none() {
            return Some("`data` is required");
        }
        None
    }
}

#[derive(Deserialize)]
struct Routing<'a> {
    #[serde(rename = "route", default, deserialize_with = "present", borrow)]
    _route: Option<Str<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Data<'a> {
    #[serde(default, deserialize_with = "present", borrow)]
    service_name: Option<Str<'a>>,
    #[serde(default, deserialize_with = "present", borrow)]
    method_name: Option<Str<'a>>,
    #[serde(default, deserialize_with = "present", borrow)]
    resource_name: Option<Str<'a>>,
    #[serde(default, deserialize_with = "present", borrow)]
    authentication_info: Option<Object<AuthenticationInfo<'a>>>,
    #[serde(default, deserialize_with = "present", borrow)]
    authorization_info: Option<Object<AuthorizationInfo<'a>>>,
    #[serde(default, deserialize_with = "present", borrow)]
    request: Option<Object<Request<'a>>>,
    #[serde(default, deserialize_with = "present", borrow)]
    request_metadata: Option<Object<RequestMetadata<'a>>>,
    #[serde(default, deserialize_with = "present", borrow)]
    result: Option<Object<ResultInfo<'a>>>,
    #[serde(default, borrow)]
    cloud_resources: Vec<CloudResource<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthenticationInfo<'a> {
    #[serde(default, deserialize_with = "present", borrow)]
    principal: Option<Principal<'a>>,
    #[serde(default, deserialize_with = "present", borrow)]
    metadata: Option<Object<AuthenticationMetadata<'a>>>,
    #[serde(default, deserialize_with = "present", borrow)]
    principal_resource_id: Option<Str<'a>>,
}

/// `User:sa-abc123` on Kafka events, `{"email": ..., "confluentUser": {...}}` on cloud events.
#[derive(Deserialize)]
#[serde(untagged)]
enum Principal<'a> {
    Name(#[serde(borrow)] Str<'a>),
    Object(#[serde(borrow)] Object<PrincipalObject<'a>>),
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
    #[serde(default, deserialize_with = "present", borrow)]
    mechanism: Option<Str<'a>>,
    #[serde(default, deserialize_with = "present", borrow)]
    identifier: Option<Str<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthorizationInfo<'a> {
    #[serde(default, deserialize_with = "present")]
    granted: Option<bool>,
    #[serde(default, deserialize_with = "present", borrow)]
    operation: Option<Str<'a>>,
    #[serde(default, deserialize_with = "present", borrow)]
    resource_type: Option<Str<'a>>,
    #[serde(default, deserialize_with = "present", borrow)]
    resource_name: Option<Str<'a>>,
    #[serde(rename = "patternType", default, deserialize_with = "present", borrow)]
    _pattern_type: Option<Str<'a>>,
    #[serde(default, deserialize_with = "present")]
    super_user_authorization: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    acl_authorization: Option<Object<serde::de::IgnoredAny>>,
    #[serde(default, deserialize_with = "present", borrow)]
    rbac_authorization: Option<Object<RbacAuthorization<'a>>>,
}

#[derive(Deserialize)]
struct RbacAuthorization<'a> {
    #[serde(default, deserialize_with = "present", borrow)]
    role: Option<Str<'a>>,
}

/// Real events write snake_case, the published schema camelCase: both are read, each with
/// the type the schema gives it.
#[derive(Deserialize)]
struct Request<'a> {
    #[serde(default, deserialize_with = "present", borrow)]
    client_id: Option<Str<'a>>,
    #[serde(rename = "clientId", default, deserialize_with = "present", borrow)]
    client_id_camel: Option<Str<'a>>,
    #[serde(rename = "correlation_id", default, deserialize_with = "present")]
    _correlation_id: Option<IntegerOrString>,
    #[serde(rename = "correlationId", default, deserialize_with = "present")]
    _correlation_id_camel: Option<IntegerOrString>,
}

#[derive(Deserialize)]
struct RequestMetadata<'a> {
    #[serde(default, deserialize_with = "present", borrow)]
    client_address: Option<Str<'a>>,
    #[serde(rename = "clientAddress", default, deserialize_with = "present", borrow)]
    client_address_camel: Option<ClientAddress<'a>>,
    #[serde(rename = "connection_id", default, deserialize_with = "present")]
    _connection_id: Option<IntegerOrString>,
    #[serde(rename = "request_id", default, deserialize_with = "present")]
    _request_id: Option<IntegerStringOrArray>,
}

/// `clientAddress`: `[{"ip": "203.0.113.45"}]` on cloud events, or a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum ClientAddress<'a> {
    Text(#[serde(borrow)] Str<'a>),
    List(#[serde(borrow)] Vec<IpEntry<'a>>),
}

#[derive(Deserialize)]
struct IpEntry<'a> {
    #[serde(borrow, default)]
    ip: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ResultInfo<'a> {
    #[serde(default, deserialize_with = "present", borrow)]
    status: Option<Str<'a>>,
    #[serde(default, deserialize_with = "present", borrow)]
    message: Option<Str<'a>>,
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

fn owned<'a>(s: Option<impl Into<Cow<'a, str>>>) -> Option<String> {
    s.map(Into::into).filter(|s| !s.is_empty()).map(Cow::into_owned)
}

fn text<'s>(s: &'s Option<Str<'_>>) -> Option<&'s str> {
    s.as_ref().map(Str::as_str)
}

fn to_row(e: Envelope<'_>, raw: Arc<[u8]>) -> Result<AuditRow, DecodeError> {
    let time_us = parse_time_us(e.time.as_str())
        .ok_or_else(|| DecodeError::InvalidEvent(format!("`time` is not RFC 3339: {:?}", e.time.as_str())))?;
    if e.id.as_str().is_empty() {
        return Err(DecodeError::InvalidEvent("`id` is empty".into()));
    }
    let data = e.data.map(|Object(data)| data).unwrap_or_default();

    // The resource CRN: the data's resourceName, else the subject, else the source.
    let crn_text = text(&data.resource_name)
        .or(text(&e.subject))
        .or(text(&e.source))
        .unwrap_or_default();
    let crn = Crn::parse(crn_text);
    let cluster_id = crn
        .get("kafka")
        .or_else(|| crn.get("cloud-cluster"))
        .map(str::to_owned)
        .or_else(|| text(&e.source).and_then(|s| Crn::parse(s).get("kafka").map(str::to_owned)));

    let mut row = AuditRow {
        time_us,
        id: e.id.0.into_owned(),
        event_type: e.event_type.0.into_owned(),
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

    if let Some(Object(authn)) = data.authentication_info {
        let resource_id = owned(authn.principal_resource_id);
        match authn.principal {
            Some(Principal::Name(name)) => {
                row.principal_type = principal_type_of_name(name.as_str());
                row.principal = owned(Some(name));
            }
            Some(Principal::Object(Object(obj))) => {
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
        if let Some(Object(meta)) = authn.metadata {
            row.auth_mechanism = owned(meta.mechanism);
            row.auth_identifier = owned(meta.identifier);
        }
    }

    if let Some(Object(authz)) = data.authorization_info {
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
        } else if let Some(Object(rbac)) = authz.rbac_authorization {
            row.role = owned(rbac.role);
            AuthzVia::Rbac
        } else if authz.acl_authorization.is_some() {
            AuthzVia::Acl
        } else {
            AuthzVia::None
        };
    }

    if let Some(Object(request)) = data.request {
        row.client_id = owned(request.client_id.or(request.client_id_camel));
    }
    let address = data
        .request_metadata
        .and_then(|Object(m)| m.client_address.map(ClientAddress::Text).or(m.client_address_camel));
    if let Some(address) = address {
        let (ip, port) = match address {
            ClientAddress::Text(text) => parse_client_address(text.as_str()),
            ClientAddress::List(list) => (list.into_iter().find_map(|e| owned(e.ip)), None),
        };
        row.client_ip = ip;
        row.client_port = port;
    }
    if let Some(Object(result)) = data.result {
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

    /// The names of every shared audit sample.
    fn samples() -> Vec<String> {
        let dir = format!("{}/tests/fixtures/samples/audit", env!("CARGO_MANIFEST_DIR"));
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert!(names.len() >= 8, "{names:?}");
        names
    }

    /// Every property path the schema describes (`/data/authorizationInfo/granted`, ...).
    fn schema_paths(schema: &Value, prefix: &str, out: &mut Vec<String>) {
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (name, sub) in properties {
                let path = format!("{prefix}/{name}");
                out.push(path.clone());
                schema_paths(sub, &path, out);
            }
        }
    }

    /// The object at `pointer`, made (as empty objects) where missing; `None` where a
    /// non-object is in the way.
    fn object_at<'v>(value: &'v mut Value, pointer: &str) -> Option<&'v mut serde_json::Map<String, Value>> {
        let mut node = value;
        for key in pointer.split('/').skip(1) {
            node = node
                .as_object_mut()?
                .entry(key)
                .or_insert_with(|| Value::Object(Default::default()));
        }
        node.as_object_mut()
    }

    fn fast_path_accepts(bytes: &[u8]) -> bool {
        matches!(serde_json::from_slice::<Object<Envelope>>(bytes), Ok(Object(e)) if e.schema_problem().is_none())
    }

    /// Regression guard for the fast path: remove, or replace with a value of every JSON type,
    /// each property the schema names, in every sample; the typed view may be stricter than
    /// the schema (the slow path then decides) but must never accept what the schema refuses.
    #[test]
    fn typed_checks_never_pass_what_the_schema_refuses() {
        use serde_json::json;
        let schema: Value = serde_json::from_str(AUDIT_SCHEMA).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let mut paths = Vec::new();
        schema_paths(&schema, "", &mut paths);
        assert!(paths.len() > 40, "{paths:?}");
        let replacements = [
            json!(null),
            json!(true),
            json!(0),
            json!(-7),
            json!(1.0),
            json!(1.5),
            json!(18446744073709551616.0),
            json!(""),
            json!("x"),
            json!("1.0"),
            json!("0.3"),
            json!("2026-11-24T09:15:03.001Z"),
            json!("y".repeat(300)),
            json!([]),
            json!([1, "a", {}]),
            json!({}),
            json!({"route": 1, "role": "R", "email": "e@example.com"}),
        ];
        let (mut both_accept, mut both_refuse, mut only_schema) = (0, 0, 0);
        let mut check = |variant: &Value, what: &str| {
            let bytes = serde_json::to_vec(variant).unwrap();
            let by_schema = validator.is_valid(variant);
            let by_type = fast_path_accepts(&bytes);
            assert!(
                by_schema || !by_type,
                "the fast path accepts what the schema refuses ({what}): {}",
                String::from_utf8_lossy(&bytes)
            );
            match (by_schema, by_type) {
                (true, true) => both_accept += 1,
                (false, false) => both_refuse += 1,
                _ => only_schema += 1,
            }
        };
        for top in [json!([]), json!("event"), json!(1), json!(null), json!([{"id": "x"}])] {
            check(&top, "not an object");
        }
        for name in samples() {
            let original: Value = serde_json::from_slice(&sample(&name)).unwrap();
            assert!(
                fast_path_accepts(&serde_json::to_vec(&original).unwrap()),
                "{name} takes the fast path"
            );
            for path in &paths {
                let (parent, key) = path.rsplit_once('/').unwrap();
                let mut removed = original.clone();
                if let Some(object) = object_at(&mut removed, parent) {
                    object.remove(key);
                    check(&removed, &format!("{name}: without {path}"));
                }
                for replacement in &replacements {
                    let mut replaced = original.clone();
                    if let Some(object) = object_at(&mut replaced, parent) {
                        object.insert(key.to_owned(), replacement.clone());
                        check(&replaced, &format!("{name}: {path} = {replacement}"));
                    }
                }
            }
        }
        // Not vacuous: most variants are decided alike, both ways.
        assert!(
            both_accept > 2000 && both_refuse > 2000,
            "{both_accept} / {both_refuse} / {only_schema}"
        );
        assert!(
            only_schema < both_accept / 10,
            "{only_schema} valid events leave the fast path"
        );
    }

    #[test]
    fn the_fast_and_slow_paths_decode_alike() {
        let decoder = AuditDecoder::new(true, 1 << 20);
        for name in samples() {
            let bytes = sample(&name);
            assert_eq!(
                decoder.decode(&bytes).unwrap(),
                decoder.decode_slowly(&bytes).unwrap(),
                "{name}"
            );
        }
        // Escaped strings (owned, not borrowed) read the same.
        let escaped = String::from_utf8(sample("cloud-authorization-denied-cross-namespace.json"))
            .unwrap()
            .replace("Tech02-payments", "Tech02\\u002dpayments");
        let row = decoder.decode(escaped.as_bytes()).unwrap();
        assert_eq!(row.resource_name.as_deref(), Some("Tech02-payments"));
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
