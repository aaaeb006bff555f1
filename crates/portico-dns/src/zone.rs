//! A hosted zone's data: record sets by owner name, plus ALIAS records, and the checks every
//! version of a zone must pass (CNAME exclusivity, names inside the zone, TTL bounds, one SOA).
//!
//! A [`Zone`] is immutable once built; a change produces a new one (copy, edit, validate) that is
//! swapped in whole, so a query never sees half a change. The name tree is a persistent B-tree
//! (`imbl::OrdMap`): the copy shares every node with the original and an edit copies only the
//! path to what it changes, so a change to a zone of a million names costs what it changes, not
//! a copy of the zone. A copy made for an edit also records which names the edit touched
//! ([`Zone::track`]), so that validation, the IXFR difference and the journal look only there.

use std::collections::BTreeSet;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};

use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{Name, RData, RecordType};

pub use crate::owner::Owner;
use crate::routing::{Routed, RoutedData, MAX_HEALTH_TTL};
use crate::rrset::{holds, BulkRecord, Rdatas};
pub use crate::rrset::{Bulk, EncodeError, RecordSet};

/// Highest TTL accepted (Route 53's limit: 2^31 - 1 seconds, RFC 2181 §8).
pub const MAX_TTL: u32 = 2_147_483_647;

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
    /// Answer only addresses whose listener serves (bound, and a target group it forwards to
    /// has a healthy target); all of them when none does (Route 53's "evaluate target health").
    pub evaluate_target_health: bool,
}

/// Everything at one owner name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// In type order. A boxed slice, exactly as long as it needs to be (a `Vec` that grew by
    /// one push holds room for four sets: 72 bytes per name wasted in a big zone).
    pub sets: Box<[RecordSet]>,
    /// ALIAS and routed sets. Boxed: rare, and large inline (it would double the size of every
    /// node).
    pub extra: Option<Box<Extra>>,
}

/// What a name holds besides plain record sets: answered at query time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extra {
    pub alias: Option<Alias>,
    /// Record sets with a `set_identifier` and a routing policy, in the order they were set.
    pub routed: Vec<Routed>,
}

impl Node {
    pub fn alias(&self) -> Option<&Alias> {
        self.extra.as_ref().and_then(|e| e.alias.as_ref())
    }

    pub fn routed(&self) -> &[Routed] {
        self.extra.as_ref().map_or(&[][..], |e| &e.routed[..])
    }

    fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    /// Drops an empty `extra`, so that equal nodes compare equal.
    fn tidy(&mut self) {
        if self
            .extra
            .as_ref()
            .is_some_and(|e| e.alias.is_none() && e.routed.is_empty())
        {
            self.extra = None;
        }
    }

    pub fn get(&self, rtype: RecordType) -> Option<&RecordSet> {
        self.sets.iter().find(|s| s.rtype == rtype)
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty() && self.extra.is_none()
    }

    /// Replaces the set of `rtype` (or removes it when `set` is `None`), keeping type order.
    fn replace_set(&mut self, rtype: RecordType, set: Option<RecordSet>) {
        let mut sets = std::mem::take(&mut self.sets).into_vec();
        sets.retain(|s| s.rtype != rtype);
        sets.extend(set);
        sets.sort_by_key(|s| u16::from(s.rtype));
        self.sets = sets.into_boxed_slice();
    }
}

/// One hosted zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// The apex, lower-case and fully qualified.
    pub origin: Name,
    /// Owner names (canonical keys) to their records, in DNS canonical order.
    pub nodes: OrdMap<Owner, Node>,
    /// Names below the apex that hold NS records (zone cuts), so that lookups in a zone
    /// without delegations skip the search for one.
    pub cuts: OrdSet<Owner>,
    /// The apex's key.
    pub apex: Owner,
    /// Names that hold routed record sets (for health checks and metrics to find them).
    pub routed: OrdSet<Owner>,
    /// The first record `put` or `add` could not store; `validate` reports it.
    pub unstorable: Option<Box<ZoneError>>,
    /// Glue precomputed for the zone as it is served (`index_glue`, called where a zone is
    /// published); empty on a zone being edited, where answers look glue up instead.
    pub glue: GlueIndex,
    /// The names an edit changed, on a copy made with [`Zone::track`].
    pub touched: Touched,
}

/// The owner names changed on a copy of a zone since [`Zone::track`]; `None` when the copy is
/// not tracked (a zone being built). Not part of a zone's identity, and a clone starts untracked.
#[derive(Default)]
pub struct Touched(Option<BTreeSet<Owner>>);

impl Touched {
    /// The names touched, if the zone was tracked.
    pub fn names(&self) -> Option<&BTreeSet<Owner>> {
        self.0.as_ref()
    }
}

impl Clone for Touched {
    fn clone(&self) -> Self {
        Touched(None)
    }
}

impl PartialEq for Touched {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Touched {}

impl std::fmt::Debug for Touched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Touched(untracked)"),
            Some(s) => write!(f, "Touched({} names)", s.len()),
        }
    }
}

/// For each NS, MX and SRV set (owner key, type): the in-zone A and AAAA sets of its targets,
/// in the order answers list them. Not part of a zone's identity: equal for every two zones, and
/// a clone starts empty, so that an edited copy never answers with the original's glue.
#[derive(Default)]
pub struct GlueIndex(Option<Arc<GlueMap>>);

/// Owner key → the glue of each of its NS, MX and SRV sets.
type GlueMap = std::collections::HashMap<Box<[u8]>, Vec<(RecordType, Glue)>>;

/// The A and AAAA sets of one set's targets, each with its owner name.
type Glue = Box<[(Name, RecordSet)]>;

impl GlueIndex {
    /// The glue of the set of `rtype` at `owner_key`: `None` when the zone is not indexed.
    /// Looked up by the borrowed key, so an answer allocates nothing here.
    pub fn get(&self, owner_key: &[u8], rtype: RecordType) -> Option<&[(Name, RecordSet)]> {
        let map = self.0.as_ref()?;
        let sets = map.get(owner_key).map_or(&[][..], |v| &v[..]);
        Some(
            sets.iter()
                .find(|(t, _)| *t == rtype)
                .map_or(&[][..], |(_, g)| &g[..]),
        )
    }
}

impl Clone for GlueIndex {
    fn clone(&self) -> Self {
        GlueIndex(None)
    }
}

impl GlueIndex {
    /// The same index, for a new version of the zone whose change left every glue source alone
    /// (see [`Zone::glue_unchanged`]).
    pub fn share(&self) -> GlueIndex {
        GlueIndex(self.0.clone())
    }
}

impl PartialEq for GlueIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for GlueIndex {}

impl std::fmt::Debug for GlueIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("GlueIndex(not built)"),
            Some(m) => write!(f, "GlueIndex({} sets)", m.len()),
        }
    }
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
            nodes: OrdMap::new(),
            cuts: Default::default(),
            routed: Default::default(),
            unstorable: None,
            glue: GlueIndex::default(),
            touched: Touched::default(),
        }
    }

    /// Starts recording the names that edits of this copy change.
    pub fn track(&mut self) {
        self.touched = Touched(Some(BTreeSet::new()));
    }

    fn touch(&mut self, owner: &Owner) {
        if let Some(t) = self.touched.0.as_mut() {
            if !t.contains(owner) {
                t.insert(owner.clone());
            }
        }
    }

    /// Whether this tracked copy differs from `old` (the zone it was copied from); a full
    /// comparison when it is not tracked.
    pub fn differs_from(&self, old: &Zone) -> bool {
        match self.touched.names() {
            Some(t) => t.iter().any(|o| self.nodes.get(o) != old.nodes.get(o)),
            None => self != old,
        }
    }

    /// Whether the change from `old` to this tracked copy leaves the glue index as it was: no
    /// NS, MX, SRV, A or AAAA set changed at a touched name (an ACME challenge's TXT record, say).
    pub fn glue_unchanged(&self, old: &Zone) -> bool {
        let Some(t) = self.touched.names() else {
            return false;
        };
        fn glue_sets(n: Option<&Node>) -> impl Iterator<Item = &RecordSet> {
            n.map_or(&[][..], |n| &n.sets[..]).iter().filter(|s| {
                matches!(
                    s.rtype,
                    RecordType::NS
                        | RecordType::MX
                        | RecordType::SRV
                        | RecordType::A
                        | RecordType::AAAA
                )
            })
        }
        t.iter()
            .all(|o| glue_sets(old.nodes.get(o)).eq(glue_sets(self.nodes.get(o))))
    }

    /// Replaces everything at `owner` (a node read back from the journal), keeping the zone
    /// cuts and the routed index in step.
    pub fn replace_node(&mut self, owner: Owner, node: Option<Node>) {
        self.touch(&owner);
        let node = node.filter(|n| !n.is_empty());
        let cut = owner != self.apex
            && node
                .as_ref()
                .is_some_and(|n| n.get(RecordType::NS).is_some());
        if cut {
            self.cuts.insert(owner.clone());
        } else {
            self.cuts.remove(&owner);
        }
        if node.as_ref().is_some_and(|n| !n.routed().is_empty()) {
            self.routed.insert(owner.clone());
        } else {
            self.routed.remove(&owner);
        }
        match node {
            Some(n) => {
                self.nodes.insert(owner, n);
            }
            None => {
                self.nodes.remove(&owner);
            }
        }
    }

    /// Precomputes the glue of every NS, MX and SRV set (see [`GlueIndex`]); called on a zone
    /// about to be served, after its last change.
    pub fn index_glue(&mut self) {
        let mut map = GlueMap::new();
        for (owner, node) in &self.nodes {
            for set in node.sets.iter() {
                if !matches!(set.rtype, RecordType::NS | RecordType::MX | RecordType::SRV) {
                    continue;
                }
                let mut glue = Vec::new();
                for r in set.iter() {
                    let target = match &r {
                        RData::MX(m) => &m.exchange,
                        RData::SRV(s) => &s.target,
                        RData::NS(n) => &n.0,
                        _ => continue,
                    };
                    if let Some(t) = self.node(target) {
                        for ty in [RecordType::A, RecordType::AAAA] {
                            if let Some(a) = t.get(ty) {
                                glue.push((target.clone(), a.clone()));
                            }
                        }
                    }
                }
                if !glue.is_empty() {
                    map.entry(Box::<[u8]>::from(owner.key()))
                        .or_default()
                        .push((set.rtype, glue.into_boxed_slice()));
                }
            }
        }
        self.glue = GlueIndex(Some(Arc::new(map)));
    }

    pub fn node(&self, name: &Name) -> Option<&Node> {
        self.nodes.get(Owner::new(name).key())
    }

    pub fn soa(&self) -> Option<(SOA, u32)> {
        let set = self.nodes.get(&self.apex)?.get(RecordType::SOA)?;
        match set.first() {
            Some(RData::SOA(soa)) => Some((soa, set.ttl)),
            _ => None,
        }
    }

    fn note_unstorable(&mut self, name: &Name, e: EncodeError) {
        if self.unstorable.is_none() {
            self.unstorable = Some(Box::new(ZoneError::new(
                name,
                e.rtype,
                format!(
                    "{}: the record data cannot be written in DNS wire format ({})",
                    e.rdata, e.reason
                ),
            )));
        }
    }

    pub fn serial(&self) -> u32 {
        self.soa().map_or(0, |(s, _)| s.serial)
    }

    /// Replaces the record set of `rtype` at `name` (an empty `rdatas` removes it).
    pub fn put(&mut self, name: &Name, rtype: RecordType, ttl: u32, rdatas: Vec<RData>) {
        self.note_cut(name, rtype, !rdatas.is_empty());
        let owner = Owner::new(name);
        self.touch(&owner);
        let node = self.nodes.entry(owner.clone()).or_default();
        let mut failed = None;
        let set = if rdatas.is_empty() {
            None
        } else {
            RecordSet::new(rtype, ttl, &rdatas)
                .map_err(|e| failed = Some(e))
                .ok()
        };
        node.replace_set(rtype, set);
        if node.is_empty() {
            self.nodes.remove(&owner);
        }
        if let Some(e) = failed {
            self.note_unstorable(name, e);
        }
    }

    /// Puts a stored set as it is (a set copied from another version of the zone).
    pub fn put_set(&mut self, name: &Name, set: RecordSet) {
        self.note_cut(name, set.rtype, !set.is_empty());
        let owner = Owner::new(name);
        self.touch(&owner);
        let node = self.nodes.entry(owner.clone()).or_default();
        node.replace_set(set.rtype, (!set.is_empty()).then_some(set));
        if node.is_empty() {
            self.nodes.remove(&owner);
        }
    }

    /// Adds what `bulk` gathered. Into an empty zone the name tree is built at once from the
    /// sorted records; otherwise record by record.
    pub fn add_bulk(&mut self, bulk: Bulk) {
        let Bulk { wire, mut records } = bulk;
        let one = |r: &BulkRecord| &wire[r.at as usize..r.at as usize + usize::from(r.len)];
        if !self.nodes.is_empty() {
            for r in &records {
                let decoder = Rdatas {
                    rtype: r.rtype,
                    rest: &[],
                };
                if let Some(rdata) = decoder.decode(one(r)) {
                    self.add(&r.owner.name(), r.rtype, r.ttl, rdata);
                }
            }
            return;
        }
        // By owner, then type; records of one set stay in file order (`at` grows with it).
        // Keys share a prefix (the apex's, in a zone that passes validation); the eight bytes
        // after the shared prefix, compared as one number, decide most comparisons without a
        // `memcmp` (sorting was a third of a big zone's load time). Consistent with key order:
        // where the numbers differ, the keys differ at that byte (or one ends there).
        let skip = records.first().map_or(0, |f| {
            records.iter().fold(f.owner.key().len(), |n, r| {
                let (a, b) = (&f.owner.key()[..n], r.owner.key());
                a.iter().zip(b).take_while(|(x, y)| x == y).count()
            })
        });
        let head = |k: &[u8]| {
            let mut b = [0u8; 8];
            let tail = k.get(skip..).unwrap_or_default();
            let n = tail.len().min(8);
            b[..n].copy_from_slice(&tail[..n]);
            u64::from_be_bytes(b)
        };
        for r in records.iter_mut() {
            r.head = head(r.owner.key());
        }
        records.sort_unstable_by(|a, b| {
            a.head.cmp(&b.head).then_with(|| {
                (a.owner.key(), u16::from(a.rtype), a.at).cmp(&(
                    b.owner.key(),
                    u16::from(b.rtype),
                    b.at,
                ))
            })
        });
        let mut nodes: Vec<(Owner, Node)> = Vec::new();
        let mut sets: Vec<RecordSet> = Vec::new();
        let mut data: Vec<u8> = Vec::new();
        let mut kept: Vec<(usize, usize)> = Vec::new();
        let mut i = 0;
        while i < records.len() {
            let first = &records[i];
            let mut j = i;
            while j < records.len() && records[j].owner == first.owner {
                let rtype = records[j].rtype;
                let mut k = j;
                data.clear();
                kept.clear();
                while k < records.len()
                    && records[k].rtype == rtype
                    && records[k].owner == first.owner
                {
                    let w = one(&records[k]);
                    let have = kept.iter().map(|&(s, e)| &data[s..e]);
                    if !holds(rtype, have, w) {
                        data.extend_from_slice(&records[k].len.to_be_bytes());
                        kept.push((data.len(), data.len() + w.len()));
                        data.extend_from_slice(w);
                    }
                    k += 1;
                }
                sets.push(RecordSet {
                    rtype,
                    ttl: records[k - 1].ttl,
                    data: Box::from(&data[..]),
                });
                j = k;
            }
            let owner = first.owner.clone();
            if owner != self.apex && sets.iter().any(|s| s.rtype == RecordType::NS) {
                self.cuts.insert(owner.clone());
            }
            nodes.push((
                owner,
                Node {
                    sets: std::mem::take(&mut sets).into_boxed_slice(),
                    extra: None,
                },
            ));
            i = j;
        }
        drop(records);
        self.nodes = nodes.into_iter().collect();
    }

    /// Adds one record to a set (as a master file or an UPDATE adds records one by one).
    /// The set's TTL becomes the newest record's, as BIND does.
    pub fn add(&mut self, name: &Name, rtype: RecordType, ttl: u32, rdata: RData) {
        self.note_cut(name, rtype, true);
        let owner = Owner::new(name);
        self.touch(&owner);
        let node = self.nodes.entry(owner.clone()).or_default();
        let done = match node.sets.iter_mut().find(|s| s.rtype == rtype) {
            Some(set) => {
                set.ttl = ttl;
                set.push(&rdata)
            }
            None => RecordSet::new(rtype, ttl, std::slice::from_ref(&rdata))
                .map(|set| node.replace_set(rtype, Some(set))),
        };
        if node.is_empty() {
            self.nodes.remove(&owner);
        }
        if let Err(e) = done {
            self.note_unstorable(name, e);
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
        self.touch(&owner);
        let node = self.nodes.entry(owner.clone()).or_default();
        node.extra_mut().alias = alias;
        node.tidy();
        if node.is_empty() {
            self.nodes.remove(&owner);
        }
    }

    /// Sets a routed record set, replacing the one of the same type and identifier.
    pub fn set_routed(&mut self, name: &Name, routed: Routed) {
        let owner = Owner::new(name);
        self.touch(&owner);
        let node = self.nodes.entry(owner.clone()).or_default();
        let extra = node.extra_mut();
        let (ty, id) = (routed.type_name(), routed.id.clone());
        match extra
            .routed
            .iter_mut()
            .find(|r| r.type_name() == ty && r.id == id)
        {
            // The counters go on with the new version of the set.
            Some(r) => {
                *r = Routed {
                    stats: r.stats.clone(),
                    ..routed
                }
            }
            None => extra.routed.push(routed),
        }
        self.routed.insert(owner);
    }

    /// Removes the routed set of `type_name` (`ALIAS` for an alias) and `id`; true if there was one.
    pub fn remove_routed(&mut self, name: &Name, type_name: &str, id: &str) -> bool {
        let owner = Owner::new(name);
        self.touch(&owner);
        let Some(node) = self.nodes.get_mut(&owner) else {
            return false;
        };
        let Some(extra) = node.extra.as_mut() else {
            return false;
        };
        let before = extra.routed.len();
        extra
            .routed
            .retain(|r| !(r.type_name().eq_ignore_ascii_case(type_name) && r.id == id));
        let removed = extra.routed.len() != before;
        if extra.routed.is_empty() {
            self.routed.remove(&owner);
        }
        node.tidy();
        if node.is_empty() {
            self.nodes.remove(&owner);
        }
        removed
    }

    /// The routed sets of the zone, by owner name.
    pub fn routed_sets(&self) -> impl Iterator<Item = (Name, &Routed)> + '_ {
        self.routed.iter().flat_map(move |o| {
            let name = o.name();
            self.nodes
                .get(o)
                .map(|n| n.routed())
                .unwrap_or_default()
                .iter()
                .map(move |r| (name.clone(), r))
        })
    }

    /// Sets the SOA serial.
    pub fn set_serial(&mut self, serial: u32) {
        let apex = self.apex.clone();
        self.touch(&apex);
        if let Some(node) = self.nodes.get_mut(&self.apex) {
            for set in node.sets.iter_mut().filter(|s| s.rtype == RecordType::SOA) {
                let mut rdatas = set.rdatas();
                for r in rdatas.iter_mut() {
                    if let RData::SOA(soa) = r {
                        soa.serial = serial;
                    }
                }
                // The same SOA with another serial has a wire form if the old one had.
                if let Ok(new) = RecordSet::new(set.rtype, set.ttl, &rdatas) {
                    *set = new;
                }
            }
        }
    }

    /// Every rule a zone version must satisfy.
    pub fn validate(&self) -> Result<(), ZoneError> {
        self.validate_apex()?;
        for (owner, node) in &self.nodes {
            self.validate_node(owner, node)?;
        }
        Ok(())
    }

    /// The rules of [`Zone::validate`], checked only at the names a tracked copy changed (every
    /// rule is about one name, or the apex); all of them on an untracked zone.
    pub fn validate_change(&self) -> Result<(), ZoneError> {
        let Some(t) = self.touched.names() else {
            return self.validate();
        };
        self.validate_apex()?;
        for owner in t {
            if let Some(node) = self.nodes.get(owner) {
                self.validate_node(owner, node)?;
            }
        }
        Ok(())
    }

    fn validate_apex(&self) -> Result<(), ZoneError> {
        if let Some(e) = &self.unstorable {
            return Err((**e).clone());
        }
        match self
            .nodes
            .get(&self.apex)
            .and_then(|n| n.get(RecordType::SOA))
        {
            Some(s) if s.len() == 1 => {}
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
        Ok(())
    }

    fn validate_node(&self, owner: &Owner, node: &Node) -> Result<(), ZoneError> {
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
            if set.rtype == RecordType::CNAME && set.len() > 1 {
                return Err(ZoneError::new(
                    &name(),
                    "CNAME",
                    "a name has at most one CNAME record",
                ));
            }
        }
        validate_routed(node, &name)?;
        let has_cname = node.get(RecordType::CNAME).is_some();
        if has_cname && (node.sets.len() > 1 || node.extra.is_some()) {
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
        if let Some(alias) = node.alias() {
            if node.get(RecordType::A).is_some() || node.get(RecordType::AAAA).is_some() {
                return Err(ZoneError::new(
                    &name(),
                    "ALIAS",
                    "an ALIAS answers A and AAAA itself: remove the A/AAAA records at this name",
                ));
            }
            self.validate_alias_target(alias, &name())?;
            if alias.evaluate_target_health && alias.ttl > MAX_HEALTH_TTL {
                return Err(ZoneError::new(&name(), "ALIAS", format!("TTL {} is above {MAX_HEALTH_TTL} for an alias that evaluates target health: resolvers would keep an unhealthy answer that long (use 60)", alias.ttl)));
            }
        }
        for r in node.routed() {
            if let RoutedData::Alias(a) = &r.data {
                self.validate_alias_target(a, &name())?;
            }
        }
        Ok(())
    }

    fn validate_alias_target(&self, alias: &Alias, name: &Name) -> Result<(), ZoneError> {
        match &alias.target {
            AliasTarget::Name(t) if !self.origin.zone_of(t) => Err(ZoneError::new(
                name,
                "ALIAS",
                format!("ALIAS target {t} is outside the zone"),
            )),
            _ => Ok(()),
        }
    }

    /// Record count, for logs and metrics.
    pub fn record_count(&self) -> usize {
        self.nodes
            .values()
            .map(|n| {
                n.sets.iter().map(|s| s.len()).sum::<usize>()
                    + usize::from(n.alias().is_some())
                    + n.routed().len()
            })
            .sum()
    }
}

/// The rules of routed sets at one name: the sets that answer one query type share one policy,
/// a failover group has at most one primary and one secondary, no plain set (or plain ALIAS)
/// answers the same type, no routed NS or SOA, a routed CNAME stands alone, and a set whose
/// answer health decides keeps a low TTL.
fn validate_routed(node: &Node, name: &dyn Fn() -> Name) -> Result<(), ZoneError> {
    let routed = node.routed();
    if routed.is_empty() {
        return Ok(());
    }
    let mut qtypes: Vec<RecordType> = routed.iter().map(Routed::rtype).collect();
    if routed.iter().any(Routed::is_alias) {
        qtypes.push(RecordType::AAAA);
    }
    qtypes.sort_by_key(|t| u16::from(*t));
    qtypes.dedup();
    for r in routed {
        let err = |reason: String| Err(ZoneError::new(&name(), r.type_name(), reason));
        if matches!(r.rtype(), RecordType::NS | RecordType::SOA) {
            return err(format!(
                "{} record sets cannot have a routing policy",
                r.rtype()
            ));
        }
        if r.id.is_empty() || r.id.len() > 128 {
            return err("a set_identifier is 1 to 128 characters".into());
        }
        if r.health_decides() && r.ttl() > MAX_HEALTH_TTL {
            return err(format!("set {:?}: TTL {} is above {MAX_HEALTH_TTL} for a record set whose answer health decides: resolvers would keep an unhealthy answer that long (use 60)", r.id, r.ttl()));
        }
        if r.rtype() == RecordType::CNAME
            && (!node.sets.is_empty() || routed.iter().any(|o| o.rtype() != RecordType::CNAME))
        {
            return err(
                "a CNAME cannot coexist with other data at the same name (RFC 1034 §3.6.2)".into(),
            );
        }
        if r.policy == crate::routing::Policy::Multivalue && r.rtype() == RecordType::CNAME {
            return err(
                "multivalue answers cannot be CNAMEs (as in Route 53): use weighted".into(),
            );
        }
    }
    for q in qtypes {
        let group: Vec<&Routed> = routed.iter().filter(|r| r.answers(q)).collect();
        let Some(first) = group.first() else { continue };
        let err = |reason: String| Err(ZoneError::new(&name(), q, reason));
        if node.get(q).is_some()
            || (node.alias().is_some() && matches!(q, RecordType::A | RecordType::AAAA))
        {
            return err("a record set with a routing policy cannot share its name and type with one without: give that one a set_identifier and a routing policy too".into());
        }
        if let Some(o) = group
            .iter()
            .find(|r| r.policy.kind() != first.policy.kind())
        {
            return err(format!("set {:?} is {} but set {:?} is {}: the record sets of one name and type share one routing policy", o.id, o.policy.kind(), first.id, first.policy.kind()));
        }
        for role in [
            crate::routing::Role::Primary,
            crate::routing::Role::Secondary,
        ] {
            let n = group
                .iter()
                .filter(|r| r.policy == crate::routing::Policy::Failover(role))
                .count();
            if n > 1 {
                return err(format!("{n} failover record sets are {role}: a failover group has one primary and one secondary"));
            }
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zone_file::rdata_from_value;

    /// Every kind of record Portico accepts reads back from its stored wire form as it was
    /// given, including the CAA forms hickory parses into structures (parameters, iodef,
    /// unknown tags, the critical flag) and names in upper case.
    #[test]
    fn stored_records_decode_to_what_was_stored() {
        let origin = Name::from_ascii("example.com.").unwrap();
        let cases = [
            (RecordType::A, "192.0.2.1"),
            (RecordType::AAAA, "2001:db8::1"),
            (RecordType::CNAME, "Target.Example.NET."),
            (RecordType::NS, "ns1"),
            (RecordType::PTR, "host.example.com."),
            (RecordType::MX, "10 Mail"),
            (RecordType::SRV, "10 5 5060 sip"),
            (
                RecordType::SOA,
                "ns1 hostmaster 2024010101 7200 900 1209600 300",
            ),
            (RecordType::TXT, "hello world"),
            (RecordType::TXT, r#""a" "b" "" "\210\000x""#),
            (RecordType::CAA, r#"0 issue "letsencrypt.org""#),
            (RecordType::CAA, r#"0 issue ";""#),
            (
                RecordType::CAA,
                r#"128 issue "letsencrypt.org; accounturi=https://acme-v02.api.letsencrypt.org/acme/acct/1; validationmethods=dns-01""#,
            ),
            (RecordType::CAA, r#"0 issuewild "example.net""#),
            (RecordType::CAA, r#"0 iodef "mailto:security@example.com""#),
            (RecordType::CAA, r#"0 tbs "Unknown""#),
        ];
        for (rtype, value) in cases {
            let rdata = rdata_from_value(rtype, value, &origin).unwrap();
            let set = RecordSet::new(rtype, 300, std::slice::from_ref(&rdata)).unwrap();
            assert_eq!(set.rdatas(), vec![rdata.clone()], "{rtype} {value}");
            assert_eq!(set.len(), 1);
            assert!(set.contains(&rdata));
        }
    }

    #[test]
    fn a_set_holds_each_record_once_names_compared_without_case() {
        let rtype = RecordType::CNAME;
        let origin = Name::from_ascii("example.com.").unwrap();
        let lower = rdata_from_value(rtype, "target.example.net.", &origin).unwrap();
        let upper = rdata_from_value(rtype, "TARGET.example.net.", &origin).unwrap();
        let mut set = RecordSet::new(rtype, 60, std::slice::from_ref(&lower)).unwrap();
        set.push(&upper).unwrap();
        assert_eq!(set.len(), 1);
        let mut a = RecordSet::new(RecordType::A, 60, &[]).unwrap();
        for v in ["192.0.2.1", "192.0.2.2", "192.0.2.1"] {
            a.push(&rdata_from_value(RecordType::A, v, &origin).unwrap())
                .unwrap();
        }
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn a_record_without_a_wire_form_is_reported_not_dropped() {
        use hickory_proto::rr::rdata::TXT;
        let origin = Name::from_ascii("example.com.").unwrap();
        let mut z = Zone::new(&origin);
        default_apex(&mut z, &[]);
        z.validate().unwrap();
        let long = RData::TXT(TXT::new(vec!["x".repeat(300)]));
        z.add(&origin, RecordType::TXT, 60, long);
        let e = z.validate().unwrap_err();
        assert!(e.reason.contains("wire format"), "{e}");
    }
}
