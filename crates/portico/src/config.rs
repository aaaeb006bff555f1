//! `portico.toml`: the whole file, composed of each part's sections, and errors that point into it.
//!
//! Parsing errors come from the TOML deserialiser with a byte span; validation errors come from
//! the parts as TOML paths (`listener[0].default_action.forward`) and are located here by walking
//! a span-preserving parse of the same text. Either way the user sees file:line:column, the line,
//! a caret, and a hint.
//!
//! Over 600 lines on purpose: the file's shape and the locating of errors in it belong together
//! (a path from any part is turned into file:line:column here); about 50 lines are tests.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portico_certs::{AcmeSettings, CertRequest, Challenge, IssuerKind};
use portico_lb::config::{CertificateConfig, LbConfig, ListenerConfig, TargetGroupConfig};
use portico_lb::{ConfigIssue, PathSeg};
use serde::Deserialize;

/// The top level of `portico.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PorticoConfig {
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub log: LogConfig,
    /// How long SIGTERM waits for requests in flight before exiting.
    #[serde(
        default = "default_shutdown_timeout",
        with = "portico_lb::config::duration"
    )]
    pub shutdown_timeout: Duration,
    pub acme: Option<AcmeConfig>,
    /// `[admin]`: the admin API, metrics and web console (off when the section is absent).
    pub admin: Option<AdminConfig>,
    /// `[store]`: cluster mode, state shared through etcd instead of the state directory.
    pub store: Option<StoreConfig>,
    pub dns: Option<portico_dns::config::DnsConfig>,
    #[serde(default)]
    pub tsig_key: Vec<portico_dns::config::TsigKeyConfig>,
    #[serde(default)]
    pub zone: Vec<portico_dns::config::ZoneConfig>,
    #[serde(default)]
    pub certificate: Vec<CertificateConfig>,
    #[serde(default)]
    pub target_group: Vec<TargetGroupConfig>,
    #[serde(default)]
    pub listener: Vec<ListenerConfig>,
    /// `[[alert]]`: certificate events to a webhook and/or a command.
    #[serde(default)]
    pub alert: Vec<AlertConfig>,
}

/// `[[alert]]`: where certificate events go (Let's Encrypt no longer e-mails before expiry).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// How logs name it (default: "alert N").
    pub name: Option<String>,
    /// A webhook: each event as a JSON `POST` (retried three times over about five seconds).
    pub url: Option<String>,
    /// A command run by `sh -c` with `PORTICO_EVENT`, `PORTICO_CERTIFICATE`, `PORTICO_DOMAINS`
    /// and `PORTICO_ALERT` (the JSON) in its environment.
    pub command: Option<String>,
    /// Which events (default: all): certificate_issued, certificate_renewed, renewal_failed,
    /// certificate_expiring, renewal_window_moved.
    #[serde(default)]
    pub events: Vec<String>,
    /// `certificate_expiring` below this much validity left (default: 7 days, or a third of the
    /// lifetime for shorter certificates).
    pub expiring_within: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `portico_lb=debug,info`. `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_log_level(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/portico")
}
fn default_log_level() -> String {
    "info".into()
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

impl PorticoConfig {
    pub fn lb(&self) -> LbConfig {
        LbConfig {
            certificates: self.certificate.clone(),
            target_groups: self.target_group.clone(),
            listeners: self.listener.clone(),
        }
    }

    pub fn dns(&self) -> portico_dns::config::DnsSections {
        portico_dns::config::DnsSections {
            dns: self.dns.clone(),
            tsig_keys: self.tsig_key.clone(),
            zones: self.zone.clone(),
        }
    }

    /// Checks that belong to no single part yet.
    /// Health that a `[[zone.record]]` names (`health = "target_group:…"`, `"listener:…"`, an
    /// ALIAS that evaluates its listener) must exist: an unknown name would count as healthy
    /// for ever, and failover would never happen.
    fn routing_issues(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let groups: Vec<&str> = self.target_group.iter().map(|g| g.name.as_str()).collect();
        let listeners: Vec<&str> = self.listener.iter().map(|l| l.name.as_str()).collect();
        for (i, z) in self.zone.iter().enumerate() {
            for (j, r) in z.records.iter().enumerate() {
                let at = |k: &str| {
                    vec![
                        PathSeg::Key("zone".into()),
                        PathSeg::Index(i),
                        PathSeg::Key("record".into()),
                        PathSeg::Index(j),
                        PathSeg::Key(k.into()),
                    ]
                };
                let names = |kind: &str, known: &[&str]| {
                    if known.is_empty() {
                        format!("no [[{kind}]] is configured")
                    } else {
                        format!("the {kind}s are {}", known.join(", "))
                    }
                };
                if let Some(h) = &r.health {
                    if let Some(g) = h.strip_prefix("target_group:") {
                        if !groups.contains(&g) {
                            issues.push(
                                ConfigIssue::new(at("health"), format!("no target group {g:?}"))
                                    .hint(names("target_group", &groups)),
                            );
                        }
                    }
                    if let Some(l) = h.strip_prefix("listener:") {
                        if !listeners.contains(&l) {
                            issues.push(
                                ConfigIssue::new(at("health"), format!("no listener {l:?}"))
                                    .hint(names("listener", &listeners)),
                            );
                        }
                    }
                }
                if r.evaluate_target_health == Some(true) {
                    if let Some(l) = r
                        .target
                        .as_deref()
                        .and_then(|t| t.strip_prefix("listener:"))
                    {
                        if !listeners.contains(&l) {
                            issues.push(
                                ConfigIssue::new(at("target"), format!("no listener {l:?}"))
                                    .hint(names("listener", &listeners)),
                            );
                        }
                    }
                }
            }
        }
        issues
    }

    pub fn own_issues(&self) -> Vec<ConfigIssue> {
        let mut issues = self.cert_requests().err().unwrap_or_default();
        for (i, a) in self.alert.iter().enumerate() {
            let at = |k: &str| {
                vec![
                    PathSeg::Key("alert".into()),
                    PathSeg::Index(i),
                    PathSeg::Key(k.into()),
                ]
            };
            if a.url.is_none() && a.command.is_none() {
                issues.push(
                    ConfigIssue::new(at("url"), "an [[alert]] needs a url or a command")
                        .hint("url = \"https://hooks.example.com/portico\", or command = \"/usr/local/bin/notify\""),
                );
            }
            if let Some(u) = &a.url {
                let ok = u.parse::<http::Uri>().ok().is_some_and(|uri| {
                    matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
                });
                if !ok {
                    issues.push(
                        ConfigIssue::new(at("url"), format!("{u:?} is not an http or https URL"))
                            .hint("e.g. url = \"https://hooks.example.com/portico\""),
                    );
                }
            }
            for e in &a.events {
                if !portico_certs::alerts::EVENTS.contains(&e.as_str()) {
                    issues.push(
                        ConfigIssue::new(at("events"), format!("unknown event {e:?}")).hint(
                            format!("events are {}", portico_certs::alerts::EVENTS.join(", ")),
                        ),
                    );
                }
            }
            if let Some(d) = &a.expiring_within {
                if let Err(e) = humantime::parse_duration(d) {
                    issues.push(
                        ConfigIssue::new(
                            at("expiring_within"),
                            format!("invalid duration {d:?}: {e}"),
                        )
                        .hint("e.g. expiring_within = \"14d\""),
                    );
                }
            }
        }
        if let Some(a) = &self.acme {
            let at = |k: &str| vec![PathSeg::Key("acme".into()), PathSeg::Key(k.into())];
            match (&a.eab_kid, &a.eab_hmac_key) {
                (Some(_), None) | (None, Some(_)) => issues.push(ConfigIssue::new(
                    at("eab_kid"),
                    "External Account Binding needs both eab_kid and eab_hmac_key",
                )),
                (Some(_), Some(k)) if decode_b64url(k).is_none() => issues.push(
                    ConfigIssue::new(at("eab_hmac_key"), "eab_hmac_key is not base64url")
                        .hint("paste the key exactly as the CA gave it"),
                ),
                _ => {}
            }
            if a.resolver.is_some() && a.resolver_addr().is_none() {
                issues.push(
                    ConfigIssue::new(at("resolver"), "resolver is not an address")
                        .hint("write an IP address, optionally with a port: \"127.0.0.1:53\""),
                );
            }
        }
        issues.extend(self.routing_issues());
        if let Some(st) = &self.store {
            let at = |k: &str| vec![PathSeg::Key("store".into()), PathSeg::Key(k.into())];
            if st.etcd.is_empty() {
                issues.push(
                    ConfigIssue::new(at("etcd"), "[store] names no etcd endpoint")
                        .hint("etcd = [\"http://127.0.0.1:2379\"], or remove [store] to keep state in state_dir"),
                );
            }
            if let Some(bad) = st
                .etcd
                .iter()
                .find(|e| !(e.starts_with("http://") || e.starts_with("https://")))
            {
                issues.push(
                    ConfigIssue::new(
                        at("etcd"),
                        format!("{bad:?} is not an http:// or https:// URL"),
                    )
                    .hint("e.g. \"http://10.0.0.5:2379\""),
                );
            }
            if st.cert_file.is_some() != st.key_file.is_some() {
                issues.push(ConfigIssue::new(
                    at("cert_file"),
                    "a client certificate for etcd needs both cert_file and key_file",
                ));
            }
            if !cfg!(feature = "etcd") {
                issues.push(
                    ConfigIssue::new(at("etcd"), "this build of portico has no etcd support")
                        .hint("build with `cargo build --release --features etcd` (needs protoc: apt-get install protobuf-compiler)"),
                );
            }
        }
        if let Some(a) = &self.admin {
            let at = |k: &str| vec![PathSeg::Key("admin".into()), PathSeg::Key(k.into())];
            match a.listen_addr() {
                None => issues.push(
                    ConfigIssue::new(at("listen"), format!("{:?} is not an address:port", a.listen))
                        .hint("e.g. \"127.0.0.1:9180\""),
                ),
                Some(addr) if !addr.ip().is_loopback() && a.cert_file.is_none() => issues.push(
                    ConfigIssue::new(
                        at("listen"),
                        format!("the admin API on {addr} would send its bearer token in clear"),
                    )
                    .hint("listen on 127.0.0.1 (and reach it through ssh -L), or set cert_file and key_file for TLS"),
                ),
                Some(_) => {}
            }
            if a.cert_file.is_some() != a.key_file.is_some() {
                issues.push(ConfigIssue::new(
                    at("cert_file"),
                    "TLS for the admin API needs both cert_file and key_file",
                ));
            }
        }
        issues
    }

    /// The `[[certificate]]`s to obtain and renew (those with `domains`), validated.
    pub fn cert_requests(&self) -> Result<Vec<CertRequest>, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let mut out = Vec::new();
        for (i, c) in self.certificate.iter().enumerate() {
            let at = |k: &str| {
                vec![
                    PathSeg::Key("certificate".into()),
                    PathSeg::Index(i),
                    PathSeg::Key(k.into()),
                ]
            };
            if c.cert_file.is_some() || c.key_file.is_some() {
                if !c.domains.is_empty() || c.issuer.is_some() {
                    issues.push(ConfigIssue::new(at("domains"), "a certificate is either imported (cert_file, key_file) or requested (domains, issuer), not both"));
                }
                continue;
            }
            if c.domains.is_empty() {
                continue; // the load balancer reports a certificate with neither
            }
            if let Some((d, why)) = c
                .domains
                .iter()
                .find_map(|d| domain_problem(d).map(|why| (d, why)))
            {
                issues.push(
                    ConfigIssue::new(at("domains"), format!("{d:?} is not a domain name: {why}"))
                        .hint("write names like \"example.com\", \"*.example.com\" or an IP address (internal issuer)"),
                );
                continue;
            }
            let issuer = match c.issuer.as_deref().unwrap_or("acme") {
                "acme" => IssuerKind::Acme,
                "internal" => IssuerKind::Internal,
                other => {
                    issues.push(
                        ConfigIssue::new(at("issuer"), format!("unknown issuer {other:?}"))
                            .hint("issuer = \"acme\" or \"internal\""),
                    );
                    continue;
                }
            };
            // Let's Encrypt issues for IP addresses only in its `shortlived` profile: that is
            // the default for a certificate that names one, unless a profile is chosen.
            let has_ip = c
                .domains
                .iter()
                .any(|d| d.parse::<std::net::IpAddr>().is_ok());
            let letsencrypt = self.acme.as_ref().is_some_and(|a| {
                portico_certs::issuer::acme::directory_url(&a.directory)
                    .contains(".letsencrypt.org/")
            });
            let profile = c
                .profile
                .clone()
                .or_else(|| self.acme.as_ref().and_then(|a| a.profile.clone()))
                .or_else(|| (has_ip && letsencrypt).then(|| "shortlived".to_string()))
                .filter(|_| issuer == IssuerKind::Acme);
            if c.profile.is_some() && issuer != IssuerKind::Acme {
                issues.push(
                    ConfigIssue::new(at("profile"), "a profile is chosen from an ACME CA's offer")
                        .hint("remove profile = (the internal CA has one kind of certificate) or use issuer = \"acme\""),
                );
                continue;
            }
            if let Some(p) = &profile {
                if p.is_empty()
                    || !p
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    issues.push(
                        ConfigIssue::new(at("profile"), format!("{p:?} is not a profile name"))
                            .hint("e.g. profile = \"tlsserver\" (the names the CA's directory lists under meta.profiles)"),
                    );
                    continue;
                }
            }
            let key_type = match portico_certs::keys::KeyType::parse(
                c.key_type.as_deref(),
                c.rsa_key_size,
            ) {
                Ok(k) => k,
                Err(e) => {
                    issues.push(
                            ConfigIssue::new(at("key_type"), e)
                                .hint("key_type = \"ecdsa\" (default) or \"rsa\" with rsa_key_size = 2048, 3072 or 4096"),
                        );
                    continue;
                }
            };
            let challenge = c.challenge.as_deref().unwrap_or("http-01");
            let dns01 = challenge == "dns-01";
            if issuer == IssuerKind::Acme {
                if let Some(w) = c.domains.iter().find(|d| d.starts_with("*.")) {
                    if !dns01 {
                        issues.push(
                            ConfigIssue::new(
                                at("domains"),
                                format!(
                                    "{w} is a wildcard: a CA validates wildcards only with dns-01"
                                ),
                            )
                            .hint("challenge = \"dns-01\", with the name in a [[zone]]"),
                        );
                        continue;
                    }
                }
                if let (true, Some(ip)) = (
                    dns01,
                    c.domains
                        .iter()
                        .find(|d| d.parse::<std::net::IpAddr>().is_ok()),
                ) {
                    issues.push(
                        ConfigIssue::new(
                            at("challenge"),
                            format!("{ip} is an IP address: a CA validates an address only with http-01 or tls-alpn-01 (RFC 8738), never dns-01"),
                        )
                        .hint("challenge = \"http-01\" (port 80 on that address) or \"tls-alpn-01\" (port 443)"),
                    );
                    continue;
                }
                match challenge {
                    "http-01" | "tls-alpn-01" => {}
                    "dns-01" if c.dns_server.is_some() => {
                        let server_ok = c
                            .dns_server
                            .as_deref()
                            .is_some_and(|a| a.parse::<std::net::SocketAddr>().is_ok());
                        if !server_ok {
                            issues.push(
                                ConfigIssue::new(at("dns_server"), "dns_server is not ip:port")
                                    .hint("e.g. \"192.0.2.53:53\""),
                            );
                            continue;
                        }
                        let key_ok = c.dns_key.as_ref().is_some_and(|k| {
                            self.tsig_key
                                .iter()
                                .any(|t| t.name.trim_end_matches('.') == k.trim_end_matches('.'))
                        });
                        if !key_ok {
                            issues.push(
                                ConfigIssue::new(
                                    at("dns_key"),
                                    "dns-01 through RFC 2136 needs dns_key naming a [[tsig_key]]",
                                )
                                .hint("add a [[tsig_key]] with the server's key"),
                            );
                            continue;
                        }
                    }
                    "dns-01" => {
                        let zones: Vec<String> = self
                            .zone
                            .iter()
                            .map(|z| z.name.trim_end_matches('.').to_ascii_lowercase())
                            .collect();
                        let outside = c.domains.iter().find(|d| {
                            let d = d
                                .trim_start_matches("*.")
                                .trim_end_matches('.')
                                .to_ascii_lowercase();
                            !zones
                                .iter()
                                .any(|z| d == *z || d.ends_with(&format!(".{z}")))
                        });
                        // A name outside the hosted zones is fine when its `_acme-challenge`
                        // CNAME points into one (checked when ordering); with no zone at all
                        // there is nowhere to write the record.
                        if let (Some(d), true) = (outside, zones.is_empty()) {
                            issues.push(
                                ConfigIssue::new(at("challenge"), format!("dns-01 for {d} needs a hosted zone: no [[zone]] is configured"))
                                    .hint("add the zone (or one that `_acme-challenge.<name>` is a CNAME into), set dns_server and dns_key (RFC 2136), or use challenge = \"http-01\""),
                            );
                            continue;
                        }
                    }
                    other => {
                        issues.push(
                            ConfigIssue::new(
                                at("challenge"),
                                format!("challenge {other:?} is not in this build yet"),
                            )
                            .hint("challenge = \"http-01\", \"tls-alpn-01\" or \"dns-01\""),
                        );
                        continue;
                    }
                }
            }
            out.push(CertRequest {
                name: c.name.clone(),
                domains: c.domains.clone(),
                issuer,
                dns_publisher: None,
                challenge: match challenge {
                    "dns-01" => Challenge::Dns01,
                    "tls-alpn-01" => Challenge::TlsAlpn01,
                    _ => Challenge::Http01,
                },
                deploy_hook: c.deploy_hook.clone(),
                key_type,
                profile,
            });
        }
        if issues.is_empty() {
            Ok(out)
        } else {
            Err(issues)
        }
    }

    pub fn acme_settings(&self, base_dir: &std::path::Path) -> Option<AcmeSettings> {
        self.acme.as_ref().map(|a| AcmeSettings {
            directory: a.directory.clone(),
            email: a.email.clone(),
            ca_root: a.ca_roots.first().map(|r| base_dir.join(r)),
            http_port: a.http_port,
            tls_port: a.tls_port,
            self_check: a.self_check,
            eab: a
                .eab_kid
                .clone()
                .zip(a.eab_hmac_key.as_deref().and_then(decode_b64url)),
        })
    }
}

/// Why `d` cannot be a name on a certificate (None when it can).
fn domain_problem(d: &str) -> Option<String> {
    if d.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let name = d.strip_prefix("*.").unwrap_or(d).trim_end_matches('.');
    if name.is_empty() || name.len() > 253 {
        return Some("a name has 1 to 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Some(format!("label {label:?} must have 1 to 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Some(format!(
                "{c:?} is not allowed (letters, digits, '-'; '*.' only at the start)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!("label {label:?} starts or ends with '-'"));
        }
    }
    None
}

/// `[store]`: where state lives when several nodes share it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "etcd"), allow(dead_code))] // read only by the etcd store
pub struct StoreConfig {
    /// etcd endpoints (`http://10.0.0.5:2379`; `https://` with the TLS keys below).
    #[serde(default)]
    pub etcd: Vec<String>,
    /// Where Portico's keys start in etcd.
    #[serde(default = "default_store_prefix")]
    pub prefix: String,
    /// TLS towards etcd: the CA that signed etcd's certificate, and a client certificate.
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

fn default_store_prefix() -> String {
    "portico/".into()
}

pub use portico_admin::AdminConfig;

/// `[acme]`: the ACME CA that `issuer = "acme"` certificates come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// `letsencrypt`, `letsencrypt-staging`, or a directory URL.
    #[serde(default = "default_directory")]
    pub directory: String,
    pub email: Option<String>,
    /// Extra roots trusted for the ACME server's own HTTPS (Pebble, a private CA).
    #[serde(default)]
    pub ca_roots: Vec<String>,
    /// The port the CA connects to for HTTP-01: 80 for every public CA; set it only for a test CA
    /// such as Pebble (its `httpPort`).
    #[serde(default = "default_http_port")]
    pub http_port: u16,
    /// The port the CA connects to for TLS-ALPN-01: 443 for every public CA; set it only for a
    /// test CA such as Pebble (its `tlsPort`). The self-check probes it before validation.
    #[serde(default = "default_tls_port")]
    pub tls_port: u16,
    /// The port other zones' nameservers are asked on by the dns-01 self-check: 53; set it
    /// only for test nameservers on another port.
    #[serde(default = "default_dns_port")]
    pub dns_port: u16,
    /// Before ordering, check that HTTP-01 can pass (resolve each name, fetch a probe token
    /// through every address).
    #[serde(default = "default_true")]
    pub self_check: bool,
    /// External Account Binding, for CAs that require it (the key id and the base64url HMAC
    /// key the CA gave).
    pub eab_kid: Option<String>,
    pub eab_hmac_key: Option<String>,
    /// The DNS resolver the self-check asks for names outside Portico's hosted zones
    /// ("192.0.2.53" or "192.0.2.53:5353"); default: the system's.
    pub resolver: Option<String>,
    /// The certificate profile to order when a `[[certificate]]` names none (Let's Encrypt:
    /// `classic`, `tlsserver`, `shortlived`); checked against the CA's directory.
    pub profile: Option<String>,
}

impl AcmeConfig {
    pub fn resolver_addr(&self) -> Option<std::net::SocketAddr> {
        let r = self.resolver.as_deref()?.trim();
        r.parse().ok().or_else(|| {
            r.parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| std::net::SocketAddr::new(ip, 53))
        })
    }
}

/// base64url (with or without padding), as CAs hand out EAB keys.
fn decode_b64url(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let t = s.trim().trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()
}

fn default_http_port() -> u16 {
    80
}

fn default_tls_port() -> u16 {
    443
}

fn default_dns_port() -> u16 {
    53
}

fn default_true() -> bool {
    true
}

fn default_directory() -> String {
    "letsencrypt".into()
}

/// A config file as read, kept for locating errors.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            problems: vec![Problem {
                at: None,
                line_text: None,
                message: format!("cannot read the config file: {e}"),
                hint: Some("pass the file with -c PATH".into()),
            }],
        })?;
        Ok(Source {
            path: path.to_path_buf(),
            text,
        })
    }

    /// The directory relative file names in the config resolve against.
    pub fn base_dir(&self) -> PathBuf {
        self.path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    pub fn parse(&self) -> Result<PorticoConfig, ConfigError> {
        toml::from_str(&self.text).map_err(|e| {
            let at = e.span().map(|s| self.position(s.start));
            ConfigError {
                file: self.path.clone(),
                problems: vec![Problem {
                    line_text: at.map(|(l, _)| self.line(l)),
                    at,
                    message: e.message().trim().to_string(),
                    hint: hint_for_parse(e.message()),
                }],
            }
        })
    }

    /// Locates validation issues from the parts.
    pub fn locate(&self, issues: &[ConfigIssue]) -> ConfigError {
        let doc = toml_edit::ImDocument::parse(self.text.as_str()).ok();
        let problems = issues
            .iter()
            .map(|issue| {
                let at = doc
                    .as_ref()
                    .and_then(|d| span_of(d.as_item(), &issue.path))
                    .map(|s| self.position(s.start));
                Problem {
                    line_text: at.map(|(l, _)| self.line(l)),
                    at,
                    message: format!("{}: {}", issue.dotted_path(), issue.message),
                    hint: issue.hint.clone(),
                }
            })
            .collect();
        ConfigError {
            file: self.path.clone(),
            problems,
        }
    }

    /// 1-based line and column of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    fn line(&self, line: usize) -> String {
        self.text.lines().nth(line - 1).unwrap_or("").to_string()
    }
}

/// The span of the deepest item on `path` that exists; a key's own span when the path ends in one.
fn span_of(root: &toml_edit::Item, path: &[PathSeg]) -> Option<Range<usize>> {
    let mut item = root;
    let mut best = None;
    for seg in path {
        let next = match seg {
            PathSeg::Key(k) => {
                let pair = item.as_table_like().and_then(|t| t.get_key_value(k));
                if let Some((key, _)) = pair {
                    best = key.span().or(best);
                }
                pair.map(|(_, v)| v)
            }
            PathSeg::Index(i) => item.get(*i),
        };
        match next {
            Some(n) => {
                item = n;
                if matches!(seg, PathSeg::Index(_)) {
                    best = n.span().or(best);
                }
            }
            None => break,
        }
    }
    best
}

fn hint_for_parse(message: &str) -> Option<String> {
    if message.contains("unknown field") {
        Some("check the spelling; the README lists every key".into())
    } else if message.contains("missing field") {
        Some("this key is required here".into())
    } else if message.contains("unknown variant") {
        Some("use one of the values listed above".into())
    } else {
        None
    }
}

/// One or more problems in one config file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

#[derive(Debug)]
pub struct Problem {
    pub at: Option<(usize, usize)>,
    pub line_text: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, p) in self.problems.iter().enumerate() {
            if n > 0 {
                writeln!(f)?;
            }
            match p.at {
                Some((l, c)) => write!(f, "{}:{l}:{c}: {}", self.file.display(), p.message)?,
                None => write!(f, "{}: {}", self.file.display(), p.message)?,
            }
            if let (Some(text), Some((l, c))) = (&p.line_text, p.at) {
                let gutter = l.to_string().len();
                write!(
                    f,
                    "\n{:gutter$} |\n{l} | {text}\n{:gutter$} | {:>c$}",
                    "", "", "^"
                )?;
            }
            if let Some(h) = &p.hint {
                write!(f, "\n  hint: {h}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Source {
        Source {
            path: "t.toml".into(),
            text: text.into(),
        }
    }

    #[test]
    fn an_address_defaults_to_the_shortlived_profile_at_lets_encrypt_only() {
        let profile = |directory: &str, domains: &str, extra: &str| {
            let text = format!(
                "[acme]\ndirectory = \"{directory}\"\n[[certificate]]\nname = \"c\"\ndomains = {domains}\n{extra}"
            );
            let config = source(&text).parse().unwrap();
            config.cert_requests().unwrap()[0].profile.clone()
        };
        let ip = r#"["203.0.113.7"]"#;
        assert_eq!(
            profile("letsencrypt", ip, "").as_deref(),
            Some("shortlived")
        );
        assert_eq!(
            profile("letsencrypt-staging", ip, "").as_deref(),
            Some("shortlived")
        );
        assert_eq!(profile("https://ca.example/dir", ip, ""), None);
        assert_eq!(profile("letsencrypt", r#"["app.example.com"]"#, ""), None);
        assert_eq!(
            profile("letsencrypt", ip, "profile = \"classic\"").as_deref(),
            Some("classic"),
            "a chosen profile is kept"
        );
    }

    #[test]
    fn parse_error_has_line_and_column() {
        let s = source("state_dir = \"/tmp\"\n[[listener]]\nname = \"a\"\nbnid = \"x\"\n");
        let e = s.parse().unwrap_err();
        assert_eq!(e.problems[0].at.map(|a| a.0), Some(4), "{e}");
        assert!(e.to_string().contains("unknown field `bnid`"), "{e}");
    }

    #[test]
    fn issue_is_located_at_its_key() {
        let s =
            source("[[listener]]\nname = \"a\"\n\n[[listener]]\nname = \"b\"\nbind = \"nope\"\n");
        let issue = ConfigIssue::new(
            vec![
                PathSeg::Key("listener".into()),
                PathSeg::Index(1),
                PathSeg::Key("bind".into()),
            ],
            "bad",
        );
        let e = s.locate(&[issue]);
        assert_eq!(e.problems[0].at, Some((6, 1)), "{e}");
        let inline = source("[[listener]]\ndefault_action = { forward = \"x\" }\n");
        let issue = ConfigIssue::new(
            vec![
                PathSeg::Key("listener".into()),
                PathSeg::Index(0),
                PathSeg::Key("default_action".into()),
                PathSeg::Key("forward".into()),
            ],
            "bad",
        );
        assert_eq!(inline.locate(&[issue]).problems[0].at, Some((2, 20)));
    }
}
