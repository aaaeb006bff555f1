//! A zone as the config and the state directory say together (`[[zone]]`: a master file,
//! `[[zone.record]]`s, nameservers; the zone as last stored; what the config last applied), and
//! the TSIG keys of `[[tsig_key]]`. `zones.rs` loads and serves what this builds.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::TSigner;
use hickory_proto::rr::{Name, RData, RecordType};
use portico_config::{path, ConfigIssue};

use crate::config::DnsSections;
use crate::zone::{default_apex, Alias, AliasTarget, Zone};
use crate::zone_file;
use crate::zones::{owner, owner_any, Keys};

/// The record set a change (or a `[[zone.record]]`) describes: rdatas, or an ALIAS.
pub(crate) fn parse_set(
    origin: &Name,
    name: &str,
    rtype: &str,
    ttl: u32,
    values: &[String],
    target: Option<&str>,
) -> Result<(Name, RecordType, Vec<RData>, Option<Alias>), String> {
    let owner = owner(name, origin)?;
    if ttl > crate::zone::MAX_TTL {
        return Err(format!("TTL {ttl} is above {}", crate::zone::MAX_TTL));
    }
    let up = rtype.to_ascii_uppercase();
    if up == "ALIAS" {
        let t = target
            .or(values.first().map(String::as_str))
            .ok_or("ALIAS needs a target: listener:NAME or a name in the zone")?;
        let target = match t.strip_prefix("listener:") {
            Some(l) => AliasTarget::Listener(l.to_string()),
            None => AliasTarget::Name(owner_any(t, origin)?),
        };
        return Ok((
            owner,
            RecordType::A,
            Vec::new(),
            Some(Alias { target, ttl }),
        ));
    }
    let rt: RecordType = up
        .parse()
        .map_err(|_| format!("unknown record type {rtype:?}"))?;
    if values.is_empty() {
        return Err(format!("{owner} {up}: values is empty"));
    }
    let rdatas = values
        .iter()
        .map(|v| {
            zone_file::rdata_from_value(rt, v, origin)
                .map_err(|e| format!("{owner} {up} {v:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((owner, rt, rdatas, None))
}

pub(crate) fn load_keys(
    sections: &DnsSections,
    base_dir: &Path,
    issues: &mut Vec<ConfigIssue>,
) -> Keys {
    use base64::Engine;
    let mut keys = HashMap::new();
    for (i, k) in sections.tsig_keys.iter().enumerate() {
        let at = |f: &str| path!["tsig_key", i, f];
        let algorithm = match k.algorithm.to_ascii_lowercase().trim_end_matches('.') {
            "hmac-sha256" => TsigAlgorithm::HmacSha256,
            "hmac-sha384" => TsigAlgorithm::HmacSha384,
            "hmac-sha512" => TsigAlgorithm::HmacSha512,
            other => {
                issues.push(
                    ConfigIssue::new(
                        at("algorithm"),
                        format!("TSIG algorithm {other:?} is not supported"),
                    )
                    .hint("use hmac-sha256"),
                );
                continue;
            }
        };
        let secret = match (&k.secret, &k.secret_file) {
            (Some(s), None) => s.clone(),
            (None, Some(f)) => match std::fs::read_to_string(base_dir.join(f)) {
                Ok(s) => s.trim().to_string(),
                Err(e) => {
                    issues.push(ConfigIssue::new(
                        at("secret_file"),
                        format!("cannot read {f}: {e}"),
                    ));
                    continue;
                }
            },
            _ => {
                issues.push(
                    ConfigIssue::new(
                        path!["tsig_key", i],
                        "give exactly one of secret and secret_file",
                    )
                    .hint("generate one with: tsig-keygen -a hmac-sha256 NAME"),
                );
                continue;
            }
        };
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(secret.trim()) else {
            issues.push(ConfigIssue::new(at("secret"), "the secret is not base64"));
            continue;
        };
        let Ok(mut name) = Name::from_ascii(&k.name) else {
            issues.push(ConfigIssue::new(
                at("name"),
                format!("{:?} is not a key name", k.name),
            ));
            continue;
        };
        name.set_fqdn(true);
        let name = name.to_lowercase();
        match TSigner::new(bytes, algorithm, name.clone(), 300) {
            Ok(s) => {
                keys.insert(name, s);
            }
            Err(e) => issues.push(ConfigIssue::new(at("secret"), format!("unusable key: {e}"))),
        }
    }
    keys
}

/// A `[[zone.record]]` as the zone applies it, with a fingerprint of what the config says, to
/// tell later whether the config changed it since it was applied.
pub(crate) struct Managed {
    name: Name,
    kind: String,
    print: String,
    set: Option<(RecordType, u32, Vec<RData>)>,
    alias: Option<Alias>,
}

/// FNV-1a: a stable fingerprint of a master file's text across runs and Rust versions.
pub(crate) fn fnv64(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Brings a zone from the master file it was last built from (`old`, if known) to `new`:
/// record sets added or changed in the file are set, those removed from the file are removed.
pub(crate) fn apply_file_diff(zone: &mut Zone, old: Option<&Zone>, new: &Zone) {
    for (key, node) in &new.nodes {
        let before = old.and_then(|o| o.nodes.get(key));
        // Decoded only for the sets that changed.
        let name = || key.name();
        for set in &node.sets {
            if before.and_then(|b| b.get(set.rtype)) != Some(set) {
                zone.put_set(&name(), set.clone());
            }
        }
        if node.alias.is_some() && before.and_then(|b| b.alias.as_ref()) != node.alias.as_ref() {
            zone.set_alias(&name(), node.alias.as_deref().cloned());
        }
    }
    let Some(old) = old else { return };
    for (key, node) in &old.nodes {
        let after = new.nodes.get(key);
        // Decoded only for the sets that changed.
        let name = || key.name();
        for set in &node.sets {
            if after.and_then(|a| a.get(set.rtype)).is_none() {
                zone.put(&name(), set.rtype, 0, Vec::new());
            }
        }
        if node.alias.is_some() && after.and_then(|a| a.alias.as_ref()).is_none() {
            zone.set_alias(&name(), None);
        }
    }
}

/// What `build_zone` knows of the zone's past.
pub(crate) struct Past<'a> {
    pub(crate) stored: Option<&'a Zone>,
    pub(crate) applied: &'a HashSet<String>,
    /// The master file the stored zone was last built from.
    pub(crate) imported: Option<String>,
}

/// What `build_zone` hands back besides the zone, to be saved once the load succeeds.
#[derive(Default)]
pub(crate) struct Applied {
    pub(crate) fingerprints: HashSet<String>,
    pub(crate) imported: Option<String>,
    /// The zone is exactly what `imported` says (a new zone from its master file alone).
    pub(crate) state_is_imported: bool,
}

/// The TTL of master-file records that give none and follow no `$TTL`.
pub(crate) const FILE_DEFAULT_TTL: u32 = 3600;

/// The zone as config and state say together. A fresh zone is the master file plus the
/// `[[zone.record]]`s. A stored zone (state directory) is kept; what the config manages is
/// applied on top of it only where the config changed since it was last applied: a master file
/// that changed is diffed against the copy it was last built from, a `[[zone.record]]` that is
/// new or edited is set, one removed from the config is removed. So config edits take effect, and
/// run-time changes (API, UPDATE) to anything the config did not touch stay.
pub(crate) fn build_zone(
    zc: &crate::config::ZoneConfig,
    i: usize,
    origin: &Name,
    past: Past<'_>,
    base_dir: &Path,
    issues: &mut Vec<ConfigIssue>,
) -> Option<(Zone, Applied)> {
    let before = issues.len();
    let mut out = Applied::default();
    let parse_file = |text: &str, label: &str, issues: &mut Vec<ConfigIssue>| {
        let mut z = Zone::new(origin);
        match zone_file::parse_into(&mut z, text, FILE_DEFAULT_TTL) {
            Ok(()) => Some(z),
            Err(e) => {
                issues.push(ConfigIssue::new(
                    path!["zone", i, "file"],
                    format!("{label}:{}: {} (record: {})", e.line, e.message, e.record),
                ));
                None
            }
        }
    };
    let mut file_zone = None;
    let mut file_changed = false;
    if let Some(f) = &zc.file {
        let p = base_dir.join(f);
        match std::fs::read_to_string(&p) {
            Ok(text) => {
                let print = format!("file-hash|{:016x}", fnv64(&text));
                file_changed = !past.applied.contains(&print);
                out.fingerprints.insert(print);
                if past.stored.is_none() || file_changed {
                    file_zone = parse_file(&text, &p.display().to_string(), issues);
                    out.imported = Some(text);
                }
            }
            Err(e) => issues.push(ConfigIssue::new(
                path!["zone", i, "file"],
                format!("cannot read {}: {e}", p.display()),
            )),
        }
    }
    let mut managed = Vec::new();
    for (j, r) in zc.records.iter().enumerate() {
        match parse_set(
            origin,
            &r.name,
            &r.rtype,
            r.ttl,
            &r.values,
            r.target.as_deref(),
        ) {
            Ok((name, rt, rdatas, alias)) => managed.push(Managed {
                kind: if alias.is_some() {
                    "ALIAS".into()
                } else {
                    rt.to_string()
                },
                print: format!(
                    "cfg|{name}|{}|{}|{:?}|{:?}",
                    r.rtype.to_ascii_uppercase(),
                    r.ttl,
                    r.values,
                    r.target
                ),
                name,
                set: alias.is_none().then_some((rt, r.ttl, rdatas)),
                alias,
            }),
            Err(e) => issues.push(ConfigIssue::new(path!["zone", i, "record", j], e)),
        }
    }
    if issues.len() > before {
        return None;
    }
    let from_file_alone = past.stored.is_none() && file_zone.is_some() && managed.is_empty();
    let mut zone = match past.stored {
        None => file_zone.take().unwrap_or_else(|| Zone::new(origin)),
        Some(stored) => {
            let mut zone = stored.clone();
            if let (true, Some(new)) = (file_changed, &file_zone) {
                let old = past.imported.as_deref().and_then(|t| {
                    let mut z = Zone::new(origin);
                    zone_file::parse_into(&mut z, t, FILE_DEFAULT_TTL)
                        .ok()
                        .map(|_| z)
                });
                apply_file_diff(&mut zone, old.as_ref(), new);
            }
            // `[[zone.record]]`s removed from the config since last applied leave the zone.
            for old in past.applied.iter().filter(|p| p.starts_with("cfg|")) {
                let mut parts = old.splitn(4, '|').skip(1);
                let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                    continue;
                };
                if managed
                    .iter()
                    .any(|m| m.name.to_string() == name && m.kind == kind)
                {
                    continue;
                }
                let Ok(n) = Name::from_ascii(name) else {
                    continue;
                };
                if kind == "ALIAS" {
                    zone.set_alias(&n, None);
                } else if let Ok(rt) = kind.parse::<RecordType>() {
                    zone.put(&n, rt, 0, Vec::new());
                }
            }
            zone
        }
    };
    for m in managed {
        let apply = past.stored.is_none() || !past.applied.contains(&m.print);
        out.fingerprints.insert(m.print);
        if !apply {
            continue;
        }
        match (m.set, m.alias) {
            (_, Some(alias)) => zone.set_alias(&m.name, Some(alias)),
            (Some((rt, ttl, rdatas)), None) => zone.put(&m.name, rt, ttl, rdatas),
            (None, None) => {}
        }
    }
    // Nameserver names are fully qualified, as Route 53 and registrars list them ("ns1.example.net"
    // means exactly that, with or without the final dot).
    let mut nameservers: Vec<Name> = Vec::new();
    for (j, n) in zc.nameservers.iter().enumerate() {
        match Name::from_ascii(n.trim()) {
            Ok(mut name) if !n.trim().is_empty() => {
                name.set_fqdn(true);
                nameservers.push(name.to_lowercase());
            }
            _ => issues.push(
                ConfigIssue::new(
                    path!["zone", i, "nameservers", j],
                    format!("{n:?} is not a nameserver name"),
                )
                .hint("write a host name such as \"ns1.example.com\""),
            ),
        }
    }
    let apex_complete = zone.soa().is_some()
        && zone
            .node(&zone.origin)
            .is_some_and(|n| n.get(RecordType::NS).is_some());
    out.state_is_imported = from_file_alone && apex_complete && out.imported.is_some();
    default_apex(&mut zone, &nameservers);
    if let Err(e) = zone.validate() {
        issues.push(ConfigIssue::new(path!["zone", i], e.to_string()));
    }
    (issues.len() == before).then_some((zone, out))
}
