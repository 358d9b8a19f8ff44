//! Confluent resource names (`crn://confluent.cloud/organization=.../kafka=...`) and the
//! client address shapes audit events carry.

/// `/172.21.0.1`, `/10.0.0.4:53422`, `/[::1]:9092` or `::1` to (ip, port).
pub fn parse_client_address(text: &str) -> (Option<&str>, Option<u16>) {
    let text = text.trim().trim_start_matches('/');
    if text.is_empty() {
        return (None, None);
    }
    if let Some(rest) = text.strip_prefix('[') {
        // Bracketed IPv6, maybe with a port.
        if let Some((ip, tail)) = rest.split_once(']') {
            let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
            return (Some(ip), port);
        }
    }
    match text.rsplit_once(':') {
        // One colon: IPv4 or host name with a port. More colons: a bare IPv6 address.
        Some((ip, port)) if !ip.contains(':') => match port.parse() {
            Ok(port) => (Some(ip), Some(port)),
            Err(_) => (Some(text), None),
        },
        _ => (Some(text), None),
    }
}

/// A Confluent Resource Name: `crn://confluent.cloud/organization=O/environment=E/.../topic=T`
/// or `crn:///kafka=ID/topic=T`: the segments the row reads (the first of each key), and the
/// last, found in one pass without collecting them (a vector of segments was an allocation
/// per event, and looking each key up again a scan per key).
#[derive(Debug, Default, PartialEq)]
pub struct Crn<'a> {
    pub organization: Option<&'a str>,
    pub environment: Option<&'a str>,
    pub kafka: Option<&'a str>,
    pub cloud_cluster: Option<&'a str>,
    last: Option<(&'a str, &'a str)>,
}

impl<'a> Crn<'a> {
    pub fn parse(text: &'a str) -> Crn<'a> {
        let mut crn = Crn::default();
        let Some(rest) = text.strip_prefix("crn://") else {
            return crn;
        };
        // Skip the authority (may be empty, as in `crn:///kafka=...`).
        let path = rest.split_once('/').map_or("", |(_, p)| p);
        let segments = path
            .split('/')
            .filter_map(|seg| seg.split_once('='))
            .filter(|(k, v)| !k.is_empty() && !v.is_empty());
        for (key, value) in segments {
            let slot = match key {
                "organization" => &mut crn.organization,
                "environment" => &mut crn.environment,
                "kafka" => &mut crn.kafka,
                "cloud-cluster" => &mut crn.cloud_cluster,
                _ => &mut None,
            };
            slot.get_or_insert(value);
            crn.last = Some((key, value));
        }
        crn
    }

    /// The resource the CRN names: its last segment, typed as Kafka's authoriser names it.
    pub fn resource(&self) -> (Option<&'static str>, Option<&'a str>) {
        let Some((key, value)) = self.last else {
            return (None, None);
        };
        let kind = match key {
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

    #[test]
    fn client_addresses() {
        assert_eq!(parse_client_address("/172.21.0.1"), (Some("172.21.0.1"), None));
        assert_eq!(parse_client_address("/10.0.0.4:53422"), (Some("10.0.0.4"), Some(53422)));
        assert_eq!(parse_client_address("/[::1]:9092"), (Some("::1"), Some(9092)));
        assert_eq!(parse_client_address("fe80::1"), (Some("fe80::1"), None));
        assert_eq!(parse_client_address(""), (None, None));
    }

    #[test]
    fn crns() {
        let c = Crn::parse(
            "crn://confluent.cloud/organization=o/environment=env-x/cloud-cluster=lkc-y/kafka=lkc-y/topic=T",
        );
        assert_eq!(c.organization, Some("o"));
        assert_eq!(c.environment, Some("env-x"));
        assert_eq!((c.kafka, c.cloud_cluster), (Some("lkc-y"), Some("lkc-y")));
        assert_eq!(c.resource(), (Some("Topic"), Some("T")));
        let c = Crn::parse("crn:///kafka=ID/transactional-id=Tech01-Transaction-ID1");
        assert_eq!((c.kafka, c.organization), (Some("ID"), None));
        // The first of a repeated key, as a lookup in order would find.
        assert_eq!(Crn::parse("crn://x/kafka=a/kafka=b").kafka, Some("a"));
        assert_eq!(c.resource(), (Some("TransactionalId"), Some("Tech01-Transaction-ID1")));
        assert_eq!(Crn::parse("not a crn"), Crn::default());
    }
}
