//! TEST DOUBLE: a fault-injecting HTTPS proxy in front of Pebble. Debian's Pebble has no ACME
//! Renewal Information (RFC 9773), no rate limits and no `Retry-After` (see FACTS.md); this proxy
//! adds exactly those, and forwards everything else to the real Pebble unchanged. It keeps the
//! client's `Host` header, so Pebble builds every URL (and checks every JWS `url`) with the
//! proxy's address.
//!
//! - The directory gains `renewalInfo` at `/renewal-info`.
//! - `GET /renewal-info/<id>`: the first certificate id asked about gets a window that has already
//!   begun ("renew now"); every other id a window 20–21 days ahead, or with
//!   `move_window_earlier` 10–11 days ahead from its second query on (a CA that pulls the
//!   window forward, as for an early revocation). `Retry-After: 60`.
//! - With `caa_identities` set, the directory's `meta.caaIdentities` lists them (Pebble's lists
//!   none).
//! - With `profiles` set, the directory's `meta.profiles` lists them (Debian's Pebble 2.4 has no
//!   certificate profiles); each newOrder's `profile` is recorded and reflected in the order.
//! - With `unknown_extensions` set, every JSON object the CA answers gains a field no RFC
//!   defines, and every authorization gains a `dns-persist-01` challenge (a type Portico does
//!   not know, without a `token`) before the ones Pebble offers.
//! - `POST /order-plz` (Pebble's newOrder): `replaces` is reflected in the order; the next `rate_limited_orders` answer 429
//!   `rateLimited` with `Retry-After: retry_after_secs`; every order's arrival time and its
//!   `replaces` field are recorded.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Default)]
pub struct FaultState {
    pub rate_limited_orders: u32,
    pub retry_after_secs: u64,
    /// Each newOrder: when it arrived and the `replaces` it named.
    pub orders: Vec<(Instant, Option<String>)>,
    /// Each renewal-information request: the certificate id.
    pub ari_queries: Vec<String>,
    /// Profiles the directory advertises (name, description); none when empty.
    pub profiles: Vec<(String, String)>,
    /// Each newOrder's `profile` field.
    pub order_profiles: Vec<Option<String>>,
    /// Renewal windows after the first certificate's move earlier on their second query.
    pub move_window_earlier: bool,
    /// Unknown fields in every JSON answer and an unknown challenge type in authorizations.
    pub unknown_extensions: bool,
    /// Authorizations answered with the unknown challenge added.
    pub authorizations_extended: u32,
    /// CAA domains the directory names (`meta.caaIdentities`; Pebble names none).
    pub caa_identities: Vec<String>,
}

pub struct FaultProxy {
    pub port: u16,
    pub state: Arc<Mutex<FaultState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Serves TLS with `cert`/`key` (Pebble's own, so clients trust it alike) and forwards to
    /// Pebble at `upstream` with `client`.
    pub async fn start(
        cert: &Path,
        key: &Path,
        upstream: SocketAddr,
        client: Arc<rustls::ClientConfig>,
    ) -> FaultProxy {
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(FaultState::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, st, client) = (acceptor.clone(), st.clone(), client.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req| {
                        let (st, client) = (st.clone(), client.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                handle(req, st, upstream, client).await,
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        FaultProxy { port, state, task }
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.state.lock().unwrap()
    }
}

async fn handle(
    req: Request<Incoming>,
    st: Arc<Mutex<FaultState>>,
    upstream: SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    let host = parts
        .headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_string();
    if let Some(id) = path.strip_prefix("/renewal-info/") {
        let (first, moved) = {
            let mut s = st.lock().unwrap();
            s.ari_queries.push(id.to_string());
            let asked = s.ari_queries.iter().filter(|q| *q == id).count();
            (s.ari_queries[0] == id, s.move_window_earlier && asked >= 2)
        };
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let (start, end) = if first {
            (now - Duration::from_secs(60), now - Duration::from_secs(30))
        } else if moved {
            (now + 10 * day, now + 11 * day)
        } else {
            (now + 20 * day, now + 21 * day)
        };
        let json = format!(
            r#"{{"suggestedWindow": {{"start": "{}", "end": "{}"}}}}"#,
            humantime::format_rfc3339_seconds(start),
            humantime::format_rfc3339_seconds(end)
        );
        return Response::builder()
            .header("content-type", "application/json")
            .header("retry-after", "60")
            .body(Full::new(Bytes::from(json)))
            .unwrap();
    }
    if path == "/order-plz" {
        let payload = jws_payload(&body);
        let field = |k: &str| {
            payload
                .as_ref()
                .and_then(|p| p.get(k).and_then(|r| r.as_str()).map(String::from))
        };
        let (replaces, profile) = (field("replaces"), field("profile"));
        let limited = {
            let mut s = st.lock().unwrap();
            s.orders.push((Instant::now(), replaces));
            s.order_profiles.push(profile);
            if s.rate_limited_orders > 0 {
                s.rate_limited_orders -= 1;
                Some(s.retry_after_secs)
            } else {
                None
            }
        };
        if let Some(secs) = limited {
            return Response::builder()
                .status(429)
                .header("content-type", "application/problem+json")
                .header("retry-after", secs.to_string())
                .body(Full::new(Bytes::from(
                    r#"{"type": "urn:ietf:params:acme:error:rateLimited", "detail": "too many new orders recently (test double)", "status": 429}"#,
                )))
                .unwrap();
        }
    }
    // Forward to Pebble with the same method, path, headers (Host included) and body.
    let mut fwd = Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.clone());
    for (k, v) in &parts.headers {
        fwd = fwd.header(k, v);
    }
    let fwd = fwd.body(Full::new(body)).unwrap();
    let reply = match crate::support::send_tls(upstream, "localhost", client, fwd).await {
        Ok(r) => r,
        Err(e) => {
            return Response::builder()
                .status(502)
                .body(Full::new(Bytes::from(e)))
                .unwrap()
        }
    };
    let mut out = Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        if k != "content-length" && k != "transfer-encoding" && k != "connection" {
            out = out.header(k, v);
        }
    }
    let mut body = reply.body;
    if path == "/order-plz" && reply.status == 201 {
        // An ARI CA reflects `replaces` in the order (RFC 9773 §5); Pebble does not know it.
        let (replaces, profile) = {
            let s = st.lock().unwrap();
            (
                s.orders.last().and_then(|o| o.1.clone()),
                s.order_profiles.last().cloned().flatten(),
            )
        };
        let mut order: serde_json::Value = serde_json::from_str(&body).unwrap();
        if let Some(r) = replaces {
            order["replaces"] = r.into();
        }
        if let Some(p) = profile {
            order["profile"] = p.into();
        }
        body = order.to_string();
    }
    if path == "/dir" {
        let mut dir: serde_json::Value = serde_json::from_str(&body).unwrap();
        dir["renewalInfo"] = format!("https://{host}/renewal-info").into();
        let caa = st.lock().unwrap().caa_identities.clone();
        if !caa.is_empty() {
            dir["meta"]["caaIdentities"] = caa.into();
        }
        let profiles = st.lock().unwrap().profiles.clone();
        if !profiles.is_empty() {
            let map: serde_json::Map<String, serde_json::Value> = profiles
                .into_iter()
                .map(|(n, d)| (n, serde_json::Value::String(d)))
                .collect();
            dir["meta"]["profiles"] = serde_json::Value::Object(map);
        }
        body = dir.to_string();
    }
    if st.lock().unwrap().unknown_extensions {
        if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&body) {
            if let Some(obj) = v.as_object_mut() {
                obj.insert(
                    "x-extension-from-the-future".into(),
                    serde_json::json!({"nested": [1, 2, {"deep": true}]}),
                );
                if path.starts_with("/authZ/") {
                    if let Some(list) = obj.get_mut("challenges").and_then(|c| c.as_array_mut()) {
                        list.insert(
                            0,
                            serde_json::json!({
                                "type": "dns-persist-01",
                                "url": format!("https://{host}/chalZ/persist-not-real"),
                                "status": "pending",
                                "issuer-domain-names": ["ca.example"],
                            }),
                        );
                        st.lock().unwrap().authorizations_extended += 1;
                    }
                }
                body = v.to_string();
            }
        }
    }
    out.body(Full::new(Bytes::from(body))).unwrap()
}

fn jws_payload(body: &[u8]) -> Option<serde_json::Value> {
    let jws: serde_json::Value = serde_json::from_slice(body).ok()?;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jws.get("payload")?.as_str()?)
        .ok()?;
    serde_json::from_slice(&payload).ok()
}
