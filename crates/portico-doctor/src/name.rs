//! Is the name one a CA issues for: characters, lengths, not an address, a public suffix; and
//! which addresses the internet cannot reach.

use std::net::IpAddr;

use crate::{finding, CaKind, Finding, Severity};

/// The name a CA is asked for: characters, lengths, not an IP address, under a public suffix
/// and not one itself (for a public CA).
pub fn check_name(domain: &str, ca: CaKind) -> Option<Finding> {
    let invalid = |why: String| {
        Some(finding(
            Severity::Fatal,
            "InvalidDomain",
            format!("{domain:?} {why}"),
            "ask for a fully qualified domain name such as app.example.com",
        ))
    };
    if domain.parse::<IpAddr>().is_ok() {
        return invalid("is an IP address: ACME CAs issue for names here (use a name)".into());
    }
    let base = domain.strip_prefix("*.").unwrap_or(domain);
    if base.len() > 253 {
        return invalid(format!("is {} characters long (at most 253)", base.len()));
    }
    let labels: Vec<&str> = base.split('.').collect();
    if labels.len() < 2 {
        return invalid("has a single label".into());
    }
    for l in &labels {
        if l.is_empty() || l.len() > 63 {
            return invalid(format!("has a label of {} characters (1 to 63)", l.len()));
        }
        if !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || l.starts_with('-')
            || l.ends_with('-')
        {
            return invalid(format!(
                "has the label {l:?}: letters, digits and inner hyphens only"
            ));
        }
    }
    if ca == CaKind::Private {
        return None;
    }
    match psl::suffix(base.as_bytes()) {
        Some(s) if s.is_known() => {
            if s.as_bytes() == base.as_bytes() {
                return invalid(format!(
                    "is a public suffix ({}): no CA issues for it",
                    String::from_utf8_lossy(s.as_bytes())
                ));
            }
            None
        }
        _ => Some(finding(
            Severity::Fatal,
            "InvalidDomain",
            format!(
                "{domain:?} is not under a public suffix (.{} is not a public top-level domain): a public CA cannot issue for it",
                labels.last().unwrap_or(&"")
            ),
            "a private name takes a certificate from Portico's internal CA: set issuer = \"internal\" on its [[certificate]] and run the doctor with --private-ca (or use a name under a public suffix)",
        )),
    }
}

/// Why an address cannot be reached from the internet, if it cannot.
pub fn reserved(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_private() {
                Some("a private address (RFC 1918)")
            } else if v4.is_link_local() {
                Some("a link-local address")
            } else if o[0] == 100 && (64..128).contains(&o[1]) {
                Some("a carrier-grade NAT address (RFC 6598)")
            } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || o[0] >= 240 {
                Some("not a unicast address")
            } else if v4.is_documentation() {
                Some("a documentation address (RFC 5737)")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("not a unicast address")
            } else if s[0] & 0xfe00 == 0xfc00 {
                Some("a unique local address")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if s[0] == 0x2001 && s[1] == 0xdb8 {
                Some("a documentation address (RFC 3849)")
            } else {
                None
            }
        }
    }
}
