//! The response body as Portico sends it: streamed from the target frame by frame, counted for
//! the access log, and holding the target's outstanding-request count until it is done.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::access_log::{AccessLog, Entry};
use crate::target_group::OutstandingGuard;

pub struct LoggedBody<B> {
    inner: B,
    log: Option<(AccessLog, Entry)>,
    _guard: Option<OutstandingGuard>,
    start: Instant,
    bytes: u64,
}

impl<B> LoggedBody<B> {
    pub fn new(
        inner: B,
        log: Option<(AccessLog, Entry)>,
        guard: Option<OutstandingGuard>,
        start: Instant,
    ) -> Self {
        LoggedBody {
            inner,
            log,
            _guard: guard,
            start,
            bytes: 0,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for LoggedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &r {
            if let Some(d) = frame.data_ref() {
                self.bytes += d.len() as u64;
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for LoggedBody<B> {
    fn drop(&mut self) {
        if let Some((log, mut entry)) = self.log.take() {
            entry.bytes = self.bytes;
            entry.duration = self.start.elapsed();
            log.log(&entry);
        }
    }
}

/// A client's request body: hyper's, or one the HTTP/1.1 fast path (`h1`) read whole together
/// with the head.
pub enum RequestBody {
    Hyper(hyper::body::Incoming),
    /// `None` for no body; never `Some` of an empty buffer.
    Whole(Option<Bytes>),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Hyper(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Whole(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::Whole(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::Whole(b) => SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
