//! A target's response body, read from its connection by whoever polls it: hyper's server loop
//! for the client connection, in the same task. When the body ends cleanly the connection goes
//! back to the worker's pool; when it is dropped early the connection is closed.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::pool::{self, Conn};
use super::{AbortOnDrop, BoxError};

/// Longest chunk-size line (with extensions) and trailer section accepted from a target.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;
/// Read at least this much at a time while streaming a body.
const READ_SIZE: usize = 16 * 1024;

/// How the end of the body is found (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304) or nothing left.
    Done,
    Length(u64),
    Chunked(Chunk),
    /// Until the target closes the connection.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// The connection while a response is read from it: whole, or split while a request body is
/// still being written by the pump task.
pub enum BodyIo {
    Whole(TcpStream),
    Split(OwnedReadHalf, AbortOnDrop<io::Result<OwnedWriteHalf>>),
}

impl BodyIo {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        if buf.capacity() - buf.len() < READ_SIZE / 2 {
            buf.reserve(READ_SIZE);
        }
        match self {
            BodyIo::Whole(s) => tokio_util::io::poll_read_buf(Pin::new(s), cx, buf),
            BodyIo::Split(r, _) => tokio_util::io::poll_read_buf(Pin::new(r), cx, buf),
        }
    }
}

/// The response body of one target connection.
pub struct UpstreamBody {
    io: Option<BodyIo>,
    buf: BytesMut,
    framing: Framing,
    keep_alive: bool,
    target: std::net::SocketAddr,
    trailer_bytes: BytesMut,
}

impl UpstreamBody {
    pub fn new(
        io: BodyIo,
        buf: BytesMut,
        framing: Framing,
        keep_alive: bool,
        target: std::net::SocketAddr,
    ) -> Self {
        let mut b = UpstreamBody {
            io: Some(io),
            buf,
            framing,
            keep_alive,
            target,
            trailer_bytes: BytesMut::new(),
        };
        if framing == Framing::Done || framing == Framing::Length(0) {
            b.framing = Framing::Done;
            b.finish();
        }
        b
    }

    /// No body, on no connection (a protocol switch took the connection).
    pub fn empty(target: std::net::SocketAddr) -> Self {
        UpstreamBody {
            io: None,
            buf: BytesMut::new(),
            framing: Framing::Done,
            keep_alive: false,
            target,
            trailer_bytes: BytesMut::new(),
        }
    }

    /// The body was read to its end: the connection goes back to the pool if it may.
    fn finish(&mut self) {
        let Some(io) = self.io.take() else { return };
        if !self.keep_alive {
            return;
        }
        let stream = match io {
            BodyIo::Whole(s) => s,
            BodyIo::Split(r, pump) => match pump.try_take() {
                Some(Ok(w)) => match r.reunite(w) {
                    Ok(s) => s,
                    Err(_) => return,
                },
                // The request body is still being sent, or sending it failed: not reusable.
                _ => return,
            },
        };
        // The connection keeps its read buffer (no fresh one per response).
        pool::checkin(Conn {
            io: stream,
            buf: std::mem::take(&mut self.buf),
            target: self.target,
        });
    }

    /// Takes up to `n` bytes already buffered.
    fn take(&mut self, n: u64) -> Bytes {
        let k = (self.buf.len() as u64).min(n) as usize;
        self.buf.split_to(k).freeze()
    }

    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Err("response body read after its end".into()));
        };
        let n = ready!(io.poll_read(cx, &mut self.buf))?;
        if n == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the target closed the connection in the middle of the response body",
            )
            .into()));
        }
        Poll::Ready(Ok(()))
    }

    /// One step of the chunked decoder over the buffered bytes; `None` when more are needed.
    fn chunk_step(&mut self, state: Chunk) -> Result<Option<Option<Frame<Bytes>>>, BoxError> {
        match state {
            Chunk::Size => {
                let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
                    if self.buf.len() > MAX_CHUNK_LINE {
                        return Err("chunk size line too long".into());
                    }
                    return Ok(None);
                };
                let size = parse_chunk_size(&self.buf[..end])?;
                self.buf.advance(end + 1);
                self.framing = Framing::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
                Ok(Some(None))
            }
            Chunk::Data(n) => {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let data = self.take(n);
                let left = n - data.len() as u64;
                self.framing = Framing::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                Ok(Some(Some(Frame::data(data))))
            }
            Chunk::DataEnd => {
                let skip = match self.buf.first() {
                    None => return Ok(None),
                    Some(b'\n') => 1,
                    Some(b'\r') if self.buf.len() < 2 => return Ok(None),
                    Some(b'\r') if self.buf[1] == b'\n' => 2,
                    _ => return Err("chunk data not followed by CRLF".into()),
                };
                self.buf.advance(skip);
                self.framing = Framing::Chunked(Chunk::Size);
                Ok(Some(None))
            }
            Chunk::Trailers => loop {
                let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
                    if self.buf.len() + self.trailer_bytes.len() > MAX_TRAILERS {
                        return Err("trailer section too large".into());
                    }
                    return Ok(None);
                };
                let line = self.buf.split_to(end + 1);
                if line.as_ref() == b"\r\n" || line.as_ref() == b"\n" {
                    self.framing = Framing::Done;
                    let trailers = parse_trailers(&self.trailer_bytes)?;
                    self.trailer_bytes = BytesMut::new();
                    self.finish();
                    return Ok(Some(trailers.map(Frame::trailers)));
                }
                self.trailer_bytes.extend_from_slice(&line);
                if self.trailer_bytes.len() > MAX_TRAILERS {
                    return Err("trailer section too large".into());
                }
            },
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.framing {
                Framing::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(n) => {
                    if this.buf.is_empty() {
                        if let Err(e) = ready!(this.fill(cx)) {
                            this.io = None;
                            return Poll::Ready(Some(Err(e)));
                        }
                        continue;
                    }
                    let data = this.take(n);
                    let left = n - data.len() as u64;
                    if left == 0 {
                        this.framing = Framing::Done;
                        // Back to the pool before the last bytes are sent on: the next request
                        // on this worker may reuse it at once.
                        this.finish();
                    } else {
                        this.framing = Framing::Length(left);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close => {
                    if !this.buf.is_empty() {
                        let n = this.buf.len() as u64;
                        return Poll::Ready(Some(Ok(Frame::data(this.take(n)))));
                    }
                    let Some(io) = this.io.as_mut() else {
                        return Poll::Ready(None);
                    };
                    match ready!(io.poll_read(cx, &mut this.buf)) {
                        Ok(0) => {
                            this.io = None;
                            this.framing = Framing::Done;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            this.io = None;
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    }
                }
                Framing::Chunked(state) => match this.chunk_step(state) {
                    Ok(Some(Some(frame))) => return Poll::Ready(Some(Ok(frame))),
                    Ok(Some(None)) => {}
                    Ok(None) => {
                        if let Err(e) = ready!(this.fill(cx)) {
                            this.io = None;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                    Err(e) => {
                        this.io = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, BoxError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let hex = line.split(|&b| b == b';').next().unwrap_or(&[]);
    let hex = hex.trim_ascii();
    if hex.is_empty() || hex.len() > 15 {
        return Err("invalid chunk size".into());
    }
    let mut n: u64 = 0;
    for &b in hex {
        let d = (b as char).to_digit(16).ok_or("invalid chunk size")?;
        n = n * 16 + d as u64;
    }
    Ok(n)
}

fn parse_trailers(raw: &[u8]) -> Result<Option<HeaderMap>, BoxError> {
    if raw.is_empty() {
        return Ok(None);
    }
    let mut with_end = Vec::with_capacity(raw.len() + 2);
    with_end.extend_from_slice(raw);
    with_end.extend_from_slice(b"\r\n");
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let httparse::Status::Complete((_, parsed)) = httparse::parse_headers(&with_end, &mut headers)?
    else {
        return Err("incomplete trailer section".into());
    };
    let mut map = HeaderMap::with_capacity(parsed.len());
    for h in parsed {
        map.append(
            http::HeaderName::from_bytes(h.name.as_bytes())?,
            http::HeaderValue::from_bytes(h.value)?,
        );
    }
    Ok(Some(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a\r").unwrap(), 26);
        assert_eq!(parse_chunk_size(b"0;ext=1\r").unwrap(), 0);
        assert_eq!(parse_chunk_size(b" FF ").unwrap(), 255);
        assert!(parse_chunk_size(b"").is_err());
        assert!(parse_chunk_size(b"xyz").is_err());
        assert!(parse_chunk_size(b"1234567890abcdef0").is_err(), "overflow");
    }

    #[test]
    fn trailers() {
        let t = parse_trailers(b"grpc-status: 0\r\nx-a: b\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(t["grpc-status"], "0");
        assert_eq!(t["x-a"], "b");
        assert!(parse_trailers(b"").unwrap().is_none());
    }
}
