//! Actions a listener or rule takes: `forward` to target groups, `redirect`, `fixed_response`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::target_group::{interleave, TargetGroup};

#[derive(Debug)]
pub enum Action {
    Forward(Forward),
    Redirect(Redirect),
    FixedResponse(FixedResponse),
}

/// Forward to one target group, or spread over several by weight.
#[derive(Debug)]
pub struct Forward {
    /// Groups repeated by weight and interleaved, so that walking it round-robin honours weights.
    sequence: Vec<Arc<TargetGroup>>,
    next: AtomicUsize,
}

impl Forward {
    pub fn new(groups: Vec<(Arc<TargetGroup>, u32)>) -> Self {
        Forward {
            sequence: interleave(groups),
            next: AtomicUsize::new(0),
        }
    }

    /// Every group it forwards to (each once per weight).
    pub fn groups(&self) -> impl Iterator<Item = &Arc<TargetGroup>> {
        self.sequence.iter()
    }

    /// The group this request goes to.
    pub fn pick(&self) -> Option<&Arc<TargetGroup>> {
        if self.sequence.len() <= 1 {
            return self.sequence.first();
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.sequence.len();
        self.sequence.get(i)
    }
}

/// A redirect with ALB-style placeholders.
#[derive(Debug)]
pub struct Redirect {
    pub protocol: String,
    pub host: String,
    pub port: Option<String>,
    pub path: String,
    pub query: String,
    pub status: http::StatusCode,
}

/// What a redirect's placeholders are filled with.
pub struct RedirectInput<'a> {
    pub protocol: &'a str,
    pub host: &'a str,
    pub port: u16,
    /// The request path including its leading slash.
    pub path: &'a str,
    pub query: &'a str,
}

impl Redirect {
    /// The `Location` for this request.
    pub fn location(&self, input: &RedirectInput<'_>) -> String {
        let path_no_slash = input.path.strip_prefix('/').unwrap_or(input.path);
        let fill = |s: &str| {
            s.replace("#{protocol}", input.protocol)
                .replace("#{host}", input.host)
                .replace("#{port}", &input.port.to_string())
                .replace("#{path}", path_no_slash)
                .replace("#{query}", input.query)
        };
        let protocol = fill(&self.protocol).to_ascii_lowercase();
        let host = fill(&self.host);
        let port = match &self.port {
            Some(p) => fill(p),
            // Changing the scheme without naming a port means that scheme's default port,
            // as `return 301 https://$host$request_uri` does in nginx.
            None if protocol != input.protocol => default_port(&protocol).to_string(),
            None => input.port.to_string(),
        };
        let mut path = fill(&self.path);
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        let query = fill(&self.query);
        let mut out = format!("{protocol}://{host}");
        if port.parse::<u16>().ok() != Some(default_port(&protocol)) {
            out.push(':');
            out.push_str(&port);
        }
        out.push_str(&path);
        if !query.is_empty() {
            out.push('?');
            out.push_str(&query);
        }
        out
    }
}

fn default_port(protocol: &str) -> u16 {
    if protocol == "https" {
        443
    } else {
        80
    }
}

#[derive(Debug)]
pub struct FixedResponse {
    pub status: http::StatusCode,
    pub content_type: http::HeaderValue,
    pub body: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(protocol: &str, port: Option<&str>) -> Redirect {
        Redirect {
            protocol: protocol.into(),
            host: "#{host}".into(),
            port: port.map(Into::into),
            path: "/#{path}".into(),
            query: "#{query}".into(),
            status: http::StatusCode::MOVED_PERMANENTLY,
        }
    }

    #[test]
    fn http_to_https() {
        let input = RedirectInput {
            protocol: "http",
            host: "example.com",
            port: 80,
            path: "/a/b",
            query: "x=1",
        };
        assert_eq!(
            redirect("https", None).location(&input),
            "https://example.com/a/b?x=1"
        );
        assert_eq!(
            redirect("https", Some("8443")).location(&input),
            "https://example.com:8443/a/b?x=1"
        );
        let r = Redirect {
            path: "/new/#{path}".into(),
            query: "".into(),
            host: "www.#{host}".into(),
            ..redirect("#{protocol}", None)
        };
        assert_eq!(r.location(&input), "http://www.example.com/new/a/b");
    }

    #[test]
    fn weights_interleave() {
        let seq = interleave(vec![("a", 3), ("b", 1)]);
        assert_eq!(seq.len(), 4);
        assert_eq!(seq.iter().filter(|x| **x == "a").count(), 3);
        let seq = interleave(vec![("a", 1), ("b", 1)]);
        assert_eq!(seq, vec!["a", "b"]);
    }
}
