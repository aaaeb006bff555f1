//! The answer path against a reference: random zones (names from a small alphabet, so that
//! wildcards, empty non-terminals, CNAME chains, zone cuts with glue and ALIAS meet often) and
//! random queries (any letter case, names below, at and above the data) are answered by
//! `portico_dns::answer::lookup`, whose zone is keyed by canonical byte keys, and by the
//! `Name`-keyed lookup it replaced (kept below, unchanged in what it answers). Every field of
//! the two answers must be equal. Then the answer as `wire.rs` writes it must mean exactly what
//! hickory's encoder wrote for it (header, records, name case, EDNS, truncation).
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{CNAME, MX, NS, TXT, A};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use libfuzzer_sys::fuzz_target;
use portico_dns::answer::{lookup, Answer, Catalog};
use portico_dns::wire::{answer, answer_via_hickory, same_meaning, Sections};
use portico_dns::zone::{default_apex, Alias, AliasTarget, Node, Zone};

const LABELS: [&str; 5] = ["a", "b", "c", "*", "x"];

fn origin() -> Name {
    Name::from_ascii("example.test.").unwrap()
}

/// A name of 0–3 labels from the alphabet under the origin, case flipped by `case` bits.
fn name(bytes: &mut impl Iterator<Item = u8>, case: bool) -> Name {
    let depth = bytes.next().unwrap_or(0) % 4;
    let mut n = origin();
    for _ in 0..depth {
        let b = bytes.next().unwrap_or(0);
        let mut l = LABELS[(b % 5) as usize].to_string();
        if case && b & 0x80 != 0 {
            l = l.to_uppercase();
        }
        n = n.prepend_label(l).unwrap();
    }
    n
}

fn build(bytes: &mut impl Iterator<Item = u8>) -> Zone {
    let mut z = Zone::new(&origin());
    default_apex(&mut z, &[]);
    let count = bytes.next().unwrap_or(0) % 24;
    for i in 0..count {
        let owner = name(bytes, false);
        let kind = bytes.next().unwrap_or(0) % 7;
        let target = name(bytes, false);
        match kind {
            0 => z.add(&owner, RecordType::A, 300, RData::A(A::new(192, 0, 2, i))),
            1 => z.add(&owner, RecordType::TXT, 60, RData::TXT(TXT::new(vec![format!("t{i}")]))),
            2 => z.put(&owner, RecordType::CNAME, 300, vec![RData::CNAME(CNAME(target))]),
            3 => {
                let out = Name::from_ascii("elsewhere.net.").unwrap();
                z.put(&owner, RecordType::CNAME, 300, vec![RData::CNAME(CNAME(out))])
            }
            // NS at a wildcard owner is undefined (RFC 4592 §4.2); the reference skipped the
            // cut check for a query of that literal name, the new path refers it.
            4 if owner != origin() && !owner.is_wildcard() => {
                let ns = target.prepend_label("ns").unwrap();
                z.add(&owner, RecordType::NS, 3600, RData::NS(NS(ns.clone())));
                z.add(&ns, RecordType::A, 3600, RData::A(A::new(198, 51, 100, i)));
            }
            5 => z.add(&owner, RecordType::MX, 300, RData::MX(MX::new(10, target))),
            _ => z.set_alias(
                &owner,
                Some(Alias { target: AliasTarget::Name(target), ttl: 60, evaluate_target_health: false }),
            ),
        }
    }
    z
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.iter().copied();
    let mut zone = build(&mut bytes);
    let reference = Reference::of(&zone);
    // Answered with precomputed glue, as a served zone is.
    zone.index_glue();
    let mut catalog = Catalog::default();
    catalog.zones.insert(zone.origin.clone(), Arc::new(zone));
    const TYPES: [RecordType; 7] = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::TXT,
        RecordType::MX,
        RecordType::NS,
        RecordType::CNAME,
        RecordType::ANY,
    ];
    for _ in 0..16 {
        let Some(t) = bytes.next() else { break };
        let mut q = name(&mut bytes, true);
        if t & 0x40 != 0 {
            q = q.prepend_label("Deep").unwrap();
        }
        if t & 0x80 != 0 {
            q = q.base_name().base_name();
        }
        let qtype = TYPES[(t % 7) as usize];
        let got = lookup(&catalog, &q, qtype, &());
        let want = reference.lookup(&q, qtype);
        let got_records = RefAnswer {
            rcode: got.rcode,
            authoritative: got.authoritative,
            answers: Answer::records(&got.answers),
            authority: Answer::records(&got.authority),
            additional: Answer::records(&got.additional),
        };
        let show = |a: &RefAnswer| format!("{:?} aa={} {:?} / {:?} / {:?}", a.rcode, a.authoritative, a.answers, a.authority, a.additional);
        assert_eq!(show(&got_records), show(&want), "{q} {qtype}");

        // The answer written by `wire.rs` means what hickory's encoder wrote for it: every
        // field, record and name case, with and without EDNS, over UDP (truncation) and TCP.
        let mut req = Message::new(u16::from(t) << 8 | 0x5a, MessageType::Query, OpCode::Query);
        req.metadata.recursion_desired = t & 1 != 0;
        req.metadata.checking_disabled = t & 2 != 0;
        req.add_query(Query::query(q.clone(), qtype));
        if t & 4 != 0 {
            let mut e = Edns::new();
            e.set_max_payload(512 + u16::from(t & 0x38) * 16);
            req.edns = Some(e);
        }
        let Ok(req) = req.to_vec().and_then(|b| Message::from_vec(&b).map_err(Into::into)) else {
            continue;
        };
        let tcp = t & 8 != 0 && t & 0x10 != 0;
        let s = Sections {
            rcode: got.rcode,
            authoritative: got.authoritative,
            answers: &got.answers,
            authority: &got.authority,
            additional: &got.additional,
        };
        if let Err(e) = same_meaning(&answer(&req, &s, tcp), &answer_via_hickory(&req, &s, tcp)) {
            panic!("{q} {qtype} tcp={tcp}: {e}");
        }
    }
});

/// An answer as the reference gives it: records, as the answer path gave them before it
/// answered with borrowed record sets.
#[derive(Default)]
struct RefAnswer {
    rcode: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authority: Vec<Record>,
    additional: Vec<Record>,
}

/// The answer path before canonical keys (`answer.rs` at the commit before "dns: zones keyed
/// by canonical byte keys"), on a `Name`-keyed copy of the zone.
struct Reference {
    origin: Name,
    nodes: BTreeMap<Name, Node>,
    cuts: BTreeSet<Name>,
    zone: Zone,
}

const MAX_CHAIN: usize = 8;

impl Reference {
    fn of(z: &Zone) -> Self {
        Reference {
            origin: z.origin.clone(),
            nodes: z.nodes.iter().map(|(k, n)| (k.name(), n.clone())).collect(),
            cuts: z.cuts.iter().map(|k| k.name()).collect(),
            zone: z.clone(),
        }
    }

    fn lookup(&self, qname: &Name, qtype: RecordType) -> RefAnswer {
        if !self.origin.zone_of(&qname.to_lowercase()) {
            return RefAnswer { rcode: ResponseCode::Refused, ..Default::default() };
        }
        let mut out = RefAnswer { rcode: ResponseCode::NoError, authoritative: true, ..Default::default() };
        let mut name = qname.clone();
        for _ in 0..MAX_CHAIN {
            let before = out.answers.len();
            match self.step(&name, qtype, &mut out) {
                Some(next) if self.origin.zone_of(&next) => name = next,
                Some(_) => break,
                None => {
                    if out.answers.len() == before {
                        self.add_soa(&mut out);
                    }
                    break;
                }
            }
        }
        out
    }

    fn step(&self, qname: &Name, qtype: RecordType, out: &mut RefAnswer) -> Option<Name> {
        let lname = qname.to_lowercase();
        if let Some(cut) = self.delegation(&lname) {
            self.referral(&cut, out);
            return None;
        }
        if let Some(node) = self.nodes.get(&lname) {
            return self.answer_node(node, qname, qtype, out);
        }
        if self.has_descendant(&lname) {
            return None;
        }
        let mut encloser = lname.base_name();
        while self.origin.zone_of(&encloser) {
            if self.nodes.contains_key(&encloser) || self.has_descendant(&encloser) {
                let Ok(wild) = encloser.prepend_label("*") else { break };
                if let Some(node) = self.nodes.get(&wild) {
                    return self.answer_node(node, qname, qtype, out);
                }
                break;
            }
            encloser = encloser.base_name();
        }
        out.rcode = ResponseCode::NXDomain;
        None
    }

    fn answer_node(&self, node: &Node, owner: &Name, qtype: RecordType, out: &mut RefAnswer) -> Option<Name> {
        out.rcode = ResponseCode::NoError;
        if qtype == RecordType::ANY {
            if let Some(set) = node.sets.first() {
                push_set(owner, set.ttl, &set.rdatas(), &mut out.answers);
            } else if node.alias().is_some() {
                self.alias(node, owner, RecordType::A, out);
            }
            return None;
        }
        if let Some(set) = node.get(qtype) {
            push_set(owner, set.ttl, &set.rdatas(), &mut out.answers);
            for r in &set.rdatas() {
                let target = match r {
                    RData::MX(m) => &m.exchange,
                    RData::SRV(s) => &s.target,
                    RData::NS(n) => &n.0,
                    _ => continue,
                };
                self.glue(target, &mut out.additional);
            }
            return None;
        }
        if matches!(qtype, RecordType::A | RecordType::AAAA) && node.alias().is_some() {
            self.alias(node, owner, qtype, out);
            return None;
        }
        if let Some(set) = node.get(RecordType::CNAME) {
            push_set(owner, set.ttl, &set.rdatas(), &mut out.answers);
            if let Some(RData::CNAME(target)) = set.rdatas().first() {
                return Some(target.0.clone());
            }
        }
        None
    }

    fn alias(&self, node: &Node, owner: &Name, qtype: RecordType, out: &mut RefAnswer) {
        let Some(a) = node.alias() else { return };
        let AliasTarget::Name(n) = &a.target else { return };
        let Some(set) = self.nodes.get(&n.to_lowercase()).and_then(|t| t.get(qtype)) else { return };
        for r in &set.rdatas() {
            if matches!(r, RData::A(_) | RData::AAAA(_)) {
                out.answers.push(Record::from_rdata(owner.clone(), a.ttl, r.clone()));
            }
        }
    }

    fn glue(&self, target: &Name, out: &mut Vec<Record>) {
        if let Some(node) = self.nodes.get(&target.to_lowercase()) {
            for t in [RecordType::A, RecordType::AAAA] {
                if let Some(set) = node.get(t) {
                    push_set(target, set.ttl, &set.rdatas(), out);
                }
            }
        }
    }

    fn delegation(&self, lname: &Name) -> Option<Name> {
        if self.cuts.is_empty() {
            return None;
        }
        let apex_labels = self.origin.num_labels() as usize;
        let labels = lname.num_labels() as usize;
        (apex_labels + 1..=labels).map(|n| lname.trim_to(n)).find(|cut| self.cuts.contains(cut))
    }

    fn referral(&self, cut: &Name, out: &mut RefAnswer) {
        out.authoritative = false;
        out.rcode = ResponseCode::NoError;
        if let Some(set) = self.nodes.get(cut).and_then(|n| n.get(RecordType::NS)) {
            push_set(cut, set.ttl, &set.rdatas(), &mut out.authority);
            for r in &set.rdatas() {
                if let RData::NS(ns) = r {
                    self.glue(&ns.0, &mut out.additional);
                }
            }
        }
    }

    fn has_descendant(&self, lname: &Name) -> bool {
        self.nodes
            .range((Bound::Excluded(lname.clone()), Bound::Unbounded))
            .next()
            .is_some_and(|(n, _)| lname.zone_of(n))
    }

    fn add_soa(&self, out: &mut RefAnswer) {
        if !out.authoritative {
            return;
        }
        if let Some((soa, ttl)) = self.zone.soa() {
            out.authority.push(Record::from_rdata(self.origin.clone(), ttl.min(soa.minimum), RData::SOA(soa.clone())));
        }
    }
}

fn push_set(owner: &Name, ttl: u32, rdatas: &[RData], out: &mut Vec<Record>) {
    out.extend(rdatas.iter().map(|r| Record::from_rdata(owner.clone(), ttl, r.clone())));
}
