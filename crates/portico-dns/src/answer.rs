//! Authoritative answers, the way Knot and NSD give them: NOERROR, NXDOMAIN and NODATA with the
//! SOA in the authority section, CNAME chains followed inside the zone, wildcards (RFC 4592),
//! referrals with glue below a zone cut, ALIAS answered as A/AAAA, a minimal answer to ANY
//! (RFC 8482), and the query name's letter case echoed. No wire bytes here: names in, the stored
//! record sets to answer with out (`wire.rs` writes them).

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Bound;
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::owner::{self, ancestors, key_into};
use crate::routing::{Health, Policy, Role, Routed, RoutedData, MULTIVALUE_MAX};
use crate::wire::Rrs;
use crate::zone::{Alias, AliasTarget, Node, RecordSet, Zone};

/// Every hosted zone, by apex (lower-case, fully qualified).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub zones: HashMap<Name, Arc<Zone>>,
}

impl Catalog {
    /// The hosted zone that contains `name` (the longest matching apex): by the name's canonical
    /// key against each apex for a few zones, by a lower-cased name per label count for many.
    pub fn find(&self, name: &Name) -> Option<&Arc<Zone>> {
        if self.zones.len() <= 8 {
            // A few zones (the common case): compare the name's key with each apex's.
            let mut key = Vec::with_capacity(name.len() + 1);
            key_into(name, &mut key);
            return self
                .zones
                .values()
                .filter(|z| key.starts_with(z.apex.key()))
                .max_by_key(|z| z.apex.key().len());
        }
        let lower = name.to_lowercase();
        (0..=lower.num_labels() as usize)
            .rev()
            .find_map(|n| self.zones.get(&lower.trim_to(n)))
    }
}

/// An answer before it becomes a message: the record sets of each section, borrowed from the
/// zone they come from.
#[derive(Debug, Default)]
pub struct Answer<'z> {
    pub rcode: ResponseCode,
    pub authoritative: bool,
    pub answers: Vec<Rrs<'z>>,
    pub authority: Vec<Rrs<'z>>,
    pub additional: Vec<Rrs<'z>>,
}

impl Answer<'_> {
    /// A section's records as hickory values.
    pub fn records(section: &[Rrs<'_>]) -> Vec<Record> {
        section.iter().flat_map(Rrs::records).collect()
    }

    /// The answer as wire bytes for `req` (see `wire::answer`).
    pub fn to_wire(&self, req: &hickory_proto::op::Message, tcp: bool) -> Vec<u8> {
        crate::wire::answer(
            req,
            &crate::wire::Sections {
                rcode: self.rcode,
                authoritative: self.authoritative,
                answers: &self.answers,
                authority: &self.authority,
                additional: &self.additional,
            },
            tcp,
        )
    }
}

/// What answers learn from the rest of Portico: the addresses of a listener, for ALIAS records
/// that point at one, and the health that routed record sets name.
pub trait ListenerAddrs: Send + Sync {
    /// The addresses `listener` is bound to (in a cluster, on every live node); with
    /// `healthy_only`, only those where it serves (see [`Health::Listener`]).
    fn addrs(&self, listener: &str, healthy_only: bool) -> Vec<IpAddr>;

    /// Whether `health` holds now; `None` when it names nothing known here (counted healthy).
    fn healthy(&self, _health: &Health) -> Option<bool> {
        None
    }
}

impl ListenerAddrs for () {
    fn addrs(&self, _: &str, _: bool) -> Vec<IpAddr> {
        Vec::new()
    }
}

const MAX_CHAIN: usize = 8;

/// Answers `qname`/`qtype` from the catalog; REFUSED for names outside every hosted zone.
pub fn lookup<'z>(
    catalog: &'z Catalog,
    qname: &Name,
    qtype: RecordType,
    listeners: &dyn ListenerAddrs,
) -> Answer<'z> {
    match catalog.find(qname) {
        Some(zone) => lookup_in(zone, qname, qtype, listeners),
        None => Answer {
            rcode: ResponseCode::Refused,
            ..Default::default()
        },
    }
}

/// Answers `qname`/`qtype` from `zone`, the hosted zone that contains it (for a caller that has
/// found it already).
pub fn lookup_in<'z>(
    zone: &'z Zone,
    qname: &Name,
    qtype: RecordType,
    listeners: &dyn ListenerAddrs,
) -> Answer<'z> {
    let mut out = Answer {
        rcode: ResponseCode::NoError,
        authoritative: true,
        ..Default::default()
    };
    let mut name = qname.clone();
    for _ in 0..MAX_CHAIN {
        let before = out.answers.len();
        let next = step(zone, &name, qtype, listeners, &mut out);
        match next {
            Some(next) if zone.origin.zone_of(&next) => name = next,
            Some(_) => break,
            None => {
                // Nothing added by the last step: NXDOMAIN or NODATA, even after a CNAME.
                if out.answers.len() == before {
                    add_soa(zone, &mut out);
                }
                break;
            }
        }
    }
    out
}

/// One name of a (possible) CNAME chain. Returns the CNAME target to follow, if any.
fn step<'z>(
    zone: &'z Zone,
    qname: &Name,
    qtype: RecordType,
    listeners: &dyn ListenerAddrs,
    out: &mut Answer<'z>,
) -> Option<Name> {
    // The canonical key: every comparison below is one memcmp (see `owner.rs`).
    let mut key = Vec::with_capacity(qname.len() + 1);
    key_into(qname, &mut key);
    if let Some(cut) = delegation(zone, &key) {
        referral(zone, cut, out);
        return None;
    }
    if let Some(node) = zone.nodes.get(key.as_slice()) {
        return answer_node(zone, node, &key, qname, qtype, listeners, out);
    }
    if has_descendant(zone, &key) {
        // An empty non-terminal: the name exists, with no data (NODATA).
        return None;
    }
    // Wildcard (RFC 4592): `*.` + the closest encloser, the longest existing proper ancestor.
    let apex_len = zone.apex.key().len();
    for encloser in ancestors(&key).rev().skip(1) {
        if encloser.len() < apex_len {
            break;
        }
        if zone.nodes.contains_key(encloser) || has_descendant(zone, encloser) {
            let mut wild = Vec::with_capacity(encloser.len() + 2);
            wild.extend_from_slice(encloser);
            wild.extend_from_slice(b"*\0");
            if let Some(node) = zone.nodes.get(wild.as_slice()) {
                return answer_node(zone, node, &wild, qname, qtype, listeners, out);
            }
            break;
        }
    }
    out.rcode = ResponseCode::NXDomain;
    None
}

fn answer_node<'z>(
    zone: &'z Zone,
    node: &'z Node,
    key: &[u8],
    owner: &Name,
    qtype: RecordType,
    listeners: &dyn ListenerAddrs,
    out: &mut Answer<'z>,
) -> Option<Name> {
    out.rcode = ResponseCode::NoError;
    if qtype == RecordType::ANY {
        // RFC 8482: one RRset is a complete answer to ANY.
        if let Some(set) = node.sets.first() {
            push_set(owner, set, &mut out.answers);
        } else if let Some(a) = node.alias() {
            alias(zone, a, owner, RecordType::A, listeners, out);
        } else if let Some(r) = node.routed().first() {
            routed(zone, node, owner, r.rtype(), listeners, out);
        }
        return None;
    }
    if let Some(set) = node.get(qtype) {
        push_set(owner, set, &mut out.answers);
        additional_for(zone, key, set, out);
        return None;
    }
    if node.extra.is_some() {
        if let Some(a) = node
            .alias()
            .filter(|_| matches!(qtype, RecordType::A | RecordType::AAAA))
        {
            alias(zone, a, owner, qtype, listeners, out);
            return None;
        }
        if node.routed().iter().any(|r| r.answers(qtype)) {
            // A CNAME asked for is the answer; one met on the way to another type is followed.
            return routed(zone, node, owner, qtype, listeners, out)
                .filter(|_| qtype != RecordType::CNAME);
        }
        if node.routed().iter().any(|r| r.answers(RecordType::CNAME)) {
            return routed(zone, node, owner, RecordType::CNAME, listeners, out);
        }
    }
    if let Some(set) = node.get(RecordType::CNAME) {
        push_set(owner, set, &mut out.answers);
        if let Some(RData::CNAME(target)) = set.first() {
            return Some(target.0);
        }
    }
    None
}

/// Answers from the routed sets of `node` that answer `qtype`, chosen by their policy and
/// health (see `routing.rs`). Returns a CNAME's target to follow.
fn routed<'z>(
    zone: &'z Zone,
    node: &'z Node,
    owner: &Name,
    qtype: RecordType,
    listeners: &dyn ListenerAddrs,
    out: &mut Answer<'z>,
) -> Option<Name> {
    let group: Vec<&'z Routed> = node.routed().iter().filter(|r| r.answers(qtype)).collect();
    let first = *group.first()?;
    let health: Vec<bool> = group
        .iter()
        .map(|r| set_healthy(zone, r, listeners))
        .collect();
    let none_healthy = !health.contains(&true);
    if first.stats.failing_open(none_healthy) {
        tracing::warn!(event = "dns_all_unhealthy", zone = %zone.origin, name = %owner, rtype = %qtype,
            policy = first.policy.kind(), "no record set of this name and type is healthy: answering as if all were (Route 53's behaviour)");
    }
    let usable = |i: usize| none_healthy || health[i];
    let chosen: Vec<&'z Routed> = match first.policy {
        Policy::Weighted(_) => {
            let weight = |r: &Routed| match r.policy {
                Policy::Weighted(w) => u32::from(w),
                _ => 0,
            };
            let mut pool: Vec<&Routed> = (0..group.len())
                .filter(|&i| usable(i) && weight(group[i]) > 0)
                .map(|i| group[i])
                .collect();
            if pool.is_empty() {
                // Sets of weight 0 answer only when no other can, then all equally.
                pool = (0..group.len())
                    .filter(|&i| usable(i))
                    .map(|i| group[i])
                    .collect();
            }
            let total: u32 = pool.iter().map(|r| weight(r)).sum();
            let pick = if total == 0 {
                pool.get(fastrand::usize(..pool.len().max(1))).copied()
            } else {
                let mut at = fastrand::u32(..total);
                pool.iter()
                    .find(|r| {
                        let w = weight(r);
                        if at < w {
                            true
                        } else {
                            at -= w;
                            false
                        }
                    })
                    .copied()
            };
            pick.into_iter().collect()
        }
        Policy::Failover(_) => {
            let role =
                |want: Role| (0..group.len()).find(|&i| group[i].policy == Policy::Failover(want));
            let (p, s) = (role(Role::Primary), role(Role::Secondary));
            let pick = match (p, s) {
                (Some(p), _) if health[p] => Some(p),
                (_, Some(s)) if health[s] => Some(s),
                // Nothing healthy: the primary, as Route 53 answers.
                (p, s) => p.or(s),
            };
            pick.map(|i| group[i]).into_iter().collect()
        }
        Policy::Multivalue => {
            let mut pool: Vec<&Routed> = (0..group.len())
                .filter(|&i| usable(i))
                .map(|i| group[i])
                .collect();
            fastrand::shuffle(&mut pool);
            pool
        }
    };
    let multivalue = first.policy == Policy::Multivalue;
    let mut cname = None;
    for r in chosen {
        if multivalue && out.answers.len() >= MULTIVALUE_MAX {
            break;
        }
        r.stats.count();
        match &r.data {
            RoutedData::Alias(a) => {
                alias(zone, a, owner, qtype, listeners, out);
            }
            RoutedData::Set(set) if multivalue && set.len() > 1 => {
                let room = MULTIVALUE_MAX.saturating_sub(out.answers.len());
                let mut ips: Vec<IpAddr> = set.iter().filter_map(|r| addr_of(&r)).collect();
                if ips.len() == set.len() {
                    fastrand::shuffle(&mut ips);
                    out.answers
                        .extend(ips.into_iter().take(room).map(|ip| Rrs::Addr {
                            owner: owner.clone(),
                            ttl: set.ttl,
                            ip,
                        }));
                } else if set.len() <= room {
                    push_set(owner, set, &mut out.answers);
                }
            }
            RoutedData::Set(set) => {
                push_set(owner, set, &mut out.answers);
                if let Some(RData::CNAME(target)) =
                    set.first().filter(|_| set.rtype == RecordType::CNAME)
                {
                    cname = Some(target.0);
                }
            }
        }
    }
    cname
}

/// Whether a routed set's health allows it to answer: its `health`, and for an alias that
/// evaluates target health, a serving listener.
pub fn set_healthy(zone: &Zone, r: &Routed, listeners: &dyn ListenerAddrs) -> bool {
    let mut ok = r
        .health
        .as_ref()
        .is_none_or(|h| listeners.healthy(h).unwrap_or(true));
    if let RoutedData::Alias(a) = &r.data {
        if a.evaluate_target_health {
            ok &= match &a.target {
                AliasTarget::Listener(l) => !listeners.addrs(l, true).is_empty(),
                AliasTarget::Name(n) => zone.node(n).is_some_and(|t| {
                    t.get(RecordType::A).is_some()
                        || t.get(RecordType::AAAA).is_some()
                        || t.alias().is_some()
                        || !t.routed().is_empty()
                }),
            };
        }
    }
    ok
}

fn addr_of(r: &RData) -> Option<IpAddr> {
    match r {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    }
}

fn alias(
    zone: &Zone,
    a: &Alias,
    owner: &Name,
    qtype: RecordType,
    listeners: &dyn ListenerAddrs,
    out: &mut Answer<'_>,
) {
    let addrs: Vec<IpAddr> = match &a.target {
        AliasTarget::Listener(l) if a.evaluate_target_health => {
            let healthy = listeners.addrs(l, true);
            if healthy.is_empty() {
                // No node serves the listener healthily: every address, as Route 53 answers.
                listeners.addrs(l, false)
            } else {
                healthy
            }
        }
        AliasTarget::Listener(l) => listeners.addrs(l, false),
        AliasTarget::Name(n) => zone
            .node(n)
            .and_then(|t| t.get(qtype))
            .map(|s| s.iter().filter_map(|r| addr_of(&r)).collect())
            .unwrap_or_default(),
    };
    for ip in addrs {
        if matches!(
            (ip, qtype),
            (IpAddr::V4(_), RecordType::A) | (IpAddr::V6(_), RecordType::AAAA)
        ) {
            out.answers.push(Rrs::Addr {
                owner: owner.clone(),
                ttl: a.ttl,
                ip,
            });
        }
    }
}

fn push_set<'z>(owner: &Name, set: &'z RecordSet, out: &mut Vec<Rrs<'z>>) {
    if !set.is_empty() {
        out.push(Rrs::Set {
            owner: owner.clone(),
            ttl: set.ttl,
            set,
        });
    }
}

/// In-zone addresses of MX, SRV and NS targets, as Knot adds them: precomputed for a served
/// zone (`Zone::index_glue`), looked up for one that is not indexed.
fn additional_for<'z>(zone: &'z Zone, key: &[u8], set: &RecordSet, out: &mut Answer<'z>) {
    if !matches!(set.rtype, RecordType::MX | RecordType::SRV | RecordType::NS) {
        return;
    }
    if let Some(glue) = zone.glue.get(key, set.rtype) {
        push_glue(glue, &mut out.additional);
        return;
    }
    for r in set.iter() {
        let target = match &r {
            RData::MX(m) => &m.exchange,
            RData::SRV(s) => &s.target,
            RData::NS(n) => &n.0,
            _ => continue,
        };
        glue(zone, target, &mut out.additional);
    }
}

fn push_glue<'z>(glue: &'z [(Name, RecordSet)], out: &mut Vec<Rrs<'z>>) {
    for (owner, set) in glue {
        push_set(owner, set, out);
    }
}

fn glue<'z>(zone: &'z Zone, target: &Name, out: &mut Vec<Rrs<'z>>) {
    if let Some(node) = zone.node(target) {
        for t in [RecordType::A, RecordType::AAAA] {
            if let Some(set) = node.get(t) {
                push_set(target, set, out);
            }
        }
    }
}

/// The highest zone cut (NS below the apex) at or above `key`, if any.
fn delegation<'k>(zone: &Zone, key: &'k [u8]) -> Option<&'k [u8]> {
    if zone.cuts.is_empty() {
        return None;
    }
    let apex_len = zone.apex.key().len();
    ancestors(key)
        .filter(|a| a.len() > apex_len)
        .find(|a| zone.cuts.contains(*a))
}

fn referral<'z>(zone: &'z Zone, cut: &[u8], out: &mut Answer<'z>) {
    out.authoritative = false;
    out.rcode = ResponseCode::NoError;
    if let Some(set) = zone.nodes.get(cut).and_then(|n| n.get(RecordType::NS)) {
        push_set(&owner::name_of(cut), set, &mut out.authority);
        if let Some(glue) = zone.glue.get(cut, RecordType::NS) {
            push_glue(glue, &mut out.additional);
            return;
        }
        for r in set.iter() {
            if let RData::NS(ns) = r {
                glue(zone, &ns.0, &mut out.additional);
            }
        }
    }
}

fn has_descendant(zone: &Zone, key: &[u8]) -> bool {
    zone.nodes
        .range::<_, [u8]>((Bound::Excluded(key), Bound::Unbounded))
        .next()
        .is_some_and(|(n, _)| n.key().starts_with(key))
}

/// Negative answers carry the SOA, its TTL capped by the SOA minimum (RFC 2308).
fn add_soa<'z>(zone: &'z Zone, out: &mut Answer<'z>) {
    if !out.authoritative {
        return;
    }
    let Some(set) = zone
        .nodes
        .get(&zone.apex)
        .and_then(|n| n.get(RecordType::SOA))
    else {
        return;
    };
    if let Some(minimum) = set.soa_minimum() {
        out.authority.push(Rrs::Set {
            owner: zone.origin.clone(),
            ttl: set.ttl.min(minimum),
            set,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zone_file::parse_into;

    fn catalog() -> Catalog {
        let mut z = Zone::new(&Name::from_ascii("example.com.").unwrap());
        parse_into(
            &mut z,
            r#"
@ 3600 SOA ns1 hostmaster 1 7200 900 1209600 300
@ NS ns1
ns1 A 192.0.2.1
www CNAME app
app A 192.0.2.10
chain1 CNAME chain2
chain2 CNAME www
out CNAME elsewhere.example.net.
*.wild A 192.0.2.99
a.b.c TXT "deep"
sub NS ns.sub
ns.sub A 192.0.2.53
"#,
            300,
        )
        .unwrap();
        let mut c = Catalog::default();
        c.zones.insert(z.origin.clone(), Arc::new(z));
        c
    }

    /// The answer's sections as records (the catalog lives only for the lookup).
    struct Got {
        rcode: ResponseCode,
        authoritative: bool,
        answers: Vec<Record>,
        authority: Vec<Record>,
        additional: Vec<Record>,
    }

    fn q(name: &str, t: RecordType) -> Got {
        let c = catalog();
        let a = lookup(&c, &Name::from_ascii(name).unwrap(), t, &());
        Got {
            rcode: a.rcode,
            authoritative: a.authoritative,
            answers: Answer::records(&a.answers),
            authority: Answer::records(&a.authority),
            additional: Answer::records(&a.additional),
        }
    }

    #[test]
    fn rcodes() {
        assert_eq!(q("app.example.com.", RecordType::A).answers.len(), 1);
        let nodata = q("app.example.com.", RecordType::MX);
        assert_eq!(
            (nodata.rcode, nodata.answers.len()),
            (ResponseCode::NoError, 0)
        );
        assert_eq!(nodata.authority[0].record_type(), RecordType::SOA);
        assert_eq!(nodata.authority[0].ttl, 300);
        assert_eq!(
            q("nope.example.com.", RecordType::A).rcode,
            ResponseCode::NXDomain
        );
        assert_eq!(
            q("b.c.example.com.", RecordType::A).rcode,
            ResponseCode::NoError,
            "empty non-terminal"
        );
        assert_eq!(
            q("example.org.", RecordType::A).rcode,
            ResponseCode::Refused
        );
    }

    #[test]
    fn chains_wildcards_referrals_case() {
        let a = q("chain1.example.com.", RecordType::A);
        assert_eq!(a.answers.len(), 4, "{:?}", a.answers);
        let out = q("out.example.com.", RecordType::A);
        assert_eq!((out.rcode, out.answers.len()), (ResponseCode::NoError, 1));
        let w = q("x.WILD.example.com.", RecordType::A);
        assert_eq!(w.answers[0].name.to_string(), "x.WILD.example.com.");
        let r = q("host.sub.example.com.", RecordType::A);
        assert!(!r.authoritative);
        assert_eq!(r.authority[0].record_type(), RecordType::NS);
        assert_eq!(r.additional.len(), 1, "glue");
        let case = q("ApP.ExAmple.com.", RecordType::A);
        assert_eq!(case.answers[0].name.to_string(), "ApP.ExAmple.com.");
    }
}
