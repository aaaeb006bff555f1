//! HTTPS and HTTP/2 (gRPC) to targets, through hyper's client connections.
//!
//! The plain HTTP/1.1 path (`mod.rs`) stays Portico's own, driven in the request's task, because
//! that is where the per-request hand-offs of a client task cost most (docs/benchmarks.md). TLS
//! and HTTP/2 to targets are rarer and need what hyper already does well: multiplexed streams,
//! flow control, trailers, upgrades on a TLS stream. Connections are kept per worker thread, as
//! the own pool does: one HTTP/2 connection per target (multiplexed), and HTTP/1.1 connections
//! over TLS reused one request at a time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub use super::AbortOnDrop;
use super::{BoxError, SendError};

pub type ClientBody = UnsyncBoxBody<Bytes, BoxError>;

/// At most this many HTTP/1.1-over-TLS connections kept per target on one worker.
const MAX_IDLE_PER_TARGET: usize = 256;

/// How a target group's requests travel when not as plain HTTP/1.1.
#[derive(Debug)]
pub struct Transport {
    /// TLS to the targets (ALPN `h2` or `http/1.1` already set); plain TCP when `None`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The name certificates are checked against (and SNI); each target's own host when absent.
    pub server_name: Option<ServerName<'static>>,
    pub h2: bool,
    pub grpc: bool,
}

impl Transport {
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// Pools are keyed by target, TLS name and protocol: two groups naming one target with
/// different settings do not share connections.
type Key = (SocketAddr, Option<String>, bool);

thread_local! {
    static H2: RefCell<HashMap<Key, http2::SendRequest<ClientBody>>> = RefCell::default();
    static H1: RefCell<HashMap<Key, Vec<http1::SendRequest<ClientBody>>>> = RefCell::default();
}

/// Opens TCP (and TLS) to `addr`; errors are `Connect` (the target never saw a request).
pub(crate) async fn open(
    t: &Transport,
    addr: SocketAddr,
    name: &Option<ServerName<'static>>,
    timeout: Duration,
) -> Result<Box<dyn IoBox>, SendError> {
    let work = async {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        super::live::opened(addr, std::os::fd::AsRawFd::as_raw_fd(&tcp));
        let Some(config) = &t.tls else {
            return Ok(Box::new(tcp) as Box<dyn IoBox>);
        };
        let name = name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await?;
        if t.h2 && tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(io::Error::other(
                "the target does not offer HTTP/2 (ALPN h2)",
            ));
        }
        Ok(Box::new(tls) as Box<dyn IoBox>)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(io)) => Ok(io),
        Ok(Err(e)) => Err(SendError::Connect(e)),
        Err(_) => Err(SendError::Connect(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no connection within {timeout:?}"),
        ))),
    }
}

/// A boxed transport stream (TCP or TLS) hyper can drive.
pub trait IoBox: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> IoBox for T {}

/// Sends `req` to `addr` (the URI already absolute for HTTP/2) and returns the response head.
/// `upgrade`: the request asks to switch protocols, so its HTTP/1.1 connection is not pooled.
pub async fn send(
    t: &Transport,
    addr: SocketAddr,
    name: &Option<ServerName<'static>>,
    connect_timeout: Duration,
    req: Request<ClientBody>,
    upgrade: bool,
) -> Result<Response<Incoming>, SendError> {
    let key: Key = (addr, name.as_ref().map(|n| n.to_str().into_owned()), t.h2);
    if t.h2 {
        let pooled = H2.with(|p| {
            let mut p = p.borrow_mut();
            match p.get(&key) {
                Some(s) if !s.is_closed() => Some(s.clone()),
                Some(_) => {
                    p.remove(&key);
                    None
                }
                None => None,
            }
        });
        let mut sender = match pooled {
            Some(s) => s,
            None => {
                let io = open(t, addr, name, connect_timeout).await?;
                let (s, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .keep_alive_interval(Duration::from_secs(30))
                    .handshake(TokioIo::new(io))
                    .await
                    .map_err(|e| SendError::Connect(io::Error::other(e)))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "HTTP/2 connection to a target ended");
                    }
                });
                H2.with(|p| p.borrow_mut().insert(key.clone(), s.clone()));
                s
            }
        };
        sender
            .ready()
            .await
            .map_err(|e| SendError::NoResponse(io::Error::other(e)))?;
        return sender
            .send_request(req)
            .await
            .map_err(|e| SendError::NoResponse(io::Error::other(e)));
    }
    let pooled = (!upgrade)
        .then(|| {
            H1.with(|p| {
                let mut p = p.borrow_mut();
                let list = p.get_mut(&key)?;
                list.retain(|s| !s.is_closed());
                let i = list.iter().position(|s| s.is_ready())?;
                Some(list.swap_remove(i))
            })
        })
        .flatten();
    let mut sender = match pooled {
        Some(s) => s,
        None => {
            let io = open(t, addr, name, connect_timeout).await?;
            let (s, conn) = http1::Builder::new()
                .handshake(TokioIo::new(io))
                .await
                .map_err(|e| SendError::Connect(io::Error::other(e)))?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "connection to a target ended");
                }
            });
            s
        }
    };
    sender
        .ready()
        .await
        .map_err(|e| SendError::NoResponse(io::Error::other(e)))?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| SendError::NoResponse(io::Error::other(e)))?;
    if !upgrade {
        // Busy until its body is read; a later checkout takes it once it is ready again.
        H1.with(|p| {
            let mut p = p.borrow_mut();
            let list = p.entry(key).or_default();
            if list.len() < MAX_IDLE_PER_TARGET {
                list.push(sender);
            }
        });
    }
    Ok(res)
}

/// A gRPC error as a gRPC client expects it (a "trailers-only" response: HTTP 200 with
/// `grpc-status` in the head), instead of an HTML or text error a gRPC client cannot read.
pub fn grpc_error<B: Default>(status: http::StatusCode, message: &str) -> Response<B> {
    // UNAVAILABLE (14) for what a retry may fix; DEADLINE_EXCEEDED (4) for a timeout.
    let code = match status {
        http::StatusCode::GATEWAY_TIMEOUT => 4,
        http::StatusCode::TOO_MANY_REQUESTS => 8,
        _ => 14,
    };
    let mut res = Response::new(B::default());
    let h = res.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", http::HeaderValue::from(code));
    // Portico's messages are plain ASCII without `%`: nothing to percent-encode.
    if let Ok(v) = http::HeaderValue::from_str(message) {
        h.insert("grpc-message", v);
    }
    res
}

/// The TLS client configuration for a group's targets: `ca_file`'s CAs or the system's roots,
/// or no verification at all when `verify` is false; ALPN `h2` or `http/1.1`.
pub fn tls_config(
    ca_file: Option<&std::path::Path>,
    verify: bool,
    h2: bool,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = crate::tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = if !verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                use rustls::pki_types::pem::PemObject;
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                    let c = c.map_err(|e| format!("{}: {e}", path.display()))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("{} holds no PEM certificate", path.display()));
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(Arc::new(config))
}

/// `verify = false`: any certificate is accepted (signatures on the handshake are still checked,
/// so the connection is encrypted to whoever holds the key, but that may be anyone).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
