//! The HTTP/1.1 server side for plain keep-alive requests, written by hand; hyper serves the rest.
//!
//! Why not hyper for every HTTP/1.1 request: after the upstream client became our own, hyper's
//! per-request server work (parsing into its own buffers, a timer armed for every request head,
//! the dispatch state machine, response encoding) was the largest cost left on the plain-HTTP
//! benchmark, about as much CPU as the whole of nginx's user-space time per request
//! (docs/benchmarks.md, issue 13 step 12). This loop parses request heads with httparse straight
//! from one buffer per connection (header values are slices of it, not copies), arms the
//! header-read timer only while a head is incomplete (the wait between requests is the idle
//! timeout's, as nginx's `keepalive_timeout`), and writes the response head and a small body with
//! one `send`.
//!
//! It only takes what it fully understands: an HTTP/1.1 request in origin form, without
//! Transfer-Encoding, Upgrade or Expect, whose body (Content-Length, at most [`MAX_WHOLE_BODY`])
//! is read whole. Anything else — HTTP/1.0, WebSocket, `100-continue`, chunked or large request
//! bodies, absolute-form targets, a head httparse rejects or one over the limits — hands the
//! connection with every byte read so far to hyper for the rest of its life, so hyper still
//! answers all of those exactly as before (including its 400 and 431 answers).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::body::RequestBody;
use crate::proxy::{handle, ConnCtx, ProxyBody};
use crate::wire::{put_chunk_size, put_header};
use Outcome::Closed;

/// As many request headers as hyper accepts by default.
const MAX_HEADERS: usize = 100;
/// Request bodies up to this size are read whole with the head; larger ones stream via hyper.
pub const MAX_WHOLE_BODY: usize = 64 * 1024;
/// Body bytes up to this size are copied behind the response head and sent with it.
const COPY_MAX: usize = 16 * 1024;

/// How the fast path ended.
pub enum Outcome<I> {
    Closed,
    /// The rest of the connection is hyper's, starting with these bytes.
    Handover(Rewind<I>),
}

/// What the head in the buffer allows.
enum Parsed {
    /// Not complete yet; `head_done` when only the (small) body is missing.
    Partial {
        head_done: bool,
    },
    Handover,
    Request(Head),
}

struct Head {
    len: usize,
    body_len: usize,
    method: Method,
    path: (usize, usize),
    keep_alive: bool,
}

/// Header names and where their values are in the head (reused from request to request).
type HeaderSpans = Vec<(HeaderName, usize, usize)>;

/// Serves requests on `io` until the connection ends or needs hyper.
pub async fn serve<I>(mut io: I, ctx: Arc<ConnCtx>) -> Outcome<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let header_timeout = ctx.listener.header_timeout;
    let max_head = ctx.listener.max_header_bytes;
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut spans = HeaderSpans::with_capacity(16);
    // Armed from the connection's start for the first head; re-armed only when a later head
    // arrives in pieces.
    let head_timer = tokio::time::sleep(header_timeout);
    tokio::pin!(head_timer);
    let mut timer_armed = true;
    loop {
        let parsed = if buf.is_empty() {
            Parsed::Partial { head_done: false }
        } else {
            parse(&buf, max_head, &mut spans)
        };
        let head = match parsed {
            Parsed::Request(head) => head,
            Parsed::Handover => return handover(io, buf),
            Parsed::Partial { head_done } => {
                if !head_done && buf.len() >= max_head {
                    // hyper answers 431 for it.
                    return handover(io, buf);
                }
                if buf.is_empty() {
                    if ctx.draining.load(Ordering::Relaxed) {
                        return Closed;
                    }
                    ctx.h1_idle.store(true, Ordering::Relaxed);
                } else if !timer_armed && !head_done {
                    head_timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + header_timeout);
                    timer_armed = true;
                }
                if buf.capacity() - buf.len() < 4096 {
                    buf.reserve(8 * 1024);
                }
                let read = if timer_armed && !head_done {
                    tokio::select! {
                        r = io.read_buf(&mut buf) => r,
                        _ = head_timer.as_mut() => {
                            tracing::debug!("request head not complete in time: closing connection");
                            return Closed;
                        }
                    }
                } else {
                    io.read_buf(&mut buf).await
                };
                ctx.h1_idle.store(false, Ordering::Relaxed);
                match read {
                    Ok(0) | Err(_) => return Closed,
                    Ok(_) => continue,
                }
            }
        };
        timer_armed = false;
        let is_head = head.method == Method::HEAD;
        let keep_alive = head.keep_alive;
        let req = match build_request(&mut buf, head, &mut spans) {
            Some(req) => req,
            None => {
                let res = crate::proxy::error_response(StatusCode::BAD_REQUEST, "");
                let res = res.map(|b| {
                    crate::body::LoggedBody::new(b, None, None, std::time::Instant::now())
                });
                let _ = write_response(&mut io, &mut out, res, false, true).await;
                return Closed;
            }
        };
        let Ok(res) = handle(&ctx, req).await;
        let close = !keep_alive || ctx.draining.load(Ordering::Relaxed);
        let written = write_response(&mut io, &mut out, res, is_head, close).await;
        if out.capacity() > 4 * COPY_MAX {
            out = Vec::with_capacity(1024);
        }
        match written {
            Ok(true) if !close => {}
            Ok(_) => {
                let _ = io.shutdown().await;
                return Closed;
            }
            Err(e) => {
                tracing::debug!(error = %e, "writing the response failed");
                return Closed;
            }
        }
    }
}

fn handover<I>(io: I, buf: BytesMut) -> Outcome<I> {
    Outcome::Handover(Rewind {
        pre: (!buf.is_empty()).then(|| buf.freeze()),
        inner: io,
    })
}

/// Parses the head at the start of `buf` and decides whether this path may serve it.
fn parse(buf: &[u8], max_head: usize, spans: &mut HeaderSpans) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial { head_done: false },
        Err(_) => return Parsed::Handover,
    };
    if len > max_head || req.version != Some(1) {
        return Parsed::Handover;
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Parsed::Handover;
    };
    if !path.starts_with('/') {
        return Parsed::Handover;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Handover;
    };
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| s.as_ptr() as usize - base;
    let mut body_len = None;
    let mut keep_alive = true;
    spans.clear();
    for h in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Parsed::Handover;
        };
        if !h
            .value
            .iter()
            .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
        {
            return Parsed::Handover;
        }
        if name == header::TRANSFER_ENCODING || name == header::UPGRADE || name == header::EXPECT {
            return Parsed::Handover;
        }
        if name == header::CONTENT_LENGTH {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok());
            match (n, body_len) {
                (Some(n), None) if n <= MAX_WHOLE_BODY => body_len = Some(n),
                _ => return Parsed::Handover,
            }
        }
        if name == header::CONNECTION
            && h.value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        {
            keep_alive = false;
        }
        let v = offset(h.value);
        spans.push((name, v, v + h.value.len()));
    }
    let body_len = body_len.unwrap_or(0);
    if buf.len() < len + body_len {
        return Parsed::Partial { head_done: true };
    }
    let p = offset(path.as_bytes());
    Parsed::Request(Head {
        len,
        body_len,
        method,
        path: (p, p + path.len()),
        keep_alive,
    })
}

/// Takes the head and body out of `buf`; `None` when the target or a value is not valid.
fn build_request(
    buf: &mut BytesMut,
    head: Head,
    spans: &mut HeaderSpans,
) -> Option<Request<RequestBody>> {
    let bytes = buf.split_to(head.len).freeze();
    let body = (head.body_len > 0).then(|| buf.split_to(head.body_len).freeze());
    let uri = Uri::from_maybe_shared(bytes.slice(head.path.0..head.path.1)).ok()?;
    // Room for the X-Forwarded-* headers the proxy adds, so that the map does not grow.
    let mut headers = HeaderMap::with_capacity(spans.len() + 4);
    for (name, s, e) in spans.drain(..) {
        headers.append(
            name,
            HeaderValue::from_maybe_shared(bytes.slice(s..e)).ok()?,
        );
    }
    let mut req = Request::new(RequestBody::Whole(body));
    *req.method_mut() = head.method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Some(req)
}

enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Writes one response; `Ok(false)` when the connection cannot carry another one (the body
/// failed or did not match its length).
async fn write_response<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    res: Response<ProxyBody>,
    is_head: bool,
    close: bool,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    let (parts, mut body) = res.into_parts();
    let status = parts.status;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let bodiless_status = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut declared = None;
    for (k, v) in &parts.headers {
        // The framing and the connection's fate are this writer's to say.
        if k == header::TRANSFER_ENCODING || k == header::CONNECTION {
            continue;
        }
        if k == header::CONTENT_LENGTH {
            match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
                Some(n) if declared.is_none() => declared = Some(n),
                _ => continue,
            }
        }
        put_header(out, k.as_str().as_bytes(), v.as_bytes());
    }
    if !parts.headers.contains_key(header::DATE) {
        date(out);
    }
    let framing = if bodiless_status {
        Framing::None
    } else if let Some(n) = declared {
        if is_head {
            Framing::None
        } else {
            Framing::Length(n)
        }
    } else if let Some(n) = body.size_hint().exact() {
        put_header(out, b"content-length", n.to_string().as_bytes());
        if is_head {
            Framing::None
        } else {
            Framing::Length(n)
        }
    } else if is_head {
        Framing::None
    } else {
        put_header(out, b"transfer-encoding", b"chunked");
        Framing::Chunked
    };
    if close {
        put_header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    let mut sent = 0u64;
    let mut ok = true;
    if !matches!(framing, Framing::None) {
        loop {
            // The next frame if it is there already; else what is gathered goes out first.
            let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(f) => f,
                Poll::Pending => {
                    flush(io, out).await?;
                    body.frame().await
                }
            };
            let data = match frame {
                None => break,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "response body failed: closing connection");
                    ok = false;
                    break;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) if !d.is_empty() => d,
                    // Empty data and trailers (HTTP/1.1 clients rarely ask for those).
                    _ => continue,
                },
            };
            sent += data.len() as u64;
            match framing {
                Framing::Length(n) if sent > n => {
                    ok = false;
                    break;
                }
                Framing::Chunked => put_chunk_size(out, data.len()),
                _ => {}
            }
            if out.len() + data.len() <= COPY_MAX {
                out.extend_from_slice(&data);
            } else {
                flush(io, out).await?;
                io.write_all(&data).await?;
            }
            if matches!(framing, Framing::Chunked) {
                out.extend_from_slice(b"\r\n");
            }
        }
        match framing {
            Framing::Chunked if ok => out.extend_from_slice(b"0\r\n\r\n"),
            Framing::Length(n) if sent != n => ok = false,
            _ => {}
        }
    }
    drop(body);
    flush(io, out).await?;
    io.flush().await?;
    Ok(ok)
}

async fn flush<I: AsyncWrite + Unpin>(io: &mut I, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// The `date` header, formatted once a second per thread (as hyper and nginx cache it).
fn date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs || c.1.is_empty() {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        put_header(out, b"date", c.1.as_bytes());
    });
}

/// A connection with bytes already read from it put back in front.
pub struct Rewind<I> {
    pre: Option<Bytes>,
    inner: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(pre) = self.pre.as_mut() {
            let n = pre.len().min(buf.remaining());
            buf.put_slice(&pre[..n]);
            pre.advance(n);
            if pre.is_empty() {
                self.pre = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &str) -> Parsed {
        parse(raw.as_bytes(), 16 * 1024, &mut Vec::new())
    }

    #[test]
    fn plain_requests_are_taken_the_rest_handed_over() {
        let Parsed::Request(h) = parsed("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\n") else {
            panic!("a plain GET is this path's");
        };
        assert_eq!((h.method, h.body_len, h.keep_alive), (Method::GET, 0, true));

        let Parsed::Request(h) = parsed(
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nConnection: keep-alive, Close\r\n\r\nabc",
        ) else {
            panic!("a small whole body is this path's");
        };
        assert_eq!((h.body_len, h.keep_alive), (3, false));
        assert!(matches!(
            parsed("POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\na"),
            Parsed::Partial { head_done: true }
        ));
        assert!(matches!(
            parsed("GET / HTTP/1.1\r\nHost"),
            Parsed::Partial { head_done: false }
        ));
        for raw in [
            "GET / HTTP/1.0\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
            "POST / HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n",
            "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(parsed(raw), Parsed::Handover), "{raw:?}");
        }
    }

    #[test]
    fn header_values_are_slices_of_the_head() {
        let mut buf =
            BytesMut::from(&b"GET /p HTTP/1.1\r\nHost: example.com\r\nx-b: 2\r\n\r\nGET"[..]);
        let mut spans = Vec::new();
        let Parsed::Request(h) = parse(&buf, 1024, &mut spans) else {
            panic!()
        };
        assert_eq!(spans.len(), 2);
        let req = build_request(&mut buf, h, &mut spans).unwrap();
        assert_eq!(req.uri().path(), "/p");
        assert_eq!(req.headers()["host"], "example.com");
        assert_eq!(req.headers()["x-b"], "2");
        assert_eq!(&buf[..], b"GET", "the next request stays in the buffer");
    }

    #[test]
    fn chunk_size_lines_are_hex() {
        for (n, line) in [
            (0, "0\r\n"),
            (255, "ff\r\n"),
            (4096, "1000\r\n"),
            (usize::MAX, "ffffffffffffffff\r\n"),
        ] {
            let mut out = Vec::new();
            put_chunk_size(&mut out, n);
            assert_eq!(out, line.as_bytes(), "{n}");
        }
    }

    #[tokio::test]
    async fn rewind_replays_the_bytes_read_before_the_handover() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut r = Rewind {
            pre: Some(Bytes::from_static(b"hello ")),
            inner: a,
        };
        b.write_all(b"world").await.unwrap();
        drop(b);
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello world");
    }
}
