//! Counters the load balancer keeps for `/metrics`: per listener (requests by status class, a
//! latency histogram, active connections, TLS handshakes), per rule, per target. Plain atomics
//! reached through an `Arc` held by each connection, so that a request touches no lock.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use crate::counters::{shard, ByClass, Histogram, BUCKETS, SHARDS};
use std::time::Duration;

/// One listener's counters; they survive reloads (kept by name).
#[derive(Debug, Default)]
pub struct ListenerMetrics {
    pub requests: ByClass,
    pub latency: Histogram,
    pub active_connections: AtomicI64,
    pub connections: AtomicU64,
    pub tls_handshakes: AtomicU64,
    pub tls_failures: AtomicU64,
    /// By rule priority; `None` is the default action. Read per request without a lock (a
    /// read lock is a shared atomic write too); a new rule's counter is added copy-on-write.
    rules: arc_swap::ArcSwap<HashMap<Option<u32>, Arc<ByClass>>>,
    /// Requests refused by a rule's rate limit, by rule priority (a lock only on refusal).
    rate_limited: Mutex<HashMap<u32, u64>>,
}

impl ListenerMetrics {
    /// One request answered: its status, the time to the response head, the rule that took it.
    pub fn record(&self, status: u16, elapsed: Duration, rule: Option<u32>) {
        self.requests.add(status);
        self.latency.observe(elapsed);
        if let Some(c) = self.rules.load().get(&rule) {
            c.add(status);
            return;
        }
        self.rules.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.entry(rule).or_default();
            m
        });
        if let Some(c) = self.rules.load().get(&rule) {
            c.add(status);
        }
    }

    /// One request refused by the rate limit of the rule with `priority`.
    pub fn rate_limited(&self, priority: u32) {
        *self
            .rate_limited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(priority)
            .or_default() += 1;
    }

    /// Counts a connection until the guard drops.
    pub fn connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.active_connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }
}

#[derive(Debug)]
pub struct ConnectionGuard(Arc<ListenerMetrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.active_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every listener's counters, by name.
#[derive(Debug, Default)]
pub struct LbMetrics {
    listeners: Mutex<HashMap<String, Arc<ListenerMetrics>>>,
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl LbMetrics {
    pub fn listener(&self, name: &str) -> Arc<ListenerMetrics> {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    pub(crate) fn render(
        &self,
        out: &mut String,
        targets: &[(
            String,
            std::net::SocketAddr,
            Arc<crate::target_group::TargetState>,
        )],
    ) {
        let mut ls: Vec<(String, Arc<ListenerMetrics>)> = self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        ls.sort_by(|a, b| a.0.cmp(&b.0));
        out.push_str("# HELP portico_http_requests_total Requests answered by each listener, by status class.\n# TYPE portico_http_requests_total counter\n");
        for (n, m) in &ls {
            m.requests.render(
                out,
                "portico_http_requests_total",
                &format!("listener=\"{}\"", esc(n)),
            );
        }
        out.push_str("# HELP portico_http_rule_requests_total Requests taken by each rule (priority; \"default\" is the default action), by status class.\n# TYPE portico_http_rule_requests_total counter\n");
        for (n, m) in &ls {
            let rules = m.rules.load();
            let mut keys: Vec<_> = rules.keys().copied().collect();
            keys.sort();
            for k in keys {
                let rule = k.map_or("default".to_string(), |p| p.to_string());
                rules[&k].render(
                    out,
                    "portico_http_rule_requests_total",
                    &format!("listener=\"{}\",rule=\"{rule}\"", esc(n)),
                );
            }
        }
        out.push_str("# HELP portico_http_rate_limited_total Requests refused with 429 by each rule's rate limit.\n# TYPE portico_http_rate_limited_total counter\n");
        for (n, m) in &ls {
            let limited = m.rate_limited.lock().unwrap_or_else(|e| e.into_inner());
            let mut keys: Vec<_> = limited.keys().copied().collect();
            keys.sort();
            for k in keys {
                let _ = writeln!(
                    out,
                    "portico_http_rate_limited_total{{listener=\"{}\",rule=\"{k}\"}} {}",
                    esc(n),
                    limited[&k]
                );
            }
        }
        out.push_str("# HELP portico_http_request_duration_seconds Time from a request to its response head.\n# TYPE portico_http_request_duration_seconds histogram\n");
        for (n, m) in &ls {
            m.latency.render(
                out,
                "portico_http_request_duration_seconds",
                &format!("listener=\"{}\"", esc(n)),
            );
        }
        for (metric, help, kind, get) in [
            (
                "portico_http_active_connections",
                "Client connections open now.",
                "gauge",
                (|m: &ListenerMetrics| m.active_connections.load(Ordering::Relaxed).max(0) as u64)
                    as fn(&ListenerMetrics) -> u64,
            ),
            (
                "portico_http_connections_total",
                "Client connections accepted.",
                "counter",
                |m: &ListenerMetrics| m.connections.load(Ordering::Relaxed),
            ),
            (
                "portico_tls_handshakes_total",
                "TLS handshakes completed.",
                "counter",
                |m: &ListenerMetrics| m.tls_handshakes.load(Ordering::Relaxed),
            ),
            (
                "portico_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out.",
                "counter",
                |m: &ListenerMetrics| m.tls_failures.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
            for (n, m) in &ls {
                let _ = writeln!(out, "{metric}{{listener=\"{}\"}} {}", esc(n), get(m));
            }
        }
        out.push_str("# HELP portico_target_requests_total Responses from each target, by status class.\n# TYPE portico_target_requests_total counter\n");
        for (g, addr, s) in targets {
            s.responses.render(
                out,
                "portico_target_requests_total",
                &format!("target_group=\"{}\",target=\"{addr}\"", esc(g)),
            );
        }
        out.push_str("# HELP portico_target_group_requests_total Responses from each target group, by status class.\n# TYPE portico_target_group_requests_total counter\n");
        let mut groups: Vec<&str> = targets.iter().map(|(g, _, _)| g.as_str()).collect();
        groups.dedup();
        for g in groups {
            for class in 0..6 {
                let n: u64 = targets
                    .iter()
                    .filter(|(tg, _, _)| tg == g)
                    .map(|(_, _, s)| s.responses.get(class))
                    .sum();
                if n > 0 {
                    let class = if class == 0 {
                        "other".to_string()
                    } else {
                        format!("{class}xx")
                    };
                    let _ = writeln!(
                        out,
                        "portico_target_group_requests_total{{target_group=\"{}\",class=\"{class}\"}} {n}",
                        esc(g)
                    );
                }
            }
        }
    }
}
