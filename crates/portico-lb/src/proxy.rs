//! One request through the load balancer: match a rule, run its action, and for `forward`
//! stream the request to a target and the response back, retrying a failed connect once.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::access_log::Entry;
use crate::action::{Action, RedirectInput};
use crate::body::{LoggedBody, RequestBody};
use crate::config::Protocol;
use crate::idle::Activity;
use crate::rule::{RequestFacts, Rule};
use crate::snapshot::{canonical_ip, Listener};
use crate::target_group::{OutstandingGuard, TargetGroup};
use crate::upstream::{self, BoxError, SendError};
use crate::wire::HOP_BY_HOP;

pub type BoxBody = UnsyncBoxBody<Bytes, BoxError>;
pub type ProxyBody = LoggedBody<BoxBody>;

/// What every request on one client connection shares.
pub struct ConnCtx {
    /// The HTTP/1.1 fast path waits for the next request with nothing read of it yet: a
    /// draining process may close the connection now.
    pub h1_idle: std::sync::atomic::AtomicBool,
    /// The process drains: the fast path closes the connection after the current response.
    /// A per-connection copy of the drain token's state, read once per request: the token's
    /// `is_cancelled` takes a lock that every connection of the process shares.
    pub draining: std::sync::atomic::AtomicBool,
    pub listener: Arc<Listener>,
    /// The load balancer's snapshot generation `listener` was taken from.
    pub generation: u64,
    pub listener_name: Arc<str>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub activity: Activity,
    pub lb: Arc<crate::serving::Serving>,
    pub metrics: Arc<crate::metrics::ListenerMetrics>,
    /// The client's address and the local port as header values, made once per connection.
    pub peer_ip_header: HeaderValue,
    pub local_port_header: HeaderValue,
    /// Mutual TLS: the verified client certificate as headers for targets (set once, after
    /// the handshake).
    pub client_cert: std::sync::OnceLock<Box<[(HeaderName, HeaderValue)]>>,
}

impl ConnCtx {
    pub fn forwarded_values(peer: SocketAddr, local: SocketAddr) -> (HeaderValue, HeaderValue) {
        let ip = HeaderValue::from_str(&canonical_ip(peer.ip()).to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        (ip, HeaderValue::from(local.port()))
    }
}

pub async fn handle(
    ctx: &ConnCtx,
    mut req: Request<RequestBody>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    // Rules and actions come from the newest snapshot, so that a reload reaches keep-alive
    // connections too; the connection's own listener serves if the listener was removed.
    let newer;
    let listener: &Arc<Listener> = if ctx.lb.generation() == ctx.generation {
        &ctx.listener
    } else {
        newer = ctx
            .lb
            .listener_named(&ctx.listener_name)
            .unwrap_or_else(|| ctx.listener.clone());
        &newer
    };
    let host = request_host(&req);
    let encoding = listener
        .compress
        .as_ref()
        .and_then(|c| c.choose(req.headers().get(header::ACCEPT_ENCODING)));
    let head_request = req.method() == Method::HEAD;
    let mut log = listener.access_log.as_ref().map(|log| {
        (
            log.clone(),
            Entry {
                listener: ctx.listener_name.clone(),
                client: canonical_ip(ctx.peer.ip()),
                time: SystemTime::now(),
                method: req.method().to_string(),
                uri: req
                    .uri()
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "/".into()),
                version: req.version(),
                host: host.to_string(),
                status: 0,
                bytes: 0,
                referer: header_str(req.headers(), header::REFERER),
                user_agent: header_str(req.headers(), header::USER_AGENT),
                target: None,
                duration: Default::default(),
            },
        )
    });

    // ACME HTTP-01 on plain HTTP listeners: before redirects and rules, as a CA expects.
    let mut challenge_by_address = false;
    if listener.protocol == Protocol::Http {
        if let Some(token) = req
            .uri()
            .path()
            .strip_prefix("/.well-known/acme-challenge/")
        {
            if let Some(key_auth) = ctx.lb.http01(token).await {
                let mut res = Response::new(full(Bytes::from(key_auth)));
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                if let Some((_, e)) = &mut log {
                    e.status = 200;
                }
                return Ok(res.map(|b| LoggedBody::new(b, log, None, start)));
            }
            // A CA never follows a redirect to an IP address (Let's Encrypt's rule), so for a
            // name that is an address a redirect of the challenge path can only fail; a token
            // unknown here is answered 404 instead, as the CA would find it.
            challenge_by_address = host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok();
        }
    }
    let mut rule_priority = None;
    let (mut res, rule, target, guard) = if req.headers().contains_key(header::CONTENT_LENGTH)
        && req.headers().contains_key(header::TRANSFER_ENCODING)
    {
        // A smuggling vector: never pass both on (nginx answers 400 too).
        (
            error_response(
                StatusCode::BAD_REQUEST,
                "request has both Content-Length and Transfer-Encoding",
            ),
            None,
            None,
            None,
        )
    } else {
        let (path, query) = (req.uri().path(), req.uri().query().unwrap_or(""));
        let facts = RequestFacts {
            method: req.method(),
            headers: req.headers(),
            host: &host,
            path,
            query,
            client: canonical_ip(ctx.peer.ip()),
        };
        let rule = listener.rules.iter().find(|r| r.matches(&facts));
        rule_priority = rule.map(|r| r.priority);
        let (action, extra) = match rule {
            Some(r) => (&r.action, Some(r)),
            None => (&listener.default_action, None),
        };
        let limited = rule.and_then(|r| {
            let limit = r.rate_limit.as_ref()?;
            limit.check(facts.client, facts.headers).err()
        });
        if let (Some(retry_after), Some(r)) = (limited, rule) {
            ctx.metrics.rate_limited(r.priority);
            let mut res = error_response(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            (res, extra, None, None)
        } else {
            match action {
                Action::FixedResponse(f) => {
                    let mut res = Response::new(full(f.body.clone()));
                    *res.status_mut() = f.status;
                    res.headers_mut()
                        .insert(header::CONTENT_TYPE, f.content_type.clone());
                    (res, extra, None, None)
                }
                Action::Redirect(_) if challenge_by_address => (
                    error_response(StatusCode::NOT_FOUND, "no such ACME challenge token"),
                    extra,
                    None,
                    None,
                ),
                Action::Redirect(r) => {
                    let location = r.location(&RedirectInput {
                        protocol: scheme(listener),
                        host: &host,
                        port: ctx.local.port(),
                        path,
                        query,
                    });
                    let mut res = error_response(r.status, "");
                    match HeaderValue::from_str(&location) {
                        Ok(v) => {
                            res.headers_mut().insert(header::LOCATION, v);
                        }
                        Err(_) => {
                            res = error_response(
                                StatusCode::BAD_REQUEST,
                                "cannot build redirect location",
                            )
                        }
                    }
                    (res, extra, None, None)
                }
                Action::Forward(f) => match f.pick() {
                    None => (
                        error_response(StatusCode::SERVICE_UNAVAILABLE, "no target group"),
                        extra,
                        None,
                        None,
                    ),
                    Some(group) => {
                        let upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
                        let (res, target, guard) =
                            forward(ctx, listener, extra, group, req, upgrade).await;
                        (res, extra, target, guard)
                    }
                },
            }
        }
    };
    listener.response_headers.apply(res.headers_mut());
    if let Some(r) = rule {
        r.response_headers.apply(res.headers_mut());
    }
    let status = res.status().as_u16();
    ctx.metrics.record(status, start.elapsed(), rule_priority);
    if let Some(g) = &guard {
        g.record(status);
    }
    if let Some((_, e)) = &mut log {
        e.status = status;
        e.target = target;
    }
    if let Some(c) = &listener.compress {
        res = c.apply(encoding, head_request, res);
    }
    Ok(res.map(|b| LoggedBody::new(b, log, guard, start)))
}

async fn forward(
    ctx: &ConnCtx,
    listener: &Listener,
    rule: Option<&Rule>,
    group: &Arc<TargetGroup>,
    req: Request<RequestBody>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> (
    Response<BoxBody>,
    Option<SocketAddr>,
    Option<OutstandingGuard>,
) {
    let (mut parts, body) = req.into_parts();
    let rewrite = rule.and_then(|r| r.rewrite.as_ref());
    let host_header = match rewrite.and_then(|rw| rw.host.clone()) {
        Some(h) => Some(h),
        None => parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        }),
    };
    // gRPC needs `TE: trailers` to reach an HTTP/2 target; it is hop-by-hop otherwise.
    // (Read only for groups that go through hyper's client, off the plain HTTP/1.1 path.)
    let te_trailers = group.transport.is_some()
        && parts
            .headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
    // A sticky cookie is read before the request's headers change.
    let requested = group
        .stickiness
        .as_ref()
        .and_then(|s| s.requested(&parts.headers))
        .map(str::to_owned);
    strip_hop_by_hop(&mut parts.headers, client_upgrade.is_some());
    if let Some(h) = host_header {
        parts.headers.insert(header::HOST, h);
    }
    add_forwarded(&mut parts.headers, ctx, listener);
    // Only Portico says what client certificate was verified.
    if parts
        .headers
        .keys()
        .any(|k| k.as_str().starts_with(crate::tls::CLIENT_CERT_PREFIX))
    {
        let forged: Vec<HeaderName> = parts
            .headers
            .keys()
            .filter(|k| k.as_str().starts_with(crate::tls::CLIENT_CERT_PREFIX))
            .cloned()
            .collect();
        for k in forged {
            parts.headers.remove(k);
        }
    }
    if let Some(cert) = ctx.client_cert.get() {
        for (k, v) in cert.iter() {
            parts.headers.insert(k.clone(), v.clone());
        }
    }
    listener.request_headers.apply(&mut parts.headers);
    if let Some(r) = rule {
        r.request_headers.apply(&mut parts.headers);
    }
    let rewritten = match rewrite.map(|rw| rw.path_and_query(parts.uri.path(), parts.uri.query())) {
        Some(Err(_)) => {
            return (
                error_response(
                    StatusCode::BAD_REQUEST,
                    "the rule's path rewrite made an invalid path",
                ),
                None,
                None,
            );
        }
        Some(Ok(p)) => p,
        None => None,
    };
    let path = match &rewritten {
        Some(p) => p.as_str(),
        None => parts.uri.path_and_query().map_or("/", |p| p.as_str()),
    };
    let no_body = hyper::body::Body::is_end_stream(&body);
    let retry_safe = is_idempotent(&parts.method) && no_body;
    let mut body = (!no_body).then_some(body);
    if let Some(t) = &group.transport {
        let job = ClientJob {
            path: path.to_string(),
            te_trailers,
            retry_safe,
            requested,
        };
        return forward_via_client(ctx, listener, group, t, parts, body, client_upgrade, job).await;
    }
    let mut exclude = None;
    for attempt in 0..2 {
        let sticky = requested
            .as_deref()
            .and_then(|id| group.sticky(id, exclude));
        let Some(target) = sticky.or_else(|| group.select(exclude)) else {
            return (
                error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no target is registered in the target group",
                ),
                None,
                None,
            );
        };
        let guard = target.state.begin_request();
        let out = upstream::Outgoing {
            method: &parts.method,
            path,
            headers: &parts.headers,
        };
        let sent = tokio::time::timeout(group.response_timeout, async {
            let conn = upstream::connect(target.addr, group.connect_timeout).await?;
            upstream::send(conn, out, body.take()).await
        })
        .await;
        let error = match sent {
            Err(_) => {
                return (
                    error_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the target did not answer in time",
                    ),
                    Some(target.addr),
                    Some(guard),
                );
            }
            Ok(Ok(answer)) => {
                target.state.connect_succeeded();
                let mut res = answer.response;
                if let Some(conn) = answer.upgraded {
                    let Some(client_side) = client_upgrade else {
                        return (
                            error_response(
                                StatusCode::BAD_GATEWAY,
                                "the target switched protocols without being asked to",
                            ),
                            Some(target.addr),
                            Some(guard),
                        );
                    };
                    tunnel(
                        client_side,
                        conn,
                        ctx.activity.clone(),
                        listener.idle_timeout,
                    );
                    strip_hop_by_hop(res.headers_mut(), true);
                } else if answer.connection_names_headers {
                    // The hop-by-hop headers themselves were left out while parsing.
                    strip_hop_by_hop(res.headers_mut(), false);
                }
                if let Some(s) = &group.stickiness {
                    s.on_response(
                        res.headers_mut(),
                        &target.id,
                        requested.as_deref(),
                        listener.protocol == Protocol::Https,
                    );
                }
                return (
                    res.map(|b| b.boxed_unsync()),
                    Some(target.addr),
                    Some(guard),
                );
            }
            Ok(Err(e)) => e,
        };
        let detail = error.to_string();
        match error {
            SendError::Connect(_) => {
                target.state.connect_failed(group, target.addr, &detail);
                tracing::debug!(target_group = %group.name, target = %target.addr, attempt, error = %detail, "connect failed");
                if attempt == 0 && retry_safe && group.targets.len() > 1 {
                    exclude = Some(target.addr);
                    continue;
                }
                return (
                    error_response(StatusCode::BAD_GATEWAY, "the target refused the connection"),
                    Some(target.addr),
                    Some(guard),
                );
            }
            SendError::NoResponse(_) => {
                // Every idle connection to this target is suspect now (it may have died).
                upstream::pool::purge(target.addr);
                tracing::debug!(target_group = %group.name, target = %target.addr, attempt, error = %detail, "no response from the target");
                if attempt == 0 && retry_safe {
                    // As nginx's `proxy_next_upstream error`: once more, elsewhere when there is
                    // an elsewhere, else on a fresh connection to the same target.
                    if group.targets.len() > 1 {
                        exclude = Some(target.addr);
                    }
                    continue;
                }
                return (
                    error_response(
                        StatusCode::BAD_GATEWAY,
                        "the target closed the connection or sent an invalid response",
                    ),
                    Some(target.addr),
                    Some(guard),
                );
            }
            SendError::Failed(_) => {
                tracing::debug!(target_group = %group.name, target = %target.addr, error = %detail, "target failed");
                return (
                    error_response(
                        StatusCode::BAD_GATEWAY,
                        "the target closed the connection or sent an invalid response",
                    ),
                    Some(target.addr),
                    Some(guard),
                );
            }
        }
    }
    (
        error_response(StatusCode::BAD_GATEWAY, "the target refused the connection"),
        None,
        None,
    )
}

/// What `forward_via_client` needs besides the request.
struct ClientJob {
    path: String,
    te_trailers: bool,
    retry_safe: bool,
    requested: Option<String>,
}

/// `forward` for HTTPS and HTTP/2 (gRPC) target groups, through hyper's client
/// (`upstream/client.rs`): the same retry, stickiness and passive health as the own path.
#[allow(clippy::too_many_arguments)]
async fn forward_via_client(
    ctx: &ConnCtx,
    listener: &Listener,
    group: &Arc<TargetGroup>,
    t: &upstream::client::Transport,
    parts: http::request::Parts,
    mut body: Option<RequestBody>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    job: ClientJob,
) -> (
    Response<BoxBody>,
    Option<SocketAddr>,
    Option<OutstandingGuard>,
) {
    let fail = |status: StatusCode, msg: &str| {
        if t.grpc {
            upstream::client::grpc_error::<BoxBody>(status, msg)
        } else {
            error_response(status, msg)
        }
    };
    let authority = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let mut exclude = None;
    for attempt in 0..2 {
        let sticky = job
            .requested
            .as_deref()
            .and_then(|id| group.sticky(id, exclude));
        let Some(target) = sticky.or_else(|| group.select(exclude)) else {
            return (
                fail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no target is registered in the target group",
                ),
                None,
                None,
            );
        };
        let guard = target.state.begin_request();
        let mut req = Request::new(match body.take() {
            Some(b) => b.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
            None => http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        });
        *req.method_mut() = parts.method.clone();
        *req.headers_mut() = parts.headers.clone();
        let uri = if t.h2 {
            req.headers_mut().remove(header::HOST);
            if job.te_trailers {
                req.headers_mut()
                    .insert(header::TE, HeaderValue::from_static("trailers"));
            }
            let auth = authority.clone().unwrap_or_else(|| target.addr.to_string());
            format!("{}://{auth}{}", t.scheme(), job.path)
        } else {
            job.path.clone()
        };
        match uri.parse() {
            Ok(u) => *req.uri_mut() = u,
            Err(_) => {
                return (
                    fail(
                        StatusCode::BAD_REQUEST,
                        "the request target cannot be forwarded",
                    ),
                    Some(target.addr),
                    Some(guard),
                )
            }
        }
        let name = t.server_name.clone().or_else(|| target.tls_name.clone());
        let sent = tokio::time::timeout(
            group.response_timeout,
            upstream::client::send(
                t,
                target.addr,
                &name,
                group.connect_timeout,
                req,
                client_upgrade.is_some(),
            ),
        )
        .await;
        let error = match sent {
            Err(_) => {
                return (
                    fail(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the target did not answer in time",
                    ),
                    Some(target.addr),
                    Some(guard),
                )
            }
            Ok(Ok(mut res)) => {
                target.state.connect_succeeded();
                let upgraded = res.status() == StatusCode::SWITCHING_PROTOCOLS;
                if upgraded {
                    let Some(client_side) = client_upgrade else {
                        return (
                            fail(
                                StatusCode::BAD_GATEWAY,
                                "the target switched protocols without being asked to",
                            ),
                            Some(target.addr),
                            Some(guard),
                        );
                    };
                    let target_side = hyper::upgrade::on(&mut res);
                    tunnel_upgraded(
                        client_side,
                        target_side,
                        ctx.activity.clone(),
                        listener.idle_timeout,
                    );
                }
                if res.version() != Version::HTTP_2 {
                    strip_hop_by_hop(res.headers_mut(), upgraded);
                }
                if let Some(s) = &group.stickiness {
                    s.on_response(
                        res.headers_mut(),
                        &target.id,
                        job.requested.as_deref(),
                        listener.protocol == Protocol::Https,
                    );
                }
                return (
                    res.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()),
                    Some(target.addr),
                    Some(guard),
                );
            }
            Ok(Err(e)) => e,
        };
        let detail = error.to_string();
        let retry = attempt == 0 && job.retry_safe;
        match error {
            SendError::Connect(_) => {
                target.state.connect_failed(group, target.addr, &detail);
                tracing::debug!(target_group = %group.name, target = %target.addr, attempt, error = %detail, "connect failed");
                if retry && group.targets.len() > 1 {
                    exclude = Some(target.addr);
                    continue;
                }
                return (
                    fail(StatusCode::BAD_GATEWAY, "no connection to the target"),
                    Some(target.addr),
                    Some(guard),
                );
            }
            SendError::NoResponse(_) | SendError::Failed(_) => {
                tracing::debug!(target_group = %group.name, target = %target.addr, attempt, error = %detail, "no response from the target");
                if retry {
                    if group.targets.len() > 1 {
                        exclude = Some(target.addr);
                    }
                    continue;
                }
                return (
                    fail(
                        StatusCode::BAD_GATEWAY,
                        "the target closed the connection or sent an invalid response",
                    ),
                    Some(target.addr),
                    Some(guard),
                );
            }
        }
    }
    (
        fail(StatusCode::BAD_GATEWAY, "no connection to the target"),
        None,
        None,
    )
}

/// Copies bytes both ways between an upgraded client connection and an upgraded target
/// connection of hyper's client (WebSocket to an HTTPS target).
fn tunnel_upgraded(
    client: hyper::upgrade::OnUpgrade,
    target: hyper::upgrade::OnUpgrade,
    activity: Activity,
    idle: std::time::Duration,
) {
    tokio::spawn(async move {
        let (Ok(c), Ok(t)) = (client.await, target.await) else {
            return;
        };
        let (mut c, mut t) = (TokioIo::new(c), TokioIo::new(t));
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut c, &mut t) => {}
            _ = activity.idle_for(idle) => {}
        }
    });
}

/// Copies bytes both ways between an upgraded client and target connection (WebSocket).
fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    mut target: upstream::Conn,
    activity: Activity,
    idle: std::time::Duration,
) {
    tokio::spawn(async move {
        let Ok(c) = client.await else {
            return;
        };
        let mut c = TokioIo::new(c);
        // Bytes the target sent right after its 101 belong to the new protocol.
        if !target.buf.is_empty()
            && tokio::io::AsyncWriteExt::write_all(&mut c, &target.buf)
                .await
                .is_err()
        {
            return;
        }
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut c, &mut target.io) => {}
            _ = activity.idle_for(idle) => {}
        }
    });
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers, and any header the Connection header names; keeps
/// `Connection: upgrade` and `Upgrade` when a protocol switch is being passed through.
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = connection_tokens(h)
        .filter(|t| {
            !t.eq_ignore_ascii_case("upgrade")
                && !t.eq_ignore_ascii_case("close")
                && !t.eq_ignore_ascii_case("keep-alive")
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

fn add_forwarded(h: &mut HeaderMap, ctx: &ConnCtx, listener: &Listener) {
    let xff = match h.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => {
            HeaderValue::from_str(&format!("{prev}, {}", canonical_ip(ctx.peer.ip()))).ok()
        }
        // The common case: no allocation, the connection's value is shared.
        _ => Some(ctx.peer_ip_header.clone()),
    };
    if let Some(v) = xff {
        h.insert(X_FORWARDED_FOR, v);
    }
    h.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(scheme(listener)),
    );
    h.insert(X_FORWARDED_PORT, ctx.local_port_header.clone());
}

fn scheme(l: &Listener) -> &'static str {
    match l.protocol {
        Protocol::Http => "http",
        Protocol::Https => "https",
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The request's host without port, lower-cased: the Host header, else the URI authority (h2).
fn request_host<B>(req: &Request<B>) -> std::borrow::Cow<'_, str> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    let host = strip_port(raw);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        host.to_ascii_lowercase().into()
    } else {
        host.into()
    }
}

fn strip_port(hostport: &str) -> &str {
    if hostport.starts_with('[') {
        return hostport.find(']').map_or(hostport, |i| &hostport[..=i]);
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => hostport,
    }
}

fn header_str(h: &HeaderMap, name: HeaderName) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn full(b: Bytes) -> BoxBody {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

/// A short plain-text answer from Portico itself.
pub fn error_response(status: StatusCode, detail: &str) -> Response<BoxBody> {
    let body = if detail.is_empty() {
        Bytes::new()
    } else {
        Bytes::from(format!(
            "{} {}: {detail}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        ))
    };
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    if !detail.is_empty() {
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_split() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:8443"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn hop_by_hop_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }
}
