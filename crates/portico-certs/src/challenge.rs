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

#[derive(Debug, Default, Clone)]
pub struct Http01Tokens(Arc<RwLock<HashMap<String, String>>>);

impl Http01Tokens {
    pub fn insert(&self, token: &str, key_authorization: &str) {
        if let Ok(mut m) = self.0.write() {
            m.insert(token.to_string(), key_authorization.to_string());
        }
    }

    pub fn remove(&self, token: &str) {
        if let Ok(mut m) = self.0.write() {
            m.remove(token);
        }
    }
}

impl Http01Responder for Http01Tokens {
    fn key_authorization(&self, token: &str) -> Option<String> {
        self.0.read().ok()?.get(token).cloned()
    }
}

/// Resolves a name the way a CA will (the binary: Portico's hosted zones first, else the system).
pub trait NameLookup: Send + Sync {
    fn addrs<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<std::net::IpAddr>, String>>;
}
