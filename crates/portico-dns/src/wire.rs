//! A query's answer written as DNS wire bytes straight from the stored record sets.
//!
//! This deliberately bypasses hickory-proto's encoder on the query path: going through it meant
//! decoding every stored record into an `RData` and a `Record`, building a `Message`, and an
//! allocation per compressible name while encoding (the largest user-space cost left in the
//! profile, docs/benchmarks.md issue 14). Here the header, the question and each record are
//! written into one buffer; record data is copied as stored, the names in it (CNAME, NS, PTR,
//! MX, SOA, as hickory compresses them) and owner names compressed against a fixed-size table of
//! what was written, matching labels byte for byte as hickory does, so the case a name was
//! written in is the case it is read back in. Every other reply (errors, updates, transfers)
//! still goes through hickory; `fuzz/fuzz_targets/answer_diff.rs` compares the two writers.

use std::net::IpAddr;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use crate::reply::OUR_UDP_PAYLOAD;
use crate::rrset::RecordSet;

/// Records of one answer section entry: a stored set at an owner, or an address (ALIAS).
#[derive(Debug, Clone)]
pub enum Rrs<'z> {
    Set {
        owner: Name,
        ttl: u32,
        set: &'z RecordSet,
    },
    Addr {
        owner: Name,
        ttl: u32,
        ip: IpAddr,
    },
}

impl Rrs<'_> {
    pub fn rtype(&self) -> RecordType {
        match self {
            Rrs::Set { set, .. } => set.rtype,
            Rrs::Addr {
                ip: IpAddr::V4(_), ..
            } => RecordType::A,
            Rrs::Addr { .. } => RecordType::AAAA,
        }
    }

    pub fn owner(&self) -> &Name {
        match self {
            Rrs::Set { owner, .. } | Rrs::Addr { owner, .. } => owner,
        }
    }

    pub fn ttl(&self) -> u32 {
        match self {
            Rrs::Set { ttl, .. } | Rrs::Addr { ttl, .. } => *ttl,
        }
    }

    /// How many records this entry writes.
    pub fn len(&self) -> usize {
        match self {
            Rrs::Set { set, .. } => set.len(),
            Rrs::Addr { .. } => 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The records as hickory values (tests, the fuzz comparison, and callers that need them).
    pub fn records(&self) -> Vec<hickory_proto::rr::Record> {
        use hickory_proto::rr::rdata::{A, AAAA};
        use hickory_proto::rr::{RData, Record};
        match self {
            Rrs::Set { owner, ttl, set } => set
                .iter()
                .map(|r| Record::from_rdata(owner.clone(), *ttl, r))
                .collect(),
            Rrs::Addr { owner, ttl, ip } => vec![Record::from_rdata(
                owner.clone(),
                *ttl,
                match ip {
                    IpAddr::V4(v4) => RData::A(A(*v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                },
            )],
        }
    }
}

/// Names written so far (offsets of every label sequence) that later names may point at.
/// Fixed-size: an answer that writes more names than this is still correct, only less compressed.
const TABLE: usize = 64;
/// A name has at most 127 labels (255 bytes).
const MAX_LABELS: usize = 128;

struct Writer {
    buf: Vec<u8>,
    table: [u16; TABLE],
    entries: usize,
}

/// The labels of a name, without the root.
struct Labels<'a> {
    list: [&'a [u8]; MAX_LABELS],
    n: usize,
}

impl<'a> Labels<'a> {
    fn of_name(name: &'a Name) -> Self {
        let mut l = Labels {
            list: [&[]; MAX_LABELS],
            n: 0,
        };
        for label in name.iter().take(MAX_LABELS) {
            l.list[l.n] = label;
            l.n += 1;
        }
        l
    }

    /// The name at the start of `wire` (uncompressed, as record data is stored) and the bytes
    /// after it; `None` when the bytes are not a name.
    fn of_wire(wire: &'a [u8]) -> Option<(Self, &'a [u8])> {
        let mut l = Labels {
            list: [&[]; MAX_LABELS],
            n: 0,
        };
        let mut at = 0;
        loop {
            let len = usize::from(*wire.get(at)?);
            if len == 0 {
                return Some((l, &wire[at + 1..]));
            }
            if len > 63 || l.n == MAX_LABELS {
                return None;
            }
            l.list[l.n] = wire.get(at + 1..at + 1 + len)?;
            l.n += 1;
            at += 1 + len;
        }
    }

    fn get(&self) -> &[&'a [u8]] {
        &self.list[..self.n]
    }
}

impl Writer {
    /// Whether the name at `at` in the buffer is exactly `labels` (pointers followed).
    fn same(&self, mut at: usize, labels: &[&[u8]]) -> bool {
        let mut hops = 0;
        let mut next = labels.iter();
        loop {
            let Some(&b) = self.buf.get(at) else {
                return false;
            };
            if b & 0xC0 == 0xC0 {
                // Our own pointers point backwards; the bound only guards against a bug.
                hops += 1;
                if hops > MAX_LABELS {
                    return false;
                }
                let Some(&lo) = self.buf.get(at + 1) else {
                    return false;
                };
                at = usize::from(u16::from_be_bytes([b & 0x3F, lo]));
                continue;
            }
            let len = usize::from(b);
            match next.next() {
                None => return len == 0,
                Some(want) => {
                    if len == 0 || self.buf.get(at + 1..at + 1 + len) != Some(*want) {
                        return false;
                    }
                    at += 1 + len;
                }
            }
        }
    }

    /// Writes a name, pointing at the longest suffix written before.
    fn name(&mut self, labels: &[&[u8]]) {
        for i in 0..labels.len() {
            let suffix = &labels[i..];
            let found = self.table[..self.entries]
                .iter()
                .copied()
                .find(|&at| self.same(usize::from(at), suffix));
            if let Some(at) = found {
                self.buf.extend_from_slice(&(0xC000 | at).to_be_bytes());
                return;
            }
            let here = self.buf.len();
            if here < 0x4000 && self.entries < TABLE {
                self.table[self.entries] = here as u16;
                self.entries += 1;
            }
            self.buf.push(suffix[0].len() as u8);
            self.buf.extend_from_slice(suffix[0]);
        }
        self.buf.push(0);
    }

    /// One record: owner, type, class IN, TTL, then the data (its length filled in after).
    fn record(&mut self, owner: &Labels<'_>, rtype: RecordType, ttl: u32, rdata: &[u8]) {
        self.name(owner.get());
        self.buf.extend_from_slice(&u16::from(rtype).to_be_bytes());
        self.buf.extend_from_slice(&1u16.to_be_bytes());
        self.buf.extend_from_slice(&ttl.to_be_bytes());
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        let start = self.buf.len();
        if !self.compressed_rdata(rtype, rdata) {
            self.buf.truncate(start);
            self.buf.extend_from_slice(rdata);
        }
        let len = (self.buf.len() - start) as u16;
        self.buf[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
    }

    /// Record data with its names compressed, for the types whose names may be (RFC 3597 §4).
    /// False when the type has none or the stored bytes do not parse (then they are copied).
    fn compressed_rdata(&mut self, rtype: RecordType, rdata: &[u8]) -> bool {
        match rtype {
            RecordType::CNAME | RecordType::NS | RecordType::PTR => match Labels::of_wire(rdata) {
                Some((l, [])) => self.name(l.get()),
                _ => return false,
            },
            RecordType::MX => {
                let Some((pref, rest)) = rdata.split_at_checked(2) else {
                    return false;
                };
                match Labels::of_wire(rest) {
                    Some((l, [])) => {
                        self.buf.extend_from_slice(pref);
                        self.name(l.get());
                    }
                    _ => return false,
                }
            }
            RecordType::SOA => {
                let Some((mname, rest)) = Labels::of_wire(rdata) else {
                    return false;
                };
                let Some((rname, rest)) = Labels::of_wire(rest) else {
                    return false;
                };
                if rest.len() != 20 {
                    return false;
                }
                self.name(mname.get());
                self.name(rname.get());
                self.buf.extend_from_slice(rest);
            }
            _ => return false,
        }
        true
    }

    fn entry(&mut self, e: &Rrs<'_>) -> u16 {
        let owner = Labels::of_name(e.owner());
        match e {
            Rrs::Set { ttl, set, .. } => {
                let mut n = 0;
                for one in set.raw() {
                    self.record(&owner, set.rtype, *ttl, one);
                    n += 1;
                }
                n
            }
            Rrs::Addr { ttl, ip, .. } => {
                match ip {
                    IpAddr::V4(v4) => self.record(&owner, RecordType::A, *ttl, &v4.octets()),
                    IpAddr::V6(v6) => self.record(&owner, RecordType::AAAA, *ttl, &v6.octets()),
                }
                1
            }
        }
    }
}

/// What an answer is made of, by section.
pub struct Sections<'a, 'z> {
    pub rcode: ResponseCode,
    pub authoritative: bool,
    pub answers: &'a [Rrs<'z>],
    pub authority: &'a [Rrs<'z>],
    pub additional: &'a [Rrs<'z>],
}

/// The response to `req` (a query with one question), truncated (TC, sections emptied) when it
/// does not fit the client's UDP size, as `reply::encode` does.
pub fn answer(req: &Message, s: &Sections<'_, '_>, tcp: bool) -> Vec<u8> {
    let limit = if tcp {
        65535
    } else {
        match &req.edns {
            Some(e) => usize::from(e.max_payload().clamp(512, 4096)),
            None => 512,
        }
    };
    let mut w = Writer {
        buf: Vec::with_capacity(512),
        table: [0; TABLE],
        entries: 0,
    };
    // Header: id, QR, the request's opcode and RD, AA, CD echoed, RA never; counts after.
    w.buf.extend_from_slice(&req.id.to_be_bytes());
    let opcode = u8::from(req.op_code) & 0x0F;
    w.buf.push(
        0x80 | opcode << 3
            | if s.authoritative { 0x04 } else { 0 }
            | u8::from(req.recursion_desired),
    );
    w.buf
        .push(if req.checking_disabled { 0x10 } else { 0 } | (u16::from(s.rcode) & 0x0F) as u8);
    w.buf.extend_from_slice(&[0; 8]);
    let mut qd = 0u16;
    for q in &req.queries {
        let l = Labels::of_name(q.name());
        w.name(l.get());
        w.buf
            .extend_from_slice(&u16::from(q.query_type()).to_be_bytes());
        w.buf
            .extend_from_slice(&u16::from(q.query_class()).to_be_bytes());
        qd += 1;
    }
    let question_end = w.buf.len();
    let mut counts = [0u16; 3];
    for (i, section) in [s.answers, s.authority, s.additional].iter().enumerate() {
        for e in section.iter() {
            counts[i] = counts[i].saturating_add(w.entry(e));
        }
    }
    let opt_len = if req.edns.is_some() { 11 } else { 0 };
    if w.buf.len() + opt_len > limit {
        w.buf.truncate(question_end);
        counts = [0; 3];
        w.buf[2] |= 0x02; // TC
    }
    let mut ar = counts[2];
    if req.edns.is_some() {
        // OPT: root owner, our payload size, extended rcode 0, version 0, no flags, no options.
        w.buf.push(0);
        w.buf
            .extend_from_slice(&u16::from(RecordType::OPT).to_be_bytes());
        w.buf.extend_from_slice(&OUR_UDP_PAYLOAD.to_be_bytes());
        w.buf.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        ar += 1;
    }
    for (i, c) in [qd, counts[0], counts[1], ar].iter().enumerate() {
        w.buf[4 + 2 * i..6 + 2 * i].copy_from_slice(&c.to_be_bytes());
    }
    w.buf
}

/// The same answer through hickory's encoder, as every answer was written before this module
/// (`reply::response` + `reply::encode`): the reference the tests and the fuzz target compare with.
pub fn answer_via_hickory(req: &Message, s: &Sections<'_, '_>, tcp: bool) -> Vec<u8> {
    let mut res = crate::reply::response(req);
    res.metadata.authoritative = s.authoritative;
    res.metadata.response_code = s.rcode;
    res.answers = crate::answer::Answer::records(s.answers);
    res.authorities = crate::answer::Answer::records(s.authority);
    res.additionals = crate::answer::Answer::records(s.additional);
    crate::reply::encode(res, req, tcp)
}

/// Whether two responses say the same: header bits, rcode, question and every record (owner
/// names with their letter case, TTLs, data) in the same order, and the same OPT.
pub fn same_meaning(a: &[u8], b: &[u8]) -> Result<(), String> {
    let (x, y) = match (Message::from_vec(a), Message::from_vec(b)) {
        (Ok(x), Ok(y)) => (x, y),
        (x, y) => return Err(format!("does not parse: {:?} / {:?}", x.err(), y.err())),
    };
    let show = |m: &Message| {
        let rrs = |v: &[hickory_proto::rr::Record]| {
            v.iter()
                .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data))
                .collect::<Vec<_>>()
        };
        format!(
            "id={} {:?} {:?} aa={} tc={} rd={} ra={} cd={} ad={} {:?}\nq={:?}\nan={:?}\nns={:?}\nar={:?}\nedns={:?}",
            m.id,
            m.message_type,
            m.op_code,
            m.authoritative,
            m.truncation,
            m.recursion_desired,
            m.recursion_available,
            m.checking_disabled,
            m.authentic_data,
            m.response_code,
            m.queries
                .iter()
                .map(|q| format!("{} {} {}", q.name(), q.query_type(), q.query_class()))
                .collect::<Vec<_>>(),
            rrs(&m.answers),
            rrs(&m.authorities),
            rrs(&m.additionals),
            m.edns.as_ref().map(|e| (e.max_payload(), e.version(), e.rcode_high(), e.flags().dnssec_ok)),
        )
    };
    let (sx, sy) = (show(&x), show(&y));
    if sx == sy {
        Ok(())
    } else {
        Err(format!("ours:\n{sx}\nhickory's:\n{sy}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::{lookup, Catalog};
    use crate::zone::Zone;
    use crate::zone_file::parse_into;
    use hickory_proto::op::{Edns, MessageType, OpCode, Query};
    use std::sync::Arc;

    fn catalog() -> Catalog {
        let mut z = Zone::new(&Name::from_ascii("example.com.").unwrap());
        let mut text = String::from(
            r#"
@ 3600 SOA ns1 hostmaster 1 7200 900 1209600 300
@ NS ns1
@ NS ns2.example.net.
@ MX 10 mail
@ MX 20 mail.example.net.
@ TXT "v=spf1 -all" "second string"
@ CAA 0 issue "letsencrypt.org"
ns1 A 192.0.2.1
ns1 AAAA 2001:db8::1
mail A 192.0.2.25
www CNAME app
app A 192.0.2.10
app A 192.0.2.11
chain1 CNAME chain2
chain2 CNAME www
*.wild A 192.0.2.99
sub NS ns.sub
ns.sub A 192.0.2.53
_sip._tcp SRV 10 5 5060 mail
ptr PTR www.example.com.
"#,
        );
        for i in 0..60 {
            text.push_str(&format!("big A 10.0.0.{i}\n"));
        }
        parse_into(&mut z, &text, 300).unwrap();
        let mut c = Catalog::default();
        c.zones.insert(z.origin.clone(), Arc::new(z));
        c
    }

    fn request(name: &str, t: RecordType, edns: Option<u16>) -> Message {
        let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.metadata.checking_disabled = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.edns = Some(e);
        }
        // As a server sees it: parsed from the bytes a client sent.
        Message::from_vec(&m.to_vec().unwrap()).unwrap()
    }

    #[test]
    fn every_kind_of_answer_means_what_hickorys_encoding_meant() {
        let c = catalog();
        let cases = [
            ("app.example.com.", RecordType::A),
            ("ApP.ExAmple.COM.", RecordType::A),
            ("www.example.com.", RecordType::A),
            ("chain1.example.com.", RecordType::A),
            ("example.com.", RecordType::MX),
            ("example.com.", RecordType::NS),
            ("example.com.", RecordType::SOA),
            ("example.com.", RecordType::TXT),
            ("example.com.", RecordType::CAA),
            ("example.com.", RecordType::ANY),
            ("_sip._tcp.example.com.", RecordType::SRV),
            ("ptr.example.com.", RecordType::PTR),
            ("ns1.example.com.", RecordType::AAAA),
            ("nope.example.com.", RecordType::A),
            ("app.example.com.", RecordType::MX),
            ("x.WILD.example.com.", RecordType::A),
            ("host.sub.example.com.", RecordType::A),
            ("big.example.com.", RecordType::A),
            ("example.org.", RecordType::A),
        ];
        for (name, t) in cases {
            for edns in [None, Some(512), Some(1232), Some(4096)] {
                for tcp in [false, true] {
                    let req = request(name, t, edns);
                    let a = lookup(&c, req.queries[0].name(), t, &());
                    let s = Sections {
                        rcode: a.rcode,
                        authoritative: a.authoritative,
                        answers: &a.answers,
                        authority: &a.authority,
                        additional: &a.additional,
                    };
                    let ours = answer(&req, &s, tcp);
                    let theirs = answer_via_hickory(&req, &s, tcp);
                    if let Err(e) = same_meaning(&ours, &theirs) {
                        panic!("{name} {t} edns={edns:?} tcp={tcp}:\n{e}");
                    }
                    // hickory compresses SRV targets, which RFC 2782 and RFC 3597 §4 say not to.
                    assert!(
                        ours.len() <= theirs.len() || t == RecordType::SRV,
                        "{name} {t}: ours {} bytes, hickory's {}",
                        ours.len(),
                        theirs.len()
                    );
                }
            }
        }
    }

    #[test]
    fn names_are_compressed_and_the_question_case_is_echoed() {
        let c = catalog();
        let req = request("ApP.ExAmple.COM.", RecordType::A, None);
        let a = lookup(&c, req.queries[0].name(), RecordType::A, &());
        let bytes = a.to_wire(&req, false);
        // Header, question (17 + 4), then two A records whose owner is a pointer to offset 12.
        assert_eq!(&bytes[33..35], &[0xC0, 12]);
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(m.answers[0].name.to_string(), "ApP.ExAmple.COM.");
        assert!(m.authoritative && !m.truncation && m.checking_disabled);
    }

    #[test]
    fn too_big_for_udp_is_truncated_with_the_question_and_opt_kept() {
        let c = catalog();
        let req = request("big.example.com.", RecordType::A, None);
        let a = lookup(&c, req.queries[0].name(), RecordType::A, &());
        let m = Message::from_vec(&a.to_wire(&req, false)).unwrap();
        assert!(m.truncation && m.answers.is_empty() && m.queries.len() == 1);
        let req = request("big.example.com.", RecordType::A, Some(4096));
        let m = Message::from_vec(&a.to_wire(&req, false)).unwrap();
        assert!(!m.truncation && m.answers.len() == 60);
        assert_eq!(m.edns.unwrap().max_payload(), OUR_UDP_PAYLOAD);
    }
}
