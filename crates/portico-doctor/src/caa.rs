//! Does CAA (RFC 8659) let the CA issue for the name, and for a wildcard.

use std::net::SocketAddr;

use hickory_proto::rr::{Name, RData, RecordType};

use crate::{dns, finding, Finding, Severity};

/// RFC 8659: the closest CAA set climbing from the name to the top; does it let the CA issue?
pub(crate) async fn check_caa(
    resolver: SocketAddr,
    name: &Name,
    apex: Option<&Name>,
    wildcard: bool,
    ca: &str,
) -> Vec<Finding> {
    let mut at = name.clone();
    loop {
        let set = match dns::resolve(resolver, &at, RecordType::CAA).await {
            Ok(r) => r.records,
            // Above the zone, an authoritative server used as the resolver (offline, or a
            // resolver that only knows local zones) refuses: nothing more to climb there.
            Err(e) if e.contains("Refused") && apex.is_some_and(|a| !a.zone_of(&at)) => {
                return vec![finding(
                    Severity::Ok,
                    "CAA",
                    format!("no CAA records from {name} up to {} (the resolver does not answer above it): any CA may issue", apex.map(|a| a.to_string()).unwrap_or_default()),
                    "",
                )];
            }
            Err(e) => {
                return vec![finding(
                    Severity::Error,
                    "DNSLookupFailed",
                    format!("the CAA lookup for {at} failed: {e} (a CA refuses to issue when it cannot check CAA)"),
                    "make the nameservers answer CAA queries (NOERROR with no data is fine)",
                )]
            }
        };
        let caas: Vec<&hickory_proto::rr::rdata::CAA> = set
            .iter()
            .filter_map(|r| match &r.data {
                RData::CAA(c) => Some(c),
                _ => None,
            })
            .collect();
        if !caas.is_empty() {
            return vec![caa_verdict(&at, &caas, wildcard, ca)];
        }
        if at.num_labels() <= 1 {
            return vec![finding(
                Severity::Ok,
                "CAA",
                format!("no CAA records from {name} up to the top: any CA may issue"),
                "",
            )];
        }
        at = at.base_name();
    }
}

pub(crate) fn caa_verdict(
    at: &Name,
    caas: &[&hickory_proto::rr::rdata::CAA],
    wildcard: bool,
    ca: &str,
) -> Finding {
    for c in caas {
        let tag = c.tag.to_ascii_lowercase();
        if c.issuer_critical && !matches!(tag.as_str(), "issue" | "issuewild" | "iodef") {
            return finding(
                Severity::Error,
                "CAACriticalUnknown",
                format!("CAA at {at} has the critical flag on the unknown tag {:?}: every CA must refuse", c.tag),
                "remove the critical flag (128) or the record",
            );
        }
    }
    let values = |tag: &str| -> Vec<String> {
        caas.iter()
            .filter(|c| c.tag.eq_ignore_ascii_case(tag))
            .map(|c| {
                let v = String::from_utf8_lossy(&c.value).to_string();
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .collect()
    };
    let mut relevant = values("issue");
    let mut tag = "issue";
    if wildcard && !values("issuewild").is_empty() {
        relevant = values("issuewild");
        tag = "issuewild";
    }
    if relevant.is_empty() {
        return finding(
            Severity::Ok,
            "CAA",
            format!("CAA at {at} has no {tag} property: any CA may issue"),
            "",
        );
    }
    if relevant.iter().any(|v| v == &ca.to_ascii_lowercase()) {
        return finding(
            Severity::Ok,
            "CAA",
            format!("CAA at {at} lets {ca} issue"),
            "",
        );
    }
    let listed: Vec<String> = relevant
        .iter()
        .map(|v| {
            if v.is_empty() {
                "none (\";\")".to_string()
            } else {
                v.clone()
            }
        })
        .collect();
    finding(
        Severity::Error,
        "CAAIssuanceNotAllowed",
        format!(
            "CAA at {at} allows only {} to issue, not {ca}",
            listed.join(", ")
        ),
        &format!(
            "add `{} CAA 0 {tag} \"{ca}\"` (or use a CA the record names)",
            at
        ),
    )
}
