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
use crate::routing::{Routed, RoutedData, RoutingFields, DEFAULT_HEALTH_TTL};
use crate::zone::{default_apex, Alias, AliasTarget, RecordSet, Zone};
use crate::zone_file;
use crate::zones::{owner, owner_any, Keys};

/// What a change (or a `[[zone.record]]`) describes.
#[derive(Debug)]
pub(crate) enum Parsed {
    Set(RecordType, u32, Vec<RData>),
    Alias(Alias),
    Routed(Routed),
}

impl Parsed {
    /// The type as config writes it (`ALIAS` for an alias, routed or not).
    pub(crate) fn kind(&self) -> String {
        match self {
            Parsed::Set(rt, ..) => rt.to_string(),
            Parsed::Alias(_) => "ALIAS".into(),
            Parsed::Routed(r) => r.type_name(),
        }
    }
}

/// The record set a change (or a `[[zone.record]]`) describes: rdatas, an ALIAS, or a set with
/// a routing policy. Without a TTL: 300 s, or 60 s where health decides the answer.
pub(crate) fn parse_set(
    origin: &Name,
    name: &str,
    rtype: &str,
    ttl: Option<u32>,
    values: &[String],
    target: Option<&str>,
    routing: &RoutingFields,
) -> Result<(Name, Parsed), String> {
    let owner = owner(name, origin)?;
    let ttl = ttl.unwrap_or(if routing.health_decides() {
        DEFAULT_HEALTH_TTL
    } else {
        300
    });
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
        let alias = Alias {
            target,
            ttl,
            evaluate_target_health: routing.evaluate_target_health.unwrap_or(false),
        };
        return Ok(match routing.routed(RoutedData::Alias(alias.clone()))? {
            Some(r) => (owner, Parsed::Routed(r)),
            None => (owner, Parsed::Alias(alias)),
        });
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
    if routing.set_identifier.is_some() {
        let set = RecordSet::new(rt, ttl, &rdatas).map_err(|e| {
            format!(
                "{owner} {up}: {} cannot be written in DNS wire format ({})",
                e.rdata, e.reason
            )
        })?;
        if let Some(r) = routing.routed(RoutedData::Set(set))? {
            return Ok((owner, Parsed::Routed(r)));
        }
    } else {
        // Errors for routing fields given without a set_identifier.
        routing.routed(RoutedData::Set(
            RecordSet::new(rt, ttl, &[]).map_err(|e| e.reason.to_string())?,
        ))?;
    }
    Ok((owner, Parsed::Set(rt, ttl, rdatas)))
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
    set: Parsed,
}

/// `file-stat|size|mtime|ctime|inode` of a zone's master file (nanoseconds), or `None`.
fn file_stat(p: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some(format!(
        "file-stat|{}|{}.{:09}|{}.{:09}|{}",
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        m.ino()
    ))
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
        if node.alias().is_some() && before.and_then(|b| b.alias()) != node.alias() {
            zone.set_alias(&name(), node.alias().cloned());
        }
        for r in node.routed() {
            let same = before.is_some_and(|b| b.routed().iter().any(|o| o == r));
            if !same {
                zone.set_routed(&name(), r.clone());
            }
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
        if node.alias().is_some() && after.and_then(|a| a.alias()).is_none() {
            zone.set_alias(&name(), None);
        }
        for r in node.routed() {
            let kept = after.is_some_and(|a| {
                a.routed()
                    .iter()
                    .any(|o| o.id == r.id && o.type_name() == r.type_name())
            });
            if !kept {
                zone.remove_routed(&name(), &r.type_name(), &r.id);
            }
        }
    }
}

/// What `build_zone` knows of the zone's past.
pub(crate) struct Past<'a> {
    pub(crate) stored: Option<&'a Zone>,
    pub(crate) applied: &'a HashSet<String>,
    /// Where the master file the stored zone was last built from is kept (read only when the
    /// configured file changed).
    pub(crate) imported: Option<std::path::PathBuf>,
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
        // The file's identity (size, times, inode) as last applied: when it is the same, the
        // file is not read or hashed again (40 MB and 5 % of a 1M-record start), as rsync's
        // quick check; the change time cannot be set back by a user, so an edit always shows.
        let stat = file_stat(&p);
        let known_hash = past.applied.iter().find(|f| f.starts_with("file-hash|"));
        match (&stat, known_hash, past.stored) {
            (Some(stat), Some(hash), Some(_)) if past.applied.contains(stat) => {
                out.fingerprints.insert(hash.clone());
                out.fingerprints.insert(stat.clone());
            }
            _ => match std::fs::read_to_string(&p) {
                Ok(text) => {
                    let print = format!("file-hash|{:016x}", fnv64(&text));
                    file_changed = !past.applied.contains(&print);
                    out.fingerprints.insert(print);
                    out.fingerprints.extend(stat);
                    if past.stored.is_none() || file_changed {
                        file_zone = parse_file(&text, &p.display().to_string(), issues);
                        out.imported = Some(text);
                    }
                }
                Err(e) => issues.push(ConfigIssue::new(
                    path!["zone", i, "file"],
                    format!("cannot read {}: {e}", p.display()),
                )),
            },
        }
    }
    let mut managed = Vec::new();
    for (j, r) in zc.records.iter().enumerate() {
        let routing = r.routing_fields();
        match parse_set(
            origin,
            &r.name,
            &r.rtype,
            r.ttl,
            &r.values,
            r.target.as_deref(),
            &routing,
        ) {
            Ok((name, set)) => {
                // The fingerprint of a record without routing is what it was before routing
                // existed, so that an upgrade does not re-apply every `[[zone.record]]`.
                // A routed set's kind is its type and identifier (`A#blue`), which is also the
                // fingerprint's second field, for the removal below.
                let kind = match &set {
                    Parsed::Routed(rt) => format!("{}#{}", rt.type_name(), rt.id),
                    other => other.kind(),
                };
                let shown = match &set {
                    Parsed::Routed(_) => kind.clone(),
                    _ => r.rtype.to_ascii_uppercase(),
                };
                let mut print = format!(
                    "cfg|{name}|{shown}|{}|{:?}|{:?}",
                    r.ttl.unwrap_or(300),
                    r.values,
                    r.target
                );
                if routing != RoutingFields::default() {
                    print.push_str(&format!("|{}", routing.words()));
                }
                managed.push(Managed {
                    kind,
                    print,
                    name,
                    set,
                })
            }
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
                let imported = past
                    .imported
                    .as_ref()
                    .and_then(|p| std::fs::read_to_string(p).ok());
                let old = imported.as_deref().and_then(|t| {
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
                if let Some((ty, id)) = kind.split_once('#') {
                    zone.remove_routed(&n, ty, id);
                } else if kind == "ALIAS" {
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
        match m.set {
            Parsed::Alias(alias) => zone.set_alias(&m.name, Some(alias)),
            Parsed::Set(rt, ttl, rdatas) => zone.put(&m.name, rt, ttl, rdatas),
            Parsed::Routed(r) => zone.set_routed(&m.name, r),
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
