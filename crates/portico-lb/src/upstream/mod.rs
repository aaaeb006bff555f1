//! HTTP/1.1 to targets, driven inside the task of the request that uses it.
//!
//! Why not hyper's client here (hyper still serves the client side): hyper-util's legacy client
//! runs every target connection as a task of its own, hands each request and response across a
//! channel and a oneshot, and spawns a task per request to put the connection back into its
//! pool; `hyper::client::conn::http1` still needs the connection task. On the plain-HTTP
//! benchmark that hand-off was the largest cost left (docs/benchmarks.md). Here a request writes
//! its head on a pooled connection and reads the response head from it in the task that serves
//! the client; the response body is read from the same socket by hyper's server loop as it polls
//! the body, and the connection returns to the worker's pool when the body ends — pingora's
//! design (`pingora-proxy/src/proxy_h1.rs`). A request body is written by a small pump task
//! beside it, so that bodies stream both ways at once.

mod body;
pub mod client;
pub mod live;
pub mod pool;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::body::RequestBody;
use crate::wire::{put_chunk_size, put_header, HOP_BY_HOP};
pub use body::UpstreamBody;
use body::{BodyIo, Chunk, Framing};
pub use pool::Conn;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest response head accepted from a target.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;

/// Why a request did not get a response head from its target.
#[derive(Debug)]
pub enum SendError {
    /// The connection was refused or timed out: the target never saw the request.
    Connect(io::Error),
    /// The connection failed before any byte of a response: a pooled connection the target
    /// closed while it was idle, or a target that died with the request. Safe to retry when the
    /// request is idempotent (nginx's `proxy_next_upstream error`).
    NoResponse(io::Error),
    /// The target closed the connection or sent something that is not an HTTP/1.1 response.
    Failed(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect: {e}"),
            SendError::NoResponse(e) => write!(f, "no response: {e}"),
            SendError::Failed(e) => f.write_str(e),
        }
    }
}

/// A pooled connection to `target`, or a new one.
pub async fn connect(target: SocketAddr, timeout: Duration) -> Result<Conn, SendError> {
    if let Some(c) = pool::checkout(target) {
        return Ok(c);
    }
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(SendError::Connect(e)),
        Err(_) => {
            return Err(SendError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {timeout:?}"),
            )))
        }
    };
    let _ = stream.set_nodelay(true);
    live::opened(target, std::os::fd::AsRawFd::as_raw_fd(&stream));
    Ok(Conn::new(stream, target))
}

/// What is sent: the parts of the client's request, already rewritten for the target.
pub struct Outgoing<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// A response head from the target, and the connection if it switched protocols (101).
pub struct Answer {
    pub response: Response<UpstreamBody>,
    pub upgraded: Option<Conn>,
    /// The response's Connection header named other headers, still to be removed
    /// (hop-by-hop headers themselves are left out while parsing, except on a 101).
    pub connection_names_headers: bool,
}

/// Sends one request on `conn` and reads the response head; the body follows as it is polled.
pub async fn send(
    mut conn: Conn,
    req: Outgoing<'_>,
    body: Option<RequestBody>,
) -> Result<Answer, SendError> {
    // A body read whole with the head goes out in the same write, without the pump task.
    let (whole, body) = match body {
        Some(RequestBody::Whole(whole)) => (whole, None),
        other => (None, other),
    };
    let chunked = body.is_some() && !req.headers.contains_key(header::CONTENT_LENGTH);
    let mut head = Vec::with_capacity(512 + whole.as_ref().map_or(0, |w| w.len()));
    write_head(&mut head, &req, body.is_none() && whole.is_none(), chunked);
    if let Some(whole) = &whole {
        debug_assert!(req.headers.contains_key(header::CONTENT_LENGTH));
        head.extend_from_slice(whole);
    }
    let is_head = req.method == Method::HEAD;
    match body {
        None => {
            conn.io
                .write_all(&head)
                .await
                .map_err(SendError::NoResponse)?;
            let h = read_head(&mut conn.io, &mut conn.buf, is_head).await?;
            if h.upgrade {
                // The connection now carries the switched protocol; the caller tunnels it.
                let body = UpstreamBody::empty(conn.target);
                return Ok(answer(h, body, Some(conn)));
            }
            let body = UpstreamBody::new(
                BodyIo::Whole(conn.io),
                conn.buf,
                h.framing,
                h.keep_alive,
                conn.target,
            );
            Ok(answer(h, body, None))
        }
        Some(body) => {
            let (mut r, mut w) = conn.io.into_split();
            let pump = AbortOnDrop::new(tokio::spawn(async move {
                w.write_all(&head).await?;
                pump_body(&mut w, body, chunked).await?;
                Ok(w)
            }));
            let mut buf = conn.buf;
            let h = read_head(&mut r, &mut buf, is_head).await?;
            if h.upgrade {
                return Err(SendError::Failed(
                    "the target switched protocols on a request with a body".into(),
                ));
            }
            let body = UpstreamBody::new(
                BodyIo::Split(r, pump),
                buf,
                h.framing,
                h.keep_alive,
                conn.target,
            );
            Ok(answer(h, body, None))
        }
    }
}

fn answer(h: Head, body: UpstreamBody, upgraded: Option<Conn>) -> Answer {
    let mut response = Response::new(body);
    *response.status_mut() = h.status;
    *response.version_mut() = Version::HTTP_11;
    *response.headers_mut() = h.headers;
    Answer {
        response,
        upgraded,
        connection_names_headers: h.connection_names_headers,
    }
}

/// Hop-by-hop response headers (RFC 9110 §7.6.1), and Upgrade: never passed on to the client.
fn is_hop_by_hop(name: &http::HeaderName) -> bool {
    name == header::UPGRADE || HOP_BY_HOP.contains(name)
}

/// Writes the request line, the headers and the framing header the body needs.
fn write_head(out: &mut Vec<u8>, req: &Outgoing<'_>, no_body: bool, chunked: bool) {
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (k, v) in req.headers {
        put_header(out, k.as_str().as_bytes(), v.as_bytes());
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if no_body
        && !req.headers.contains_key(header::CONTENT_LENGTH)
        && matches!(*req.method, Method::POST | Method::PUT | Method::PATCH)
    {
        // A body-carrying method without a body still says so, as hyper's client does.
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Streams the client's request body to the target, chunk-encoded when it has no length.
async fn pump_body(
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    mut body: RequestBody,
    chunked: bool,
) -> io::Result<()> {
    let mut scratch = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(io::Error::other)?;
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) if chunked => {
                scratch.clear();
                put_chunk_size(&mut scratch, data.len());
                if data.len() <= 16 * 1024 {
                    scratch.put_slice(&data);
                    scratch.put_slice(b"\r\n");
                    w.write_all(&scratch).await?;
                } else {
                    w.write_all(&scratch).await?;
                    w.write_all(&data).await?;
                    w.write_all(b"\r\n").await?;
                }
            }
            Ok(data) => w.write_all(&data).await?,
            Err(frame) => {
                if let (true, Ok(trailers)) = (chunked, frame.into_trailers()) {
                    let mut t = b"0\r\n".to_vec();
                    for (k, v) in &trailers {
                        put_header(&mut t, k.as_str().as_bytes(), v.as_bytes());
                    }
                    t.extend_from_slice(b"\r\n");
                    w.write_all(&t).await?;
                    return Ok(());
                }
            }
        }
    }
    if chunked {
        w.write_all(b"0\r\n\r\n").await?;
    }
    Ok(())
}

struct Head {
    status: StatusCode,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
    upgrade: bool,
    connection_names_headers: bool,
}

/// Reads until a final response head (1xx other than 101 are skipped) and parses it.
async fn read_head<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    is_head: bool,
) -> Result<Head, SendError> {
    let mut got_any = !buf.is_empty();
    loop {
        if !buf.is_empty() {
            if let Some(h) = parse_head(buf, is_head)? {
                return Ok(h);
            }
            if buf.len() > MAX_HEAD {
                return Err(SendError::Failed(format!(
                    "response head larger than {MAX_HEAD} bytes"
                )));
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8192);
        }
        match r.read_buf(buf).await {
            Ok(0) if !got_any => {
                return Err(SendError::NoResponse(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the target closed the connection",
                )))
            }
            Ok(0) => {
                return Err(SendError::Failed(
                    "the target closed the connection before a complete response head".into(),
                ))
            }
            Ok(_) => got_any = true,
            Err(e) if !got_any => return Err(SendError::NoResponse(e)),
            Err(e) => return Err(SendError::Failed(format!("reading the response: {e}"))),
        }
    }
}

/// Parses one response head from the front of `buf`, consuming it; `None` when incomplete. An
/// interim 1xx response (100 Continue, 103 Early Hints) is consumed and skipped.
fn parse_head(buf: &mut BytesMut, is_head: bool) -> Result<Option<Head>, SendError> {
    loop {
        let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut raw);
        let len = match res.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => {
                return Err(SendError::Failed(format!(
                    "the target sent an invalid response head: {e}"
                )))
            }
        };
        let code = res.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| {
            SendError::Failed(format!("the target sent an invalid status code {code}"))
        })?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            let _ = buf.split_to(len);
            continue;
        }
        let http11 = res.version == Some(1);
        // Header values become slices of one copy of the head (no allocation per header).
        let head_bytes: Bytes = Bytes::copy_from_slice(&buf[..len]);
        let base = buf.as_ptr() as usize;
        let mut headers = HeaderMap::with_capacity(res.headers.len());
        let (mut length, mut chunked, mut close, mut has_te) = (None, false, !http11, false);
        let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
        let mut connection_names_headers = false;
        for h in res.headers.iter() {
            let name = http::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                SendError::Failed(format!("invalid response header name {:?}", h.name))
            })?;
            let at = h.value.as_ptr() as usize - base;
            let value = HeaderValue::from_maybe_shared(head_bytes.slice(at..at + h.value.len()))
                .map_err(|_| SendError::Failed(format!("invalid value of header {name}")))?;
            if name == header::CONTENT_LENGTH {
                let n = value
                    .to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| SendError::Failed("invalid Content-Length".into()))?;
                if length.is_some_and(|l| l != n) {
                    return Err(SendError::Failed(
                        "conflicting Content-Length headers".into(),
                    ));
                }
                length = Some(n);
            } else if name == header::TRANSFER_ENCODING {
                has_te = true;
                // Chunked is the final coding when the last listed one is "chunked".
                chunked = value
                    .to_str()
                    .ok()
                    .and_then(|s| s.rsplit(',').next())
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
            } else if name == header::CONNECTION {
                let v = value.to_str().unwrap_or("");
                for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if t.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case("keep-alive") {
                        if !http11 {
                            close = false;
                        }
                    } else if !t.eq_ignore_ascii_case("upgrade") {
                        connection_names_headers = true;
                    }
                }
            }
            // A 101 keeps its Upgrade and Connection; the caller rewrites them for the tunnel.
            // A Connection header that names other headers is kept for the caller, which
            // removes those and it.
            let named = name == header::CONNECTION && connection_names_headers;
            if upgrade || named || !is_hop_by_hop(&name) {
                headers.append(name, value);
            }
        }
        let _ = buf.split_to(len);
        let framing = if is_head
            || upgrade
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Framing::Done
        } else if has_te {
            // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3), which must not
            // travel on with it.
            headers.remove(header::CONTENT_LENGTH);
            if chunked {
                Framing::Chunked(Chunk::Size)
            } else {
                Framing::Close
            }
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            Framing::Close
        };
        let keep_alive = !close && framing != Framing::Close && !upgrade;
        return Ok(Some(Head {
            status,
            headers,
            framing,
            keep_alive,
            upgrade,
            connection_names_headers,
        }));
    }
}

/// A task's join handle that aborts the task when dropped.
pub struct AbortOnDrop<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> AbortOnDrop<T> {
    pub fn new(handle: tokio::task::JoinHandle<T>) -> Self {
        AbortOnDrop(Some(handle))
    }

    /// The task's result if it has finished successfully, without waiting.
    pub fn try_take(mut self) -> Option<T> {
        use futures_util::FutureExt;
        let handle = self.0.take()?;
        if !handle.is_finished() {
            handle.abort();
            return None;
        }
        handle.now_or_never().and_then(Result::ok)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, is_head: bool) -> Head {
        let mut buf = BytesMut::from(raw);
        let h = parse_head(&mut buf, is_head)
            .unwrap_or_else(|e| panic!("{e}"))
            .expect("complete");
        assert!(buf.is_empty(), "the whole head is consumed");
        h
    }

    #[test]
    fn hop_by_hop_headers_are_left_out_and_framing_read() {
        let h = parse(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\nUpgrade: h2c\r\nX-Kept: 1\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, Framing::Chunked(Chunk::Size));
        assert!(h.keep_alive && !h.connection_names_headers);
        let names: Vec<_> = h.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["x-kept"],
            "Content-Length goes with Transfer-Encoding"
        );

        let h = parse(
            "HTTP/1.1 200 OK\r\nConnection: close, x-secret\r\nX-Secret: 1\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(!h.keep_alive && h.connection_names_headers);
        assert_eq!(h.framing, Framing::Length(0));

        let h = parse("HTTP/1.0 200 OK\r\n\r\n", false);
        assert_eq!(h.framing, Framing::Close);
        assert!(!h.keep_alive);
    }

    #[test]
    fn interim_responses_are_skipped_and_bad_heads_refused() {
        let h = parse(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            false,
        );
        assert_eq!(h.status, StatusCode::NO_CONTENT);
        assert_eq!(h.framing, Framing::Done, "204 has no body whatever it says");
        let h = parse(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            false,
        );
        assert!(h.upgrade && h.headers.contains_key(header::UPGRADE));
        let h = parse("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true);
        assert_eq!(h.framing, Framing::Done, "a response to HEAD has no body");
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(parse_head(&mut buf, false).is_err(), "{bad:?}");
        }
        let mut partial = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Le");
        assert!(matches!(parse_head(&mut partial, false), Ok(None)));
    }
}
