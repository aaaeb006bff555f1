//! The internal issuer: a local CA (root + intermediate, made on first use, keys 0600) for names
//! no public CA signs (`localhost`, `*.test`, `*.internal`, private IPs), as Caddy's internal
//! issuer does. `portico certs trust` prints where the root is and how to trust it.

use std::path::{Path, PathBuf};

use portico_config::files::write_atomic;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};

use crate::storage::Issued;

/// Leaf lifetime: short, renewed when a third is left.
pub const LEAF_DAYS: i64 = 7;

pub struct InternalCa {
    dir: PathBuf,
}

struct Loaded {
    cert: rcgen::Certificate,
    key: KeyPair,
    pem: String,
}

impl InternalCa {
    /// The CA kept in `<state_dir>/ca/`.
    pub fn new(state_dir: &Path) -> Self {
        InternalCa {
            dir: state_dir.join("ca"),
        }
    }

    pub fn root_path(&self) -> PathBuf {
        self.dir.join("root.pem")
    }

    /// Issues a leaf for `domains` (DNS names or IP addresses), signed by the intermediate.
    pub fn issue(
        &self,
        domains: &[String],
        key_type: crate::keys::KeyType,
        now: std::time::SystemTime,
    ) -> Result<Issued, String> {
        let (_, inter) = self.ensure()?;
        let key = key_type.generate()?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = domains
            .iter()
            .map(|d| match d.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => d
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e| format!("{d:?}: {e}")),
            })
            .collect::<Result<_, _>>()?;
        if let Some(first) = domains.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.clone());
        }
        let now = time::OffsetDateTime::from(now);
        params.not_before = now - std::time::Duration::from_secs(300);
        params.not_after = now + std::time::Duration::from_secs(LEAF_DAYS as u64 * 86_400);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &inter.cert, &inter.key)
            .map_err(|e| e.to_string())?;
        Ok(Issued {
            cert: cert.pem(),
            chain: inter.pem,
            key: key.serialize_pem(),
        })
    }

    /// Loads the CA, creating root and intermediate on first use.
    fn ensure(&self) -> Result<(Loaded, Loaded), String> {
        let io = |e: std::io::Error| format!("internal CA in {}: {e}", self.dir.display());
        if !self.root_path().exists() {
            std::fs::create_dir_all(&self.dir).map_err(io)?;
            let root_key = KeyPair::generate().map_err(|e| e.to_string())?;
            let mut root = ca_params("Portico Local Root CA", 10 * 365);
            root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let root_cert = root.self_signed(&root_key).map_err(|e| e.to_string())?;
            let inter_key = KeyPair::generate().map_err(|e| e.to_string())?;
            let mut inter = ca_params("Portico Local Intermediate CA", 365);
            inter.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            let inter_cert = inter
                .signed_by(&inter_key, &root_cert, &root_key)
                .map_err(|e| e.to_string())?;
            write_atomic(
                &self.dir.join("root.key"),
                root_key.serialize_pem().as_bytes(),
                0o600,
            )
            .map_err(io)?;
            write_atomic(
                &self.dir.join("intermediate.key"),
                inter_key.serialize_pem().as_bytes(),
                0o600,
            )
            .map_err(io)?;
            write_atomic(
                &self.dir.join("intermediate.pem"),
                inter_cert.pem().as_bytes(),
                0o644,
            )
            .map_err(io)?;
            // The root last: its presence says the CA is complete.
            write_atomic(&self.root_path(), root_cert.pem().as_bytes(), 0o644).map_err(io)?;
            tracing::info!(root = %self.root_path().display(), "internal CA created");
        }
        Ok((self.load("root")?, self.load("intermediate")?))
    }

    fn load(&self, which: &str) -> Result<Loaded, String> {
        let read = |f: String| {
            std::fs::read_to_string(self.dir.join(&f))
                .map_err(|e| format!("cannot read {}: {e}", self.dir.join(&f).display()))
        };
        let pem = read(format!("{which}.pem"))?;
        let key = KeyPair::from_pem(&read(format!("{which}.key"))?).map_err(|e| e.to_string())?;
        // rcgen signs with an issuer described by params and key; rebuilding it from the stored
        // certificate keeps the issuer name and key identifier of the certificate we serve.
        let params = CertificateParams::from_ca_cert_pem(&pem).map_err(|e| e.to_string())?;
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        Ok(Loaded { cert, key, pem })
    }
}

fn ca_params(cn: &str, days: u64) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationName, "Portico");
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time_now();
    p.not_before = now - std::time::Duration::from_secs(300);
    p.not_after = now + std::time::Duration::from_secs(days * 86_400);
    p
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}
