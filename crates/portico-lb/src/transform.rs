//! What a listener or rule changes on the way through: request and response headers (`remove`,
//! `set`, `add`, as ALB's header transforms), and the Host and path a target sees (`rewrite`).

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{HeaderRewriteConfig, RewriteConfig};

/// A compiled header rewrite: `remove` first, then `set`, then `add`.
#[derive(Debug, Default)]
pub struct HeaderRewrite {
    pub remove: Vec<HeaderName>,
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderRewrite {
    pub fn compile(c: &HeaderRewriteConfig) -> Result<Self, String> {
        let remove = c
            .remove
            .iter()
            .map(|k| {
                HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| format!("remove: {k:?} is not a valid header name"))
            })
            .collect::<Result<_, _>>()?;
        Ok(HeaderRewrite {
            remove,
            set: compile_map(&c.set).map_err(|e| format!("set: {e}"))?,
            add: compile_map(&c.add).map_err(|e| format!("add: {e}"))?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
    }
}

/// Headers as configured, validated into typed names and values.
pub fn compile_map(
    map: &BTreeMap<String, String>,
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    map.iter()
        .map(|(k, v)| {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("{k:?} is not a valid header name"))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| format!("the value of {k:?} is not a valid header value"))?;
            Ok((name, value))
        })
        .collect()
}

/// Host and path rewrites of a `forward` rule.
#[derive(Debug)]
pub struct Rewrite {
    pub host: Option<HeaderValue>,
    pub path: Option<(regex::Regex, String)>,
}

/// A path rewrite produced something that is not a path (a space, `?`, a control character).
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidPath;

/// Longest path a rewrite may produce (the request line must still fit a target's limits).
const MAX_PATH: usize = 8192;

impl Rewrite {
    /// Errors name the key (`host`, `path.regex`, `path.replace`) and what is wrong.
    pub fn compile(c: &RewriteConfig) -> Result<Self, (&'static str, String)> {
        let host = c
            .host
            .as_ref()
            .map(|h| {
                if h.is_empty() || h.bytes().any(|b| b.is_ascii_whitespace() || b == b'/') {
                    return Err(("host", format!("{h:?} is not a host name")));
                }
                HeaderValue::from_str(h).map_err(|_| ("host", format!("{h:?} is not a host name")))
            })
            .transpose()?;
        let path = c
            .path
            .as_ref()
            .map(|p| {
                let re = regex::RegexBuilder::new(&p.regex)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| ("path.regex", e.to_string()))?;
                if !p.replace.starts_with('/') {
                    return Err(("path.replace", "the replacement must start with /".into()));
                }
                Ok((re, p.replace.clone()))
            })
            .transpose()?;
        Ok(Rewrite { host, path })
    }

    /// The new path and query for `path` (without query) and `query`; `None` when the path
    /// does not change. A result that is not a valid request target is refused (`Err`).
    pub fn path_and_query(
        &self,
        path: &str,
        query: Option<&str>,
    ) -> Result<Option<String>, InvalidPath> {
        let Some((re, replace)) = &self.path else {
            return Ok(None);
        };
        if !re.is_match(path) {
            return Ok(None);
        }
        let new = re.replacen(path, 1, replace.as_str());
        if !new.starts_with('/')
            || new.len() > MAX_PATH
            || new
                .bytes()
                .any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#')
        {
            return Err(InvalidPath);
        }
        Ok(Some(match query {
            Some(q) => format!("{new}?{q}"),
            None => new.into_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PathRewriteConfig;

    #[test]
    fn header_rewrite_order() {
        let r = HeaderRewrite::compile(&HeaderRewriteConfig {
            set: [("x-env".into(), "prod".into())].into(),
            add: [("via".into(), "portico".into())].into(),
            remove: vec!["x-debug".into(), "x-env".into()],
        })
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-debug", HeaderValue::from_static("1"));
        h.insert("x-env", HeaderValue::from_static("dev"));
        h.insert("via", HeaderValue::from_static("1.1 cdn"));
        r.apply(&mut h);
        assert!(!h.contains_key("x-debug"));
        assert_eq!(h["x-env"], "prod");
        assert_eq!(h.get_all("via").iter().count(), 2);
    }

    #[test]
    fn path_rewrite() {
        let r = Rewrite::compile(&RewriteConfig {
            host: None,
            path: Some(PathRewriteConfig {
                regex: "^/api/(.*)$".into(),
                replace: "/v2/$1".into(),
            }),
        })
        .unwrap();
        assert_eq!(
            r.path_and_query("/api/users", Some("a=1")),
            Ok(Some("/v2/users?a=1".into()))
        );
        assert_eq!(r.path_and_query("/other", None), Ok(None));
        let bad = Rewrite::compile(&RewriteConfig {
            host: None,
            path: Some(PathRewriteConfig {
                regex: "^/(.*)$".into(),
                replace: "/$1 x".into(),
            }),
        })
        .unwrap();
        assert_eq!(bad.path_and_query("/a", None), Err(InvalidPath));
    }
}
