//! Cluster mode (`[store] etcd = [...]`): several nodes serve the same zones, certificates and
//! API changes, kept in etcd under the state directory's keys.
//!
//! Each node keeps its state directory as a local cache of the shared store, so that it starts
//! and keeps serving while etcd is away. Writes go to the shared store first, each by its owner:
//! a zone change is one compare-and-put (it applies only if the zone is still what this node last
//! saw, else the change is a conflict; one key per name, see `portico_dns::shared`); a
//! certificate is written by the node holding its order
//! lock, fenced by the lock; HTTP-01 tokens are put by the ordering node and read by any. The
//! rest (ACME accounts, the internal CA, the API's additions) is pushed when it changes locally.
//! An etcd watch on the shared prefixes wakes the node as soon as another node writes; it then
//! reads what changed since the revision it last saw into the cache and tells the parts: the
//! certificate re-published, the API's additions applied. Zones are not mirrored key by key:
//! each zone's head is read, and a moved head brings the names it changed into the zone
//! (`HostedZones::sync_shared`). The same read runs
//! every second without a wake-up, so a watch that broke unnoticed costs a second, not an update.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portico_store::{mode_for, LocalDir, Store};

/// What nodes share (keys under these prefixes, watched for changes).
pub(crate) const SHARED: [&str; 5] = [
    "certificates/",
    "acme/accounts/",
    "ca/",
    "zones/",
    "runtime.toml",
];
/// What is mirrored key by key into the local cache: all but zones, which a zone of a million
/// names would make a million keys (zones follow their heads instead).
const MIRRORED: [&str; 4] = ["certificates/", "acme/accounts/", "ca/", "runtime.toml"];
/// What this node pushes when it changes locally; zones and certificates have their own writers.
const PUSHED: [&str; 3] = ["acme/accounts/", "ca/", "runtime.toml"];
/// How often a node asks etcd what changed when no watch event woke it first (a watch that
/// broke silently is covered by this), pushes its own changes and writes its heartbeat.
pub const POLL: Duration = Duration::from_secs(1);
/// A node whose heartbeat is older than this is taken for dead: changes stop waiting for it, and
/// ALIAS answers stop giving its addresses.
pub const LIVE: Duration = Duration::from_secs(5);

fn shared(key: &str) -> bool {
    MIRRORED.iter().any(|p| key.starts_with(p)) && !key.starts_with("certificates/order/")
}

/// FNV-1a of a value: what this node last saw of a key.
fn fingerprint(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub struct Cluster {
    /// This node among the others (`host-pid`), for its heartbeat.
    id: String,
    pub store: Arc<dyn Store>,
    local: LocalDir,
    synced: Mutex<HashMap<String, u64>>,
    revision: AtomicU64,
    reachable: AtomicBool,
}

/// Keys another node changed, by the part that must hear of it.
#[derive(Default, Debug)]
pub struct Arrived {
    pub certificates: HashSet<String>,
    pub runtime: bool,
}

impl Cluster {
    pub fn new(store: Arc<dyn Store>, state_dir: &std::path::Path) -> Arc<Cluster> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "node".into());
        Arc::new(Cluster {
            id: format!("{host}-{}", std::process::id()),
            store,
            local: LocalDir::new(state_dir),
            synced: Mutex::default(),
            revision: AtomicU64::new(0),
            reachable: AtomicBool::new(true),
        })
    }

    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    pub fn describe(&self) -> String {
        self.store.describe()
    }

    fn mark(&self, ok: bool, error: Option<&std::io::Error>) {
        let was = self.reachable.swap(ok, Ordering::Relaxed);
        match (was, ok) {
            (true, false) => {
                tracing::warn!(event = "store_unreachable", store = %self.store.describe(),
                error = %error.map(|e| e.to_string()).unwrap_or_default(),
                "shared store unreachable: serving what this node has; changes are refused until it is back")
            }
            (false, true) => {
                tracing::info!(event = "store_reachable", store = %self.store.describe(),
                "shared store reachable again: catching up")
            }
            _ => {}
        }
    }

    fn lock_synced(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.synced.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `value` into the local cache when it differs; true when it did.
    fn cache(&self, key: &str, value: &[u8]) -> bool {
        self.lock_synced()
            .insert(key.to_string(), fingerprint(value));
        if self.local.get(key).ok().flatten().as_deref() == Some(value) {
            return false;
        }
        if let Err(e) = self.local.put(key, value, mode_for(key)) {
            tracing::warn!(%key, error = %e, "cannot write the local cache");
            return false;
        }
        true
    }

    /// At start: the shared state into the local cache (the cache serves if etcd is away).
    pub fn pull_all(&self) {
        let result = (|| -> std::io::Result<usize> {
            let mut n = 0;
            // The revision first, so that nothing written meanwhile is missed.
            let (rev, _) = self.store.get_at("runtime.toml")?;
            self.revision.store(rev, Ordering::Relaxed);
            for prefix in MIRRORED {
                for (key, v) in self.store.scan(prefix, 0)? {
                    if shared(&key) {
                        n += usize::from(self.cache(&key, &v));
                    }
                }
            }
            Ok(n)
        })();
        match result {
            Ok(n) => {
                self.mark(true, None);
                tracing::info!(store = %self.store.describe(), updated = n, "local cache brought up to date from the shared store");
            }
            Err(e) => self.mark(false, Some(&e)),
        }
    }

    /// Other nodes' writes since the last call, written into the local cache.
    pub fn pull(&self) -> Arrived {
        let mut arrived = Arrived::default();
        let since = self.revision.load(Ordering::Relaxed);
        let batch = match self.store.updates_since(&MIRRORED, since) {
            Ok(Some(b)) => b,
            Ok(None) => return arrived,
            Err(e) => {
                self.mark(false, Some(&e));
                return arrived;
            }
        };
        self.mark(true, None);
        let (rev, entries) = batch;
        for (key, value) in entries {
            if !shared(&key) {
                continue;
            }
            if self.lock_synced().get(&key) == Some(&fingerprint(&value)) {
                continue; // our own write coming back
            }
            if !self.cache(&key, &value) {
                continue;
            }
            if let Some(rest) = key
                .strip_prefix("certificates/live/")
                .or_else(|| key.strip_prefix("certificates/archive/"))
            {
                if let Some((name, _)) = rest.split_once('/') {
                    arrived.certificates.insert(name.to_string());
                }
            } else if key == "runtime.toml" {
                arrived.runtime = true;
            }
        }
        self.revision.fetch_max(rev, Ordering::Relaxed);
        arrived
    }

    /// Pushes what changed locally under [`PUSHED`].
    pub fn push(&self) {
        if !self.reachable() {
            return;
        }
        for prefix in PUSHED {
            let keys = if prefix.ends_with('/') {
                self.local.list(prefix).unwrap_or_default()
            } else {
                vec![prefix.to_string()]
            };
            for key in keys {
                let Ok(Some(value)) = self.local.get(&key) else {
                    continue;
                };
                let print = fingerprint(&value);
                if self.lock_synced().get(&key) == Some(&print) {
                    continue;
                }
                match self.store.put(&key, &value, mode_for(&key)) {
                    Ok(()) => {
                        self.lock_synced().insert(key, print);
                    }
                    Err(e) => {
                        self.mark(false, Some(&e));
                        return;
                    }
                }
            }
        }
    }

    /// Pushes one key now (before an API change is acknowledged).
    pub fn push_key(&self, key: &str) -> std::io::Result<()> {
        let value = self.local.get(key)?.unwrap_or_default();
        match self.store.put(key, &value, mode_for(key)) {
            Ok(()) => {
                self.lock_synced()
                    .insert(key.to_string(), fingerprint(&value));
                Ok(())
            }
            Err(e) => {
                self.mark(false, Some(&e));
                Err(e)
            }
        }
    }

    /// Tells the other nodes which zone serials this node serves, where its listeners are bound
    /// and whether each serves (for ALIAS answers across nodes), and that it is alive.
    pub fn heartbeat(
        &self,
        serials: &HashMap<String, u32>,
        listeners: &HashMap<String, (Vec<std::net::IpAddr>, bool)>,
    ) {
        let listeners: serde_json::Map<String, serde_json::Value> = listeners
            .iter()
            .map(|(name, (ips, healthy))| {
                (
                    name.clone(),
                    serde_json::json!({ "addrs": ips, "healthy": healthy }),
                )
            })
            .collect();
        let beat =
            serde_json::json!({ "at_ms": now_ms(), "zones": serials, "listeners": listeners });
        let key = format!(".nodes/{}", self.id);
        if let Err(e) = self.store.put(&key, beat.to_string().as_bytes(), 0o644) {
            self.mark(false, Some(&e));
        }
    }

    /// The other live nodes' listeners (from heartbeats under [`LIVE`] old), by listener name.
    pub fn peer_listeners(&self) -> HashMap<String, Vec<crate::wiring::listeners::PeerListener>> {
        let mut out: HashMap<String, Vec<crate::wiring::listeners::PeerListener>> = HashMap::new();
        let Ok(keys) = self.store.list(".nodes/") else {
            return out;
        };
        let own = format!(".nodes/{}", self.id);
        let now = now_ms();
        for key in keys.iter().filter(|k| **k != own) {
            let Some(beat) = self
                .store
                .get(key)
                .ok()
                .flatten()
                .and_then(|v| serde_json::from_slice::<serde_json::Value>(&v).ok())
            else {
                continue;
            };
            let live = beat["at_ms"]
                .as_u64()
                .is_some_and(|t| now.saturating_sub(t) < LIVE.as_millis() as u64);
            let Some(listeners) = beat["listeners"].as_object().filter(|_| live) else {
                continue;
            };
            for (name, l) in listeners {
                let healthy = l["healthy"].as_bool().unwrap_or(false);
                let ips = l["addrs"].as_array().into_iter().flatten();
                let entry = out.entry(name.clone()).or_default();
                entry.extend(
                    ips.filter_map(|ip| ip.as_str()?.parse().ok())
                        .map(|ip| crate::wiring::listeners::PeerListener { ip, healthy }),
                );
            }
        }
        for v in out.values_mut() {
            v.sort_by_key(|p| p.ip);
        }
        out
    }

    /// Whether every live node (one whose heartbeat is under 5 s old) serves `serial` of `zone`.
    pub fn served_everywhere(&self, zone: &str, serial: u32) -> bool {
        let Ok(keys) = self.store.list(".nodes/") else {
            return false;
        };
        let now = now_ms();
        keys.iter()
            .filter_map(|k| self.store.get(k).ok().flatten())
            .filter_map(|v| serde_json::from_slice::<serde_json::Value>(&v).ok())
            .filter(|b| {
                b["at_ms"]
                    .as_u64()
                    .is_some_and(|t| now.saturating_sub(t) < LIVE.as_millis() as u64)
            })
            .all(|b| {
                b["zones"][zone]
                    .as_u64()
                    .is_some_and(|s| serial_ge(s as u32, serial))
            })
    }

    /// Marks the local copies of pushed keys as in sync (what the node started from).
    pub fn note_local(&self) {
        for prefix in PUSHED {
            let keys = if prefix.ends_with('/') {
                self.local.list(prefix).unwrap_or_default()
            } else {
                vec![prefix.to_string()]
            };
            for key in keys {
                if let (Ok(Some(v)), Ok(Some(remote))) =
                    (self.local.get(&key), self.store.get(&key))
                {
                    if v == remote {
                        self.lock_synced().insert(key, fingerprint(&v));
                    }
                }
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 1982 serial number arithmetic: is `a` at or after `b`?
fn serial_ge(a: u32, b: u32) -> bool {
    a == b || (a.wrapping_sub(b) as i32) > 0
}

/// Resolves when the store's change signal fires; never when there is none (or it closed).
pub(crate) async fn changed(rx: Option<&mut tokio::sync::watch::Receiver<u64>>) -> Option<()> {
    match rx {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}
