//! Active health checks: each target of a group is probed every `interval`; `healthy_threshold`
//! consecutive passes bring it into rotation, `unhealthy_threshold` consecutive failures take it out.
//! Each probe uses a fresh connection, as an ALB's do, so that a broken listen socket is noticed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{TargetGroup, TargetState};
use crate::config::HealthCheckProtocol;
use crate::upstream::client::{self, Transport};

/// The standard gRPC health method (`grpc.health.v1.Health/Check`).
pub const GRPC_HEALTH_PATH: &str = "/grpc.health.v1.Health/Check";
/// Largest probe response body read (a health answer is a few bytes).
const MAX_PROBE_BODY: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub protocol: HealthCheckProtocol,
    /// HTTPS or HTTP/2 (gRPC) probes; plain HTTP/1.1 when `None`.
    pub transport: Option<Arc<Transport>>,
    pub path: String,
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub matcher: Matcher,
}

impl HealthCheck {
    /// A check outside any target group (the hosted zones' own: a record set's `health =
    /// "http://…"`): HTTP or HTTPS GET `path` answering 2xx or 3xx, or a TCP connect. HTTPS
    /// checks do not verify the certificate, as Route 53's do not.
    pub fn standalone(
        protocol: HealthCheckProtocol,
        path: &str,
        interval: Duration,
        timeout: Duration,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Result<Self, String> {
        let transport = match protocol {
            HealthCheckProtocol::Https => Some(Arc::new(Transport {
                tls: Some(client::tls_config(None, false, false)?),
                server_name: None,
                h2: false,
                grpc: false,
            })),
            _ => None,
        };
        Ok(HealthCheck {
            protocol,
            transport,
            path: path.to_string(),
            port: None,
            interval,
            timeout,
            healthy_threshold,
            unhealthy_threshold,
            matcher: Matcher(vec![(200, 399)]),
        })
    }
}

/// Status codes that count as healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher(Vec<(u16, u16)>);

impl Matcher {
    /// Parses `"200"`, `"200,202"` or `"200-399"` (and mixes of them).
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::parse_in(s, 100..=599, "an HTTP status code")
    }

    /// gRPC status codes (0-16): `"0"`, `"0,12"`, `"0-2"`.
    pub fn parse_grpc(s: &str) -> Result<Self, String> {
        Self::parse_in(s, 0..=16, "a gRPC status code")
    }

    fn parse_in(s: &str, valid: std::ops::RangeInclusive<u16>, what: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for part in s.split(',').map(str::trim) {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let parse = |x: &str| {
                x.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|c| valid.contains(c))
                    .ok_or_else(|| {
                        format!("{x:?} is not {what} ({}-{})", valid.start(), valid.end())
                    })
            };
            let (lo, hi) = (parse(lo)?, parse(hi)?);
            if lo > hi {
                return Err(format!("range {part:?} is backwards"));
            }
            ranges.push((lo, hi));
        }
        Ok(Matcher(ranges))
    }

    pub fn matches(&self, code: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&code))
    }
}

/// Starts one probing task per target of `group`, ending when `cancel` fires.
pub fn spawn(group: Arc<TargetGroup>, cancel: CancellationToken) {
    let Some(check) = group.health_check.clone() else {
        return;
    };
    for target in &group.targets {
        let addr = SocketAddr::new(target.addr.ip(), check.port.unwrap_or(target.addr.port()));
        watch(
            group.name.clone(),
            target.addr,
            addr,
            target.tls_name.clone(),
            check.clone(),
            target.state.clone(),
            cancel.clone(),
        );
    }
}

/// Probes `addr` every `check.interval` until `cancel` fires, moving `state` by the thresholds;
/// `label` and `shown` name it in logs. Target groups use it, and so do the hosted zones' own
/// health checks (a record set's `health = "http://…"`).
pub fn watch(
    label: String,
    shown: SocketAddr,
    addr: SocketAddr,
    tls_name: Option<ServerName<'static>>,
    check: HealthCheck,
    state: Arc<TargetState>,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        let mut passes = 0u32;
        let mut fails = 0u32;
        let mut tick = tokio::time::interval(check.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return,
                r = tokio::time::timeout(check.timeout, probe(&check, addr, &tls_name)) => {
                    r.unwrap_or_else(|_| Err(format!("no answer within {:?}", check.timeout)))
                }
            };
            record(
                &label,
                shown,
                &state,
                &check,
                outcome,
                &mut passes,
                &mut fails,
            );
        }
    });
}

fn record(
    group: &str,
    target: SocketAddr,
    state: &TargetState,
    check: &HealthCheck,
    outcome: Result<(), String>,
    passes: &mut u32,
    fails: &mut u32,
) {
    match outcome {
        Ok(()) => {
            *fails = 0;
            *passes += 1;
            if !state.healthy() && *passes >= check.healthy_threshold {
                state.set_healthy(true, "");
                tracing::info!(event = "target_healthy", target_group = group, %target, "target healthy");
            }
        }
        Err(reason) => {
            *passes = 0;
            *fails += 1;
            if state.healthy() && *fails >= check.unhealthy_threshold {
                state.set_healthy(false, &reason);
                tracing::warn!(event = "target_unhealthy", target_group = group, %target, %reason, "target unhealthy");
            }
        }
    }
}

async fn probe(
    check: &HealthCheck,
    addr: SocketAddr,
    tls_name: &Option<ServerName<'static>>,
) -> Result<(), String> {
    if check.protocol != HealthCheckProtocol::Tcp {
        if let Some(t) = &check.transport {
            return probe_client(check, t, addr, tls_name).await;
        }
    }
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if check.protocol == HealthCheckProtocol::Tcp {
        return Ok(());
    }
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = http::Request::get(check.path.as_str())
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "Portico-HealthChecker/1.0")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"));
    conn.abort();
    let code = res?.status().as_u16();
    if check.matcher.matches(code) {
        Ok(())
    } else {
        Err(format!("health check returned status {code}"))
    }
}

/// An HTTPS or HTTP/2 probe on a fresh connection; gRPC groups ask the gRPC way and match the
/// `grpc-status`, and the standard health method must also answer SERVING.
async fn probe_client(
    check: &HealthCheck,
    t: &Transport,
    addr: SocketAddr,
    tls_name: &Option<ServerName<'static>>,
) -> Result<(), String> {
    let name = t.server_name.clone().or_else(|| tls_name.clone());
    let io = client::open(t, addr, &name, check.timeout)
        .await
        .map_err(|e| e.to_string())?;
    let authority = addr.to_string();
    let uri = if t.h2 {
        format!("{}://{authority}{}", t.scheme(), check.path)
    } else {
        check.path.clone()
    };
    let mut req = http::Request::builder()
        .uri(uri)
        .header(http::header::USER_AGENT, "Portico-HealthChecker/1.0");
    if !t.h2 {
        req = req
            .header(http::header::HOST, authority)
            .header(http::header::CONNECTION, "close");
    }
    let req = if t.grpc {
        req.method(http::Method::POST)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            // An empty HealthCheckRequest (service "": the whole server), length-prefixed.
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
    } else {
        req.method(http::Method::GET).body(Full::new(Bytes::new()))
    }
    .map_err(|e| format!("request: {e}"))?;
    let io = TokioIo::new(io);
    // The connection task runs while the answer is read, and ends with this probe.
    let (res, _conn) = if t.h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let conn = client::AbortOnDrop::new(tokio::spawn(conn));
        (sender.send_request(req).await, conn)
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let conn = client::AbortOnDrop::new(tokio::spawn(conn));
        (sender.send_request(req).await, conn)
    };
    let (parts, body) = res.map_err(|e| format!("request: {e}"))?.into_parts();
    let collected = Limited::new(body, MAX_PROBE_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    if !t.grpc {
        let code = parts.status.as_u16();
        return if check.matcher.matches(code) {
            Ok(())
        } else {
            Err(format!("health check returned status {code}"))
        };
    }
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok())
        .ok_or_else(|| format!("no grpc-status in the answer (HTTP {})", parts.status))?;
    if !check.matcher.matches(grpc_status) {
        return Err(format!("health check returned gRPC status {grpc_status}"));
    }
    if check.path == GRPC_HEALTH_PATH && grpc_status == 0 {
        return match serving_status(&collected.to_bytes()) {
            Some(1) => Ok(()),
            Some(2) => Err("the gRPC health service answered NOT_SERVING".into()),
            Some(s) => Err(format!(
                "the gRPC health service answered status {s}, not SERVING"
            )),
            None => Err("the gRPC health answer cannot be read".into()),
        };
    }
    Ok(())
}

/// The `status` of a length-prefixed `grpc.health.v1.HealthCheckResponse` (field 1, a varint);
/// 0 (UNKNOWN) when the field is absent. Hand-read: one enum field is all a probe needs, not a
/// protobuf library.
fn serving_status(body: &[u8]) -> Option<u64> {
    let (&flag, rest) = body.split_first()?;
    if flag != 0 || rest.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
    let mut msg = rest.get(4..4 + len)?;
    let mut status = 0;
    let varint = |m: &mut &[u8]| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = m.split_first()?;
            *m = rest;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    };
    while !msg.is_empty() {
        let key = varint(&mut msg)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = varint(&mut msg)?,
            (_, 0) => {
                varint(&mut msg)?;
            }
            (_, 2) => {
                let n = varint(&mut msg)? as usize;
                msg = msg.get(n..)?;
            }
            (_, 1) => msg = msg.get(8..)?,
            (_, 5) => msg = msg.get(4..)?,
            _ => return None,
        }
    }
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matcher_forms() {
        let m = Matcher::parse("200-299, 404").unwrap();
        assert!(m.matches(204) && m.matches(404) && !m.matches(301));
        assert!(Matcher::parse("abc").is_err());
        assert!(Matcher::parse("300-200").is_err());
        assert!(Matcher::parse("700").is_err());
        let g = Matcher::parse_grpc("0,12").unwrap();
        assert!(g.matches(0) && g.matches(12) && !g.matches(14));
        assert!(Matcher::parse_grpc("17").is_err());
    }

    #[test]
    fn grpc_health_answers() {
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 0x01]), Some(1));
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 0x02]), Some(2));
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Some(0));
        assert_eq!(serving_status(&[0, 0, 0, 0, 9, 0x08]), None);
        assert_eq!(serving_status(&[1, 0, 0, 0, 0]), None);
    }
}
