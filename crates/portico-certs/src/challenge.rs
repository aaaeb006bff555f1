//! HTTP-01 tokens in flight: the certificate manager writes them, every HTTP listener of the load
//! balancer answers `/.well-known/acme-challenge/<token>` from them, before redirects and rules.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

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
