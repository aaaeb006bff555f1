//! Before an order is placed: can the challenge pass? For HTTP-01, resolve each name as the CA
//! will and fetch a probe token through every address it finds, on the port the CA uses. A
//! misconfiguration (no record, a record pointing elsewhere, the port closed) fails fast with the
//! reason, instead of spending a CA's rate limit on a failed validation.
//!
//! For TLS-ALPN-01 the answer depends on the CA's challenge, so the check runs after the order
//! is created and before the challenge is told ready: each address of the name must answer
//! `acme-tls/1` with the digest. In a cluster it also waits (briefly) until the node the name
//! points at has mirrored the challenge from the shared store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::challenge::{Http01Tokens, NameLookup};

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a CA connects for `name`: the address itself for an IP identifier (or its reverse
/// name, as TLS-ALPN-01 names it), else the name's A and AAAA records as the CA resolves them.
async fn addresses(name: &str, lookup: &dyn NameLookup) -> Result<Vec<std::net::IpAddr>, String> {
    if let Some(ip) = name
        .parse::<std::net::IpAddr>()
        .ok()
        .or_else(|| crate::challenge::ip_of_reverse(name))
    {
        return Ok(vec![ip]);
    }
    match lookup.addrs(name).await {
        Ok(a) if !a.is_empty() => Ok(a),
        Ok(_) => Err(format!("self-check: {name} has no A or AAAA record (NoRecords): add one pointing at this server")),
        Err(e) => Err(format!("self-check: cannot resolve {name}: {e}")),
    }
}

/// Checks every name; the first failure, as a sentence naming the record and the fix.
pub async fn http01(
    domains: &[String],
    lookup: &dyn NameLookup,
    tokens: &Http01Tokens,
    port: u16,
) -> Result<(), String> {
    let token = probe_token();
    let value = format!("portico-self-check-{token}");
    tokens.insert(&token, &value);
    let mut result = Ok(());
    'names: for d in domains {
        let addrs = match addresses(d, lookup).await {
            Ok(a) => a,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        for ip in addrs {
            if let Err(e) = fetch(SocketAddr::new(ip, port), d, &token, &value).await {
                let kind = if ip.is_ipv4() { "A" } else { "AAAA" };
                result = Err(format!(
                    "self-check: {d} has the {kind} record {ip}, and http://{d}:{port}/.well-known/acme-challenge/ on {ip} {e}; \
                     a CA would fail the same way: point the {kind} record at this server or open port {port}"
                ));
                break 'names;
            }
        }
    }
    tokens.remove(&token);
    result
}

async fn fetch(addr: SocketAddr, host: &str, token: &str, want: &str) -> Result<(), String> {
    let go = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("is unreachable ({e})"))?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("does not speak HTTP ({e})"))?;
        tokio::spawn(conn);
        let req = http::Request::get(format!("/.well-known/acme-challenge/{token}"))
            .header(http::header::HOST, host)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let res = tx
            .send_request(req)
            .await
            .map_err(|e| format!("did not answer ({e})"))?;
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if status == http::StatusCode::OK && body.as_ref() == want.as_bytes() {
            Ok(())
        } else {
            Err(format!(
                "answered {status} without the token (another server answers there)"
            ))
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, go)
        .await
        .unwrap_or_else(|_| Err(format!("did not answer within {PROBE_TIMEOUT:?}")))
}

fn probe_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}{:x}", std::process::id())
}

/// How long a TLS-ALPN-01 challenge may take to be answered through every address (other
/// nodes mirror it from the shared store within milliseconds when all is well).
const TLS_ALPN01_SETTLE: Duration = Duration::from_secs(10);

/// Waits until every address of `domain` answers `acme-tls/1` on `port` with a certificate
/// carrying `digest` (RFC 8737), as the CA will check; the reason when one does not in time.
pub async fn tls_alpn01(
    domain: &str,
    lookup: &dyn NameLookup,
    port: u16,
    digest: &[u8],
) -> Result<(), String> {
    let addrs = addresses(domain, lookup).await?;
    let deadline = tokio::time::Instant::now() + TLS_ALPN01_SETTLE;
    for ip in addrs {
        let addr = SocketAddr::new(ip, port);
        loop {
            let last = match alpn_probe(addr, domain, digest).await {
                Ok(()) => break,
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                let kind = if ip.is_ipv4() { "A" } else { "AAAA" };
                return Err(format!(
                    "self-check: {domain} has the {kind} record {ip}, and {ip}:{port} {last} for acme-tls/1; \
                     a CA would fail the same way: point the {kind} record at this server or open port {port}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

async fn alpn_probe(addr: SocketAddr, domain: &str, digest: &[u8]) -> Result<(), String> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyCertificate))
    .with_no_client_auth();
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let name = rustls_pki_types::ServerName::try_from(domain.to_string())
        .map_err(|e| format!("is not a name for TLS ({e})"))?;
    let go = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("is unreachable ({e})"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("refused the TLS handshake ({e})"))?;
        let (_, conn) = tls.get_ref();
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("sent no certificate")?;
        // The acmeIdentifier extension holds the 32-byte digest; no other part of a
        // certificate carries those exact bytes by chance.
        if leaf.as_ref().windows(digest.len()).any(|w| w == digest) {
            Ok(())
        } else {
            Err("answers without this challenge's digest (another server, or a node that has not got the challenge)".to_string())
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, go)
        .await
        .unwrap_or_else(|_| Err(format!("did not answer within {PROBE_TIMEOUT:?}")))
}

/// Accepts any certificate: the probe looks at the challenge certificate itself (self-signed by
/// design), as the CA does; nothing is sent over the connection.
#[derive(Debug)]
struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls_pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls_pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
