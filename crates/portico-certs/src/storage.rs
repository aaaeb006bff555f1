//! Certificates on disk in certbot's layout, so that other programs read them where they expect:
//!
//! ```text
//! certificates/archive/<name>/{cert,chain,fullchain,privkey}N.pem   every version, numbered
//! certificates/live/<name>/{cert,chain,fullchain,privkey}.pem      symlinks to the newest
//! certificates/renewal/<name>.toml                                 what was asked and its status
//! ```
//! Every file is written atomically (temp, fsync, rename), private keys 0600; the live links are
//! replaced by renaming a new link over the old one, so a reader never sees a half-updated set.

use std::path::{Path, PathBuf};

use portico_config::files::write_atomic;
use serde::{Deserialize, Serialize};

/// What `renewal/<name>.toml` records, as ACM shows a certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub domains: Vec<String>,
    pub issuer: String,
    /// `PENDING_VALIDATION`, `ISSUED`, `RENEWING`, `FAILED`, `EXPIRED`, `REVOKED` (until replaced).
    pub status: String,
    pub not_after: Option<String>,
    pub renew_after: Option<String>,
    pub version: u32,
    pub last_error: Option<String>,
    /// Failed attempts so far (each sets `last_error`), so that a failure with the same text
    /// as the one before is still seen as new (`portico certs renew` waits on it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u64,
    /// The CA's suggested renewal window (RFC 9773), when it offers one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_window: Option<String>,
    /// Not before this time: the CA's `Retry-After` or the backoff after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<String>,
    /// The steps of the order in progress (order created, record published, validating…).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub progress: Vec<String>,
    /// The ACME profile the certificate was issued under, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The outcome of the last `portico certs renew --dry-run` ("ok at …" or the error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What `portico certs renew` asks the running manager for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewRequest {
    /// Renew now, whatever the schedule says.
    Renew,
    /// Order a certificate and discard it: proves the whole path works, stores nothing.
    DryRun,
    /// Revoke the current certificate, then replace it at once.
    Revoke,
}

#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

/// A certificate as an issuer hands it over.
pub struct Issued {
    /// The leaf, PEM.
    pub cert: String,
    /// The intermediates, PEM (may be empty).
    pub chain: String,
    pub key: String,
}

impl Storage {
    /// Certificates under `<state_dir>/certificates`.
    pub fn new(state_dir: &Path) -> Self {
        Storage {
            root: state_dir.join("certificates"),
        }
    }

    pub fn live(&self, name: &str) -> PathBuf {
        self.root.join("live").join(name)
    }

    fn archive(&self, name: &str) -> PathBuf {
        self.root.join("archive").join(name)
    }

    fn renewal(&self, name: &str) -> PathBuf {
        self.root.join("renewal").join(format!("{name}.toml"))
    }

    /// Writes a new version and points `live/<name>/` at it; returns the version number.
    pub fn store(&self, name: &str, issued: &Issued) -> std::io::Result<u32> {
        let archive = self.archive(name);
        let live = self.live(name);
        std::fs::create_dir_all(&archive)?;
        std::fs::create_dir_all(&live)?;
        let n = self.next_version(name)?;
        let fullchain = format!("{}{}", ensure_newline(&issued.cert), issued.chain);
        let files = [
            ("cert", issued.cert.as_str(), 0o644),
            ("chain", issued.chain.as_str(), 0o644),
            ("fullchain", fullchain.as_str(), 0o644),
            ("privkey", issued.key.as_str(), 0o600),
        ];
        for (kind, content, mode) in files {
            write_atomic(
                &archive.join(format!("{kind}{n}.pem")),
                content.as_bytes(),
                mode,
            )?;
        }
        for (kind, _, _) in files {
            let target = Path::new("../../archive")
                .join(name)
                .join(format!("{kind}{n}.pem"));
            let tmp = live.join(format!(".{kind}.pem.new"));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&target, &tmp)?;
            std::fs::rename(&tmp, live.join(format!("{kind}.pem")))?;
        }
        std::fs::File::open(&live)?.sync_all()?;
        Ok(n)
    }

    fn next_version(&self, name: &str) -> std::io::Result<u32> {
        let mut max = 0;
        if let Ok(entries) = std::fs::read_dir(self.archive(name)) {
            for e in entries.flatten() {
                let file = e.file_name();
                let f = file.to_string_lossy();
                if let Some(n) = f.strip_prefix("cert").and_then(|r| r.strip_suffix(".pem")) {
                    max = max.max(n.parse().unwrap_or(0));
                }
            }
        }
        Ok(max + 1)
    }

    /// The live fullchain and key, if this lineage has been issued.
    pub fn load_live(&self, name: &str) -> Option<(Vec<u8>, Vec<u8>)> {
        let live = self.live(name);
        let chain = std::fs::read(live.join("fullchain.pem")).ok()?;
        let key = std::fs::read(live.join("privkey.pem")).ok()?;
        Some((chain, key))
    }

    pub(crate) fn trigger(&self, name: &str) -> PathBuf {
        self.root.join("renewal").join(format!("{name}.renew"))
    }

    /// Leaves a renewal request for the manager (written by `portico certs renew`).
    pub fn request_renewal(&self, name: &str, what: RenewRequest) -> std::io::Result<()> {
        let text = match what {
            RenewRequest::Renew => "renew\n",
            RenewRequest::DryRun => "dry-run\n",
            RenewRequest::Revoke => "revoke\n",
        };
        std::fs::create_dir_all(self.root.join("renewal"))?;
        write_atomic(&self.trigger(name), text.as_bytes(), 0o644)
    }

    /// Takes (reads and removes) a pending renewal request.
    pub fn take_renewal_request(&self, name: &str) -> Option<RenewRequest> {
        let path = self.trigger(name);
        let text = std::fs::read_to_string(&path).ok()?;
        let _ = std::fs::remove_file(&path);
        Some(match text.trim() {
            "dry-run" => RenewRequest::DryRun,
            "revoke" => RenewRequest::Revoke,
            _ => RenewRequest::Renew,
        })
    }

    pub fn record(&self, name: &str) -> Option<Record> {
        let text = std::fs::read_to_string(self.renewal(name)).ok()?;
        toml::from_str(&text).ok()
    }

    pub fn save_record(&self, r: &Record) -> std::io::Result<()> {
        let path = self.renewal(&r.name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = toml::to_string(r).map_err(std::io::Error::other)?;
        write_atomic(&path, text.as_bytes(), 0o644)
    }

    /// Every recorded certificate, by name.
    pub fn records(&self) -> Vec<Record> {
        let mut out: Vec<Record> = std::fs::read_dir(self.root.join("renewal"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e
                    .file_name()
                    .to_string_lossy()
                    .strip_suffix(".toml")?
                    .to_string();
                self.record(&name)
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

fn ensure_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn certbot_layout_with_numbered_versions() {
        let dir = std::env::temp_dir().join(format!("portico-storage-{}", std::process::id()));
        let s = Storage::new(&dir);
        let issued = |v: &str| Issued {
            cert: format!("CERT {v}"),
            chain: format!("CHAIN {v}\n"),
            key: format!("KEY {v}"),
        };
        assert_eq!(s.store("api", &issued("1")).unwrap(), 1);
        assert_eq!(s.store("api", &issued("2")).unwrap(), 2);
        let live = s.live("api");
        assert_eq!(
            std::fs::read_to_string(live.join("fullchain.pem")).unwrap(),
            "CERT 2\nCHAIN 2\n"
        );
        let link = std::fs::read_link(live.join("privkey.pem")).unwrap();
        assert_eq!(link, Path::new("../../archive/api/privkey2.pem"));
        let mode = std::fs::metadata(live.join("privkey.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert!(dir.join("certificates/archive/api/cert1.pem").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
