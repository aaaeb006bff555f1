//! The recent history of a zone's changes, for IXFR (RFC 1995): each entry is the records a
//! change removed and added between two serials. Kept in memory for the last changes; a client
//! whose serial is older (or from before a restart) gets a full transfer instead, as RFC 1995
//! allows. Durability comes from the zone file, written atomically before a change is
//! acknowledged.

use std::collections::VecDeque;

use hickory_proto::rr::{Record, RecordType};

use crate::zone::Zone;
use crate::zones::transfer_records;

const KEEP: usize = 200;

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
        let strip = |z: &Zone| -> Vec<Record> {
            transfer_records(z)
                .into_iter()
                .filter(|r| r.record_type() != RecordType::SOA)
                .collect()
        };
        let (a, b) = (strip(old), strip(new));
        JournalEntry {
            from: old.serial(),
            to: new.serial(),
            removed: a.iter().filter(|r| !b.contains(r)).cloned().collect(),
            added: b.iter().filter(|r| !a.contains(r)).cloned().collect(),
        }
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
