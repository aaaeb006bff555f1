//! Can dns-01 validate the name: a hosted zone of this node, or a CNAME into one.

use std::net::SocketAddr;

use hickory_proto::rr::{Name, RData, RecordType};

use crate::{dns, finding, Finding, Severity};

/// DNS-01: the zone (or the `_acme-challenge` CNAME's target) is one this Portico hosts.
pub(crate) async fn check_dns01(
    resolver: SocketAddr,
    name: &Name,
    wildcard: bool,
    hosted: &[String],
) -> Finding {
    let hosted: Vec<Name> = hosted.iter().filter_map(|z| dns::fqdn(z).ok()).collect();
    let challenge = match Name::from_ascii("_acme-challenge").and_then(|l| l.append_name(name)) {
        Ok(n) => n,
        Err(e) => {
            return finding(Severity::Error, "DNS01", e.to_string(), "");
        }
    };
    let target = match dns::resolve(resolver, &challenge, RecordType::CNAME).await {
        Ok(r) => r.records.iter().find_map(|r| match &r.data {
            RData::CNAME(c) => Some(c.0.clone()),
            _ => None,
        }),
        Err(_) => None,
    };
    let written = target.clone().unwrap_or_else(|| challenge.clone());
    if let Some(zone) = hosted.iter().find(|z| z.zone_of(&written)) {
        let how = match &target {
            Some(t) => format!("{challenge} is a CNAME to {t}, in"),
            None => format!("{challenge} is in"),
        };
        return finding(
            Severity::Ok,
            "DNS01Ready",
            format!("{how} the hosted zone {zone}: dns-01 can write its TXT record there"),
            "",
        );
    }
    let (sev, fix) = if wildcard {
        (
            Severity::Error,
            "host the zone in Portico, or add a CNAME `_acme-challenge.<name>` to a name in a Portico zone, or use dns_server/dns_key (RFC 2136)",
        )
    } else {
        (Severity::Ok, "")
    };
    let where_ = match &target {
        Some(t) => format!("{challenge} is a CNAME to {t}, which"),
        None => format!("{challenge}"),
    };
    finding(
        sev,
        if wildcard { "DNS01NotReady" } else { "DNS01" },
        format!(
            "{where_} is not in a zone this Portico hosts{}",
            if wildcard {
                ": a wildcard needs dns-01"
            } else {
                ": dns-01 needs RFC 2136 (dns_server) there; http-01 does not need it"
            }
        ),
        fix,
    )
}
