//! The DNS wire server: UDP and TCP on each configured address.
//!
//! UDP: one receive loop per core, each on its own single-threaded runtime sharing the socket
//! (the same reasoning as the load balancer's workers: no cross-thread hand-off per query). Each
//! loop reads up to 32 queries with one `recvmmsg`, answers them in place and sends the answers
//! with one `sendmmsg` (`udp_batch.rs`). One `SO_REUSEPORT` socket per worker was measured and
//! was slower: the kernel hashes each client to one worker, and a few busy clients then load
//! one worker while the other idles (docs/benchmarks.md).
//! TCP: length-prefixed messages, several per connection, an idle timeout, a connection limit.
//! Every input is bounded: 4096-byte UDP reads, 65535-byte TCP messages.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::handler::{handle, Ctx, Reply};

const MAX_QUERIES_PER_TCP: usize = 10_000;

#[derive(Debug, Clone)]
pub struct Options {
    pub tcp_idle_timeout: Duration,
    pub max_tcp_connections: usize,
    pub rate_limit: Option<u32>,
    pub udp_threads: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tcp_idle_timeout: Duration::from_secs(10),
            max_tcp_connections: 1000,
            rate_limit: None,
            udp_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// A running DNS server; stops when [`DnsServer::stop`] is called.
pub struct DnsServer {
    pub addrs: Vec<SocketAddr>,
    stop: CancellationToken,
}

/// A UDP and a TCP socket on the same address. For port 0 the kernel picks the UDP port, which
/// TCP may already use: then another port is tried, so a free port is found, not a collision.
fn bind_pair(addr: SocketAddr) -> std::io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let mut tries = if addr.port() == 0 { 20 } else { 1 };
    loop {
        let udp = std::net::UdpSocket::bind(addr).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {addr}/udp: {e}"))
        })?;
        let local = udp.local_addr()?;
        match std::net::TcpListener::bind(local) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries > 1 => tries -= 1,
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot listen on {local}/tcp: {e}"),
                ))
            }
        }
    }
}

impl DnsServer {
    /// Binds UDP and TCP on each address (TCP on the port UDP got, for port 0) and serves.
    pub async fn start(
        ctx: Arc<Ctx>,
        listen: &[SocketAddr],
        opts: Options,
    ) -> std::io::Result<DnsServer> {
        let stop = CancellationToken::new();
        let limiter = opts.rate_limit.map(|r| Arc::new(RateLimiter::new(r)));
        let mut addrs = Vec::new();
        let mut bound = Vec::new();
        for addr in listen {
            let (udp, tcp) = bind_pair(*addr)?;
            let local = udp.local_addr()?;
            udp.set_nonblocking(true)?;
            tcp.set_nonblocking(true)?;
            bound.push((udp, tcp));
            addrs.push(local);
        }
        for (udp, tcp) in bound {
            for i in 0..opts.udp_threads.max(1) {
                let sock = udp.try_clone()?;
                let (ctx, stop, limiter) = (ctx.clone(), stop.clone(), limiter.clone());
                std::thread::Builder::new().name(format!("portico-dns-{i}")).spawn(move || {
                    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                        tracing::error!("cannot start a DNS worker runtime");
                        return;
                    };
                    rt.block_on(async move {
                        match UdpSocket::from_std(sock) {
                            Ok(sock) => udp_loop(ctx, Arc::new(sock), stop, limiter).await,
                            Err(e) => tracing::error!(error = %e, "cannot register the DNS UDP socket"),
                        }
                    });
                })?;
            }
            let tcp = TcpListener::from_std(tcp)?;
            tokio::spawn(tcp_loop(ctx.clone(), tcp, stop.clone(), opts.clone()));
        }
        for a in &addrs {
            tracing::info!(addr = %a, "DNS listening (UDP and TCP)");
        }
        Ok(DnsServer { addrs, stop })
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn udp_loop(
    ctx: Arc<Ctx>,
    sock: Arc<UdpSocket>,
    stop: CancellationToken,
    limiter: Option<Arc<RateLimiter>>,
) {
    let mut batch = crate::udp_batch::RecvBatch::new();
    let mut out: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(crate::udp_batch::BATCH);
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => return,
            r = batch.recv(&sock) => match r {
                Ok(n) => n,
                Err(_) => continue,
            },
        };
        out.clear();
        for i in 0..n {
            let Some((raw, src)) = batch.get(i) else {
                continue;
            };
            let verdict = limiter
                .as_ref()
                .map_or(Verdict::Answer, |l| l.check(src.ip()));
            if verdict == Verdict::Drop {
                continue;
            }
            // UPDATE waits for an fsync: off the receive loop.
            if raw.len() > 2 && (raw[2] >> 3) & 0x0f == 5 {
                let (ctx, sock, raw) = (ctx.clone(), sock.clone(), raw.to_vec());
                tokio::spawn(async move {
                    if let Reply::One(b) = handle(&ctx, &raw, src, false).await {
                        let _ = sock.send_to(&b, src).await;
                    }
                });
                continue;
            }
            // A query is answered without waiting on anything: this completes at once.
            if let Reply::One(mut b) = handle(&ctx, raw, src, false).await {
                if verdict == Verdict::Slip && b.len() >= 12 {
                    // Truncated, empty: a real client retries over TCP, a reflection gains nothing.
                    b.truncate(12);
                    b[2] |= 0x02;
                    b[6..12].fill(0);
                    if let Some(q) = question_bytes(raw) {
                        b[5] = 1;
                        b.extend_from_slice(q);
                    }
                }
                out.push((b, src));
            }
        }
        crate::udp_batch::send_all(&sock, &out).await;
    }
}

/// The question section of a query (for slipped answers).
fn question_bytes(raw: &[u8]) -> Option<&[u8]> {
    if raw.len() < 12 || raw[4..6] != [0, 1] {
        return None;
    }
    let mut i = 12;
    while *raw.get(i)? != 0 {
        i += 1 + *raw.get(i)? as usize;
    }
    raw.get(12..i + 5)
}

async fn tcp_loop(ctx: Arc<Ctx>, listener: TcpListener, stop: CancellationToken, opts: Options) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, src) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        if active.load(Ordering::Relaxed) >= opts.max_tcp_connections {
            tracing::warn!(client = %src, "DNS TCP connection limit reached");
            continue;
        }
        active.fetch_add(1, Ordering::Relaxed);
        let (ctx, active, stop, idle) = (
            ctx.clone(),
            active.clone(),
            stop.clone(),
            opts.tcp_idle_timeout,
        );
        tokio::spawn(async move {
            tokio::select! {
                _ = tcp_conn(&ctx, stream, src, idle) => {}
                _ = stop.cancelled() => {}
            }
            active.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn tcp_conn(ctx: &Ctx, mut s: TcpStream, src: SocketAddr, idle: Duration) {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 65535];
    for _ in 0..MAX_QUERIES_PER_TCP {
        let mut len = [0u8; 2];
        match tokio::time::timeout(idle, s.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let n = u16::from_be_bytes(len) as usize;
        match tokio::time::timeout(idle, s.read_exact(&mut buf[..n])).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let messages = match handle(ctx, &buf[..n], src, true).await {
            Reply::Drop => continue,
            Reply::One(b) => vec![b],
            Reply::Many(v) => v,
        };
        for m in messages {
            let Ok(len) = u16::try_from(m.len()) else {
                return;
            };
            let mut out = Vec::with_capacity(m.len() + 2);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&m);
            match tokio::time::timeout(idle, s.write_all(&out)).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Answer,
    Slip,
    Drop,
}

/// Response rate limiting per client prefix (/24 for IPv4, /56 for IPv6), one-second windows.
struct RateLimiter {
    per_second: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl RateLimiter {
    fn new(per_second: u32) -> Self {
        RateLimiter {
            per_second,
            windows: Mutex::default(),
        }
    }

    fn check(&self, ip: IpAddr) -> Verdict {
        let prefix = match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                IpAddr::from([o[0], o[1], o[2], 0])
            }
            IpAddr::V6(v6) => {
                let mut o = v6.octets();
                o[7..].fill(0);
                IpAddr::from(o)
            }
        };
        let now = Instant::now();
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if w.len() > 100_000 {
            w.retain(|_, (t, _)| now.duration_since(*t) < Duration::from_secs(1));
        }
        let e = w.entry(prefix).or_insert((now, 0));
        if now.duration_since(e.0) >= Duration::from_secs(1) {
            *e = (now, 0);
        }
        e.1 += 1;
        match e.1.checked_sub(self.per_second) {
            None | Some(0) => Verdict::Answer,
            Some(over) if over % 2 == 1 => Verdict::Slip,
            Some(_) => Verdict::Drop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_slips_then_drops() {
        let l = RateLimiter::new(2);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.200".parse().unwrap();
        assert_eq!(l.check(ip), Verdict::Answer);
        assert_eq!(
            l.check(other),
            Verdict::Answer,
            "same /24 shares the budget"
        );
        assert_eq!(l.check(ip), Verdict::Slip);
        assert_eq!(l.check(ip), Verdict::Drop);
        assert_eq!(l.check("198.51.100.1".parse().unwrap()), Verdict::Answer);
    }
}
