//! The certificate manager: for each requested certificate, one task that loads what is stored,
//! publishes it to the cert resolver, and issues or renews when it is missing, no longer covers
//! the names asked for, or has a third of its lifetime left (half, below ten days). Failures are
//! recorded with the CA's problem and retried with exponential backoff; the old certificate keeps
//! serving until a new one is stored and swapped in. It is the only writer of certificate files.
//!
//! Over 600 lines on purpose: one certificate's lifecycle (load, publish, order, renew, back off,
//! revoke) is one state machine, easier to follow in one file; about 115 lines are tests.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use portico_lb::tls::{served_cert_from_pem, CertStore};
use tokio_util::sync::CancellationToken;

use crate::challenge::{Dns01Publisher, Http01Tokens, NameLookup, TlsAlpn01Challenges};
use crate::issuer::acme::{AcmeIssuer, Solver};
use crate::issuer::internal::InternalCa;
use crate::storage::{Issued, RenewRequest, Storage};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuerKind {
    Acme,
    Internal,
}

/// How an ACME certificate proves control of its names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    Http01,
    TlsAlpn01,
    /// Through the DNS-01 publisher (Portico's hosted zones).
    Dns01,
}

/// A `[[certificate]]` with `domains`: what to obtain and keep renewed.
#[derive(Clone)]
pub struct CertRequest {
    pub name: String,
    pub domains: Vec<String>,
    pub issuer: IssuerKind,
    pub challenge: Challenge,
    /// For dns-01: a publisher of its own (RFC 2136 to another server) instead of the default.
    pub dns_publisher: Option<Arc<dyn Dns01Publisher>>,
    pub deploy_hook: Option<String>,
    /// The certificate's private key: ECDSA P-256 unless the config says RSA.
    pub key_type: crate::keys::KeyType,
    /// The ACME profile to order (RFC draft `acme-profiles`), checked against the directory;
    /// every renewal orders it again, never another one.
    pub profile: Option<String>,
}

/// `[acme]`.
#[derive(Debug, Clone, Default)]
pub struct AcmeSettings {
    pub directory: String,
    pub email: Option<String>,
    pub ca_root: Option<PathBuf>,
    /// The port the CA connects to for HTTP-01 (80; another only for test CAs like Pebble).
    pub http_port: u16,
    /// The port the CA connects to for TLS-ALPN-01 (443; another only for test CAs).
    pub tls_port: u16,
    /// Check that HTTP-01 can pass before ordering.
    pub self_check: bool,
    /// External Account Binding: key id and HMAC key, for CAs that require it.
    pub eab: Option<(String, Vec<u8>)>,
}

/// The longest an order (self-check, challenges, validation, finalize, download) may take.
const ORDER_DEADLINE: Duration = Duration::from_secs(600);

pub struct CertManager {
    storage: Storage,
    store: Arc<CertStore>,
    tokens: Http01Tokens,
    alpn: TlsAlpn01Challenges,
    internal: InternalCa,
    acme: Mutex<Option<Arc<AcmeIssuer>>>,
    acme_settings: Mutex<Option<AcmeSettings>>,
    lookup: Mutex<Option<Arc<dyn NameLookup>>>,
    state_dir: PathBuf,
    tasks: Mutex<CancellationToken>,
    dns01: Mutex<Option<Arc<dyn Dns01Publisher>>>,
    /// Failed orders per certificate since this process started (for `/metrics`).
    failures: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Cluster mode: the store nodes share (order locks, HTTP-01 tokens, issued certificates).
    shared: Mutex<Option<Arc<dyn portico_store::Store>>>,
    /// When renewals are due and how long back-offs last (tests move a clock of their own).
    clock: Arc<dyn crate::clock::Clock>,
    /// Where issued, renewed, failed, expiring and window-moved events go (`[[alert]]`).
    alerts: Mutex<Option<Arc<dyn crate::alerts::AlertSink>>>,
}

/// How long an order lock lives without being kept alive (a node that dies mid-order loses it
/// after this); it is renewed every third of it while the order runs.
const ORDER_LOCK_TTL: Duration = Duration::from_secs(15);

/// A held order lock, kept alive in the background until dropped.
struct OrderLock {
    lock: Arc<Mutex<Box<dyn portico_store::Lock>>>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for OrderLock {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl CertManager {
    pub fn new(state_dir: &Path, store: Arc<CertStore>) -> Arc<Self> {
        Self::with_clock(state_dir, store, Arc::new(crate::clock::SystemClock))
    }

    /// A manager on another clock (tests: renewal of short-lived certificates over days).
    pub fn with_clock(
        state_dir: &Path,
        store: Arc<CertStore>,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> Arc<Self> {
        Arc::new(CertManager {
            storage: Storage::new(state_dir),
            alpn: TlsAlpn01Challenges::new(store.clone()),
            store,
            tokens: Http01Tokens::default(),
            internal: InternalCa::new(state_dir),
            acme: Mutex::new(None),
            acme_settings: Mutex::new(None),
            lookup: Mutex::new(None),
            state_dir: state_dir.to_path_buf(),
            tasks: Mutex::new(CancellationToken::new()),
            dns01: Mutex::new(None),
            failures: Mutex::default(),
            shared: Mutex::new(None),
            clock,
            alerts: Mutex::new(None),
        })
    }

    /// The HTTP-01 tokens the load balancer must answer.
    pub fn tokens(&self) -> Http01Tokens {
        self.tokens.clone()
    }

    /// How names are resolved for the self-check before ordering.
    pub fn set_lookup(&self, lookup: Arc<dyn NameLookup>) {
        *lock(&self.lookup) = Some(lookup);
    }

    /// Where DNS-01 TXT records are written (Portico's hosted zones).
    pub fn set_dns01(&self, publisher: Arc<dyn Dns01Publisher>) {
        *lock(&self.dns01) = Some(publisher);
    }

    /// Cluster mode: one node orders a certificate at a time (a lock in `store`), HTTP-01
    /// tokens are answered by every node, and an issued certificate is written to `store` under
    /// the lock (fenced: a node that lost the lock cannot overwrite).
    pub fn set_shared_store(&self, store: Arc<dyn portico_store::Store>) {
        self.tokens.share(store.clone());
        self.alpn.share(store.clone());
        *lock(&self.shared) = Some(store);
    }

    /// Cluster mode: answers the TLS-ALPN-01 challenges other nodes put into the shared store
    /// (blocking; run it off the async workers when the store's watch fires).
    pub fn mirror_challenges(&self) -> std::io::Result<()> {
        self.alpn.mirror()
    }

    /// Serves the stored certificate `name` again (another node renewed it into the state).
    pub fn refresh(&self, name: &str) {
        if self.storage.load_live(name).is_some() {
            if let Err(e) = self.publish(name) {
                tracing::warn!(certificate = %name, error = %e, "stored certificate cannot be served");
            } else {
                tracing::info!(certificate = %name, "serving the certificate another node stored");
            }
        }
    }

    /// The order lock for `name`: `Ok(None)` without a shared store, `Err` while another node
    /// holds it (or the store cannot be reached).
    fn order_lock(&self, name: &str) -> Result<Option<OrderLock>, String> {
        let Some(store) = lock(&self.shared).clone() else {
            return Ok(None);
        };
        match store.try_lock(&format!("certificates/order/{name}"), ORDER_LOCK_TTL) {
            Ok(Some(l)) => {
                let l = Arc::new(Mutex::new(l));
                let held = l.clone();
                let name = name.to_string();
                let keeper = tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(ORDER_LOCK_TTL / 3).await;
                        if let Err(e) = lock(&held).keep_alive() {
                            tracing::warn!(certificate = %name, error = %e, "order lock lost");
                            return;
                        }
                    }
                });
                Ok(Some(OrderLock { lock: l, keeper }))
            }
            Ok(None) => Err("another node is ordering it".into()),
            Err(e) => Err(format!("the shared store cannot be reached: {e}")),
        }
    }

    /// Writes the lineage's files for `name` to the shared store under the order lock.
    fn share_lineage(&self, held: &OrderLock, name: &str, version: Option<u32>) {
        let root = self.state_dir.clone();
        let mut keys = Vec::new();
        if let Some(n) = version {
            for kind in ["cert", "chain", "fullchain", "privkey"] {
                keys.push(format!("certificates/archive/{name}/{kind}{n}.pem"));
            }
            for kind in ["cert", "chain", "fullchain", "privkey"] {
                keys.push(format!("certificates/live/{name}/{kind}.pem"));
            }
        }
        keys.push(format!("certificates/renewal/{name}.toml"));
        for key in keys {
            let Ok(bytes) = std::fs::read(root.join(&key)) else {
                continue;
            };
            if let Err(e) = lock(&held.lock).put(&key, &bytes, portico_store::mode_for(&key)) {
                tracing::error!(certificate = %name, %key, error = %e, "cannot share the certificate");
                return;
            }
        }
    }

    /// Failed orders and renewals per certificate since this process started.
    pub fn failure_counts(&self) -> Vec<(String, u64)> {
        lock(&self.failures)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Sends the manager's events to `sink` from now on (`None`: nowhere).
    pub fn set_alerts(&self, sink: Option<Arc<dyn crate::alerts::AlertSink>>) {
        *lock(&self.alerts) = sink;
    }

    fn alert(&self, event: crate::alerts::Event) {
        let sink = lock(&self.alerts).clone();
        if let Some(s) = sink {
            s.send(event);
        }
    }

    /// Reports a certificate with less validity left than the alerts' threshold (the sink
    /// delivers it once per version).
    fn alert_if_expiring(&self, req: &CertRequest, c: &Current) {
        let sink = lock(&self.alerts).clone();
        let Some(sink) = sink else { return };
        let now = self.clock.now();
        let lifetime = c.not_after.duration_since(c.not_before).unwrap_or_default();
        let left = c.not_after.duration_since(now).unwrap_or_default();
        if left < sink.expiring_within(lifetime) {
            let rec = self.storage.record(&req.name).unwrap_or_default();
            let mut e =
                crate::alerts::Event::new(crate::alerts::EXPIRING, &req.name, &req.domains, now);
            e.version = Some(rec.version);
            e.not_after = Some(humantime::format_rfc3339_seconds(c.not_after).to_string());
            e.expires_in_seconds = Some(left.as_secs());
            e.error = rec.last_error;
            sink.send(e);
        }
    }

    /// The ACME issuer of the applied `[acme]` section.
    pub fn acme_issuer(&self) -> Option<Arc<AcmeIssuer>> {
        lock(&self.acme).clone()
    }

    pub fn internal_root(&self) -> PathBuf {
        self.internal.root_path()
    }

    /// Starts managing exactly `requests` (replacing what was managed before).
    pub fn manage(self: &Arc<Self>, acme: Option<AcmeSettings>, requests: Vec<CertRequest>) {
        *lock(&self.acme_settings) = acme.clone();
        *lock(&self.acme) = acme.map(|a| {
            Arc::new(AcmeIssuer::new(
                &self.state_dir,
                &a.directory,
                a.email,
                a.ca_root,
                a.eab,
            ))
        });
        let token = CancellationToken::new();
        std::mem::replace(&mut *lock(&self.tasks), token.clone()).cancel();
        for req in requests {
            let (me, token) = (self.clone(), token.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = token.cancelled() => {}
                    _ = me.run(req) => {}
                }
            });
        }
    }

    pub fn stop(&self) {
        lock(&self.tasks).cancel();
    }

    async fn run(&self, req: CertRequest) {
        let mut failures = 0u32;
        // RFC 9773 `replaces`, unless the CA said the certificate is already replaced.
        let mut name_replaced = true;
        loop {
            let current = self.current(&req);
            let asked = self.storage.take_renewal_request(&req.name);
            // Put back if this attempt is cancelled (a reload restarts these tasks, and
            // `portico certs renew` signals one) or given up before its outcome is recorded.
            let mut taken = Taken {
                storage: &self.storage,
                name: &req.name,
                what: asked,
            };
            if asked == Some(RenewRequest::DryRun) {
                tracing::info!(certificate = %req.name, "dry run: ordering a certificate that will not be stored");
                let attempt = tokio::time::timeout(ORDER_DEADLINE, self.issue(&req, None)).await;
                let now = humantime::format_rfc3339_seconds(self.clock.now());
                let outcome = match attempt {
                    Ok(Ok(_)) => format!("ok at {now}"),
                    Ok(Err(e)) => format!("failed at {now}: {e}"),
                    Err(_) => format!("failed at {now}: no certificate within {ORDER_DEADLINE:?}"),
                };
                tracing::info!(certificate = %req.name, %outcome, "dry run done");
                let mut rec = self.storage.record(&req.name).unwrap_or_default();
                rec.name = req.name.clone();
                rec.dry_run = Some(outcome);
                let _ = self.storage.save_record(&rec);
                taken.what = None;
                continue;
            }
            if let Some(c) = &current {
                self.alert_if_expiring(&req, c);
                // Serve what is stored at once, even while a renewal is due.
                if let Err(e) = self.publish(&req.name) {
                    tracing::warn!(certificate = %req.name, error = %e, "stored certificate cannot be served");
                }
                if asked == Some(RenewRequest::Revoke) {
                    match self.revoke(&req, &c.leaf).await {
                        Ok(()) => {
                            // Revoked: what is left to do, if cut short, is the replacement.
                            taken.what = Some(RenewRequest::Renew);
                            tracing::info!(certificate = %req.name, "certificate revoked; replacing it now");
                        }
                        Err(e) => {
                            tracing::warn!(certificate = %req.name, error = %e, "revocation failed; the certificate keeps serving");
                            let mut rec = self.storage.record(&req.name).unwrap_or_default();
                            rec.last_error = Some(e);
                            rec.failures += 1;
                            let _ = self.storage.save_record(&rec);
                            taken.what = None;
                            continue;
                        }
                    }
                } else if asked == Some(RenewRequest::Renew) {
                    tracing::info!(certificate = %req.name, "renewal asked for (portico certs renew)");
                } else if c.covers {
                    let (renew_at, ask_again) = self.renew_time(&req, c).await;
                    if self.clock.now() < renew_at {
                        let wait = renew_at
                            .duration_since(self.clock.now())
                            .unwrap_or_default();
                        self.clock.sleep(wait.min(ask_again)).await;
                        continue;
                    }
                }
            }
            let held = match self.order_lock(&req.name) {
                Ok(h) => h,
                Err(why) => {
                    tracing::debug!(certificate = %req.name, %why, "not ordering now");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if held.is_some() {
                // Re-check after taking the lock: another node may have just stored a new one.
                let now = self.current(&req);
                if now.as_ref().map(|c| &c.leaf) != current.as_ref().map(|c| &c.leaf) {
                    taken.what = None; // that new certificate answers the request
                    continue;
                }
            }
            let mut rec = self.storage.record(&req.name).unwrap_or_default();
            rec.name = req.name.clone();
            rec.domains = req.domains.clone();
            rec.issuer = issuer_name(req.issuer).into();
            rec.status = if current.is_some() {
                "RENEWING"
            } else {
                "PENDING_VALIDATION"
            }
            .into();
            let _ = self.storage.save_record(&rec);
            tracing::info!(certificate = %req.name, domains = ?req.domains, issuer = issuer_name(req.issuer), status = %rec.status, "obtaining certificate");
            // Every step has its own timeout, but the ACME client's HTTP requests do not: bound
            // the whole order so that a CA that hangs cannot stall renewals for ever.
            let replaces = current
                .as_ref()
                .filter(|_| name_replaced)
                .map(|c| c.leaf.as_slice());
            let attempt = tokio::time::timeout(ORDER_DEADLINE, self.obtain(&req, replaces)).await;
            taken.what = None; // the attempt ended: its outcome is recorded below
            let attempt = attempt.unwrap_or_else(|_| {
                Err(format!(
                    "the order did not finish within {ORDER_DEADLINE:?}"
                ))
            });
            match attempt {
                Ok(()) => {
                    failures = 0;
                    let c = self.current(&req);
                    rec = self.storage.record(&req.name).unwrap_or(rec);
                    rec.status = "ISSUED".into();
                    rec.profile = req.profile.clone();
                    rec.last_error = None;
                    rec.next_attempt = None;
                    rec.renewal_window = None;
                    rec.progress.clear();
                    name_replaced = true;
                    if let Some(c) = c {
                        rec.not_after =
                            Some(humantime::format_rfc3339_seconds(c.not_after).to_string());
                        rec.renew_after =
                            Some(humantime::format_rfc3339_seconds(c.renew_at).to_string());
                    }
                    let _ = self.storage.save_record(&rec);
                    if let Some(h) = &held {
                        self.share_lineage(h, &req.name, Some(rec.version));
                    }
                    drop(held);
                    let what = if rec.version > 1 {
                        crate::alerts::RENEWED
                    } else {
                        crate::alerts::ISSUED
                    };
                    tracing::info!(event = what, certificate = %req.name, version = rec.version, not_after = ?rec.not_after, "certificate issued and serving");
                    let mut e =
                        crate::alerts::Event::new(what, &req.name, &req.domains, self.clock.now());
                    e.version = Some(rec.version);
                    e.not_after = rec.not_after.clone();
                    self.alert(e);
                    if let Some(hook) = &req.deploy_hook {
                        self.deploy_hook(&req, hook).await;
                    }
                }
                Err(e) => {
                    failures += 1;
                    *lock(&self.failures).entry(req.name.clone()).or_default() += 1;
                    let expired = current
                        .as_ref()
                        .is_some_and(|c| c.not_after <= self.clock.now());
                    rec.status = if expired { "EXPIRED" } else { "FAILED" }.into();
                    rec.last_error = Some(e.clone());
                    rec.failures += 1;
                    if e.contains("urn:ietf:params:acme:error:alreadyReplaced")
                        || e.contains("replaces field mismatch")
                    {
                        name_replaced = false;
                    }
                    let retry_after = lock(&self.acme).as_ref().and_then(|a| a.take_retry_after());
                    let wait = retry_wait(failures, &e, retry_after, self.clock.now());
                    rec.next_attempt = Some(
                        humantime::format_rfc3339_seconds(self.clock.now() + wait).to_string(),
                    );
                    let _ = self.storage.save_record(&rec);
                    if let Some(h) = &held {
                        self.share_lineage(h, &req.name, None);
                    }
                    drop(held);
                    tracing::warn!(event = "certificate_failed", certificate = %req.name, error = %e, retry_in = ?wait, ca_retry_after = retry_after.is_some(), "certificate request failed");
                    let mut ev = crate::alerts::Event::new(
                        crate::alerts::FAILED,
                        &req.name,
                        &req.domains,
                        self.clock.now(),
                    );
                    ev.version = (rec.version > 0).then_some(rec.version);
                    ev.not_after = rec.not_after.clone();
                    ev.error = Some(e.clone());
                    self.alert(ev);
                    self.clock.sleep(wait).await;
                }
            }
        }
    }

    /// certbot's deploy hook contract; a failing hook is logged, never fatal.
    async fn deploy_hook(&self, req: &CertRequest, hook: &str) {
        let run = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(hook)
            .env("RENEWED_LINEAGE", self.storage.live(&req.name))
            .env("RENEWED_DOMAINS", req.domains.join(" "))
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(Duration::from_secs(300), run).await {
            Ok(Ok(out)) if out.status.success() => {
                tracing::info!(certificate = %req.name, hook, "deploy hook ran");
            }
            Ok(Ok(out)) => tracing::warn!(
                certificate = %req.name,
                hook,
                status = %out.status,
                stderr = %String::from_utf8_lossy(&out.stderr).trim(),
                "deploy hook failed"
            ),
            Ok(Err(e)) => {
                tracing::warn!(certificate = %req.name, hook, error = %e, "deploy hook could not run")
            }
            Err(_) => {
                tracing::warn!(certificate = %req.name, hook, "deploy hook ran over 300 s and was killed")
            }
        }
    }

    /// When to renew `c`: inside the CA's renewal window when it offers one (RFC 9773: at a
    /// point spread per name across the window), else at the lifetime rule; and the longest to
    /// sleep before asking again.
    async fn renew_time(&self, req: &CertRequest, c: &Current) -> (SystemTime, Duration) {
        const HOUR: Duration = Duration::from_secs(3600);
        let acme = match req.issuer {
            IssuerKind::Acme => lock(&self.acme).clone(),
            IssuerKind::Internal => None,
        };
        let Some(acme) = acme else {
            return (c.renew_at, HOUR);
        };
        let asked = match self.shared_window(&req.name, &c.leaf, &acme).await {
            SharedWindow::Fetched(r) => r,
            SharedWindow::Busy => {
                // Another node is asking the CA right now: read what it shares shortly.
                return (c.renew_at, Duration::from_secs(5));
            }
        };
        match asked {
            Ok(Some(w)) => {
                let span = w.end.duration_since(w.start).unwrap_or_default();
                let at = w.start + span.mul_f64(spread(&req.name));
                let mut rec = self.storage.record(&req.name).unwrap_or_default();
                let window = format!(
                    "{} .. {}",
                    humantime::format_rfc3339_seconds(w.start),
                    humantime::format_rfc3339_seconds(w.end)
                );
                let renew_after = humantime::format_rfc3339_seconds(at).to_string();
                if rec.renewal_window.as_deref() != Some(window.as_str())
                    || rec.renew_after.as_deref() != Some(renew_after.as_str())
                {
                    tracing::info!(certificate = %req.name, %window, renew_after, explanation = ?w.explanation, "renewal window from the CA (ARI)");
                    if let Some(before) = rec.renewal_window.as_ref().filter(|b| **b != window) {
                        let mut e = crate::alerts::Event::new(
                            crate::alerts::WINDOW_MOVED,
                            &req.name,
                            &req.domains,
                            self.clock.now(),
                        );
                        e.version = Some(rec.version);
                        e.not_after = rec.not_after.clone();
                        e.window_before = Some(before.clone());
                        e.window = Some(window.clone());
                        self.alert(e);
                    }
                    rec.renewal_window = Some(window);
                    rec.renew_after = Some(renew_after);
                    let _ = self.storage.save_record(&rec);
                }
                let ask = w.ask_again.clamp(Duration::from_secs(60), 6 * HOUR);
                (at, ask)
            }
            Ok(None) => (c.renew_at, HOUR),
            Err(e) => {
                tracing::warn!(certificate = %req.name, error = %e, "cannot fetch the renewal window; using the lifetime rule");
                (c.renew_at, HOUR)
            }
        }
    }

    /// The CA's renewal window for `leaf`. In cluster mode one node asks and shares the answer
    /// (under `certificates/ari/<name>.json`, until the CA's Retry-After), so that a cluster
    /// asks the CA once per poll, not once per node.
    async fn shared_window(&self, name: &str, leaf: &[u8], acme: &AcmeIssuer) -> SharedWindow {
        let Some(store) = lock(&self.shared).clone() else {
            return SharedWindow::Fetched(acme.renewal_window(leaf).await);
        };
        let key = format!("certificates/ari/{name}.json");
        let fingerprint = format!("{:016x}", fnv64(leaf));
        let now = unix(self.clock.now());
        let stored = store
            .get(&key)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .filter(|v| v["leaf"] == fingerprint.as_str());
        if let Some(v) = &stored {
            let (start, end, next) = (v["start"].as_u64(), v["end"].as_u64(), v["next"].as_u64());
            if let (Some(start), Some(end), Some(next)) = (start, end, next) {
                if now < next {
                    let serial = x509_parser::parse_x509_certificate(leaf)
                        .map(|(_, c)| hex(c.tbs_certificate.raw_serial()))
                        .unwrap_or_default();
                    tracing::info!(certificate = %name, %serial, "renewal window shared by another node (ARI)");
                    return SharedWindow::Fetched(Ok(Some(crate::issuer::acme::RenewalWindow {
                        start: SystemTime::UNIX_EPOCH + Duration::from_secs(start),
                        end: SystemTime::UNIX_EPOCH + Duration::from_secs(end),
                        ask_again: Duration::from_secs(next - now),
                        explanation: v["explanation"].as_str().map(str::to_string),
                    })));
                }
            }
        }
        let _held = match store.try_lock(
            &format!("certificates/ari-lock/{name}"),
            Duration::from_secs(60),
        ) {
            Ok(Some(l)) => l,
            Ok(None) => return SharedWindow::Busy,
            Err(e) => {
                tracing::debug!(certificate = %name, error = %e, "shared store unreachable: asking the CA directly");
                return SharedWindow::Fetched(acme.renewal_window(leaf).await);
            }
        };
        let fetched = acme.renewal_window(leaf).await;
        if let Ok(Some(w)) = &fetched {
            let v = serde_json::json!({
                "leaf": fingerprint,
                "start": unix(w.start),
                "end": unix(w.end),
                "next": now + w.ask_again.clamp(Duration::from_secs(60), Duration::from_secs(6 * 3600)).as_secs(),
                "explanation": w.explanation,
            });
            if let Err(e) = store.put(&key, v.to_string().as_bytes(), 0o644) {
                tracing::warn!(certificate = %name, error = %e, "cannot share the renewal window");
            }
        }
        SharedWindow::Fetched(fetched)
    }

    async fn obtain(&self, req: &CertRequest, replaces: Option<&[u8]>) -> Result<(), String> {
        let issued = self.issue(req, replaces).await?;
        let version = self
            .storage
            .store(&req.name, &issued)
            .map_err(|e| format!("cannot store: {e}"))?;
        let mut rec = self.storage.record(&req.name).unwrap_or_default();
        rec.version = version;
        let _ = self.storage.save_record(&rec);
        self.publish(&req.name)
    }

    /// Revokes `leaf` at the CA that issued it (the internal CA keeps no revocation list: its
    /// certificate is only replaced).
    async fn revoke(&self, req: &CertRequest, leaf: &[u8]) -> Result<(), String> {
        let mut rec = self.storage.record(&req.name).unwrap_or_default();
        if req.issuer == IssuerKind::Acme {
            let acme = lock(&self.acme)
                .clone()
                .ok_or("issuer = \"acme\" needs an [acme] section")?;
            acme.revoke(leaf).await?;
        }
        rec.status = "REVOKED".into();
        let _ = self.storage.save_record(&rec);
        Ok(())
    }

    /// Proves control and gets a certificate from the issuer; stores nothing.
    async fn issue(&self, req: &CertRequest, replaces: Option<&[u8]>) -> Result<Issued, String> {
        let progress = |step: String| {
            tracing::info!(certificate = %req.name, %step, "order progress");
            let mut rec = self.storage.record(&req.name).unwrap_or_default();
            rec.progress.push(step);
            let _ = self.storage.save_record(&rec);
        };
        let mut rec = self.storage.record(&req.name).unwrap_or_default();
        rec.progress.clear();
        rec.profile = req.profile.clone();
        let _ = self.storage.save_record(&rec);
        Ok(match req.issuer {
            IssuerKind::Internal => {
                self.internal
                    .issue(&req.domains, req.key_type, self.clock.now())?
            }
            IssuerKind::Acme => {
                let acme = lock(&self.acme)
                    .clone()
                    .ok_or("issuer = \"acme\" needs an [acme] section")?;
                let settings = lock(&self.acme_settings).clone().unwrap_or_default();
                let lookup = lock(&self.lookup).clone();
                if let (Challenge::Http01, true, Some(lookup)) =
                    (req.challenge, settings.self_check, lookup.clone())
                {
                    crate::self_check::http01(
                        &req.domains,
                        lookup.as_ref(),
                        &self.tokens,
                        settings.http_port,
                    )
                    .await?;
                }
                match req.challenge {
                    Challenge::Http01 => {
                        acme.issue(
                            &req.domains,
                            req.key_type,
                            Solver::Http01(&self.tokens),
                            replaces,
                            req.profile.as_deref(),
                            &progress,
                        )
                        .await?
                    }
                    Challenge::TlsAlpn01 => {
                        acme.issue(
                            &req.domains,
                            req.key_type,
                            Solver::TlsAlpn01(
                                &self.alpn,
                                lookup
                                    .as_deref()
                                    .filter(|_| settings.self_check)
                                    .map(|l| (l, settings.tls_port)),
                            ),
                            replaces,
                            req.profile.as_deref(),
                            &progress,
                        )
                        .await?
                    }
                    Challenge::Dns01 => {
                        let dns = match &req.dns_publisher {
                            Some(p) => p.clone(),
                            None => lock(&self.dns01)
                                .clone()
                                .ok_or("dns-01 needs Portico's hosted zones")?,
                        };
                        if settings.self_check {
                            // `example.com` and `*.example.com` share one challenge name.
                            let mut names: Vec<String> = req
                                .domains
                                .iter()
                                .map(|d| format!("_acme-challenge.{}", d.trim_start_matches("*.")))
                                .collect();
                            names.sort();
                            names.dedup();
                            for name in &names {
                                dns.check(name).await?;
                            }
                        }
                        acme.issue(
                            &req.domains,
                            req.key_type,
                            Solver::Dns01(dns.as_ref()),
                            replaces,
                            req.profile.as_deref(),
                            &progress,
                        )
                        .await?
                    }
                }
            }
        })
    }

    fn publish(&self, name: &str) -> Result<(), String> {
        let (chain, key) = self.storage.load_live(name).ok_or("nothing stored")?;
        let served = served_cert_from_pem(&chain, &key, name, name).map_err(|e| e.to_string())?;
        self.store.publish(name, served);
        Ok(())
    }

    /// The stored certificate's validity, and whether it covers every requested name.
    fn current(&self, req: &CertRequest) -> Option<Current> {
        let (chain, _) = self.storage.load_live(&req.name)?;
        let der = rustls_pem_first(&chain)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
        let nb = system_time(cert.validity().not_before.timestamp());
        let na = system_time(cert.validity().not_after.timestamp());
        let names: Vec<String> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|g| match g {
                        x509_parser::extensions::GeneralName::DNSName(n) => {
                            Some(n.to_ascii_lowercase())
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let covers = req.domains.iter().all(|d| {
            d.parse::<std::net::IpAddr>().is_ok() || names.contains(&d.to_ascii_lowercase())
        });
        Some(Current {
            leaf: der.clone(),
            not_before: nb,
            not_after: na,
            renew_at: renew_at(nb, na, &req.name),
            covers,
        })
    }
}

struct Current {
    leaf: Vec<u8>,
    not_before: SystemTime,
    not_after: SystemTime,
    renew_at: SystemTime,
    covers: bool,
}

/// How long to wait after a failed attempt: exponential backoff from 10 s to an hour, never
/// before the CA's `Retry-After` (honoured up to a week), and at least 15 minutes after a
/// rate-limit error that names no time.
pub fn retry_wait(
    failures: u32,
    error: &str,
    retry_after: Option<SystemTime>,
    now: SystemTime,
) -> Duration {
    let mut wait = Duration::from_secs(5u64.saturating_mul(1 << failures.min(10)))
        .min(Duration::from_secs(3600));
    match retry_after {
        Some(at) => {
            let asked = at.duration_since(now).unwrap_or_default();
            wait = wait.max(asked.min(Duration::from_secs(7 * 86_400)));
        }
        None if error.contains("urn:ietf:params:acme:error:rateLimited") => {
            wait = wait.max(Duration::from_secs(900));
        }
        None => {}
    }
    wait
}

/// A stable fraction in [0, 1) per certificate name, to spread renewals.
fn spread(name: &str) -> f64 {
    (name
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()))
        % 1000) as f64
        / 1000.0
}

/// When to renew: a third of the lifetime left, half for lifetimes under ten days, a little
/// earlier per name (up to 2 % of the lifetime) so that many certificates do not renew at once.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime, name: &str) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    let left = if life < Duration::from_secs(10 * 86_400) {
        life / 2
    } else {
        life / 3
    };
    let jitter = life.mul_f64(spread(name) / 50.0);
    not_after - left - jitter
}

fn system_time(unix: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64)
}

fn rustls_pem_first(pem: &[u8]) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .next()?
        .ok()
        .map(|c| c.to_vec())
}

fn issuer_name(k: IssuerKind) -> &'static str {
    match k {
        IssuerKind::Acme => "acme",
        IssuerKind::Internal => "internal",
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What `shared_window` found.
enum SharedWindow {
    /// The CA's answer, fetched here or by another node.
    Fetched(Result<Option<crate::issuer::acme::RenewalWindow>, String>),
    /// Another node holds the lock and is asking now.
    Busy,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// FNV-1a: a stable short fingerprint of a certificate (to tie a shared window to its leaf).
fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A renewal request taken from its file (`portico certs renew`), put back when dropped while
/// still set: the attempt it asked for was cancelled or given up before its outcome was
/// recorded, and the next attempt must still do it (else `certs renew` waits for nothing).
struct Taken<'a> {
    storage: &'a Storage,
    name: &'a str,
    what: Option<RenewRequest>,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if let Some(what) = self.what.take() {
            if let Err(e) = self.storage.request_renewal(self.name, what) {
                tracing::warn!(certificate = %self.name, error = %e, "cannot put back the renewal request");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_waits_honour_retry_after_and_rate_limits() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(retry_wait(1, "x", None, now), Duration::from_secs(10));
        assert_eq!(retry_wait(20, "x", None, now), Duration::from_secs(3600));
        let later = now + Duration::from_secs(120);
        assert_eq!(
            retry_wait(1, "x", Some(later), now),
            Duration::from_secs(120)
        );
        // A Retry-After shorter than the backoff does not shorten it.
        assert_eq!(
            retry_wait(3, "x", Some(now + Duration::from_secs(1)), now),
            Duration::from_secs(40)
        );
        let limited = "too many (urn:ietf:params:acme:error:rateLimited)";
        assert_eq!(retry_wait(1, limited, None, now), Duration::from_secs(900));
        let far = now + Duration::from_secs(30 * 86_400);
        assert_eq!(
            retry_wait(1, limited, Some(far), now),
            Duration::from_secs(7 * 86_400)
        );
    }

    /// A 7-day internal certificate on a clock the test moves: not renewed before half its
    /// lifetime (less the per-name spread), renewed once after it, and the new one is served.
    #[tokio::test]
    async fn short_lived_certificates_renew_at_half_their_lifetime_on_a_moved_clock() {
        use crate::clock::{manual::ManualClock, Clock};
        use std::sync::atomic::Ordering;
        let dir = std::env::temp_dir().join(format!("portico-clock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let clock = Arc::new(ManualClock::new(start));
        let certs = CertStore::new();
        let manager = CertManager::with_clock(&dir, certs.clone(), clock.clone());
        let req = CertRequest {
            name: "short".into(),
            domains: vec!["short.internal".into()],
            issuer: IssuerKind::Internal,
            challenge: Challenge::Http01,
            dns_publisher: None,
            deploy_hook: None,
            key_type: crate::keys::KeyType::default(),
            profile: None,
        };
        manager.manage(None, vec![req.clone()]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        // Waits until `want` is the stored version and the manager has gone to sleep on the
        // clock again since `begun` sleeps (so it has looked at the time after the last move).
        let settled = |want: u32, begun: usize| {
            let (clock, manager) = (clock.clone(), manager.clone());
            async move {
                loop {
                    let version = manager.storage.record("short").map(|r| r.version);
                    if version == Some(want)
                        && clock.started.load(Ordering::SeqCst) > begun
                        && clock.sleepers.load(Ordering::SeqCst) > 0
                    {
                        return;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "version {want} not stored and the manager not asleep: {version:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        settled(1, 0).await;
        let first = manager.current(&req).expect("issued");
        assert!(certs.get("short").is_some(), "served");
        let life = Duration::from_secs(super::super::issuer::internal::LEAF_DAYS as u64 * 86_400);
        let due = first.renew_at.duration_since(start).unwrap();
        assert!(due <= life / 2 && due > life / 2 - life / 50, "{due:?}");
        // Just before it is due, however far the clock moves in steps: still the first one.
        let mut moved = Duration::ZERO;
        while moved + Duration::from_secs(3600) < due {
            let begun = clock.started.load(Ordering::SeqCst);
            clock.advance(Duration::from_secs(3600));
            moved += Duration::from_secs(3600);
            settled(1, begun).await;
        }
        assert_eq!(manager.current(&req).unwrap().leaf, first.leaf);
        // Past it: renewed once, the new certificate stored and served, valid from "now".
        let begun = clock.started.load(Ordering::SeqCst);
        clock.advance(due - moved + Duration::from_secs(1));
        settled(2, begun).await;
        let second = manager.current(&req).unwrap();
        assert_ne!(second.leaf, first.leaf);
        assert!(second.renew_at > clock.now());
        let served = certs.get("short").unwrap();
        assert_eq!(served.key.cert[0].as_ref(), second.leaf.as_slice());
        manager.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `portico certs renew` while the attempt it asked for is cancelled (a reload restarts the
    /// manager's tasks): the request goes back to its file, so the next attempt still does it.
    /// The CA is a test double that accepts connections and never answers, so that the
    /// attempt is certainly in flight when it is cancelled (no real CA can be held there).
    #[tokio::test]
    async fn a_renewal_request_cancelled_in_flight_is_put_back() {
        let dir = std::env::temp_dir().join(format!("portico-putback-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let silent_ca = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent_ca.local_addr().unwrap();
        let (held_tx, mut held) = tokio::sync::mpsc::unbounded_channel();
        let silent = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((conn, _)) = silent_ca.accept().await {
                open.push(conn);
                let _ = held_tx.send(());
            }
        });
        let manager = CertManager::new(&dir, CertStore::new());
        let req = CertRequest {
            name: "held".into(),
            domains: vec!["held.test".into()],
            issuer: IssuerKind::Acme,
            challenge: Challenge::Http01,
            dns_publisher: None,
            deploy_hook: None,
            key_type: crate::keys::KeyType::default(),
            profile: None,
        };
        manager
            .storage
            .request_renewal("held", RenewRequest::Renew)
            .unwrap();
        let trigger = manager.storage.trigger("held");
        let acme = AcmeSettings {
            directory: format!("https://{addr}/dir"),
            ..AcmeSettings::default()
        };
        manager.manage(Some(acme), vec![req]);
        // Taken from its file, and the order under way (the CA has its connection).
        tokio::time::timeout(Duration::from_secs(20), held.recv())
            .await
            .expect("the attempt reaches the CA within 20 s")
            .unwrap();
        assert!(!trigger.exists(), "the request was taken by the attempt");
        manager.stop();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !trigger.exists() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the cancelled attempt's request was not put back"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            manager.storage.take_renewal_request("held"),
            Some(RenewRequest::Renew)
        );
        silent.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn renewal_windows() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        // 90 days: renew with about 30 days left.
        let r = renew_at(t0, t0 + 90 * day, "a");
        let left = (t0 + 90 * day).duration_since(r).unwrap();
        assert!(left >= 30 * day && left <= 32 * day, "{left:?}");
        // 6-day "shortlived": renew at half.
        let r = renew_at(t0, t0 + 6 * day, "a");
        let left = (t0 + 6 * day).duration_since(r).unwrap();
        assert!(
            left >= 3 * day && left < 3 * day + Duration::from_secs(3 * 3600),
            "{left:?}"
        );
    }
}
