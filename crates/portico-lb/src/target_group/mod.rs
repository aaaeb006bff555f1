//! Target groups: the targets behind a forward action, how one is chosen, and their health.
//!
//! A [`TargetGroup`] belongs to one snapshot and is immutable. The state that must outlive a reload
//! (health, outstanding requests) is a [`TargetState`] kept in the [`TargetRegistry`], keyed by
//! group name and address, and shared by every snapshot that still names that target.

pub mod health_check;
mod selection;
pub mod sticky;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Algorithm;
pub use health_check::HealthCheck;
pub use sticky::Stickiness;

/// When no active health check is configured, a target taken out by passive detection is tried
/// again after this long (nginx's `fail_timeout`).
const PASSIVE_RETRY_AFTER: Duration = Duration::from_secs(10);
/// Without an active health check, this many consecutive connection failures take a target out.
const PASSIVE_FAILURES_WITHOUT_CHECK: u32 = 1;

/// A compiled target group.
pub struct TargetGroup {
    pub name: String,
    pub algorithm: Algorithm,
    pub targets: Vec<Target>,
    pub health_check: Option<HealthCheck>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub stickiness: Option<Stickiness>,
    /// How long a removed target's requests in flight may run on before its connections close.
    pub deregistration_delay: Duration,
    /// HTTPS or HTTP/2 to the targets (hyper's client); plain HTTP/1.1 (Portico's own) when
    /// `None`.
    pub transport: Option<Arc<crate::upstream::client::Transport>>,
    /// A target that became healthy or was registered less than this long ago gets a share
    /// of requests growing linearly from 0 to its full weight.
    pub slow_start: Option<Duration>,
    /// Target indices repeated by weight and interleaved, for weighted round robin.
    sequence: Vec<usize>,
    next: AtomicUsize,
    /// Set while every target is unhealthy and requests fail open, so it is logged once.
    failing_open: AtomicBool,
}

#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub weight: u32,
    pub state: Arc<TargetState>,
    /// Its id in stickiness cookies (see `sticky.rs`).
    pub id: String,
    /// HTTPS targets: the name its certificate must carry (and SNI).
    pub tls_name: Option<rustls::pki_types::ServerName<'static>>,
}

impl std::fmt::Debug for TargetGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetGroup")
            .field("name", &self.name)
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

impl TargetGroup {
    pub fn new(
        name: String,
        algorithm: Algorithm,
        targets: Vec<Target>,
        health_check: Option<HealthCheck>,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        let sequence = interleave(
            targets
                .iter()
                .enumerate()
                .map(|(i, t)| (i, t.weight))
                .collect(),
        );
        TargetGroup {
            name,
            algorithm,
            targets,
            health_check,
            connect_timeout,
            response_timeout,
            stickiness: None,
            deregistration_delay: Duration::from_secs(300),
            transport: None,
            slow_start: None,
            sequence,
            next: AtomicUsize::new(0),
            failing_open: AtomicBool::new(false),
        }
    }

    /// Chooses a target for one request, avoiding `exclude` (the target a retry moves away from).
    /// Unhealthy targets are skipped; when none is healthy, every target is eligible (fail open,
    /// as an ALB does).
    pub fn select(&self, exclude: Option<SocketAddr>) -> Option<&Target> {
        let has_check = self.health_check.is_some();
        let eligible = |t: &Target| Some(t.addr) != exclude && t.state.available(has_check);
        let any_healthy = self.targets.iter().any(eligible);
        if !any_healthy {
            if !self.targets.is_empty()
                && !self.failing_open.swap(true, Ordering::Relaxed)
                && self.targets.iter().all(|t| !t.state.available(has_check))
            {
                tracing::warn!(target_group = %self.name, "no healthy target: routing to all targets (fail open)");
            }
        } else if self.failing_open.load(Ordering::Relaxed)
            && self.failing_open.swap(false, Ordering::Relaxed)
        {
            // (Read first: a write per request to this shared flag would bounce its cache line
            // between the workers.)
            tracing::info!(target_group = %self.name, "healthy targets are back: fail open ended");
        }
        let candidate = |t: &Target| {
            if any_healthy {
                eligible(t)
            } else {
                Some(t.addr) != exclude || self.targets.len() == 1
            }
        };
        let pick = |c: &dyn Fn(&Target) -> bool| match self.algorithm {
            Algorithm::RoundRobin => {
                selection::round_robin(&self.targets, &self.sequence, &self.next, c)
            }
            Algorithm::LeastOutstandingRequests => {
                selection::least_outstanding(&self.targets, &self.next, c)
            }
        };
        match self.slow_start {
            None => pick(&candidate),
            // A warming target is taken with the probability of its share; when every
            // candidate declines, the usual choice stands.
            Some(window) => pick(&|t: &Target| {
                candidate(t) && {
                    let share = t.state.warm_share(window);
                    share >= 1.0 || fastrand::f64() < share
                }
            })
            .or_else(|| pick(&candidate)),
        }
    }

    /// The target a stickiness cookie names, when it can take the request (healthy, not the
    /// one a retry moves away from); `None` sends the request through [`Self::select`].
    pub fn sticky(&self, id: &str, exclude: Option<SocketAddr>) -> Option<&Target> {
        let has_check = self.health_check.is_some();
        self.targets
            .iter()
            .find(|t| t.id == id)
            .filter(|t| Some(t.addr) != exclude && t.state.available(has_check))
    }
}

/// Run-time state of one target, surviving reloads.
#[derive(Debug, Default)]
pub struct TargetState {
    unhealthy: AtomicBool,
    /// Milliseconds since `epoch()` when the target last went unhealthy.
    down_since_ms: AtomicU64,
    outstanding: AtomicUsize,
    passive_failures: AtomicU32,
    /// Milliseconds since `epoch()` when the target was registered into an existing group or
    /// came back healthy (slow start); 0 when neither happened.
    up_since_ms: AtomicU64,
    reason: Mutex<String>,
    /// Responses this target gave, by status class (for `/metrics`).
    pub responses: crate::counters::ByClass,
}

impl TargetState {
    pub fn healthy(&self) -> bool {
        !self.unhealthy.load(Ordering::Relaxed)
    }

    fn available(&self, has_check: bool) -> bool {
        if self.healthy() {
            return true;
        }
        // Without an active check nothing would bring the target back: retry it after a while.
        !has_check
            && epoch().elapsed().as_millis() as u64
                >= self.down_since_ms.load(Ordering::Relaxed)
                    + PASSIVE_RETRY_AFTER.as_millis() as u64
    }

    /// The fraction of its weight a target gets under slow start: 0 when it just came up,
    /// 1 after `window`.
    pub fn warm_share(&self, window: Duration) -> f64 {
        let since = self.up_since_ms.load(Ordering::Relaxed);
        if since == 0 {
            return 1.0;
        }
        let up_for = (epoch().elapsed().as_millis() as u64).saturating_sub(since);
        (up_for as f64 / window.as_millis().max(1) as f64).min(1.0)
    }

    fn mark_up(&self) {
        self.up_since_ms.store(
            (epoch().elapsed().as_millis() as u64).max(1),
            Ordering::Relaxed,
        );
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Why the target is in its current state ("" while nothing went wrong).
    pub fn reason(&self) -> String {
        self.reason.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Marks the target healthy or unhealthy; returns true on a transition.
    pub fn set_healthy(&self, healthy: bool, reason: &str) -> bool {
        if let Ok(mut r) = self.reason.lock() {
            *r = reason.to_string();
        }
        let was_unhealthy = self.unhealthy.swap(!healthy, Ordering::Relaxed);
        if !healthy {
            self.down_since_ms
                .store(epoch().elapsed().as_millis() as u64, Ordering::Relaxed);
        } else {
            self.passive_failures.store(0, Ordering::Relaxed);
            if was_unhealthy {
                self.mark_up();
            }
        }
        was_unhealthy == healthy
    }

    /// Passive detection: a connection to the target failed.
    pub fn connect_failed(&self, group: &TargetGroup, addr: SocketAddr, error: &str) {
        let threshold = group
            .health_check
            .as_ref()
            .map(|h| h.unhealthy_threshold)
            .unwrap_or(PASSIVE_FAILURES_WITHOUT_CHECK);
        let n = self.passive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= threshold && self.set_healthy(false, &format!("connection failed: {error}")) {
            tracing::warn!(event = "target_unhealthy", target_group = %group.name, target = %addr, failures = n, %error,
                "target unhealthy (passive: connection failures)");
        }
    }

    /// A connection to the target succeeded.
    pub fn connect_succeeded(&self) {
        if self.passive_failures.load(Ordering::Relaxed) != 0 {
            self.passive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts one request in flight until the guard drops.
    pub fn begin_request(self: &Arc<Self>) -> OutstandingGuard {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        OutstandingGuard(self.clone())
    }
}

impl OutstandingGuard {
    /// Counts the target's response by status class.
    pub fn record(&self, status: u16) {
        self.0.responses.add(status);
    }
}

/// Decrements a target's outstanding count when the request (including its body) is done.
#[derive(Debug)]
pub struct OutstandingGuard(Arc<TargetState>);

impl Drop for OutstandingGuard {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    // Back-date the epoch so that "never down" (0) is long enough ago.
    *EPOCH.get_or_init(|| {
        Instant::now()
            .checked_sub(PASSIVE_RETRY_AFTER)
            .unwrap_or_else(Instant::now)
    })
}

/// Target states by (group, address), shared across snapshots so that a reload keeps health.
#[derive(Debug, Default)]
pub struct TargetRegistry {
    states: Mutex<HashMap<(String, SocketAddr), Arc<TargetState>>>,
}

impl TargetRegistry {
    /// Does any target of `group` have a state (the group served before this build)?
    pub fn knows_group(&self, group: &str) -> bool {
        let map = self.states.lock().unwrap_or_else(|e| e.into_inner());
        map.keys().any(|(g, _)| g == group)
    }

    /// The state of a target; `registered` marks a new one as just registered into a group
    /// that already serves (slow start), as opposed to one present from the start.
    pub fn state(&self, group: &str, addr: SocketAddr, registered: bool) -> Arc<TargetState> {
        let mut map = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let key = (group.to_string(), addr);
        if let Some(s) = map.get(&key) {
            return s.clone();
        }
        let state = Arc::new(TargetState::default());
        if registered {
            state.mark_up();
        }
        map.insert(key, state.clone());
        state
    }

    /// Every target's state, sorted by group and address.
    pub fn all(&self) -> Vec<(String, SocketAddr, Arc<TargetState>)> {
        let map = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map
            .iter()
            .map(|((g, a), s)| (g.clone(), *a, s.clone()))
            .collect();
        v.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        v
    }

    /// Forgets targets no snapshot names any more.
    pub fn retain(&self, keep: impl Fn(&str, SocketAddr) -> bool) {
        let mut map = self.states.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|(g, a), _| keep(g, *a));
    }
}

/// Repeats each item `weight` times, spreading the copies evenly (smooth weighted round robin,
/// computed once at build time so that the hot path is one atomic increment).
pub fn interleave<T: Clone>(items: Vec<(T, u32)>) -> Vec<T> {
    let total: i64 = items.iter().map(|(_, w)| *w as i64).sum();
    let mut current: Vec<i64> = vec![0; items.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, (_, w)) in items.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(items[best].0.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(n: usize, algorithm: Algorithm) -> TargetGroup {
        let targets = (0..n)
            .map(|i| Target {
                addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                weight: 1,
                state: Arc::default(),
                id: i.to_string(),
                tls_name: None,
            })
            .collect();
        TargetGroup::new(
            "g".into(),
            algorithm,
            targets,
            None,
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
    }

    #[test]
    fn round_robin_skips_unhealthy_and_fails_open() {
        let g = group(3, Algorithm::RoundRobin);
        let picks: Vec<u16> = (0..6)
            .map(|_| g.select(None).unwrap().addr.port())
            .collect();
        assert_eq!(picks, vec![1000, 1001, 1002, 1000, 1001, 1002]);
        g.targets[1].state.set_healthy(false, "test");
        for _ in 0..6 {
            assert_ne!(g.select(None).unwrap().addr.port(), 1001);
        }
        g.targets[0].state.set_healthy(false, "test");
        g.targets[2].state.set_healthy(false, "test");
        assert!(g.select(None).is_some(), "fail open");
    }

    #[test]
    fn least_outstanding_prefers_idle() {
        let g = group(2, Algorithm::LeastOutstandingRequests);
        let _busy = g.targets[0].state.begin_request();
        for _ in 0..4 {
            assert_eq!(g.select(None).unwrap().addr.port(), 1001);
        }
    }

    #[test]
    fn exclude_moves_retry_elsewhere() {
        let g = group(2, Algorithm::RoundRobin);
        let first = g.select(None).unwrap().addr;
        assert_ne!(g.select(Some(first)).unwrap().addr, first);
    }
}
