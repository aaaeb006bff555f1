//! The admin API (`/api/v1/…`), its OpenAPI document, Prometheus `/metrics` and the web console
//! (`/`), served on `[admin] listen` with a bearer token from `<state_dir>/admin.token`.
//!
//! Every change goes through the path the config takes: records through the zones' change
//! batches, certificates, listeners and targets through [`Core::change_runtime`], which merges
//! them with the config file, validates the whole, applies it and persists it before answering.

mod metrics;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::config::{AdminConfig, ConfigError};
use crate::node::{Core, RuntimeChangeError};
use crate::runtime::Runtime;

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
    /// A change the config path refused: each problem with its hint.
    pub fn config(e: ConfigError) -> Self {
        let hint = e.problems.iter().find_map(|p| p.hint.clone());
        let conflict = e
            .problems
            .iter()
            .any(|p| p.message.contains("also created through the admin API"));
        let mut err = Self::new(
            if conflict {
                StatusCode::CONFLICT
            } else {
                StatusCode::BAD_REQUEST
            },
            e.problems
                .iter()
                .map(|p| p.message.clone())
                .collect::<Vec<_>>()
                .join("; "),
        );
        err.hint = hint;
        err
    }
}

impl From<RuntimeChangeError<ApiError>> for ApiError {
    fn from(e: RuntimeChangeError<ApiError>) -> Self {
        match e {
            RuntimeChangeError::Edit(e) => e,
            RuntimeChangeError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m),
            RuntimeChangeError::Config(e) => ApiError::config(e),
            RuntimeChangeError::Internal(m) => ApiError::internal(m),
        }
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
    core: Arc<Core>,
    token: Arc<String>,
}

/// The admin API while it serves.
pub struct AdminServer {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl AdminServer {
    pub async fn start(core: Arc<Core>, config: &AdminConfig) -> anyhow::Result<Self> {
        use anyhow::Context;
        let listen = config
            .listen_addr()
            .context("[admin] listen is not an address:port")?;
        let tls = match (&config.cert_file, &config.key_file) {
            (Some(c), Some(k)) => {
                let base = core.current(|c| c.source.base_dir()).await;
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
        let token = token(&core.state_dir).with_context(|| {
            format!(
                "cannot make the admin token {}",
                core.state_dir.join(TOKEN_FILE).display()
            )
        })?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| {
                format!("[admin] cannot listen on {listen} (another process may hold the port)")
            })?;
        let addr = listener.local_addr()?;
        let app = router(Ctx {
            core,
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

// ---- zones and records ----

async fn zones_list(State(ctx): State<Ctx>) -> Json<Value> {
    let catalog = ctx.core.zones.catalog();
    let mut zones: Vec<_> = catalog.zones.values().collect();
    zones.sort_by_key(|z| z.origin.to_string());
    Json(Value::Array(
        zones
            .into_iter()
            .map(|z| json!({"name": z.origin.to_string(), "serial": z.serial(), "records": z.record_count()}))
            .collect(),
    ))
}

fn zone_of(ctx: &Ctx, zone: &str) -> ApiResult<Arc<portico_dns::zone::Zone>> {
    let name = portico_dns::zones::zone_name(zone).map_err(|e| ApiError::bad(e.to_string()))?;
    ctx.core
        .zones
        .catalog()
        .zones
        .get(&name)
        .cloned()
        .ok_or_else(|| {
            ApiError::not_found(format!("no hosted zone {name}")).hint(
                "GET /api/v1/zones lists them; zones are declared with [[zone]] in the config",
            )
        })
}

async fn zone_get(State(ctx): State<Ctx>, UrlPath(zone): UrlPath<String>) -> ApiResult {
    let z = zone_of(&ctx, &zone)?;
    let mut records = Vec::new();
    for (name, node) in &z.nodes {
        for set in &node.sets {
            records.push(json!({
                "name": name.to_string(),
                "type": set.rtype.to_string(),
                "ttl": set.ttl,
                "values": set.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            }));
        }
        if let Some(a) = &node.alias {
            let target = match &a.target {
                portico_dns::zone::AliasTarget::Listener(l) => format!("listener:{l}"),
                portico_dns::zone::AliasTarget::Name(n) => n.to_string(),
            };
            records.push(
                json!({"name": name.to_string(), "type": "ALIAS", "ttl": a.ttl, "target": target}),
            );
        }
    }
    Ok(Json(json!({
        "name": z.origin.to_string(),
        "serial": z.serial(),
        "records": records,
    })))
}

async fn zone_export(
    State(ctx): State<Ctx>,
    UrlPath(zone): UrlPath<String>,
) -> ApiResult<Response> {
    zone_of(&ctx, &zone)?;
    let text = ctx.core.zones.export(&zone).unwrap_or_default();
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeBatch {
    changes: Vec<portico_dns::zones::RecordChange>,
    #[serde(default)]
    comment: Option<String>,
}

async fn zone_change(
    State(ctx): State<Ctx>,
    UrlPath(zone): UrlPath<String>,
    body: Result<Json<ChangeBatch>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let batch = json_body(body)?;
    if batch.changes.is_empty() {
        return Err(ApiError::bad("the change batch has no changes"));
    }
    zone_of(&ctx, &zone)?;
    use portico_dns::zones::ChangeError;
    let info = ctx
        .core
        .zones
        .change(&zone, &batch.changes)
        .await
        .map_err(|e| match e {
            ChangeError::NoSuchZone(z) => ApiError::not_found(format!("no hosted zone {z}")),
            ChangeError::Invalid(m) => ApiError::bad(m)
                .hint("CREATE fails on an existing record set, DELETE needs the exact values; UPSERT sets it whatever was there"),
            ChangeError::Storage(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m)
                .hint("the change was not applied; retry when the state store answers"),
            ChangeError::Conflict(m) => ApiError::conflict(m)
                .hint("read the zone again (GET /api/v1/zones/{zone}) and retry the change"),
        })?;
    tracing::info!(event = "records_changed", zone = %info.zone, change = %info.id, serial = info.serial,
        comment = batch.comment.as_deref().unwrap_or(""), "change batch applied through the admin API");
    Ok(Json(change_view(&ctx, info).await))
}

/// A change as the API reports it: in cluster mode INSYNC also needs every live node to serve
/// the new serial (as Route 53 reports INSYNC once every authoritative server has the change).
async fn change_view(ctx: &Ctx, mut info: portico_dns::zones::ChangeInfo) -> Value {
    use portico_dns::zones::ChangeStatus;
    if let (Some(c), ChangeStatus::Insync) = (&ctx.core.cluster, info.status) {
        let (c, zone, serial) = (c.clone(), info.zone.clone(), info.serial);
        let everywhere = tokio::task::spawn_blocking(move || c.served_everywhere(&zone, serial))
            .await
            .unwrap_or(false);
        if !everywhere {
            info.status = ChangeStatus::Pending;
        }
    }
    serde_json::to_value(info).unwrap_or_default()
}

async fn change_get(State(ctx): State<Ctx>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let info = ctx.core.zones.change_status(&id).ok_or_else(|| {
        ApiError::not_found(format!(
            "no change {id:?} (ids are kept while the server runs)"
        ))
    })?;
    Ok(Json(change_view(&ctx, info).await))
}

// ---- certificates ----

fn cert_view(ctx: &Ctx, name: &str, source: &str, domains: &[String]) -> Value {
    let r = ctx.core.certs.storage().record(name).unwrap_or_default();
    let mut v = serde_json::to_value(&r).unwrap_or_else(|_| json!({}));
    v["name"] = json!(name);
    v["source"] = json!(source);
    if r.status.is_empty() {
        v["status"] = json!("PENDING_VALIDATION");
        v["domains"] = json!(domains);
    }
    let live = ctx.core.certs.storage().live(name);
    if live.join("fullchain.pem").exists() {
        v["fullchain"] = json!(live.join("fullchain.pem"));
    }
    v
}

/// Certificates the manager obtains: (name, domains, "config" | "api").
async fn managed(ctx: &Ctx) -> Vec<(String, Vec<String>, &'static str)> {
    ctx.core
        .current(|c| {
            let api: Vec<&str> = c
                .runtime
                .certificate
                .iter()
                .filter_map(|t| t.get("name").and_then(|n| n.as_str()))
                .collect();
            c.config
                .certificate
                .iter()
                .filter(|cert| !cert.domains.is_empty())
                .map(|cert| {
                    (
                        cert.name.clone(),
                        cert.domains.clone(),
                        if api.contains(&cert.name.as_str()) {
                            "api"
                        } else {
                            "config"
                        },
                    )
                })
                .collect()
        })
        .await
}

async fn certs_list(State(ctx): State<Ctx>) -> Json<Value> {
    let list = managed(&ctx).await;
    Json(Value::Array(
        list.iter()
            .map(|(n, d, s)| cert_view(&ctx, n, s, d))
            .collect(),
    ))
}

async fn cert_get(State(ctx): State<Ctx>, UrlPath(name): UrlPath<String>) -> ApiResult {
    let list = managed(&ctx).await;
    let (n, d, s) = list.iter().find(|(n, _, _)| *n == name).ok_or_else(|| {
        ApiError::not_found(format!("no certificate {name:?}"))
            .hint("GET /api/v1/certificates lists them; POST there requests one")
    })?;
    Ok(Json(cert_view(&ctx, n, s, d)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertSpec {
    name: String,
    domains: Vec<String>,
    issuer: Option<String>,
    challenge: Option<String>,
    deploy_hook: Option<String>,
    key_type: Option<String>,
    rsa_key_size: Option<u32>,
}

async fn cert_request(
    State(ctx): State<Ctx>,
    body: Result<Json<CertSpec>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let spec = json_body(body)?;
    if spec.name.trim().is_empty() || spec.domains.is_empty() {
        return Err(ApiError::bad(
            "a certificate needs a name and at least one domain",
        ));
    }
    let name = spec.name.clone();
    ctx.core
        .change_runtime(|rt, current| {
            if current.certificate.iter().any(|c| c.name == spec.name) {
                return Err(ApiError::conflict(format!(
                    "a certificate named {:?} exists already",
                    spec.name
                ))
                .hint("POST /api/v1/certificates/{name}/renew renews it"));
            }
            let mut t = toml::Table::new();
            t.insert("name".into(), spec.name.into());
            t.insert(
                "domains".into(),
                toml::Value::Array(spec.domains.into_iter().map(Into::into).collect()),
            );
            for (k, v) in [
                ("issuer", spec.issuer),
                ("challenge", spec.challenge),
                ("deploy_hook", spec.deploy_hook),
            ] {
                if let Some(v) = v {
                    t.insert(k.into(), v.into());
                }
            }
            if let Some(k) = spec.key_type {
                t.insert("key_type".into(), k.into());
            }
            if let Some(bits) = spec.rsa_key_size {
                t.insert("rsa_key_size".into(), i64::from(bits).into());
            }
            rt.certificate.push(t);
            Ok(())
        })
        .await?;
    tracing::info!(event = "certificate_requested", certificate = %name, "certificate requested through the admin API");
    let list = managed(&ctx).await;
    let (n, d, s) = list
        .iter()
        .find(|(n, _, _)| *n == name)
        .cloned()
        .unwrap_or((name, Vec::new(), "api"));
    Ok((StatusCode::ACCEPTED, Json(cert_view(&ctx, &n, s, &d))))
}

async fn cert_delete(State(ctx): State<Ctx>, UrlPath(name): UrlPath<String>) -> ApiResult {
    ctx.core
        .change_runtime(|rt, current| {
            let before = rt.certificate.len();
            rt.certificate
                .retain(|t| t.get("name").and_then(|n| n.as_str()) != Some(name.as_str()));
            if rt.certificate.len() == before {
                return Err(if current.certificate.iter().any(|c| c.name == name) {
                    ApiError::conflict(format!(
                        "certificate {name:?} is declared in the config file"
                    ))
                    .hint("remove its [[certificate]] from the config file, then reload")
                } else {
                    ApiError::not_found(format!("no certificate {name:?}"))
                });
            }
            Ok(())
        })
        .await?;
    tracing::info!(event = "certificate_deleted", certificate = %name, "certificate deleted through the admin API");
    Ok(Json(json!({
        "deleted": name,
        "note": "no longer renewed or served; its files stay under live/ and archive/ in the state directory",
    })))
}

#[derive(Deserialize)]
struct RenewQuery {
    #[serde(default)]
    dry_run: bool,
}

async fn cert_renew(
    State(ctx): State<Ctx>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<RenewQuery>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    use portico_certs::storage::RenewRequest;
    let what = if q.dry_run {
        RenewRequest::DryRun
    } else {
        RenewRequest::Renew
    };
    renewal(&ctx, &name, what).await
}

async fn cert_revoke(
    State(ctx): State<Ctx>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    renewal(&ctx, &name, portico_certs::storage::RenewRequest::Revoke).await
}

async fn renewal(
    ctx: &Ctx,
    name: &str,
    what: portico_certs::storage::RenewRequest,
) -> ApiResult<(StatusCode, Json<Value>)> {
    use portico_certs::storage::RenewRequest;
    let list = managed(ctx).await;
    let Some((n, d, s)) = list.iter().find(|(n, _, _)| n == name) else {
        return Err(ApiError::not_found(format!(
            "no certificate {name:?} with domains (imported certificates are renewed by whoever issued them)"
        )));
    };
    let record = ctx.core.certs.storage().record(name).unwrap_or_default();
    if what == RenewRequest::Revoke && record.version == 0 {
        return Err(ApiError::conflict(format!(
            "{name}: no certificate has been issued yet, nothing to revoke"
        )));
    }
    ctx.core
        .certs
        .storage()
        .request_renewal(name, what)
        .map_err(|e| ApiError::internal(format!("cannot leave the renewal request: {e}")))?;
    ctx.core.kick_certs().await;
    Ok((StatusCode::ACCEPTED, Json(cert_view(ctx, n, s, d))))
}

// ---- target groups ----

async fn group_view(ctx: &Ctx, name: &str) -> Option<Value> {
    let (exists, api) = ctx
        .core
        .current(|c| {
            (
                c.config.target_group.iter().any(|g| g.name == name),
                c.runtime
                    .targets
                    .get(name)
                    .map(|v| {
                        v.iter()
                            .filter_map(Runtime::target_address)
                            .map(str::to_string)
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default(),
            )
        })
        .await;
    if !exists {
        return None;
    }
    let targets: Vec<Value> = ctx
        .core
        .lb
        .target_health(name)
        .into_iter()
        .map(|t| {
            let addr = t.addr.to_string();
            json!({
                "address": addr,
                "state": if t.draining { "draining" } else if t.healthy { "healthy" } else { "unhealthy" },
                "reason": t.reason,
                "in_flight": t.outstanding,
                "registered_by": if api.iter().any(|a| a == &addr || resolves_to(a, t.addr)) { "api" } else { "config" },
            })
        })
        .collect();
    Some(json!({"name": name, "targets": targets}))
}

fn resolves_to(written: &str, addr: SocketAddr) -> bool {
    written.parse::<SocketAddr>().is_ok_and(|a| a == addr)
}

async fn groups_list(State(ctx): State<Ctx>) -> Json<Value> {
    let names: Vec<String> = ctx
        .core
        .current(|c| {
            c.config
                .target_group
                .iter()
                .map(|g| g.name.clone())
                .collect()
        })
        .await;
    let mut out = Vec::new();
    for n in names {
        if let Some(v) = group_view(&ctx, &n).await {
            out.push(v);
        }
    }
    Json(Value::Array(out))
}

fn no_group(name: &str) -> ApiError {
    ApiError::not_found(format!("no target group {name:?}"))
        .hint("GET /api/v1/target-groups lists them; groups are declared with [[target_group]] in the config")
}

async fn group_get(State(ctx): State<Ctx>, UrlPath(name): UrlPath<String>) -> ApiResult {
    group_view(&ctx, &name)
        .await
        .map(Json)
        .ok_or_else(|| no_group(&name))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    targets: Vec<TargetSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetSpec {
    address: String,
    weight: Option<u32>,
}

async fn targets_register(
    State(ctx): State<Ctx>,
    UrlPath(name): UrlPath<String>,
    body: Result<Json<Registration>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let reg = json_body(body)?;
    if reg.targets.is_empty() {
        return Err(ApiError::bad("no targets given"));
    }
    let added: Vec<String> = reg.targets.iter().map(|t| t.address.clone()).collect();
    ctx.core
        .change_runtime(|rt, current| {
            if !current.target_group.iter().any(|g| g.name == name) {
                return Err(no_group(&name));
            }
            let list = rt.targets.entry(name.clone()).or_default();
            for t in reg.targets {
                list.retain(|v| Runtime::target_address(v) != Some(t.address.as_str()));
                list.push(match t.weight {
                    None => toml::Value::String(t.address),
                    Some(w) => {
                        let mut tab = toml::Table::new();
                        tab.insert("address".into(), t.address.into());
                        tab.insert("weight".into(), i64::from(w).into());
                        toml::Value::Table(tab)
                    }
                });
            }
            Ok(())
        })
        .await?;
    tracing::info!(event = "targets_registered", target_group = %name, targets = ?added, "targets registered through the admin API");
    group_view(&ctx, &name)
        .await
        .map(Json)
        .ok_or_else(|| no_group(&name))
}

async fn target_deregister(
    State(ctx): State<Ctx>,
    UrlPath((name, address)): UrlPath<(String, String)>,
) -> ApiResult {
    ctx.core
        .change_runtime(|rt, current| {
            let Some(group) = current.target_group.iter().find(|g| g.name == name) else {
                return Err(no_group(&name));
            };
            let list = rt.targets.entry(name.clone()).or_default();
            let before = list.len();
            list.retain(|v| Runtime::target_address(v) != Some(address.as_str()));
            if list.is_empty() {
                rt.targets.remove(&name);
            }
            if rt.targets.get(&name).map_or(0, Vec::len) == before {
                let in_file = group.targets.iter().any(|t| match t {
                    portico_lb::config::TargetConfig::Address(a) => *a == address,
                    portico_lb::config::TargetConfig::Weighted(w) => w.address == address,
                });
                return Err(if in_file {
                    ApiError::conflict(format!(
                        "target {address} of {name:?} is declared in the config file"
                    ))
                    .hint("remove it from the group's targets in the config file, then reload")
                } else {
                    ApiError::not_found(format!("target {address} is not registered in {name:?}"))
                });
            }
            Ok(())
        })
        .await?;
    tracing::info!(event = "target_deregistered", target_group = %name, target = %address, "target deregistered through the admin API");
    group_view(&ctx, &name)
        .await
        .map(Json)
        .ok_or_else(|| no_group(&name))
}

// ---- listeners ----

async fn listener_views(ctx: &Ctx) -> Vec<Value> {
    let (file, api, config) = ctx
        .core
        .current(|c| {
            let file: toml::Table = toml::from_str(&c.source.text).unwrap_or_default();
            (file, c.runtime.listener.clone(), c.config.listener.clone())
        })
        .await;
    let file_tables: Vec<toml::Table> = file
        .get("listener")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_table().cloned()).collect())
        .unwrap_or_default();
    config
        .iter()
        .map(|l| {
            let from_api = api
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(l.name.as_str()));
            let table = from_api.cloned().or_else(|| {
                file_tables
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(l.name.as_str()))
                    .cloned()
            });
            json!({
                "name": l.name,
                "protocol": format!("{:?}", l.protocol).to_lowercase(),
                "bind": l.bind,
                "listening_on": ctx.core.lb.local_addrs(&l.name).iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "certificates": l.certificates,
                "rules": l.rules.len(),
                "source": if from_api.is_some() { "api" } else { "config" },
                "config": serde_json::to_value(table.unwrap_or_default()).unwrap_or_default(),
            })
        })
        .collect()
}

async fn listeners_list(State(ctx): State<Ctx>) -> Json<Value> {
    Json(Value::Array(listener_views(&ctx).await))
}

async fn listener_get(State(ctx): State<Ctx>, UrlPath(name): UrlPath<String>) -> ApiResult {
    listener_views(&ctx)
        .await
        .into_iter()
        .find(|v| v["name"] == json!(name))
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no listener {name:?}")))
}

async fn listener_put(
    State(ctx): State<Ctx>,
    UrlPath(name): UrlPath<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let body = json_body(body)?;
    let mut table: toml::Table = toml::Value::try_from(body)
        .ok()
        .and_then(|v| v.as_table().cloned())
        .ok_or_else(|| {
            ApiError::bad("the body must be a JSON object with a listener's config keys (null is not allowed)")
        })?;
    match table.get("name").and_then(|n| n.as_str()) {
        Some(n) if n != name => {
            return Err(ApiError::bad(format!(
                "the body names listener {n:?} but the URL {name:?}"
            )))
        }
        _ => {
            table.insert("name".into(), name.clone().into());
        }
    }
    ctx.core
        .change_runtime(|rt, current| {
            let api_owned = rt
                .listener
                .iter()
                .any(|t| t.get("name").and_then(|n| n.as_str()) == Some(name.as_str()));
            if !api_owned && current.listener.iter().any(|l| l.name == name) {
                return Err(ApiError::conflict(format!(
                    "listener {name:?} is declared in the config file"
                ))
                .hint("change it in the config file and reload; the API changes the listeners it created"));
            }
            rt.listener
                .retain(|t| t.get("name").and_then(|n| n.as_str()) != Some(name.as_str()));
            rt.listener.push(table);
            Ok(())
        })
        .await?;
    tracing::info!(event = "listener_changed", listener = %name, "listener created or replaced through the admin API");
    listener_get(State(ctx), UrlPath(name)).await
}

async fn listener_delete(State(ctx): State<Ctx>, UrlPath(name): UrlPath<String>) -> ApiResult {
    ctx.core
        .change_runtime(|rt, current| {
            let before = rt.listener.len();
            rt.listener
                .retain(|t| t.get("name").and_then(|n| n.as_str()) != Some(name.as_str()));
            if rt.listener.len() == before {
                return Err(if current.listener.iter().any(|l| l.name == name) {
                    ApiError::conflict(format!("listener {name:?} is declared in the config file"))
                        .hint("remove it from the config file, then reload")
                } else {
                    ApiError::not_found(format!("no listener {name:?}"))
                });
            }
            Ok(())
        })
        .await?;
    tracing::info!(event = "listener_deleted", listener = %name, "listener deleted through the admin API");
    Ok(Json(json!({ "deleted": name })))
}

async fn status(State(ctx): State<Ctx>) -> Json<Value> {
    let store = match &ctx.core.cluster {
        Some(c) => json!({"kind": "etcd", "describe": c.describe(), "reachable": c.reachable()}),
        None => {
            json!({"kind": "state directory", "describe": ctx.core.state_dir, "reachable": true})
        }
    };
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config": ctx.core.source_path,
        "store": store,
    }))
}

async fn reload(State(ctx): State<Ctx>) -> ApiResult {
    ctx.core.reload().await.map_err(ApiError::config)?;
    Ok(Json(json!({ "result": "reload applied" })))
}
