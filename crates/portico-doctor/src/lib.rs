//! `portico doctor DOMAIN`: asks what a CA asks, from outside and before any order is placed, and
//! explains each answer as a finding with a severity, a stable name (Let's Debug's where one
//! exists), a one-line explanation and the fix.
//!
//! Every input is overridable so that each check runs offline against servers on loopback: the
//! resolver, the port authoritative nameservers are asked on, the HTTP/HTTPS ports, the roots
//! of trust, the CA's CAA identity and whether the CA is public.

mod caa;
pub mod dns;
mod dns01;
mod http;
mod name;
mod propagation;
mod rate_limits;
pub mod web;

use caa::check_caa;
use dns01::check_dns01;
use http::{check_http01, check_https};
pub use name::{check_name, reserved};
use propagation::check_propagation;
pub use rate_limits::check_rate_limits;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::SystemTime;

use hickory_proto::rr::{Name, RecordType};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Ok,
}

impl Severity {
    pub fn label(self) -> &'static str {
        match self {
            Severity::Fatal => "FATAL",
            Severity::Error => "ERROR",
            Severity::Warning => "WARNING",
            Severity::Ok => "OK",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub name: &'static str,
    pub explanation: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

fn finding(severity: Severity, name: &'static str, explanation: String, fix: &str) -> Finding {
    Finding {
        severity,
        name,
        explanation,
        fix: fix.to_string(),
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub domain: String,
    pub findings: Vec<Finding>,
}

impl Report {
    /// FATAL or ERROR present: the CA would refuse, or the certificate could not be served.
    pub fn failed(&self) -> bool {
        self.findings
            .iter()
            .any(|f| matches!(f.severity, Severity::Fatal | Severity::Error))
    }

    pub fn text(&self) -> String {
        let mut out = format!("portico doctor {}\n", self.domain);
        let width = self
            .findings
            .iter()
            .map(|f| f.name.len())
            .max()
            .unwrap_or(0);
        for f in &self.findings {
            out.push_str(&format!(
                "{:<8} {:<width$}  {}\n",
                f.severity.label(),
                f.name,
                f.explanation
            ));
            if !f.fix.is_empty() {
                out.push_str(&format!("{:<8} {:<width$}  fix: {}\n", "", "", f.fix));
            }
        }
        let count = |s: Severity| self.findings.iter().filter(|f| f.severity == s).count();
        out.push_str(&format!(
            "result: {} fatal, {} error, {} warning, {} ok — {}\n",
            count(Severity::Fatal),
            count(Severity::Error),
            count(Severity::Warning),
            count(Severity::Ok),
            if self.failed() {
                "fix the FATAL and ERROR findings before ordering"
            } else {
                "a CA should be able to validate this name"
            }
        ));
        out
    }
}

/// What the CA is, as far as the checks care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaKind {
    /// On the internet (Let's Encrypt): private addresses and private names cannot validate.
    Public,
    /// On your network (Pebble, an internal CA): loopback and private addresses are fine.
    Private,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub domain: String,
    /// A resolver to ask (recursion desired); default: the first of /etc/resolv.conf.
    pub resolver: Option<SocketAddr>,
    /// The port authoritative nameservers are asked on (53).
    pub ns_port: u16,
    pub ports: web::Ports,
    /// Roots of trust for the HTTPS check; default: the system's.
    pub roots: Option<PathBuf>,
    /// The CA's CAA issuer domain (RFC 8659), e.g. `letsencrypt.org`.
    pub caa_identity: String,
    pub ca: CaKind,
    /// Zones this Portico hosts (for DNS-01 readiness).
    pub hosted_zones: Vec<String>,
    /// Portico's state directory (for its own issuance history).
    pub state_dir: Option<PathBuf>,
    /// The ACME account URL orders come from, checked against CAA `accounturi` (RFC 8657).
    pub account_uri: Option<String>,
    /// The challenge method orders use, checked against CAA `validationmethods`.
    pub method: Option<String>,
}

impl Options {
    pub fn new(domain: &str) -> Options {
        Options {
            domain: domain.to_string(),
            resolver: None,
            ns_port: 53,
            ports: web::Ports {
                http: 80,
                https: 443,
            },
            roots: None,
            caa_identity: "letsencrypt.org".into(),
            ca: CaKind::Public,
            hosted_zones: Vec::new(),
            state_dir: None,
            account_uri: None,
            method: None,
        }
    }
}

/// Runs every check and returns the findings, worst first within each check's order.
pub async fn run(opts: &Options) -> Report {
    let mut findings = Vec::new();
    let domain = opts
        .domain
        .trim()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let report = |findings| Report {
        domain: domain.clone(),
        findings,
    };
    if let Ok(ip) = domain.parse::<IpAddr>() {
        return report(check_address(ip, opts).await);
    }
    let wildcard = domain.starts_with("*.");
    let base = domain.trim_start_matches("*.").to_string();
    if let Some(f) = check_name(&domain, opts.ca) {
        let fatal = f.severity == Severity::Fatal;
        findings.push(f);
        // A private name is well formed, only not for a public CA: the checks that do not
        // depend on one (resolution, propagation, the HTTP-01 path, HTTPS) still run.
        let private_name = check_name(&domain, CaKind::Private).is_none();
        if fatal && !private_name {
            return report(findings);
        }
    }
    let resolver = opts.resolver.unwrap_or_else(dns::system_resolver);
    let Ok(name) = dns::fqdn(&base) else {
        return report(findings);
    };

    // The name resolves.
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut chain = Vec::new();
    let mut lookup_failed = None;
    for t in [RecordType::A, RecordType::AAAA] {
        match dns::resolve(resolver, &name, t).await {
            Ok(r) => {
                if chain.is_empty() {
                    chain = r.chain.clone();
                }
                ips.extend(r.ips());
            }
            Err(e) => lookup_failed = Some(e),
        }
    }
    if ips.is_empty() {
        if let Some(e) = lookup_failed {
            findings.push(finding(
                Severity::Fatal,
                "DNSLookupFailed",
                format!("{base} could not be resolved through {resolver}: {e}"),
                "check that the zone's nameservers answer (or pass --resolver ADDR)",
            ));
        } else {
            findings.push(finding(
                Severity::Fatal,
                "NoRecords",
                format!("{base} has no A or AAAA record (asked {resolver}){}", via(&chain)),
                "add an A (or AAAA) record pointing at the server, or an ALIAS to a Portico listener",
            ));
        }
    } else {
        findings.push(finding(
            Severity::Ok,
            "Resolves",
            format!("{base} resolves to {}{}", join(&ips), via(&chain)),
            "",
        ));
        for ip in &ips {
            if let Some(why) = reserved(*ip) {
                findings.push(match opts.ca {
                    CaKind::Public => finding(
                        Severity::Fatal,
                        "ReservedAddress",
                        format!("{base} resolves to {ip}, {why}: a public CA cannot reach it"),
                        "point the record at the server's public address",
                    ),
                    CaKind::Private => finding(
                        Severity::Ok,
                        "ReservedAddress",
                        format!("{ip} is {why}; fine for a private CA on this network"),
                        "",
                    ),
                });
            }
        }
    }

    // Propagation to every authoritative nameserver.
    let apex = dns::zone_apex(resolver, &name).await;
    findings.extend(check_propagation(resolver, opts.ns_port, &name, &apex).await);

    // CAA.
    let apex = apex.ok().map(|a| a.0);
    let hosted = opts.hosted_zones.iter().any(|z| {
        let z = z.trim_end_matches('.').to_ascii_lowercase();
        base == z || base.ends_with(&format!(".{z}"))
    });
    let who = caa::Issuing {
        ca: &opts.caa_identity,
        account: opts.account_uri.as_deref(),
        method: opts.method.as_deref(),
        // Only where Portico orders for the name with an account of its own (a config with
        // its certificate), so that there is an account to lock to.
        expect_lock: hosted && opts.state_dir.is_some() && opts.account_uri.is_some(),
    };
    findings.extend(check_caa(resolver, &name, apex.as_ref(), wildcard, &who).await);

    // HTTP-01 and HTTPS, per address.
    if wildcard {
        findings.push(finding(
            Severity::Ok,
            "WildcardHTTP01",
            format!(
                "{domain} is a wildcard: only dns-01 can validate it, so port 80 is not checked"
            ),
            "",
        ));
    } else if !ips.is_empty() {
        findings.extend(check_http01(resolver, &base, &ips, opts.ports).await);
        findings.extend(check_https(&base, &ips, opts).await);
    }

    findings.push(check_dns01(resolver, &name, wildcard, &opts.hosted_zones).await);
    if opts.ca == CaKind::Public {
        if let Some(dir) = &opts.state_dir {
            findings.push(check_rate_limits(&base, dir, SystemTime::now()));
        }
    }
    report(findings)
}

/// An IP-address certificate (RFC 8738): no DNS and no CAA are involved; the CA connects to
/// the address itself (port 80 for http-01, 443 for tls-alpn-01), which a public CA reaches
/// only when it is publicly routable.
async fn check_address(ip: IpAddr, opts: &Options) -> Vec<Finding> {
    let mut findings = vec![finding(
        Severity::Ok,
        "IPAddress",
        format!("{ip} is an IP address: its certificate is validated by http-01 or tls-alpn-01 on the address itself (no DNS, no CAA, no dns-01); Let's Encrypt issues it in the shortlived profile (6 days)"),
        "",
    )];
    if let Some(why) = reserved(ip) {
        findings.push(match opts.ca {
            CaKind::Public => finding(
                Severity::Fatal,
                "ReservedAddress",
                format!("{ip} is {why}: a public CA cannot reach it, and issues only for publicly routable addresses"),
                "use the server's public address (an Elastic IP, say), or --private-ca for a CA on this network",
            ),
            CaKind::Private => finding(
                Severity::Ok,
                "ReservedAddress",
                format!("{ip} is {why}; fine for a private CA on this network"),
                "",
            ),
        });
        if opts.ca == CaKind::Public {
            return findings;
        }
    }
    let resolver = opts.resolver.unwrap_or_else(dns::system_resolver);
    let host = ip.to_string();
    findings.extend(check_http01(resolver, &host, &[ip], opts.ports).await);
    findings.extend(check_https(&host, &[ip], opts).await);
    findings
}

fn via(chain: &[Name]) -> String {
    if chain.is_empty() {
        String::new()
    } else {
        format!(
            " via CNAME {}",
            chain
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" -> ")
        )
    }
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_public_ca_refuses() {
        let bad = |d: &str| check_name(d, CaKind::Public).map(|f| f.name);
        assert_eq!(bad("app.example.com"), None);
        assert_eq!(bad("*.example.com"), None);
        assert_eq!(bad("192.0.2.1"), Some("InvalidDomain"));
        assert_eq!(bad("localhost"), Some("InvalidDomain"));
        assert_eq!(bad("app.example.test"), Some("InvalidDomain"));
        assert_eq!(bad("co.uk"), Some("InvalidDomain"));
        assert_eq!(bad("under_score.example.com"), Some("InvalidDomain"));
        assert_eq!(
            bad(&format!("{}.example.com", "a".repeat(64))),
            Some("InvalidDomain")
        );
        // A private CA signs private names.
        assert_eq!(
            check_name("app.example.test", CaKind::Private).map(|f| f.name),
            None
        );
    }

    #[test]
    fn rate_limits_from_the_archive() {
        let dir = std::env::temp_dir().join(format!("portico-doctor-rl-{}", std::process::id()));
        let lineage = dir.join("certificates/archive/app");
        std::fs::create_dir_all(&lineage).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let write = |n: usize| {
            let mut p = rcgen::CertificateParams::new(vec!["app.example.com".to_string()]).unwrap();
            p.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
            let c = p.self_signed(&key).unwrap();
            std::fs::write(lineage.join(format!("cert{n}.pem")), c.pem()).unwrap();
        };
        for n in 1..=3 {
            write(n);
        }
        let now = SystemTime::now();
        let f = check_rate_limits("app.example.com", &dir, now);
        assert_eq!((f.severity, f.name), (Severity::Ok, "RateLimit"), "{f:?}");
        assert!(
            f.explanation.contains("3 certificates for example.com"),
            "{f:?}"
        );
        for n in 4..=5 {
            write(n);
        }
        let f = check_rate_limits("app.example.com", &dir, now);
        assert_eq!(f.severity, Severity::Error, "{f:?}");
        // A week later they no longer count.
        let later = now + std::time::Duration::from_secs(8 * 86_400);
        assert_eq!(
            check_rate_limits("app.example.com", &dir, later).severity,
            Severity::Ok
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reserved_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(reserved(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in ["1.1.1.1", "2606:4700::1111"] {
            assert!(reserved(ip.parse().unwrap()).is_none(), "{ip}");
        }
    }
}
