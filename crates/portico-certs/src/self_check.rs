//! Before an order is placed: can the challenge pass? For HTTP-01, resolve each name as the CA
//! will and fetch a probe token through every address it finds, on the port the CA uses. A
//! misconfiguration (no record, a record pointing elsewhere, the port closed) fails fast with the
//! reason, instead of spending a CA's rate limit on a failed validation.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::challenge::{Http01Tokens, NameLookup};

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

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
        let addrs = match lookup.addrs(d).await {
            Ok(a) if !a.is_empty() => a,
            Ok(_) => {
                result = Err(format!("self-check: {d} has no A or AAAA record (NoRecords): add one pointing at this server"));
                break;
            }
            Err(e) => {
                result = Err(format!("self-check: cannot resolve {d}: {e}"));
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
