//! RFC 1035 master files: import and export.
//!
//! The tokenizer and record framing are ours so that an error can name file:line and the record
//! ($ORIGIN, $TTL, relative names, `@`, blank owners, parentheses, comments, quoted strings,
//! escapes); the record data of each type is parsed by hickory-proto once names are qualified.
//! `ALIAS` is Portico's own type (`@ ALIAS listener:https` or `@ ALIAS www`), as a Route 53 alias.
//! A record set with a routing policy is written as its plain records, each followed by a
//! comment that Portico reads back (`www 60 IN A 192.0.2.1 ; portico: set_identifier=blue
//! routing=weighted weight=70 health=target_group:web`), so that another server reads the file
//! as plain records.
//!
//! Over 600 lines with its tests (about 190 lines): the master-file reader and writer, whose
//! round trip the tests and the `zone_file` fuzz target hold together.

use std::fmt::Write as _;

use hickory_proto::rr::rdata::{CNAME, MX, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, RecordType};

use crate::routing::{Routed, RoutedData, RoutingFields};
use crate::zone::{Alias, AliasTarget, Node, Owner, RecordSet, Zone};
use crate::zone_config::FILE_DEFAULT_TTL;

/// A master file that cannot be read, naming the line and the record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message} (record: {record})")]
pub struct ZoneFileError {
    pub line: usize,
    pub record: String,
    pub message: String,
}

#[derive(Debug, Clone)]
/// One word or quoted string of a record; a word without escapes borrows the file's text.
pub struct Token<'a> {
    pub text: std::borrow::Cow<'a, str>,
    pub quoted: bool,
    /// The exact bytes of a quoted string (`\DDD` escapes may make it non-UTF-8); empty for a
    /// word, whose bytes are its text's (see `bytes`).
    pub raw: Vec<u8>,
}

impl Token<'_> {
    /// The token's bytes: a quoted string's exact bytes, a word's text.
    pub fn bytes(&self) -> &[u8] {
        if self.quoted {
            &self.raw
        } else {
            self.text.as_bytes()
        }
    }
}

/// One logical record: its first line, whether it began with blank space, its tokens.
struct Entry<'a> {
    line: usize,
    blank_owner: bool,
    tokens: Vec<Token<'a>>,
    /// The record's text for error messages: borrowed from the file unless it spans lines.
    raw: std::borrow::Cow<'a, str>,
    /// The words of a `; portico:` comment, if the record has one.
    portico: Option<String>,
}

fn tokenize(text: &str) -> Result<Vec<Entry<'_>>, ZoneFileError> {
    let mut entries = Vec::new();
    each_entry(text, |e| {
        entries.push(e);
        Ok(())
    })?;
    Ok(entries)
}

/// Calls `f` with each logical record in turn, so that a large file is never held as tokens.
fn each_entry<'a>(
    text: &'a str,
    mut f: impl FnMut(Entry<'a>) -> Result<(), ZoneFileError>,
) -> Result<(), ZoneFileError> {
    let mut cur: Option<Entry<'a>> = None;
    let mut depth = 0usize;
    let mut line_count = 0;
    // Scanned as bytes: every delimiter is ASCII, so a word's bounds are character boundaries
    // and a word without escapes (nearly all) is borrowed from the file, not copied.
    let stop = |b: u8| matches!(b, b' ' | b'\t' | b'\r' | b';' | b'(' | b')' | b'"');
    for (i, line) in text.lines().enumerate() {
        line_count = i + 1;
        let lineno = i + 1;
        let err = |message: String| ZoneFileError {
            line: lineno,
            record: line.trim().to_string(),
            message,
        };
        if depth == 0 {
            if let Some(e) = cur.take() {
                if !e.tokens.is_empty() {
                    f(e)?;
                }
            }
            cur = Some(Entry {
                line: lineno,
                blank_owner: line.starts_with([' ', '\t']),
                tokens: Vec::new(),
                raw: std::borrow::Cow::Borrowed(line.trim()),
                portico: None,
            });
        } else if let Some(e) = cur.as_mut() {
            let raw = e.raw.to_mut();
            raw.push(' ');
            raw.push_str(line.trim());
        }
        let entry = cur
            .as_mut()
            .ok_or_else(|| err("internal: no record".into()))?;
        let b = line.as_bytes();
        let mut j = 0;
        while j < b.len() {
            match b[j] {
                b' ' | b'\t' | b'\r' => j += 1,
                b';' => {
                    let comment = &line[j + 1..];
                    if let Some(words) = comment.trim_start().strip_prefix("portico:") {
                        entry.portico = Some(words.trim().to_string());
                    }
                    break;
                }
                b'(' => {
                    depth += 1;
                    j += 1;
                }
                b')' => {
                    depth = depth
                        .checked_sub(1)
                        .ok_or_else(|| err("')' without '('".into()))?;
                    j += 1;
                }
                b'"' => {
                    let mut out = Vec::new();
                    j += 1;
                    loop {
                        let Some(&c) = b.get(j) else {
                            return Err(err("unterminated quoted string".into()));
                        };
                        j += 1;
                        match c {
                            b'"' => break,
                            b'\\' => {
                                let (bytes, used) = unescape(&line[j..]).map_err(err)?;
                                out.extend_from_slice(&bytes);
                                j += used;
                            }
                            c => out.push(c),
                        }
                    }
                    entry.tokens.push(Token {
                        text: String::from_utf8_lossy(&out).into_owned().into(),
                        quoted: true,
                        raw: out,
                    });
                }
                _ => {
                    let start = j;
                    while j < b.len() && !stop(b[j]) && b[j] != b'\\' {
                        j += 1;
                    }
                    let text = if j < b.len() && b[j] == b'\\' {
                        // Escapes are kept in names for hickory's name parser.
                        let mut s = line[start..j].to_string();
                        while j < b.len() && !stop(b[j]) {
                            let escaped = b[j] == b'\\' && j + 1 < b.len();
                            if escaped {
                                s.push('\\');
                                j += 1;
                            }
                            let Some(c) = line[j..].chars().next() else {
                                break;
                            };
                            s.push(c);
                            j += c.len_utf8();
                        }
                        std::borrow::Cow::Owned(s)
                    } else {
                        std::borrow::Cow::Borrowed(&line[start..j])
                    };
                    entry.tokens.push(Token {
                        text,
                        quoted: false,
                        raw: Vec::new(),
                    });
                }
            }
        }
    }
    if depth > 0 {
        let e = cur.as_ref();
        return Err(ZoneFileError {
            line: e.map_or(line_count, |e| e.line),
            record: e.map(|e| e.raw.to_string()).unwrap_or_default(),
            message: "'(' is never closed".into(),
        });
    }
    if let Some(e) = cur {
        if !e.tokens.is_empty() {
            f(e)?;
        }
    }
    Ok(())
}

/// `\X` or `\DDD` inside a quoted string; returns the bytes and how many bytes of `rest` it
/// used.
fn unescape(rest: &str) -> Result<(Vec<u8>, usize), String> {
    match rest.as_bytes() {
        [a, b, c, ..] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
            let v = u32::from(a - b'0') * 100 + u32::from(b - b'0') * 10 + u32::from(c - b'0');
            u8::try_from(v)
                .map(|b| (vec![b], 3))
                .map_err(|_| format!("escape \\{} is above 255", &rest[..3]))
        }
        _ => match rest.chars().next() {
            Some(c) => Ok((c.encode_utf8(&mut [0; 4]).as_bytes().to_vec(), c.len_utf8())),
            None => Err("a backslash ends the line".into()),
        },
    }
}

/// Parses a master file into `zone` (whose origin is the default `$ORIGIN`).
pub fn parse_into(zone: &mut Zone, text: &str, default_ttl: u32) -> Result<(), ZoneFileError> {
    let mut bulk = crate::zone::Bulk::default();
    let mut aliases = Vec::new();
    // Records with a `; portico:` routing comment, gathered into sets by name, type and id.
    let mut routed: Vec<(Name, Routed)> = Vec::new();
    let mut origin = zone.origin.clone();
    let mut ttl = default_ttl;
    let mut last_owner: Option<Name> = None;
    each_entry(text, |e| {
        let err = |message: String| ZoneFileError {
            line: e.line,
            record: e.raw.to_string(),
            message,
        };
        let mut toks = e.tokens.iter().peekable();
        let first = &e.tokens[0];
        if !first.quoted && first.text.starts_with('$') {
            let arg = e
                .tokens
                .get(1)
                .map(|t| &*t.text)
                .ok_or_else(|| err(format!("{} needs an argument", first.text)))?;
            match first.text.to_ascii_uppercase().as_str() {
                "$ORIGIN" => origin = name(arg, &origin).map_err(err)?,
                "$TTL" => ttl = parse_ttl(arg).map_err(err)?,
                "$INCLUDE" => {
                    return Err(err(
                        "$INCLUDE is not supported: put the records in one file".into(),
                    ))
                }
                d => return Err(err(format!("unknown directive {d}"))),
            }
            return Ok(());
        }
        let owner = if e.blank_owner {
            last_owner
                .clone()
                .ok_or_else(|| err("the first record has no owner name".into()))?
        } else {
            let t = toks.next().ok_or_else(|| err("empty record".into()))?;
            name(&t.text, &origin).map_err(err)?
        };
        last_owner = Some(owner.clone());
        let mut rec_ttl = ttl;
        let mut rtype_text = None;
        for _ in 0..3 {
            let Some(t) = toks.next() else { break };
            // Compared without an upper-case copy: TTL and class are on every line of an
            // exported zone, and a million-record load made three copies per record.
            if t.text.eq_ignore_ascii_case("IN") {
                continue;
            }
            if ["CH", "HS", "CS"]
                .iter()
                .any(|c| t.text.eq_ignore_ascii_case(c))
            {
                let up = t.text.to_ascii_uppercase();
                return Err(err(format!("class {up} is not served: only IN")));
            }
            if t.text.starts_with(|c: char| c.is_ascii_digit()) {
                rec_ttl = parse_ttl(&t.text).map_err(err)?;
                continue;
            }
            rtype_text = Some(t.text.to_ascii_uppercase());
            break;
        }
        let rtype_text = rtype_text.ok_or_else(|| err("no record type".into()))?;
        let rest: Vec<&Token> = toks.collect();
        let fields = match &e.portico {
            Some(words) => RoutingFields::from_words(words).map_err(err)?,
            None => RoutingFields::default(),
        };
        if rtype_text == "ALIAS" {
            let t = rest.first().ok_or_else(|| {
                err("ALIAS needs a target: listener:NAME or a name in the zone".into())
            })?;
            let target = match t.text.strip_prefix("listener:") {
                Some(l) => AliasTarget::Listener(l.to_string()),
                None => AliasTarget::Name(name(&t.text, &origin).map_err(err)?),
            };
            let alias = Alias {
                target,
                ttl: rec_ttl,
                evaluate_target_health: fields.evaluate_target_health.unwrap_or(false),
            };
            match fields
                .routed(RoutedData::Alias(alias.clone()))
                .map_err(err)?
            {
                Some(r) => routed.push((owner, r)),
                None => aliases.push((owner, alias)),
            }
            return Ok(());
        }
        let rtype: RecordType = rtype_text
            .parse()
            .map_err(|_| err(format!("unknown record type {rtype_text}")))?;
        let rdata = rdata(rtype, &rest, &origin).map_err(err)?;
        let routed_one = match &e.portico {
            Some(_) => {
                let one =
                    RecordSet::new(rtype, rec_ttl, std::slice::from_ref(&rdata)).map_err(|e| {
                        err(format!(
                            "the {rtype} data cannot be written in DNS wire format: {}",
                            e.reason
                        ))
                    })?;
                fields.routed(RoutedData::Set(one)).map_err(err)?
            }
            None => None,
        };
        if let Some(r) = routed_one {
            let same = routed
                .iter_mut()
                .find(|(n, o)| *n == owner && o.id == r.id && o.rtype() == rtype && !o.is_alias());
            match same {
                Some((_, o)) => {
                    if o.policy != r.policy || o.health != r.health {
                        return Err(err(format!(
                            "set {:?}: this record's routing differs from the set's earlier records",
                            r.id
                        )));
                    }
                    if let RoutedData::Set(set) = &mut o.data {
                        set.ttl = rec_ttl;
                        set.push(&rdata).map_err(|e| err(e.reason.to_string()))?;
                    }
                }
                None => routed.push((owner, r)),
            }
            return Ok(());
        }
        bulk.push(&owner, rtype, rec_ttl, &rdata).map_err(|e| {
            err(format!(
                "the {rtype} data cannot be written in DNS wire format: {}",
                e.reason
            ))
        })
    })?;
    zone.add_bulk(bulk);
    for (owner, alias) in aliases {
        zone.set_alias(&owner, Some(alias));
    }
    for (owner, r) in routed {
        zone.set_routed(&owner, r);
    }
    Ok(())
}

fn name(text: &str, origin: &Name) -> Result<Name, String> {
    if text == "@" {
        return Ok(origin.clone());
    }
    // Letters, digits, hyphens and dots, no punycode: what IDNA processing leaves as it is but
    // for letter case, so the plain ASCII parser gives the same name, faster.
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !text
            .as_bytes()
            .windows(4)
            .any(|w| w.eq_ignore_ascii_case(b"xn--"))
        && !text.contains("..")
        && !text.starts_with('.');
    let n = if plain {
        Name::from_ascii(text).and_then(|n| {
            if n.is_fqdn() {
                Ok(n)
            } else {
                n.append_domain(origin)
            }
        })
    } else {
        Name::parse(text, Some(origin))
    }
    .map_err(|e| format!("bad name {text:?}: {e}"))?;
    // The origin is lower-case already (a zone's origin, or a `$ORIGIN` read through here), so
    // a name written in lower case needs no lower-cased copy.
    // (Checked byte for byte: `Name`'s own equality ignores case.)
    let lower = |b: &[u8]| !b.iter().any(u8::is_ascii_uppercase);
    if plain && lower(text.as_bytes()) && origin.iter().all(lower) {
        return Ok(n);
    }
    Ok(n.to_lowercase())
}

fn parse_ttl(t: &str) -> Result<u32, String> {
    hickory_proto::serialize::txt::parse_ttl(t).map_err(|e| format!("bad TTL {t:?}: {e}"))
}

/// The one token of `toks` parsed as `T` (`None` when there is not exactly one, or it does
/// not parse).
fn one<T: std::str::FromStr>(toks: &[&Token]) -> Option<T> {
    match toks {
        [t] => t.text.parse().ok(),
        _ => None,
    }
}

/// Record data of `rtype` from its tokens, with relative names qualified by `origin`.
pub fn rdata(rtype: RecordType, toks: &[&Token], origin: &Name) -> Result<RData, String> {
    let need = |n: usize| {
        if toks.len() < n {
            Err(format!("{rtype} needs {n} fields, found {}", toks.len()))
        } else {
            Ok(())
        }
    };
    let num = |i: usize| -> Result<u32, String> {
        toks[i]
            .text
            .parse::<u32>()
            .map_err(|_| format!("{:?} is not a number", toks[i].text))
    };
    let nm = |i: usize| name(&toks[i].text, origin);
    Ok(match rtype {
        RecordType::CNAME => { need(1)?; RData::CNAME(CNAME(nm(0)?)) }
        RecordType::NS => { need(1)?; RData::NS(NS(nm(0)?)) }
        RecordType::PTR => { need(1)?; RData::PTR(PTR(nm(0)?)) }
        RecordType::MX => { need(2)?; RData::MX(MX::new(num(0)? as u16, nm(1)?)) }
        RecordType::SRV => { need(4)?; RData::SRV(SRV::new(num(0)? as u16, num(1)? as u16, num(2)? as u16, nm(3)?)) }
        RecordType::SOA => {
            need(7)?;
            let t = |i: usize| parse_ttl(&toks[i].text);
            RData::SOA(SOA::new(nm(0)?, nm(1)?, num(2)?, t(3)? as i32, t(4)? as i32, t(5)? as i32, t(6)?))
        }
        RecordType::TXT => {
            need(1)?;
            RData::TXT(TXT::from_bytes(toks.iter().map(|t| t.bytes()).collect()))
        }
        // The common case, without hickory's text lexer (a third of a big zone's load time),
        // the address parsed once.
        RecordType::A if let Some(ip) = one(toks) => RData::A(hickory_proto::rr::rdata::A(ip)),
        RecordType::AAAA if let Some(ip) = one(toks) => RData::AAAA(hickory_proto::rr::rdata::AAAA(ip)),
        RecordType::A | RecordType::AAAA | RecordType::CAA => {
            // hickory's CAA parser turns bytes above 127 (raw or \DDD) into other bytes, so they
            // would not survive an export and re-import (found by the zone_file fuzz target).
            // CAA tags and values are ASCII in practice (domain names, parameters, URLs; RFC 8659).
            let printable = |b: &[u8]| b.iter().all(|c| (0x20..=0x7e).contains(c));
            if let Some(t) = toks
                .iter()
                .find(|t| !printable(t.text.as_bytes()) || !printable(t.bytes()))
            {
                return Err(format!(
                    "bad {rtype} data: {:?} has bytes outside printable ASCII, which {rtype} records here \
                     cannot hold; write the value in ASCII (an internationalised domain as its xn-- form)",
                    t.text
                ));
            }
            let text: Vec<String> = toks.iter().map(|t| if t.quoted { quote(t.bytes()) } else { t.text.to_string() }).collect();
            let data = RData::try_from_str(rtype, &text.join(" ")).map_err(|e| format!("bad {rtype} data: {e}"))?;
            if let RData::CAA(c) = &data {
                // RFC 8659 §4.1: a tag is 1 to 15 ASCII letters and digits.
                if c.tag.is_empty() || c.tag.len() > 15 || !c.tag.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(format!("bad CAA data: the tag {:?} is not 1 to 15 letters and digits (issue, issuewild, iodef …)", c.tag));
                }
            }
            data
        }
        other => return Err(format!("record type {other} is not supported (SOA NS A AAAA CNAME TXT CAA MX SRV PTR ALIAS are)")),
    })
}

/// Tokens from a value string as the config and the API give them (`"10 mail"`, `"v=spf1 ~all"`).
pub fn rdata_from_value(rtype: RecordType, value: &str, origin: &Name) -> Result<RData, String> {
    if rtype == RecordType::TXT {
        // A TXT value is one string unless it is written as quoted strings.
        let tokens = if value.trim_start().starts_with('"') {
            tokenize(value)
                .map_err(|e| e.message)?
                .into_iter()
                .flat_map(|e| e.tokens)
                .collect()
        } else {
            vec![Token {
                text: value.into(),
                quoted: true,
                raw: value.as_bytes().to_vec(),
            }]
        };
        let refs: Vec<&Token> = tokens.iter().collect();
        return rdata(rtype, &refs, origin);
    }
    let entries = tokenize(value).map_err(|e| e.message)?;
    let tokens: Vec<Token> = entries.into_iter().flat_map(|e| e.tokens).collect();
    let refs: Vec<&Token> = tokens.iter().collect();
    rdata(rtype, &refs, origin)
}

fn quote(s: &[u8]) -> String {
    let mut out = String::from("\"");
    for &b in s {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:03}");
            }
        }
    }
    out.push('"');
    out
}

/// The record data as a master file writes it, names relative to `origin` where possible.
pub fn rdata_text(rdata: &RData, origin: &Name) -> String {
    let rel = |n: &Name| relative(n, origin);
    match rdata {
        RData::CNAME(c) => rel(&c.0),
        RData::NS(n) => rel(&n.0),
        RData::PTR(p) => rel(&p.0),
        RData::MX(m) => format!("{} {}", m.preference, rel(&m.exchange)),
        RData::SRV(s) => format!("{} {} {} {}", s.priority, s.weight, s.port, rel(&s.target)),
        RData::SOA(s) => format!(
            "{} {} {} {} {} {} {}",
            rel(&s.mname),
            rel(&s.rname),
            s.serial,
            s.refresh,
            s.retry,
            s.expire,
            s.minimum
        ),
        RData::TXT(t) => t
            .txt_data
            .iter()
            .map(|d| quote(d))
            .collect::<Vec<_>>()
            .join(" "),
        // hickory's Display does not escape a `"` inside the value.
        RData::CAA(c) => format!(
            "{} {} {}",
            u8::from(c.issuer_critical) << 7 | c.reserved_flags,
            c.tag,
            quote(&c.value)
        ),
        other => other.to_string(),
    }
}

pub(crate) fn relative(n: &Name, origin: &Name) -> String {
    if n == origin {
        return "@".into();
    }
    if origin.zone_of(n) {
        // Not num_labels(): it leaves out a leading `*` (RFC 4034 label count).
        let keep = n.iter().count() - origin.iter().count();
        let labels: Vec<String> = n.iter().take(keep).map(escape_label).collect();
        return labels.join(".");
    }
    // Fully qualified, escaped like the relative ones (hickory's Display does not escape a
    // `.` inside a label next to bytes outside ASCII: found by the zone_file fuzz target).
    if n.is_root() {
        return ".".into();
    }
    let labels: Vec<String> = n.iter().map(escape_label).collect();
    format!("{}.", labels.join("."))
}

/// A label as master files write it: `.`, quotes, `;`, parentheses, `@`, `$`, `\\` and blanks
/// escaped with a backslash, other bytes outside printable ASCII as `\DDD`.
fn escape_label(label: &[u8]) -> String {
    let mut out = String::new();
    for (i, &b) in label.iter().enumerate() {
        match b {
            b'*' if i == 0 && label.len() == 1 => out.push('*'),
            b'.' | b'"' | b';' | b'(' | b')' | b'@' | b'$' | b'\\' | b'*' => {
                out.push('\\');
                out.push(b as char);
            }
            0x21..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:03}");
            }
        }
    }
    out
}

/// Writes `zone` as a master file that [`parse_into`] reads back to the same zone.
pub fn export(zone: &Zone) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "$ORIGIN {}", zone.origin);
    // SOA first, then everything else in canonical order.
    let mut nodes: Vec<_> = zone.nodes.iter().collect();
    nodes.sort_by_key(|(k, _)| **k != zone.apex);
    for (key, node) in nodes {
        export_node(&mut out, &zone.origin, key, node);
    }
    out
}

/// Reads back what [`export_node`] wrote for `owner`: `None` when the text holds nothing.
pub fn parse_node(origin: &Name, owner: &Owner, text: &str) -> Result<Option<Node>, ZoneFileError> {
    let mut z = Zone::new(origin);
    parse_into(&mut z, text, FILE_DEFAULT_TTL)?;
    Ok(z.nodes.get(owner).cloned())
}

/// Writes one name's records (sets, ALIAS, routed sets) as master-file lines relative to
/// `origin`.
pub fn export_node(out: &mut String, origin: &Name, key: &Owner, node: &Node) {
    let owner = relative(&key.name(), origin);
    let mut sets: Vec<_> = node.sets.iter().collect();
    sets.sort_by_key(|s| (s.rtype != RecordType::SOA, u16::from(s.rtype)));
    for set in sets {
        for r in &set.rdatas() {
            let _ = writeln!(
                out,
                "{owner}\t{}\tIN\t{}\t{}",
                set.ttl,
                set.rtype,
                rdata_text(r, origin)
            );
        }
    }
    if let Some(a) = node.alias() {
        let target = alias_target(a, origin);
        let _ = write!(out, "{owner}\t{}\tIN\tALIAS\t{target}", a.ttl);
        if a.evaluate_target_health {
            out.push_str("\t; portico: evaluate_target_health=true");
        }
        out.push('\n');
    }
    for r in node.routed() {
        let words = RoutingFields::of(r).words();
        match &r.data {
            RoutedData::Alias(a) => {
                let target = alias_target(a, origin);
                let _ = writeln!(
                    out,
                    "{owner}\t{}\tIN\tALIAS\t{target}\t; portico: {words}",
                    a.ttl
                );
            }
            RoutedData::Set(set) => {
                for rd in &set.rdatas() {
                    let _ = writeln!(
                        out,
                        "{owner}\t{}\tIN\t{}\t{}\t; portico: {words}",
                        set.ttl,
                        set.rtype,
                        rdata_text(rd, origin)
                    );
                }
            }
        }
    }
}

fn alias_target(a: &Alias, origin: &Name) -> String {
    match &a.target {
        AliasTarget::Listener(l) => format!("listener:{l}"),
        AliasTarget::Name(n) => relative(n, origin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
$ORIGIN example.com.
$TTL 1h
@   IN  SOA ns1 hostmaster (
            2024010101 ; serial
            7200 900 1209600 300 )
    IN  NS  ns1
    IN  NS  ns2.example.net.
    3600 IN MX 10 mail
@       ALIAS listener:https
ns1     A   192.0.2.1
www 300 IN  CNAME @
mail    A   192.0.2.2
        AAAA 2001:db8::2
txt     TXT "hello world" "with \"quotes\" and \\ and \059"
_sip._tcp SRV 10 5 5060 sip
caa     CAA 0 issue "letsencrypt.org"
*.wild  A   192.0.2.9
"#;

    fn zone() -> Zone {
        let mut z = Zone::new(&Name::from_ascii("example.com.").unwrap());
        parse_into(&mut z, FILE, 3600).unwrap();
        z
    }

    #[test]
    fn parses_the_syntax() {
        let z = zone();
        assert_eq!(z.serial(), 2024010101);
        z.validate().unwrap();
        let www = z
            .node(&Name::from_ascii("www.example.com.").unwrap())
            .unwrap();
        assert_eq!(www.sets[0].ttl, 300);
        let mail = z
            .node(&Name::from_ascii("mail.example.com.").unwrap())
            .unwrap();
        assert_eq!(
            mail.sets.len(),
            2,
            "blank owner continues the previous name"
        );
        let txt = z
            .node(&Name::from_ascii("txt.example.com.").unwrap())
            .unwrap();
        match &txt.sets[0].rdatas()[0] {
            RData::TXT(t) => {
                assert_eq!(t.txt_data[1].as_ref(), b"with \"quotes\" and \\ and ;");
            }
            other => panic!("{other:?}"),
        }
        assert!(z.node(&z.origin.clone()).unwrap().alias().is_some());
    }

    /// Exports `z` and asserts that the master file parses back to the same zone.
    fn assert_round_trips(z: &Zone) {
        let text = export(z);
        let mut again = Zone::new(&z.origin);
        parse_into(&mut again, &text, 3600).unwrap();
        assert_eq!(&again, z, "{text}");
    }

    /// A master file read in one go (sorted once, the tree built at once) gives the same zone as
    /// its records added one by one: duplicates dropped (names in data compared without case),
    /// a set's TTL the last record's, owners interleaved, cuts noted, ALIAS kept.
    #[test]
    fn read_in_one_go_equals_record_by_record() {
        let text = format!(
            "{FILE}\nb A 192.0.2.7\na 60 A 192.0.2.8\nb 120 A 192.0.2.7\nb A 192.0.2.6\n\
             c CNAME Target.Example.NET.\nsub NS ns.sub\nns.sub A 192.0.2.53\n\
             mx MX 10 Mail.example.com.\nmx MX 10 mail.EXAMPLE.com.\nA A 192.0.2.9\n"
        );
        let origin = Name::from_ascii("example.com.").unwrap();
        let mut bulk = Zone::new(&origin);
        parse_into(&mut bulk, &text, 3600).unwrap();
        let seed = Name::from_ascii("seed.example.com.").unwrap();
        let mut one_by_one = Zone::new(&origin);
        one_by_one.add(
            &seed,
            RecordType::A,
            1,
            RData::A("192.0.2.250".parse().unwrap()),
        );
        parse_into(&mut one_by_one, &text, 3600).unwrap();
        one_by_one.put(&seed, RecordType::A, 1, Vec::new());
        assert_eq!(bulk, one_by_one);
        let b = bulk
            .node(&Name::from_ascii("b.example.com.").unwrap())
            .unwrap();
        assert_eq!(
            (b.sets[0].ttl, b.sets[0].len()),
            (3600, 2),
            "the last record's TTL ($TTL 1h)"
        );
        let mx = bulk
            .node(&Name::from_ascii("mx.example.com.").unwrap())
            .unwrap();
        assert_eq!(mx.sets[0].len(), 1);
        assert!(bulk.cuts.contains(&crate::owner::Owner::new(
            &Name::from_ascii("sub.example.com.").unwrap()
        )));
    }

    #[test]
    fn data_without_a_wire_form_names_the_line() {
        let origin = Name::from_ascii("example.com.").unwrap();
        let mut z = Zone::new(&origin);
        let text = format!("{FILE}\nlong TXT \"{}\"\n", "x".repeat(300));
        let e = parse_into(&mut z, &text, 3600).unwrap_err();
        assert!(e.message.contains("wire format"), "{}", e.message);
        assert!(e.record.starts_with("long TXT"), "{}", e.record);
    }

    #[test]
    fn round_trips() {
        assert_round_trips(&zone());
    }

    #[test]
    fn escapes_round_trip() {
        // Found by the zone_file fuzz target: \DDD above 127 in TXT, and a `.` inside a label.
        let text = "txt TXT \"\\210\\176\\000x\" \"k\\\\\\141\"\nweird\\.label A 192.0.2.1\n";
        let origin = Name::from_ascii("example.com.").unwrap();
        let mut z = Zone::new(&origin);
        parse_into(&mut z, text, 300).unwrap();
        let txt = z
            .node(&Name::from_ascii("txt.example.com.").unwrap())
            .unwrap();
        match &txt.sets[0].rdatas()[0] {
            RData::TXT(t) => assert_eq!(t.txt_data[0].as_ref(), &[210, 176, 0, b'x']),
            other => panic!("{other:?}"),
        }
        assert_round_trips(&z);
    }

    #[test]
    fn caa_data_outside_ascii_is_refused_and_ascii_round_trips() {
        // Found by the zone_file fuzz target: UTF-8 in a CAA value did not survive export
        // and re-import.
        let mut z = Zone::new(&Name::from_ascii("example.test.").unwrap());
        let e = parse_into(&mut z, "caa CAA 0 issue EEE\u{4b0}w\n", 300).unwrap_err();
        assert!(e.to_string().contains("outside printable ASCII"), "{e}");
        let mut z = Zone::new(&Name::from_ascii("example.test.").unwrap());
        let e = parse_into(&mut z, "caa CAA 0 issue \"EEE\\210\\176w\"\n", 300).unwrap_err();
        assert!(e.to_string().contains("outside printable ASCII"), "{e}");
        let mut z = Zone::new(&Name::from_ascii("example.test.").unwrap());
        assert!(parse_into(&mut z, "caa CAA 2 cT \"\r\\\"$\"\n", 300).is_err());
        assert!(parse_into(&mut z, "caa CAA 9 \"\" \"0\"\n", 300).is_err());
        // ASCII with escapes does round trip.
        let mut z = Zone::new(&Name::from_ascii("example.test.").unwrap());
        let text = "caa CAA 0 issue \"ca.test; a=\\\"b\\\"\"\ncrit CAA 128 tbs \"x\"\n\
                    io CAA 0 iodef \"mailto:sec@example.test\"\n";
        parse_into(&mut z, text, 300).unwrap();
        assert_round_trips(&z);
    }

    #[test]
    fn names_outside_the_origin_export_escaped() {
        // Found by the zone_file fuzz target: an escaped `.` and UTF-8 in a name written
        // under another $ORIGIN.
        let mut z = Zone::new(&Name::from_ascii("example.test.").unwrap());
        let text = "$ORIGIN other.\ntx\u{57e}p\\..b\\.c TXT \"a\"\nm MX 10 a\\.b.elsewhere.\n";
        parse_into(&mut z, text, 300).unwrap();
        assert_round_trips(&z);
    }

    #[test]
    fn errors_name_the_line_and_record() {
        let mut z = Zone::new(&Name::from_ascii("example.com.").unwrap());
        let e = parse_into(&mut z, "$TTL 300\nok A 192.0.2.1\nbad A 300.1.1.1\n", 300).unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(e.record, "bad A 300.1.1.1");
        let e = parse_into(&mut z, "a TXT \"open\n", 300).unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.message.contains("unterminated"));
        let e = parse_into(&mut z, "a SOA ns h ( 1 2 3\n4\n", 300).unwrap_err();
        assert!(e.message.contains("never closed"), "{e}");
        let e = parse_into(&mut z, "a HINFO x y\n", 300).unwrap_err();
        assert!(e.message.contains("not supported"), "{e}");
    }

    const ROUTED: &str = r#"
$ORIGIN example.com.
@   3600 SOA ns1 hostmaster 1 7200 900 1209600 300
@   NS  ns1
ns1 A   192.0.2.53
w   60  A   192.0.2.1   ; portico: set_identifier=one routing=weighted weight=1
w   60  A   192.0.2.3   ; portico: set_identifier=three routing=weighted weight=3
w   60  A   192.0.2.4   ; portico: set_identifier=three routing=weighted weight=3
f   60  A   192.0.2.10  ; portico: set_identifier=main routing=failover failover=primary health=http://127.0.0.1:8080/health interval=1s healthy_threshold=2
f   60  A   192.0.2.20  ; portico: set_identifier=backup routing=failover failover=secondary
m   60  AAAA 2001:db8::1 ; portico: set_identifier=m1 routing=multivalue health=target_group:web
m   60  ALIAS listener:https ; portico: set_identifier=m2 routing=multivalue evaluate_target_health=true
t   60  TXT "v=1" ; portico: set_identifier=t1 routing=weighted weight=0
@   60  ALIAS listener:https ; portico: evaluate_target_health=true
"#;

    /// Record sets with a routing policy are read from their `; portico:` comments, gathered
    /// into sets by name, type and identifier, and written back the same way.
    #[test]
    fn routed_sets_read_and_round_trip() {
        use crate::routing::{Health, Policy, Role, RoutedData};
        let mut z = Zone::new(&Name::from_ascii("example.com.").unwrap());
        parse_into(&mut z, ROUTED, 300).unwrap();
        z.validate().unwrap();
        let node = |n: &str| z.node(&Name::from_ascii(n).unwrap()).unwrap();
        let w = node("w.example.com.");
        assert!(w.sets.is_empty(), "routed records are not plain sets");
        assert_eq!(w.routed().len(), 2);
        let three = w.routed().iter().find(|r| r.id == "three").unwrap();
        assert_eq!(three.policy, Policy::Weighted(3));
        match &three.data {
            RoutedData::Set(s) => assert_eq!(s.len(), 2),
            other => panic!("{other:?}"),
        }
        let f = node("f.example.com.");
        let main = f.routed().iter().find(|r| r.id == "main").unwrap();
        assert_eq!(main.policy, Policy::Failover(Role::Primary));
        match &main.health {
            Some(Health::Check(c)) => {
                assert_eq!(c.addr.to_string(), "127.0.0.1:8080");
                assert_eq!(c.path, "/health");
                assert_eq!(c.timing.interval_ms, 1000);
                assert_eq!(c.timing.healthy_threshold, 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(node("m.example.com.").routed().len(), 2);
        assert!(node("example.com.").alias().unwrap().evaluate_target_health);
        assert_eq!(z.routed.len(), 4);
        assert_round_trips(&z);
        // Another server reads the export as plain records (the comments are comments).
        let text = export(&z);
        assert!(
            text.contains("192.0.2.3\t; portico: set_identifier=three routing=weighted weight=3"),
            "{text}"
        );
    }

    #[test]
    fn routed_sets_that_cannot_work_are_refused_naming_the_set() {
        let base = "@ 3600 SOA ns1 hostmaster 1 7200 900 1209600 300\n@ NS ns1\n";
        let refused = |extra: &str| {
            let mut z = Zone::new(&Name::from_ascii("example.com.").unwrap());
            match parse_into(&mut z, &format!("{base}{extra}"), 300) {
                Err(e) => e.message,
                Ok(()) => z
                    .validate()
                    .map_err(|e| e.to_string())
                    .err()
                    .unwrap_or_else(|| panic!("accepted: {extra}")),
            }
        };
        let e = refused("w A 192.0.2.1 ; portico: set_identifier=a routing=weighted weight=1\nw A 192.0.2.2 ; portico: set_identifier=b routing=multivalue\n");
        assert!(e.contains("share one routing policy"), "{e}");
        let e = refused(
            "w A 192.0.2.1 ; portico: set_identifier=a routing=weighted weight=1\nw A 192.0.2.2\n",
        );
        assert!(e.contains("cannot share its name and type"), "{e}");
        let e = refused("f 3600 A 192.0.2.1 ; portico: set_identifier=a routing=failover failover=primary health=target_group:x\n");
        assert!(e.contains("TTL 3600 is above 300"), "{e}");
        let e = refused("f A 192.0.2.1 ; portico: set_identifier=a routing=failover failover=primary\nf A 192.0.2.2 ; portico: set_identifier=b routing=failover failover=primary\n");
        assert!(e.contains("one primary and one secondary"), "{e}");
        let e = refused("w A 192.0.2.1 ; portico: set_identifier=a routing=weighted\n");
        assert!(e.contains("needs a weight"), "{e}");
        let e = refused("w A 192.0.2.1 ; portico: routing=weighted weight=2\n");
        assert!(e.contains("needs a set_identifier"), "{e}");
        let e = refused("w A 192.0.2.1 ; portico: set_identifier=a routing=failover failover=primary health=http://app.example.com/health\n");
        assert!(e.contains("not an address with a port"), "{e}");
        let e = refused("@ NS ns2 ; portico: set_identifier=a routing=weighted weight=1\n");
        assert!(
            e.contains("cannot have a routing policy") || e.contains("share its name"),
            "{e}"
        );
    }
}
