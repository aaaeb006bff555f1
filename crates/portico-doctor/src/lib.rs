//! `portico doctor DOMAIN`: asks what a CA asks, from outside and before any order is placed, and
//! explains each answer as a finding with a severity, a stable name (Let's Debug's where one
//! exists), a one-line explanation and the fix.
//!
//! Every input is overridable so that each check runs offline against servers on loopback: the
//! resolver, the port authoritative nameservers are asked on, the HTTP/HTTPS ports, the roots
//! of trust, the CA's CAA identity and whether the CA is public.

pub mod dns;
pub mod web;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hickory_proto::rr::{Name, RData, RecordType};
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
    findings.extend(check_caa(resolver, &name, apex.as_ref(), wildcard, &opts.caa_identity).await);

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

/// Every authoritative nameserver of the zone asked directly: serials and answers compared.
async fn check_propagation(
    resolver: SocketAddr,
    ns_port: u16,
    name: &Name,
    apex: &Result<(Name, u32), String>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let (apex, negative_ttl) = match apex.clone() {
        Ok(z) => z,
        Err(e) => {
            out.push(finding(
                Severity::Error,
                "DNSLookupFailed",
                format!("cannot find the zone of {name}: {e}"),
                "check that the domain is delegated to nameservers that answer",
            ));
            return out;
        }
    };
    let servers = match dns::nameservers(resolver, &apex).await {
        Ok(s) => s,
        Err(e) => {
            out.push(finding(
                Severity::Error,
                "DNSLookupFailed",
                format!("cannot list the nameservers of {apex}: {e}"),
                "",
            ));
            return out;
        }
    };
    if servers.is_empty() {
        out.push(finding(
            Severity::Error,
            "NoNameservers",
            format!("the zone {apex} has no NS records"),
            "add NS records naming the zone's authoritative servers",
        ));
        return out;
    }
    // (nameserver, address) -> (serial, answer set, max ttl)
    let mut views: BTreeMap<String, (u32, BTreeSet<String>, u32)> = BTreeMap::new();
    let mut problems = Vec::new();
    for (ns, addrs) in servers {
        if addrs.is_empty() {
            problems.push(finding(
                Severity::Error,
                "NameserverUnresolvable",
                format!("nameserver {ns} of {apex} has no address"),
                "add A/AAAA records (glue) for the nameserver",
            ));
            continue;
        }
        for ip in addrs {
            let at = SocketAddr::new(ip, ns_port);
            let label = format!("{ns} ({at})");
            let soa = dns::query(at, &apex, RecordType::SOA, false).await;
            let serial = match soa {
                Ok(m) => m.answers.iter().find_map(|r| match &r.data {
                    RData::SOA(s) => Some(s.serial),
                    _ => None,
                }),
                Err(e) => {
                    problems.push(finding(
                        Severity::Error,
                        "NameserverUnreachable",
                        format!("{label} does not answer: {e}"),
                        "a CA may ask this server: fix it or remove it from the NS set",
                    ));
                    continue;
                }
            };
            let Some(serial) = serial else {
                problems.push(finding(
                    Severity::Error,
                    "NameserverNotAuthoritative",
                    format!("{label} does not serve the zone {apex} (no SOA)"),
                    "load the zone on this server (zone transfer from the primary) or remove it from the NS set",
                ));
                continue;
            };
            let mut answer = BTreeSet::new();
            let mut ttl = negative_ttl;
            for t in [RecordType::A, RecordType::AAAA] {
                if let Ok(m) = dns::query(at, name, t, false).await {
                    for r in &m.answers {
                        ttl = ttl.max(r.ttl);
                        match &r.data {
                            RData::A(a) => {
                                answer.insert(a.0.to_string());
                            }
                            RData::AAAA(a) => {
                                answer.insert(a.0.to_string());
                            }
                            RData::CNAME(c) => {
                                answer.insert(format!("CNAME {}", c.0));
                            }
                            _ => {}
                        }
                    }
                }
            }
            views.insert(label, (serial, answer, ttl));
        }
    }
    out.extend(problems);
    let serials: BTreeSet<u32> = views.values().map(|v| v.0).collect();
    let answers: BTreeSet<&BTreeSet<String>> = views.values().map(|v| &v.1).collect();
    if views.is_empty() {
        return out;
    }
    if serials.len() == 1 && answers.len() == 1 {
        out.push(finding(
            Severity::Ok,
            "Propagation",
            format!(
                "all {} nameserver address(es) of {apex} serve serial {} and the same answer for {name}",
                views.len(),
                serials.iter().next().unwrap_or(&0)
            ),
            "",
        ));
        return out;
    }
    let newest = serials.iter().max().copied().unwrap_or(0);
    // The answer the newest serial gives is the one being propagated.
    let target = views
        .values()
        .find(|v| v.0 == newest)
        .map(|v| v.1.clone())
        .unwrap_or_default();
    let ttl = views.values().map(|v| v.2).max().unwrap_or(0);
    let behind: Vec<String> = views
        .iter()
        .filter(|(_, v)| v.0 != newest || v.1 != target)
        .map(|(k, v)| {
            let has = if v.1.is_empty() {
                "no record".to_string()
            } else {
                v.1.iter().cloned().collect::<Vec<_>>().join(" ")
            };
            format!("{k} has serial {} and {has}", v.0)
        })
        .collect();
    let want = if target.is_empty() {
        "no record".to_string()
    } else {
        target.iter().cloned().collect::<Vec<_>>().join(" ")
    };
    out.push(finding(
        Severity::Error,
        "NameserversDisagree",
        format!(
            "not propagated: the newest serial {newest} answers {want} for {name}, but {}; resolvers may keep an old answer for up to {ttl} s after all agree",
            behind.join("; ")
        ),
        "wait for the secondaries to transfer the zone (check NOTIFY/AXFR from the primary), then for the TTL",
    ));
    out
}

/// RFC 8659: the closest CAA set climbing from the name to the top; does it let the CA issue?
async fn check_caa(
    resolver: SocketAddr,
    name: &Name,
    apex: Option<&Name>,
    wildcard: bool,
    ca: &str,
) -> Vec<Finding> {
    let mut at = name.clone();
    loop {
        let set = match dns::resolve(resolver, &at, RecordType::CAA).await {
            Ok(r) => r.records,
            // Above the zone, an authoritative server used as the resolver (offline, or a
            // resolver that only knows local zones) refuses: nothing more to climb there.
            Err(e) if e.contains("Refused") && apex.is_some_and(|a| !a.zone_of(&at)) => {
                return vec![finding(
                    Severity::Ok,
                    "CAA",
                    format!("no CAA records from {name} up to {} (the resolver does not answer above it): any CA may issue", apex.map(|a| a.to_string()).unwrap_or_default()),
                    "",
                )];
            }
            Err(e) => {
                return vec![finding(
                    Severity::Error,
                    "DNSLookupFailed",
                    format!("the CAA lookup for {at} failed: {e} (a CA refuses to issue when it cannot check CAA)"),
                    "make the nameservers answer CAA queries (NOERROR with no data is fine)",
                )]
            }
        };
        let caas: Vec<&hickory_proto::rr::rdata::CAA> = set
            .iter()
            .filter_map(|r| match &r.data {
                RData::CAA(c) => Some(c),
                _ => None,
            })
            .collect();
        if !caas.is_empty() {
            return vec![caa_verdict(&at, &caas, wildcard, ca)];
        }
        if at.num_labels() <= 1 {
            return vec![finding(
                Severity::Ok,
                "CAA",
                format!("no CAA records from {name} up to the top: any CA may issue"),
                "",
            )];
        }
        at = at.base_name();
    }
}

fn caa_verdict(
    at: &Name,
    caas: &[&hickory_proto::rr::rdata::CAA],
    wildcard: bool,
    ca: &str,
) -> Finding {
    for c in caas {
        let tag = c.tag.to_ascii_lowercase();
        if c.issuer_critical && !matches!(tag.as_str(), "issue" | "issuewild" | "iodef") {
            return finding(
                Severity::Error,
                "CAACriticalUnknown",
                format!("CAA at {at} has the critical flag on the unknown tag {:?}: every CA must refuse", c.tag),
                "remove the critical flag (128) or the record",
            );
        }
    }
    let values = |tag: &str| -> Vec<String> {
        caas.iter()
            .filter(|c| c.tag.eq_ignore_ascii_case(tag))
            .map(|c| {
                let v = String::from_utf8_lossy(&c.value).to_string();
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .collect()
    };
    let mut relevant = values("issue");
    let mut tag = "issue";
    if wildcard && !values("issuewild").is_empty() {
        relevant = values("issuewild");
        tag = "issuewild";
    }
    if relevant.is_empty() {
        return finding(
            Severity::Ok,
            "CAA",
            format!("CAA at {at} has no {tag} property: any CA may issue"),
            "",
        );
    }
    if relevant.iter().any(|v| v == &ca.to_ascii_lowercase()) {
        return finding(
            Severity::Ok,
            "CAA",
            format!("CAA at {at} lets {ca} issue"),
            "",
        );
    }
    let listed: Vec<String> = relevant
        .iter()
        .map(|v| {
            if v.is_empty() {
                "none (\";\")".to_string()
            } else {
                v.clone()
            }
        })
        .collect();
    finding(
        Severity::Error,
        "CAAIssuanceNotAllowed",
        format!(
            "CAA at {at} allows only {} to issue, not {ca}",
            listed.join(", ")
        ),
        &format!(
            "add `{} CAA 0 {tag} \"{ca}\"` (or use a CA the record names)",
            at
        ),
    )
}

/// Port 80 on every address, a random token path fetched through the real route.
async fn check_http01(
    resolver: SocketAddr,
    domain: &str,
    ips: &[IpAddr],
    ports: web::Ports,
) -> Vec<Finding> {
    let token: String = {
        use rand::Rng;
        rand::thread_rng()
            .sample_iter(&rand::distributions::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect()
    };
    let path = format!("/.well-known/acme-challenge/{token}");
    let resolve = move |host: String| -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Option<IpAddr>> + Send>,
    > {
        Box::pin(async move {
            let n = dns::fqdn(&host).ok()?;
            dns::resolve(resolver, &n, RecordType::A)
                .await
                .ok()?
                .ips()
                .first()
                .copied()
        })
    };
    let mut out = Vec::new();
    let mut statuses: BTreeMap<bool, BTreeSet<u16>> = BTreeMap::new();
    for ip in ips {
        let v6 = ip.is_ipv6();
        let fetch = web::fetch_http01(domain, *ip, &path, ports, &resolve).await;
        match fetch {
            web::Fetch::Answered { status, hops } => {
                statuses.entry(v6).or_default().insert(status);
                let route = if hops.len() > 1 {
                    format!(" after {} redirect(s) ending at {}", hops.len() - 1, hops.last().cloned().unwrap_or_default())
                } else {
                    String::new()
                };
                let (sev, note) = match status {
                    404 => (Severity::Ok, "reachable (404 for a random token, as expected)"),
                    200..=299 => (Severity::Ok, "reachable (the CA then compares the body with its token; Portico answers its own tokens before redirects)"),
                    _ => (Severity::Warning, "the CA needs a 200 with the token here: check that nothing in front (auth, WAF, an error page) answers this path"),
                };
                out.push(finding(
                    sev,
                    if v6 { "AAAAHTTP01" } else { "AHTTP01" },
                    format!("http://{domain}:{} through {ip} answered {status}{route}: {note}", ports.http),
                    "",
                ));
            }
            web::Fetch::Unreachable { addr, error } => out.push(finding(
                Severity::Error,
                if v6 { "AAAANotWorking" } else { "ANotWorking" },
                format!("port {} on {ip} cannot be reached ({addr}: {error}): HTTP-01 validation will fail", ports.http),
                if v6 {
                    "open the port on IPv6 too (the CA prefers IPv6), or remove the AAAA record"
                } else {
                    "open the port in the firewall / security group and make a listener serve it"
                },
            )),
            web::Fetch::BadRedirect { location, reason } => out.push(finding(
                Severity::Error,
                "BadRedirect",
                format!("through {ip}, the challenge path redirects to {location}: {reason}"),
                "serve /.well-known/acme-challenge/ before redirects (Portico does), or redirect to http/https on the standard ports",
            )),
        }
    }
    if let (Some(v4), Some(v6)) = (statuses.get(&false), statuses.get(&true)) {
        if v4 != v6 {
            out.push(finding(
                Severity::Warning,
                "IPv4AndIPv6Different",
                format!("IPv4 answered {v4:?} but IPv6 answered {v6:?}: the CA uses IPv6 when there is a AAAA record"),
                "make both addresses reach the same server",
            ));
        }
    }
    out
}

/// The HTTPS listener: handshake, chain, name, expiry, ALPN.
async fn check_https(domain: &str, ips: &[IpAddr], opts: &Options) -> Vec<Finding> {
    let roots = match load_roots(opts.roots.as_ref()) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            return vec![finding(
                Severity::Error,
                "RootsUnreadable",
                e,
                "pass a PEM file with --ca-roots",
            )]
        }
    };
    let mut out = Vec::new();
    for ip in ips {
        let addr = SocketAddr::new(*ip, opts.ports.https);
        match web::handshake(domain, addr, roots.clone()).await {
            Err(e) if e.contains("refused") || e.contains("within") => out.push(finding(
                Severity::Warning,
                "HTTPSNotWorking",
                format!("nothing serves HTTPS on {addr}: {e}"),
                "not needed to get a certificate with http-01 or dns-01, but needed to serve it: add an HTTPS listener",
            )),
            Err(e) => out.push(finding(
                Severity::Error,
                "TLSHandshakeFailed",
                format!("TLS with {addr} for {domain} failed: {e}"),
                "check that the HTTPS listener has a certificate for this name (SNI)",
            )),
            Ok(served) => out.push(https_verdict(domain, addr, &served)),
        }
    }
    out
}

fn https_verdict(domain: &str, addr: SocketAddr, s: &web::Served) -> Finding {
    let parsed = x509_parser::parse_x509_certificate(&s.leaf).ok();
    let (not_before, not_after, issuer) = parsed
        .as_ref()
        .map(|(_, c)| {
            (
                c.validity().not_before.timestamp(),
                c.validity().not_after.timestamp(),
                c.issuer().to_string(),
            )
        })
        .unwrap_or((0, 0, "?".into()));
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = (not_after - now) as f64 / 86_400.0;
    let alpn = s.alpn.as_deref().unwrap_or("none");
    match &s.verdict {
        Ok(()) => {
            let life = (not_after - not_before).max(1) as f64;
            let left = (not_after - now) as f64 / life;
            if left < 0.25 {
                finding(
                    Severity::Warning,
                    "CertificateExpiresSoon",
                    format!("{addr} serves a valid certificate for {domain} that expires in {days:.1} days (issuer {issuer}); it should have been renewed"),
                    "check the renewal: `portico certs show NAME` names the last error",
                )
            } else {
                finding(
                    Severity::Ok,
                    "HTTPS",
                    format!("{addr} serves a valid certificate for {domain}, {days:.0} days left, issuer {issuer}, {}, ALPN {alpn}", s.version),
                    "",
                )
            }
        }
        Err(rustls::Error::InvalidCertificate(e)) => {
            use rustls::CertificateError as C;
            match e {
                C::Expired | C::ExpiredContext { .. } => finding(
                    Severity::Error,
                    "CertificateExpired",
                    format!("{addr} serves a certificate for {domain} that expired {:.1} days ago (issuer {issuer})", -days),
                    "renew it (`portico certs list` shows why it was not), or fix the clock",
                ),
                C::NotValidForName | C::NotValidForNameContext { .. } => finding(
                    Severity::Error,
                    "CertificateNameMismatch",
                    format!("{addr} serves a certificate that does not cover {domain} (issuer {issuer})"),
                    "add the name to the certificate's domains and the certificate to the listener",
                ),
                C::UnknownIssuer => finding(
                    Severity::Error,
                    "CertificateUntrusted",
                    format!("{addr} serves a certificate for {domain} from an issuer clients do not trust ({issuer})"),
                    "serve the full chain (fullchain.pem), or for a private CA pass its root with --ca-roots",
                ),
                other => finding(
                    Severity::Error,
                    "CertificateInvalid",
                    format!("{addr} serves an invalid certificate for {domain}: {other:?}"),
                    "",
                ),
            }
        }
        Err(other) => finding(
            Severity::Error,
            "CertificateInvalid",
            format!("{addr}: {other}"),
            "",
        ),
    }
}

fn load_roots(path: Option<&PathBuf>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    match path {
        Some(p) => {
            use rustls_pki_types::pem::PemObject;
            for c in rustls_pki_types::CertificateDer::pem_file_iter(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
            {
                let c = c.map_err(|e| format!("{}: {e}", p.display()))?;
                roots.add(c).map_err(|e| format!("{}: {e}", p.display()))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    Ok(roots)
}

/// DNS-01: the zone (or the `_acme-challenge` CNAME's target) is one this Portico hosts.
async fn check_dns01(
    resolver: SocketAddr,
    name: &Name,
    wildcard: bool,
    hosted: &[String],
) -> Finding {
    let hosted: Vec<Name> = hosted.iter().filter_map(|z| dns::fqdn(z).ok()).collect();
    let challenge = match Name::from_ascii("_acme-challenge").and_then(|l| l.append_name(name)) {
        Ok(n) => n,
        Err(e) => {
            return finding(Severity::Error, "DNS01", e.to_string(), "");
        }
    };
    let target = match dns::resolve(resolver, &challenge, RecordType::CNAME).await {
        Ok(r) => r.records.iter().find_map(|r| match &r.data {
            RData::CNAME(c) => Some(c.0.clone()),
            _ => None,
        }),
        Err(_) => None,
    };
    let written = target.clone().unwrap_or_else(|| challenge.clone());
    if let Some(zone) = hosted.iter().find(|z| z.zone_of(&written)) {
        let how = match &target {
            Some(t) => format!("{challenge} is a CNAME to {t}, in"),
            None => format!("{challenge} is in"),
        };
        return finding(
            Severity::Ok,
            "DNS01Ready",
            format!("{how} the hosted zone {zone}: dns-01 can write its TXT record there"),
            "",
        );
    }
    let (sev, fix) = if wildcard {
        (
            Severity::Error,
            "host the zone in Portico, or add a CNAME `_acme-challenge.<name>` to a name in a Portico zone, or use dns_server/dns_key (RFC 2136)",
        )
    } else {
        (Severity::Ok, "")
    };
    let where_ = match &target {
        Some(t) => format!("{challenge} is a CNAME to {t}, which"),
        None => format!("{challenge}"),
    };
    finding(
        sev,
        if wildcard { "DNS01NotReady" } else { "DNS01" },
        format!(
            "{where_} is not in a zone this Portico hosts{}",
            if wildcard {
                ": a wildcard needs dns-01"
            } else {
                ": dns-01 needs RFC 2136 (dns_server) there; http-01 does not need it"
            }
        ),
        fix,
    )
}

/// Let's Encrypt's published limits against Portico's own issuance history (the archive):
/// 50 certificates per registered domain per 7 days; 5 per exact set of names per 7 days.
pub fn check_rate_limits(domain: &str, state_dir: &std::path::Path, now: SystemTime) -> Finding {
    let registered = psl::domain_str(domain).unwrap_or(domain).to_string();
    let week = Duration::from_secs(7 * 86_400);
    let since = now
        .checked_sub(week)
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut per_domain = 0;
    let mut exact: BTreeMap<BTreeSet<String>, usize> = BTreeMap::new();
    let archive = state_dir.join("certificates").join("archive");
    for lineage in std::fs::read_dir(&archive).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(lineage.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let fname = f.file_name().to_string_lossy().to_string();
            if !(fname.starts_with("cert") && fname.ends_with(".pem")) {
                continue;
            }
            let Some((nb, names)) = cert_names(&f.path()) else {
                continue;
            };
            if nb < since {
                continue;
            }
            let under = |n: &String| {
                let n = n.trim_start_matches("*.");
                n == registered || n.ends_with(&format!(".{registered}"))
            };
            if names.iter().any(under) {
                per_domain += 1;
                *exact.entry(names).or_default() += 1;
            }
        }
    }
    let this: usize = exact
        .iter()
        .filter(|(k, _)| k.contains(domain))
        .map(|(_, v)| *v)
        .max()
        .unwrap_or(0);
    if per_domain >= 50 || this >= 5 {
        return finding(
            Severity::Error,
            "RateLimit",
            format!("Portico issued {per_domain} certificates for {registered} in the last 7 days (limit 50) and {this} for the same names (limit 5): Let's Encrypt will refuse new orders"),
            "wait for the window to pass, use letsencrypt-staging for tests, or renew within the ARI window (exempt)",
        );
    }
    let sev = if per_domain >= 40 || this >= 4 {
        Severity::Warning
    } else {
        Severity::Ok
    };
    finding(
        sev,
        "RateLimit",
        format!("{per_domain} certificates for {registered} in the last 7 days (limit 50), {this} for the same names (limit 5)"),
        "",
    )
}

fn cert_names(path: &std::path::Path) -> Option<(i64, BTreeSet<String>)> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .ok()?
        .next()?
        .ok()?;
    let (_, c) = x509_parser::parse_x509_certificate(&der).ok()?;
    let names = c
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    x509_parser::extensions::GeneralName::DNSName(n) => {
                        Some(n.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some((c.validity().not_before.timestamp(), names))
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
        let later = now + Duration::from_secs(8 * 86_400);
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
