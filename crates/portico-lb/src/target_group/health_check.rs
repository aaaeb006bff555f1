//! Active health checks: each target of a group is probed every `interval`; `healthy_threshold`
//! consecutive passes bring it into rotation, `unhealthy_threshold` consecutive failures take it out.
//! Each probe uses a fresh connection, as an ALB's do, so that a broken listen socket is noticed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{TargetGroup, TargetState};
use crate::config::HealthCheckProtocol;

#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub protocol: HealthCheckProtocol,
    pub path: String,
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub matcher: Matcher,
}

/// Status codes that count as healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher(Vec<(u16, u16)>);

impl Matcher {
    /// Parses `"200"`, `"200,202"` or `"200-399"` (and mixes of them).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for part in s.split(',').map(str::trim) {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let parse = |x: &str| {
                x.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .ok_or_else(|| format!("{x:?} is not an HTTP status code (100-599)"))
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
    for (i, target) in group.targets.iter().enumerate() {
        let addr = SocketAddr::new(target.addr.ip(), check.port.unwrap_or(target.addr.port()));
        let state = target.state.clone();
        let (check, cancel) = (check.clone(), cancel.clone());
        let name = group.name.clone();
        let shown = group.targets[i].addr;
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
                    r = tokio::time::timeout(check.timeout, probe(&check, addr)) => {
                        r.unwrap_or_else(|_| Err(format!("no answer within {:?}", check.timeout)))
                    }
                };
                record(
                    &name,
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

async fn probe(check: &HealthCheck, addr: SocketAddr) -> Result<(), String> {
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
    }
}
