//! `portico serve`, `check` and `reload`: load the config, run the parts, reload on SIGHUP,
//! drain on SIGTERM.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use portico_lb::target_group::TargetRegistry;
use portico_lb::tls::CertStore;
use portico_lb::{LoadBalancer, Snapshot};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{ConfigError, LogFormat, PorticoConfig, Source};
use portico_certs::CertManager;
use portico_dns::answer::ListenerAddrs;
use portico_dns::server::DnsServer;
use portico_dns::zones::HostedZones;

const PID_FILE: &str = "portico.pid";

/// Reads and fully validates a config file without serving it.
fn load(path: &Path) -> Result<(Source, PorticoConfig), ConfigError> {
    let source = Source::read(path)?;
    let config = source.parse()?;
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
        return Err(source.locate(&issues));
    }
    Ok((source, config))
}

/// Certificates whose dns-01 goes to another server through RFC 2136 get their publisher.
fn with_publishers(
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
fn requested_names(config: &PorticoConfig) -> HashSet<String> {
    config
        .cert_requests()
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect()
}

pub fn check(path: &Path) -> anyhow::Result<()> {
    let (_, config) = load(path)?;
    println!(
        "{}: ok ({} listeners, {} target groups, {} certificates, {} zones)",
        path.display(),
        config.listener.len(),
        config.target_group.len(),
        config.certificate.len(),
        config.zone.len()
    );
    Ok(())
}

/// Zones as the running server serves them: its state directory with the config applied,
/// read without writing anything.
fn zones_now(path: &Path) -> anyhow::Result<std::sync::Arc<HostedZones>> {
    let (source, config) = load(path)?;
    let zones = HostedZones::read_only(config.state_dir.clone());
    runtime()?
        .block_on(zones.load(&config.dns(), &source.base_dir()))
        .map_err(|issues| source.locate(&issues))?;
    Ok(zones)
}

/// The running server's admin API when it has one (given with `--admin`, or found through the
/// config and answering); `None` means: read the state directory instead.
fn running_api(
    t: &crate::admin::client::Target,
) -> anyhow::Result<Option<crate::admin::client::Admin>> {
    use crate::admin::client::{Admin, URL_FILE};
    if t.admin.is_some() {
        return Ok(Some(Admin::find(t)?));
    }
    let (_, config) = load(&t.config)?;
    if config.admin.is_none() || !config.state_dir.join(URL_FILE).exists() {
        return Ok(None);
    }
    let admin = Admin::find(t)?;
    // A URL file left by a server that died: fall back to the state directory.
    Ok(admin
        .call("GET", "/api/v1/zones", None)
        .is_ok()
        .then_some(admin))
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn zones_list(t: &crate::admin::client::Target) -> anyhow::Result<()> {
    let zones: Vec<serde_json::Value> = match running_api(t)? {
        Some(admin) => serde_json::from_value(admin.call("GET", "/api/v1/zones", None)?)?,
        None => {
            let zones = zones_now(&t.config)?;
            let catalog = zones.catalog();
            let mut names: Vec<_> = catalog.zones.keys().collect();
            names.sort();
            names
                .into_iter()
                .map(|n| {
                    let z = &catalog.zones[n];
                    serde_json::json!({"name": n.to_string(), "serial": z.serial(), "records": z.record_count()})
                })
                .collect()
        }
    };
    if t.json {
        print_json(&serde_json::Value::Array(zones));
        return Ok(());
    }
    println!("{:<40} {:>12} {:>10}", "ZONE", "SERIAL", "RECORDS");
    for z in zones {
        println!(
            "{:<40} {:>12} {:>10}",
            z["name"].as_str().unwrap_or(""),
            // As numbers: a JSON value's Display ignores width and alignment.
            z["serial"].as_u64().unwrap_or(0),
            z["records"].as_u64().unwrap_or(0)
        );
    }
    Ok(())
}

pub fn zones_export(t: &crate::admin::client::Target, zone: &str) -> anyhow::Result<()> {
    let text = match running_api(t)? {
        Some(admin) => admin.call_text("GET", &format!("/api/v1/zones/{zone}/export"), None)?,
        None => zones_now(&t.config)?
            .export(zone)
            .with_context(|| format!("no hosted zone {zone:?} in {}", t.config.display()))?,
    };
    print!("{text}");
    Ok(())
}

/// Certificate records: from the running server, else from the state directory.
fn cert_records(
    t: &crate::admin::client::Target,
) -> anyhow::Result<(Vec<serde_json::Value>, PathBuf)> {
    let (_, config) = load(&t.config)?;
    let storage = portico_certs::storage::Storage::new(&config.state_dir);
    let list = match running_api(t)? {
        Some(admin) => serde_json::from_value(admin.call("GET", "/api/v1/certificates", None)?)?,
        None => storage
            .records()
            .into_iter()
            .map(|r| serde_json::to_value(r).unwrap_or_default())
            .collect(),
    };
    Ok((list, config.state_dir))
}

fn field(v: &serde_json::Value, k: &str) -> String {
    match &v[k] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub fn certs_list(t: &crate::admin::client::Target) -> anyhow::Result<()> {
    let (records, _) = cert_records(t)?;
    if t.json {
        print_json(&serde_json::Value::Array(records));
        return Ok(());
    }
    println!(
        "{:<20} {:<20} {:<9} {:<22} DOMAINS",
        "NAME", "STATUS", "ISSUER", "NOT AFTER"
    );
    for r in &records {
        let domains: Vec<String> = r["domains"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{:<20} {:<20} {:<9} {:<22} {}",
            field(r, "name"),
            field(r, "status"),
            field(r, "issuer"),
            field(r, "not_after"),
            domains.join(",")
        );
        if r["last_error"].is_string() {
            println!("  last error: {}", field(r, "last_error"));
        }
        if r["next_attempt"].is_string() {
            println!("  next try:   {}", field(r, "next_attempt"));
        }
    }
    Ok(())
}

pub fn certs_show(t: &crate::admin::client::Target, name: &str) -> anyhow::Result<()> {
    let (records, state_dir) = cert_records(t)?;
    let r = records
        .into_iter()
        .find(|r| r["name"] == name)
        .with_context(|| {
            format!("no certificate {name:?} has been requested yet (see `portico certs list`)")
        })?;
    if t.json {
        print_json(&r);
        return Ok(());
    }
    let list = |k: &str| -> Vec<String> {
        r[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    println!("name:        {name}");
    println!("status:      {}", field(&r, "status"));
    println!("issuer:      {}", field(&r, "issuer"));
    println!("domains:     {}", list("domains").join(", "));
    println!("not after:   {}", field(&r, "not_after"));
    println!("renew after: {}", field(&r, "renew_after"));
    if r["renewal_window"].is_string() {
        println!(
            "CA window:   {} (ACME Renewal Information)",
            field(&r, "renewal_window")
        );
    }
    println!("version:     {}", field(&r, "version"));
    let live = portico_certs::storage::Storage::new(&state_dir).live(name);
    for f in ["fullchain.pem", "privkey.pem", "cert.pem", "chain.pem"] {
        if live.join(f).exists() {
            println!("file:        {}", live.join(f).display());
        }
    }
    for (k, label) in [
        ("last_error", "last error:  "),
        ("next_attempt", "next try:    "),
        ("dry_run", "dry run:     "),
    ] {
        if r[k].is_string() {
            println!("{label}{}", field(&r, k));
        }
    }
    for step in list("progress") {
        println!("in progress: {step}");
    }
    Ok(())
}

pub fn certs_trust(path: &Path) -> anyhow::Result<()> {
    let (_, config) = load(path)?;
    let root = portico_certs::issuer::internal::InternalCa::new(&config.state_dir).root_path();
    if !root.exists() {
        anyhow::bail!("no internal CA yet at {}: it is made when the first issuer = \"internal\" certificate is issued", root.display());
    }
    println!("Portico's internal root CA: {}", root.display());
    println!("Trust it on Debian:  cp {} /usr/local/share/ca-certificates/portico-root.crt && update-ca-certificates", root.display());
    println!(
        "Or per command:      curl --cacert {} https://…",
        root.display()
    );
    Ok(())
}

pub fn reload(path: &Path) -> anyhow::Result<()> {
    let (_, config) = load(path)?;
    let pid = signal_server(&config)?;
    println!(
        "{}: valid; reload signalled to portico serve (pid {pid})",
        path.display()
    );
    Ok(())
}

/// `portico certs renew NAME [--dry-run]`: asks the running server's certificate manager (the
/// only writer of certificate files) to renew now, or to order and discard a certificate, then
/// follows the outcome in the renewal record.
pub fn certs_renew(
    path: &Path,
    name: &str,
    what: portico_certs::storage::RenewRequest,
) -> anyhow::Result<()> {
    use portico_certs::storage::{RenewRequest, Storage};
    let dry_run = what == RenewRequest::DryRun;
    let (_, config) = load(path)?;
    if !requested_names(&config).contains(name) {
        anyhow::bail!(
            "{}: no [[certificate]] named {name:?} with domains (imported certificates are renewed by whoever issued them)",
            path.display()
        );
    }
    let storage = Storage::new(&config.state_dir);
    let before = storage.record(name).unwrap_or_default();
    if what == RenewRequest::Revoke && before.version == 0 {
        anyhow::bail!("{name}: no certificate has been issued yet, nothing to revoke");
    }
    storage
        .request_renewal(name, what)
        .context("cannot leave the renewal request")?;
    let pid = signal_server(&config).map_err(|e| {
        let _ = storage.take_renewal_request(name);
        e.context("renewal runs inside `portico serve` (its listeners answer the challenge): start it, then run this again")
    })?;
    println!(
        "{name}: {} asked of portico serve (pid {pid})",
        match what {
            RenewRequest::DryRun => "a dry run (order, validate, discard)",
            RenewRequest::Renew => "a renewal",
            RenewRequest::Revoke => "revocation and replacement",
        }
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(660);
    let mut status = before.status.clone();
    let mut shown = before.progress.len();
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let Some(r) = storage.record(name) else {
            continue;
        };
        if r.status != status {
            println!("{name}: {}", r.status);
            status = r.status.clone();
        }
        if r.progress.len() < shown {
            shown = 0; // a new order started
        }
        for step in &r.progress[shown..] {
            println!("{name}: {step}");
        }
        shown = r.progress.len();
        if dry_run {
            if let Some(d) = r.dry_run.filter(|d| Some(d) != before.dry_run.as_ref()) {
                if d.starts_with("ok") {
                    println!(
                        "dry run {d}: the CA issued a certificate for {}; nothing was stored",
                        r.domains.join(", ")
                    );
                    return Ok(());
                }
                anyhow::bail!("dry run {d}");
            }
        } else if r.version > before.version && r.status == "ISSUED" {
            println!(
                "{}: {} version {}, not after {} (serving now)",
                if what == RenewRequest::Revoke {
                    "revoked and replaced"
                } else {
                    "renewed"
                },
                storage.live(name).join("fullchain.pem").display(),
                r.version,
                r.not_after.as_deref().unwrap_or("-")
            );
            return Ok(());
        } else if r.last_error.is_some() && r.last_error != before.last_error {
            anyhow::bail!(
                "{} failed: {}{}",
                if what == RenewRequest::Revoke {
                    "revocation"
                } else {
                    "renewal"
                },
                r.last_error.unwrap_or_default(),
                r.next_attempt
                    .map(|t| format!(" (the server retries at {t})"))
                    .unwrap_or_default()
            );
        }
    }
    anyhow::bail!("no outcome within 11 minutes: see `portico certs show {name}`")
}

/// Sends SIGHUP to the `portico serve` of this config (pid file in the state directory).
fn signal_server(config: &PorticoConfig) -> anyhow::Result<i32> {
    let pid_file = config.state_dir.join(PID_FILE);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .with_context(|| {
            format!(
                "no running `portico serve` found: cannot read {}",
                pid_file.display()
            )
        })?
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a process id", pid_file.display()))?;
    // SAFETY: kill(2) with a valid signal number has no memory-safety preconditions.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        anyhow::bail!(
            "cannot signal process {pid} (from {}): {}",
            pid_file.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(pid)
}

pub fn serve(path: &Path) -> anyhow::Result<()> {
    let source = Source::read(path)?;
    let config = source.parse()?;
    init_tracing(&config);
    runtime()?.block_on(async move {
        let server = Server::start(source, config).await?;
        server.run_until_signal().await
    })
}

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
    /// Stops following the shared store (cluster mode) at shutdown.
    following: tokio_util::sync::CancellationToken,
    pub core: Arc<Core>,
    pub lb: Arc<LoadBalancer>,
    pub dns: Option<DnsServer>,
    admin: Option<crate::admin::AdminServer>,
}

/// The parts and what they were last configured with; shared with the admin API.
pub struct Core {
    pub source_path: PathBuf,
    pub state_dir: PathBuf,
    pub lb: Arc<LoadBalancer>,
    pub zones: Arc<HostedZones>,
    pub certs: Arc<CertManager>,
    /// Cluster mode: the shared store and this node's cache of it.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// One apply at a time: reloads and API changes queue here.
    current: tokio::sync::Mutex<Current>,
}

/// The config as last applied: the file's text, the API's additions, and the two merged.
pub struct Current {
    pub source: Source,
    pub runtime: crate::runtime::Runtime,
    pub config: PorticoConfig,
}

impl Core {
    /// Validates the config file with the API's additions on the path a reload takes, then
    /// applies it; on error nothing changes.
    async fn apply(
        &self,
        source: &Source,
        runtime: &crate::runtime::Runtime,
    ) -> Result<PorticoConfig, ConfigError> {
        let file_config = source.parse()?;
        let config = runtime.merge(source, &self.state_dir)?;
        let locate = |issues: &[portico_lb::ConfigIssue]| {
            runtime.locate(source, &file_config, &self.state_dir, issues)
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
    pub async fn change_runtime<T>(
        &self,
        edit: impl FnOnce(
            &mut crate::runtime::Runtime,
            &PorticoConfig,
        ) -> Result<T, crate::admin::ApiError>,
    ) -> Result<T, crate::admin::ApiError> {
        let mut cur = self.current.lock().await;
        if let Some(c) = self.cluster.as_ref().filter(|c| !c.reachable()) {
            return Err(crate::admin::ApiError::new(
                http::StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the shared store ({}) cannot be reached: changes are refused until it answers; this node keeps serving",
                    c.describe()
                ),
            ));
        }
        let mut runtime = cur.runtime.clone();
        let out = edit(&mut runtime, &cur.config)?;
        let source = cur.source.clone();
        let config = self
            .apply(&source, &runtime)
            .await
            .map_err(crate::admin::ApiError::config)?;
        if let Err(e) = runtime.save(&self.state_dir) {
            // Not persisted, so not acknowledged: serve what was there before.
            let _ = self.apply(&source, &cur.runtime).await;
            return Err(crate::admin::ApiError::internal(format!(
                "cannot write {}: {e}",
                crate::runtime::path(&self.state_dir).display()
            )));
        }
        if let Some(c) = &self.cluster {
            if let Err(e) = c.push_key(crate::runtime::FILE) {
                // Not shared, so not acknowledged: back to what was there before.
                let _ = cur.runtime.save(&self.state_dir);
                let _ = self.apply(&source, &cur.runtime).await;
                return Err(crate::admin::ApiError::new(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    format!("the shared store ({}) cannot be reached, so the change was not applied: {e}", c.describe()),
                ));
            }
        }
        cur.runtime = runtime;
        cur.config = config;
        Ok(out)
    }

    /// Applies the API's additions as another node left them in the shared store.
    pub async fn reload_runtime(&self) {
        let mut cur = self.current.lock().await;
        let runtime = match crate::runtime::Runtime::load(&self.state_dir) {
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

/// DNS-01 through Portico's own hosted zones: the TXT value is added as one change, and the CA
/// is told to validate only once the change is INSYNC (every secondary) and every address this
/// process serves DNS on answers it.
struct ZonesDns01 {
    zones: Arc<HostedZones>,
    servers: Vec<std::net::SocketAddr>,
    /// `[acme] resolver`: where `_acme-challenge` CNAMEs outside the hosted zones are looked up.
    resolver: Option<std::net::SocketAddr>,
    /// `[acme] dns_port`: the port other zones' nameservers are asked on (53).
    ns_port: u16,
}

impl ZonesDns01 {
    fn name(n: &str) -> Result<(hickory_proto::rr::Name, hickory_proto::rr::Name), String> {
        let mut fqdn = hickory_proto::rr::Name::from_ascii(n).map_err(|e| format!("{n}: {e}"))?;
        fqdn.set_fqdn(true);
        Ok((fqdn.to_lowercase(), fqdn))
    }

    /// Where the TXT record for `n` goes: `n` itself when a hosted zone holds it, else the end
    /// of its CNAME chain inside a hosted zone — what ACM's validation CNAME achieves: the
    /// domain's zone stays at the registrar, `_acme-challenge.<name>` points into Portico.
    async fn delegated(&self, n: &str) -> Result<hickory_proto::rr::Name, String> {
        use hickory_proto::rr::{RData, RecordType};
        let (mut cur, _) = Self::name(n)?;
        for _ in 0..8 {
            let catalog = self.zones.catalog();
            if let Some(zone) = catalog.find(&cur) {
                let cname = zone
                    .node(&cur)
                    .and_then(|node| node.get(RecordType::CNAME))
                    .and_then(|set| set.first());
                match cname {
                    Some(RData::CNAME(t)) => {
                        cur = t.0.to_lowercase();
                        continue;
                    }
                    _ => return Ok(cur),
                }
            }
            let resolver = self
                .resolver
                .unwrap_or_else(portico_doctor::dns::system_resolver);
            let r = portico_doctor::dns::resolve(resolver, &cur, RecordType::CNAME)
                .await
                .map_err(|e| format!("looking up a CNAME for {cur}: {e}"))?;
            let target = r.records.iter().find_map(|r| match &r.data {
                RData::CNAME(t) => Some(t.0.to_lowercase()),
                _ => None,
            });
            match target {
                Some(t) => {
                    tracing::info!(from = %cur, to = %t, "dns-01: following the _acme-challenge CNAME");
                    cur = t;
                }
                None => {
                    return Err(format!(
                        "{n} is not in a hosted zone and {resolver} knows no CNAME from it into one; \
                         host the zone in Portico, add `{n} CNAME <a name in a Portico zone>` where the \
                         domain's DNS is, or use dns_server/dns_key (RFC 2136)"
                    ))
                }
            }
        }
        Err(format!("the CNAME chain from {n} is longer than 8"))
    }

    async fn edit(
        &self,
        lower: &hickory_proto::rr::Name,
        value: &str,
        add: bool,
    ) -> Result<portico_dns::zones::ChangeInfo, String> {
        use hickory_proto::rr::{rdata::TXT, RData, RecordType};
        let n = lower.to_string();
        let lower = lower.clone();
        let zone = self
            .zones
            .catalog()
            .find(&lower)
            .map(|z| z.origin.clone())
            .ok_or_else(|| format!("no hosted zone serves {n}"))?;
        let rdata = RData::TXT(TXT::new(vec![value.to_string()]));
        self.zones
            .commit(&zone, |z| {
                if add {
                    z.add(&lower, RecordType::TXT, 60, rdata);
                } else if let Some(set) =
                    z.node(&lower).and_then(|n| n.get(RecordType::TXT)).cloned()
                {
                    let rest = set.iter().filter(|r| r != &rdata).collect();
                    z.put(&lower, RecordType::TXT, set.ttl, rest);
                }
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())
    }
}

impl portico_certs::challenge::Dns01Publisher for ZonesDns01 {
    fn publish<'a>(
        &'a self,
        name: &'a str,
        value: &'a str,
        progress: &'a (dyn Fn(String) + Send + Sync),
    ) -> portico_certs::challenge::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let lower = self.delegated(name).await?;
            let info = self.edit(&lower, value, true).await?;
            progress(format!(
                "change {} applied (serial {}); waiting until it is INSYNC and every nameserver answers {lower}",
                info.id, info.serial
            ));
            if !portico_dns::zones::wait_insync(
                &self.zones,
                &info.id,
                std::time::Duration::from_secs(120),
            )
            .await
            {
                return Err(format!(
                    "change {} for {name} is not INSYNC on every secondary after 120 s",
                    info.id
                ));
            }
            progress(format!("change {} is INSYNC on every secondary", info.id));
            for (i, server) in self.servers.iter().enumerate() {
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
                loop {
                    let answer = portico_dns::notify::exchange(
                        *server,
                        &lower,
                        hickory_proto::op::OpCode::Query,
                        hickory_proto::rr::RecordType::TXT,
                    )
                    .await;
                    let seen = answer.is_some_and(|m| {
                        m.answers.iter().any(|r| matches!(&r.data, hickory_proto::rr::RData::TXT(t) if t.txt_data.iter().any(|d| d.as_ref() == value.as_bytes())))
                    });
                    if seen {
                        progress(format!(
                            "nameserver {server} answers {lower} ({} of {})",
                            i + 1,
                            self.servers.len()
                        ));
                        break;
                    }
                    if tokio::time::Instant::now() > deadline {
                        return Err(format!(
                            "nameserver {server} does not answer the TXT for {name} after 30 s"
                        ));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
            tracing::info!(%name, serial = info.serial, "dns-01: TXT record served by every nameserver");
            Ok(())
        })
    }

    fn remove<'a>(
        &'a self,
        name: &'a str,
        value: &'a str,
    ) -> portico_certs::challenge::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let lower = self.delegated(name).await?;
            self.edit(&lower, value, false).await.map(|_| ())
        })
    }

    fn check<'a>(
        &'a self,
        name: &'a str,
    ) -> portico_certs::challenge::BoxFuture<'a, Result<(), String>> {
        Box::pin(self.check_delegation(name))
    }
}

impl ZonesDns01 {
    /// The self-check before a dns-01 order: the zone that will hold the TXT record must be
    /// delegated to Portico's nameservers, or the CA asks other servers and finds nothing. The
    /// public delegation (the zone's NS set, from `[acme] resolver` or the system's) must name
    /// only nameservers in the zone's own NS set. A resolver that does not answer is not a
    /// verdict: the order goes ahead and the log says the check could not be made.
    async fn check_delegation(&self, name: &str) -> Result<(), String> {
        use hickory_proto::op::ResponseCode;
        use hickory_proto::rr::RecordType;
        let resolver = self
            .resolver
            .unwrap_or_else(portico_doctor::dns::system_resolver);
        let (asked, _) = Self::name(name)?;
        if self.zones.catalog().find(&asked).is_none() {
            self.check_cname_everywhere(&asked, resolver).await?;
        }
        let lower = self.delegated(name).await?;
        let (origin, ours) = {
            let catalog = self.zones.catalog();
            let zone = catalog
                .find(&lower)
                .ok_or_else(|| format!("no hosted zone serves {lower}"))?;
            let ours = zone
                .node(&zone.origin)
                .and_then(|n| n.get(RecordType::NS))
                .map(|set| ns_names(set.rdatas().iter()))
                .unwrap_or_default();
            (zone.origin.clone(), ours)
        };
        let answer = match portico_doctor::dns::resolve(resolver, &origin, RecordType::NS).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(zone = %origin, %resolver, error = %e,
                    "dns-01 self-check: cannot read the zone's delegation; ordering anyway");
                return Ok(());
            }
        };
        if answer.rcode == Some(ResponseCode::NXDomain) {
            return Err(format!(
                "self-check: {resolver} says the zone {origin} does not exist (NXDOMAIN), so the CA \
                 cannot find the TXT record for {name}; delegate {origin} to Portico's nameservers \
                 ({}) at the registrar", ours.join(", ")
            ));
        }
        let public = ns_names(answer.records.iter().map(|r| &r.data));
        let elsewhere: Vec<&str> = public
            .iter()
            .filter(|n| !ours.contains(n))
            .map(String::as_str)
            .collect();
        if public.is_empty() {
            return Err(format!(
                "self-check: {resolver} knows no NS records for {origin}, so the CA cannot find the \
                 TXT record for {name}; delegate {origin} to Portico's nameservers ({}) at the registrar",
                ours.join(", ")
            ));
        }
        if !elsewhere.is_empty() {
            return Err(format!(
                "self-check: {origin} is delegated to {} (through {resolver}), not only to \
                 Portico's nameservers ({}); the CA would ask {} and not find the TXT record for \
                 {name}: set the zone's NS records at the registrar to Portico's",
                public.join(", "),
                ours.join(", "),
                elsewhere.join(", ")
            ));
        }
        tracing::info!(zone = %origin, nameservers = %public.join(","), "dns-01 self-check: the zone is delegated to Portico");
        Ok(())
    }

    /// For `name` in a zone Portico does not host: every nameserver of that zone (asked
    /// directly, without recursion) must answer the `_acme-challenge` CNAME the resolver
    /// knows, or the CA may ask one that has not got it yet. A nameserver that does not answer
    /// at all, or has no address, is logged; the CA would try another.
    async fn check_cname_everywhere(
        &self,
        name: &hickory_proto::rr::Name,
        resolver: std::net::SocketAddr,
    ) -> Result<(), String> {
        use hickory_proto::rr::{RData, RecordType};
        use portico_doctor::dns;
        let cname_in = |records: &[hickory_proto::rr::Record]| {
            records.iter().find_map(|r| match &r.data {
                RData::CNAME(c) if r.name.to_lowercase() == *name => Some(c.0.to_lowercase()),
                _ => None,
            })
        };
        let Ok(found) = dns::resolve(resolver, name, RecordType::CNAME).await else {
            return Ok(()); // delegated() says why when it matters
        };
        let Some(target) = cname_in(&found.records) else {
            return Ok(());
        };
        // The zone holding the CNAME is the one of its parent (a CNAME's owner is never a zone
        // apex). Asking about `name` itself would make the resolver follow the CNAME and cache
        // "no such name" for the target, which the CA's query a moment later would then get.
        let servers = match dns::zone_apex(resolver, &name.base_name()).await {
            Ok((apex, _)) => dns::nameservers(resolver, &apex).await.map(|s| (apex, s)),
            Err(e) => Err(e),
        };
        let (apex, servers) = match servers {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%name, error = %e, "dns-01 self-check: cannot list the nameservers of the CNAME's zone; ordering anyway");
                return Ok(());
            }
        };
        for (ns, addrs) in servers {
            if addrs.is_empty() {
                tracing::warn!(%name, nameserver = %ns, "dns-01 self-check: a nameserver of the CNAME's zone has no address");
            }
            for ip in addrs {
                let at = std::net::SocketAddr::new(ip, self.ns_port);
                match dns::query(at, name, RecordType::CNAME, false).await {
                    Ok(m) if cname_in(&m.answers).as_ref() == Some(&target) => {}
                    Ok(m) => {
                        return Err(format!(
                            "self-check: {ns} ({at}), a nameserver of {apex}, answers {} without the CNAME \
                             {name} -> {target} that {resolver} returns: not every nameserver has it yet, and \
                             the CA may ask this one; wait until the zone has reached it (or add the record there)",
                            m.metadata.response_code
                        ))
                    }
                    Err(e) => {
                        tracing::warn!(%name, nameserver = %ns, %at, error = %e, "dns-01 self-check: a nameserver of the CNAME's zone does not answer")
                    }
                }
            }
        }
        tracing::info!(%name, %target, zone = %apex, "dns-01 self-check: every nameserver of the zone answers the CNAME");
        Ok(())
    }
}

/// The nameserver names among `data` (NS records), lower-case and fully qualified.
fn ns_names<'a>(data: impl Iterator<Item = &'a hickory_proto::rr::RData>) -> Vec<String> {
    data.filter_map(|d| match d {
        hickory_proto::rr::RData::NS(ns) => Some(ns.0.to_lowercase().to_string()),
        _ => None,
    })
    .collect()
}

/// Names resolve as a CA would see them: from Portico's own hosted zones when a zone holds the
/// name, else through the system resolver.
struct ZonesLookup {
    zones: Arc<HostedZones>,
    listeners: Arc<LbListeners>,
    /// `[acme] resolver`: asked for names outside the hosted zones instead of the system's.
    resolver: Option<std::net::SocketAddr>,
}

impl portico_certs::challenge::NameLookup for ZonesLookup {
    fn addrs<'a>(
        &'a self,
        name: &'a str,
    ) -> portico_certs::challenge::BoxFuture<'a, Result<Vec<std::net::IpAddr>, String>> {
        Box::pin(async move {
            let mut fqdn =
                hickory_proto::rr::Name::from_ascii(name).map_err(|e| format!("{name}: {e}"))?;
            fqdn.set_fqdn(true);
            let catalog = self.zones.catalog();
            if catalog.find(&fqdn).is_some() {
                let mut out = Vec::new();
                for t in [
                    hickory_proto::rr::RecordType::A,
                    hickory_proto::rr::RecordType::AAAA,
                ] {
                    let a =
                        portico_dns::answer::lookup(&catalog, &fqdn, t, self.listeners.as_ref());
                    out.extend(a.answers.iter().filter_map(|r| match &r.data {
                        hickory_proto::rr::RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
                        hickory_proto::rr::RData::AAAA(a) => Some(std::net::IpAddr::V6(a.0)),
                        _ => None,
                    }));
                }
                return Ok(out);
            }
            if let Some(resolver) = self.resolver {
                let mut out = Vec::new();
                for t in [
                    hickory_proto::rr::RecordType::A,
                    hickory_proto::rr::RecordType::AAAA,
                ] {
                    let r = portico_doctor::dns::resolve(resolver, &fqdn, t).await?;
                    out.extend(r.ips());
                }
                return Ok(out);
            }
            let found = tokio::net::lookup_host((name, 80))
                .await
                .map_err(|e| e.to_string())?;
            Ok(found.map(|a| a.ip()).collect())
        })
    }
}

/// ALIAS records that name a listener answer with the addresses it is bound to.
struct LbListeners(Arc<LoadBalancer>);

impl ListenerAddrs for LbListeners {
    fn addrs(&self, listener: &str) -> Vec<std::net::IpAddr> {
        let mut ips: Vec<std::net::IpAddr> = self
            .0
            .local_addrs(listener)
            .into_iter()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified())
            .collect();
        ips.dedup();
        ips
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
        let runtime = crate::runtime::Runtime::load(&state_dir)?;
        let config = runtime.merge(&source, &state_dir)?;
        let locate = |issues: &[portico_lb::ConfigIssue]| {
            runtime.locate(&source, &file_config, &state_dir, issues)
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
        if let Some(c) = &cluster {
            zones.set_guard(c.clone());
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
                    listeners: Arc::new(LbListeners(lb.clone())),
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
        certs.set_lookup(Arc::new(ZonesLookup {
            zones: zones.clone(),
            listeners: Arc::new(LbListeners(lb.clone())),
            resolver: config.acme.as_ref().and_then(|a| a.resolver_addr()),
        }));
        certs.set_dns01(Arc::new(ZonesDns01 {
            zones: zones.clone(),
            servers: dns.as_ref().map(|d| d.addrs.clone()).unwrap_or_default(),
            resolver: config.acme.as_ref().and_then(|a| a.resolver_addr()),
            ns_port: config.acme.as_ref().map_or(53, |a| a.dns_port),
        }));
        certs.manage(config.acme_settings(&source.base_dir()), requests);
        let admin_config = config.admin.clone();
        let core = Arc::new(Core {
            source_path: source.path.clone(),
            state_dir: state_dir.clone(),
            lb: lb.clone(),
            zones,
            certs,
            cluster: cluster.clone(),
            current: tokio::sync::Mutex::new(Current {
                source,
                runtime,
                config,
            }),
        });
        let admin = match admin_config {
            Some(a) => {
                let server = crate::admin::AdminServer::start(core.clone(), &a).await?;
                crate::admin::client::write_url(&state_dir, server.addr, a.cert_file.is_some());
                Some(server)
            }
            None => None,
        };
        let following = tokio_util::sync::CancellationToken::new();
        if let Some(c) = cluster {
            let noting = c.clone();
            let _ = tokio::task::spawn_blocking(move || noting.note_local()).await;
            tokio::spawn(crate::cluster::follow(c, core.clone(), following.clone()));
        }
        write_pid_file(&state_dir);
        Ok(Server {
            following,
            core,
            lb,
            dns,
            admin,
        })
    }

    /// Where the admin API listens, when `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    /// Serves until SIGTERM or SIGINT, reloading on SIGHUP; then drains and returns.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
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
        self.core.certs.stop();
        let clean = self.lb.shutdown(shutdown_timeout).await;
        if !clean {
            tracing::warn!("drain deadline passed with requests still in flight");
        }
        let _ = std::fs::remove_file(self.core.state_dir.join(PID_FILE));
        if self.admin.is_some() {
            let _ = std::fs::remove_file(self.core.state_dir.join(crate::admin::client::URL_FILE));
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
