//! From request bytes to response bytes: header checks, opcode dispatch, EDNS(0), truncation.
//! Zone logic lives in `answer.rs`, updates in `update.rs`, transfers in `transfer.rs`; what
//! all three answer with (the context, the reply, response skeletons and encoding) in `reply.rs`.

use std::net::SocketAddr;

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};

use crate::answer::{lookup, lookup_in};
use crate::reply::{encode, error, header_only, response};
pub use crate::reply::{Ctx, Reply, OUR_UDP_PAYLOAD};

pub async fn handle(ctx: &Ctx, raw: &[u8], src: SocketAddr, tcp: bool) -> Reply {
    if raw.len() < 12 || raw[2] & 0x80 != 0 {
        return Reply::Drop;
    }
    let msg = match Message::from_vec(raw) {
        Ok(m) => m,
        Err(_) => return Reply::One(formerr(raw)),
    };
    match msg.op_code {
        OpCode::Query => query(ctx, &msg, raw, src, tcp),
        OpCode::Update => Reply::One(crate::update::handle(ctx, &msg, raw).await),
        _ => Reply::One(error(&msg, ResponseCode::NotImp)),
    }
}

fn query(ctx: &Ctx, msg: &Message, raw: &[u8], src: SocketAddr, tcp: bool) -> Reply {
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
            return crate::transfer::respond(ctx, msg, raw, src);
        }
        RecordType::AXFR => return Reply::One(error(msg, ResponseCode::FormErr)),
        RecordType::IXFR => {
            // Over UDP: the current SOA alone tells the client to come back over TCP.
            return Reply::One(crate::transfer::soa_only(ctx, msg));
        }
        _ => {}
    }
    let signed = match crate::reply::verify_tsig(ctx, msg, raw, "query") {
        Ok(s) => s,
        Err(reply) => return Reply::One(reply),
    };
    let catalog = ctx.zones.catalog_guard();
    // The zone is found once, for the answer and for the metrics.
    let zone = catalog.find(q.name());
    let a = match zone {
        Some(z) => lookup_in(z, q.name(), q.query_type(), ctx.listeners.as_ref()),
        None => lookup(&catalog, q.name(), q.query_type(), ctx.listeners.as_ref()),
    };
    ctx.zones.metrics.record(zone.map(|z| &z.origin), a.rcode);
    let bytes = a.to_wire(msg, tcp);
    match signed {
        // A signed query (a secondary's SOA check) gets a signed answer.
        Some(s) => {
            let signed = crate::reply::sign_bytes(bytes, s.context(msg.id));
            if signed.len() <= crate::reply::udp_limit(msg, tcp) {
                return Reply::One(signed);
            }
            // RFC 8945 §5.3: an answer the TSIG would push over the client's size goes out
            // as the question alone, truncated (TC) and signed; the client retries over TCP.
            let mut res = crate::reply::response(msg);
            res.metadata.truncation = true;
            match res.to_vec() {
                Ok(b) => Reply::One(crate::reply::sign_bytes(b, s.context(msg.id))),
                Err(_) => Reply::One(error(msg, ResponseCode::ServFail)),
            }
        }
        None => Reply::One(bytes),
    }
}

/// FORMERR for bytes that are not a DNS message: the id and opcode echoed, no question.
fn formerr(raw: &[u8]) -> Vec<u8> {
    let id = u16::from_be_bytes([raw[0], raw[1]]);
    let mut out = header_only(id, ResponseCode::FormErr);
    out[2] |= raw[2] & 0x78; // opcode
    out
}
