//! Does every authoritative nameserver of the zone answer the same, and with the records.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use hickory_proto::rr::{Name, RData, RecordType};

use crate::{dns, finding, Finding, Severity};

/// Every authoritative nameserver of the zone asked directly: serials and answers compared.
pub(crate) async fn check_propagation(
    resolver: SocketAddr,
    ns_port: u16,
    name: &Name,
    apex: &Result<(Name, u32), String>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let (apex, negative_ttl) = match apex.clone() {
        Ok(z) => z,
        Err(e) => {
            out.push(finding(
                Severity::Error,
                "DNSLookupFailed",
                format!("cannot find the zone of {name}: {e}"),
                "check that the domain is delegated to nameservers that answer",
            ));
            return out;
        }
    };
    let servers = match dns::nameservers(resolver, &apex).await {
        Ok(s) => s,
        Err(e) => {
            out.push(finding(
                Severity::Error,
                "DNSLookupFailed",
                format!("cannot list the nameservers of {apex}: {e}"),
                "",
            ));
            return out;
        }
    };
    if servers.is_empty() {
        out.push(finding(
            Severity::Error,
            "NoNameservers",
            format!("the zone {apex} has no NS records"),
            "add NS records naming the zone's authoritative servers",
        ));
        return out;
    }
    // (nameserver, address) -> (serial, answer set, max ttl)
    let mut views: BTreeMap<String, (u32, BTreeSet<String>, u32)> = BTreeMap::new();
    let mut problems = Vec::new();
    for (ns, addrs) in servers {
        if addrs.is_empty() {
            problems.push(finding(
                Severity::Error,
                "NameserverUnresolvable",
                format!("nameserver {ns} of {apex} has no address"),
                "add A/AAAA records (glue) for the nameserver",
            ));
            continue;
        }
        for ip in addrs {
            let at = SocketAddr::new(ip, ns_port);
            let label = format!("{ns} ({at})");
            let soa = dns::query(at, &apex, RecordType::SOA, false).await;
            let serial = match soa {
                Ok(m) => m.answers.iter().find_map(|r| match &r.data {
                    RData::SOA(s) => Some(s.serial),
                    _ => None,
                }),
                Err(e) => {
                    problems.push(finding(
                        Severity::Error,
                        "NameserverUnreachable",
                        format!("{label} does not answer: {e}"),
                        "a CA may ask this server: fix it or remove it from the NS set",
                    ));
                    continue;
                }
            };
            let Some(serial) = serial else {
                problems.push(finding(
                    Severity::Error,
                    "NameserverNotAuthoritative",
                    format!("{label} does not serve the zone {apex} (no SOA)"),
                    "load the zone on this server (zone transfer from the primary) or remove it from the NS set",
                ));
                continue;
            };
            let mut answer = BTreeSet::new();
            let mut ttl = negative_ttl;
            for t in [RecordType::A, RecordType::AAAA] {
                if let Ok(m) = dns::query(at, name, t, false).await {
                    for r in &m.answers {
                        ttl = ttl.max(r.ttl);
                        match &r.data {
                            RData::A(a) => {
                                answer.insert(a.0.to_string());
                            }
                            RData::AAAA(a) => {
                                answer.insert(a.0.to_string());
                            }
                            RData::CNAME(c) => {
                                answer.insert(format!("CNAME {}", c.0));
                            }
                            _ => {}
                        }
                    }
                }
            }
            views.insert(label, (serial, answer, ttl));
        }
    }
    out.extend(problems);
    let serials: BTreeSet<u32> = views.values().map(|v| v.0).collect();
    let answers: BTreeSet<&BTreeSet<String>> = views.values().map(|v| &v.1).collect();
    if views.is_empty() {
        return out;
    }
    if serials.len() == 1 && answers.len() == 1 {
        out.push(finding(
            Severity::Ok,
            "Propagation",
            format!(
                "all {} nameserver address(es) of {apex} serve serial {} and the same answer for {name}",
                views.len(),
                serials.iter().next().unwrap_or(&0)
            ),
            "",
        ));
        return out;
    }
    let newest = serials.iter().max().copied().unwrap_or(0);
    // The answer the newest serial gives is the one being propagated.
    let target = views
        .values()
        .find(|v| v.0 == newest)
        .map(|v| v.1.clone())
        .unwrap_or_default();
    let ttl = views.values().map(|v| v.2).max().unwrap_or(0);
    let behind: Vec<String> = views
        .iter()
        .filter(|(_, v)| v.0 != newest || v.1 != target)
        .map(|(k, v)| {
            let has = if v.1.is_empty() {
                "no record".to_string()
            } else {
                v.1.iter().cloned().collect::<Vec<_>>().join(" ")
            };
            format!("{k} has serial {} and {has}", v.0)
        })
        .collect();
    let want = if target.is_empty() {
        "no record".to_string()
    } else {
        target.iter().cloned().collect::<Vec<_>>().join(" ")
    };
    out.push(finding(
        Severity::Error,
        "NameserversDisagree",
        format!(
            "not propagated: the newest serial {newest} answers {want} for {name}, but {}; resolvers may keep an old answer for up to {ttl} s after all agree",
            behind.join("; ")
        ),
        "wait for the secondaries to transfer the zone (check NOTIFY/AXFR from the primary), then for the TTL",
    ));
    out
}
