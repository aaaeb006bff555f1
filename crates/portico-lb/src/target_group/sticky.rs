//! Stickiness, as an ALB's two kinds: `lb_cookie` (Portico's cookie on every response names the
//! target) and `app_cookie` (Portico's cookie is set when the application sets its own).
//!
//! The cookie's value is the target's id, a fixed hash of the group's name and the target's
//! address: the same on every node of a cluster and across restarts, and meaningless outside
//! the group. A client choosing another id only chooses another target of the same group, so
//! the value is not signed. A cookie that names no available target is ignored: the request is
//! balanced as usual and the response moves the client to the target that answered.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

use crate::rate_limit::fnv;

#[derive(Debug)]
pub struct Stickiness {
    /// Portico's cookie for this group: `portico_lb_<group>` or `portico_app_<group>`.
    pub cookie: String,
    /// `app_cookie`: the application's cookie that starts stickiness.
    pub app_cookie: Option<String>,
    max_age: u64,
}

/// The id of `addr` in `group`, as the cookie carries it.
pub fn target_id(group: &str, addr: SocketAddr) -> String {
    let mut key = group.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(addr.to_string().as_bytes());
    format!("{:016x}", fnv(&key))
}

impl Stickiness {
    pub fn new(group: &str, duration: Duration, app_cookie: Option<String>) -> Self {
        let safe: String = group
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let kind = if app_cookie.is_some() { "app" } else { "lb" };
        Stickiness {
            cookie: format!("portico_{kind}_{safe}"),
            app_cookie,
            max_age: duration.as_secs().max(1),
        }
    }

    /// The target id the request's cookie names, if any.
    pub fn requested<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == self.cookie)
            .map(|(_, v)| v.trim())
    }

    /// Adds Portico's cookie to a response from the target with `id`: always for `lb_cookie`;
    /// for `app_cookie` when the application set its cookie, or when the client's cookie named
    /// another target (it moved).
    pub fn on_response(
        &self,
        headers: &mut HeaderMap,
        id: &str,
        requested: Option<&str>,
        secure: bool,
    ) {
        let set = match &self.app_cookie {
            None => true,
            Some(app) => {
                requested.is_some_and(|r| r != id)
                    || headers
                        .get_all(SET_COOKIE)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .any(|v| {
                            v.split(';')
                                .next()
                                .and_then(|p| p.split_once('='))
                                .is_some_and(|(n, _)| n.trim() == app)
                        })
            }
        };
        if !set {
            return;
        }
        let cookie = format!(
            "{}={id}; Max-Age={}; Path=/; HttpOnly{}",
            self.cookie,
            self.max_age,
            if secure { "; Secure" } else { "" }
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            headers.append(SET_COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_found_among_others() {
        let s = Stickiness::new("api v1", Duration::from_secs(60), None);
        assert_eq!(s.cookie, "portico_lb_api_v1");
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("a=1; portico_lb_api_v1=00ff"),
        );
        assert_eq!(s.requested(&h), Some("00ff"));
    }

    #[test]
    fn app_cookie_set_only_when_the_app_sets_its_own() {
        let s = Stickiness::new("g", Duration::from_secs(60), Some("SESSION".into()));
        let mut h = HeaderMap::new();
        s.on_response(&mut h, "id1", None, false);
        assert!(h.get(SET_COOKIE).is_none());
        h.append(SET_COOKIE, HeaderValue::from_static("SESSION=abc; Path=/"));
        s.on_response(&mut h, "id1", None, true);
        let all: Vec<_> = h.get_all(SET_COOKIE).iter().collect();
        assert_eq!(all.len(), 2);
        assert_eq!(
            all[1],
            "portico_app_g=id1; Max-Age=60; Path=/; HttpOnly; Secure"
        );
        assert_ne!(
            target_id("g", "127.0.0.1:1".parse().unwrap()),
            target_id("g", "127.0.0.1:2".parse().unwrap())
        );
    }
}
