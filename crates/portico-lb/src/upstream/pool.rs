//! Idle keep-alive connections to targets, one pool per worker thread.
//!
//! A connection is used by one request at a time: taken out with [`checkout`], given back with
//! [`checkin`] once its response has been read to the end. Pools are thread-local on purpose: each
//! worker (see `workers.rs`) drives its connections itself, so nothing here is shared or locked.
//! A per-worker sweeper closes connections idle longer than [`IDLE_TIMEOUT`] or closed by the
//! target, so that a quiet pool does not hold sockets in CLOSE_WAIT.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;

/// How long an idle connection is kept at most, in whole sweeps (below the 60 s most app servers use, so that Portico
/// closes first and does not send on a connection the target is closing).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(55);
/// At most this many idle connections per target on one worker.
pub const MAX_IDLE_PER_TARGET: usize = 256;
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Read buffer of a fresh connection; it grows for large heads and bodies.
const BUFFER: usize = 8 * 1024;

/// One HTTP/1.1 connection to a target, with the bytes read from it and not yet used.
pub struct Conn {
    pub io: TcpStream,
    pub buf: BytesMut,
    pub target: SocketAddr,
}

impl Conn {
    pub fn new(io: TcpStream, target: SocketAddr) -> Self {
        Conn {
            io,
            buf: BytesMut::with_capacity(BUFFER),
            target,
        }
    }
}

struct Idle {
    conn: Conn,
    /// The sweep tick it became idle in: a coarse clock that costs no clock read per request.
    since: u64,
}

#[derive(Default)]
struct Pool {
    idle: HashMap<SocketAddr, Vec<Idle>>,
    sweeper: bool,
    /// Sweeps so far, one per [`SWEEP_EVERY`].
    tick: u64,
}

/// Whole sweep ticks a connection may stay idle: at most [`IDLE_TIMEOUT`], at least one tick less.
const IDLE_TICKS: u64 = IDLE_TIMEOUT.as_secs() / SWEEP_EVERY.as_secs();

thread_local! {
    static POOL: RefCell<Pool> = RefCell::default();
}

/// The most recently used idle connection to `target` that is still open, if any.
pub fn checkout(target: SocketAddr) -> Option<Conn> {
    POOL.with(|p| {
        let p = &mut *p.borrow_mut();
        let idle = p.idle.get_mut(&target)?;
        while let Some(Idle { mut conn, since }) = idle.pop() {
            if p.tick - since < IDLE_TICKS && still_open(&mut conn) {
                return Some(conn);
            }
        }
        None
    })
}

/// Gives a connection whose last response was read completely back to this worker's pool.
pub fn checkin(conn: Conn) {
    if !conn.buf.is_empty() {
        // Bytes after the response: the target does not speak HTTP/1.1 as we think; closed.
        return;
    }
    let spawn_sweeper = POOL.with(|p| {
        let p = &mut *p.borrow_mut();
        let since = p.tick;
        let idle = p.idle.entry(conn.target).or_default();
        if idle.len() >= MAX_IDLE_PER_TARGET {
            idle.remove(0); // the oldest
        }
        idle.push(Idle { conn, since });
        !std::mem::replace(&mut p.sweeper, true)
    });
    if spawn_sweeper {
        // Spawned from a worker's current-thread runtime, so it sweeps that worker's pool.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep());
        }
    }
}

/// Closes every idle connection to `target` (after one of them failed: the rest are suspect).
pub fn purge(target: SocketAddr) {
    POOL.with(|p| {
        p.borrow_mut().idle.remove(&target);
    });
}

async fn sweep() {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        POOL.with(|p| {
            let p = &mut *p.borrow_mut();
            p.tick += 1;
            let tick = p.tick;
            p.idle.retain(|_, conns| {
                conns.retain_mut(|i| tick - i.since < IDLE_TICKS && still_open(&mut i.conn));
                !conns.is_empty()
            });
        });
    }
}

/// An idle connection is open when reading it would block: end of file means the target closed
/// it, and bytes it sent unasked mean it is not in a state we can use.
fn still_open(conn: &mut Conn) -> bool {
    let mut probe = [0u8; 1];
    matches!(conn.io.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}
