//! The typed view of an audit event, borrowed from the record bytes.

use std::borrow::Cow;

use serde::Deserialize;

use crate::decode::strict::{IntegerOrString, IntegerStringOrArray, Object, Str, present};

/// The typed view of an event: every property `audit_event.schema.json` describes, with the
/// types it allows (see [`strict`]), plus [`Envelope::schema_problem`] for its value
/// constraints. Strings borrow from the record where they hold no escapes.
#[derive(Deserialize)]
pub(super) struct Envelope<'a> {
    #[serde(borrow)]
    pub(super) id: Str<'a>,
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) specversion: Option<Str<'a>>,
    #[serde(rename = "type", borrow)]
    pub(super) event_type: Str<'a>,
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) source: Option<Str<'a>>,
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) subject: Option<Str<'a>>,
    #[serde(borrow)]
    pub(super) time: Str<'a>,
    #[serde(rename = "datacontenttype", default, deserialize_with = "present", borrow)]
    pub(super) _datacontenttype: Option<Str<'a>>,
    #[serde(rename = "route", default, deserialize_with = "present", borrow)]
    pub(super) _route: Option<Str<'a>>,
    #[serde(rename = "confluentRouting", default, deserialize_with = "present", borrow)]
    pub(super) _confluent_routing: Option<Object<Routing<'a>>>,
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) data: Option<Object<Data<'a>>>,
}

impl Envelope<'_> {
    /// What the schema asks beyond types (required properties, lengths, the specversion
    /// enum), or `None` when the event satisfies it.
    pub(super) fn schema_problem(&self) -> Option<&'static str> {
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
pub(super) struct Routing<'a> {
    #[serde(rename = "route", default, deserialize_with = "present", borrow)]
    pub(super) _route: Option<Str<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct Data<'a> {
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) service_name: Option<Str<'a>>,
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) method_name: Option<Str<'a>>,
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) resource_name: Option<Str<'a>>,
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) authentication_info: Option<Object<AuthenticationInfo<'a>>>,
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) authorization_info: Option<Object<AuthorizationInfo<'a>>>,
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) request: Option<Object<Request<'a>>>,
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) request_metadata: Option<Object<RequestMetadata<'a>>>,
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) result: Option<Object<ResultInfo<'a>>>,
    #[serde(default, borrow)]
    pub(super) cloud_resources: Vec<CloudResource<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct AuthenticationInfo<'a> {
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) principal: Option<Principal<'a>>,
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) metadata: Option<Object<AuthenticationMetadata<'a>>>,
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) principal_resource_id: Option<Str<'a>>,
}

/// `User:sa-abc123` on Kafka events, `{"email": ..., "confluentUser": {...}}` on cloud events.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Principal<'a> {
    Name(#[serde(borrow)] Str<'a>),
    Object(#[serde(borrow)] Object<PrincipalObject<'a>>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PrincipalObject<'a> {
    #[serde(borrow, default)]
    pub(super) email: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) confluent_user: Option<ResourceIdRef<'a>>,
    #[serde(borrow, default)]
    pub(super) confluent_service_account: Option<ResourceIdRef<'a>>,
    #[serde(borrow, default)]
    pub(super) identity_pool: Option<ResourceIdRef<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ResourceIdRef<'a> {
    #[serde(borrow, default)]
    pub(super) resource_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(super) struct AuthenticationMetadata<'a> {
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) mechanism: Option<Str<'a>>,
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) identifier: Option<Str<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct AuthorizationInfo<'a> {
    #[serde(default, deserialize_with = "present")]
    pub(super) granted: Option<bool>,
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) operation: Option<Str<'a>>,
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) resource_type: Option<Str<'a>>,
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) resource_name: Option<Str<'a>>,
    #[serde(rename = "patternType", default, deserialize_with = "present", borrow)]
    pub(super) _pattern_type: Option<Str<'a>>,
    #[serde(default, deserialize_with = "present")]
    pub(super) super_user_authorization: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub(super) acl_authorization: Option<Object<serde::de::IgnoredAny>>,
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) rbac_authorization: Option<Object<RbacAuthorization<'a>>>,
}

#[derive(Deserialize)]
pub(super) struct RbacAuthorization<'a> {
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) role: Option<Str<'a>>,
}

/// Real events write snake_case, the published schema camelCase: both are read, each with
/// the type the schema gives it.
#[derive(Deserialize)]
pub(super) struct Request<'a> {
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) client_id: Option<Str<'a>>,
    #[serde(rename = "clientId", default, deserialize_with = "present", borrow)]
    pub(super) client_id_camel: Option<Str<'a>>,
    #[serde(rename = "correlation_id", default, deserialize_with = "present")]
    pub(super) _correlation_id: Option<IntegerOrString>,
    #[serde(rename = "correlationId", default, deserialize_with = "present")]
    pub(super) _correlation_id_camel: Option<IntegerOrString>,
}

#[derive(Deserialize)]
pub(super) struct RequestMetadata<'a> {
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) client_address: Option<Str<'a>>,
    #[serde(rename = "clientAddress", default, deserialize_with = "present", borrow)]
    pub(super) client_address_camel: Option<ClientAddress<'a>>,
    #[serde(rename = "connection_id", default, deserialize_with = "present")]
    pub(super) _connection_id: Option<IntegerOrString>,
    #[serde(rename = "request_id", default, deserialize_with = "present")]
    pub(super) _request_id: Option<IntegerStringOrArray>,
}

/// `clientAddress`: `[{"ip": "203.0.113.45"}]` on cloud events, or a string.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum ClientAddress<'a> {
    Text(#[serde(borrow)] Str<'a>),
    List(#[serde(borrow)] Vec<IpEntry<'a>>),
}

#[derive(Deserialize)]
pub(super) struct IpEntry<'a> {
    #[serde(borrow, default)]
    pub(super) ip: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(super) struct ResultInfo<'a> {
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) status: Option<Str<'a>>,
    #[serde(default, deserialize_with = "present", borrow)]
    pub(super) message: Option<Str<'a>>,
}

#[derive(Deserialize)]
pub(super) struct CloudResource<'a> {
    #[serde(borrow, default)]
    pub(super) resource: Option<CloudResourceRef<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct CloudResourceRef<'a> {
    #[serde(rename = "type", borrow, default)]
    pub(super) resource_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) resource_id: Option<Cow<'a, str>>,
}
