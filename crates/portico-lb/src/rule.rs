//! Listener rules: conditions on host, path, method, header, query string and source address,
//! evaluated in priority order, first match wins (as an ALB listener evaluates its rules).

use std::net::IpAddr;

use http::{HeaderMap, Method};
use ipnet::IpNet;

use crate::action::Action;
use crate::rate_limit::RateLimiter;
use crate::transform::{HeaderRewrite, Rewrite};

/// A compiled rule. Empty condition lists match everything.
#[derive(Debug)]
pub struct Rule {
    pub priority: u32,
    pub hosts: Vec<Glob>,
    pub paths: Vec<Glob>,
    pub methods: Vec<http::Method>,
    pub headers: Vec<(http::HeaderName, Vec<Glob>)>,
    pub query: Vec<(String, Glob)>,
    pub sources: Vec<IpNet>,
    pub action: Action,
    pub response_headers: HeaderRewrite,
    pub request_headers: HeaderRewrite,
    pub rewrite: Option<Rewrite>,
    pub rate_limit: Option<RateLimiter>,
}

impl Rule {
    /// Does this request match every condition of the rule?
    pub fn matches(&self, req: &RequestFacts<'_>) -> bool {
        (self.hosts.is_empty() || self.hosts.iter().any(|g| g.matches(req.host)))
            && (self.paths.is_empty() || self.paths.iter().any(|g| g.matches(req.path)))
            && (self.methods.is_empty() || self.methods.contains(req.method))
            && self.headers.iter().all(|(name, globs)| {
                req.headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| globs.iter().any(|g| g.matches(v)))
            })
            && self.query.iter().all(|(key, glob)| {
                query_pairs(req.query).any(|(k, v)| k == key.as_str() && glob.matches(v))
            })
            && (self.sources.is_empty() || self.sources.iter().any(|n| n.contains(&req.client)))
    }
}

/// What rules look at, extracted once per request.
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    /// Host without port, lower-cased.
    pub host: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub client: IpAddr,
}

fn query_pairs(q: &str) -> impl Iterator<Item = (&str, &str)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// A pattern with `*` (any run of characters) and `?` (one character), as ALB conditions use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Vec<char>,
    case_insensitive: bool,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Glob {
            pattern: pattern.chars().collect(),
            case_insensitive: false,
        }
    }

    /// Host names compare without regard to letter case.
    pub fn host(pattern: &str) -> Self {
        Glob {
            pattern: pattern.to_ascii_lowercase().chars().collect(),
            case_insensitive: true,
        }
    }

    /// Iterative wildcard match with single backtrack point: linear in practice, O(n·m) worst.
    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = if self.case_insensitive {
            text.to_ascii_lowercase().chars().collect()
        } else {
            text.chars().collect()
        };
        let p = &self.pattern;
        let (mut ti, mut pi) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while ti < text.len() {
            if pi < p.len() && (p[pi] == '?' || p[pi] == text[ti]) {
                ti += 1;
                pi += 1;
            } else if pi < p.len() && p[pi] == '*' {
                star = Some((pi, ti));
                pi += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == '*')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(Glob::new("/v1/*").matches("/v1/users"));
        assert!(!Glob::new("/v1/*").matches("/v2/users"));
        assert!(Glob::new("/img/*.png").matches("/img/a/b.png"));
        assert!(Glob::new("/a?c").matches("/abc"));
        assert!(!Glob::new("/a?c").matches("/ac"));
        assert!(Glob::new("*").matches(""));
        assert!(Glob::host("*.Example.com").matches("API.example.COM"));
        assert!(!Glob::host("*.example.com").matches("example.com"));
        assert!(Glob::new("a*b*c").matches("axxbyyc"));
        assert!(!Glob::new("a*b*c").matches("axxbyy"));
    }

    #[test]
    fn query_pairs_split() {
        let v: Vec<_> = query_pairs("a=1&b&c=x=y").collect();
        assert_eq!(v, vec![("a", "1"), ("b", ""), ("c", "x=y")]);
    }
}
