//! The serving core: compose the parts (load balancer, hosted zones, certificates, admin API,
//! cluster) into one running process around the node's [`Core`] (`node.rs`), reload on SIGHUP,
//! drain on SIGTERM. How the parts reach each other is in `wiring/`; the commands in `cli/`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use portico_lb::tls::CertStore;
use portico_lb::LoadBalancer;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{LogFormat, PorticoConfig, Source};
use crate::node::{requested_names, with_publishers, Core, Current};
use portico_certs::CertManager;
use portico_dns::server::DnsServer;
use portico_dns::zones::HostedZones;

pub(crate) const PID_FILE: &str = "portico.pid";

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub fn init_tracing(config: &PorticoConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(log_colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR"),
        ))
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Colour in logs only on a terminal, and not when `NO_COLOR` is set to anything but the empty
/// string (no-color.org): a file or a pipe gets plain text.
fn log_colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal
        && match no_color {
            None => true,
            Some(v) => v.is_empty(),
        }
}

/// A running Portico: the parts wired together and serving.
pub struct Server {
    /// Stops the background tasks at shutdown: following the shared store (cluster mode) and
    /// the hosted zones' health checks.
    following: tokio_util::sync::CancellationToken,
    pub core: Arc<Core>,
    pub lb: Arc<LoadBalancer>,
    pub dns: Option<DnsServer>,
    admin: Option<portico_admin::AdminServer>,
    /// SIGHUP, SIGTERM and SIGINT, watched from before the pid file is written: a `portico
    /// reload` (or `certs renew`) that reads the pid file at once must find the signal handled,
    /// not meet SIGHUP's default action, which ends the process.
    signals: Signals,
}

struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn watch() -> anyhow::Result<Self> {
        Ok(Signals {
            hup: signal(SignalKind::hangup()).context("cannot watch SIGHUP")?,
            term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
        })
    }
}

impl Server {
    pub async fn start(source: Source, file_config: PorticoConfig) -> anyhow::Result<Self> {
        let state_dir = file_config.state_dir.clone();
        let issues = file_config.own_issues();
        if !issues.is_empty() {
            return Err(source.locate(&issues).into());
        }
        let cluster = match crate::store::shared(&file_config, &source.base_dir())? {
            Some(store) => {
                let c = crate::cluster::Cluster::new(Arc::from(store), &state_dir);
                let pulling = c.clone();
                tokio::task::spawn_blocking(move || pulling.pull_all())
                    .await
                    .context("pulling the shared state")?;
                Some(c)
            }
            None => None,
        };
        let runtime = crate::runtime::load(&state_dir)?;
        let config = crate::runtime::merge(&runtime, &source, &state_dir)?;
        let locate = |issues: &[portico_lb::ConfigIssue]| {
            crate::runtime::locate(&source, &file_config, &state_dir, issues)
        };
        let issues = config.own_issues();
        if !issues.is_empty() {
            return Err(locate(&issues).into());
        }
        let lb = LoadBalancer::new(CertStore::new());
        let certs = CertManager::new(&config.state_dir, lb.certs().clone());
        lb.set_http01_responder(Box::new(certs.tokens()));
        lb.apply(&config.lb(), &source.base_dir(), &requested_names(&config))
            .await
            .map_err(|issues| locate(&issues))?;
        let zones = HostedZones::new(Some(config.state_dir.clone()));
        let listeners = crate::wiring::listeners::LbListeners::new(lb.clone());
        if let Some(c) = &cluster {
            zones.set_shared(c.store.clone());
            certs.set_shared_store(c.store.clone());
        }
        zones
            .load(&config.dns(), &source.base_dir())
            .await
            .map_err(|issues| locate(&issues))?;
        let dns = match &config.dns {
            Some(d) => {
                let mut listen = Vec::new();
                for (i, a) in d.listen.iter().enumerate() {
                    let addr: std::net::SocketAddr = a.parse().map_err(|_| {
                        source.locate(&[portico_lb::ConfigIssue::new(
                            vec![
                                portico_lb::PathSeg::Key("dns".into()),
                                portico_lb::PathSeg::Key("listen".into()),
                                portico_lb::PathSeg::Index(i),
                            ],
                            format!("{a:?} is not an address:port"),
                        )
                        .hint("e.g. \"0.0.0.0:53\" or \"[::]:53\"")])
                    })?;
                    listen.push(addr);
                }
                let ctx = Arc::new(portico_dns::handler::Ctx {
                    zones: zones.clone(),
                    listeners: listeners.clone(),
                });
                let opts = portico_dns::server::Options {
                    tcp_idle_timeout: d.tcp_idle_timeout,
                    max_tcp_connections: d.max_tcp_connections,
                    rate_limit: d.rate_limit,
                    ..Default::default()
                };
                Some(DnsServer::start(ctx, &listen, opts).await.context("DNS")?)
            }
            None => None,
        };
        let requests = with_publishers(&config, &zones, config.cert_requests())
            .map_err(|issues| locate(&issues))?;
        certs.set_lookup(Arc::new(crate::wiring::dns01::ZonesLookup {
            zones: zones.clone(),
            listeners: listeners.clone(),
            resolver: config.acme.as_ref().and_then(|a| a.resolver_addr()),
        }));
        certs.set_dns01(Arc::new(crate::wiring::dns01::ZonesDns01 {
            zones: zones.clone(),
            servers: dns.as_ref().map(|d| d.addrs.clone()).unwrap_or_default(),
            resolver: config.acme.as_ref().and_then(|a| a.resolver_addr()),
            ns_port: config.acme.as_ref().map_or(53, |a| a.dns_port),
        }));
        certs.set_alerts(crate::wiring::alerts::sink(&config.alert));
        certs.manage(config.acme_settings(&source.base_dir()), requests);
        let admin_config = config.admin.clone();
        let core = Arc::new(Core {
            source_path: source.path.clone(),
            state_dir: state_dir.clone(),
            lb: lb.clone(),
            zones,
            certs,
            listeners,
            cluster: cluster.clone(),
            current: tokio::sync::Mutex::new(Current {
                source,
                runtime,
                config,
            }),
        });
        let admin = match admin_config {
            Some(a) => {
                let server = portico_admin::AdminServer::start(core.clone(), &a).await?;
                portico_admin::write_url(&state_dir, server.addr, a.cert_file.is_some());
                Some(server)
            }
            None => None,
        };
        let following = tokio_util::sync::CancellationToken::new();
        tokio::spawn(crate::wiring::listeners::run_checks(
            core.clone(),
            following.clone(),
        ));
        if let Some(c) = cluster {
            let noting = c.clone();
            let _ = tokio::task::spawn_blocking(move || noting.note_local()).await;
            tokio::spawn(crate::wiring::follow::follow(
                c,
                core.clone(),
                following.clone(),
            ));
        }
        let signals = Signals::watch()?;
        write_pid_file(&state_dir);
        Ok(Server {
            following,
            core,
            lb,
            dns,
            admin,
            signals,
        })
    }

    /// Where the admin API listens, when `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    /// Serves until SIGTERM or SIGINT, reloading on SIGHUP; then drains and returns.
    pub async fn run_until_signal(mut self) -> anyhow::Result<()> {
        let Signals { hup, term, int } = &mut self.signals;
        tracing::info!(config = %self.core.source_path.display(), "portico serving");
        loop {
            tokio::select! {
                _ = hup.recv() => { let _ = self.core.reload().await; }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        let shutdown_timeout = self.core.current(|c| c.config.shutdown_timeout).await;
        tracing::info!(deadline = ?shutdown_timeout, "draining: no new connections, finishing requests in flight");
        if let Some(d) = &self.dns {
            d.stop();
        }
        if let Some(a) = &self.admin {
            a.stop();
        }
        self.following.cancel();
        self.core.listeners.stop();
        self.core.certs.stop();
        let clean = self.lb.shutdown(shutdown_timeout).await;
        if !clean {
            tracing::warn!("drain deadline passed with requests still in flight");
        }
        // Zones' master files brought up to date with their journals, so that a stopped
        // server's files are complete (a crash instead leaves the journal to replay).
        let zones = self.core.zones.clone();
        let _ = tokio::task::spawn_blocking(move || zones.checkpoint_all()).await;
        let _ = std::fs::remove_file(self.core.state_dir.join(PID_FILE));
        if self.admin.is_some() {
            let _ = std::fs::remove_file(self.core.state_dir.join(portico_admin::URL_FILE));
        }
        tracing::info!("stopped");
        Ok(())
    }
}

fn write_pid_file(state_dir: &Path) {
    let result = std::fs::create_dir_all(state_dir).and_then(|_| {
        portico_config::files::write_atomic(
            &state_dir.join(PID_FILE),
            format!("{}\n", std::process::id()).as_bytes(),
            0o644,
        )
    });
    if let Err(e) = result {
        tracing::warn!(state_dir = %state_dir.display(), error = %e, "cannot write the pid file; `portico reload` will not find this process (send SIGHUP instead)");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_colour_only_on_a_terminal_without_no_color() {
        use super::log_colour;
        assert!(log_colour(true, None));
        assert!(log_colour(true, Some("".into())));
        assert!(!log_colour(true, Some("1".into())));
        assert!(!log_colour(false, None));
    }
}
