//! certbot's files, read only: a lineage (`renewal/<name>.conf`, the `live/<name>/` links into
//! `archive/<name>/`) and the ACME account it renews with (`accounts/<server>/directory/<id>/`),
//! for `portico certs import --certbot /etc/letsencrypt`.

use std::path::{Path, PathBuf};

/// One certbot lineage as Portico adopts it.
#[derive(Debug, Clone)]
pub struct Lineage {
    pub name: String,
    /// From the certificate's subjectAltName (certbot keeps no other list).
    pub domains: Vec<String>,
    /// Portico's challenge for certbot's authenticator (`webroot`, `standalone`, `nginx`,
    /// `apache` → http-01; `dns-*` → dns-01).
    pub challenge: &'static str,
    pub authenticator: String,
    /// The ACME directory it was issued from (`[renewalparams] server`).
    pub server: Option<String>,
    /// certbot's account id (`[renewalparams] account`).
    pub account: Option<String>,
    pub cert: String,
    pub chain: String,
    pub key: String,
}

/// Why a lineage cannot be adopted: the file and what is wrong.
#[derive(Debug)]
pub struct ImportError {
    pub file: PathBuf,
    pub message: String,
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

fn err(file: &Path, message: impl Into<String>) -> ImportError {
    ImportError {
        file: file.to_path_buf(),
        message: message.into(),
    }
}

/// `key = value` lines of a certbot renewal file, by section (`""` before the first).
fn parse_conf(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_string();
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// Every lineage under `dir` (certbot's config directory), by name.
pub fn lineages(dir: &Path) -> Result<Vec<Lineage>, ImportError> {
    let renewal = dir.join("renewal");
    let entries = std::fs::read_dir(&renewal).map_err(|e| {
        err(
            &renewal,
            format!(
                "cannot read: {e} (is this certbot's config directory, such as /etc/letsencrypt?)"
            ),
        )
    })?;
    let mut confs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    confs.sort();
    confs.iter().map(|c| lineage(dir, c)).collect()
}

fn lineage(dir: &Path, conf: &Path) -> Result<Lineage, ImportError> {
    let text = std::fs::read_to_string(conf).map_err(|e| err(conf, format!("cannot read: {e}")))?;
    let kv = parse_conf(&text);
    let get = |section: &str, key: &str| {
        kv.iter()
            .find(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.clone())
    };
    let name = conf
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| err(conf, "the file name is not a lineage name"))?
        .to_string();
    // Paths as certbot wrote them; relative ones (a moved config directory) from `dir`.
    let path = |key: &str, default: &str| {
        let p = PathBuf::from(get("", key).unwrap_or_else(|| default.to_string()));
        if p.is_absolute() && p.exists() {
            p
        } else {
            dir.join("live").join(&name).join(format!("{key}.pem"))
        }
    };
    let read =
        |p: PathBuf| std::fs::read_to_string(&p).map_err(|e| err(&p, format!("cannot read: {e}")));
    let cert = read(path("cert", ""))?;
    let chain = read(path("chain", "")).unwrap_or_default();
    let key = read(path("privkey", ""))?;
    let domains = san_names(&cert).map_err(|m| err(conf, m))?;
    let authenticator = get("renewalparams", "authenticator").unwrap_or_else(|| "unknown".into());
    let challenge = match authenticator.as_str() {
        a if a.starts_with("dns") => "dns-01",
        _ => "http-01",
    };
    Ok(Lineage {
        name,
        domains,
        challenge,
        authenticator,
        server: get("renewalparams", "server"),
        account: get("renewalparams", "account"),
        cert,
        chain,
        key,
    })
}

/// The DNS names and addresses a PEM certificate is for.
fn san_names(pem: &str) -> Result<Vec<String>, String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("cert.pem: {e}"))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| format!("cert.pem: {e}"))?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => out.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    out.extend(ip.map(|i| i.to_string()));
                }
                _ => {}
            }
        }
    }
    if out.is_empty() {
        return Err("cert.pem names no DNS name or address".into());
    }
    Ok(out)
}

/// What certbot's account for `lineage` is, as far as Portico can use it.
#[derive(Debug, PartialEq, Eq)]
pub enum AccountFit {
    /// Its directory is not the configured one.
    OtherDirectory(String),
    /// The account files are not there.
    Missing,
    /// The account's URL and private key (a JWK; `RSA` for every account certbot 2 makes).
    /// Portico's ACME client signs with ECDSA P-256 only, so an RSA account is adopted by
    /// rolling its key over (`AcmeIssuer::adopt_account`).
    Found { uri: String, key: serde_json::Value },
}

/// Whether certbot's account for `l` can be Portico's at `directory`.
pub fn account_fit(dir: &Path, l: &Lineage, directory: &str) -> AccountFit {
    let server = l.server.clone().unwrap_or_default();
    if server.trim_end_matches('/') != directory.trim_end_matches('/') {
        return AccountFit::OtherDirectory(server);
    }
    let Some(id) = &l.account else {
        return AccountFit::Missing;
    };
    // accounts/<host[:port]>/<path of the directory URL>/<id>/
    let rest = server.split("://").nth(1).unwrap_or("");
    let acct = dir
        .join("accounts")
        .join(rest.trim_end_matches('/'))
        .join(id);
    let key: Option<serde_json::Value> = std::fs::read_to_string(acct.join("private_key.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let regr: Option<serde_json::Value> = std::fs::read_to_string(acct.join("regr.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let (Some(key), Some(regr)) = (key, regr) else {
        return AccountFit::Missing;
    };
    match regr["uri"].as_str() {
        Some(uri) => AccountFit::Found {
            uri: uri.to_string(),
            key,
        },
        None => AccountFit::Missing,
    }
}
