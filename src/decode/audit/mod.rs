//! Confluent audit events (CloudEvents, structured mode) to [`AuditRow`].
//!
//! Handles every quirk of docs/PRODUCT.md §1.1: snake_case and camelCase request fields, principals as
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

mod crn;
mod envelope;
mod row;

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

pub use crn::{Crn, parse_client_address};
use envelope::Envelope;
use row::to_row;

use super::intern::Interner;
use super::strict::Object;
use super::{DecodeError, schema_registry};
use crate::event::{AuditRow, Raw};

const AUDIT_SCHEMA: &str = include_str!("../audit_event.schema.json");

/// Decodes audit records. Build once (the schema is compiled here), use for every record.
pub struct AuditDecoder {
    validator: Option<Arc<jsonschema::Validator>>,
    max_record_bytes: usize,
    strings: Interner,
}

/// Another decoder with the same compiled schema and its own string set (one per decoding
/// thread).
impl Clone for AuditDecoder {
    fn clone(&self) -> AuditDecoder {
        AuditDecoder {
            validator: self.validator.clone(),
            max_record_bytes: self.max_record_bytes,
            strings: Interner::default(),
        }
    }
}

impl AuditDecoder {
    pub fn new(validate_schema: bool, max_record_bytes: usize) -> AuditDecoder {
        let validator = validate_schema.then(|| {
            let schema: Value = serde_json::from_str(AUDIT_SCHEMA).expect("the shipped audit schema is valid JSON");
            Arc::new(jsonschema::validator_for(&schema).expect("the shipped audit schema compiles"))
        });
        AuditDecoder {
            validator,
            max_record_bytes,
            strings: Interner::default(),
        }
    }

    /// Decodes one record value.
    pub fn decode(&mut self, payload: &[u8]) -> Result<AuditRow, DecodeError> {
        self.decode_into_raw(payload, None)
    }

    /// Decodes one record value the caller already holds shared: without Schema Registry
    /// framing, the row's `raw` is those same bytes rather than a copy.
    pub fn decode_shared(&mut self, payload: &Raw) -> Result<AuditRow, DecodeError> {
        self.decode_into_raw(payload, Some(payload))
    }

    fn decode_into_raw(&mut self, payload: &[u8], shared: Option<&Raw>) -> Result<AuditRow, DecodeError> {
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
        // both satisfies the schema. The record's UTF-8 is checked once, whole (the parser
        // reading from a `str` does not check each string again; that was ~a third of parsing).
        if let Some(envelope) = typed_view(json)
            && (self.validator.is_none() || envelope.schema_problem().is_none())
        {
            // `json` is the tail of the payload (framing comes first): the same range of the
            // shared chunk, not a copy.
            let raw = match shared {
                Some(whole) => whole.slice(whole.len() - json.len()..whole.len()),
                None => Raw::from(json),
            };
            return to_row(envelope, raw, &mut self.strings);
        }
        // Anything else (bad JSON, a schema violation, an event the typed view is stricter
        // about, duplicate keys) takes the slow path, whose errors say exactly what is wrong.
        self.decode_slowly(json)
    }

    /// Parses into a `serde_json::Value`, checks it with the JSON Schema validator, and reads
    /// the typed view from the value.
    fn decode_slowly(&mut self, json: &[u8]) -> Result<AuditRow, DecodeError> {
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
        to_row(envelope, Raw::from(json), &mut self.strings)
    }
}

/// The typed view of `json`, or `None` when the bytes are not UTF-8 or not an event the typed
/// view reads. The test `typed_checks_never_pass_what_the_schema_refuses` holds this function
/// to the schema. (sonic-rs in place of `serde_json` here was measured: 4-11% slower.)
fn typed_view(json: &[u8]) -> Option<Envelope<'_>> {
    let text = std::str::from_utf8(json).ok()?;
    serde_json::from_str::<Object<Envelope>>(text)
        .ok()
        .map(|Object(envelope)| envelope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::parse_time_us;
    use crate::event::{AuthzVia, PrincipalType};

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
        assert_eq!(&*r.event_type, "io.confluent.kafka.server/authentication");
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
        assert_eq!(&*r.event_type, "io.confluent.cloud/request");
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
    fn json_that_is_not_json_is_refused_by_both_paths() {
        // A valid event, then the same with one flaw each: the fast path must refuse what a
        // strict JSON parser refuses (the raw event is forwarded to Splunk as it is).
        let good = r#"{"id":"x","specversion":"1.0","source":"s","type":"t","time":"2026-11-24T09:15:03.001Z","data":{"methodName":"m"}}"#;
        assert!(typed_view(good.as_bytes()).is_some());
        let flawed = [
            good.replace("\"m\"", "\"m\u{1}\""),
            good.replace("\"m\"", "\"a\tb\""),
            good.replace("\"m\"", "\"a\\xb\""),
            good.replace("\"m\"", "'m'"),
            good.replace("\"m\"}", "\"m\",}"),
            good.replace("\"m\"", "NaN"),
            good.replace("\"data\"", "data"),
            format!("{good} x"),
            format!("{good}{good}"),
            good.replace("}}", "}"),
        ];
        let mut d = AuditDecoder::new(true, 1 << 20);
        for text in &flawed {
            assert!(serde_json::from_str::<Value>(text).is_err(), "not JSON: {text}");
            assert!(typed_view(text.as_bytes()).is_none(), "fast path accepts {text}");
            assert_eq!(d.decode(text.as_bytes()).unwrap_err().class(), "NotJson", "{text}");
        }
    }

    #[test]
    fn malformed_inputs_are_errors_not_panics() {
        let mut d = AuditDecoder::new(true, 1 << 20);
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
        typed_view(bytes).is_some_and(|e| e.schema_problem().is_none())
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
        let mut decoder = AuditDecoder::new(true, 1 << 20);
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
}
