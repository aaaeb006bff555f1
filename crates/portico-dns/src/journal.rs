//! The recent history of a zone's changes, for IXFR (RFC 1995): each entry is the records a
//! change removed and added between two serials. Kept in memory for the last changes; a client
//! whose serial is older (or from before a restart) gets a full transfer instead, as RFC 1995
//! allows. Durability comes from the zone file, written atomically before a change is
//! acknowledged.

use std::collections::VecDeque;

use std::cmp::Ordering;

use hickory_proto::rr::{Name, Record, RecordType};

use crate::zone::{Node, Zone};

const KEEP: usize = 200;

#[derive(Debug, Clone)]
pub struct JournalEntry {
    pub from: u32,
    pub to: u32,
    pub removed: Vec<Record>,
    pub added: Vec<Record>,
}

impl JournalEntry {
    /// The difference between two versions of a zone (SOA records excluded). Walks both in
    /// order and looks only inside names whose data differs, so a change to a large zone costs
    /// a comparison per name, not a copy of every record.
    pub fn diff(old: &Zone, new: &Zone) -> Self {
        let mut e = JournalEntry {
            from: old.serial(),
            to: new.serial(),
            removed: Vec::new(),
            added: Vec::new(),
        };
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
                            e.node(&name.name(), Some(x), Some(y));
                        }
                    }
                }
                Ordering::Less => {
                    if let Some((name, x)) = a.next() {
                        e.node(&name.name(), Some(x), None);
                    }
                }
                Ordering::Greater => {
                    if let Some((name, y)) = b.next() {
                        e.node(&name.name(), None, Some(y));
                    }
                }
            }
        }
        e
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
        if self.entries.len() == KEEP {
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
