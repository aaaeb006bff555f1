//! The snapshot: everything serving needs, validated and compiled once, immutable afterwards.
//!
//! [`Snapshot::build`] is the whole of validation: it either returns a snapshot plus the imported
//! certificates to publish, or every problem it found, each naming its TOML path. A reload builds a
//! new snapshot beside the serving one and swaps it in only when the build succeeded.
//!
//! About 600 lines on purpose: every rule the load balancer's config must satisfy is checked in
//! this one pass, so that a reload either builds a whole snapshot or names every problem.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ipnet::IpNet;

use crate::access_log::AccessLog;
use crate::action::{Action, FixedResponse, Forward, Redirect};
use crate::config::*;
use crate::rate_limit::{KeySource, RateLimiter};
use crate::rule::{Glob, Rule};
use crate::target_group::health_check::{self, Matcher};
use crate::target_group::{HealthCheck, Stickiness, Target, TargetGroup, TargetRegistry};
use crate::tls::{self, CertStore, ListenerResolver, ServedCert};
use crate::transform::{HeaderRewrite, Rewrite};
use crate::upstream::client;
use portico_config::{path, ConfigIssue, PathSeg};

/// An immutable, validated view of the load balancer's configuration.
#[derive(Debug)]
pub struct Snapshot {
    pub listeners: Vec<Arc<Listener>>,
    pub target_groups: HashMap<String, Arc<TargetGroup>>,
}

/// A compiled listener.
#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub binds: Vec<SocketAddr>,
    pub protocol: Protocol,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub resolver: Option<Arc<ListenerResolver>>,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub response_headers: HeaderRewrite,
    pub request_headers: HeaderRewrite,
    pub compress: Option<crate::compress::Compress>,
    /// PROXY protocol: the sources whose header is read; `None` when off.
    pub proxy_protocol_from: Option<Vec<IpNet>>,
    /// Sorted by priority, lowest first.
    pub rules: Vec<Rule>,
    pub default_action: Action,
    pub access_log: Option<AccessLog>,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// Plain HTTP only: HTTP/2 with prior knowledge accepted beside HTTP/1.1.
    pub h2c: bool,
}

impl Listener {
    /// Does a connection from `ip` carry a PROXY protocol header to read?
    pub fn proxy_trusted(&self, ip: std::net::IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.proxy_protocol_from
            .as_ref()
            .is_some_and(|nets| nets.iter().any(|n| n.contains(&ip)))
    }

    /// Security-group check at accept: `deny` wins; a non-empty `allow` must contain the source.
    /// With PROXY protocol, a trusted balancer is admitted here and the check applies to the
    /// client address its header names.
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        let ip = canonical_ip(ip);
        !self.deny.iter().any(|n| n.contains(&ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
    }
}

/// IPv4-mapped IPv6 sources (from a dual-stack socket) compare as IPv4.
pub fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// What a successful build yields besides the snapshot: imported certificates to publish.
pub struct Built {
    pub snapshot: Snapshot,
    pub imported: Vec<(String, ServedCert)>,
}

impl Snapshot {
    /// Validates and compiles `config`. Relative file names resolve against `base_dir`.
    /// `extra_certs` names certificates that another part (the certificate manager) will publish.
    pub fn build(
        config: &LbConfig,
        base_dir: &Path,
        store: &Arc<CertStore>,
        registry: &TargetRegistry,
        extra_certs: &HashSet<String>,
    ) -> Result<Built, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let imported = certificates(config, base_dir, extra_certs, &mut issues);
        let mut cert_names: HashSet<String> = extra_certs.clone();
        cert_names.extend(config.certificates.iter().map(|c| c.name.clone()));

        let mut target_groups = HashMap::new();
        // Groups whose own errors are reported: a listener forwarding to one is not told again
        // that no such group exists.
        let mut invalid_groups = HashSet::new();
        for (i, tg) in config.target_groups.iter().enumerate() {
            let at = |k: &str| path!["target_group", i, k];
            if target_groups.contains_key(&tg.name) {
                issues.push(ConfigIssue::new(
                    at("name"),
                    format!("target group {:?} is defined twice", tg.name),
                ));
                continue;
            }
            match target_group(tg, i, base_dir, registry, &mut issues) {
                Some(g) => {
                    target_groups.insert(tg.name.clone(), Arc::new(g));
                }
                None => {
                    invalid_groups.insert(tg.name.clone());
                }
            }
        }

        let mut listeners = Vec::new();
        let mut seen_names = HashSet::new();
        let mut seen_binds = HashMap::new();
        for (i, l) in config.listeners.iter().enumerate() {
            if !seen_names.insert(l.name.clone()) {
                issues.push(ConfigIssue::new(
                    path!["listener", i, "name"],
                    format!("listener {:?} is defined twice", l.name),
                ));
            }
            let ctx = ListenerCtx {
                index: i,
                groups: &Groups {
                    built: &target_groups,
                    invalid: &invalid_groups,
                },
                cert_names: &cert_names,
                store,
                base_dir,
            };
            if let Some(listener) = listener(l, &ctx, &mut issues) {
                // Port 0 asks the kernel for a free port: never a clash.
                for b in listener.binds.iter().filter(|b| b.port() != 0) {
                    if let Some(other) = seen_binds.insert(*b, l.name.clone()) {
                        issues.push(
                            ConfigIssue::new(
                                path!["listener", i, "bind"],
                                format!("{b} is already bound by listener {other:?}"),
                            )
                            .hint("give each listener its own address or port"),
                        );
                    }
                }
                listeners.push(Arc::new(listener));
            }
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Built {
            snapshot: Snapshot {
                listeners,
                target_groups,
            },
            imported,
        })
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.listeners.iter().find(|l| l.name == name)
    }
}

fn certificates(
    config: &LbConfig,
    base_dir: &Path,
    extra: &HashSet<String>,
    issues: &mut Vec<ConfigIssue>,
) -> Vec<(String, ServedCert)> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, c) in config.certificates.iter().enumerate() {
        if !seen.insert(&c.name) {
            issues.push(ConfigIssue::new(
                path!["certificate", i, "name"],
                format!("certificate {:?} is defined twice", c.name),
            ));
            continue;
        }
        match (&c.cert_file, &c.key_file) {
            (Some(cert), Some(key)) => {
                match tls::load_pem_files(&base_dir.join(cert), &base_dir.join(key)) {
                    Ok(served) => out.push((c.name.clone(), served)),
                    Err(e) => issues.push(
                        ConfigIssue::new(path!["certificate", i, "cert_file"], e.to_string())
                            .hint("cert_file is a PEM chain (leaf first), key_file its PEM private key"),
                    ),
                }
            }
            (Some(_), None) | (None, Some(_)) => issues.push(ConfigIssue::new(
                path!["certificate", i],
                "an imported certificate needs both cert_file and key_file",
            )),
            (None, None) if !extra.contains(&c.name) => issues.push(
                ConfigIssue::new(
                    path!["certificate", i],
                    format!("certificate {:?} has no cert_file/key_file", c.name),
                )
                .hint("import one with cert_file and key_file, or request one with domains and issuer"),
            ),
            (None, None) => {}
        }
    }
    out
}

fn target_group(
    tg: &TargetGroupConfig,
    i: usize,
    base_dir: &Path,
    registry: &TargetRegistry,
    issues: &mut Vec<ConfigIssue>,
) -> Option<TargetGroup> {
    let before = issues.len();
    let group_served = registry.knows_group(&tg.name);
    let https = tg.protocol == TargetProtocol::Https;
    let grpc = tg.protocol_version == ProtocolVersion::Grpc;
    let h2 = tg.protocol_version != ProtocolVersion::Http1;
    let tls = https
        .then(|| {
            let ca = tg.ca_file.as_ref().map(|c| base_dir.join(c));
            client::tls_config(ca.as_deref(), tg.verify, h2)
                .map_err(|e| {
                    issues.push(
                        ConfigIssue::new(path!["target_group", i, "ca_file"], e)
                            .hint("a PEM file with the CA certificates that sign the targets' certificates"),
                    )
                })
                .ok()
        })
        .flatten();
    if https && !tg.verify {
        tracing::warn!(target_group = %tg.name, "verify = false: the targets' certificates are not checked");
    }
    if !https {
        for (k, set) in [
            ("ca_file", tg.ca_file.is_some()),
            ("server_name", tg.server_name.is_some()),
            ("verify", !tg.verify),
        ] {
            if set {
                issues.push(
                    ConfigIssue::new(
                        path!["target_group", i, k],
                        format!("{k} is for https target groups"),
                    )
                    .hint("add protocol = \"https\""),
                );
            }
        }
    }
    let server_name = tg.server_name.as_ref().and_then(|n| {
        rustls::pki_types::ServerName::try_from(n.clone())
            .map_err(|_| {
                issues.push(ConfigIssue::new(
                    path!["target_group", i, "server_name"],
                    format!("{n:?} is not a DNS name or IP address"),
                ))
            })
            .ok()
    });
    let transport = (https || h2).then(|| {
        Arc::new(client::Transport {
            tls: tls.clone(),
            server_name: server_name.clone(),
            h2,
            grpc,
        })
    });
    let mut targets = Vec::new();
    for (j, t) in tg.targets.iter().enumerate() {
        let at = path!["target_group", i, "targets", j];
        let addr = match resolve(t.address()) {
            Ok(a) => a,
            Err(e) => {
                issues.push(ConfigIssue::new(at, e).hint("write a target as \"host:port\""));
                continue;
            }
        };
        if !(1..=1000).contains(&t.weight()) {
            issues.push(ConfigIssue::new(at, "weight must be between 1 and 1000"));
            continue;
        }
        if targets.iter().any(|x: &Target| x.addr == addr) {
            issues.push(ConfigIssue::new(
                at,
                format!("target {addr} is listed twice"),
            ));
            continue;
        }
        targets.push(Target {
            addr,
            weight: t.weight(),
            state: registry.state(&tg.name, addr, group_served),
            id: crate::target_group::sticky::target_id(&tg.name, addr),
            tls_name: https.then(|| tls_name(t.address(), addr, &server_name)),
        });
    }
    let health_check = tg.health_check.as_ref().and_then(|h| {
        let at = |k: &str| path!["target_group", i, "health_check", k];
        let protocol = h.protocol.unwrap_or(if https {
            HealthCheckProtocol::Https
        } else {
            HealthCheckProtocol::Http
        });
        let matcher = if grpc {
            Matcher::parse_grpc(h.matcher.as_deref().unwrap_or("0")).map_err(|e| {
                issues.push(
                    ConfigIssue::new(at("matcher"), e)
                        .hint("gRPC status codes, e.g. \"0\" or \"0-2,12\""),
                )
            })
        } else {
            Matcher::parse(h.matcher.as_deref().unwrap_or("200")).map_err(|e| {
                issues.push(ConfigIssue::new(at("matcher"), e).hint("e.g. \"200\" or \"200-399\""))
            })
        }
        .ok()?;
        let path = h.path.clone().unwrap_or_else(|| {
            if grpc {
                health_check::GRPC_HEALTH_PATH.into()
            } else {
                "/".into()
            }
        });
        let probe_tls = match (protocol, &tls) {
            (HealthCheckProtocol::Https, Some(t)) => Some(t.clone()),
            (HealthCheckProtocol::Https, None) if !https => client::tls_config(None, true, h2)
                .map_err(|e| issues.push(ConfigIssue::new(at("protocol"), e)))
                .ok(),
            _ => None,
        };
        let probe = (probe_tls.is_some() || h2).then(|| {
            Arc::new(client::Transport {
                tls: probe_tls,
                server_name: server_name.clone(),
                h2,
                grpc,
            })
        });
        if h.timeout >= h.interval {
            issues.push(ConfigIssue::new(
                at("timeout"),
                "timeout must be shorter than interval",
            ));
        }
        for (k, v) in [
            ("healthy_threshold", h.healthy_threshold),
            ("unhealthy_threshold", h.unhealthy_threshold),
        ] {
            if !(1..=10).contains(&v) {
                issues.push(ConfigIssue::new(
                    at(k),
                    format!("{k} must be between 1 and 10"),
                ));
            }
        }
        if !path.starts_with('/') {
            issues.push(ConfigIssue::new(at("path"), "path must start with /"));
        }
        Some(HealthCheck {
            protocol,
            transport: probe,
            path,
            port: h.port,
            interval: h.interval,
            timeout: h.timeout,
            healthy_threshold: h.healthy_threshold,
            unhealthy_threshold: h.unhealthy_threshold,
            matcher,
        })
    });
    let stickiness = tg.stickiness.as_ref().and_then(|st| {
        let at = |k: &str| path!["target_group", i, "stickiness", k];
        if st.duration < Duration::from_secs(1) || st.duration > Duration::from_secs(7 * 86_400) {
            issues.push(ConfigIssue::new(
                at("duration"),
                "duration must be between 1s and 7d (as an ALB's)",
            ));
        }
        let app_cookie = match (st.kind, &st.cookie_name) {
            (StickinessKind::AppCookie, None) => {
                issues.push(
                    ConfigIssue::new(at("cookie_name"), "app_cookie stickiness needs cookie_name")
                        .hint("the name of the cookie your application sets, e.g. \"SESSION\""),
                );
                return None;
            }
            (StickinessKind::AppCookie, Some(c)) => {
                if c.is_empty()
                    || !c
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
                {
                    issues.push(ConfigIssue::new(
                        at("cookie_name"),
                        format!("{c:?} is not a cookie name"),
                    ));
                    return None;
                }
                Some(c.clone())
            }
            (StickinessKind::LbCookie, Some(_)) => {
                issues.push(
                    ConfigIssue::new(
                        at("cookie_name"),
                        "lb_cookie stickiness uses Portico's own cookie",
                    )
                    .hint("remove cookie_name, or use type = \"app_cookie\""),
                );
                return None;
            }
            (StickinessKind::LbCookie, None) => None,
        };
        Some(Stickiness::new(&tg.name, st.duration, app_cookie))
    });
    if let Some(d) = tg.slow_start {
        if d < Duration::from_secs(1) || d > Duration::from_secs(900) {
            issues.push(ConfigIssue::new(
                path!["target_group", i, "slow_start"],
                "slow_start must be between 1s and 900s (ALB allows 30s to 900s)",
            ));
        }
    }
    if issues.len() > before {
        return None;
    }
    let mut g = TargetGroup::new(
        tg.name.clone(),
        tg.algorithm,
        targets,
        health_check,
        tg.connect_timeout,
        tg.response_timeout,
    );
    if tg.deregistration_delay > Duration::from_secs(3600) {
        issues.push(ConfigIssue::new(
            path!["target_group", i, "deregistration_delay"],
            "deregistration_delay must be at most 3600s (as an ALB's)",
        ));
        return None;
    }
    g.deregistration_delay = tg.deregistration_delay;
    g.stickiness = stickiness;
    g.transport = transport;
    g.slow_start = tg.slow_start;
    Some(g)
}

/// The name an HTTPS target's certificate is checked against: `server_name`, else the host the
/// target is written with, else its address.
fn tls_name(
    written: &str,
    addr: SocketAddr,
    server_name: &Option<rustls::pki_types::ServerName<'static>>,
) -> rustls::pki_types::ServerName<'static> {
    if let Some(n) = server_name {
        return n.clone();
    }
    let host = written
        .rsplit_once(':')
        .map_or(written, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| rustls::pki_types::ServerName::IpAddress(addr.ip().into()))
}

fn resolve(address: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = address.parse() {
        return Ok(a);
    }
    address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve target {address:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("target {address:?} resolves to no address"))
}

/// The target groups a listener's actions may name.
struct Groups<'a> {
    built: &'a HashMap<String, Arc<TargetGroup>>,
    /// Defined, but with errors of their own (already reported).
    invalid: &'a HashSet<String>,
}

struct ListenerCtx<'a> {
    index: usize,
    groups: &'a Groups<'a>,
    cert_names: &'a HashSet<String>,
    store: &'a Arc<CertStore>,
    base_dir: &'a Path,
}

fn listener(
    l: &ListenerConfig,
    ctx: &ListenerCtx<'_>,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Listener> {
    let before = issues.len();
    let i = ctx.index;
    let at = |k: &str| path!["listener", i, k];
    let mut binds = Vec::new();
    for b in &l.bind {
        match b.parse::<SocketAddr>() {
            Ok(a) => binds.push(a),
            Err(_) => issues.push(
                ConfigIssue::new(at("bind"), format!("{b:?} is not an address:port"))
                    .hint("e.g. \"0.0.0.0:443\" or \"[::]:443\""),
            ),
        }
    }
    if binds.is_empty() && l.bind.is_empty() {
        issues.push(ConfigIssue::new(
            at("bind"),
            "a listener needs at least one address",
        ));
    }
    for c in l.certificates.iter().chain(l.default_certificate.iter()) {
        if !ctx.cert_names.contains(c) {
            issues.push(
                ConfigIssue::new(
                    at("certificates"),
                    format!("no [[certificate]] named {c:?}"),
                )
                .hint("add a [[certificate]] with that name"),
            );
        }
    }
    let (tls, resolver) = match l.protocol {
        Protocol::Https if l.certificates.is_empty() => {
            issues.push(
                ConfigIssue::new(
                    at("certificates"),
                    "an https listener needs at least one certificate",
                )
                .hint("certificates = [\"name of a [[certificate]]\"]"),
            );
            (None, None)
        }
        Protocol::Https => {
            let resolver = Arc::new(ListenerResolver::new(
                ctx.store.clone(),
                l.certificates.clone(),
                l.default_certificate.clone(),
            ));
            let verifier = match (&l.client_ca_file, l.client_auth) {
                (Some(ca), auth) => {
                    tls::client_verifier(&ctx.base_dir.join(ca), auth == Some(ClientAuth::Optional))
                        .map_err(|e| {
                            issues.push(ConfigIssue::new(at("client_ca_file"), e).hint(
                        "a PEM file with the CA certificates that sign your clients' certificates",
                    ))
                        })
                        .ok()
                }
                (None, Some(_)) => {
                    issues.push(
                        ConfigIssue::new(at("client_auth"), "client_auth needs client_ca_file")
                            .hint("client_ca_file = \"clients-ca.pem\""),
                    );
                    None
                }
                (None, None) => None,
            };
            (
                Some(tls::server_config(l.tls_policy, resolver.clone(), verifier)),
                Some(resolver),
            )
        }
        Protocol::Http => {
            if l.client_ca_file.is_some() || l.client_auth.is_some() {
                issues.push(
                    ConfigIssue::new(at("client_ca_file"), "mutual TLS needs an https listener")
                        .hint("use protocol = \"https\""),
                );
            }
            if !l.certificates.is_empty() {
                issues.push(
                    ConfigIssue::new(at("certificates"), "an http listener serves no certificate")
                        .hint("use protocol = \"https\" to terminate TLS"),
                );
            }
            (None, None)
        }
    };
    let response_headers = HeaderRewrite::compile(&l.response_headers.rewrite())
        .map_err(|e| issues.push(ConfigIssue::new(at("response_headers"), e)))
        .unwrap_or_default();
    let request_headers = HeaderRewrite::compile(&l.request_headers)
        .map_err(|e| issues.push(ConfigIssue::new(at("request_headers"), e)))
        .unwrap_or_default();
    let compress = l.compress.as_ref().and_then(|c| {
        crate::compress::Compress::compile(c)
            .map_err(|(k, e)| {
                let mut p = at("compress");
                p.push(PathSeg::Key(k.into()));
                issues.push(ConfigIssue::new(p, e));
            })
            .ok()
    });
    let proxy_protocol_from = match (l.proxy_protocol, l.proxy_protocol_from.is_empty()) {
        (true, true) => {
            issues.push(
                ConfigIssue::new(
                    at("proxy_protocol_from"),
                    "proxy_protocol needs the addresses of the balancers that send it",
                )
                .hint("e.g. proxy_protocol_from = [\"10.0.0.0/16\"]: anyone else could claim any client address"),
            );
            None
        }
        (true, false) => Some(l.proxy_protocol_from.clone()),
        (false, false) => {
            issues.push(
                ConfigIssue::new(
                    at("proxy_protocol_from"),
                    "proxy_protocol_from is set but proxy_protocol is not",
                )
                .hint("add proxy_protocol = true"),
            );
            None
        }
        (false, true) => None,
    };
    let default_action = action(&l.default_action, at("default_action"), ctx.groups, issues);
    let mut rules = Vec::new();
    let mut priorities = HashSet::new();
    for (j, r) in l.rules.iter().enumerate() {
        let rp = |k: &str| path!["listener", i, "rule", j, k];
        if !priorities.insert(r.priority) {
            issues.push(ConfigIssue::new(
                rp("priority"),
                format!("priority {} is used twice", r.priority),
            ));
        }
        if let Some(rule) = rule(r, &rp, ctx.groups, issues) {
            rules.push(rule);
        }
    }
    rules.sort_by_key(|r| r.priority);
    if l.max_header_bytes < 8192 {
        issues.push(ConfigIssue::new(
            at("max_header_bytes"),
            "max_header_bytes must be at least 8192",
        ));
    }
    if l.max_connections == 0 {
        issues.push(ConfigIssue::new(
            at("max_connections"),
            "max_connections must be at least 1",
        ));
    }
    if l.h2c && l.protocol == Protocol::Https {
        issues.push(
            ConfigIssue::new(at("h2c"), "h2c is for plain-HTTP listeners")
                .hint("HTTPS listeners offer HTTP/2 by ALPN already; remove `h2c`"),
        );
    }
    let access_log = l.access_log.as_ref().and_then(|a| {
        AccessLog::open(&l.name, a)
            .map_err(|e| issues.push(ConfigIssue::new(at("access_log"), e)))
            .ok()
    });
    if issues.len() > before {
        return None;
    }
    Some(Listener {
        name: l.name.clone(),
        binds,
        protocol: l.protocol,
        tls,
        resolver,
        allow: l.allow.clone(),
        deny: l.deny.clone(),
        response_headers,
        request_headers,
        compress,
        proxy_protocol_from,
        rules,
        default_action: default_action?,
        access_log,
        header_timeout: l.header_timeout,
        idle_timeout: l.idle_timeout,
        max_header_bytes: l.max_header_bytes,
        max_connections: l.max_connections,
        h2c: l.h2c,
    })
}

fn rule(
    r: &RuleConfig,
    at: &dyn Fn(&str) -> Vec<PathSeg>,
    groups: &Groups<'_>,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Rule> {
    let before = issues.len();
    let mut methods = Vec::new();
    for m in &r.method {
        match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
            Ok(m) => methods.push(m),
            Err(_) => issues.push(ConfigIssue::new(
                at("method"),
                format!("{m:?} is not an HTTP method"),
            )),
        }
    }
    let mut headers = Vec::new();
    for (name, values) in &r.header {
        match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(n) => headers.push((n, values.iter().map(|v| Glob::new(v)).collect())),
            Err(_) => issues.push(ConfigIssue::new(
                at("header"),
                format!("{name:?} is not a header name"),
            )),
        }
    }
    for p in &r.path {
        if !p.starts_with('/') && !p.starts_with('*') {
            issues.push(ConfigIssue::new(
                at("path"),
                format!("path pattern {p:?} must start with / or *"),
            ));
        }
    }
    let response_headers = HeaderRewrite::compile(&r.response_headers.rewrite())
        .map_err(|e| issues.push(ConfigIssue::new(at("response_headers"), e)))
        .unwrap_or_default();
    let request_headers = HeaderRewrite::compile(&r.request_headers)
        .map_err(|e| issues.push(ConfigIssue::new(at("request_headers"), e)))
        .unwrap_or_default();
    let rewrite = r.rewrite.as_ref().and_then(|rw| {
        if !matches!(r.action, ActionConfig::Forward(_)) {
            issues.push(
                ConfigIssue::new(at("rewrite"), "rewrite applies to forward actions only")
                    .hint("a redirect rewrites with its own host and path"),
            );
            return None;
        }
        Rewrite::compile(rw)
            .map_err(|(k, e)| {
                let mut p = at("rewrite");
                p.push(PathSeg::Key(k.into()));
                issues.push(ConfigIssue::new(p, e));
            })
            .ok()
    });
    let rate_limit = r.rate_limit.as_ref().and_then(|rl| {
        if !(rl.requests_per_second > 0.0 && rl.requests_per_second <= 1e6) {
            issues.push(ConfigIssue::new(
                at("rate_limit"),
                "requests_per_second must be above 0 and at most 1000000",
            ));
            return None;
        }
        let burst = rl
            .burst
            .unwrap_or((rl.requests_per_second.ceil() as u32).max(1));
        if burst == 0 {
            issues.push(ConfigIssue::new(
                at("rate_limit"),
                "burst must be at least 1",
            ));
            return None;
        }
        match KeySource::parse(&rl.key) {
            Ok(key) => Some(RateLimiter::new(rl.requests_per_second, burst, key)),
            Err(e) => {
                issues.push(
                    ConfigIssue::new(at("rate_limit"), e)
                        .hint("key = \"source\" (the client address) or \"header:X-Api-Key\""),
                );
                None
            }
        }
    });
    let action = action(&r.action, at("action"), groups, issues);
    if issues.len() > before {
        return None;
    }
    Some(Rule {
        priority: r.priority,
        hosts: r.host.iter().map(|h| Glob::host(h)).collect(),
        paths: r.path.iter().map(|p| Glob::new(p)).collect(),
        methods,
        headers,
        query: r
            .query
            .iter()
            .map(|(k, v)| (k.clone(), Glob::new(v)))
            .collect(),
        sources: r.source.clone(),
        action: action?,
        response_headers,
        request_headers,
        rewrite,
        rate_limit,
    })
}

fn action(
    a: &ActionConfig,
    at: Vec<PathSeg>,
    groups: &Groups<'_>,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Action> {
    let sub = |k: &str| {
        let mut p = at.clone();
        p.push(PathSeg::Key(k.into()));
        p
    };
    match a {
        ActionConfig::Forward(f) => {
            let wanted: Vec<(String, u32)> = match f {
                ForwardConfig::One(n) => vec![(n.clone(), 1)],
                ForwardConfig::Weighted(v) => v
                    .iter()
                    .map(|w| (w.target_group.clone(), w.weight))
                    .collect(),
            };
            if wanted.is_empty() || wanted.iter().all(|(_, w)| *w == 0) {
                issues.push(ConfigIssue::new(
                    sub("forward"),
                    "forward needs a target group with weight above 0",
                ));
                return None;
            }
            let mut out = Vec::new();
            for (name, weight) in wanted {
                match groups.built.get(&name) {
                    Some(g) if weight > 0 => out.push((g.clone(), weight.min(999))),
                    Some(_) => {}
                    None if groups.invalid.contains(&name) => return None,
                    None => {
                        let known: Vec<&str> = groups.built.keys().map(String::as_str).collect();
                        issues.push(
                            ConfigIssue::new(
                                sub("forward"),
                                format!("no [[target_group]] named {name:?}"),
                            )
                            .hint(format!("known target groups: {known:?}")),
                        );
                        return None;
                    }
                }
            }
            Some(Action::Forward(Forward::new(out)))
        }
        ActionConfig::Redirect(r) => {
            let status = match r.status {
                301 | 302 | 303 | 307 | 308 => http::StatusCode::from_u16(r.status).ok()?,
                s => {
                    issues.push(ConfigIssue::new(
                        sub("redirect"),
                        format!("redirect status {s} is not 301, 302, 303, 307 or 308"),
                    ));
                    return None;
                }
            };
            let protocol = r.protocol.to_ascii_lowercase();
            if !matches!(protocol.as_str(), "http" | "https" | "#{protocol}") {
                issues.push(ConfigIssue::new(
                    sub("redirect"),
                    format!(
                        "redirect protocol {:?} is not http, https or #{{protocol}}",
                        r.protocol
                    ),
                ));
                return None;
            }
            Some(Action::Redirect(Redirect {
                protocol,
                host: r.host.clone(),
                port: r.port.clone(),
                path: r.path.clone(),
                query: r.query.clone(),
                status,
            }))
        }
        ActionConfig::FixedResponse(f) => {
            let status = match http::StatusCode::from_u16(f.status) {
                Ok(s) if (200..=599).contains(&f.status) => s,
                _ => {
                    issues.push(ConfigIssue::new(
                        sub("fixed_response"),
                        format!("status {} is not between 200 and 599", f.status),
                    ));
                    return None;
                }
            };
            let content_type = match http::HeaderValue::from_str(&f.content_type) {
                Ok(v) => v,
                Err(_) => {
                    issues.push(ConfigIssue::new(
                        sub("fixed_response"),
                        "content_type is not a valid header value",
                    ));
                    return None;
                }
            };
            Some(Action::FixedResponse(FixedResponse {
                status,
                content_type,
                body: Bytes::from(f.body.clone()),
            }))
        }
    }
}
