//! The state store: what Portico keeps between runs (certificates, their renewal records, ACME
//! accounts, the internal CA, zones, the admin API's additions), as keys like the state
//! directory's relative paths (`certificates/renewal/app.toml`). The default is the local state
//! directory; a cluster of nodes shares one etcd instead, with the same keys and the same bytes.
//!
//! The trait is synchronous: its callers are the certificate manager and CLI commands, and state
//! changes are rare (an issuance, a change batch). The etcd store runs its own small runtime and
//! answers over a channel, so a caller on any runtime (or none) waits only for the round trip.

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod local;

use std::io;
use std::time::Duration;

pub use local::LocalDir;

/// A key and its bytes.
pub type Entry = (String, Vec<u8>);

/// Writes to several keys as one atomic step, applied only when every compare holds: etcd's
/// transaction, which a zone change in cluster mode is (`portico_dns::shared`).
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// The batch applies only while each of these keys holds its bytes (`None`: while it is
    /// absent).
    pub compares: Vec<(String, Option<Vec<u8>>)>,
    pub puts: Vec<Entry>,
    pub deletes: Vec<String>,
    /// Every key under each of these prefixes is deleted.
    pub delete_prefixes: Vec<String>,
}

impl Batch {
    /// How many operations etcd counts against `--max-txn-ops` (the compare is not one).
    pub fn ops(&self) -> usize {
        self.puts.len() + self.deletes.len() + self.delete_prefixes.len()
    }

    /// About what the request weighs against etcd's `--max-request-bytes` (keys and values,
    /// plus a few bytes of framing per operation).
    pub fn bytes(&self) -> usize {
        let cmp: usize = self
            .compares
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + 16)
            .sum();
        cmp + self
            .puts
            .iter()
            .map(|(k, v)| k.len() + v.len() + 16)
            .sum::<usize>()
            + self.deletes.iter().map(|k| k.len() + 16).sum::<usize>()
            + self
                .delete_prefixes
                .iter()
                .map(|k| 2 * k.len() + 16)
                .sum::<usize>()
    }
}

/// Where state lives. Keys are `/`-separated relative paths without `..`.
pub trait Store: Send + Sync {
    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>>;
    /// Replaces the value atomically: a reader sees the old bytes or the new, never a mix.
    /// `mode` is the file mode on disk (0o600 for private keys); etcd ignores it.
    fn put(&self, key: &str, value: &[u8], mode: u32) -> io::Result<()>;
    /// Every key under `prefix` (a directory-like prefix such as `certificates/`), sorted.
    fn list(&self, prefix: &str) -> io::Result<Vec<String>>;
    fn delete(&self, key: &str) -> io::Result<()>;
    /// Takes the named lock for at most `ttl` unless renewed; `None` when another holder has it.
    /// A holder that dies loses it when the TTL runs out.
    fn try_lock(&self, name: &str, ttl: Duration) -> io::Result<Option<Box<dyn Lock>>>;
    /// Human description for logs and errors ("/var/lib/portico", "etcd http://…").
    fn describe(&self) -> String;
    /// Writes `value` only if the key still holds `expected` (`None`: only if absent), as one
    /// atomic step; `false` when it did not (someone else changed it first).
    fn put_if(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        mode: u32,
    ) -> io::Result<bool>;
    /// Keys changed under any of `prefixes` after `revision`, with the store's revision now;
    /// `None` when the store has no change feed (a state directory has one writer: the process
    /// itself).
    fn updates_since(
        &self,
        _prefixes: &[&str],
        _revision: u64,
    ) -> io::Result<Option<(u64, Vec<Entry>)>> {
        Ok(None)
    }
    /// The key's bytes with the store's revision they were read at (0 without revisions), so
    /// that [`Store::scan`] can read more at the same point in time.
    fn get_at(&self, key: &str) -> io::Result<(u64, Option<Vec<u8>>)> {
        Ok((0, self.get(key)?))
    }
    /// Every key under `prefix` with its bytes, sorted by key, as of `revision` (0: now).
    /// etcd reads it in pages, all at one revision.
    fn scan(&self, prefix: &str, _revision: u64) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for key in self.list(prefix)? {
            if let Some(v) = self.get(&key)? {
                out.push((key, v));
            }
        }
        Ok(out)
    }
    /// Applies `batch` atomically if its compares hold; `false` when one did not.
    /// A state directory applies it step by step (one process writes it, under its own locks).
    fn apply(&self, batch: &Batch) -> io::Result<bool> {
        for (key, expected) in &batch.compares {
            if self.get(key)?.as_ref() != expected.as_ref() {
                return Ok(false);
            }
        }
        for prefix in &batch.delete_prefixes {
            for key in self.list(prefix)? {
                self.delete(&key)?;
            }
        }
        for key in &batch.deletes {
            self.delete(key)?;
        }
        for (key, value) in &batch.puts {
            self.put(key, value, mode_for(key))?;
        }
        Ok(true)
    }
    /// Writes many keys, not as one step (a zone's new generation, before its head names it):
    /// etcd sends them as transactions of at most [`MAX_TXN_OPS`] puts, several at a time.
    fn put_many(&self, entries: Vec<Entry>) -> io::Result<()> {
        for (key, value) in &entries {
            self.put(key, value, mode_for(key))?;
        }
        Ok(())
    }
    /// A signal that fires (the value grows) soon after another writer changes a key under one
    /// of `prefixes`, so a follower need not poll to hear of it; `None` when the store has no
    /// change feed. A signal says only "look again": [`Store::updates_since`] says what changed.
    fn watch(&self, _prefixes: &[&str]) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// etcd's default `--max-txn-ops`: operations in one transaction.
pub const MAX_TXN_OPS: usize = 128;
/// etcd's default `--max-request-bytes` (1.5 MiB): the size of one request.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// A held lock; released on drop.
pub trait Lock: Send {
    /// Extends the lock by its TTL; an error means it was lost (expired, or taken over).
    fn keep_alive(&self) -> io::Result<()>;
    /// A write made under the lock: it happens only while this holder still has the lock.
    fn put(&self, key: &str, value: &[u8], mode: u32) -> io::Result<()>;
}

/// Checks a key: relative, `/`-separated, no empty, `.` or `..` segments.
pub fn check_key(key: &str) -> io::Result<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{key:?} is not a store key (a relative path without . or ..)"),
        ));
    }
    Ok(())
}

/// Keys that belong to one process, never shared or migrated: its pid and admin address,
/// temp files and locks, and zone journals (`zones/<zone>journal`, folded into the master files
/// before a migration).
pub fn is_local_only(key: &str) -> bool {
    matches!(key, "portico.pid" | "admin.url")
        || key.contains("/.")
        || key.starts_with('.')
        || (key.starts_with("zones/") && (key.ends_with(".journal") || key.contains(".journal.")))
}

/// Copies every key of `from` that `keep` keeps into `to` (same bytes; private keys keep mode
/// 0600 on disk). Returns how many keys were copied.
pub fn migrate(from: &dyn Store, to: &dyn Store, keep: impl Fn(&str) -> bool) -> io::Result<usize> {
    let mut n = 0;
    for key in from.list("")? {
        if is_local_only(&key) || !keep(&key) {
            continue;
        }
        let Some(value) = from.get(&key)? else {
            continue;
        };
        to.put(&key, &value, mode_for(&key))?;
        n += 1;
    }
    Ok(n)
}

/// The file mode a key gets on disk: 0600 for secrets (keys, tokens, accounts), else 0644.
pub fn mode_for(key: &str) -> u32 {
    let secret = key.ends_with(".key")
        || key.contains("privkey")
        || key.ends_with("admin.token")
        || key.starts_with("acme/")
        || key == "runtime.toml";
    if secret {
        0o600
    } else {
        0o644
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_relative_paths_without_dot_segments() {
        for ok in [
            "a",
            "certificates/renewal/app.toml",
            "zones/example.com.zone",
        ] {
            assert!(check_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/etc/passwd", "a//b", "a/../b", "./a", "a/"] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
        assert_eq!(mode_for("certificates/archive/app/privkey3.pem"), 0o600);
        assert_eq!(mode_for("ca/root.key"), 0o600);
        assert_eq!(mode_for("certificates/archive/app/cert3.pem"), 0o644);
        assert!(is_local_only("portico.pid") && is_local_only("zones/.x.tmp.1"));
        assert!(is_local_only("zones/example.com.journal"));
        assert!(!is_local_only("zones/example.com.zone"));
    }
}
