//! Hosted zones as a service: the catalog that queries read, and the one path every change takes.
//!
//! A change — from config, a change batch, an RFC 2136 UPDATE or an ACME challenge — is an edit
//! applied to a copy of the zone under the zone writer lock, validated, given a higher SOA serial,
//! persisted, and only then swapped into the catalog and acknowledged. Secondaries are NOTIFYed;
//! the change is `INSYNC` once each of them serves the new serial.
//!
//! Persisted means appended to the zone's journal and fsynced (`journal_file.rs`): the names the
//! change touched, before and after. The master file (`zones/<zone>zone`) is written whole only
//! at checkpoints — after [`CHECKPOINT_CHANGES`] changes or [`CHECKPOINT_BYTES`] of journal, at
//! the first change after [`CHECKPOINT_AGE`], and on a clean shutdown — in the background,
//! atomically (temp file, fsync, rename); the journal then keeps only what IXFR may still need.
//! A start reads the master file and replays the journal after its serial. In cluster mode a
//! change is first written to the shared store, one key per name it touched (`shared.rs`), and
//! the local master file and journal are this node's cache of it; another node's change
//! arrives as names too ([`HostedZones::sync_shared`]) and goes into the local journal.
//!
//! Over 600 lines on purpose: every write path (config load, change batch, UPDATE, challenge
//! records, another node's copy) goes through the one writer lock and `commit` defined here.
//! Building a zone from config is in `zone_config.rs`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use hickory_proto::rr::TSigner;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use portico_config::{path, ConfigIssue};

use crate::answer::Catalog;
use crate::config::DnsSections;
use crate::journal::{Delta, Journal, JournalEntry, KEEP};
use crate::journal_file::{self, Frame, JournalFile};
use crate::routing::{RoutedData, RoutingFields};
use crate::shared::{Remote, SharedZones, Stored};
use crate::zone::Zone;
use crate::zone_config::{
    build_zone, load_keys, parse_set, Applied, Parsed, Past, FILE_DEFAULT_TTL,
};
use crate::zone_file;

/// Per-zone settings from config.
#[derive(Debug, Clone, Default)]
pub struct ZoneSettings {
    pub secondaries: Vec<SocketAddr>,
    pub update_keys: Vec<Name>,
    pub transfer_keys: Vec<Name>,
}

/// A change's state, as Route 53 reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ChangeStatus {
    Pending,
    Insync,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ChangeInfo {
    pub id: String,
    pub zone: String,
    pub status: ChangeStatus,
    pub serial: u32,
    pub submitted_at: String,
}

/// Why a change was refused; nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("no hosted zone {0}")]
    NoSuchZone(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot persist the change: {0}")]
    Storage(String),
    #[error("{0}")]
    Conflict(String),
}

/// `CREATE`, `DELETE` or `UPSERT` of one record set, as in a Route 53 change batch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    Create,
    Delete,
    Upsert,
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct RecordChange {
    pub action: Action,
    /// Relative to the zone (`@` is the apex) or fully qualified.
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: String,
    /// Default 300, or 60 where health decides the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    #[serde(default)]
    pub values: Vec<String>,
    /// ALIAS only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A routing policy (`set_identifier`, `routing`, `weight`, `failover`, `health`,
    /// `health_check`, `evaluate_target_health`; see `routing.rs`).
    #[serde(flatten)]
    pub routing: RoutingFields,
}

/// TSIG keys by name.
pub type Keys = HashMap<Name, TSigner>;

/// A checkpoint is due after this many journaled changes…
pub const CHECKPOINT_CHANGES: usize = 1000;
/// …or this many bytes of journal since the last one…
pub const CHECKPOINT_BYTES: usize = 16 << 20;
/// …or at the first change once the oldest change not in the master file is this old.
pub const CHECKPOINT_AGE: Duration = Duration::from_secs(300);

/// A zone's open journal and what of it the master file does not hold yet.
struct ZoneJournal {
    file: JournalFile,
    /// The serial of the master file on disk.
    saved: u32,
    /// When the oldest change not in the master file was made.
    unsaved_since: Option<Instant>,
    checkpointing: bool,
    /// Changes when the journal is started afresh (a checkpoint in flight then writes nothing).
    generation: u64,
}

impl ZoneJournal {
    fn unsaved(&self) -> (usize, usize) {
        let n = self.file.since(self.saved);
        let bytes = self.file.frames[self.file.frames.len() - n..]
            .iter()
            .map(|f| f.bytes.len())
            .sum();
        (n, bytes)
    }

    fn due(&self) -> bool {
        let (n, bytes) = self.unsaved();
        n > 0
            && !self.checkpointing
            && (n >= CHECKPOINT_CHANGES
                || bytes >= CHECKPOINT_BYTES
                || self
                    .unsaved_since
                    .is_some_and(|t| t.elapsed() >= CHECKPOINT_AGE))
    }
}

pub struct HostedZones {
    catalog: ArcSwap<Catalog>,
    settings: ArcSwap<HashMap<Name, ZoneSettings>>,
    keys: ArcSwap<Keys>,
    journals: Mutex<HashMap<Name, Journal>>,
    /// Open journal files (a writable state directory outside cluster mode).
    journal_files: Mutex<HashMap<Name, ZoneJournal>>,
    /// Held while a master file is written whole, so that a checkpoint never overwrites a
    /// newer file.
    file_writes: Mutex<()>,
    applied: Mutex<HashMap<Name, HashSet<String>>>,
    changes: Mutex<HashMap<String, ChangeInfo>>,
    state_dir: Option<PathBuf>,
    /// Reads the state directory but never writes it (for CLI look-ups beside a running server).
    read_only: bool,
    writer: tokio::sync::Mutex<()>,
    /// The shared store's zones (cluster mode).
    shared: Mutex<Option<Arc<SharedZones>>>,
    /// Queries answered, by zone and rcode (for `/metrics`).
    pub metrics: crate::metrics::DnsMetrics,
}

impl HostedZones {
    /// Zones persisted under `<state_dir>/zones/` (in memory only when `None`).
    pub fn new(state_dir: Option<PathBuf>) -> Arc<Self> {
        Self::with(state_dir, false)
    }

    /// Zones as the state directory and the config say, without writing anything.
    pub fn read_only(state_dir: PathBuf) -> Arc<Self> {
        Self::with(Some(state_dir), true)
    }

    fn with(state_dir: Option<PathBuf>, read_only: bool) -> Arc<Self> {
        Arc::new(HostedZones {
            catalog: ArcSwap::from_pointee(Catalog::default()),
            settings: ArcSwap::from_pointee(HashMap::new()),
            keys: ArcSwap::from_pointee(HashMap::new()),
            journals: Mutex::default(),
            journal_files: Mutex::default(),
            file_writes: Mutex::new(()),
            applied: Mutex::default(),
            changes: Mutex::default(),
            state_dir,
            read_only,
            writer: tokio::sync::Mutex::new(()),
            metrics: Default::default(),
            shared: Mutex::new(None),
        })
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    /// The catalog for one query: arc-swap's guard, which spares the hot path the shared
    /// reference count that `catalog()` bumps (two cores contending on one cache line).
    pub fn catalog_guard(&self) -> arc_swap::Guard<Arc<Catalog>> {
        self.catalog.load()
    }

    pub fn settings(&self, zone: &Name) -> ZoneSettings {
        self.settings.load().get(zone).cloned().unwrap_or_default()
    }

    pub fn key(&self, name: &Name) -> Option<TSigner> {
        self.keys.load().get(&name.to_lowercase()).cloned()
    }

    pub fn journal_since(&self, zone: &Name, serial: u32) -> Option<Vec<JournalEntry>> {
        lock(&self.journals).get(zone).and_then(|j| j.since(serial))
    }

    /// Builds zones from config (and their state files), then serves them. A stored zone (the
    /// state directory) is the starting point; a `[[zone.record]]` is applied on top of it as an
    /// UPSERT when it is new or changed in the config since it was last applied, so that editing
    /// the config takes effect while run-time changes (API, UPDATE) to other record sets — or to
    /// the same ones, while the config leaves them alone — are never silently lost.
    pub async fn load(
        &self,
        sections: &DnsSections,
        base_dir: &Path,
    ) -> Result<(), Vec<ConfigIssue>> {
        let _w = self.writer.lock().await;
        let mut issues = Vec::new();
        let keys = load_keys(sections, base_dir, &mut issues);
        let mut zones = HashMap::new();
        let mut settings = HashMap::new();
        let mut fingerprints = HashMap::new();
        let current = self.catalog.load_full();
        for (i, zc) in sections.zones.iter().enumerate() {
            let Ok(mut origin) = Name::from_ascii(&zc.name) else {
                issues.push(ConfigIssue::new(
                    path!["zone", i, "name"],
                    format!("{:?} is not a domain name", zc.name),
                ));
                continue;
            };
            origin.set_fqdn(true);
            let origin = origin.to_lowercase();
            if zones.contains_key(&origin) {
                issues.push(ConfigIssue::new(
                    path!["zone", i, "name"],
                    format!("zone {origin} is defined twice"),
                ));
                continue;
            }
            let mut from_store = FromStore::default();
            let stored = match current.zones.get(&origin) {
                Some(z) => Some(Zone::clone(z)),
                None => {
                    let local = self
                        .read_state(&origin)
                        .map_err(|e| issues.push(ConfigIssue::new(path!["zone", i], e)))
                        .ok()
                        .flatten();
                    self.stored_or_shared(&origin, local, &mut from_store)
                }
            };
            let applied = self.applied_config(&origin);
            let past = Past {
                stored: stored.as_ref(),
                applied: &applied,
                imported: self.imported_path(&origin),
            };
            let Some((zone, done)) = build_zone(zc, i, &origin, past, base_dir, &mut issues) else {
                continue;
            };
            fingerprints.insert(origin.clone(), done);
            let mut s = ZoneSettings::default();
            for (j, sec) in zc.secondaries.iter().enumerate() {
                match sec
                    .parse::<SocketAddr>()
                    .or_else(|_| format!("{sec}:53").parse())
                {
                    Ok(a) => s.secondaries.push(a),
                    Err(_) => issues.push(
                        ConfigIssue::new(
                            path!["zone", i, "secondaries", j],
                            format!("{sec:?} is not ip:port"),
                        )
                        .hint("e.g. \"192.0.2.53:53\""),
                    ),
                }
            }
            for (field, list) in [
                ("update_keys", &zc.update_keys),
                ("transfer_keys", &zc.transfer_keys),
            ] {
                for (j, k) in list.iter().enumerate() {
                    let n = Name::from_ascii(k).map(|mut n| {
                        n.set_fqdn(true);
                        n.to_lowercase()
                    });
                    match n {
                        Ok(n) if keys.contains_key(&n) => {
                            if field == "update_keys" {
                                s.update_keys.push(n)
                            } else {
                                s.transfer_keys.push(n)
                            }
                        }
                        _ => issues.push(ConfigIssue::new(
                            path!["zone", i, field, j],
                            format!("no [[tsig_key]] named {k:?}"),
                        )),
                    }
                }
            }
            let changed = stored.as_ref() != Some(&zone);
            zones.insert(origin.clone(), (zone, stored, changed, from_store));
            settings.insert(origin, s);
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let mut catalog = Catalog::default();
        for (origin, (mut zone, stored, changed, from_store)) in zones {
            if let (Some(s), true, Some(dir)) = (&stored, from_store.write_local, self.write_dir())
            {
                // The store's version becomes this node's copy before the config goes on top.
                if let Err(e) = self.write_whole(&dir, s, None) {
                    return Err(vec![ConfigIssue::new(
                        path!["state_dir"],
                        format!("cannot store zone {origin}: {e}"),
                    )]);
                }
            }
            if !changed && from_store.publish {
                if let Some(sh) = self.shared() {
                    match sh.publish_whole(&zone) {
                        Ok(()) => {
                            tracing::info!(zone = %origin, store = %sh.store().describe(), "zone written into the shared store")
                        }
                        Err(e) => {
                            tracing::warn!(zone = %origin, error = %e, "zone not written into the shared store; serving this node's copy")
                        }
                    }
                }
            }
            if changed {
                if let Some(old) = &stored {
                    let next = old.serial().wrapping_add(1).max(1);
                    zone.set_serial(next.max(zone.serial()));
                }
                // A zone that is exactly its master file is stored as that file's text: the
                // first load of a big zone is not spent writing it out again record by record.
                let text = fingerprints
                    .get(&origin)
                    .filter(|d| d.state_is_imported)
                    .and_then(|d| d.imported.as_deref())
                    .map(|t| format!("$TTL {FILE_DEFAULT_TTL}\n{t}"));
                match self.persist(&zone, stored.as_ref(), text, true) {
                    Ok(()) => {}
                    Err(PersistError::Conflict(e)) => {
                        // Another node wrote the zone first: its version arrives through the store.
                        tracing::warn!(zone = %origin, error = %e, "zone written by another node meanwhile; serving theirs when it arrives");
                    }
                    Err(e) => {
                        return Err(vec![ConfigIssue::new(
                            path!["state_dir"],
                            format!("cannot store zone {origin}: {e}"),
                        )])
                    }
                }
            }
            if let Some(done) = fingerprints.remove(&origin) {
                if let Err(e) = self.save_applied_config(&origin, done) {
                    return Err(vec![ConfigIssue::new(path!["state_dir"], e)]);
                }
            }
            tracing::info!(zone = %origin, serial = zone.serial(), records = zone.record_count(), "zone loaded");
            zone.index_glue();
            catalog.zones.insert(origin, Arc::new(zone));
        }
        self.keys.store(Arc::new(keys));
        self.settings.store(Arc::new(settings));
        self.catalog.store(Arc::new(catalog));
        Ok(())
    }

    /// Applies a Route 53-style change batch atomically.
    pub async fn change(
        self: &Arc<Self>,
        zone: &str,
        batch: &[RecordChange],
    ) -> Result<ChangeInfo, ChangeError> {
        let origin = zone_name(zone)?;
        self.commit(&origin, |z| apply_batch(z, batch)).await
    }

    /// The one write path: edit a copy, validate, bump the serial, persist, swap, acknowledge.
    pub async fn commit(
        self: &Arc<Self>,
        origin: &Name,
        edit: impl FnOnce(&mut Zone) -> Result<(), ChangeError>,
    ) -> Result<ChangeInfo, ChangeError> {
        let _w = self.writer.lock().await;
        let catalog = self.catalog.load_full();
        let old = catalog
            .zones
            .get(origin)
            .ok_or_else(|| ChangeError::NoSuchZone(origin.to_string()))?;
        // An O(1) copy (the name tree is shared), tracked so that the checks, the journal entry
        // and the glue below look only at the names the edit touched.
        let mut zone = Zone::clone(old);
        zone.track();
        edit(&mut zone)?;
        if !zone.differs_from(old) {
            // Nothing changed: no new serial, nothing to tell secondaries.
            return Ok(ChangeInfo {
                id: change_id(),
                zone: origin.to_string(),
                status: ChangeStatus::Insync,
                serial: old.serial(),
                submitted_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            });
        }
        zone.set_serial(old.serial().wrapping_add(1).max(1));
        zone.validate_change()
            .map_err(|e| ChangeError::Invalid(e.to_string()))?;
        // In cluster mode the store's transaction blocks for milliseconds (seconds when etcd
        // is slow): off the runtime's thread, which also serves the admin API. A single node's
        // journal append (one fsync) stays inline: the hop to the blocking pool measured 0.1 ms
        // more per acknowledged change (docs/benchmarks.md, issue 19 step 6).
        let (mut zone, persisted) = if self.shared().is_some() {
            let (this, before) = (self.clone(), old.clone());
            tokio::task::spawn_blocking(move || {
                let r = this.persist(&zone, Some(&before), None, false);
                (zone, r)
            })
            .await
            .map_err(|e| ChangeError::Storage(format!("the write stopped: {e}")))?
        } else {
            let r = self.persist(&zone, Some(old), None, false);
            (zone, r)
        };
        persisted.map_err(|e| match e {
            PersistError::Conflict(m) => ChangeError::Conflict(m),
            PersistError::Io(m) => ChangeError::Storage(m),
            PersistError::TooLarge(m) => ChangeError::Invalid(m),
        })?;
        let serial = zone.serial();
        let mut next = Catalog::clone(&catalog);
        if zone.glue_unchanged(old) {
            zone.glue = old.glue.share();
        } else {
            zone.index_glue();
        }
        zone.touched = Default::default();
        next.zones.insert(origin.clone(), Arc::new(zone));
        self.catalog.store(Arc::new(next));
        self.checkpoint_if_due(origin);
        let settings = self.settings(origin);
        let secondaries = settings.secondaries;
        let notify_key = settings.transfer_keys.first().and_then(|k| self.key(k));
        let info = ChangeInfo {
            id: change_id(),
            zone: origin.to_string(),
            status: if secondaries.is_empty() {
                ChangeStatus::Insync
            } else {
                ChangeStatus::Pending
            },
            serial,
            submitted_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        };
        {
            let mut changes = lock(&self.changes);
            if changes.len() > 10_000 {
                changes.clear();
            }
            changes.insert(info.id.clone(), info.clone());
        }
        tracing::info!(zone = %origin, serial, change = %info.id, "zone changed");
        if !secondaries.is_empty() {
            let (zones, id) = (self.clone(), info.id.clone());
            crate::notify::spawn(
                origin.clone(),
                serial,
                info.id.clone(),
                secondaries,
                notify_key,
                move || zones.mark_insync(&id),
            );
        }
        Ok(info)
    }

    pub fn change_status(&self, id: &str) -> Option<ChangeInfo> {
        lock(&self.changes).get(id).cloned()
    }

    pub(crate) fn mark_insync(&self, id: &str) {
        if let Some(c) = lock(&self.changes).get_mut(id) {
            c.status = ChangeStatus::Insync;
        }
    }

    /// The zone as a master file.
    pub fn export(&self, zone: &str) -> Option<String> {
        let origin = zone_name(zone).ok()?;
        self.catalog
            .load()
            .zones
            .get(&origin)
            .map(|z| zone_file::export(z))
    }

    /// The `[[zone.record]]` fingerprints applied last time (memory, else the state directory).
    fn applied_config(&self, origin: &Name) -> HashSet<String> {
        if let Some(p) = lock(&self.applied).get(origin) {
            return p.clone();
        }
        self.zone_dir()
            .and_then(|d| std::fs::read_to_string(d.join(format!("{origin}config.json"))).ok())
            .and_then(|t| serde_json::from_str::<Vec<String>>(&t).ok())
            .map(|v| v.into_iter().collect())
            .unwrap_or_default()
    }

    /// Where the master file the zone was last built from is kept in the state directory.
    fn imported_path(&self, origin: &Name) -> Option<PathBuf> {
        Some(self.zone_dir()?.join(format!("{origin}imported")))
    }

    fn save_applied_config(&self, origin: &Name, done: Applied) -> Result<(), String> {
        let prints = done.fingerprints;
        if let Some(dir) = self.write_dir() {
            if let Some(text) = &done.imported {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                let path = dir.join(format!("{origin}imported"));
                portico_config::files::write_atomic(&path, text.as_bytes(), 0o644)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let mut list: Vec<&String> = prints.iter().collect();
            list.sort();
            let json = serde_json::to_string_pretty(&list).unwrap_or_default();
            let path = dir.join(format!("{origin}config.json"));
            portico_config::files::write_atomic(&path, json.as_bytes(), 0o644)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        lock(&self.applied).insert(origin.clone(), prints);
        Ok(())
    }

    /// Where zones are written, unless this instance only reads.
    fn write_dir(&self) -> Option<PathBuf> {
        if self.read_only {
            None
        } else {
            self.zone_dir()
        }
    }

    fn zone_dir(&self) -> Option<PathBuf> {
        self.state_dir.as_ref().map(|d| d.join("zones"))
    }

    fn read_state(&self, origin: &Name) -> Result<Option<Zone>, String> {
        let Some(dir) = self.zone_dir() else {
            return Ok(None);
        };
        let path = dir.join(format!("{}zone", origin));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let mut zone = Zone::new(origin);
        zone_file::parse_into(&mut zone, &text, 300)
            .map_err(|e| format!("{}:{e}", path.display()))?;
        if self.journaling() {
            self.replay_journal(&dir, &mut zone)?;
        }
        Ok(Some(zone))
    }

    /// Whether changes go to a journal: a state directory (in cluster mode too: the local copy
    /// is the node's cache of the shared store, kept the same way).
    fn journaling(&self) -> bool {
        self.state_dir.is_some()
    }

    fn shared(&self) -> Option<Arc<SharedZones>> {
        lock(&self.shared).clone()
    }

    /// At load, in cluster mode: the zone as the shared store holds it when that differs from
    /// the local copy, else the local copy; `from_store` says what the caller must still write.
    fn stored_or_shared(
        &self,
        origin: &Name,
        local: Option<Zone>,
        from_store: &mut FromStore,
    ) -> Option<Zone> {
        let Some(sh) = self.shared() else {
            return local;
        };
        match sh.read(origin, local.as_ref().map(Zone::serial)) {
            Ok(Stored::Same) => local,
            Ok(Stored::Absent) => {
                from_store.publish = local.is_some();
                local
            }
            Ok(Stored::Zone(z)) => {
                from_store.write_local = true;
                Some(z)
            }
            Ok(Stored::Legacy(z)) => {
                from_store.write_local = true;
                from_store.publish = true;
                Some(z)
            }
            Err(e) => {
                tracing::warn!(zone = %origin, error = %e, "cannot read the zone from the shared store: serving this node's copy");
                local
            }
        }
    }

    fn journal_path(dir: &Path, origin: &Name) -> PathBuf {
        dir.join(format!("{origin}journal"))
    }

    /// Brings a zone read from its master file up to date from the journal, fills the IXFR
    /// history from it, and (unless read-only) keeps the journal open for the next changes.
    fn replay_journal(&self, dir: &Path, zone: &mut Zone) -> Result<(), String> {
        let origin = zone.origin.clone();
        let path = Self::journal_path(dir, &origin);
        let mut file = None;
        let mut read = Vec::new();
        if self.read_only {
            read = journal_file::read(&path).unwrap_or_else(|e| {
                tracing::warn!(journal = %path.display(), error = %e, "zone journal unreadable: serving the master file alone");
                Vec::new()
            });
        } else {
            let f = match JournalFile::open(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    set_aside(&path, &e.to_string());
                    JournalFile::open(&path)
                }
                other => other,
            }
            .map_err(|e| format!("cannot open the zone journal {}: {e}", path.display()))?;
            file = Some(f);
        }
        let frames: &[Frame] = file.as_ref().map_or(&read[..], |f| &f.frames[..]);
        let saved = zone.serial();
        // Where the entries to replay start (the earlier ones are only IXFR history).
        let (first_replayed, frames) = match journal_file::after(frames, saved) {
            Some(rest) => (frames.len() - rest.len(), frames),
            None => {
                let why = format!(
                    "it does not continue from the master file's serial {saved} (entries {}→{})",
                    frames.first().map_or(0, |f| f.from),
                    frames.last().map_or(0, |f| f.to)
                );
                if self.read_only {
                    tracing::warn!(journal = %path.display(), "zone journal ignored: {why}");
                } else {
                    set_aside(&path, &why);
                    file = Some(JournalFile::open(&path).map_err(|e| {
                        format!("cannot start the zone journal {}: {e}", path.display())
                    })?);
                }
                (0, &[][..])
            }
        };
        let replayed = frames.len() - first_replayed;
        let mut history = Journal::default();
        let skip = frames.len().saturating_sub(KEEP);
        for (i, f) in frames.iter().enumerate() {
            if i < skip && i < first_replayed {
                continue;
            }
            let d = f.decode(&origin).map_err(|e| {
                format!(
                    "{}: {e} (move the file aside to serve the zone as of its master file, serial {saved})",
                    path.display()
                )
            })?;
            if i >= first_replayed {
                d.apply(zone);
            }
            if i >= skip {
                history.append(d.entry());
            }
        }
        if replayed > 0 {
            tracing::info!(zone = %origin, from = saved, to = zone.serial(), changes = replayed, "zone journal replayed");
        }
        lock(&self.journals).insert(origin.clone(), history);
        if let Some(file) = file {
            let generation = next_generation();
            lock(&self.journal_files).insert(
                origin,
                ZoneJournal {
                    file,
                    saved,
                    unsaved_since: (replayed > 0).then(Instant::now),
                    checkpointing: false,
                    generation,
                },
            );
        }
        Ok(())
    }

    /// Appends a change to the zone's journal and waits until it is on disk; `false` when the
    /// zone has no open journal (then the caller writes the master file).
    fn append_journal(&self, origin: &Name, d: &Delta) -> Result<bool, PersistError> {
        let mut files = lock(&self.journal_files);
        let Some(j) = files.get_mut(origin) else {
            return Ok(false);
        };
        let frame = Frame {
            from: d.from,
            to: d.to,
            bytes: journal_file::encode(origin, d),
        };
        j.file.append(frame).map_err(|e| {
            PersistError::Io(format!(
                "cannot append to the zone journal {}: {e}",
                j.file.path().display()
            ))
        })?;
        j.unsaved_since.get_or_insert_with(Instant::now);
        Ok(true)
    }

    /// After the master file was written whole at `serial`: a fresh journal that continues
    /// from it.
    fn restart_journal(&self, dir: &Path, origin: &Name, serial: u32) -> Result<(), PersistError> {
        let path = Self::journal_path(dir, origin);
        let _ = std::fs::remove_file(&path);
        let file = JournalFile::open(&path).map_err(|e| {
            PersistError::Io(format!(
                "cannot start the zone journal {}: {e}",
                path.display()
            ))
        })?;
        let generation = next_generation();
        lock(&self.journal_files).insert(
            origin.clone(),
            ZoneJournal {
                file,
                saved: serial,
                unsaved_since: None,
                checkpointing: false,
                generation,
            },
        );
        Ok(())
    }

    /// Starts a checkpoint of the zone in the background when one is due.
    fn checkpoint_if_due(self: &Arc<Self>, origin: &Name) {
        {
            let mut files = lock(&self.journal_files);
            let Some(j) = files.get_mut(origin) else {
                return;
            };
            if !j.due() {
                return;
            }
            j.checkpointing = true;
        }
        let (zones, origin) = (self.clone(), origin.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = zones.checkpoint(&origin) {
                tracing::warn!(zone = %origin, error = %e, "zone checkpoint failed; the journal keeps every change");
            }
        });
    }

    /// Writes the zone as served now into its master file (temp file, fsync, rename), then
    /// drops from the journal what neither a restart nor IXFR needs any more.
    pub fn checkpoint(&self, origin: &Name) -> Result<(), String> {
        let Some(dir) = self.write_dir() else {
            return Ok(());
        };
        let generation = {
            let mut files = lock(&self.journal_files);
            let Some(j) = files.get_mut(origin) else {
                return Ok(());
            };
            j.checkpointing = true;
            j.generation
        };
        let done = |files: &mut HashMap<Name, ZoneJournal>| {
            if let Some(j) = files.get_mut(origin) {
                j.checkpointing = false;
            }
        };
        let Some(zone) = self.catalog.load().zones.get(origin).cloned() else {
            done(&mut lock(&self.journal_files));
            return Ok(());
        };
        let serial = zone.serial();
        let text = zone_file::export(&zone);
        let path = dir.join(format!("{origin}zone"));
        let result = {
            let _w = lock(&self.file_writes);
            let current = lock(&self.journal_files).get(origin).map(|j| j.generation);
            if current != Some(generation) {
                Ok(()) // the journal was started afresh meanwhile, with a newer master file
            } else {
                fault_in_checkpoint(&path, &text);
                portico_config::files::write_atomic(&path, text.as_bytes(), 0o644)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))
            }
        };
        let mut files = lock(&self.journal_files);
        done(&mut files);
        result?;
        if let Some(j) = files.get_mut(origin).filter(|j| j.generation == generation) {
            j.saved = serial;
            j.file
                .compact(serial, KEEP)
                .map_err(|e| format!("cannot compact {}: {e}", j.file.path().display()))?;
            j.unsaved_since = (j.file.since(serial) > 0).then(Instant::now);
            tracing::info!(zone = %origin, serial, "zone checkpoint written");
        }
        Ok(())
    }

    /// Checkpoints every zone whose master file lacks changes (on a clean shutdown).
    pub fn checkpoint_all(&self) {
        let due: Vec<Name> = lock(&self.journal_files)
            .iter()
            .filter(|(_, j)| j.unsaved().0 > 0)
            .map(|(o, _)| o.clone())
            .collect();
        for origin in due {
            if let Err(e) = self.checkpoint(&origin) {
                tracing::warn!(zone = %origin, error = %e, "zone checkpoint failed; the journal keeps every change");
            }
        }
    }

    /// Persists a new version of the zone and records the difference for IXFR: a change to a
    /// zone with an open journal is appended to it; otherwise the master file is written whole
    /// (`write_whole`). With a shared store, the change is first written there as the names it
    /// touched, only if the zone is still what this node last saw (else it is a conflict and
    /// nothing is written); a change too large for one transaction is refused, or with
    /// `whole_ok` (a config load) written as a new generation of the whole zone.
    fn persist(
        &self,
        zone: &Zone,
        old: Option<&Zone>,
        text: Option<String>,
        whole_ok: bool,
    ) -> Result<(), PersistError> {
        let delta = old.map(|o| Delta::between(o, zone));
        if let Some(sh) = self.shared() {
            match &delta {
                Some(d) if sh.knows(&zone.origin) => match sh.publish_change(&zone.origin, d) {
                    Err(PersistError::TooLarge(why)) if whole_ok => {
                        tracing::info!(zone = %zone.origin, "{why}; writing the zone whole instead");
                        sh.publish_whole(zone)?
                    }
                    other => other?,
                },
                _ => sh.publish_whole(zone)?,
            }
        }
        if let Err(e) = self.write_local_copy(zone, delta.as_ref(), text) {
            // In the shared store but not served here: the next poll reads it back whole.
            if let Some(sh) = self.shared() {
                sh.forget(&zone.origin);
            }
            return Err(e);
        }
        if let Some(d) = delta {
            lock(&self.journals)
                .entry(zone.origin.clone())
                .or_default()
                .append(d.entry());
        }
        Ok(())
    }

    /// Writes the master file whole (a new zone, or a zone read whole from the shared store);
    /// the journal then starts afresh from it.
    fn write_whole(
        &self,
        dir: &Path,
        zone: &Zone,
        text: Option<String>,
    ) -> Result<(), PersistError> {
        let text = text.unwrap_or_else(|| zone_file::export(zone));
        std::fs::create_dir_all(dir)
            .map_err(|e| PersistError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(format!("{}zone", zone.origin));
        let _w = lock(&self.file_writes);
        portico_config::files::write_atomic(&path, text.as_bytes(), 0o644)
            .map_err(|e| PersistError::Io(format!("cannot write {}: {e}", path.display())))?;
        self.restart_journal(dir, &zone.origin, zone.serial())?;
        Ok(())
    }

    /// Shares zone writes through `store` (cluster mode): set before the first load.
    pub fn set_shared(&self, store: Arc<dyn portico_store::Store>) {
        *lock(&self.shared) = Some(Arc::new(SharedZones::new(store)));
    }

    /// Writes this node's copy of the zone (when it has a state directory): `delta` appended to
    /// the journal, or — without one, or when the journal cannot take it — the master file
    /// whole (`text` when given).
    fn write_local_copy(
        &self,
        zone: &Zone,
        delta: Option<&Delta>,
        text: Option<String>,
    ) -> Result<(), PersistError> {
        let Some(dir) = self.write_dir() else {
            return Ok(());
        };
        let journaled = match delta {
            Some(d) => self.append_journal(&zone.origin, d)?,
            None => false,
        };
        if !journaled {
            self.write_whole(&dir, zone, text)?;
        }
        Ok(())
    }

    /// Serves what another node changed in the zone since this node last looked (cluster mode):
    /// the names it changed go into the local journal as one change, or the zone is written
    /// whole when it was read whole. True when the served zone changed.
    pub async fn sync_shared(self: &Arc<Self>, origin: &Name) -> Result<bool, String> {
        let Some(sh) = self.shared() else {
            return Ok(false);
        };
        let _w = self.writer.lock().await;
        let catalog = self.catalog.load_full();
        let Some(old) = catalog.zones.get(origin) else {
            return Ok(false);
        };
        if sh.collect_due(origin) {
            // What a crash left in the store (a generation no head names): deleted in the
            // background, bucket by bucket, without holding up the poll.
            let (collector, origin) = (sh.clone(), origin.clone());
            tokio::task::spawn_blocking(move || {
                if let Err(e) = collector.collect(&origin, crate::shared::WRITER_GONE) {
                    tracing::warn!(zone = %origin, error = %e, "cannot look for dead generations of the zone in the shared store");
                }
            });
        }
        // Reading from the store blocks (a whole generation of a large zone for seconds): off
        // the runtime's thread.
        let (poller, seen) = (sh.clone(), old.clone());
        let remote = tokio::task::spawn_blocking(move || poller.poll(&seen))
            .await
            .map_err(|e| format!("the shared-store read stopped: {e}"))?
            .map_err(|e| e.to_string())?;
        let Some(remote) = remote else {
            return Ok(false);
        };
        let (fresh, names) = match remote {
            Remote::Names(serial, names) => {
                let mut z = Zone::clone(old);
                z.track();
                for (owner, node) in names {
                    z.replace_node(owner, node);
                }
                z.set_serial(serial);
                (z, true)
            }
            Remote::Whole(z) => (z, false),
        };
        if fresh.serial() == old.serial() && !fresh.differs_from(old) {
            return Ok(false);
        }
        let delta = Delta::between(old, &fresh);
        // This node's copy: the journal's fsync, or a whole master file (seconds for a large
        // zone read whole), off the runtime's thread too.
        let this = self.clone();
        let (mut fresh, delta, written) = tokio::task::spawn_blocking(move || {
            let r = this.write_local_copy(&fresh, names.then_some(&delta), None);
            (fresh, delta, r)
        })
        .await
        .map_err(|e| format!("the write stopped: {e}"))?;
        written.map_err(|e| e.to_string())?;
        lock(&self.journals)
            .entry(origin.clone())
            .or_default()
            .append(delta.entry());
        tracing::info!(zone = %origin, serial = fresh.serial(), names = delta.nodes.len(), "zone changed on another node: serving it");
        if fresh.glue_unchanged(old) {
            fresh.glue = old.glue.share();
        } else {
            fresh.index_glue();
        }
        fresh.touched = Default::default();
        let mut next = Catalog::clone(&catalog);
        next.zones.insert(origin.clone(), Arc::new(fresh));
        self.catalog.store(Arc::new(next));
        self.checkpoint_if_due(origin);
        Ok(true)
    }
}

/// What a load must still do with a zone read in cluster mode.
#[derive(Default)]
struct FromStore {
    /// The zone came from the shared store: write it as this node's copy first.
    write_local: bool,
    /// The shared store lacks it (or holds it in the old layout): write it there whole.
    publish: bool,
}

/// A new journal generation (see `ZoneJournal::generation`).
fn next_generation() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static G: AtomicU64 = AtomicU64::new(1);
    G.fetch_add(1, Ordering::Relaxed)
}

/// Moves a journal that cannot be used out of the way (kept for a person to look at).
fn set_aside(path: &Path, why: &str) {
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = path.with_extension(format!("journal.unused-{stamp}"));
    tracing::warn!(journal = %path.display(), moved_to = %aside.display(), "zone journal set aside: {why}");
    let _ = std::fs::rename(path, aside);
}

/// A fault for tests (a test double of a crash): with `PORTICO_TEST_FAULT=checkpoint-crash`,
/// the process writes half the new master file to its temp file and aborts, as a `kill -9` in
/// the middle of a checkpoint would leave it.
fn fault_in_checkpoint(path: &Path, text: &str) {
    if std::env::var("PORTICO_TEST_FAULT").as_deref() != Ok("checkpoint-crash") {
        return;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("zone");
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    let _ = std::fs::write(tmp, &text.as_bytes()[..text.len() / 2]);
    std::process::abort();
}

/// Folds every zone journal of a state directory into its master file and removes it (before
/// the directory is copied into a shared store: journals are one node's own).
pub fn fold_journals(state_dir: &Path) -> Result<usize, String> {
    let dir = state_dir.join("zones");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    let zones = HostedZones::new(Some(state_dir.to_path_buf()));
    let mut n = 0;
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().to_string();
        let Some(origin) = file.strip_suffix("journal").filter(|o| o.ends_with('.')) else {
            continue;
        };
        let origin = zone_name(origin).map_err(|e| e.to_string())?;
        if let Some(zone) = zones.read_state(&origin)? {
            let path = dir.join(format!("{origin}zone"));
            portico_config::files::write_atomic(&path, zone_file::export(&zone).as_bytes(), 0o644)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        lock(&zones.journal_files).remove(&origin);
        std::fs::remove_file(e.path())
            .map_err(|err| format!("cannot remove {}: {err}", e.path().display()))?;
        n += 1;
    }
    Ok(n)
}

/// Why a zone could not be written.
#[derive(Debug, Clone)]
pub enum PersistError {
    /// Another node changed the zone first.
    Conflict(String),
    /// The shared store or the disk failed.
    Io(String),
    /// The change is larger than the shared store takes in one transaction.
    TooLarge(String),
}

impl std::fmt::Display for PersistError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PersistError::Conflict(m) | PersistError::Io(m) | PersistError::TooLarge(m) => {
                f.write_str(m)
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn change_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let x = t ^ N
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!("C{:013X}", x & 0xF_FFFF_FFFF_FFFF)
}

pub fn zone_name(zone: &str) -> Result<Name, ChangeError> {
    let mut n = Name::from_ascii(zone).map_err(|_| ChangeError::NoSuchZone(zone.to_string()))?;
    n.set_fqdn(true);
    Ok(n.to_lowercase())
}

pub(crate) fn owner(name: &str, origin: &Name) -> Result<Name, String> {
    if name == "@" || name.is_empty() {
        return Ok(origin.clone());
    }
    let n = Name::parse(name, Some(origin)).map_err(|e| format!("bad name {name:?}: {e}"))?;
    let n = n.to_lowercase();
    if !origin.zone_of(&n) {
        return Err(format!("{n} is outside the zone {origin}"));
    }
    Ok(n)
}

pub(crate) fn owner_any(name: &str, origin: &Name) -> Result<Name, String> {
    if name == "@" {
        return Ok(origin.clone());
    }
    Name::parse(name, Some(origin))
        .map(|n| n.to_lowercase())
        .map_err(|e| format!("bad name {name:?}: {e}"))
}

fn apply_batch(zone: &mut Zone, batch: &[RecordChange]) -> Result<(), ChangeError> {
    if batch.is_empty() {
        return Err(ChangeError::Invalid("the change batch is empty".into()));
    }
    let origin = zone.origin.clone();
    for (i, c) in batch.iter().enumerate() {
        let bad = |m: String| {
            ChangeError::Invalid(format!(
                "change {i} ({:?} {} {}): {m}",
                c.action, c.name, c.rtype
            ))
        };
        let (name, parsed) = parse_set(
            &origin,
            &c.name,
            &c.rtype,
            c.ttl,
            &c.values,
            c.target.as_deref(),
            &c.routing,
        )
        .map_err(bad)?;
        let node = zone.node(&name).cloned().unwrap_or_default();
        let existing_routed = |r: &crate::routing::Routed| {
            node.routed()
                .iter()
                .find(|o| o.id == r.id && o.type_name() == r.type_name())
                .cloned()
        };
        let exists = match &parsed {
            Parsed::Alias(_) => node.alias().is_some(),
            Parsed::Set(rt, ..) => node.get(*rt).is_some(),
            Parsed::Routed(r) => existing_routed(r).is_some(),
        };
        match c.action {
            Action::Create if exists => {
                return Err(bad(
                    "the record set already exists (use UPSERT to replace it)".into(),
                ))
            }
            Action::Delete if !exists => return Err(bad("the record set does not exist".into())),
            Action::Delete => {
                let matches = match &parsed {
                    Parsed::Alias(a) => node.alias().map(|x| &x.target) == Some(&a.target),
                    Parsed::Set(rt, ttl, rdatas) => node
                        .get(*rt)
                        .is_some_and(|s| s.ttl == *ttl && same_values(&s.rdatas(), rdatas)),
                    Parsed::Routed(r) => {
                        existing_routed(r).is_some_and(|o| match (&o.data, &r.data) {
                            (RoutedData::Alias(x), RoutedData::Alias(y)) => x.target == y.target,
                            (RoutedData::Set(x), RoutedData::Set(y)) => {
                                x.ttl == y.ttl && same_values(&x.rdatas(), &y.rdatas())
                            }
                            _ => false,
                        })
                    }
                };
                if !matches {
                    return Err(bad(
                        "the values or TTL do not match the record set being deleted".into(),
                    ));
                }
                match &parsed {
                    Parsed::Alias(_) => zone.set_alias(&name, None),
                    Parsed::Set(rt, ..) => zone.put(&name, *rt, 0, Vec::new()),
                    Parsed::Routed(r) => {
                        zone.remove_routed(&name, &r.type_name(), &r.id);
                    }
                }
            }
            Action::Create | Action::Upsert => match parsed {
                Parsed::Alias(a) => zone.set_alias(&name, Some(a)),
                Parsed::Routed(r) => zone.set_routed(&name, r),
                Parsed::Set(RecordType::SOA, ..) => {
                    return Err(bad("the SOA is managed by Portico".into()))
                }
                Parsed::Set(rt, ttl, rdatas) => zone.put(&name, rt, ttl, rdatas),
            },
        }
    }
    Ok(())
}

fn same_values(a: &[RData], b: &[RData]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

/// Records of a zone in transfer order: SOA first, then everything else (ALIAS left out: it is
/// Portico's own and answered at query time).
pub fn transfer_records(zone: &Zone) -> Vec<Record> {
    let mut out = Vec::with_capacity(zone.record_count());
    if let Some((soa, ttl)) = zone.soa() {
        out.push(Record::from_rdata(
            zone.origin.clone(),
            ttl,
            RData::SOA(soa.clone()),
        ));
    }
    for (key, node) in &zone.nodes {
        let name = key.name();
        for set in node.sets.iter().filter(|s| s.rtype != RecordType::SOA) {
            out.extend(
                set.iter()
                    .map(|r| Record::from_rdata(name.clone(), set.ttl, r)),
            );
        }
    }
    out
}

/// Waits until a change is INSYNC or `timeout` passes.
pub async fn wait_insync(zones: &HostedZones, id: &str, timeout: Duration) -> bool {
    let end = tokio::time::Instant::now() + timeout;
    loop {
        if zones
            .change_status(id)
            .is_some_and(|c| c.status == ChangeStatus::Insync)
        {
            return true;
        }
        if tokio::time::Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
