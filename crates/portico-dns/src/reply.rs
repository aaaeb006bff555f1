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

pub(crate) fn header_only(id: u16, rcode: ResponseCode) -> Vec<u8> {
    let mut h = vec![0u8; 12];
    h[0..2].copy_from_slice(&id.to_be_bytes());
    h[2] = 0x80;
    h[3] = (u16::from(rcode) & 0x0f) as u8;
    h
}
