//! An [`Envelope`] to an [`AuditRow`]: the fields of docs/PRODUCT.md §1.1, with the
//! quirks of each producer smoothed out.

use super::crn::{Crn, parse_client_address};
use super::envelope::*;
use crate::decode::intern::Interner;
use crate::decode::strict::{Object, Str};
use crate::decode::{DecodeError, parse_time_us};
use crate::event::{AuditRow, AuthzVia, PrincipalType, Raw};

fn text<'s>(s: &'s Option<Str<'_>>) -> Option<&'s str> {
    s.as_ref().map(Str::as_str)
}

/// `s` unless it is empty: an empty field does not stand in for a less precise one.
fn filled(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

pub(super) fn to_row(e: Envelope<'_>, raw: Raw, strings: &mut Interner) -> Result<AuditRow, DecodeError> {
    let mut owned = |s: Option<&str>| strings.non_empty(s);
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
    let source_crn;
    let cluster_id = match crn.kafka.or(crn.cloud_cluster) {
        Some(id) => Some(id),
        None => {
            source_crn = text(&e.source).map(Crn::parse);
            source_crn.as_ref().and_then(|c| c.kafka)
        }
    };

    let mut row = AuditRow {
        time_us,
        id: e.id.0.into_owned(),
        event_type: owned(Some(e.event_type.as_str())).unwrap_or_default(),
        method: owned(text(&data.method_name)),
        service: owned(text(&data.service_name)),
        organization: owned(crn.organization),
        environment: owned(crn.environment),
        cluster_id: owned(cluster_id),
        raw,
        ..AuditRow::default()
    };

    // The resource: the authorisation's own fields are the most precise; else a cloud resource
    // (API keys, service accounts); else the CRN's last segment. Each is looked up only when
    // nothing more precise is there (a lookup is a hash and a compare, ~20 per event).
    let authz_resource = data.authorization_info.as_ref().map_or((None, None), |Object(authz)| {
        (filled(text(&authz.resource_type)), filled(text(&authz.resource_name)))
    });
    let cloud = data.cloud_resources.iter().find_map(|c| c.resource.as_ref());
    let (crn_type, crn_name) = crn.resource();
    row.resource_type = owned(
        authz_resource
            .0
            .or(filled(cloud.and_then(|c| c.resource_type.as_deref())))
            .or(crn_type),
    );
    row.resource_name = owned(
        authz_resource
            .1
            .or(filled(cloud.and_then(|c| c.resource_id.as_deref())))
            .or(crn_name),
    );

    if let Some(Object(authn)) = data.authentication_info {
        match authn.principal {
            Some(Principal::Name(name)) => {
                row.principal_type = principal_type_of_name(name.as_str());
                row.principal = owned(Some(name.as_str()));
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
                row.principal = owned(obj.email.as_deref()).or_else(|| owned(id.as_deref()));
            }
            None => row.principal = owned(text(&authn.principal_resource_id)),
        }
        if let Some(Object(meta)) = authn.metadata {
            row.auth_mechanism = owned(text(&meta.mechanism));
            row.auth_identifier = owned(text(&meta.identifier));
        }
    }

    if let Some(Object(authz)) = data.authorization_info {
        row.granted = authz.granted;
        row.operation = owned(text(&authz.operation));
        row.authz_via = if authz.super_user_authorization == Some(true) {
            AuthzVia::SuperUser
        } else if let Some(Object(rbac)) = authz.rbac_authorization {
            row.role = owned(text(&rbac.role));
            AuthzVia::Rbac
        } else if authz.acl_authorization.is_some() {
            AuthzVia::Acl
        } else {
            AuthzVia::None
        };
    }

    if let Some(Object(request)) = data.request {
        row.client_id = owned(text(&request.client_id.or(request.client_id_camel)));
    }
    let address = data
        .request_metadata
        .and_then(|Object(m)| m.client_address.map(ClientAddress::Text).or(m.client_address_camel));
    if let Some(address) = address {
        let (ip, port) = match &address {
            ClientAddress::Text(address) => parse_client_address(address.as_str()),
            ClientAddress::List(list) => (
                list.iter().find_map(|e| e.ip.as_deref().filter(|ip| !ip.is_empty())),
                None,
            ),
        };
        row.client_ip = owned(ip);
        row.client_port = port;
    }
    if let Some(Object(result)) = data.result {
        row.result_status = owned(text(&result.status));
        row.result_message = owned(text(&result.message));
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
