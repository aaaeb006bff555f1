//! The running load balancer: listening sockets, the current snapshot, reloads and shutdown.
//!
//! [`LoadBalancer::apply`] is the only way configuration changes: it builds a snapshot beside the
//! serving one, binds any new addresses, and only then swaps. Sockets whose address is still
//! configured are kept (no connection is refused during a reload); connections in flight keep the
//! listener they were accepted with; health state and pooled target connections carry over.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::LbConfig;
pub use crate::serving::Http01Responder;
use crate::serving::Serving;
use crate::snapshot::{Listener, Snapshot};
use crate::target_group::{health_check, TargetRegistry};
use crate::tls::CertStore;
use crate::workers::{self, Workers};
use portico_config::{path, ConfigIssue};

/// The load balancer of one Portico process.
pub struct LoadBalancer {
    /// What connections read (snapshot, generation, HTTP-01, counters).
    serving: Arc<Serving>,
    certs: Arc<CertStore>,
    registry: TargetRegistry,
    acceptors: Mutex<HashMap<BindKey, Acceptor>>,
    imported: Mutex<HashSet<String>>,
    health: Mutex<CancellationToken>,
    /// Fired on shutdown: every connection finishes its request in flight and closes.
    draining: CancellationToken,
    connections: TaskTracker,
    apply_lock: tokio::sync::Mutex<()>,
    workers: Workers,
    /// Targets removed from their group (deregistered) with requests still in flight: no new
    /// requests reach them; they are reported as draining until the last one finishes.
    drained_targets: Mutex<Vec<(String, SocketAddr, Arc<crate::target_group::TargetState>)>>,
}

/// What identifies a listening socket across reloads: its address, and for port 0 (a port the
/// kernel picks) also the listener's name, since several listeners may ask for port 0.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BindKey {
    addr: SocketAddr,
    listener: Option<String>,
}

impl BindKey {
    fn new(addr: SocketAddr, listener: &str) -> Self {
        BindKey {
            addr,
            listener: (addr.port() == 0).then(|| listener.to_string()),
        }
    }
}

struct Acceptor {
    local: SocketAddr,
    stop: CancellationToken,
}

/// Health of one target as the load balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetHealth {
    pub addr: SocketAddr,
    pub healthy: bool,
    pub reason: String,
    pub outstanding: usize,
    /// Removed from the group, finishing the requests it still has (ALB's `draining`).
    pub draining: bool,
}

impl LoadBalancer {
    /// An idle load balancer serving nothing, publishing certificates through `certs`.
    pub fn new(certs: Arc<CertStore>) -> Arc<Self> {
        Arc::new(LoadBalancer {
            serving: Arc::new(Serving::new()),
            certs,
            registry: TargetRegistry::default(),
            acceptors: Mutex::default(),
            imported: Mutex::default(),
            health: Mutex::new(CancellationToken::new()),
            draining: CancellationToken::new(),
            connections: TaskTracker::new(),
            apply_lock: tokio::sync::Mutex::new(()),
            drained_targets: Mutex::default(),
            workers: Workers::start(workers::default_count())
                .expect("cannot start worker threads (is the process out of threads?)"),
        })
    }

    /// Serves HTTP-01 challenges from `responder` on every HTTP listener.
    pub fn set_http01_responder(&self, responder: Box<dyn Http01Responder>) {
        self.serving.http01.store(Some(Arc::new(responder)));
    }

    /// Counters of one listener (kept by name across reloads).
    pub fn listener_metrics(&self, listener: &str) -> Arc<crate::metrics::ListenerMetrics> {
        self.serving.listener_metrics(listener)
    }

    /// Appends the load balancer's metrics in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        self.serving.metrics.render(out, &self.registry.all());
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP portico_lb_worker_connections_total Connections handed to each worker thread.\n# TYPE portico_lb_worker_connections_total counter"
        );
        for (i, n) in self.workers.accepted().iter().enumerate() {
            let _ = writeln!(
                out,
                "portico_lb_worker_connections_total{{worker=\"{i}\"}} {n}"
            );
        }
    }

    /// Connections handed to each worker thread so far, by worker.
    pub fn worker_connections(&self) -> Vec<u64> {
        self.workers.accepted()
    }

    pub fn certs(&self) -> &Arc<CertStore> {
        &self.certs
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.serving.snapshot.load_full()
    }

    /// Validates `config` and, if it is valid and every new address can be bound, serves it.
    /// On error nothing changes. `managed_certs` are certificate names another part publishes.
    pub async fn apply(
        self: &Arc<Self>,
        config: &LbConfig,
        base_dir: &Path,
        managed_certs: &HashSet<String>,
    ) -> Result<(), Vec<ConfigIssue>> {
        let _one_at_a_time = self.apply_lock.lock().await;
        let built = Snapshot::build(config, base_dir, &self.certs, &self.registry, managed_certs)?;

        // Bind what is new before touching anything, so that a port in use refuses the reload.
        let mut fresh: Vec<(BindKey, TcpListener)> = Vec::new();
        {
            let acceptors = lock(&self.acceptors);
            let mut issues = Vec::new();
            for (i, l) in built.snapshot.listeners.iter().enumerate() {
                for b in &l.binds {
                    let key = BindKey::new(*b, &l.name);
                    if acceptors.contains_key(&key) {
                        continue;
                    }
                    match bind(*b) {
                        Ok(s) => fresh.push((key, s)),
                        Err(e) => issues.push(
                            ConfigIssue::new(path!["listener", i, "bind"], format!("cannot listen on {b}: {e}"))
                                .hint("another process may hold this port (ss -ltnp shows which), or binding below 1024 needs CAP_NET_BIND_SERVICE"),
                        ),
                    }
                }
            }
            if !issues.is_empty() {
                return Err(issues);
            }
        }

        // Publish imported certificates, retire those no longer configured.
        let names: HashSet<String> = built.imported.iter().map(|(n, _)| n.clone()).collect();
        for (name, cert) in built.imported {
            self.certs.publish(&name, cert);
        }
        {
            let mut imported = lock(&self.imported);
            for gone in imported.difference(&names) {
                if !managed_certs.contains(gone) {
                    self.certs.remove(gone);
                }
            }
            *imported = names;
        }

        let snapshot = Arc::new(built.snapshot);
        let old = self.serving.swap(snapshot.clone());
        {
            let mut draining = lock(&self.drained_targets);
            for (name, g) in &old.target_groups {
                for t in &g.targets {
                    let kept = snapshot
                        .target_groups
                        .get(name)
                        .is_some_and(|n| n.targets.iter().any(|n| n.addr == t.addr));
                    if !kept && t.state.outstanding() > 0 {
                        tracing::info!(event = "target_draining", target_group = %name, target = %t.addr,
                            in_flight = t.state.outstanding(), delay = ?g.deregistration_delay,
                            "target removed: draining its requests in flight");
                        draining.push((name.clone(), t.addr, t.state.clone()));
                        self.cut_after(
                            name.clone(),
                            t.addr,
                            t.state.clone(),
                            g.deregistration_delay,
                        );
                    }
                }
            }
        }

        let wanted: HashSet<BindKey> = snapshot
            .listeners
            .iter()
            .flat_map(|l| l.binds.iter().map(|b| BindKey::new(*b, &l.name)))
            .collect();
        {
            let mut acceptors = lock(&self.acceptors);
            acceptors.retain(|addr, a| {
                let keep = wanted.contains(addr);
                if !keep {
                    a.stop.cancel();
                }
                keep
            });
            for (key, socket) in fresh {
                let local = socket.local_addr().unwrap_or(key.addr);
                let stop = CancellationToken::new();
                tracing::info!(bind = %key.addr, local = %local, "listening");
                tokio::spawn(accept_loop(self.clone(), key.clone(), socket, stop.clone()));
                acceptors.insert(key, Acceptor { local, stop });
            }
        }

        // Health checks restart on the new groups; their state carries over in the registry.
        let token = CancellationToken::new();
        for g in snapshot.target_groups.values() {
            health_check::spawn(g.clone(), token.clone());
        }
        std::mem::replace(&mut *lock(&self.health), token).cancel();
        self.registry.retain(|g, a| {
            snapshot
                .target_groups
                .get(g)
                .is_some_and(|tg| tg.targets.iter().any(|t| t.addr == a))
        });
        Ok(())
    }

    /// At the end of a removed target's deregistration delay, closes its connections if it
    /// still has requests in flight and no group of the serving snapshot names it again.
    fn cut_after(
        self: &Arc<Self>,
        group: String,
        addr: SocketAddr,
        state: Arc<crate::target_group::TargetState>,
        delay: std::time::Duration,
    ) {
        let lb = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Some(lb) = lb.upgrade() else { return };
            let named = lb
                .serving
                .snapshot
                .load()
                .target_groups
                .values()
                .any(|g| g.targets.iter().any(|t| t.addr == addr));
            if named || state.outstanding() == 0 {
                return;
            }
            let closed = crate::upstream::live::cut(addr);
            tracing::warn!(event = "target_drain_timeout", target_group = %group, target = %addr,
                in_flight = state.outstanding(), connections = closed,
                "deregistration delay over: closing the target's connections");
        });
    }

    /// The addresses a listener actually listens on (the kernel's port when the config says 0).
    pub fn local_addrs(&self, listener: &str) -> Vec<SocketAddr> {
        let snapshot = self.serving.snapshot.load();
        let Some(l) = snapshot.listener(listener) else {
            return Vec::new();
        };
        let acceptors = lock(&self.acceptors);
        l.binds
            .iter()
            .filter_map(|b| acceptors.get(&BindKey::new(*b, &l.name)).map(|a| a.local))
            .collect()
    }

    /// Whether a target group has a healthy target now; `None` when no group has that name.
    pub fn group_healthy(&self, group: &str) -> Option<bool> {
        let snapshot = self.serving.snapshot.load();
        let g = snapshot.target_groups.get(group)?;
        Some(g.targets.iter().any(|t| t.state.healthy()))
    }

    /// Whether a listener serves: bound, and (when it forwards) one of the target groups it
    /// forwards to has a healthy target, as Route 53 evaluates a load balancer's target health.
    /// `None` when no listener has that name.
    pub fn listener_healthy(&self, listener: &str) -> Option<bool> {
        let snapshot = self.serving.snapshot.load();
        let l = snapshot.listener(listener)?;
        if self.local_addrs(listener).is_empty() {
            return Some(false);
        }
        let mut groups = l
            .rules
            .iter()
            .map(|r| &r.action)
            .chain(std::iter::once(&l.default_action))
            .filter_map(|a| match a {
                crate::action::Action::Forward(f) => Some(f.groups()),
                _ => None,
            })
            .flatten()
            .peekable();
        if groups.peek().is_none() {
            return Some(true);
        }
        Some(groups.any(|g| g.targets.iter().any(|t| t.state.healthy())))
    }

    /// Health of each target of a group, in configuration order.
    pub fn target_health(&self, group: &str) -> Vec<TargetHealth> {
        let snapshot = self.serving.snapshot.load();
        snapshot
            .target_groups
            .get(group)
            .map(|g| {
                g.targets
                    .iter()
                    .map(|t| TargetHealth {
                        addr: t.addr,
                        healthy: t.state.healthy(),
                        reason: t.state.reason(),
                        outstanding: t.state.outstanding(),
                        draining: false,
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .chain(self.draining(group))
            .collect()
    }

    /// Removed targets of `group` still finishing requests (forgotten once they have none).
    fn draining(&self, group: &str) -> Vec<TargetHealth> {
        let mut draining = lock(&self.drained_targets);
        draining.retain(|(_, _, s)| s.outstanding() > 0);
        draining
            .iter()
            .filter(|(g, _, _)| g == group)
            .map(|(_, addr, s)| TargetHealth {
                addr: *addr,
                healthy: s.healthy(),
                reason: "deregistered: finishing requests in flight".into(),
                outstanding: s.outstanding(),
                draining: true,
            })
            .collect()
    }

    /// Stops accepting, lets requests in flight finish for up to `deadline`, then returns
    /// whether every connection ended in time.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        for a in lock(&self.acceptors).drain() {
            a.1.stop.cancel();
        }
        lock(&self.health).cancel();
        self.draining.cancel();
        self.connections.close();
        let drained = tokio::time::timeout(deadline, self.connections.wait())
            .await
            .is_ok();
        self.workers.stop();
        drained
    }

    fn listener_for(&self, key: &BindKey) -> Option<Arc<Listener>> {
        let snapshot = self.serving.snapshot.load();
        match &key.listener {
            Some(name) => snapshot.listener(name).cloned(),
            None => snapshot
                .listeners
                .iter()
                .find(|l| l.binds.contains(&key.addr))
                .cloned(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A listening socket like nginx's: SO_REUSEADDR, IPv6 sockets IPv6-only (bind `0.0.0.0` and
/// `[::]` side by side), a deep backlog.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    TcpListener::from_std(s.into())
}

async fn accept_loop(
    lb: Arc<LoadBalancer>,
    key: BindKey,
    socket: TcpListener,
    stop: CancellationToken,
) {
    let bind = key.addr;
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = socket.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(%bind, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let generation = lb.serving.generation();
        let Some(listener) = lb.listener_for(&key) else {
            continue;
        };
        // Security-group rules: before any TLS or HTTP work.
        // A trusted PROXY-protocol balancer is admitted; the rules then apply to the client
        // its header names (`connection::serve`).
        if !listener.proxy_trusted(peer.ip()) && !listener.admits(peer.ip()) {
            tracing::debug!(listener = %listener.name, %peer, "connection refused by allow/deny rules");
            drop(stream);
            continue;
        }
        if active.load(Ordering::Relaxed) >= listener.max_connections {
            tracing::warn!(listener = %listener.name, %peer, max = listener.max_connections, "connection limit reached; closing new connection");
            drop(stream);
            continue;
        }
        let slot = ConnSlot::take(active.clone());
        // The socket moves to a worker thread, which owns the connection from here on.
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let (serving, draining) = (lb.serving.clone(), lb.draining.clone());
        let conn = lb.connections.track_future(async move {
            let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
                return;
            };
            crate::connection::serve(serving, listener, generation, stream, peer, draining).await;
            drop(slot);
        });
        lb.workers.next().spawn(conn);
    }
}

/// Counts one open connection against the listener's limit until dropped.
struct ConnSlot(Arc<AtomicUsize>);

impl ConnSlot {
    fn take(active: Arc<AtomicUsize>) -> Self {
        active.fetch_add(1, Ordering::Relaxed);
        ConnSlot(active)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
