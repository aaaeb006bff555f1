//! Response compression, as Caddy's `encode` and nginx's `gzip on`: off unless a listener asks.
//! zstd, brotli or gzip (the listener's preference order among what the client accepts), for
//! compressible content types at or above a minimum length, streamed (never buffered whole).

use std::io;

use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use async_compression::Level;
use bytes::Bytes;
use futures_util::TryStreamExt;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyDataStream, BodyExt, StreamBody};
use hyper::body::Frame;

use crate::config::CompressConfig;
use crate::proxy::BoxBody;
use crate::upstream::BoxError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Zstd,
    Br,
    Gzip,
}

impl Encoding {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "zstd" => Some(Encoding::Zstd),
            "br" => Some(Encoding::Br),
            "gzip" => Some(Encoding::Gzip),
            _ => None,
        }
    }
    fn token(self) -> &'static str {
        match self {
            Encoding::Zstd => "zstd",
            Encoding::Br => "br",
            Encoding::Gzip => "gzip",
        }
    }
}

#[derive(Debug)]
pub struct Compress {
    /// Media types: exact (`application/json`) or a prefix ending in `*` (`text/*`).
    types: Vec<String>,
    encodings: Vec<Encoding>,
    min_bytes: u64,
}

/// What is compressed when `types` is not given (Caddy's and nginx's usual lists).
pub const DEFAULT_TYPES: &[&str] = &[
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/wasm",
    "image/svg+xml",
];

impl Compress {
    pub fn compile(c: &CompressConfig) -> Result<Self, (&'static str, String)> {
        let mut encodings = Vec::new();
        for e in &c.encodings {
            match Encoding::parse(e) {
                Some(x) => encodings.push(x),
                None => return Err(("encodings", format!("{e:?} is not zstd, br or gzip"))),
            }
        }
        if encodings.is_empty() {
            return Err(("encodings", "name at least one of zstd, br, gzip".into()));
        }
        let types = match &c.types {
            Some(t) if t.is_empty() => {
                return Err(("types", "name at least one media type".into()));
            }
            Some(t) => t.iter().map(|t| t.to_ascii_lowercase()).collect(),
            None => DEFAULT_TYPES.iter().map(|t| t.to_string()).collect(),
        };
        Ok(Compress {
            types,
            encodings,
            min_bytes: c.min_bytes,
        })
    }

    /// The encoding to use for a client that sent `accept` (`Accept-Encoding`), if any: the
    /// first of ours it accepts with a q-value above 0 (`*` accepts all not named).
    pub fn choose(&self, accept: Option<&HeaderValue>) -> Option<Encoding> {
        let accept = accept?.to_str().ok()?;
        let q_of = |name: &str| -> Option<f32> {
            let mut star = None;
            for part in accept.split(',') {
                let mut it = part.split(';');
                let token = it.next()?.trim().to_ascii_lowercase();
                let q = it
                    .find_map(|p| p.trim().strip_prefix("q="))
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .unwrap_or(1.0);
                if token == name {
                    return Some(q);
                }
                if token == "*" {
                    star = Some(q);
                }
            }
            star
        };
        self.encodings
            .iter()
            .copied()
            .find(|e| q_of(e.token()).is_some_and(|q| q > 0.0))
    }

    fn compressible(&self, res: &Response<BoxBody>) -> bool {
        let Some(ct) = res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        // Server-sent events must reach the client as they are written.
        media != "text/event-stream"
            && self.types.iter().any(|t| match t.strip_suffix('*') {
                Some(prefix) => media.starts_with(prefix),
                None => media == *t,
            })
    }

    /// Compresses `res` with `enc` when it is worth it and allowed; otherwise returns it as is.
    pub fn apply(
        &self,
        enc: Option<Encoding>,
        head_request: bool,
        mut res: Response<BoxBody>,
    ) -> Response<BoxBody> {
        if !self.compressible(&res) {
            return res;
        }
        res.headers_mut()
            .append(header::VARY, HeaderValue::from_static("accept-encoding"));
        let h = res.headers();
        let status = res.status();
        let too_small = h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n < self.min_bytes);
        let no_transform = h
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("no-transform"));
        let Some(enc) = enc else {
            return res;
        };
        if head_request
            || too_small
            || no_transform
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || status == StatusCode::PARTIAL_CONTENT
            || h.contains_key(header::CONTENT_ENCODING)
            || h.contains_key(header::CONTENT_RANGE)
        {
            return res;
        }
        let (mut parts, body) = res.into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::ACCEPT_RANGES);
        parts.headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(enc.token()),
        );
        // The compressed bytes differ from the original's: a strong validator becomes weak.
        if let Some(etag) = parts.headers.get(header::ETAG) {
            if let Ok(s) = etag.to_str() {
                if s.starts_with('"') {
                    if let Ok(v) = HeaderValue::from_str(&format!("W/{s}")) {
                        parts.headers.insert(header::ETAG, v);
                    }
                }
            }
        }
        let reader =
            tokio_util::io::StreamReader::new(BodyDataStream::new(body).map_err(io::Error::other));
        let body: BoxBody = match enc {
            Encoding::Zstd => stream(ZstdEncoder::with_quality(reader, Level::Default)),
            // Brotli's default quality (11) is for static files; 4 is nginx's usual dynamic one.
            Encoding::Br => stream(BrotliEncoder::with_quality(reader, Level::Precise(4))),
            Encoding::Gzip => stream(GzipEncoder::with_quality(reader, Level::Default)),
        };
        Response::from_parts(parts, body)
    }
}

fn stream<R: tokio::io::AsyncRead + Send + 'static>(r: R) -> BoxBody {
    let frames = tokio_util::io::ReaderStream::new(r)
        .map_ok(|b: Bytes| Frame::data(b))
        .map_err(|e| Box::new(e) as BoxError);
    StreamBody::new(frames).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(encodings: &[&str]) -> Compress {
        Compress::compile(&CompressConfig {
            types: None,
            encodings: encodings.iter().map(|s| s.to_string()).collect(),
            min_bytes: 0,
        })
        .unwrap()
    }

    #[test]
    fn negotiation() {
        let all = c(&["zstd", "br", "gzip"]);
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(
            all.choose(Some(&v("gzip, deflate, br"))),
            Some(Encoding::Br)
        );
        assert_eq!(
            all.choose(Some(&v("gzip;q=0.5, zstd;q=0"))),
            Some(Encoding::Gzip)
        );
        assert_eq!(all.choose(Some(&v("identity"))), None);
        assert_eq!(all.choose(Some(&v("*"))), Some(Encoding::Zstd));
        assert_eq!(all.choose(None), None);
        assert_eq!(c(&["gzip"]).choose(Some(&v("zstd, br"))), None);
    }
}
