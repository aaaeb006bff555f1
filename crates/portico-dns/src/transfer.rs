//! Zone transfers to the configured secondaries: AXFR (RFC 5936) and IXFR (RFC 1995) from the
//! change history, over TCP, allowed by source address or, with `transfer_keys`, by TSIG key
//! (RFC 8945), every message of a signed transfer signed.

use std::net::{IpAddr, SocketAddr};

use std::time::{SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::tsig::{make_tsig_record, TSIG};
use hickory_proto::rr::{RData, Record, RecordType, TSigResponseContext, TSigner};

use crate::reply::{error, response, Ctx, Reply};
use crate::zone::Zone;
use crate::zones::transfer_records;

/// Records per message: small enough for any record mix to stay far below 64 KiB.
const PER_MESSAGE: usize = 100;

pub fn respond(ctx: &Ctx, msg: &Message, raw: &[u8], src: SocketAddr) -> Reply {
    let q = &msg.queries[0];
    let origin = q.name().to_lowercase();
    let catalog = ctx.zones.catalog();
    let Some(zone) = catalog.zones.get(&origin) else {
        return Reply::One(error(msg, ResponseCode::NotAuth));
    };
    let settings = ctx.zones.settings(&origin);
    // A signed request is answered signed, whatever the answer (RFC 8945 §5.3).
    let signer = match crate::reply::verify_tsig(ctx, msg, raw, "zone transfer") {
        Ok(s) => s.map(|s| (s.signer, s.key, s.mac)),
        Err(reply) => return Reply::One(reply),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let refuse = |why: &str| {
        tracing::info!(zone = %origin, client = %src, "zone transfer refused: {why}");
        Reply::One(match &signer {
            Some((s, _, mac)) => crate::reply::sign_rcode(
                msg,
                ResponseCode::Refused,
                TSigResponseContext::new(msg.id, now, s.clone(), mac.clone(), None),
            ),
            None => error(msg, ResponseCode::Refused),
        })
    };
    let allowed = if settings.transfer_keys.is_empty() {
        let ip = canonical(src.ip());
        settings.secondaries.iter().any(|s| canonical(s.ip()) == ip)
    } else {
        signer
            .as_ref()
            .is_some_and(|(_, k, _)| settings.transfer_keys.contains(k))
    };
    if !allowed {
        return refuse(if settings.transfer_keys.is_empty() {
            "not a configured secondary"
        } else {
            "not signed with one of the zone's transfer_keys"
        });
    }
    let Some(soa) = soa_record(zone) else {
        return Reply::One(error(msg, ResponseCode::ServFail));
    };
    let records = if q.query_type() == RecordType::IXFR {
        ixfr_records(ctx, msg, zone, &soa)
    } else {
        None
    };
    let records = records.unwrap_or_else(|| {
        let mut all = transfer_records(zone);
        all.push(soa.clone());
        all
    });
    tracing::info!(zone = %origin, client = %src, kind = %q.query_type(), records = records.len(), serial = zone.serial(), signed = signer.is_some(), "zone transfer");
    let mut out = Vec::new();
    let mut previous_mac: Option<Vec<u8>> = None;
    for (i, chunk) in records.chunks(PER_MESSAGE).enumerate() {
        let mut res = response(msg);
        if i > 0 {
            res.queries.clear();
        }
        res.metadata.authoritative = true;
        res.answers = chunk.to_vec();
        let Ok(unsigned) = res.to_vec() else {
            return Reply::One(error(msg, ResponseCode::ServFail));
        };
        let bytes = match &signer {
            None => unsigned,
            Some((s, _, request_mac)) => {
                match sign_envelope(
                    s,
                    msg.id,
                    now,
                    request_mac,
                    previous_mac.as_deref(),
                    &unsigned,
                ) {
                    Ok(tsig) => {
                        previous_mac = Some(tsig.data.mac.clone());
                        res.signature = Some(tsig);
                        match res.to_vec() {
                            Ok(b) => b,
                            Err(_) => return Reply::One(error(msg, ResponseCode::ServFail)),
                        }
                    }
                    Err(_) => return Reply::One(error(msg, ResponseCode::ServFail)),
                }
            }
        };
        out.push(bytes);
    }
    Reply::Many(out)
}

/// The TSIG record of one message of a signed transfer (RFC 8945 §5.3.1): the first message is
/// signed as any response (the request's MAC, the message, all TSIG variables); each later one
/// over the previous message's MAC, the message and only the timers (time signed, fudge), as
/// BIND and dig verify them. hickory signs single responses only, so the later ones are built
/// here.
fn sign_envelope(
    signer: &TSigner,
    id: u16,
    now: u64,
    request_mac: &[u8],
    previous_mac: Option<&[u8]>,
    unsigned: &[u8],
) -> Result<Box<Record<TSIG>>, String> {
    let Some(prev) = previous_mac else {
        return TSigResponseContext::new(id, now, signer.clone(), request_mac.to_vec(), None)
            .sign(unsigned)
            .map_err(|e| e.to_string());
    };
    let mut tbs = Vec::with_capacity(prev.len() + unsigned.len() + 10);
    tbs.extend_from_slice(&(prev.len() as u16).to_be_bytes());
    tbs.extend_from_slice(prev);
    tbs.extend_from_slice(unsigned);
    tbs.extend_from_slice(&((now >> 32) as u16).to_be_bytes());
    tbs.extend_from_slice(&(now as u32).to_be_bytes());
    tbs.extend_from_slice(&signer.fudge().to_be_bytes());
    let mac = signer.sign(&tbs).map_err(|e| e.to_string())?;
    let tsig = TSIG::new(
        signer.algorithm().clone(),
        now,
        signer.fudge(),
        mac,
        id,
        None,
        Vec::new(),
    );
    Ok(Box::new(make_tsig_record(
        signer.signer_name().clone(),
        tsig,
    )))
}

/// The incremental form when the history reaches the client's serial; the SOA alone when the
/// client is current.
fn ixfr_records(ctx: &Ctx, msg: &Message, zone: &Zone, soa: &Record) -> Option<Vec<Record>> {
    let client = msg.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(s) => Some(s.serial),
        _ => None,
    })?;
    if client == zone.serial() {
        return Some(vec![soa.clone()]);
    }
    let entries = ctx.zones.journal_since(&zone.origin, client)?;
    let with_serial = |serial: u32| {
        let mut r = soa.clone();
        if let RData::SOA(s) = &mut r.data {
            s.serial = serial;
        }
        r
    };
    let mut out = vec![soa.clone()];
    for e in entries {
        out.push(with_serial(e.from));
        out.extend(e.removed);
        out.push(with_serial(e.to));
        out.extend(e.added);
    }
    out.push(soa.clone());
    Some(out)
}

/// IXFR over UDP: the current SOA, so the client comes back over TCP if it is behind.
pub fn soa_only(ctx: &Ctx, msg: &Message) -> Vec<u8> {
    let origin = msg.queries[0].name().to_lowercase();
    let catalog = ctx.zones.catalog();
    let Some(soa) = catalog.zones.get(&origin).and_then(|z| soa_record(z)) else {
        return error(msg, ResponseCode::NotAuth);
    };
    let mut res = response(msg);
    res.metadata.authoritative = true;
    res.answers = vec![soa];
    crate::reply::encode(res, msg, false)
}

fn soa_record(zone: &Zone) -> Option<Record> {
    zone.soa()
        .map(|(soa, ttl)| Record::from_rdata(zone.origin.clone(), ttl, RData::SOA(soa.clone())))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}
