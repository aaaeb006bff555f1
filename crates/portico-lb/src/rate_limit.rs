//! Per-rule rate limits: a token bucket per key (the client address or a header's value), as
//! nginx's `limit_req` keyed on `$binary_remote_addr`. Over the budget a request is answered 429
//! with `Retry-After` and never reaches a target.
//!
//! Buckets live in a few mutex-guarded shards so that the two workers rarely meet; each shard
//! holds at most [`MAX_KEYS_PER_SHARD`] keys. A full shard first forgets buckets that have
//! refilled (they are the same as no bucket); when every key is still busy, new keys share one
//! overflow bucket, so memory stays bounded whatever a client sends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use http::{HeaderMap, HeaderName};

const SHARDS: usize = 16;
const MAX_KEYS_PER_SHARD: usize = 8192;
/// Longest header value used as a key (longer values are cut: a key, not a store).
const MAX_KEY_BYTES: usize = 256;

/// What a bucket is keyed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Source,
    Header(HeaderName),
}

impl KeySource {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "source" {
            return Ok(KeySource::Source);
        }
        match s.strip_prefix("header:") {
            Some(name) => HeaderName::from_bytes(name.trim().as_bytes())
                .map(KeySource::Header)
                .map_err(|_| format!("{name:?} is not a header name")),
            None => Err(format!(
                "key {s:?} is neither \"source\" nor \"header:NAME\""
            )),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    pub key: KeySource,
    shards: Vec<Mutex<Shard>>,
}

#[derive(Debug, Default)]
struct Shard {
    buckets: HashMap<Vec<u8>, Bucket>,
    overflow: Option<Bucket>,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: u32, key: KeySource) -> Self {
        RateLimiter {
            rate,
            burst: burst.max(1) as f64,
            key,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// Takes one token for this request's key; `Err(seconds)` is the Retry-After when none is
    /// left. A request without the header a limit is keyed on shares the empty key's bucket.
    pub fn check(&self, client: IpAddr, headers: &HeaderMap) -> Result<(), u64> {
        let mut key = [0u8; 16];
        let key: &[u8] = match &self.key {
            KeySource::Source => match client {
                IpAddr::V4(a) => {
                    key[..4].copy_from_slice(&a.octets());
                    &key[..4]
                }
                IpAddr::V6(a) => {
                    key = a.octets();
                    &key[..]
                }
            },
            KeySource::Header(name) => {
                let v = headers.get(name).map_or(&b""[..], |v| v.as_bytes());
                &v[..v.len().min(MAX_KEY_BYTES)]
            }
        };
        self.take(key, Instant::now())
    }

    fn take(&self, key: &[u8], now: Instant) -> Result<(), u64> {
        let shard = &self.shards[fnv(key) as usize % SHARDS];
        let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
        let (rate, burst) = (self.rate, self.burst);
        let fresh = Bucket {
            tokens: burst,
            at: now,
        };
        if !s.buckets.contains_key(key) && s.buckets.len() >= MAX_KEYS_PER_SHARD {
            s.buckets
                .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = if s.buckets.len() < MAX_KEYS_PER_SHARD || s.buckets.contains_key(key) {
            s.buckets.entry(key.to_vec()).or_insert(fresh)
        } else {
            s.overflow.get_or_insert(fresh)
        };
        let elapsed = now.duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - bucket.tokens) / rate).ceil() as u64).max(1))
        }
    }
}

/// FNV-1a: a fixed, fast hash to pick a shard (not a defence: a shard is only a lock).
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_refills_at_the_rate() {
        let l = RateLimiter::new(2.0, 3, KeySource::Source);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.take(b"a", t0).is_ok());
        }
        assert_eq!(l.take(b"a", t0), Err(1));
        assert!(l.take(b"b", t0).is_ok(), "another key has its own bucket");
        assert!(l.take(b"a", t0 + Duration::from_millis(500)).is_ok());
        assert!(l.take(b"a", t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn slow_rate_retry_after() {
        let l = RateLimiter::new(0.1, 1, KeySource::Source);
        let t0 = Instant::now();
        assert!(l.take(b"a", t0).is_ok());
        assert_eq!(l.take(b"a", t0), Err(10));
    }

    #[test]
    fn keys_are_bounded() {
        let l = RateLimiter::new(1.0, 1, KeySource::Source);
        let t0 = Instant::now();
        for i in 0..(SHARDS * MAX_KEYS_PER_SHARD + 1000) as u32 {
            let _ = l.take(&i.to_be_bytes(), t0);
        }
        let total: usize = l
            .shards
            .iter()
            .map(|s| s.lock().unwrap().buckets.len())
            .sum();
        assert!(total <= SHARDS * MAX_KEYS_PER_SHARD);
    }

    #[test]
    fn key_parse() {
        assert_eq!(KeySource::parse("source"), Ok(KeySource::Source));
        assert!(matches!(
            KeySource::parse("header:X-Api-Key"),
            Ok(KeySource::Header(_))
        ));
        assert!(KeySource::parse("cookie").is_err());
    }
}
