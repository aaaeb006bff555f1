//! The HTTP side of what a CA does: fetch an HTTP-01 path on port 80 through every address,
//! following redirects the way Let's Encrypt follows them; and a TLS handshake on 443 that reports
//! the served certificate and why it is or is not valid.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REDIRECTS: usize = 10;

/// Where an HTTP-01 fetch ended.
#[derive(Debug)]
pub enum Fetch {
    /// The final response's status, and the URLs passed through.
    Answered { status: u16, hops: Vec<String> },
    /// A connection to `addr` failed (refused, timed out, reset).
    Unreachable { addr: SocketAddr, error: String },
    /// A redirect a CA will not follow.
    BadRedirect { location: String, reason: String },
}

/// Ports a CA uses; other ports only for test CAs such as Pebble.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub http: u16,
    pub https: u16,
}

/// Resolves a host named by a redirect.
pub type HostResolver<'a> = &'a (dyn Fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<IpAddr>> + Send>>
         + Sync);

/// GET `http://domain/<path>` through `ip`, then follow redirects (Let's Encrypt's rules: only
/// http and https, only the CA's two ports, names not IP addresses, at most 10 hops; the
/// certificate of an HTTPS hop is not checked).
pub async fn fetch_http01(
    domain: &str,
    ip: IpAddr,
    path: &str,
    ports: Ports,
    resolve: HostResolver<'_>,
) -> Fetch {
    let mut url = format!("http://{domain}{}{path}", port_suffix("http", ports.http));
    let mut host = domain.to_string();
    let mut addr = SocketAddr::new(ip, ports.http);
    let mut https = false;
    let mut hops = Vec::new();
    for _ in 0..=MAX_REDIRECTS {
        hops.push(url.clone());
        let uri: http::Uri = match url.parse() {
            Ok(u) => u,
            Err(e) => {
                return Fetch::BadRedirect {
                    location: url,
                    reason: e.to_string(),
                }
            }
        };
        let pq = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let res = tokio::time::timeout(TIMEOUT, get(addr, &host, &pq, https)).await;
        let (status, location) = match res {
            Err(_) => {
                return Fetch::Unreachable {
                    addr,
                    error: format!("no response within {TIMEOUT:?}"),
                }
            }
            Ok(Err(e)) => return Fetch::Unreachable { addr, error: e },
            Ok(Ok(r)) => r,
        };
        let Some(location) = location.filter(|_| (300..400).contains(&status)) else {
            return Fetch::Answered { status, hops };
        };
        // Resolve the Location against the current URL.
        let next = if location.starts_with('/') {
            let scheme = if https { "https" } else { "http" };
            let port = addr.port();
            format!("{scheme}://{host}{}{location}", port_suffix(scheme, port))
        } else {
            location.clone()
        };
        let nu: http::Uri = match next.parse() {
            Ok(u) => u,
            Err(e) => {
                return Fetch::BadRedirect {
                    location,
                    reason: format!("not a URL: {e}"),
                }
            }
        };
        let scheme = nu.scheme_str().unwrap_or("");
        let port = nu.port_u16();
        let (ok_port, is_https) = match scheme {
            "http" => (port.unwrap_or(80) == ports.http, false),
            "https" => (port.unwrap_or(443) == ports.https, true),
            other => {
                return Fetch::BadRedirect {
                    location,
                    reason: format!("scheme {other:?}: a CA follows only http and https"),
                }
            }
        };
        if !ok_port {
            return Fetch::BadRedirect {
                location,
                reason: format!(
                    "port {}: a CA connects only to {} (http) and {} (https)",
                    port.unwrap_or(0),
                    ports.http,
                    ports.https
                ),
            };
        }
        let h = nu.host().unwrap_or("").trim_matches(['[', ']']).to_string();
        if h.parse::<IpAddr>().is_ok() {
            return Fetch::BadRedirect {
                location,
                reason: "redirects to an IP address are not followed".into(),
            };
        }
        let ip = if h.eq_ignore_ascii_case(&host) {
            addr.ip()
        } else {
            match resolve(h.clone()).await {
                Some(ip) => ip,
                None => {
                    return Fetch::BadRedirect {
                        location,
                        reason: format!("{h} does not resolve"),
                    }
                }
            }
        };
        host = h;
        https = is_https;
        addr = SocketAddr::new(ip, if is_https { ports.https } else { ports.http });
        url = next;
    }
    Fetch::BadRedirect {
        location: url,
        reason: format!("more than {MAX_REDIRECTS} redirects"),
    }
}

fn port_suffix(scheme: &str, port: u16) -> String {
    match (scheme, port) {
        ("http", 80) | ("https", 443) => String::new(),
        _ => format!(":{port}"),
    }
}

/// One GET; returns the status and the Location header. The body is read up to 64 KiB.
async fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    https: bool,
) -> Result<(u16, Option<String>), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let req = http::Request::get(path)
        .header("host", host)
        .header(
            "user-agent",
            "portico-doctor (like an ACME CA's HTTP-01 validation)",
        )
        .header("accept", "*/*")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let res = if https {
        let config = tls_config(Arc::new(AcceptAny), vec![b"http/1.1".to_vec()]);
        let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        send(TokioIo::new(tls), req).await?
    } else {
        send(TokioIo::new(tcp), req).await?
    };
    Ok(res)
}

async fn send<T>(io: T, req: http::Request<Empty<Bytes>>) -> Result<(u16, Option<String>), String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let res = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let location = res
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .map(str::to_string);
    let _ = Limited::new(res.into_body(), 64 * 1024).collect().await;
    Ok((status, location))
}

fn tls_config(
    verifier: Arc<dyn ServerCertVerifier>,
    alpn: Vec<Vec<u8>>,
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    c.alpn_protocols = alpn;
    Arc::new(c)
}

/// What the HTTPS listener served.
#[derive(Debug)]
pub struct Served {
    pub leaf: Vec<u8>,
    /// `Ok` when the chain is valid for the name now; else rustls' reason.
    pub verdict: Result<(), rustls::Error>,
    pub alpn: Option<String>,
    pub version: String,
}

/// A TLS handshake with SNI `domain` and ALPN h2/http1.1, verifying against `roots`. The
/// handshake is allowed to complete whatever the verdict, so the report can say what is wrong.
pub async fn handshake(
    domain: &str,
    addr: SocketAddr,
    roots: Arc<rustls::RootCertStore>,
) -> Result<Served, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| e.to_string())?;
    let recorder = Arc::new(Recorder {
        inner,
        seen: Mutex::new(None),
    });
    let config = tls_config(recorder.clone(), vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    let name = ServerName::try_from(domain.to_string()).map_err(|e| e.to_string())?;
    let work = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))
    };
    let tls = tokio::time::timeout(TIMEOUT, work)
        .await
        .map_err(|_| format!("no TLS handshake within {TIMEOUT:?}"))??;
    let (_, conn) = tls.get_ref();
    let alpn = conn
        .alpn_protocol()
        .map(|a| String::from_utf8_lossy(a).into_owned());
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_string(),
        other => format!("{other:?}"),
    };
    let (leaf, verdict) = recorder
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .ok_or("the server sent no certificate")?;
    Ok(Served {
        leaf,
        verdict,
        alpn,
        version,
    })
}

/// The leaf a server presented and the real verifier's verdict on it.
type Seen = (Vec<u8>, Result<(), rustls::Error>);

/// Records the real verifier's verdict and lets the handshake finish, so the doctor can report
/// an expired or mismatched certificate instead of only "handshake failed".
#[derive(Debug)]
struct Recorder {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    seen: Mutex<Option<Seen>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            .map(|_| ());
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some((end_entity.to_vec(), verdict));
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// For HTTPS hops of an HTTP-01 redirect only: Let's Encrypt does not check that certificate,
/// so neither does the doctor when it follows the same path.
#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
