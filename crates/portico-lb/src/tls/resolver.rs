//! The cert resolver: which certificate a TLS handshake gets.
//!
//! [`CertStore`] holds every served certificate by name (the `[[certificate]]` name, which is also
//! the certbot lineage name). Whoever owns a certificate — the config loader for imported files,
//! the certificate manager for issued ones — calls [`CertStore::publish`]; the next handshake uses
//! it, with no restart and no lock on the handshake path. Each HTTPS listener has a
//! [`ListenerResolver`] that picks among the certificates that listener names, by SNI.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A certificate ready to serve, with the names it is valid for.
#[derive(Debug)]
pub struct ServedCert {
    pub key: Arc<CertifiedKey>,
    /// DNS names from the subjectAltName extension, lower-case, may start with `*.`; and its IP
    /// addresses, written as addresses.
    pub names: Vec<String>,
}

impl ServedCert {
    /// Does this certificate cover `host` (exactly, or by a one-label wildcard)?
    pub fn covers(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.names.iter().any(|n| match n.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => *n == host,
        })
    }
}

/// The ALPN protocol of ACME's TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// All served certificates by name, swapped atomically as a whole map; and the TLS-ALPN-01
/// challenge certificates in flight, by domain.
#[derive(Debug, Default)]
pub struct CertStore {
    certs: ArcSwap<HashMap<String, Arc<ServedCert>>>,
    alpn_challenges: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

impl CertStore {
    pub fn new() -> Arc<Self> {
        Arc::new(CertStore::default())
    }

    /// Serves `cert` under `name` from the next handshake on, replacing any previous one.
    pub fn publish(&self, name: &str, cert: ServedCert) {
        let cert = Arc::new(cert);
        self.certs.rcu(|old| {
            let mut map = HashMap::clone(old);
            map.insert(name.to_string(), cert.clone());
            map
        });
    }

    pub fn remove(&self, name: &str) {
        self.certs.rcu(|old| {
            let mut map = HashMap::clone(old);
            map.remove(name);
            map
        });
    }

    /// Answers TLS-ALPN-01 for `domain` with `cert` until removed.
    pub fn set_alpn_challenge(&self, domain: &str, cert: Option<Arc<CertifiedKey>>) {
        let domain = domain.to_ascii_lowercase();
        self.alpn_challenges.rcu(|old| {
            let mut map = HashMap::clone(old);
            match &cert {
                Some(c) => map.insert(domain.clone(), c.clone()),
                None => map.remove(&domain),
            };
            map
        });
    }

    /// The TLS-ALPN-01 certificate answering for `domain`, if one is set.
    pub fn alpn_challenge(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn_challenges
            .load()
            .get(&domain.to_ascii_lowercase())
            .cloned()
    }

    pub fn get(&self, name: &str) -> Option<Arc<ServedCert>> {
        self.certs.load().get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.certs.load().keys().cloned().collect()
    }
}

tokio::task_local! {
    /// The address the client connected to, set around a handshake: rustls's `ClientHello`
    /// does not carry it, and a client without SNI is served the certificate for that address.
    pub static LOCAL_IP: std::net::IpAddr;
}

/// Picks one of a listener's certificates by SNI; the default for no SNI or an unknown name.
#[derive(Debug)]
pub struct ListenerResolver {
    store: Arc<CertStore>,
    names: Vec<String>,
    default: Option<String>,
}

impl ListenerResolver {
    pub fn new(store: Arc<CertStore>, names: Vec<String>, default: Option<String>) -> Self {
        ListenerResolver {
            store,
            names,
            default,
        }
    }

    /// The certificate for `sni` on a connection to `local`, as a handshake would choose it.
    pub fn choose(
        &self,
        sni: Option<&str>,
        local: Option<std::net::IpAddr>,
    ) -> Option<Arc<CertifiedKey>> {
        let map = self.store.certs.load();
        if let Some(sni) = sni {
            for name in &self.names {
                if let Some(c) = map.get(name) {
                    if c.covers(sni) {
                        return Some(c.key.clone());
                    }
                }
            }
        }
        if sni.is_none() {
            // A client that connects by address sends no SNI (RFC 6066 §3): a certificate for
            // an IP address is what it can verify, so it is preferred over the default — the
            // one for the address it connected to, else the first for any address.
            let mut any_ip = None;
            for c in self.names.iter().filter_map(|n| map.get(n)) {
                let mut has_ip = false;
                for ip in c
                    .names
                    .iter()
                    .filter_map(|n| n.parse::<std::net::IpAddr>().ok())
                {
                    if Some(ip) == local {
                        return Some(c.key.clone());
                    }
                    has_ip = true;
                }
                if has_ip && any_ip.is_none() {
                    any_ip = Some(c);
                }
            }
            if let Some(c) = any_ip {
                return Some(c.key.clone());
            }
        }
        let default = self.default.as_ref().or(self.names.first())?;
        map.get(default).map(|c| c.key.clone())
    }
}

impl ResolvesServerCert for ListenerResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if acme {
            // Only the challenge certificate answers acme-tls/1, never a served one.
            let sni = hello.server_name()?.to_ascii_lowercase();
            return self.store.alpn_challenges.load().get(&sni).cloned();
        }
        let local = LOCAL_IP.try_with(|ip| *ip).ok();
        self.choose(hello.server_name(), local)
    }
}
