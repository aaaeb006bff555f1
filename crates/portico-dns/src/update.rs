//! RFC 2136 UPDATE, authenticated with TSIG (RFC 8945), so that `nsupdate`, certbot's rfc2136
//! plugin and lego's rfc2136 provider can change records. Unsigned updates are REFUSED; an unknown
//! key or a bad signature gets NOTAUTH with the TSIG error. Prerequisites are checked and the
//! updates applied under the zone writer lock, through the same commit path as change batches.

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::reply::{encode, response, Ctx};
use crate::zone::Zone;
use crate::zones::ChangeError;

pub async fn handle(ctx: &Ctx, msg: &Message, raw: &[u8]) -> Vec<u8> {
    let unsigned = |rcode| {
        let mut res = response(msg);
        res.metadata.response_code = rcode;
        encode(res, msg, true)
    };
    if msg.queries.len() != 1 || msg.queries[0].query_type() != RecordType::SOA {
        return unsigned(ResponseCode::FormErr);
    }
    let zone = msg.queries[0].name().to_lowercase();
    let catalog = ctx.zones.catalog();
    if !catalog.zones.contains_key(&zone) {
        return unsigned(ResponseCode::NotAuth);
    }
    // Authentication.
    let signed = match crate::reply::verify_tsig(ctx, msg, raw, "UPDATE") {
        Ok(Some(s)) => s,
        Ok(None) => {
            tracing::info!(%zone, "unsigned UPDATE refused");
            return unsigned(ResponseCode::Refused);
        }
        Err(reply) => return reply,
    };
    let key_name = signed.key.clone();
    let sign_with = |rcode| crate::reply::sign_rcode(msg, rcode, signed.context(msg.id));
    if !ctx.zones.settings(&zone).update_keys.contains(&key_name) {
        tracing::info!(%zone, key = %key_name, "UPDATE with a key not allowed for this zone");
        return sign_with(ResponseCode::Refused);
    }
    if let Some(rcode) = prescan(&zone, msg) {
        return sign_with(rcode);
    }
    let mut rcode = ResponseCode::NoError;
    let result = ctx
        .zones
        .commit(&zone, |z| {
            if let Some(failed) = prerequisites(z, msg) {
                rcode = failed;
                return Err(ChangeError::Invalid(format!(
                    "prerequisite failed: {failed}"
                )));
            }
            for rr in &msg.authorities {
                apply(z, rr);
            }
            Ok(())
        })
        .await;
    match result {
        Ok(info) => {
            tracing::info!(%zone, key = %key_name, serial = info.serial, "UPDATE applied");
            sign_with(ResponseCode::NoError)
        }
        Err(e) => {
            if rcode == ResponseCode::NoError {
                rcode = match e {
                    // Not applied for a reason of ours (the store, a concurrent change): the
                    // client may retry, as RFC 2136 §3.8 has a primary answer SERVFAIL.
                    ChangeError::Storage(_) | ChangeError::Conflict(_) => ResponseCode::ServFail,
                    _ => ResponseCode::Refused,
                };
            }
            tracing::info!(%zone, key = %key_name, error = %e, "UPDATE refused");
            sign_with(rcode)
        }
    }
}

/// RFC 2136 §3.4.1: every update names something in the zone, with a class and type that fit.
fn prescan(zone: &Name, msg: &Message) -> Option<ResponseCode> {
    for rr in msg.answers.iter().chain(&msg.authorities) {
        if !zone.zone_of(&rr.name) {
            return Some(ResponseCode::NotZone);
        }
    }
    for rr in &msg.authorities {
        let t = rr.record_type();
        let ok = match rr.dns_class {
            DNSClass::IN => !matches!(
                t,
                RecordType::ANY | RecordType::AXFR | RecordType::IXFR | RecordType::OPT
            ),
            DNSClass::ANY => rr.ttl == 0 && matches!(rr.data, RData::Update0(_)),
            DNSClass::NONE => rr.ttl == 0 && t != RecordType::ANY,
            _ => false,
        };
        if !ok {
            return Some(ResponseCode::FormErr);
        }
    }
    None
}

/// RFC 2136 §3.2: the first prerequisite that fails, as its rcode.
fn prerequisites(z: &Zone, msg: &Message) -> Option<ResponseCode> {
    for rr in &msg.answers {
        let node = z.node(&rr.name);
        let t = rr.record_type();
        let fail = match (rr.dns_class, t) {
            (DNSClass::ANY, RecordType::ANY) => node.is_none().then_some(ResponseCode::NXDomain),
            (DNSClass::ANY, t) => node
                .and_then(|n| n.get(t))
                .is_none()
                .then_some(ResponseCode::NXRRSet),
            (DNSClass::NONE, RecordType::ANY) => node.is_some().then_some(ResponseCode::YXDomain),
            (DNSClass::NONE, t) => node
                .and_then(|n| n.get(t))
                .is_some()
                .then_some(ResponseCode::YXRRSet),
            (DNSClass::IN, t) => {
                // Value-dependent: the set must equal the prerequisite records at this name/type.
                let want: Vec<&RData> = msg
                    .answers
                    .iter()
                    .filter(|r| {
                        r.dns_class == DNSClass::IN && r.name == rr.name && r.record_type() == t
                    })
                    .map(|r| &r.data)
                    .collect();
                let have = node.and_then(|n| n.get(t));
                let equal = have
                    .is_some_and(|s| s.len() == want.len() && s.iter().all(|r| want.contains(&&r)));
                (!equal).then_some(ResponseCode::NXRRSet)
            }
            _ => Some(ResponseCode::FormErr),
        };
        if fail.is_some() {
            return fail;
        }
    }
    None
}

/// RFC 2136 §3.4.2 for one update record.
fn apply(z: &mut Zone, rr: &Record) {
    let name = rr.name.to_lowercase();
    let t = rr.record_type();
    let apex = name == z.origin;
    match rr.dns_class {
        DNSClass::IN => {
            let node = z.node(&name);
            let has_cname = node.is_some_and(|n| n.get(RecordType::CNAME).is_some());
            let has_other =
                node.is_some_and(|n| n.sets.iter().any(|s| s.rtype != RecordType::CNAME));
            if t == RecordType::SOA
                || (t == RecordType::CNAME && has_other)
                || (t != RecordType::CNAME && has_cname)
            {
                return;
            }
            if t == RecordType::CNAME {
                z.put(&name, t, rr.ttl, vec![rr.data.clone()]);
            } else {
                z.add(&name, t, rr.ttl, rr.data.clone());
            }
        }
        DNSClass::ANY if t == RecordType::ANY => {
            let Some(node) = z.node(&name).cloned() else {
                return;
            };
            for s in node.sets {
                if !(apex && matches!(s.rtype, RecordType::SOA | RecordType::NS)) {
                    z.put(&name, s.rtype, 0, Vec::new());
                }
            }
            if !apex {
                z.set_alias(&name, None);
            }
        }
        DNSClass::ANY if !(apex && matches!(t, RecordType::SOA | RecordType::NS)) => {
            z.put(&name, t, 0, Vec::new());
        }
        DNSClass::NONE => {
            if t == RecordType::SOA {
                return;
            }
            let Some(set) = z.node(&name).and_then(|n| n.get(t)).cloned() else {
                return;
            };
            let rest: Vec<RData> = set.iter().filter(|r| r != &rr.data).collect();
            if apex && t == RecordType::NS && rest.is_empty() {
                return;
            }
            z.put(&name, t, set.ttl, rest);
        }
        _ => {}
    }
}
