//! From request bytes to response bytes: header checks, opcode dispatch, EDNS(0), truncation.
//! Zone logic lives in `answer.rs`, updates in `update.rs`, transfers in `transfer.rs`.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};

use crate::answer::{lookup, lookup_in, ListenerAddrs};
use crate::zones::HostedZones;

/// Our advertised UDP payload size (the DNS flag day 2020 value).
pub const OUR_UDP_PAYLOAD: u16 = 1232;

/// What goes back to the client.
pub enum Reply {
    /// Nothing (a response sent to us, or bytes too short to answer).
    Drop,
    One(Vec<u8>),
    /// Several messages on one TCP connection (zone transfers).
    Many(Vec<Vec<u8>>),
}

pub struct Ctx {
    pub zones: Arc<HostedZones>,
    pub listeners: Arc<dyn ListenerAddrs>,
}

pub async fn handle(ctx: &Ctx, raw: &[u8], src: SocketAddr, tcp: bool) -> Reply {
    if raw.len() < 12 || raw[2] & 0x80 != 0 {
        return Reply::Drop;
    }
    let msg = match Message::from_vec(raw) {
        Ok(m) => m,
        Err(_) => return Reply::One(formerr(raw)),
    };
    match msg.op_code {
        OpCode::Query => query(ctx, &msg, src, tcp),
        OpCode::Update => Reply::One(crate::update::handle(ctx, &msg, raw).await),
        _ => Reply::One(error(&msg, ResponseCode::NotImp)),
    }
}

fn query(ctx: &Ctx, msg: &Message, src: SocketAddr, tcp: bool) -> Reply {
    if msg.queries.len() != 1 {
        return Reply::One(error(msg, ResponseCode::FormErr));
    }
    if let Some(e) = &msg.edns {
        if e.version() > 0 {
            let mut res = response(msg);
            res.metadata.response_code = ResponseCode::BADVERS;
            return Reply::One(encode(res, msg, tcp));
        }
    }
    let q = &msg.queries[0];
    if q.query_class() != DNSClass::IN {
        return Reply::One(error(msg, ResponseCode::Refused));
    }
    match q.query_type() {
        RecordType::AXFR | RecordType::IXFR if tcp => {
            return crate::transfer::respond(ctx, msg, src);
        }
        RecordType::AXFR => return Reply::One(error(msg, ResponseCode::FormErr)),
        RecordType::IXFR => {
            // Over UDP: the current SOA alone tells the client to come back over TCP.
            return Reply::One(crate::transfer::soa_only(ctx, msg));
        }
        _ => {}
    }
    let catalog = ctx.zones.catalog_guard();
    // The zone is found once, for the answer and for the metrics.
    let zone = catalog.find(q.name());
    let a = match zone {
        Some(z) => lookup_in(z, q.name(), q.query_type(), ctx.listeners.as_ref()),
        None => lookup(&catalog, q.name(), q.query_type(), ctx.listeners.as_ref()),
    };
    ctx.zones.metrics.record(zone.map(|z| &z.origin), a.rcode);
    let mut res = response(msg);
    res.metadata.authoritative = a.authoritative;
    res.metadata.response_code = a.rcode;
    res.answers = a.answers;
    res.authorities = a.authority;
    res.additionals = a.additional;
    Reply::One(encode(res, msg, tcp))
}

/// A response skeleton: same id, opcode, RD and question (letter case kept), RA never set.
pub fn response(msg: &Message) -> Message {
    let mut res = Message::new(msg.id, MessageType::Response, msg.op_code);
    res.metadata.recursion_desired = msg.recursion_desired;
    res.metadata.recursion_available = false;
    res.metadata.checking_disabled = msg.checking_disabled;
    res.queries = msg.queries.clone();
    if msg.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(OUR_UDP_PAYLOAD);
        res.edns = Some(e);
    }
    res
}

pub fn error(msg: &Message, rcode: ResponseCode) -> Vec<u8> {
    let mut res = response(msg);
    res.metadata.response_code = rcode;
    encode(res, msg, true)
}

/// Encodes, truncating (TC, sections emptied) when the answer does not fit the client's UDP size.
pub fn encode(mut res: Message, req: &Message, tcp: bool) -> Vec<u8> {
    let limit = if tcp {
        65535
    } else {
        match &req.edns {
            Some(e) => e.max_payload().clamp(512, 4096) as usize,
            None => 512,
        }
    };
    match res.to_vec() {
        Ok(b) if b.len() <= limit => b,
        _ => {
            res.answers.clear();
            res.authorities.clear();
            res.additionals.clear();
            res.metadata.truncation = true;
            res.to_vec()
                .unwrap_or_else(|_| header_only(req.id, ResponseCode::ServFail))
        }
    }
}

/// FORMERR for bytes that are not a DNS message: the id and opcode echoed, no question.
fn formerr(raw: &[u8]) -> Vec<u8> {
    let id = u16::from_be_bytes([raw[0], raw[1]]);
    let mut out = header_only(id, ResponseCode::FormErr);
    out[2] |= raw[2] & 0x78; // opcode
    out
}

fn header_only(id: u16, rcode: ResponseCode) -> Vec<u8> {
    let mut h = vec![0u8; 12];
    h[0..2].copy_from_slice(&id.to_be_bytes());
    h[2] = 0x80;
    h[3] = (u16::from(rcode) & 0x0f) as u8;
    h
}
