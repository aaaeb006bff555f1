//! One client connection: TLS handshake (bounded by the header timeout), HTTP/1.1 or HTTP/2 by
//! ALPN, hyper with a timer for the header-read timeout and a bounded header buffer, an idle
//! watcher, and a graceful end when the process drains.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::body::RequestBody;
use crate::h1;
use crate::idle::{Activity, IdleIo};
use crate::proxy::{handle, ConnCtx};
use crate::serving::Serving;
use crate::snapshot::Listener;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Http1,
    Http2,
    /// Plain HTTP: HTTP/1.1, or HTTP/2 with prior knowledge (h2c).
    Auto,
}

pub async fn serve(
    lb: Arc<Serving>,
    listener: Arc<Listener>,
    generation: u64,
    mut stream: TcpStream,
    mut peer: SocketAddr,
    draining: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer);
    if listener.proxy_protocol_from.is_some() {
        if listener.proxy_trusted(peer.ip()) {
            match crate::proxy_protocol::read(&mut stream, listener.header_timeout).await {
                Ok(Some(client)) => peer = client,
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(listener = %listener.name, %peer, error = %e, "closing: bad PROXY protocol header");
                    return;
                }
            }
            if !listener.admits(peer.ip()) {
                tracing::debug!(listener = %listener.name, %peer, "connection refused by allow/deny rules");
                return;
            }
        } else if crate::proxy_protocol::starts_with_header(&stream, listener.header_timeout).await
        {
            tracing::warn!(listener = %listener.name, %peer, "closing: PROXY protocol header from a source not in proxy_protocol_from");
            return;
        }
    }
    let activity = Activity::new();
    let io = IdleIo::new(stream, activity.clone());
    let metrics = lb.listener_metrics(&listener.name);
    let _counted = metrics.connection();
    let (peer_ip_header, local_port_header) = ConnCtx::forwarded_values(peer, local);
    let ctx = Arc::new(ConnCtx {
        h1_idle: Default::default(),
        draining: Default::default(),
        peer_ip_header,
        local_port_header,
        client_cert: Default::default(),
        metrics: metrics.clone(),
        listener_name: listener.name.as_str().into(),
        listener: listener.clone(),
        generation,
        peer,
        local,
        activity: activity.clone(),
        lb,
    });
    match &listener.tls {
        // Sniffing for the HTTP/2 preface costs every connection; only when h2c is asked for.
        None if listener.h2c => run(io, ctx, Mode::Auto, draining).await,
        None => run(io, ctx, Mode::Http1, draining).await,
        Some(config) => {
            let acceptor = TlsAcceptor::from(config.clone());
            let handshake = crate::tls::resolver::LOCAL_IP
                .scope(local.ip().to_canonical(), acceptor.accept(io));
            let tls = match tokio::time::timeout(listener.header_timeout, handshake).await {
                Ok(Ok(s)) => {
                    metrics
                        .tls_handshakes
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    s
                }
                Ok(Err(e)) => {
                    metrics
                        .tls_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(listener = %listener.name, %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics
                        .tls_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(listener = %listener.name, %peer, "TLS handshake timed out");
                    return;
                }
            };
            if let Some(leaf) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                let _ = ctx
                    .client_cert
                    .set(crate::tls::client_cert_headers(leaf).into_boxed_slice());
            }
            let mode = match tls.get_ref().1.alpn_protocol() {
                // A CA's TLS-ALPN-01 validation: the handshake was the whole answer.
                Some(p) if p == crate::tls::ACME_TLS_ALPN => return,
                Some(b"h2") => Mode::Http2,
                _ => Mode::Http1,
            };
            run(tls, ctx, mode, draining).await
        }
    }
}

async fn run<I>(io: I, ctx: Arc<ConnCtx>, mode: Mode, draining: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if mode != Mode::Http1 {
        return run_hyper(io, ctx, mode, draining).await;
    }
    // Plain keep-alive HTTP/1.1 on our own loop; hyper takes over what that loop hands it.
    let (idle_timeout, activity) = (ctx.listener.idle_timeout, ctx.activity.clone());
    let fast = h1::serve(io, ctx.clone());
    tokio::pin!(fast);
    let rest = loop {
        tokio::select! {
            r = fast.as_mut() => match r {
                h1::Outcome::Closed => return,
                h1::Outcome::Handover(rest) => break rest,
            },
            _ = draining.cancelled(), if !ctx.draining.load(Ordering::Relaxed) => {
                // Between requests the connection closes now; else after the current response.
                ctx.draining.store(true, Ordering::Relaxed);
                if ctx.h1_idle.load(Ordering::Relaxed) {
                    return;
                }
            }
            _ = activity.idle_for(idle_timeout) => {
                tracing::debug!("idle timeout: closing connection");
                return;
            }
        }
    };
    run_hyper(rest, ctx, mode, draining).await
}

async fn run_hyper<I>(io: I, ctx: Arc<ConnCtx>, mode: Mode, draining: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let l = &ctx.listener;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(l.header_timeout)
        .max_buf_size(l.max_header_bytes)
        // Head and small body copied into one buffer and sent with one `send`: measured 6 % less
        // CPU per request than `writev` of the two (docs/benchmarks.md, issue 13 step 10).
        .writev(false)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(l.max_header_bytes as u32)
        .max_concurrent_streams(256);
    let builder = match mode {
        Mode::Http1 => builder.http1_only(),
        Mode::Http2 => builder.http2_only(),
        Mode::Auto => builder,
    };
    let (idle_timeout, activity) = (l.idle_timeout, ctx.activity.clone());
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let ctx = ctx.clone();
        // Boxed: hyper moves each HTTP/2 stream's future into a task of its own, and the
        // request's state machine is large; a pointer moves instead (docs/benchmarks.md,
        // issue 13 step 14).
        Box::pin(async move { handle(&ctx, req.map(RequestBody::Hyper)).await })
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut draining_seen = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = draining.cancelled(), if !draining_seen => {
                draining_seen = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = activity.idle_for(idle_timeout) => {
                tracing::debug!("idle timeout: closing connection");
                return;
            }
        }
    }
}
