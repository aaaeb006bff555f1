//! A record set as Portico stores it: the wire-format RDATA of its records in one boxed byte
//! string, decoded one record at a time where it is used; and `Bulk`, the records of a master
//! file gathered to be built into a zone in one go (`Zone::add_bulk`).

use hickory_proto::rr::{Name, RData, RecordType};

use crate::owner::Owner;

/// Records of one type at one name, kept as their wire-format RDATA: per record two length
/// bytes and the data, names in it uncompressed and in the case they were given. A hickory
/// `RData` is 184 bytes whatever it holds; an A record stored this way is 6 (what kept a
/// 1,000,000-record zone at 1.7x Knot's memory, docs/benchmarks.md issue 14). Records are decoded
/// one at a time where they are used (answers decode them into the records they send).
#[derive(Clone, PartialEq, Eq)]
pub struct RecordSet {
    pub rtype: RecordType,
    pub ttl: u32,
    pub(crate) data: Box<[u8]>,
}

impl std::fmt::Debug for RecordSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordSet")
            .field("rtype", &self.rtype)
            .field("ttl", &self.ttl)
            .field("rdatas", &self.rdatas())
            .finish()
    }
}

/// Why a record cannot be stored: its data has no DNS wire form (a TXT string over 255 bytes,
/// RDATA over 65,535 bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rtype} {rdata}: the record data cannot be written in DNS wire format: {reason}")]
pub struct EncodeError {
    pub rtype: RecordType,
    pub rdata: String,
    pub reason: String,
}

/// Appends `rdata`'s length (two bytes) and wire form to `out`.
fn encode_one(rtype: RecordType, rdata: &RData, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    with_wire(rtype, rdata, |wire| {
        out.extend_from_slice(&(wire.len() as u16).to_be_bytes());
        out.extend_from_slice(wire);
    })
}

/// Calls `f` with `rdata`'s wire form (names uncompressed, case kept), at most 65,535 bytes.
fn with_wire<T>(
    rtype: RecordType,
    rdata: &RData,
    f: impl FnOnce(&[u8]) -> T,
) -> Result<T, EncodeError> {
    use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};
    thread_local! {
        // One scratch buffer per thread: the encoder reserves 512 bytes in a fresh one.
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let fail = |reason: String| EncodeError {
        rtype,
        rdata: rdata.to_string(),
        reason,
    };
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.clear();
        {
            let mut enc = BinEncoder::new(&mut buf);
            enc.set_name_encoding(NameEncoding::Uncompressed);
            rdata.emit(&mut enc).map_err(|e| fail(e.to_string()))?;
        }
        if buf.len() > usize::from(u16::MAX) {
            return Err(fail("over 65,535 bytes".into()));
        }
        Ok(f(&buf))
    })
}

/// Whether `cand` (one record's wire form) is the same record as one of `have`: equal bytes,
/// or bytes equal but for letter case that decode to equal records (names in RDATA compare
/// without case, RFC 4343).
pub(crate) fn holds(
    rtype: RecordType,
    have: impl Iterator<Item = impl AsRef<[u8]>>,
    cand: &[u8],
) -> bool {
    let decoder = Rdatas { rtype, rest: &[] };
    let mut decoded = None;
    have.into_iter().any(|h| {
        let h = h.as_ref();
        h == cand
            || (h.eq_ignore_ascii_case(cand) && {
                let c = decoded.get_or_insert_with(|| decoder.decode(cand));
                c.is_some() && decoder.decode(h) == *c
            })
    })
}

/// The records of a stored set, decoded one by one.
pub struct Rdatas<'a> {
    pub(crate) rtype: RecordType,
    pub(crate) rest: &'a [u8],
}

impl Rdatas<'_> {
    pub(crate) fn decode(&self, one: &[u8]) -> Option<RData> {
        use hickory_proto::serialize::binary::{BinDecoder, Restrict};
        let mut d = BinDecoder::new(one);
        RData::read(&mut d, self.rtype, Restrict::new(one.len() as u16)).ok()
    }
}

impl Iterator for Rdatas<'_> {
    type Item = RData;
    fn next(&mut self) -> Option<RData> {
        loop {
            let (len, rest) = match self.rest {
                [a, b, rest @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), rest),
                _ => return None,
            };
            let (one, rest) = rest.split_at(len.min(rest.len()));
            self.rest = rest;
            // Only bytes `encode_one` wrote are here, so this does not fail; a record that
            // did would be skipped rather than answered half-read.
            if let Some(r) = self.decode(one) {
                return Some(r);
            }
        }
    }
}

impl RecordSet {
    pub fn new(rtype: RecordType, ttl: u32, rdatas: &[RData]) -> Result<Self, EncodeError> {
        let mut data = Vec::new();
        for r in rdatas {
            encode_one(rtype, r, &mut data)?;
        }
        Ok(RecordSet {
            rtype,
            ttl,
            data: data.into_boxed_slice(),
        })
    }

    /// The records, decoded one at a time.
    pub fn iter(&self) -> Rdatas<'_> {
        Rdatas {
            rtype: self.rtype,
            rest: &self.data,
        }
    }

    /// The records, decoded.
    pub fn rdatas(&self) -> Vec<RData> {
        self.iter().collect()
    }

    pub fn first(&self) -> Option<RData> {
        self.iter().next()
    }

    /// The SOA minimum (the last four bytes of an SOA's data), read without decoding it.
    pub fn soa_minimum(&self) -> Option<u32> {
        if self.rtype != RecordType::SOA {
            return None;
        }
        let one = self.raw().next()?;
        let tail: [u8; 4] = one.get(one.len().checked_sub(4)?..)?.try_into().ok()?;
        Some(u32::from_be_bytes(tail))
    }

    /// The stored wire form of each record.
    pub(crate) fn raw(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest = &self.data[..];
        std::iter::from_fn(move || {
            let [a, b, tail @ ..] = rest else { return None };
            let len = usize::from(u16::from_be_bytes([*a, *b])).min(tail.len());
            let (one, tail) = tail.split_at(len);
            rest = tail;
            Some(one)
        })
    }

    pub fn len(&self) -> usize {
        self.raw().count()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Whether the set holds `rdata` (names compared without regard to case, as `RData` does).
    pub fn contains(&self, rdata: &RData) -> bool {
        with_wire(self.rtype, rdata, |want| {
            holds(self.rtype, self.raw(), want)
        })
        .unwrap_or(false)
    }

    /// Adds `rdata` unless the set holds it already.
    pub fn push(&mut self, rdata: &RData) -> Result<(), EncodeError> {
        let data = with_wire(self.rtype, rdata, |want| {
            (!holds(self.rtype, self.raw(), want)).then(|| {
                let mut data = Vec::with_capacity(self.data.len() + 2 + want.len());
                data.extend_from_slice(&self.data);
                data.extend_from_slice(&(want.len() as u16).to_be_bytes());
                data.extend_from_slice(want);
                data.into_boxed_slice()
            })
        })?;
        if let Some(data) = data {
            self.data = data;
        }
        Ok(())
    }
}

/// Records gathered for a zone built in one go (a master file): encoded as they come, sorted
/// once by owner and type, then turned into nodes and the name tree at once, instead of one
/// tree insertion and one set re-encoding per record.
#[derive(Default)]
pub struct Bulk {
    pub(crate) wire: Vec<u8>,
    pub(crate) records: Vec<BulkRecord>,
}

pub(crate) struct BulkRecord {
    pub(crate) owner: Owner,
    pub(crate) rtype: RecordType,
    pub(crate) ttl: u32,
    /// Where its wire form starts in `Bulk::wire`, and its length.
    pub(crate) at: u32,
    pub(crate) len: u16,
    /// Sort key: eight bytes of the owner key (see `Zone::add_bulk`).
    pub(crate) head: u64,
}

impl Bulk {
    /// Adds one record, as `Zone::add` would (the set's TTL becomes the last record's).
    pub fn push(
        &mut self,
        owner: &Name,
        rtype: RecordType,
        ttl: u32,
        rdata: &RData,
    ) -> Result<(), EncodeError> {
        let at = self.wire.len();
        let len = with_wire(rtype, rdata, |w| {
            self.wire.extend_from_slice(w);
            w.len() as u16
        })?;
        let at = u32::try_from(at).map_err(|_| EncodeError {
            rtype,
            rdata: rdata.to_string(),
            reason: "the zone's records are over 4 GiB".into(),
        })?;
        self.records.push(BulkRecord {
            owner: Owner::new(owner),
            rtype,
            ttl,
            at,
            len,
            head: 0,
        });
        Ok(())
    }
}
