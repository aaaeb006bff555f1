//! The running node's parts and what they were last configured with: validating and loading a
//! config, applying a reload or an API change to every part at once. The admin API and the
//! cluster follower act on the node through [`Core`]; `server.rs` starts and stops it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use portico_certs::CertManager;
use portico_dns::zones::HostedZones;
use portico_lb::target_group::TargetRegistry;
use portico_lb::tls::CertStore;
use portico_lb::{LoadBalancer, Snapshot};

use futures_util::future::BoxFuture;
use portico_admin::{ApiError, Applied, Edit, StoreStatus};

use crate::config::{ConfigError, PorticoConfig, Source};
use crate::runtime::Runtime;

/// Why a run-time change (an API call) was not applied; nothing changed in any case.
pub enum RuntimeChangeError<E> {
    /// The edit itself refused (the caller's own error).
    Edit(E),
    /// The shared store cannot be reached (cluster mode): changes wait until it answers.
    Unavailable(String),
    /// The config with the change does not validate.
    Config(ConfigError),
    /// The change could not be persisted.
    Internal(String),
}

/// Reads and fully validates a config file without serving it, with the admin API's additions
/// in its state directory merged as `serve` would (a listener in the file may name a
/// certificate the API or `certs import` added). An unreadable state directory counts as none.
pub(crate) fn load(path: &Path) -> Result<(Source, PorticoConfig), ConfigError> {
    let source = Source::read(path)?;
    let file_config = source.parse()?;
    let runtime = match Runtime::load(&file_config.state_dir) {
        Ok(r) => r,
        Err(e) if e.message.starts_with("cannot read") => Runtime::default(),
        Err(_) => crate::runtime::load(&file_config.state_dir)?,
    };
    let config = crate::runtime::merge(&runtime, &source, &file_config.state_dir)?;
    let mut issues = config.own_issues();
    if let Err(more) = Snapshot::build(
        &config.lb(),
        &source.base_dir(),
        &CertStore::new(),
        &TargetRegistry::default(),
        &requested_names(&config),
    ) {
        issues.extend(more);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    if let Ok(rt) = rt {
        // Zones validated in memory only: nothing is written by `check`.
        let zones = HostedZones::new(None);
        if let Err(more) = rt.block_on(zones.load(&config.dns(), &source.base_dir())) {
            issues.extend(more);
        }
    }
    if !issues.is_empty() {
        return Err(crate::runtime::locate(
            &source,
            &file_config,
            &file_config.state_dir,
            &issues,
        ));
    }
    Ok((source, config))
}

/// Certificates whose dns-01 goes to another server through RFC 2136 get their publisher.
pub(crate) fn with_publishers(
    config: &PorticoConfig,
    zones: &HostedZones,
    requests: Result<Vec<portico_certs::CertRequest>, Vec<portico_lb::ConfigIssue>>,
) -> Result<Vec<portico_certs::CertRequest>, Vec<portico_lb::ConfigIssue>> {
    let mut requests = requests?;
    for r in &mut requests {
        let Some(c) = config.certificate.iter().find(|c| c.name == r.name) else {
            continue;
        };
        let (Some(server), Some(key)) = (&c.dns_server, &c.dns_key) else {
            continue;
        };
        let signer = hickory_proto::rr::Name::from_ascii(key)
            .ok()
            .and_then(|mut n| {
                n.set_fqdn(true);
                zones.key(&n)
            });
        if let (Ok(server), Some(key)) = (server.parse(), signer) {
            r.dns_publisher = Some(Arc::new(crate::rfc2136::Rfc2136 { server, key }));
        }
    }
    Ok(requests)
}

/// Names of the certificates the certificate manager publishes (listeners may name them).
pub(crate) fn requested_names(config: &PorticoConfig) -> HashSet<String> {
    config
        .cert_requests()
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect()
}

/// The parts and what they were last configured with; shared with the admin API.
pub struct Core {
    pub source_path: PathBuf,
    pub state_dir: PathBuf,
    pub lb: Arc<LoadBalancer>,
    pub zones: Arc<HostedZones>,
    pub certs: Arc<CertManager>,
    /// ALIAS addresses and routed record sets' health, as the hosted zones see them.
    pub(crate) listeners: Arc<crate::wiring::listeners::LbListeners>,
    /// Cluster mode: the shared store and this node's cache of it.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// One apply at a time: reloads and API changes queue here.
    pub(crate) current: tokio::sync::Mutex<Current>,
}

/// The config as last applied: the file's text, the API's additions, and the two merged.
pub struct Current {
    pub source: Source,
    pub runtime: Runtime,
    pub config: PorticoConfig,
}

impl Current {
    /// What the admin API reads of it.
    fn applied(&self) -> Applied {
        Applied {
            file_text: self.source.text.clone(),
            base_dir: self.source.base_dir(),
            runtime: self.runtime.clone(),
            listeners: self.config.listener.clone(),
            target_groups: self.config.target_group.clone(),
            certificates: self.config.certificate.clone(),
            acme_directory: self
                .config
                .acme
                .as_ref()
                .map(|a| portico_certs::issuer::acme::directory_url(&a.directory)),
        }
    }
}

impl Core {
    /// Validates the config file with the API's additions on the path a reload takes, then
    /// applies it; on error nothing changes.
    async fn apply(
        &self,
        source: &Source,
        runtime: &Runtime,
    ) -> Result<PorticoConfig, ConfigError> {
        let file_config = source.parse()?;
        let config = crate::runtime::merge(runtime, source, &self.state_dir)?;
        let locate = |issues: &[portico_lb::ConfigIssue]| {
            crate::runtime::locate(source, &file_config, &self.state_dir, issues)
        };
        let issues = config.own_issues();
        if !issues.is_empty() {
            return Err(locate(&issues));
        }
        let requests = with_publishers(&config, &self.zones, config.cert_requests())
            .map_err(|issues| locate(&issues))?;
        // Everything is validated before anything is applied: zones on a dry run in memory.
        HostedZones::new(None)
            .load(&config.dns(), &source.base_dir())
            .await
            .map_err(|issues| locate(&issues))?;
        self.lb
            .apply(&config.lb(), &source.base_dir(), &requested_names(&config))
            .await
            .map_err(|issues| locate(&issues))?;
        self.zones
            .load(&config.dns(), &source.base_dir())
            .await
            .map_err(|issues| locate(&issues))?;
        self.certs
            .set_alerts(crate::wiring::alerts::sink(&config.alert));
        self.certs
            .manage(config.acme_settings(&source.base_dir()), requests);
        Ok(config)
    }

    /// Reads the config file again and applies it with the API's additions; an invalid file
    /// changes nothing.
    pub async fn reload(&self) -> Result<(), ConfigError> {
        let mut cur = self.current.lock().await;
        let result = async {
            let source = Source::read(&self.source_path)?;
            let config = self.apply(&source, &cur.runtime).await?;
            Ok::<_, ConfigError>((source, config))
        }
        .await;
        match result {
            Ok((source, config)) => {
                cur.source = source;
                cur.config = config;
                tracing::info!(event = "reload_applied", config = %self.source_path.display(), "reload applied");
                Ok(())
            }
            Err(e) => {
                tracing::error!(event = "reload_refused", config = %self.source_path.display(), error = %e, "reload refused; the previous configuration keeps serving");
                Err(e)
            }
        }
    }

    /// An API change to the run-time additions: validated and applied with the config file as
    /// last applied, then persisted before it is acknowledged. On error nothing changes.
    pub async fn change_runtime<T, E>(
        &self,
        edit: impl FnOnce(&mut Runtime, &Current) -> Result<T, E>,
    ) -> Result<T, RuntimeChangeError<E>> {
        let mut cur = self.current.lock().await;
        if let Some(c) = self.cluster.as_ref().filter(|c| !c.reachable()) {
            return Err(RuntimeChangeError::Unavailable(format!(
                "the shared store ({}) cannot be reached: changes are refused until it answers; this node keeps serving",
                c.describe()
            )));
        }
        let mut runtime = cur.runtime.clone();
        let out = edit(&mut runtime, &cur).map_err(RuntimeChangeError::Edit)?;
        let source = cur.source.clone();
        let config = self
            .apply(&source, &runtime)
            .await
            .map_err(RuntimeChangeError::Config)?;
        if let Err(e) = runtime.save(&self.state_dir) {
            // Not persisted, so not acknowledged: serve what was there before.
            let _ = self.apply(&source, &cur.runtime).await;
            return Err(RuntimeChangeError::Internal(format!(
                "cannot write {}: {e}",
                crate::runtime::path(&self.state_dir).display()
            )));
        }
        if let Some(c) = &self.cluster {
            if let Err(e) = c.push_key(crate::runtime::FILE) {
                // Not shared, so not acknowledged: back to what was there before.
                let _ = cur.runtime.save(&self.state_dir);
                let _ = self.apply(&source, &cur.runtime).await;
                return Err(RuntimeChangeError::Unavailable(format!(
                    "the shared store ({}) cannot be reached, so the change was not applied: {e}",
                    c.describe()
                )));
            }
        }
        cur.runtime = runtime;
        cur.config = config;
        Ok(out)
    }

    /// Applies the API's additions as another node left them in the shared store.
    pub async fn reload_runtime(&self) {
        let mut cur = self.current.lock().await;
        let runtime = match crate::runtime::load(&self.state_dir) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the API's additions another node stored");
                return;
            }
        };
        if runtime == cur.runtime {
            return;
        }
        let source = cur.source.clone();
        match self.apply(&source, &runtime).await {
            Ok(config) => {
                cur.runtime = runtime;
                cur.config = config;
                tracing::info!(
                    event = "runtime_changed",
                    "applied API changes made on another node"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "API changes made on another node do not apply here; keeping the previous ones")
            }
        }
    }

    /// The config as last applied (file plus API additions).
    pub async fn current<T>(&self, read: impl FnOnce(&Current) -> T) -> T {
        read(&*self.current.lock().await)
    }

    /// Asks the certificate manager to act on a renewal request now.
    pub async fn kick_certs(&self) {
        let cur = self.current.lock().await;
        if let Ok(requests) = with_publishers(&cur.config, &self.zones, cur.config.cert_requests())
        {
            self.certs
                .manage(cur.config.acme_settings(&cur.source.base_dir()), requests);
        }
    }
}

/// A refused config as the API answers it: each problem with its hint.
fn refused(e: ConfigError) -> ApiError {
    ApiError::refused(e.problems.into_iter().map(|p| (p.message, p.hint)))
}

/// The admin API acts on the node through this (the `portico-admin` crate does not know the
/// binary's config composition).
impl portico_admin::Node for Core {
    fn lb(&self) -> &LoadBalancer {
        &self.lb
    }
    fn zones(&self) -> &Arc<HostedZones> {
        &self.zones
    }
    fn certs(&self) -> &CertManager {
        &self.certs
    }
    fn answers_see(&self) -> Arc<dyn portico_dns::answer::ListenerAddrs> {
        self.listeners.clone()
    }
    fn render_dns_checks(&self, out: &mut String) {
        self.listeners.render_metrics(out);
    }
    fn state_dir(&self) -> &Path {
        &self.state_dir
    }
    fn config_path(&self) -> &Path {
        &self.source_path
    }
    fn store(&self) -> Option<StoreStatus> {
        self.cluster.as_ref().map(|c| StoreStatus {
            describe: c.describe(),
            reachable: c.reachable(),
        })
    }
    fn served_everywhere(&self, zone: &str, serial: u32) -> BoxFuture<'_, bool> {
        let zone = zone.to_string();
        Box::pin(async move {
            let Some(c) = self.cluster.clone() else {
                return true;
            };
            tokio::task::spawn_blocking(move || c.served_everywhere(&zone, serial))
                .await
                .unwrap_or(false)
        })
    }
    fn applied(&self) -> BoxFuture<'_, Applied> {
        Box::pin(self.current(Current::applied))
    }
    fn change(&self, edit: Edit) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async move {
            self.change_runtime(|rt, cur| edit(rt, &cur.applied()))
                .await
                .map_err(|e| match e {
                    RuntimeChangeError::Edit(e) => e,
                    RuntimeChangeError::Unavailable(m) => ApiError::unavailable(m),
                    RuntimeChangeError::Config(e) => refused(e),
                    RuntimeChangeError::Internal(m) => ApiError::internal(m),
                })
        })
    }
    fn reload(&self) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async move { Core::reload(self).await.map_err(refused) })
    }
    fn kick_certs(&self) -> BoxFuture<'_, ()> {
        Box::pin(Core::kick_certs(self))
    }
}
