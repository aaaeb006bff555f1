//! Shared test setup: a test CA, real backend servers on loopback, a load balancer started from a
//! TOML string, and HTTP/1.1, HTTP/2 and TLS clients. Everything binds port 0 and is torn down
//! when its handle drops, so tests run in parallel.
#![allow(dead_code)]

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico_lb::config::LbConfig;
use portico_lb::tls::CertStore;
use portico_lb::LoadBalancer;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "portico-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test certificate authority that signs leaf certificates into files.
pub struct TestCa {
    ca: rcgen::Certificate,
    key: rcgen::KeyPair,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Portico test CA");
        let ca = params.self_signed(&key).unwrap();
        let der = ca.der().clone();
        TestCa { ca, key, der }
    }

    /// The CA's own certificate as PEM (for `client_ca_file`, curl's `--cacert`).
    pub fn pem(&self) -> String {
        self.ca.pem()
    }

    /// Writes `<dir>/<name>.crt` and `<dir>/<name>.key` for `names` (CN = first name).
    pub fn issue(&self, dir: &Path, name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.ca, &self.key).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// A rustls client trusting only this CA, offering `alpn`, limited to `versions`.
    pub fn client(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Arc::new(c)
    }
}

/// A real backend server on loopback that reports what it received.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub health: Arc<AtomicU16>,
    pub hits: Arc<AtomicUsize>,
    /// Requests that reached the backend's handler (counted on arrival, before any work).
    pub started: Arc<AtomicUsize>,
    /// TCP connections the backend accepted (a proxy reusing its connections opens few).
    pub accepted: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on a given address (to bring a stopped backend back on its old port).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Backend {
        Self::start_with(name, addr, None).await
    }

    /// An HTTPS backend serving the certificate and key in these PEM files (ALPN h2, http/1.1).
    pub async fn start_tls(name: &str, cert: &Path, key: &Path) -> Backend {
        use rustls::pki_types::pem::PemObject;
        let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self::start_with(
            name,
            "127.0.0.1:0".parse().unwrap(),
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await
    }

    async fn start_with(
        name: &str,
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Backend {
        let socket = bind_retry(addr).await;
        let addr = socket.local_addr().unwrap();
        let b = Backend {
            addr,
            name: name.to_string(),
            health: Arc::new(AtomicU16::new(200)),
            hits: Arc::default(),
            started: Arc::default(),
            accepted: Arc::default(),
            stop: CancellationToken::new(),
        };
        let (name, health, hits, stop) = (
            b.name.clone(),
            b.health.clone(),
            b.hits.clone(),
            b.stop.clone(),
        );
        let started = b.started.clone();
        let accepted = b.accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = socket.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                let (name, health, hits, stop) =
                    (name.clone(), health.clone(), hits.clone(), stop.clone());
                let started = started.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    type Io = Box<dyn IoStream>;
                    let stream: Io = match tls {
                        None => Box::new(stream),
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(s) => Box::new(s),
                            Err(_) => return,
                        },
                    };
                    let svc = service_fn(move |req| {
                        started.fetch_add(1, Ordering::Relaxed);
                        backend_handle(name.clone(), health.clone(), hits.clone(), req)
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        b
    }

    /// Closes the listening socket and every connection, as a crashed app server would.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> IoStream for T {}

async fn bind_retry(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("cannot bind {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn text(status: StatusCode, s: String) -> Response<BoxBody> {
    let mut r = Response::new(Full::new(Bytes::from(s)).boxed());
    *r.status_mut() = status;
    r
}

async fn backend_handle(
    name: String,
    health: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
    mut req: Request<Incoming>,
) -> Result<Response<BoxBody>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let param = |k: &str| -> u64 {
        query
            .split('&')
            .find_map(|p| p.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    match path.as_str() {
        "/health" => {
            let code = health.load(Ordering::Relaxed);
            return Ok(text(
                StatusCode::from_u16(code).unwrap(),
                format!("{code}\n"),
            ));
        }
        "/slow" => tokio::time::sleep(Duration::from_millis(param("ms"))).await,
        "/page" => {
            // `bytes` of a repeated sentence, as `type` (text/html when absent).
            hits.fetch_add(1, Ordering::Relaxed);
            let n = param("bytes") as usize;
            let body: String = "Portico compresses what repeats. "
                .chars()
                .cycle()
                .take(n)
                .collect();
            let ct = query
                .split('&')
                .find_map(|p| p.strip_prefix("type="))
                .map(|t| t.replace("%2F", "/"))
                .unwrap_or_else(|| "text/html; charset=utf-8".into());
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert("content-type", ct.parse().unwrap());
            r.headers_mut().insert("etag", "\"v1\"".parse().unwrap());
            return Ok(r);
        }
        "/login" => {
            // The application's own session cookie (for app_cookie stickiness).
            hits.fetch_add(1, Ordering::Relaxed);
            let mut r = text(StatusCode::OK, format!("backend: {name}\n"));
            r.headers_mut().insert(
                "set-cookie",
                format!("SESSION={name}; Path=/").parse().unwrap(),
            );
            return Ok(r);
        }
        "/upload" => {
            let mut n = 0u64;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => return Ok(text(StatusCode::BAD_REQUEST, "body broke".into())),
                }
            }
            hits.fetch_add(1, Ordering::Relaxed);
            return Ok(text(StatusCode::OK, format!("received {n}\n")));
        }
        "/download" => {
            let total = param("bytes");
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::unfold(0u64, move |sent| {
                let chunk = chunk.clone();
                async move {
                    (sent < total).then(|| {
                        let n = (total - sent).min(chunk.len() as u64) as usize;
                        (
                            Ok::<_, Infallible>(Frame::data(chunk.slice(..n))),
                            sent + n as u64,
                        )
                    })
                }
            });
            return Ok(Response::new(BodyExt::boxed(StreamBody::new(stream))));
        }
        "/ws" => {
            let key = req
                .headers()
                .get("sec-websocket-key")
                .map(|k| k.as_bytes().to_vec())
                .unwrap_or_default();
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on_upgrade.await {
                    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                        TokioIo::new(up),
                        tokio_tungstenite::tungstenite::protocol::Role::Server,
                        None,
                    )
                    .await;
                    while let Some(Ok(m)) = ws.next().await {
                        if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut r = Response::new(Full::new(Bytes::new()).boxed());
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            r.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
            r.headers_mut()
                .insert("sec-websocket-accept", accept.parse().unwrap());
            return Ok(r);
        }
        _ => {}
    }
    hits.fetch_add(1, Ordering::Relaxed);
    let mut out = format!(
        "backend: {name}\nmethod: {}\npath: {}\nquery: {}\nversion: {:?}\n",
        req.method(),
        path,
        query,
        req.version()
    );
    for (k, v) in req.headers() {
        out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
    }
    let mut r = text(StatusCode::OK, out);
    // Hop-by-hop headers a proxy must not pass on to the client.
    r.headers_mut()
        .insert("keep-alive", "timeout=5".parse().unwrap());
    r.headers_mut()
        .insert("connection", "keep-alive, x-internal".parse().unwrap());
    r.headers_mut().insert("x-internal", "1".parse().unwrap());
    Ok(r)
}

/// A response as a test reads it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
    pub version: http::Version,
}

impl Reply {
    /// A `name: value` line of a backend's echo.
    pub fn echoed(&self, name: &str) -> Option<String> {
        self.body
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::to_string)
    }
    pub fn backend(&self) -> String {
        self.echoed("backend").unwrap_or_default()
    }
}

async fn read_reply(res: Response<Incoming>) -> Reply {
    let (parts, body) = res.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        version: parts.version,
    }
}

pub fn request(method: &str, host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<Reply, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let res = tx.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(read_reply(res).await)
}

/// An HTTP/1.1 connection kept alive across requests.
pub struct KeepAlive(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl KeepAlive {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        KeepAlive(tx)
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, String> {
        self.0.ready().await.map_err(|e| e.to_string())?;
        let res = self.0.send_request(req).await.map_err(|e| e.to_string())?;
        Ok(read_reply(res).await)
    }
}

pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    send(addr, request("GET", host, path)).await.unwrap()
}

/// A TLS connection; returns the stream for inspection and further use.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let stream = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
}

/// One request over TLS, HTTP/2 when ALPN agreed on it, else HTTP/1.1.
pub async fn send_tls(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
    req: Request<Full<Bytes>>,
) -> Result<Reply, String> {
    let tls = tls_connect(addr, sni, config)
        .await
        .map_err(|e| e.to_string())?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let res = if h2 {
        let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let (mut parts, body) = req.into_parts();
        let host = parts.headers.remove("host");
        let host = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(sni);
        parts.uri = format!("https://{host}{}", parts.uri).parse().unwrap();
        tx.send_request(Request::from_parts(parts, body))
            .await
            .map_err(|e| e.to_string())?
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        tx.send_request(req).await.map_err(|e| e.to_string())?
    };
    Ok(read_reply(res).await)
}

/// One target group "g" with `target`, behind one HTTP listener "l" on a free port; `extra`
/// is appended to the listener's table.
pub fn one_group(target: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[[target_group]]
name = "g"
targets = ["{target}"]
[[listener]]
name = "l"
bind = "127.0.0.1:0"
protocol = "http"
default_action = {{ forward = "g" }}
{extra}
"#
    )
}

/// A load balancer serving `toml` (the listener/target_group/certificate sections).
pub async fn start_lb(toml_text: &str, base_dir: &Path) -> Arc<LoadBalancer> {
    let lb = LoadBalancer::new(CertStore::new());
    apply(&lb, toml_text, base_dir).await.unwrap();
    lb
}

pub async fn apply(
    lb: &Arc<LoadBalancer>,
    toml_text: &str,
    base_dir: &Path,
) -> Result<(), Vec<portico_lb::ConfigIssue>> {
    let config: LbConfig = toml::from_str(toml_text).expect("test config parses");
    lb.apply(&config, base_dir, &HashSet::new()).await
}

/// The first local address of a listener.
pub fn addr(lb: &LoadBalancer, listener: &str) -> SocketAddr {
    lb.local_addrs(listener)[0]
}

/// Waits for `cond` with a deadline, polling; panics with `what` when it never holds.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Peak resident memory of this process so far (VmHWM), from /proc.
pub fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// One HTTP/1.1 request over a raw TCP connection from `from` (a loopback address: 127.0.0.2
/// is as local as 127.0.0.1 on Linux), `prefix` written first (a PROXY protocol header).
/// `Err` when the load balancer closed the connection without an answer.
pub async fn raw_request(
    from: std::net::IpAddr,
    to: SocketAddr,
    prefix: &[u8],
    path: &str,
) -> Result<Reply, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(from, 0))
        .map_err(|e| e.to_string())?;
    let mut s = socket.connect(to).await.map_err(|e| e.to_string())?;
    let mut out = prefix.to_vec();
    out.extend_from_slice(
        format!("GET {path} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    s.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    if buf.is_empty() {
        return Err("closed without an answer".into());
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
    let mut headers = http::HeaderMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.trim().as_bytes()),
                http::HeaderValue::from_str(v.trim()),
            ) {
                headers.append(k, v);
            }
        }
    }
    Ok(Reply {
        status,
        headers,
        body: body.to_string(),
        version: http::Version::HTTP_11,
    })
}

/// Runs curl with `args` (without blocking the runtime the load balancer runs on); (exit
/// code, stdout, stderr). Panics with an install hint without curl.
pub async fn curl(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("cannot run curl ({e}): install it with `apt-get install curl` (scripts/test does this)")
        });
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The gRPC peer (`tests/grpc/peer.py`, Debian's python3-grpcio): a server on h2c, killed when
/// this drops.
pub struct GrpcPeer {
    pub addr: SocketAddr,
    child: tokio::process::Child,
}

pub const PYTHON: &str = "/usr/bin/python3";

fn grpc_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpc/peer.py")
}

impl GrpcPeer {
    pub async fn start() -> GrpcPeer {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(PYTHON)
            .arg(grpc_script())
            .arg("server")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {PYTHON} ({e}): install python3-grpcio (scripts/test does this)")
            });
        let out = child.stdout.take().unwrap();
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(30),
            tokio::io::BufReader::new(out).read_line(&mut line),
        )
        .await
        .expect("the gRPC peer printed no port within 30 s")
        .unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| {
            panic!("the gRPC peer did not start (is python3-grpcio installed? apt-get install python3-grpcio): {line:?}")
        });
        GrpcPeer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
        }
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// Runs the gRPC peer in a client mode (`client ADDR CA NAME`, `serving ADDR 0|1`); its stdout.
pub async fn grpc_client(args: &[&str]) -> String {
    let out = tokio::process::Command::new(PYTHON)
        .arg(grpc_script())
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the gRPC client ran longer than 60 s")
        .unwrap_or_else(|e| {
            panic!("cannot run {PYTHON} ({e}): install python3-grpcio (scripts/test does this)")
        });
    assert!(
        out.status.success(),
        "gRPC client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
