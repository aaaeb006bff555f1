//! A zone's changes: each [`Delta`] is what one change did to the names it touched (everything
//! at each name before and after), between two serials; the journal file (`journal_file.rs`)
//! stores deltas and a restart replays them. For IXFR (RFC 1995) each delta also gives the
//! records it removed and added ([`JournalEntry`]); the last of these are kept in memory, filled
//! again from the journal file at start, so that a secondary whose serial is older than a
//! restart still gets an incremental transfer. A client older than the history gets a full
//! transfer, as RFC 1995 allows.

use std::collections::VecDeque;

use std::cmp::Ordering;

use hickory_proto::rr::{Name, Record, RecordType};

use crate::zone::{Node, Owner, Zone};

/// How many changes IXFR can go back (in memory, and in the journal file after a checkpoint).
pub const KEEP: usize = 200;

/// One change to a zone: for each name it touched, everything there before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub from: u32,
    pub to: u32,
    pub nodes: Vec<(Owner, Option<Node>, Option<Node>)>,
}

impl Delta {
    /// The change from `old` to `new`: only the names a tracked copy touched, else every name
    /// whose data differs (a walk of both versions in order).
    pub fn between(old: &Zone, new: &Zone) -> Delta {
        let mut d = Delta {
            from: old.serial(),
            to: new.serial(),
            nodes: Vec::new(),
        };
        if let Some(t) = new.touched.names() {
            for o in t {
                let (x, y) = (old.nodes.get(o), new.nodes.get(o));
                if x != y {
                    d.nodes.push((o.clone(), x.cloned(), y.cloned()));
                }
            }
            return d;
        }
        let (mut a, mut b) = (old.nodes.iter().peekable(), new.nodes.iter().peekable());
        loop {
            let step = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some((x, _)), Some((y, _))) => x.cmp(y),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
            };
            match step {
                Ordering::Equal => {
                    if let (Some((name, x)), Some((_, y))) = (a.next(), b.next()) {
                        if x != y {
                            d.nodes
                                .push((name.clone(), Some(x.clone()), Some(y.clone())));
                        }
                    }
                }
                Ordering::Less => {
                    if let Some((name, x)) = a.next() {
                        d.nodes.push((name.clone(), Some(x.clone()), None));
                    }
                }
                Ordering::Greater => {
                    if let Some((name, y)) = b.next() {
                        d.nodes.push((name.clone(), None, Some(y.clone())));
                    }
                }
            }
        }
        d
    }

    /// Applies the change to `zone` (which must be at `from`); it is then at `to`.
    pub fn apply(&self, zone: &mut Zone) {
        for (owner, _, new) in &self.nodes {
            zone.replace_node(owner.clone(), new.clone());
        }
        zone.set_serial(self.to);
    }

    /// The records this change removed and added, for IXFR.
    pub fn entry(&self) -> JournalEntry {
        let mut e = JournalEntry {
            from: self.from,
            to: self.to,
            removed: Vec::new(),
            added: Vec::new(),
        };
        for (owner, old, new) in &self.nodes {
            e.node(&owner.name(), old.as_ref(), new.as_ref());
        }
        e
    }
}

#[derive(Debug, Clone)]
pub struct JournalEntry {
    pub from: u32,
    pub to: u32,
    pub removed: Vec<Record>,
    pub added: Vec<Record>,
}

impl JournalEntry {
    /// The difference between two versions of a zone (SOA records excluded).
    pub fn diff(old: &Zone, new: &Zone) -> Self {
        Delta::between(old, new).entry()
    }

    fn node(&mut self, name: &Name, old: Option<&Node>, new: Option<&Node>) {
        let records = |n: Option<&Node>| -> Vec<Record> {
            n.map(|n| {
                n.sets
                    .iter()
                    .filter(|s| s.rtype != RecordType::SOA)
                    .flat_map(|s| s.iter().map(|r| Record::from_rdata(name.clone(), s.ttl, r)))
                    .collect()
            })
            .unwrap_or_default()
        };
        let (x, y) = (records(old), records(new));
        self.removed
            .extend(x.iter().filter(|r| !y.contains(r)).cloned());
        self.added
            .extend(y.iter().filter(|r| !x.contains(r)).cloned());
    }
}

#[derive(Debug, Default)]
pub struct Journal {
    entries: VecDeque<JournalEntry>,
}

impl Journal {
    pub fn append(&mut self, e: JournalEntry) {
        if self.entries.len() >= KEEP {
            self.entries.pop_front();
        }
        self.entries.push_back(e);
    }

    /// The entries that lead from `serial` to the newest, if the history reaches back that far.
    pub fn since(&self, serial: u32) -> Option<Vec<JournalEntry>> {
        let start = self.entries.iter().position(|e| e.from == serial)?;
        let out: Vec<JournalEntry> = self.entries.iter().skip(start).cloned().collect();
        out.windows(2).all(|w| w[0].to == w[1].from).then_some(out)
    }
}
