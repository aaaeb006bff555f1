//! TLS for HTTPS listeners: certificates from PEM files, the SNI cert resolver, named policies.

pub mod resolver;

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerSessionMemoryCache;
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::TlsPolicy;
pub use resolver::{CertStore, ListenerResolver, ServedCert, ACME_TLS_ALPN};

/// Why a certificate could not be loaded; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: String },
    #[error("{path}: unsupported private key: {detail}")]
    BadKey { path: String, detail: String },
    #[error("{path}: certificate cannot be parsed: {detail}")]
    BadCertificate { path: String, detail: String },
    #[error("the private key in {key_path} does not belong to the certificate in {cert_path}")]
    Mismatch { cert_path: String, key_path: String },
}

/// Loads a certificate chain and its key from PEM files (certbot's `fullchain.pem` and
/// `privkey.pem` work as they are).
pub fn load_pem_files(cert_path: &Path, key_path: &Path) -> Result<ServedCert, CertError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| CertError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let (cert_pem, key_pem) = (read(cert_path)?, read(key_path)?);
    served_cert_from_pem(
        &cert_pem,
        &key_pem,
        &cert_path.display().to_string(),
        &key_path.display().to_string(),
    )
}

/// Builds a [`ServedCert`] from PEM bytes; `cert_name`/`key_name` only label errors.
pub fn served_cert_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_name: &str,
    key_name: &str,
) -> Result<ServedCert, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    let leaf = chain.first().ok_or_else(|| CertError::NoCertificate {
        path: cert_name.into(),
    })?;
    let names = dns_names(leaf).map_err(|detail| CertError::BadCertificate {
        path: cert_name.into(),
        detail,
    })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| CertError::NoKey {
        path: key_name.into(),
    })?;
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(|e| {
        CertError::BadKey {
            path: key_name.into(),
            detail: e.to_string(),
        }
    })?;
    let certified = CertifiedKey::new(chain, signer);
    if certified.keys_match().is_err() {
        return Err(CertError::Mismatch {
            cert_path: cert_name.into(),
            key_path: key_name.into(),
        });
    }
    Ok(ServedCert {
        key: Arc::new(certified),
        names,
    })
}

/// The DNS names of a certificate's subjectAltName (falling back to the subject CN).
fn dns_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for gn in &san.value.general_names {
            match gn {
                GeneralName::DNSName(n) => names.push(n.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

/// The listeners' cryptography: aws-lc-rs, which measured faster than ring here for handshakes
/// and bulk encryption (docs/benchmarks.md), offering the post-quantum hybrid X25519MLKEM768
/// first (as Caddy and current browsers do) with X25519 and the NIST curves after it.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A listener's rustls configuration: the policy's versions, ALPN h2 + http/1.1, session
/// resumption by tickets and by ID, and certificates from `resolver`.
pub fn server_config(
    policy: TlsPolicy,
    resolver: Arc<ListenerResolver>,
    client_auth: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Arc<ServerConfig> {
    let provider = provider();
    let versions: &[&'static rustls::SupportedProtocolVersion] = match policy {
        TlsPolicy::Modern => &[&rustls::version::TLS13],
        // rustls's TLS 1.2 suites are exactly ECDHE + AES-GCM / ChaCha20-Poly1305: Mozilla's
        // intermediate list without the legacy CBC and DHE suites it still tolerates.
        TlsPolicy::Intermediate => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("aws-lc-rs supports TLS 1.2 and 1.3");
    let builder = match client_auth {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![
        b"h2".to_vec(),
        b"http/1.1".to_vec(),
        resolver::ACME_TLS_ALPN.to_vec(),
    ];
    config.session_storage = ServerSessionMemoryCache::new(16 * 1024);
    match rustls::crypto::aws_lc_rs::Ticketer::new() {
        Ok(t) => config.ticketer = t,
        Err(e) => tracing::warn!(error = %e, "TLS session tickets unavailable"),
    }
    Arc::new(config)
}

/// The verifier of client certificates for mutual TLS: chains to one of the CA certificates in
/// `ca_file`; `optional` also lets clients without a certificate in.
pub fn client_verifier(
    ca_file: &Path,
    optional: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let pem =
        std::fs::read(ca_file).map_err(|e| format!("cannot read {}: {e}", ca_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{}: {e}", ca_file.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a CA certificate: {e}", ca_file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no PEM certificate", ca_file.display()));
    }
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder.build().map_err(|e| e.to_string())
}

/// What targets are told of a verified client certificate, as headers (ALB's
/// `X-Amzn-Mtls-Clientcert-*`, with Portico's names). Client-sent headers of these names are
/// removed from every request, so that a target can trust them.
pub const CLIENT_CERT_PREFIX: &str = "x-portico-client-cert-";

/// What JavaScript's `encodeURIComponent` escapes (ALB URL-encodes the leaf PEM the same way).
const URI_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'!')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// The headers for the client certificate `der`: subject, issuer, serial, SHA-256 fingerprint,
/// validity and the URL-encoded PEM of the leaf.
pub fn client_cert_headers(der: &CertificateDer<'_>) -> Vec<(http::HeaderName, http::HeaderValue)> {
    use x509_parser::prelude::*;
    let mut out = Vec::new();
    let mut push = |name: &'static str, value: String| {
        if let Ok(v) = http::HeaderValue::from_str(&value) {
            out.push((http::HeaderName::from_static(name), v));
        }
    };
    let fingerprint = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref());
    push(
        "x-portico-client-cert-fingerprint",
        fingerprint
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    );
    if let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) {
        push("x-portico-client-cert-subject", cert.subject().to_string());
        push("x-portico-client-cert-issuer", cert.issuer().to_string());
        push(
            "x-portico-client-cert-serial",
            cert.raw_serial_as_string().replace(':', ""),
        );
        push(
            "x-portico-client-cert-validity",
            format!(
                "NotBefore={};NotAfter={}",
                cert.validity().not_before.to_rfc2822().unwrap_or_default(),
                cert.validity().not_after.to_rfc2822().unwrap_or_default()
            ),
        );
    }
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    push(
        "x-portico-client-cert-leaf",
        percent_encoding::utf8_percent_encode(&pem, URI_COMPONENT).to_string(),
    );
    out
}
