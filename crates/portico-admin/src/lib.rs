//! The admin API (`/api/v1/…`), its OpenAPI document, Prometheus `/metrics` and the web console
//! (`/`), served on `[admin] listen` with a bearer token from `<state_dir>/admin.token`.
//!
//! The API acts on the running node only through the [`Node`] trait (`node.rs`), which the
//! binary implements on its serving core. Every change goes through the path the config takes:
//! records through the zones' change batches, certificates, listeners and targets as an edit of
//! the API's additions ([`Runtime`]) that the node merges with the config file, validates as a
//! whole, applies and persists before answering.
//!
//! This file: `[admin]`, errors, the token, the server, the router and authentication; the
//! handlers are one file per resource (zones, certs, targets, listeners, status, metrics).

mod certs;
mod listeners;
mod metrics;
pub mod node;
mod status;
mod targets;
mod zones;

use certs::*;
use listeners::*;
use status::*;
use targets::*;
use zones::*;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub use node::{Applied, Edit, Node, Runtime, RuntimeFileError, StoreStatus};

/// `[admin]`: where the admin API, `/metrics` and the console listen.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// TLS for the admin API: required when `listen` is not a loopback address, since the bearer
    /// token would otherwise cross the network in clear.
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

impl AdminConfig {
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.listen.trim().parse().ok()
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9180".into()
}

pub const TOKEN_FILE: &str = "admin.token";
const OPENAPI: &str = include_str!("openapi.json");
const CONSOLE: &str = include_str!("console.html");
/// Connections the admin API serves at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;
/// Request bodies larger than this are refused (413).
const MAX_BODY: usize = 1 << 20;

/// An error as the API answers it: a status, what went wrong, and how to fix it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub hint: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            hint: None,
        }
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn bad(error: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error)
    }
    pub fn not_found(error: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, error)
    }
    pub fn conflict(error: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, error)
    }
    pub fn internal(error: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, error)
    }
    /// A change the config path refused: each problem (message, hint) of the merged config.
    pub fn refused(problems: impl IntoIterator<Item = (String, Option<String>)>) -> Self {
        let problems: Vec<(String, Option<String>)> = problems.into_iter().collect();
        let conflict = problems
            .iter()
            .any(|(m, _)| m.contains("also created through the admin API"));
        let mut err = Self::new(
            if conflict {
                StatusCode::CONFLICT
            } else {
                StatusCode::BAD_REQUEST
            },
            problems
                .iter()
                .map(|(m, _)| m.clone())
                .collect::<Vec<_>>()
                .join("; "),
        );
        err.hint = problems.into_iter().find_map(|(_, h)| h);
        err
    }
    /// The shared store cannot be reached: the change waits until it answers.
    pub fn unavailable(error: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.error });
        if let Some(h) = self.hint {
            body["hint"] = Value::String(h);
        }
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

/// Where `serve` writes the URL its admin API really listens on, for the CLI.
pub const URL_FILE: &str = "admin.url";

/// Writes the URL the admin API really listens on, for the CLI (removed when serve stops).
pub fn write_url(state_dir: &Path, addr: std::net::SocketAddr, tls: bool) {
    let url = format!("{}://{addr}\n", if tls { "https" } else { "http" });
    let _ = portico_config::files::write_atomic(&state_dir.join(URL_FILE), url.as_bytes(), 0o644);
}

/// The token from the state directory, made (0600) on first start.
pub fn token(state_dir: &Path) -> std::io::Result<String> {
    let p = state_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&p) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 32];
    rand_bytes(&mut bytes)?;
    let t: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(state_dir)?;
    portico_config::files::write_atomic(&p, format!("{t}\n").as_bytes(), 0o600)?;
    Ok(t)
}

fn rand_bytes(out: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(out)
}

/// Comparison that takes the same time wherever the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Clone)]
struct Ctx {
    node: Arc<dyn Node>,
    token: Arc<String>,
}

/// The admin API while it serves.
pub struct AdminServer {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl AdminServer {
    pub async fn start(node: Arc<dyn Node>, config: &AdminConfig) -> anyhow::Result<Self> {
        use anyhow::Context;
        let listen = config
            .listen_addr()
            .context("[admin] listen is not an address:port")?;
        let tls = match (&config.cert_file, &config.key_file) {
            (Some(c), Some(k)) => {
                let base = node.applied().await.base_dir;
                let served = portico_lb::tls::load_pem_files(&base.join(c), &base.join(k))
                    .context("[admin] cert_file/key_file")?;
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut sc = rustls::ServerConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .context("TLS for the admin API")?
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(OneCert(served.key.clone())));
                sc.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(sc)))
            }
            _ => None,
        };
        let token = token(node.state_dir()).with_context(|| {
            format!(
                "cannot make the admin token {}",
                node.state_dir().join(TOKEN_FILE).display()
            )
        })?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| {
                format!("[admin] cannot listen on {listen} (another process may hold the port)")
            })?;
        let addr = listener.local_addr()?;
        let app = router(Ctx {
            node,
            token: Arc::new(token),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, app, tls, stop.clone()));
        tracing::info!(%addr, tls = config.cert_file.is_some(), "admin API, /metrics and console listening");
        Ok(AdminServer { addr, stop })
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

#[derive(Debug)]
struct OneCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for OneCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let (tcp, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "admin API: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (app, tls, stop) = (app.clone(), tls.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(64 * 1024);
            let serve = async {
                match tls {
                    Some(acc) => {
                        let Ok(Ok(s)) =
                            tokio::time::timeout(Duration::from_secs(10), acc.accept(tcp)).await
                        else {
                            return;
                        };
                        let _ = http
                            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                            .await;
                    }
                    None => {
                        let _ = http
                            .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                            .await;
                    }
                }
            };
            tokio::select! {
                _ = serve => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

fn router(ctx: Ctx) -> Router {
    let api = Router::new()
        .route("/api/openapi.json", get(openapi))
        .route("/api/v1/zones", get(zones_list))
        .route("/api/v1/zones/{zone}", get(zone_get))
        .route("/api/v1/zones/{zone}/export", get(zone_export))
        .route("/api/v1/zones/{zone}/changes", post(zone_change))
        .route("/api/v1/changes/{id}", get(change_get))
        .route("/api/v1/certificates", get(certs_list).post(cert_request))
        .route(
            "/api/v1/certificates/{name}",
            get(cert_get).delete(cert_delete),
        )
        .route("/api/v1/certificates/{name}/renew", post(cert_renew))
        .route("/api/v1/certificates/{name}/revoke", post(cert_revoke))
        .route("/api/v1/certificates/{name}/lock", post(cert_lock))
        .route("/api/v1/target-groups", get(groups_list))
        .route("/api/v1/target-groups/{name}", get(group_get))
        .route(
            "/api/v1/target-groups/{name}/targets",
            post(targets_register),
        )
        .route(
            "/api/v1/target-groups/{name}/targets/{address}",
            axum::routing::delete(target_deregister),
        )
        .route("/api/v1/listeners", get(listeners_list))
        .route(
            "/api/v1/listeners/{name}",
            get(listener_get).put(listener_put).delete(listener_delete),
        )
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/status", get(status))
        .route("/metrics", get(metrics::render))
        .fallback(no_route)
        .route_layer(middleware::from_fn_with_state(ctx.clone(), authenticate));
    Router::new()
        .route("/", get(console))
        .merge(api)
        .fallback(no_route)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(ctx)
}

async fn authenticate(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if same(t.as_bytes(), ctx.token.as_bytes()) => next.run(req).await,
        _ => {
            let mut res = ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
                .hint(format!(
                "send `Authorization: Bearer <token>` with the token from <state_dir>/{TOKEN_FILE}"
            ))
                .into_response();
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"portico\""),
            );
            res
        }
    }
}

async fn no_route() -> ApiError {
    ApiError::not_found("no such route").hint("see /api/openapi.json for every route")
}

async fn console() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        CONSOLE,
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<T> {
    body.map(|Json(b)| b)
        .map_err(|e| ApiError::bad(e.body_text()).hint("see /api/openapi.json for the body"))
}
