//! Zone transfers to the configured secondaries: AXFR (RFC 5936) and IXFR (RFC 1995) from the
//! change history, over TCP, allowed by source address.

use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};

use crate::reply::{error, response, Ctx, Reply};
use crate::zone::Zone;
use crate::zones::transfer_records;

/// Records per message: small enough for any record mix to stay far below 64 KiB.
const PER_MESSAGE: usize = 100;

pub fn respond(ctx: &Ctx, msg: &Message, src: SocketAddr) -> Reply {
    let q = &msg.queries[0];
    let origin = q.name().to_lowercase();
    let catalog = ctx.zones.catalog();
    let Some(zone) = catalog.zones.get(&origin) else {
        return Reply::One(error(msg, ResponseCode::NotAuth));
    };
    let ip = canonical(src.ip());
    if !ctx
        .zones
        .settings(&origin)
        .secondaries
        .iter()
        .any(|s| canonical(s.ip()) == ip)
    {
        tracing::info!(zone = %origin, client = %src, "zone transfer refused: not a configured secondary");
        return Reply::One(error(msg, ResponseCode::Refused));
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
    tracing::info!(zone = %origin, client = %src, kind = %q.query_type(), records = records.len(), serial = zone.serial(), "zone transfer");
    let mut out = Vec::new();
    for (i, chunk) in records.chunks(PER_MESSAGE).enumerate() {
        let mut res = response(msg);
        if i > 0 {
            res.queries.clear();
        }
        res.metadata.authoritative = true;
        res.answers = chunk.to_vec();
        match res.to_vec() {
            Ok(b) => out.push(b),
            Err(_) => return Reply::One(error(msg, ResponseCode::ServFail)),
        }
    }
    Reply::Many(out)
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
