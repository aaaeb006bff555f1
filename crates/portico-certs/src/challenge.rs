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
    fn publish<'a>(&'a self, name: &'a str, value: &'a str) -> BoxFuture<'a, Result<(), String>>;
    fn remove<'a>(&'a self, name: &'a str, value: &'a str) -> BoxFuture<'a, Result<(), String>>;
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

impl Http01Responder for Http01Tokens {
    fn key_authorization(&self, token: &str) -> Option<String> {
        if let Some(k) = self.local.read().ok()?.get(token).cloned() {
            return Some(k);
        }
        // Another node's order: the token is in the shared store.
        let store = self.shared()?;
        let value = store.get(&shared_key(token)?).ok()??;
        String::from_utf8(value).ok()
    }
}

/// Resolves a name the way a CA will (the binary: Portico's hosted zones first, else the system).
pub trait NameLookup: Send + Sync {
    fn addrs<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<std::net::IpAddr>, String>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http01_tokens_put_by_one_node_are_answered_by_another_through_the_shared_store() {
        let dir = std::env::temp_dir().join(format!("portico-tokens-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store: Arc<dyn portico_store::Store> = Arc::new(portico_store::LocalDir::new(&dir));
        let (ordering, answering) = (Http01Tokens::default(), Http01Tokens::default());
        ordering.share(store.clone());
        answering.share(store);
        ordering.insert("tok-EN_1", "tok-EN_1.thumbprint");
        assert_eq!(
            answering.key_authorization("tok-EN_1").as_deref(),
            Some("tok-EN_1.thumbprint")
        );
        // Not a token: never looked up in the store.
        assert_eq!(answering.key_authorization("../../admin.token"), None);
        ordering.remove("tok-EN_1");
        assert_eq!(answering.key_authorization("tok-EN_1"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
