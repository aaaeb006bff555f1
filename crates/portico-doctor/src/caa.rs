//! Does CAA (RFC 8659) let the CA issue for the name, and for a wildcard; and, with RFC 8657's
//! parameters (which every CA honours from 2027-03-15), to this account and by this method.

use std::net::SocketAddr;

use hickory_proto::rr::{Name, RData, RecordType};

use crate::{dns, finding, Finding, Severity};

/// Who asks to issue: the CA's CAA domain and, when known, the ACME account and the challenge
/// method (RFC 8657 `accounturi`, `validationmethods`). `expect_lock`: the name is in a zone
/// this Portico hosts, where `portico certs lock` can bind CAA to the account.
pub(crate) struct Issuing<'a> {
    pub ca: &'a str,
    pub account: Option<&'a str>,
    pub method: Option<&'a str>,
    pub expect_lock: bool,
}

/// RFC 8659: the closest CAA set climbing from the name to the top; does it let the CA issue?
pub(crate) async fn check_caa(
    resolver: SocketAddr,
    name: &Name,
    apex: Option<&Name>,
    wildcard: bool,
    who: &Issuing<'_>,
) -> Vec<Finding> {
    let mut out = check_caa_set(resolver, name, apex, wildcard, who).await;
    let locked = out
        .iter()
        .any(|f| f.name == "CAA" && f.explanation.contains("accounturi"));
    if who.expect_lock && !locked && out.iter().all(|f| f.severity == Severity::Ok) {
        out.push(finding(
            Severity::Warning,
            "CAAUnlocked",
            format!("{name} is in a zone this Portico hosts, but its CAA does not bind issuance to Portico's ACME account: any account at an allowed CA can get a certificate for it"),
            "run `portico certs lock <certificate>` (CAA with accounturi and validationmethods, RFC 8657)",
        ));
    }
    out
}

async fn check_caa_set(
    resolver: SocketAddr,
    name: &Name,
    apex: Option<&Name>,
    wildcard: bool,
    who: &Issuing<'_>,
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
            return vec![caa_verdict(&at, &caas, wildcard, who)];
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

/// A CAA issue value's issuer domain and parameters (`ca; key=value; key=value`).
fn parse_value(v: &str) -> (String, Vec<(String, String)>) {
    let mut parts = v.split(';');
    let domain = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let params = parts
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    (domain, params)
}

pub(crate) fn caa_verdict(
    at: &Name,
    caas: &[&hickory_proto::rr::rdata::CAA],
    wildcard: bool,
    who: &Issuing<'_>,
) -> Finding {
    let ca = who.ca;
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
        // The records naming this CA, with their parameters (RFC 8657).
        let full: Vec<(String, Vec<(String, String)>)> = caas
            .iter()
            .filter(|c| c.tag.eq_ignore_ascii_case(tag))
            .map(|c| parse_value(&String::from_utf8_lossy(&c.value)))
            .filter(|(d, _)| d == &ca.to_ascii_lowercase())
            .collect();
        let param = |p: &[(String, String)], k: &str| {
            p.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
        };
        let mut refusal = None;
        for (_, params) in &full {
            let account = param(params, "accounturi");
            let methods = param(params, "validationmethods");
            if let (Some(want), Some(ours)) = (&account, who.account) {
                if want != ours {
                    refusal = Some(format!("CAA at {at} lets {ca} issue only to the account {want} (accounturi), not to {ours}"));
                    continue;
                }
            }
            if let (Some(list), Some(m)) = (&methods, who.method) {
                if !list.split(',').any(|x| x.trim().eq_ignore_ascii_case(m)) {
                    refusal = Some(format!("CAA at {at} lets {ca} issue only by {list} (validationmethods), not by {m}"));
                    continue;
                }
            }
            let bound = match (&account, &methods) {
                (Some(a), Some(m)) => {
                    format!(", only to the account {a} (accounturi) by {m} (validationmethods)")
                }
                (Some(a), None) => format!(", only to the account {a} (accounturi)"),
                (None, Some(m)) => format!(", only by {m} (validationmethods)"),
                (None, None) => String::new(),
            };
            return finding(
                Severity::Ok,
                "CAA",
                format!("CAA at {at} lets {ca} issue{bound}"),
                "",
            );
        }
        if let Some(why) = refusal {
            return finding(
                Severity::Error,
                "CAAIssuanceNotAllowed",
                why,
                "order with the account and method the record names, or change the record (`portico certs lock <certificate>` writes Portico's own)",
            );
        }
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
