//! Challenge solvers. HTTP-01: tokens in flight, which every HTTP listener of the load balancer
//! answers at `/.well-known/acme-challenge/<token>`, before redirects and rules. DNS-01: a TXT
//! record written where the name's zone is served, through [`Dns01Publisher`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

/// A boxed future, for the object-safe solver seam.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Publishes and removes `_acme-challenge` TXT values. `publish` returns once every
/// authoritative nameserver of the zone answers the value, so the CA is only told to validate
/// when validation can pass.
pub trait Dns01Publisher: Send + Sync {
    /// `progress` hears each step (the change applied, each nameserver that answers it).
    fn publish<'a>(
        &'a self,
        name: &'a str,
        value: &'a str,
        progress: &'a (dyn Fn(String) + Send + Sync),
    ) -> BoxFuture<'a, Result<(), String>>;
    fn remove<'a>(&'a self, name: &'a str, value: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// Before ordering: can a TXT record at `name` (an `_acme-challenge` name) be found by the
    /// CA at all? The reason when it certainly cannot (the zone is delegated elsewhere).
    fn check<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

use portico_lb::Http01Responder;

/// Pending HTTP-01 key authorizations by token. In cluster mode they are also in the shared
/// store, so that whichever node the CA reaches can answer.
#[derive(Default, Clone)]
pub struct Http01Tokens {
    local: Arc<RwLock<HashMap<String, String>>>,
    shared: Arc<RwLock<Option<Arc<dyn portico_store::Store>>>>,
}

impl std::fmt::Debug for Http01Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http01Tokens").finish_non_exhaustive()
    }
}

fn shared_key(token: &str) -> Option<String> {
    // Tokens are base64url (RFC 8555 §8.1); anything else is never a stored token.
    token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        .then(|| format!("acme/http-01/{token}"))
        .filter(|_| !token.is_empty() && token.len() <= 128)
}

impl Http01Tokens {
    pub fn share(&self, store: Arc<dyn portico_store::Store>) {
        if let Ok(mut s) = self.shared.write() {
            *s = Some(store);
        }
    }

    fn shared(&self) -> Option<Arc<dyn portico_store::Store>> {
        self.shared.read().ok()?.clone()
    }

    pub fn insert(&self, token: &str, key_authorization: &str) {
        if let Ok(mut m) = self.local.write() {
            m.insert(token.to_string(), key_authorization.to_string());
        }
        if let (Some(store), Some(key)) = (self.shared(), shared_key(token)) {
            if let Err(e) = store.put(&key, key_authorization.as_bytes(), 0o644) {
                tracing::warn!(error = %e, "cannot share the HTTP-01 token: only this node answers it");
            }
        }
    }

    pub fn remove(&self, token: &str) {
        if let Ok(mut m) = self.local.write() {
            m.remove(token);
        }
        if let (Some(store), Some(key)) = (self.shared(), shared_key(token)) {
            let _ = store.delete(&key);
        }
    }
}

/// At most this many shared-store lookups for unknown tokens at once; more are answered "not
/// found" at once, so a flood of made-up tokens cannot tie up the blocking pool or etcd.
const SHARED_LOOKUPS: usize = 4;
/// How long a lookup in the shared store may take (a CA waits about 10 s for an answer).
const SHARED_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

static LOOKUPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(SHARED_LOOKUPS);

impl Http01Tokens {
    /// The key authorization for `token`: this node's own orders first, then (cluster mode)
    /// another node's, read from the shared store on the blocking pool.
    pub async fn lookup(&self, token: &str) -> Option<String> {
        if let Some(k) = self.local.read().ok()?.get(token).cloned() {
            return Some(k);
        }
        let (store, key) = (self.shared()?, shared_key(token)?);
        let _permit = LOOKUPS.try_acquire().ok()?;
        let read = tokio::task::spawn_blocking(move || store.get(&key));
        let value = tokio::time::timeout(SHARED_LOOKUP_TIMEOUT, read)
            .await
            .ok()?
            .ok()?
            .ok()??;
        String::from_utf8(value).ok()
    }
}

impl Http01Responder for Http01Tokens {
    fn key_authorization<'a>(
        &'a self,
        token: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send + 'a>> {
        Box::pin(self.lookup(token))
    }
}

/// Where TLS-ALPN-01 digests are shared between nodes: `acme/tls-alpn-01/<name>`, hex.
pub const SHARED_TLS_ALPN01: &str = "acme/tls-alpn-01/";

/// Pending TLS-ALPN-01 challenges, answered by the HTTPS listeners' cert resolver for the
/// `acme-tls/1` protocol. In cluster mode the ordering node also puts each key authorization's
/// digest into the shared store, and every node mirrors what is there ([`Self::mirror`], run
/// when the store's watch fires), so whichever node the CA reaches answers. The TLS handshake
/// cannot wait for the store, so the answer must already be in memory when the CA connects.
pub struct TlsAlpn01Challenges {
    certs: Arc<portico_lb::tls::CertStore>,
    shared: RwLock<Option<Arc<dyn portico_store::Store>>>,
    /// What the mirror set, by name: the digest it was made for.
    mirrored: std::sync::Mutex<HashMap<String, Vec<u8>>>,
}

impl TlsAlpn01Challenges {
    pub fn new(certs: Arc<portico_lb::tls::CertStore>) -> Self {
        TlsAlpn01Challenges {
            certs,
            shared: RwLock::new(None),
            mirrored: Default::default(),
        }
    }

    pub fn share(&self, store: Arc<dyn portico_store::Store>) {
        if let Ok(mut s) = self.shared.write() {
            *s = Some(store);
        }
    }

    fn shared(&self) -> Option<Arc<dyn portico_store::Store>> {
        self.shared.read().ok()?.clone()
    }

    /// Answers `acme-tls/1` for `domain` with the digest of its key authorization.
    pub fn set(&self, domain: &str, digest: &[u8]) -> Result<(), String> {
        self.certs
            .set_alpn_challenge(domain, Some(alpn_certificate(domain, digest)?));
        if let Some(store) = self.shared() {
            let key = format!("{SHARED_TLS_ALPN01}{domain}");
            if let Err(e) = store.put(&key, hex(digest).as_bytes(), 0o644) {
                tracing::warn!(error = %e, %domain, "cannot share the TLS-ALPN-01 challenge: only this node answers it");
            }
        }
        Ok(())
    }

    pub fn clear(&self, domain: &str) {
        self.certs.set_alpn_challenge(domain, None);
        if let Some(store) = self.shared() {
            let _ = store.delete(&format!("{SHARED_TLS_ALPN01}{domain}"));
        }
    }

    /// Brings the shared store's challenges into this node's resolver (blocking: run it off
    /// the async workers). Challenges that left the store leave the resolver.
    pub fn mirror(&self) -> std::io::Result<()> {
        let Some(store) = self.shared() else {
            return Ok(());
        };
        let mut now = HashMap::new();
        for key in store.list(SHARED_TLS_ALPN01)? {
            let Some(domain) = key.strip_prefix(SHARED_TLS_ALPN01) else {
                continue;
            };
            let digest = store.get(&key)?.and_then(|v| unhex(&v));
            if let Some(d) = digest.filter(|d| d.len() == 32) {
                now.insert(domain.to_string(), d);
            }
        }
        let mut mirrored = self.mirrored.lock().unwrap_or_else(|e| e.into_inner());
        for (domain, digest) in &now {
            if mirrored.get(domain) != Some(digest) {
                match alpn_certificate(domain, digest) {
                    Ok(cert) => self.certs.set_alpn_challenge(domain, Some(cert)),
                    Err(e) => {
                        tracing::warn!(%domain, error = %e, "cannot answer the shared TLS-ALPN-01 challenge")
                    }
                }
            }
        }
        for gone in mirrored.keys().filter(|d| !now.contains_key(*d)) {
            self.certs.set_alpn_challenge(gone, None);
        }
        *mirrored = now;
        Ok(())
    }
}

/// The self-signed certificate TLS-ALPN-01 answers with: the name, and the critical
/// acmeIdentifier extension holding the SHA-256 of the key authorization (RFC 8737).
/// The name a TLS-ALPN-01 validation of an IP address sends as SNI (RFC 8738 §6): the
/// address's reverse-mapping name, `1.0.0.127.in-addr.arpa` or the 32 nibbles under `ip6.arpa`.
pub fn reverse_name(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        std::net::IpAddr::V6(v6) => {
            let mut s = String::with_capacity(72);
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0x0f, b >> 4));
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// The address a reverse-mapping name stands for (the inverse of [`reverse_name`]).
pub fn ip_of_reverse(name: &str) -> Option<std::net::IpAddr> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        let mut o: Vec<u8> = rest
            .split('.')
            .map(|l| l.parse().ok())
            .collect::<Option<_>>()?;
        if o.len() != 4 {
            return None;
        }
        o.reverse();
        return Some(std::net::IpAddr::from([o[0], o[1], o[2], o[3]]));
    }
    let rest = name.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<u8> = rest
        .split('.')
        .map(|l| {
            (l.len() == 1)
                .then(|| u8::from_str_radix(l, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    if nibbles.len() != 32 {
        return None;
    }
    let mut b = [0u8; 16];
    for (i, pair) in nibbles.chunks(2).enumerate() {
        b[15 - i] = pair[1] << 4 | pair[0];
    }
    Some(std::net::IpAddr::from(b))
}

/// The TLS-ALPN-01 certificate for `domain` (RFC 8737); for an address's reverse-mapping name it
/// carries the address itself as an iPAddress subjectAltName (RFC 8738 §6).
fn alpn_certificate(
    domain: &str,
    digest: &[u8],
) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let san = ip_of_reverse(domain).map_or_else(|| domain.to_string(), |ip| ip.to_string());
    let mut params = rcgen::CertificateParams::new(vec![san]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signer = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

#[cfg(test)]
#[test]
fn reverse_names_round_trip() {
    for ip in ["127.0.0.1", "203.0.113.7", "2001:db8::1", "::1"] {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        assert_eq!(ip_of_reverse(&reverse_name(ip)), Some(ip), "{ip}");
    }
    assert_eq!(
        reverse_name("203.0.113.7".parse().unwrap()),
        "7.113.0.203.in-addr.arpa"
    );
    assert!(reverse_name("2001:db8::1".parse().unwrap())
        .starts_with("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"));
    assert_eq!(ip_of_reverse("app.example.com"), None);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &[u8]) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(s).ok()?.trim();
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Resolves a name the way a CA will (the binary: Portico's hosted zones first, else the system).
pub trait NameLookup: Send + Sync {
    fn addrs<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<std::net::IpAddr>, String>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http01_tokens_put_by_one_node_are_answered_by_another_through_the_shared_store() {
        let dir = std::env::temp_dir().join(format!("portico-tokens-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store: Arc<dyn portico_store::Store> = Arc::new(portico_store::LocalDir::new(&dir));
        let (ordering, answering) = (Http01Tokens::default(), Http01Tokens::default());
        ordering.share(store.clone());
        answering.share(store);
        ordering.insert("tok-EN_1", "tok-EN_1.thumbprint");
        assert_eq!(
            answering.lookup("tok-EN_1").await.as_deref(),
            Some("tok-EN_1.thumbprint")
        );
        // Not a token: never looked up in the store.
        assert_eq!(answering.lookup("../../admin.token").await, None);
        ordering.remove("tok-EN_1");
        assert_eq!(answering.lookup("tok-EN_1").await, None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tls_alpn01_challenges_set_by_one_node_are_mirrored_by_another_and_leave_with_it() {
        let dir = std::env::temp_dir().join(format!("portico-alpn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store: Arc<dyn portico_store::Store> = Arc::new(portico_store::LocalDir::new(&dir));
        let (a_certs, b_certs) = (
            portico_lb::tls::CertStore::new(),
            portico_lb::tls::CertStore::new(),
        );
        let (a, b) = (
            TlsAlpn01Challenges::new(a_certs.clone()),
            TlsAlpn01Challenges::new(b_certs.clone()),
        );
        a.share(store.clone());
        b.share(store);
        let digest = [7u8; 32];
        a.set("app.example.test", &digest).unwrap();
        assert!(b_certs.alpn_challenge("app.example.test").is_none());
        b.mirror().unwrap();
        let cert = b_certs
            .alpn_challenge("app.example.test")
            .expect("mirrored");
        assert!(cert.cert[0].as_ref().windows(32).any(|w| w == digest));
        a.clear("app.example.test");
        b.mirror().unwrap();
        assert!(b_certs.alpn_challenge("app.example.test").is_none());
        assert_eq!(unhex(hex(&digest).as_bytes()).unwrap(), digest);
        assert_eq!(unhex(b"zz"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
