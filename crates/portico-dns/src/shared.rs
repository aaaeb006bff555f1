//! Zones in a shared store (cluster mode, etcd): one key per name, so that a change costs what
//! it changes there too, and a zone is not bound by etcd's request limit.
//!
//! ```text
//! zones/<origin>/head                     {"serial": 7, "gen": "g…", "seq": 42, "buckets": 256}
//! zones/<origin>/<gen>/<bucket>/<name>    the name's records as master-file lines ("" once removed)
//! zones/<origin>/log/<seq>       {"gen", "from", "to", "names": [[owner key, lines], …]}
//! zones/<origin>/gens/<gen>      {"buckets": 4, "since": <unix s>, "dead": false}
//! ```
//!
//! A change batch is one transaction: it applies only if `head` still holds what this node last
//! saw (else it is a conflict), and writes the new head, the names it touched and a log entry
//! of them. Another node reads `head` (one small read per zone and poll); when it moved, the log
//! entries since the node's own `seq` say which names to read, all at one revision. A whole zone
//! (the first upload, a migration, a config reload that changes more than a transaction holds)
//! is a new generation: its names are written first, under a generation no head names, and one
//! transaction then points `head` at it and deletes the old one, so a half-written zone is
//! never served. A node that is behind by more than the log keeps, or sees a new generation,
//! reads the generation whole, bucket by bucket: a name's bucket is a hash of it, about a
//! thousand names each, because etcd 3.4 (Debian's) walks every key from a range's start to its
//! end for each page it returns, so paging through one range of a million keys costs the square
//! of it. The old generation is deleted after the switch, bucket by bucket, for the same reason
//! (one deletion of a million keys would stall etcd). The master file of etcd's old layout (`zones/<origin>zone`, one
//! value) is read when no head exists and replaced by this layout on the first write.
//!
//! A generation no head names is listed under `gens/` while it exists: written before its
//! names (`dead: false`), removed by the transaction that points the head at it, which in turn
//! lists the generation it replaces as `dead`. What a crash leaves behind (a generation
//! written but never named, or an old one deleted in part) is therefore found without reading
//! a million keys: every node collects a zone's dead generations now and then
//! ([`SharedZones::collect`]), and declares dead a generation whose writer has been silent for
//! [`WRITER_GONE`]. The head's switch compares the new generation's entry too, so a writer
//! that was only slow cannot name a generation that is being deleted: its switch fails.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hickory_proto::rr::Name;
use portico_store::{Batch, Store, MAX_REQUEST_BYTES, MAX_TXN_OPS};

use crate::journal::Delta;
use crate::zone::{Node, Owner, Zone};
use crate::zone_config::FILE_DEFAULT_TTL;
use crate::zone_file;
use crate::zones::PersistError;

/// Log entries kept: a node behind by more reads the generation whole.
const LOG_KEEP: u64 = 1000;
/// Operations of a change besides its names: the head, the log entry, the old log entry's
/// deletion.
const OVERHEAD_OPS: usize = 3;

/// What `zones/<origin>/head` holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Head {
    pub serial: u32,
    pub gen: String,
    pub seq: u64,
    /// How many buckets the generation's names are spread over.
    #[serde(default = "one")]
    pub buckets: u32,
}

fn one() -> u32 {
    1
}

/// Names per bucket a new generation aims at.
const PER_BUCKET: usize = 1000;

/// A generation being written whose writer has been silent this long is taken for left by a
/// crash (a million names are written in under a minute).
pub const WRITER_GONE: Duration = Duration::from_secs(600);

/// What `zones/<origin>/gens/<gen>` holds: a generation that no head names (yet, or any more).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct GenEntry {
    buckets: u32,
    /// When it was listed (seconds since the Unix epoch, the lister's clock).
    since: u64,
    /// Replaced or given up: to be deleted.
    dead: bool,
}

/// Seconds since the Unix epoch on this node's clock (0 if the clock is before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl GenEntry {
    fn new(buckets: u32, dead: bool) -> GenEntry {
        GenEntry {
            buckets,
            since: unix_now(),
            dead,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct LogEntry {
    gen: String,
    from: u32,
    to: u32,
    /// The names changed (owner key in base64, the name's lines; "" when removed); absent for
    /// a new generation (read it whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    names: Option<Vec<(String, String)>>,
}

/// What the store holds of a zone, as [`SharedZones::read`] found it.
pub enum Stored {
    /// Nothing: the zone is new to the cluster.
    Absent,
    /// The same serial as the local copy: serve that.
    Same,
    /// The zone as stored (a newer or other version than the local copy).
    Zone(Zone),
    /// Only etcd's old one-value layout holds it: serve it, and write it anew in this layout.
    Legacy(Zone),
}

/// Names and what each holds now (`None`: nothing).
pub type Names = Vec<(Owner, Option<Node>)>;

/// Another node's change, read by [`SharedZones::poll`].
pub enum Remote {
    /// These names now hold this (`None`: nothing), at this serial.
    Names(u32, Names),
    /// The zone whole (a new generation, or this node was too far behind).
    Whole(Zone),
}

/// A zone's head as this node last saw it: the bytes a change compares with.
#[derive(Clone)]
struct Seen {
    bytes: Vec<u8>,
    head: Head,
}

/// How often a node looks for generations to collect in each zone ([`SharedZones::collect_due`]).
const COLLECT_EVERY: Duration = Duration::from_secs(600);

/// The zones of a shared store, and what this node last saw of each.
pub struct SharedZones {
    store: Arc<dyn Store>,
    seen: Mutex<HashMap<Name, Seen>>,
    /// When this node last started collecting each zone's dead generations.
    collected: Mutex<HashMap<Name, std::time::Instant>>,
}

pub fn head_key(origin: &Name) -> String {
    format!("zones/{origin}/head")
}

/// etcd's old layout: the zone as one master-file value.
pub fn legacy_key(origin: &Name) -> String {
    format!("zones/{origin}zone")
}

fn gen_prefix(origin: &Name, gen: &str) -> String {
    format!("zones/{origin}/{gen}/")
}

fn bucket_prefix(origin: &Name, gen: &str, bucket: u32) -> String {
    format!("{}{bucket:x}/", gen_prefix(origin, gen))
}

/// FNV-1a of the owner's key, for its bucket.
fn bucket_of(owner: &Owner, buckets: u32) -> u32 {
    let h = owner.key().iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % u64::from(buckets.max(1))) as u32
}

fn gens_prefix(origin: &Name) -> String {
    format!("zones/{origin}/gens/")
}

fn gen_entry_key(origin: &Name, gen: &str) -> String {
    format!("{}{gen}", gens_prefix(origin))
}

fn log_key(origin: &Name, seq: u64) -> String {
    format!("zones/{origin}/log/{seq:020}")
}

/// A name's key: its master-file spelling relative to the origin (`@` for the apex), with `%`
/// and `/` percent-escaped so that it stays one path segment.
fn name_key(origin: &Name, head: &Head, owner: &Owner) -> String {
    let rel = zone_file::relative(&owner.name(), origin);
    let seg = rel.replace('%', "%25").replace('/', "%2F");
    let bucket = bucket_of(owner, head.buckets);
    format!("{}{seg}", bucket_prefix(origin, &head.gen, bucket))
}

fn node_text(origin: &Name, owner: &Owner, node: Option<&Node>) -> String {
    let mut s = String::new();
    if let Some(n) = node {
        zone_file::export_node(&mut s, origin, owner, n);
    }
    s
}

fn new_gen() -> String {
    format!("g{:016x}", fastrand::u64(..))
}

fn io_error(store: &dyn Store, e: io::Error) -> PersistError {
    PersistError::Io(format!(
        "the shared store ({}) cannot be reached, so nothing was written: {e}",
        store.describe()
    ))
}

fn bad(origin: &Name, what: &str, e: impl std::fmt::Display) -> PersistError {
    PersistError::Io(format!("zone {origin} in the shared store: {what}: {e}"))
}

impl SharedZones {
    pub fn new(store: Arc<dyn Store>) -> Self {
        SharedZones {
            store,
            seen: Mutex::default(),
            collected: Mutex::default(),
        }
    }

    /// Whether it is time to look for the zone's dead generations (at this node's first look,
    /// then every [`COLLECT_EVERY`]); true counts as started.
    pub fn collect_due(&self, origin: &Name) -> bool {
        let now = std::time::Instant::now();
        let mut collected = lock(&self.collected);
        match collected.get(origin) {
            Some(t) if now.duration_since(*t) < COLLECT_EVERY => false,
            _ => {
                collected.insert(origin.clone(), now);
                true
            }
        }
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    fn seen(&self, origin: &Name) -> Option<Seen> {
        lock(&self.seen).get(origin).cloned()
    }

    fn saw(&self, origin: &Name, bytes: Vec<u8>, head: Head) {
        lock(&self.seen).insert(origin.clone(), Seen { bytes, head });
    }

    /// Forgets what this node saw of the zone, so that the next poll reads it whole (after a
    /// change reached the store but not this node's own copy).
    pub fn forget(&self, origin: &Name) {
        lock(&self.seen).remove(origin);
    }

    /// Whether this node has seen the zone's head (a change can then be written as names).
    pub fn knows(&self, origin: &Name) -> bool {
        lock(&self.seen).contains_key(origin)
    }

    fn read_head(&self, origin: &Name) -> Result<(u64, Option<Seen>), PersistError> {
        let (rev, bytes) = self
            .store
            .get_at(&head_key(origin))
            .map_err(|e| io_error(self.store(), e))?;
        match bytes {
            None => Ok((rev, None)),
            Some(b) => {
                let head: Head = serde_json::from_slice(&b).map_err(|e| bad(origin, "head", e))?;
                Ok((rev, Some(Seen { bytes: b, head })))
            }
        }
    }

    /// The zone as the store holds it, at start or reload: [`Stored::Same`] when its serial
    /// is `local_serial` (the local copy is current).
    pub fn read(&self, origin: &Name, local_serial: Option<u32>) -> Result<Stored, PersistError> {
        let (rev, head) = self.read_head(origin)?;
        let Some(Seen { bytes, head }) = head else {
            let legacy = self
                .store
                .get(&legacy_key(origin))
                .map_err(|e| io_error(self.store(), e))?;
            return match legacy {
                None => Ok(Stored::Absent),
                Some(text) => {
                    let text = String::from_utf8_lossy(&text);
                    let mut zone = Zone::new(origin);
                    zone_file::parse_into(&mut zone, &text, 300)
                        .map_err(|e| bad(origin, &legacy_key(origin), e))?;
                    Ok(Stored::Legacy(zone))
                }
            };
        };
        if local_serial == Some(head.serial) {
            self.saw(origin, bytes, head);
            return Ok(Stored::Same);
        }
        let zone = self.read_gen(origin, &head, rev)?;
        self.saw(origin, bytes, head);
        Ok(Stored::Zone(zone))
    }

    /// Every name of the head's generation, read at `rev`, as a zone at the head's serial.
    fn read_gen(&self, origin: &Name, head: &Head, rev: u64) -> Result<Zone, PersistError> {
        let mut text = String::new();
        for bucket in 0..head.buckets.max(1) {
            let entries = self
                .store
                .scan(&bucket_prefix(origin, &head.gen, bucket), rev)
                .map_err(|e| io_error(self.store(), e))?;
            for (_, v) in &entries {
                text.push_str(&String::from_utf8_lossy(v));
            }
        }
        let mut zone = Zone::new(origin);
        zone_file::parse_into(&mut zone, &text, FILE_DEFAULT_TTL)
            .map_err(|e| bad(origin, &format!("generation {}", head.gen), e))?;
        if zone.soa().is_none() {
            return Err(bad(
                origin,
                &format!("generation {}", head.gen),
                "it holds no SOA record (written only in part?)",
            ));
        }
        zone.set_serial(head.serial);
        Ok(zone)
    }

    /// Writes one change (the names `delta` touched) as one transaction that applies only if
    /// the head is still what this node last saw. A change larger than one etcd transaction is
    /// refused ([`PersistError::TooLarge`]) and nothing is written.
    pub fn publish_change(&self, origin: &Name, delta: &Delta) -> Result<(), PersistError> {
        let Some(seen) = self.seen(origin) else {
            return Err(PersistError::Conflict(format!(
                "this node has not read zone {origin} from the shared store yet; nothing was applied: retry in a moment"
            )));
        };
        let head = Head {
            serial: delta.to,
            gen: seen.head.gen.clone(),
            seq: seen.head.seq + 1,
            buckets: seen.head.buckets,
        };
        let head_bytes = serde_json::to_vec(&head).unwrap_or_default();
        let mut batch = Batch {
            compares: vec![(head_key(origin), Some(seen.bytes.clone()))],
            ..Batch::default()
        };
        let mut names = Vec::with_capacity(delta.nodes.len());
        for (owner, _, new) in &delta.nodes {
            let text = node_text(origin, owner, new.as_ref());
            batch
                .puts
                .push((name_key(origin, &head, owner), text.clone().into_bytes()));
            names.push((owner.to_base64(), text));
        }
        let entry = LogEntry {
            gen: head.gen.clone(),
            from: delta.from,
            to: delta.to,
            names: Some(names),
        };
        batch.puts.push((
            log_key(origin, head.seq),
            serde_json::to_vec(&entry).unwrap_or_default(),
        ));
        if head.seq > LOG_KEEP {
            batch.deletes.push(log_key(origin, head.seq - LOG_KEEP));
        }
        batch.puts.push((head_key(origin), head_bytes.clone()));
        if batch.ops() > MAX_TXN_OPS || batch.bytes() > MAX_REQUEST_BYTES {
            return Err(PersistError::TooLarge(format!(
                "the change touches {} names ({} bytes in the shared store); etcd takes at most {} names ({} operations, --max-txn-ops) and {} bytes (--max-request-bytes) in one transaction: split it into smaller change batches",
                delta.nodes.len(),
                batch.bytes(),
                MAX_TXN_OPS - OVERHEAD_OPS,
                MAX_TXN_OPS,
                MAX_REQUEST_BYTES
            )));
        }
        match self.store.apply(&batch) {
            Ok(true) => {
                self.saw(origin, head_bytes, head);
                Ok(())
            }
            Ok(false) => Err(PersistError::Conflict(
                "the zone was changed on another node since this node last saw it; nothing was applied: read it again and retry".into(),
            )),
            Err(e) => Err(io_error(self.store(), e)),
        }
    }

    /// Writes the zone whole as a new generation, then points the head at it in one
    /// transaction that applies only if the head is still what this node last saw (absent when
    /// it saw none) and the generation's `gens/` entry is still the one written before it. The
    /// old generation is listed as dead and the old layout's value deleted in that transaction.
    pub fn publish_whole(&self, zone: &Zone) -> Result<(), PersistError> {
        let origin = &zone.origin;
        let seen = self.seen(origin);
        let seq = seen.as_ref().map_or(1, |s| s.head.seq + 1);
        let head = Head {
            serial: zone.serial(),
            gen: new_gen(),
            seq,
            buckets: zone.nodes.len().div_ceil(PER_BUCKET).next_power_of_two() as u32,
        };
        let entries: Vec<(String, Vec<u8>)> = zone
            .nodes
            .iter()
            .map(|(owner, node)| {
                (
                    name_key(origin, &head, owner),
                    node_text(origin, owner, Some(node)).into_bytes(),
                )
            })
            .collect();
        let listed = GenEntry::new(head.buckets, false).bytes();
        let listed_key = gen_entry_key(origin, &head.gen);
        self.store
            .put(&listed_key, &listed, 0o644)
            .map_err(|e| io_error(self.store(), e))?;
        self.store
            .put_many(entries)
            .map_err(|e| io_error(self.store(), e))?;
        let head_bytes = serde_json::to_vec(&head).unwrap_or_default();
        let entry = LogEntry {
            gen: head.gen.clone(),
            from: seen.as_ref().map_or(0, |s| s.head.serial),
            to: zone.serial(),
            names: None,
        };
        let mut batch = Batch {
            compares: vec![
                (head_key(origin), seen.as_ref().map(|s| s.bytes.clone())),
                (listed_key.clone(), Some(listed)),
            ],
            puts: vec![
                (
                    log_key(origin, seq),
                    serde_json::to_vec(&entry).unwrap_or_default(),
                ),
                (head_key(origin), head_bytes.clone()),
            ],
            deletes: vec![legacy_key(origin), listed_key],
            delete_prefixes: Vec::new(),
        };
        if let Some(old) = &seen {
            batch.puts.push((
                gen_entry_key(origin, &old.head.gen),
                GenEntry::new(old.head.buckets, true).bytes(),
            ));
        }
        if seq > LOG_KEEP {
            batch.deletes.push(log_key(origin, seq - LOG_KEEP));
        }
        match self.store.apply(&batch) {
            Ok(true) => {
                self.saw(origin, head_bytes, head);
                if let Some(old) = seen {
                    self.delete_gen(origin, &old.head.gen, old.head.buckets);
                }
                Ok(())
            }
            Ok(false) => {
                // Nobody points at the new generation: take it back.
                self.delete_gen(origin, &head.gen, head.buckets);
                Err(PersistError::Conflict(
                    "the zone was written by another node meanwhile; nothing was applied".into(),
                ))
            }
            // Not known whether the switch applied: the new generation stays (the head may
            // name it), and the next poll reads whichever the head names. If it did not apply,
            // its `gens/` entry has it collected once WRITER_GONE has passed.
            Err(e) => Err(io_error(self.store(), e)),
        }
    }

    /// Deletes a generation no head names any more, bucket by bucket, then its `gens/` entry
    /// (best effort: what a failure leaves is never read, since no head names it, and stays
    /// listed for [`SharedZones::collect`]).
    fn delete_gen(&self, origin: &Name, gen: &str, buckets: u32) {
        for bucket in 0..buckets.max(1) {
            let batch = Batch {
                delete_prefixes: vec![bucket_prefix(origin, gen, bucket)],
                ..Batch::default()
            };
            if let Err(e) = self.store.apply(&batch) {
                tracing::warn!(zone = %origin, generation = %gen, error = %e, "cannot delete an old generation of the zone from the shared store");
                return;
            }
        }
        if let Err(e) = self.store.delete(&gen_entry_key(origin, gen)) {
            tracing::warn!(zone = %origin, generation = %gen, error = %e, "cannot delete a deleted generation's entry from the shared store");
        }
    }

    /// Deletes what a crash or a failed deletion left of the zone's generations that no head
    /// names: those listed dead, and those whose writer has been silent for `writer_gone`
    /// (declared dead first, in a transaction that applies only while their entry is
    /// unchanged, so that their writer's switch can no longer apply). Returns the generations
    /// deleted.
    pub fn collect(
        &self,
        origin: &Name,
        writer_gone: Duration,
    ) -> Result<Vec<String>, PersistError> {
        let (rev, head) = self.read_head(origin)?;
        let named = head.map(|s| s.head.gen);
        let listed = self
            .store
            .scan(&gens_prefix(origin), rev)
            .map_err(|e| io_error(self.store(), e))?;
        let now = unix_now();
        let mut deleted = Vec::new();
        for (key, bytes) in listed {
            let gen = key.rsplit('/').next().unwrap_or_default().to_string();
            if named.as_deref() == Some(gen.as_str()) {
                // A switch whose answer was lost, yet applied: the entry goes when the
                // generation is replaced.
                continue;
            }
            let Ok(entry) = serde_json::from_slice::<GenEntry>(&bytes) else {
                tracing::warn!(zone = %origin, key = %key, "an unreadable generation entry in the shared store: left alone");
                continue;
            };
            if !entry.dead {
                if now < entry.since.saturating_add(writer_gone.as_secs()) {
                    continue;
                }
                let batch = Batch {
                    compares: vec![(key.clone(), Some(bytes))],
                    puts: vec![(
                        key.clone(),
                        GenEntry {
                            dead: true,
                            ..entry.clone()
                        }
                        .bytes(),
                    )],
                    ..Batch::default()
                };
                if !self
                    .store
                    .apply(&batch)
                    .map_err(|e| io_error(self.store(), e))?
                {
                    continue; // its writer switched to it or gave it up meanwhile
                }
            }
            tracing::info!(zone = %origin, generation = %gen, "deleting a generation of the zone that no head names (left by a crash or a failed deletion)");
            self.delete_gen(origin, &gen, entry.buckets);
            deleted.push(gen);
        }
        Ok(deleted)
    }

    /// Replaces whatever the store holds of the zone by `zone` (`portico store migrate`).
    pub fn import(&self, zone: &Zone) -> Result<(), PersistError> {
        let (_, head) = self.read_head(&zone.origin)?;
        if let Some(Seen { bytes, head }) = head {
            self.saw(&zone.origin, bytes, head);
        }
        self.publish_whole(zone)
    }

    /// What another node changed since this node last saw the zone (`zone`, as served here);
    /// `None` when nothing did. What it returns counts as seen.
    pub fn poll(&self, zone: &Zone) -> Result<Option<Remote>, PersistError> {
        let origin = &zone.origin;
        let (rev, head) = self.read_head(origin)?;
        let Some(Seen { bytes, head }) = head else {
            return Ok(None);
        };
        let seen = self.seen(origin);
        if seen.as_ref().is_some_and(|s| s.bytes == bytes) {
            return Ok(None);
        }
        let names = match &seen {
            Some(s) if s.head.gen == head.gen && head.seq > s.head.seq => {
                self.read_log(origin, &s.head, &head)?
            }
            _ => None,
        };
        let remote = match names {
            Some(names) => Remote::Names(head.serial, names),
            None => Remote::Whole(self.read_gen(origin, &head, rev)?),
        };
        self.saw(origin, bytes, head);
        Ok(Some(remote))
    }

    /// The names changed from `from` to `to`, from the log; `None` when the log no
    /// longer covers them or a new generation began (then the zone is read whole).
    fn read_log(
        &self,
        origin: &Name,
        from: &Head,
        to: &Head,
    ) -> Result<Option<Names>, PersistError> {
        if to.seq - from.seq > LOG_KEEP {
            return Ok(None);
        }
        // One read per entry: entries never change once written (only the oldest go), so they
        // need no common revision, and a log of large entries is never one oversized answer.
        let mut names: BTreeMap<Owner, String> = BTreeMap::new();
        for seq in (from.seq + 1)..=to.seq {
            let key = log_key(origin, seq);
            let Some(value) = self
                .store
                .get(&key)
                .map_err(|e| io_error(self.store(), e))?
            else {
                return Ok(None); // pruned: read the zone whole
            };
            let entry: LogEntry =
                serde_json::from_slice(&value).map_err(|e| bad(origin, &key, e))?;
            let Some(list) = entry.names.filter(|_| entry.gen == to.gen) else {
                return Ok(None);
            };
            for (owner, text) in list {
                let owner = Owner::from_base64(&owner).map_err(|e| bad(origin, &key, e))?;
                names.insert(owner, text);
            }
        }
        let mut out = Vec::with_capacity(names.len());
        for (owner, text) in names {
            let node = zone_file::parse_node(origin, &owner, &text)
                .map_err(|e| bad(origin, &owner.to_string(), e))?;
            out.push((owner, node));
        }
        Ok(Some(out))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zone::Zone;

    fn zone(text: &str) -> Zone {
        let mut z = Zone::new(&Name::from_ascii("example.test.").unwrap());
        zone_file::parse_into(&mut z, text, 300).unwrap();
        z
    }

    const BASE: &str = "@ 300 IN SOA ns1 h 1 7200 900 1209600 300\n@ 300 IN NS ns1\nns1 300 IN A 192.0.2.1\nwww 300 IN A 192.0.2.2\n";

    #[test]
    fn names_a_change_and_a_whole_generation_reach_another_node() {
        let dir = std::env::temp_dir().join(format!("portico-shared-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store: Arc<dyn Store> = Arc::new(portico_store::LocalDir::new(&dir));
        let (a, b) = (
            SharedZones::new(store.clone()),
            SharedZones::new(store.clone()),
        );
        let z1 = zone(BASE);
        let origin = z1.origin.clone();
        assert!(matches!(a.read(&origin, None).unwrap(), Stored::Absent));
        a.publish_whole(&z1).unwrap();
        let Stored::Zone(seen_by_b) = b.read(&origin, None).unwrap() else {
            panic!("b reads the zone")
        };
        assert_eq!(seen_by_b, z1);

        // A change through a: b reads only its names from the log.
        let mut z2 = Zone::clone(&z1);
        z2.track();
        z2.replace_node(
            Owner::new(&Name::from_ascii("www.example.test.").unwrap()),
            None,
        );
        let txt = zone("_acme-challenge 60 IN TXT \"tok\"\n");
        let key = txt.nodes.keys().next().unwrap().clone();
        z2.replace_node(key.clone(), txt.nodes.get(&key).cloned());
        z2.set_serial(2);
        a.publish_change(&origin, &Delta::between(&z1, &z2))
            .unwrap();
        let Some(Remote::Names(serial, names)) = b.poll(&seen_by_b).unwrap() else {
            panic!("b gets the names")
        };
        assert_eq!(serial, 2);
        assert_eq!(names.len(), 3, "{names:?}"); // apex (serial), www removed, the TXT
        assert!(names
            .iter()
            .any(|(o, n)| o.to_string() == "www.example.test." && n.is_none()));
        let mut at_b = seen_by_b.clone();
        for (o, n) in names {
            at_b.replace_node(o, n);
        }
        at_b.set_serial(serial);
        assert_eq!(at_b, z2);
        assert!(b.poll(&at_b).unwrap().is_none(), "nothing new");

        // b's own change against a head it saw applies; a's, against an older one, conflicts.
        let mut z3 = Zone::clone(&z2);
        z3.track();
        z3.set_serial(3);
        b.publish_change(&origin, &Delta::between(&z2, &z3))
            .unwrap();
        assert!(matches!(
            a.publish_change(&origin, &Delta::between(&z2, &z3)),
            Err(PersistError::Conflict(_))
        ));

        // Too many names for one transaction: refused, naming the limit, nothing written.
        let mut big = Zone::clone(&z3);
        big.track();
        for i in 0..200 {
            let t = zone(&format!("n{i} 60 IN A 192.0.2.9\n"));
            let (k, n) = t.nodes.iter().next().unwrap();
            big.replace_node(k.clone(), Some(n.clone()));
        }
        big.set_serial(4);
        let err = b
            .publish_change(&origin, &Delta::between(&z3, &big))
            .unwrap_err();
        assert!(matches!(err, PersistError::TooLarge(_)), "{err}");
        assert!(err.to_string().contains("--max-txn-ops"), "{err}");

        // A new generation: a reads it whole, and the old generation is gone.
        let old_gen = b.seen(&origin).unwrap().head.gen;
        b.publish_whole(&big).unwrap();
        let Some(Remote::Whole(w)) = a.poll(&z2).unwrap() else {
            panic!("a reads the new generation whole")
        };
        assert_eq!(w, big);
        assert!(store
            .list(&gen_prefix(&origin, &old_gen))
            .unwrap()
            .is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// What a crash leaves of generations no head names is found through `gens/` and
    /// collected; a generation still being written and the head's own are left alone.
    #[test]
    fn generations_left_by_a_crash_are_collected_and_live_ones_kept() {
        let dir = std::env::temp_dir().join(format!("portico-collect-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store: Arc<dyn Store> = Arc::new(portico_store::LocalDir::new(&dir));
        let node = SharedZones::new(store.clone());
        let z = zone(BASE);
        let origin = z.origin.clone();
        node.publish_whole(&z).unwrap();
        let mut z2 = Zone::clone(&z);
        z2.set_serial(2);
        node.publish_whole(&z2).unwrap();
        // A switch leaves nothing listed: the new generation's entry went with it, the old
        // generation's after its deletion.
        assert!(store.list(&gens_prefix(&origin)).unwrap().is_empty());
        let named = node.seen(&origin).unwrap().head.gen;

        // Left as a crash leaves them: a generation written but never named, its writer silent
        // for longer than WRITER_GONE; one replaced but deleted only in part; and one being
        // written right now, by a writer that is alive.
        let old = GenEntry::new(2, false);
        let crashed = GenEntry {
            since: old.since - WRITER_GONE.as_secs() - 1,
            ..old
        };
        let left = [
            ("gcrashed", crashed),
            ("gdeletedinpart", GenEntry::new(2, true)),
            ("gbeingwritten", GenEntry::new(2, false)),
        ];
        for (gen, entry) in &left {
            store
                .put(&gen_entry_key(&origin, gen), &entry.bytes(), 0o644)
                .unwrap();
            for bucket in 0..2 {
                let key = format!("{}www", bucket_prefix(&origin, gen, bucket));
                store.put(&key, b"www 300 IN A 192.0.2.2\n", 0o644).unwrap();
            }
        }
        let mut deleted = node.collect(&origin, WRITER_GONE).unwrap();
        deleted.sort();
        assert_eq!(deleted, ["gcrashed", "gdeletedinpart"]);
        for gen in ["gcrashed", "gdeletedinpart"] {
            assert!(
                store.list(&gen_prefix(&origin, gen)).unwrap().is_empty(),
                "{gen}"
            );
            assert_eq!(store.get(&gen_entry_key(&origin, gen)).unwrap(), None);
        }
        assert_eq!(
            store
                .list(&gen_prefix(&origin, "gbeingwritten"))
                .unwrap()
                .len(),
            2
        );
        assert!(store
            .get(&gen_entry_key(&origin, "gbeingwritten"))
            .unwrap()
            .is_some());
        assert!(!store.list(&gen_prefix(&origin, &named)).unwrap().is_empty());
        let Stored::Zone(read) = SharedZones::new(store.clone()).read(&origin, None).unwrap()
        else {
            panic!("the zone is read")
        };
        assert_eq!(read, z2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A test double of a slow writer's store: while a new generation's names are written,
    /// another node declares every unnamed generation dead (as it would after WRITER_GONE of
    /// silence), so that the switch that follows meets a collected generation.
    struct CollectedWhileWriting {
        inner: Arc<dyn Store>,
        collector: Mutex<Option<SharedZones>>,
        origin: Name,
    }

    impl Store for CollectedWhileWriting {
        fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
            self.inner.get(key)
        }
        fn put(&self, key: &str, value: &[u8], mode: u32) -> io::Result<()> {
            self.inner.put(key, value, mode)
        }
        fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
            self.inner.list(prefix)
        }
        fn delete(&self, key: &str) -> io::Result<()> {
            self.inner.delete(key)
        }
        fn try_lock(
            &self,
            name: &str,
            ttl: Duration,
        ) -> io::Result<Option<Box<dyn portico_store::Lock>>> {
            self.inner.try_lock(name, ttl)
        }
        fn describe(&self) -> String {
            self.inner.describe()
        }
        fn put_if(
            &self,
            key: &str,
            expected: Option<&[u8]>,
            value: &[u8],
            mode: u32,
        ) -> io::Result<bool> {
            self.inner.put_if(key, expected, value, mode)
        }
        fn apply(&self, batch: &Batch) -> io::Result<bool> {
            self.inner.apply(batch)
        }
        fn put_many(&self, entries: Vec<portico_store::Entry>) -> io::Result<()> {
            self.inner.put_many(entries)?;
            if let Some(other) = lock(&self.collector).take() {
                let deleted = other.collect(&self.origin, Duration::ZERO).unwrap();
                assert_eq!(deleted.len(), 1, "the generation being written");
            }
            Ok(())
        }
    }

    #[test]
    fn a_slow_writer_cannot_name_a_generation_declared_dead_meanwhile() {
        let dir = std::env::temp_dir().join(format!("portico-slow-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let plain: Arc<dyn Store> = Arc::new(portico_store::LocalDir::new(&dir));
        let z = zone(BASE);
        let origin = z.origin.clone();
        SharedZones::new(plain.clone()).publish_whole(&z).unwrap();
        let slow = Arc::new(CollectedWhileWriting {
            inner: plain.clone(),
            collector: Mutex::new(Some(SharedZones::new(plain.clone()))),
            origin: origin.clone(),
        });
        let writer = SharedZones::new(slow.clone());
        assert!(matches!(
            writer.read(&origin, Some(1)).unwrap(),
            Stored::Same
        ));
        let mut z2 = Zone::clone(&z);
        z2.set_serial(2);
        let err = writer.publish_whole(&z2).unwrap_err();
        assert!(matches!(err, PersistError::Conflict(_)), "{err}");
        assert!(lock(&slow.collector).is_none(), "the collector ran");
        // The head still names the first generation, which reads whole; nothing else is left.
        let Stored::Zone(read) = SharedZones::new(plain.clone()).read(&origin, None).unwrap()
        else {
            panic!("the zone is read")
        };
        assert_eq!(read, z);
        let gens: std::collections::BTreeSet<String> = plain
            .list(&format!("zones/{origin}/"))
            .unwrap()
            .iter()
            .filter_map(|k| k.split('/').nth(2).map(str::to_string))
            .filter(|seg| seg.starts_with('g') && seg != "gens")
            .collect();
        assert_eq!(gens.len(), 1, "{gens:?}");
        assert!(plain.list(&gens_prefix(&origin)).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_old_one_value_layout_is_read_and_replaced_on_the_first_write() {
        let dir = std::env::temp_dir().join(format!("portico-legacy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store: Arc<dyn Store> = Arc::new(portico_store::LocalDir::new(&dir));
        let z = zone(BASE);
        store
            .put(
                &legacy_key(&z.origin),
                zone_file::export(&z).as_bytes(),
                0o644,
            )
            .unwrap();
        let node = SharedZones::new(store.clone());
        let Stored::Legacy(read) = node.read(&z.origin, Some(1)).unwrap() else {
            panic!("the old layout is read")
        };
        assert_eq!(read, z);
        node.publish_whole(&read).unwrap();
        assert_eq!(store.get(&legacy_key(&z.origin)).unwrap(), None);
        let Stored::Zone(again) = SharedZones::new(store).read(&z.origin, None).unwrap() else {
            panic!("the new layout is read")
        };
        assert_eq!(again, z);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
