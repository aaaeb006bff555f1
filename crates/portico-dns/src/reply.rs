//! What the query, update and transfer handlers share: the context they answer in, the reply
//! that goes back, a response skeleton for a request, and encoding with truncation. Below
//! `handler.rs`, `update.rs` and `transfer.rs`, importing none of them.

use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, ResponseCode};

use crate::answer::ListenerAddrs;
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
    let limit = udp_limit(req, tcp);
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

/// The largest answer `req`'s client takes: 64 KiB over TCP, its EDNS size (512 to 4096) or
/// 512 over UDP.
pub fn udp_limit(req: &Message, tcp: bool) -> usize {
    if tcp {
        return 65535;
    }
    match &req.edns {
        Some(e) => e.max_payload().clamp(512, 4096) as usize,
        None => 512,
    }
}

pub(crate) fn header_only(id: u16, rcode: ResponseCode) -> Vec<u8> {
    let mut h = vec![0u8; 12];
    h[0..2].copy_from_slice(&id.to_be_bytes());
    h[2] = 0x80;
    h[3] = (u16::from(rcode) & 0x0f) as u8;
    h
}

/// A request's verified TSIG signature: the key, its name, and the request's MAC (which the
/// response's MAC covers).
pub struct Signed {
    pub signer: hickory_proto::rr::TSigner,
    pub key: hickory_proto::rr::Name,
    pub mac: Vec<u8>,
    pub now: u64,
}

impl Signed {
    /// The response context that signs an answer to this request.
    pub fn context(&self, id: u16) -> hickory_proto::rr::TSigResponseContext {
        hickory_proto::rr::TSigResponseContext::new(
            id,
            self.now,
            self.signer.clone(),
            self.mac.clone(),
            None,
        )
    }
}

/// Verifies a request's TSIG (RFC 8945): `Ok(None)` when unsigned, `Ok(Some)` when the
/// signature holds, `Err(reply)` with the NOTAUTH answer (BADKEY, BADSIG or BADTIME) otherwise.
pub fn verify_tsig(
    ctx: &Ctx,
    msg: &Message,
    raw: &[u8],
    what: &str,
) -> Result<Option<Signed>, Vec<u8>> {
    use hickory_proto::rr::rdata::tsig::TsigError;
    use hickory_proto::rr::TSigResponseContext;
    let Some(sig) = &msg.signature else {
        return Ok(None);
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let key = sig.name.to_lowercase();
    let Some(signer) = ctx.zones.key(&key) else {
        tracing::info!(%key, "{what} with an unknown TSIG key");
        return Err(sign_rcode(
            msg,
            ResponseCode::NotAuth,
            TSigResponseContext::unknown_key(msg.id, now, key),
        ));
    };
    match signer.verify_message_byte(raw, None, true) {
        Ok((mac, _, range)) if range.contains(&now) || range.end == now => Ok(Some(Signed {
            signer,
            key,
            mac,
            now,
        })),
        Ok((mac, _, _)) => {
            tracing::info!(%key, "{what} outside the TSIG time window");
            let c = TSigResponseContext::new(msg.id, now, signer, mac, Some(TsigError::BadTime));
            Err(sign_rcode(msg, ResponseCode::NotAuth, c))
        }
        Err(e) => {
            tracing::info!(%key, error = %e, "{what} with a bad TSIG signature");
            Err(sign_rcode(
                msg,
                ResponseCode::NotAuth,
                TSigResponseContext::bad_signature(msg.id, now, signer),
            ))
        }
    }
}

/// An empty answer with `rcode`, its TSIG from `tsig`.
pub fn sign_rcode(
    msg: &Message,
    rcode: ResponseCode,
    tsig: hickory_proto::rr::TSigResponseContext,
) -> Vec<u8> {
    let mut res = response(msg);
    res.metadata.response_code = rcode;
    let Ok(bytes) = res.to_vec() else {
        return error(msg, rcode);
    };
    sign_bytes(bytes, tsig)
}

/// Appends the TSIG record that `tsig` computes over the encoded answer `bytes` (the additional
/// count raised by one), so that an answer written by `wire.rs` can be signed as it is.
pub fn sign_bytes(mut bytes: Vec<u8>, tsig: hickory_proto::rr::TSigResponseContext) -> Vec<u8> {
    use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
    if bytes.len() < 12 {
        return bytes;
    }
    let Ok(record) = tsig.sign(&bytes) else {
        return bytes;
    };
    let mut tail = Vec::new();
    if record.emit(&mut BinEncoder::new(&mut tail)).is_err() {
        return bytes;
    }
    let arcount = u16::from_be_bytes([bytes[10], bytes[11]]).saturating_add(1);
    bytes[10..12].copy_from_slice(&arcount.to_be_bytes());
    bytes.extend_from_slice(&tail);
    bytes
}
