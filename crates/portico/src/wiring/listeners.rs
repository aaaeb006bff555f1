//! What hosted zones learn from the rest of the node when they answer: the addresses an ALIAS to
//! a listener answers with (this node's, and in a cluster every live node's), and the health
//! that routed record sets name — a target group's, a listener's, or a check of the zones' own
//! (`health = "http://…"`), which runs here with the load balancer's probes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use portico_dns::answer::{Catalog, ListenerAddrs};
use portico_dns::routing::{Check, CheckProtocol, Health};
use portico_lb::config::HealthCheckProtocol;
use portico_lb::target_group::health_check::{self, HealthCheck};
use portico_lb::target_group::TargetState;
use portico_lb::LoadBalancer;
use tokio_util::sync::CancellationToken;

/// A listener as another live node of the cluster serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerListener {
    pub(crate) ip: IpAddr,
    pub(crate) healthy: bool,
}

pub(crate) struct LbListeners {
    lb: Arc<LoadBalancer>,
    /// The zones' own checks, by what they check.
    checks: Mutex<HashMap<Check, Running>>,
    /// Other live nodes' listeners, by listener name (cluster mode; empty otherwise).
    peers: ArcSwap<HashMap<String, Vec<PeerListener>>>,
}

struct Running {
    state: Arc<TargetState>,
    stop: CancellationToken,
}

impl LbListeners {
    pub(crate) fn new(lb: Arc<LoadBalancer>) -> Arc<Self> {
        Arc::new(LbListeners {
            lb,
            checks: Mutex::default(),
            peers: ArcSwap::from_pointee(HashMap::new()),
        })
    }

    fn lock_checks(&self) -> std::sync::MutexGuard<'_, HashMap<Check, Running>> {
        self.checks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the checks that routed record sets of `catalog` name and stops those that no set
    /// names any more.
    pub(crate) fn sync_checks(&self, catalog: &Catalog) {
        let mut wanted: Vec<Check> = Vec::new();
        for zone in catalog.zones.values() {
            for (_, r) in zone.routed_sets() {
                if let Some(Health::Check(c)) = &r.health {
                    wanted.push(c.clone());
                }
            }
        }
        let mut checks = self.lock_checks();
        checks.retain(|c, run| {
            let keep = wanted.contains(c);
            if !keep {
                run.stop.cancel();
            }
            keep
        });
        for c in wanted {
            if checks.contains_key(&c) {
                continue;
            }
            let protocol = match c.protocol {
                CheckProtocol::Http => HealthCheckProtocol::Http,
                CheckProtocol::Https => HealthCheckProtocol::Https,
                CheckProtocol::Tcp => HealthCheckProtocol::Tcp,
            };
            let check = match HealthCheck::standalone(
                protocol,
                &c.path,
                c.timing.interval(),
                c.timing.timeout(),
                c.timing.healthy_threshold,
                c.timing.unhealthy_threshold,
            ) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(check = %c, error = %e, "cannot run the DNS health check");
                    continue;
                }
            };
            let run = Running {
                state: Arc::new(TargetState::default()),
                stop: CancellationToken::new(),
            };
            health_check::watch(
                format!("dns:{c}"),
                c.addr,
                c.addr,
                None,
                check,
                run.state.clone(),
                run.stop.clone(),
            );
            checks.insert(c, run);
        }
    }

    /// Stops every check (at shutdown).
    pub(crate) fn stop(&self) {
        for (_, run) in self.lock_checks().drain() {
            run.stop.cancel();
        }
    }

    /// What the other live nodes serve (cluster mode).
    pub(crate) fn set_peers(&self, peers: HashMap<String, Vec<PeerListener>>) {
        if **self.peers.load() != peers {
            self.peers.store(Arc::new(peers));
        }
    }

    /// This node's listeners as its heartbeat tells the others: name → (addresses, healthy).
    pub(crate) fn own(&self) -> HashMap<String, (Vec<IpAddr>, bool)> {
        self.lb
            .snapshot()
            .listeners
            .iter()
            .map(|l| {
                let ips = self.local_ips(&l.name);
                let healthy = self.lb.listener_healthy(&l.name).unwrap_or(false);
                (l.name.clone(), (ips, healthy))
            })
            .collect()
    }

    fn local_ips(&self, listener: &str) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self
            .lb
            .local_addrs(listener)
            .into_iter()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified())
            .collect();
        ips.sort();
        ips.dedup();
        ips
    }

    /// `portico_dns_health_check_healthy`: each of the zones' own checks, 1 while healthy.
    pub(crate) fn render_metrics(&self, out: &mut String) {
        out.push_str("# HELP portico_dns_health_check_healthy 1 while a health check that routed DNS record sets name passes, 0 when not.\n# TYPE portico_dns_health_check_healthy gauge\n");
        let checks = self.lock_checks();
        let mut rows: Vec<(String, bool)> = checks
            .iter()
            .map(|(c, r)| (c.to_string(), r.state.healthy()))
            .collect();
        drop(checks);
        rows.sort();
        for (c, healthy) in rows {
            let _ = writeln!(
                out,
                "portico_dns_health_check_healthy{{check=\"{}\"}} {}",
                c.replace('\\', "\\\\").replace('"', "\\\""),
                u8::from(healthy)
            );
        }
    }
}

impl ListenerAddrs for LbListeners {
    fn addrs(&self, listener: &str, healthy_only: bool) -> Vec<IpAddr> {
        let mut ips = if !healthy_only || self.lb.listener_healthy(listener) == Some(true) {
            self.local_ips(listener)
        } else {
            Vec::new()
        };
        if let Some(peers) = self.peers.load().get(listener) {
            ips.extend(
                peers
                    .iter()
                    .filter(|p| !healthy_only || p.healthy)
                    .map(|p| p.ip),
            );
            ips.sort();
            ips.dedup();
        }
        ips
    }

    fn healthy(&self, health: &Health) -> Option<bool> {
        match health {
            Health::TargetGroup(g) => self.lb.group_healthy(g),
            Health::Listener(l) => self.lb.listener_healthy(l),
            Health::Check(c) => self.lock_checks().get(c).map(|r| r.state.healthy()),
        }
    }
}

/// Keeps the zones' own health checks in step with the routed sets being served (checked every
/// second, so that a set added by a change batch is checked within a second), until `stop`.
pub(crate) async fn run_checks(core: Arc<crate::node::Core>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => core.listeners.sync_checks(&core.zones.catalog()),
        }
    }
}
