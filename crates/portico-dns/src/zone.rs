//! A hosted zone's data: record sets by owner name, plus ALIAS records, and the checks every
//! version of a zone must pass (CNAME exclusivity, names inside the zone, TTL bounds, one SOA).
//!
//! A [`Zone`] is immutable once built; a change produces a new one (copy, edit, validate) that is
//! swapped in whole, so a query never sees half a change.

use std::collections::BTreeMap;

use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{Name, RData, RecordType};

pub use crate::owner::Owner;

/// Highest TTL accepted (Route 53's limit: 2^31 - 1 seconds, RFC 2181 §8).
pub const MAX_TTL: u32 = 2_147_483_647;

/// Records of one type at one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSet {
    pub rtype: RecordType,
    pub ttl: u32,
    pub rdatas: Vec<RData>,
}

/// Where an ALIAS points: the addresses of a Portico listener, or of another name in the zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AliasTarget {
    Listener(String),
    Name(Name),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    pub target: AliasTarget,
    pub ttl: u32,
}

/// Everything at one owner name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub sets: Vec<RecordSet>,
    /// Boxed: rare, and large inline (it would double the size of every node).
    pub alias: Option<Box<Alias>>,
}

impl Node {
    pub fn get(&self, rtype: RecordType) -> Option<&RecordSet> {
        self.sets.iter().find(|s| s.rtype == rtype)
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty() && self.alias.is_none()
    }
}

/// One hosted zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// The apex, lower-case and fully qualified.
    pub origin: Name,
    /// Owner names (canonical keys) to their records, in DNS canonical order.
    pub nodes: BTreeMap<Owner, Node>,
    /// Names below the apex that hold NS records (zone cuts), so that lookups in a zone
    /// without delegations skip the search for one.
    pub cuts: std::collections::BTreeSet<Owner>,
    /// The apex's key.
    pub apex: Owner,
}

/// Why a zone version is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} {rtype}: {reason}")]
pub struct ZoneError {
    pub name: String,
    pub rtype: String,
    pub reason: String,
}

impl ZoneError {
    pub fn new(name: &Name, rtype: impl ToString, reason: impl Into<String>) -> Self {
        ZoneError {
            name: name.to_string(),
            rtype: rtype.to_string(),
            reason: reason.into(),
        }
    }
}

impl Zone {
    pub fn new(origin: &Name) -> Self {
        let mut origin = origin.to_lowercase();
        origin.set_fqdn(true);
        Zone {
            apex: Owner::new(&origin),
            origin,
            nodes: BTreeMap::new(),
            cuts: Default::default(),
        }
    }

    pub fn node(&self, name: &Name) -> Option<&Node> {
        self.nodes.get(Owner::new(name).key())
    }

    pub fn soa(&self) -> Option<(&SOA, u32)> {
        let set = self.nodes.get(&self.apex)?.get(RecordType::SOA)?;
        match set.rdatas.first() {
            Some(RData::SOA(soa)) => Some((soa, set.ttl)),
            _ => None,
        }
    }

    pub fn serial(&self) -> u32 {
        self.soa().map_or(0, |(s, _)| s.serial)
    }

    /// Replaces the record set of `rtype` at `name` (an empty `rdatas` removes it).
    pub fn put(&mut self, name: &Name, rtype: RecordType, ttl: u32, rdatas: Vec<RData>) {
        self.note_cut(name, rtype, !rdatas.is_empty());
        let owner = Owner::new(name);
        let node = self.nodes.entry(owner.clone()).or_default();
        node.sets.retain(|s| s.rtype != rtype);
        if !rdatas.is_empty() {
            node.sets.push(RecordSet { rtype, ttl, rdatas });
            node.sets.sort_by_key(|s| u16::from(s.rtype));
        }
        if node.is_empty() {
            self.nodes.remove(&owner);
        }
    }

    /// Adds one record to a set (as a master file or an UPDATE adds records one by one).
    /// The set's TTL becomes the newest record's, as BIND does.
    pub fn add(&mut self, name: &Name, rtype: RecordType, ttl: u32, rdata: RData) {
        self.note_cut(name, rtype, true);
        let node = self.nodes.entry(Owner::new(name)).or_default();
        match node.sets.iter_mut().find(|s| s.rtype == rtype) {
            Some(set) => {
                set.ttl = ttl;
                if !set.rdatas.contains(&rdata) {
                    set.rdatas.push(rdata);
                }
            }
            None => {
                node.sets.push(RecordSet {
                    rtype,
                    ttl,
                    rdatas: vec![rdata],
                });
                node.sets.sort_by_key(|s| u16::from(s.rtype));
            }
        }
    }

    fn note_cut(&mut self, name: &Name, rtype: RecordType, present: bool) {
        if rtype != RecordType::NS {
            return;
        }
        let lower = Owner::new(name);
        if lower == self.apex {
            return;
        }
        if present {
            self.cuts.insert(lower);
        } else {
            self.cuts.remove(&lower);
        }
    }

    pub fn set_alias(&mut self, name: &Name, alias: Option<Alias>) {
        let owner = Owner::new(name);
        let node = self.nodes.entry(owner.clone()).or_default();
        node.alias = alias.map(Box::new);
        if node.is_empty() {
            self.nodes.remove(&owner);
        }
    }

    /// Sets the SOA serial.
    pub fn set_serial(&mut self, serial: u32) {
        if let Some(node) = self.nodes.get_mut(&self.apex) {
            for set in node.sets.iter_mut().filter(|s| s.rtype == RecordType::SOA) {
                for r in set.rdatas.iter_mut() {
                    if let RData::SOA(soa) = r {
                        soa.serial = serial;
                    }
                }
            }
        }
    }

    /// Every rule a zone version must satisfy.
    pub fn validate(&self) -> Result<(), ZoneError> {
        match self
            .nodes
            .get(&self.apex)
            .and_then(|n| n.get(RecordType::SOA))
        {
            Some(s) if s.rdatas.len() == 1 => {}
            Some(_) => {
                return Err(ZoneError::new(
                    &self.origin,
                    "SOA",
                    "a zone has exactly one SOA record",
                ))
            }
            None => {
                return Err(ZoneError::new(
                    &self.origin,
                    "SOA",
                    "the zone has no SOA record at its apex",
                ))
            }
        }
        if self
            .nodes
            .get(&self.apex)
            .and_then(|n| n.get(RecordType::NS))
            .is_none()
        {
            return Err(ZoneError::new(
                &self.origin,
                "NS",
                "the zone has no NS records at its apex",
            ));
        }
        for (owner, node) in &self.nodes {
            // Decoded only for an error message.
            let name = || owner.name();
            if !owner.key().starts_with(self.apex.key()) {
                return Err(ZoneError::new(
                    &name(),
                    "-",
                    format!("the name is outside the zone {}", self.origin),
                ));
            }
            for set in &node.sets {
                if set.ttl > MAX_TTL {
                    return Err(ZoneError::new(
                        &name(),
                        set.rtype,
                        format!("TTL {} is above {MAX_TTL}", set.ttl),
                    ));
                }
                if set.rtype == RecordType::SOA && *owner != self.apex {
                    return Err(ZoneError::new(
                        &name(),
                        "SOA",
                        "an SOA record belongs only at the zone apex",
                    ));
                }
                if set.rtype == RecordType::CNAME && set.rdatas.len() > 1 {
                    return Err(ZoneError::new(
                        &name(),
                        "CNAME",
                        "a name has at most one CNAME record",
                    ));
                }
            }
            let has_cname = node.get(RecordType::CNAME).is_some();
            if has_cname && (node.sets.len() > 1 || node.alias.is_some()) {
                return Err(ZoneError::new(
                    &name(),
                    "CNAME",
                    "a CNAME cannot coexist with other data at the same name (RFC 1034 §3.6.2)",
                ));
            }
            if has_cname && *owner == self.apex {
                return Err(ZoneError::new(
                    &name(),
                    "CNAME",
                    "a CNAME cannot be at the zone apex (use ALIAS)",
                ));
            }
            if let Some(alias) = &node.alias {
                if node.get(RecordType::A).is_some() || node.get(RecordType::AAAA).is_some() {
                    return Err(ZoneError::new(&name(), "ALIAS", "an ALIAS answers A and AAAA itself: remove the A/AAAA records at this name"));
                }
                if let AliasTarget::Name(t) = &alias.target {
                    if !self.origin.zone_of(t) {
                        return Err(ZoneError::new(
                            &name(),
                            "ALIAS",
                            format!("ALIAS target {t} is outside the zone"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Record count, for logs and metrics.
    pub fn record_count(&self) -> usize {
        self.nodes
            .values()
            .map(|n| {
                n.sets.iter().map(|s| s.rdatas.len()).sum::<usize>()
                    + usize::from(n.alias.is_some())
            })
            .sum()
    }
}

/// An SOA and NS like Route 53 gives a new hosted zone: the SOA names the first nameserver,
/// `hostmaster.<zone>`, serial 1, refresh 7200, retry 900, expire 1209600, negative TTL 86400
/// capped to 300 here so that negative answers do not linger while records are being added.
pub fn default_apex(zone: &mut Zone, nameservers: &[Name]) {
    let ns: Vec<Name> = if nameservers.is_empty() {
        (1..=2)
            .filter_map(|i| Name::parse(&format!("ns{i}"), Some(&zone.origin)).ok())
            .collect()
    } else {
        nameservers.to_vec()
    };
    let origin = zone.origin.clone();
    if zone.soa().is_none() {
        let mname = ns.first().cloned().unwrap_or_else(|| origin.clone());
        let rname = Name::parse("hostmaster", Some(&origin)).unwrap_or_else(|_| origin.clone());
        let soa = SOA::new(mname, rname, 1, 7200, 900, 1_209_600, 300);
        zone.put(&origin, RecordType::SOA, 900, vec![RData::SOA(soa)]);
    }
    if zone
        .node(&origin)
        .and_then(|n| n.get(RecordType::NS))
        .is_none()
    {
        let rdatas = ns
            .into_iter()
            .map(|n| RData::NS(hickory_proto::rr::rdata::NS(n)))
            .collect();
        zone.put(&origin, RecordType::NS, 172_800, rdatas);
    }
}
