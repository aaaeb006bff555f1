//! The state directory as a store: one file per key, written atomically (temp, fsync, rename),
//! private keys 0600. certbot's `live/` links are kept as links: a `live/<name>/X.pem` put with the
//! bytes of an `archive/<name>/XN.pem` becomes a relative symlink to it, as certbot makes them.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{check_key, Lock, Store};

#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    /// For `certificates/live/<name>/<base>.pem`: the newest archive file with these bytes.
    fn archive_twin(&self, key: &str, value: &[u8]) -> Option<String> {
        let rest = key.strip_prefix("certificates/live/")?;
        let (name, file) = rest.split_once('/')?;
        let base = file.strip_suffix(".pem")?;
        let dir = self.root.join("certificates/archive").join(name);
        let mut best: Option<(u32, String)> = None;
        for e in std::fs::read_dir(&dir).ok()?.flatten() {
            let f = e.file_name().to_string_lossy().to_string();
            let Some(n) = f
                .strip_prefix(base)
                .and_then(|r| r.strip_suffix(".pem"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if best.as_ref().is_some_and(|(b, _)| *b >= n) {
                continue;
            }
            if std::fs::read(e.path()).ok().as_deref() == Some(value) {
                best = Some((n, f));
            }
        }
        best.map(|(_, f)| format!("../../archive/{name}/{f}"))
    }
}

impl Store for LocalDir {
    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(key)?) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn put(&self, key: &str, value: &[u8], mode: u32) -> io::Result<()> {
        let path = self.path(key)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if let Some(target) = self.archive_twin(key, value) {
            let tmp = path.with_file_name(format!(
                ".{}.link.{}",
                path.file_name().and_then(|n| n.to_str()).unwrap_or("x"),
                std::process::id()
            ));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&target, &tmp)?;
            return std::fs::rename(&tmp, &path);
        }
        portico_config::files::write_atomic(&path, value, mode)
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        let start = if prefix.is_empty() {
            self.root.clone()
        } else {
            self.path(prefix.trim_end_matches('/'))?
        };
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                    // The prefix names a file.
                    if let Ok(rel) = dir.strip_prefix(&self.root) {
                        out.push(rel.to_string_lossy().to_string());
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with('.') {
                    continue; // temp files and lock files
                }
                let p = e.path();
                // Follows symlinks: certbot's live/ links list as the files they point at.
                let meta = std::fs::metadata(&p)?;
                if meta.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(&self.root) {
                    out.push(rel.to_string_lossy().to_string());
                }
            }
        }
        out.retain(|k| k.starts_with(prefix));
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path(key)?) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn try_lock(&self, name: &str, ttl: Duration) -> io::Result<Option<Box<dyn Lock>>> {
        check_key(name)?;
        let dir = self.root.join(".locks");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(name.replace('/', "_"));
        let now = now_ms();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let expires: u64 = text.trim().parse().unwrap_or(0);
                if expires > now {
                    return Ok(None);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let lock = LocalLock {
            path,
            ttl,
            dir: self.clone(),
        };
        lock.keep_alive()?;
        Ok(Some(Box::new(lock)))
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn put_if(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        mode: u32,
    ) -> io::Result<bool> {
        // One process writes a state directory, and its writers hold their own locks.
        if self.get(key)?.as_deref() != expected {
            return Ok(false);
        }
        self.put(key, value, mode)?;
        Ok(true)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A lock file holding its expiry; one process uses a state directory, so this only keeps a
/// restarted process from racing its predecessor's order.
struct LocalLock {
    path: PathBuf,
    ttl: Duration,
    dir: LocalDir,
}

impl Lock for LocalLock {
    fn keep_alive(&self) -> io::Result<()> {
        let expires = now_ms() + self.ttl.as_millis() as u64;
        portico_config::files::write_atomic(&self.path, expires.to_string().as_bytes(), 0o644)
    }

    fn put(&self, key: &str, value: &[u8], mode: u32) -> io::Result<()> {
        self.dir.put(key, value, mode)
    }
}

impl Drop for LocalLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("portico-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn put_get_list_delete_and_certbot_links() {
        let root = dir("local");
        let s = LocalDir::new(&root);
        s.put("certificates/archive/app/cert1.pem", b"one", 0o644)
            .unwrap();
        s.put("certificates/archive/app/privkey1.pem", b"k", 0o600)
            .unwrap();
        s.put("certificates/live/app/cert.pem", b"one", 0o644)
            .unwrap();
        s.put("zones/example.com.zone", b"zone", 0o644).unwrap();
        let link = std::fs::read_link(root.join("certificates/live/app/cert.pem")).unwrap();
        assert_eq!(link, PathBuf::from("../../archive/app/cert1.pem"));
        assert_eq!(
            s.get("certificates/live/app/cert.pem").unwrap().unwrap(),
            b"one"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.join("certificates/archive/app/privkey1.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            s.list("certificates/").unwrap(),
            vec![
                "certificates/archive/app/cert1.pem",
                "certificates/archive/app/privkey1.pem",
                "certificates/live/app/cert.pem"
            ]
        );
        assert_eq!(s.list("").unwrap().len(), 4);
        s.delete("zones/example.com.zone").unwrap();
        assert_eq!(s.get("zones/example.com.zone").unwrap(), None);
        assert!(s.put("../escape", b"x", 0o644).is_err());

        let held = s.try_lock("order-app", Duration::from_secs(60)).unwrap();
        assert!(held.is_some());
        assert!(s
            .try_lock("order-app", Duration::from_secs(60))
            .unwrap()
            .is_none());
        drop(held);
        assert!(s
            .try_lock("order-app", Duration::from_secs(60))
            .unwrap()
            .is_some());
        assert!(!s.list("").unwrap().iter().any(|k| k.contains("lock")));
        let _ = std::fs::remove_dir_all(&root);
    }
}
