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
    /// Keys changed under `prefix` after `revision`, with the store's revision now; `None` when
    /// the store has no change feed (a state directory has one writer: the process itself).
    fn updates_since(
        &self,
        _prefix: &str,
        _revision: u64,
    ) -> io::Result<Option<(u64, Vec<Entry>)>> {
        Ok(None)
    }
    /// A signal that fires (the value grows) soon after another writer changes a key under one
    /// of `prefixes`, so a follower need not poll to hear of it; `None` when the store has no
    /// change feed. A signal says only "look again": [`Store::updates_since`] says what changed.
    fn watch(&self, _prefixes: &[&str]) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

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

/// Copies every key of `from` into `to` (same bytes; private keys keep mode 0600 on disk).
/// Returns how many keys were copied.
pub fn migrate(from: &dyn Store, to: &dyn Store) -> io::Result<usize> {
    let mut n = 0;
    for key in from.list("")? {
        if is_local_only(&key) {
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
