//! Which sockets were opened to which target, so that the end of a target's deregistration
//! delay (ALB's `deregistration_delay`) can close the connections still carrying its requests.
//!
//! Only connecting and the end of a delay touch this (connections are pooled, so connecting is
//! rare); a request costs nothing here. A socket is not unregistered when it closes: at the
//! end of a delay each recorded descriptor is asked for its peer, and only one still connected
//! to that target is shut down. A descriptor that was closed and reused is therefore left alone
//! unless it is, again, a connection to the target being removed — which is to be closed too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::Mutex;

/// Recorded descriptors per target above which the stale ones are pruned.
const PRUNE_ABOVE: usize = 1024;

static LIVE: Mutex<Option<HashMap<SocketAddr, Vec<RawFd>>>> = Mutex::new(None);

/// The peer of `fd` if it is a connected socket.
fn peer_of(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: the descriptor is only borrowed for one getpeername(2). If it has been closed the
    // call fails with EBADF; if it has been reused, it answers for the new socket, which the
    // caller compares with the target before acting.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd).peer_addr().ok()?.as_socket()
}

/// Records a new connection to `target`.
pub fn opened(target: SocketAddr, fd: RawFd) {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    let list = live
        .get_or_insert_with(HashMap::new)
        .entry(target)
        .or_default();
    if list.len() >= PRUNE_ABOVE {
        list.retain(|fd| peer_of(*fd) == Some(target));
    }
    list.push(fd);
}

/// Shuts down every socket still connected to `target` (requests on them fail, pooled ones are
/// dropped at their next use); returns how many.
pub fn cut(target: SocketAddr) -> usize {
    let fds = LIVE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        .and_then(|m| m.remove(&target))
        .unwrap_or_default();
    let mut n = 0;
    for fd in fds {
        if peer_of(fd) == Some(target) {
            // SAFETY: as in `peer_of`; the socket is connected to the target being removed.
            let b = unsafe { BorrowedFd::borrow_raw(fd) };
            if socket2::SockRef::from(&b)
                .shutdown(std::net::Shutdown::Both)
                .is_ok()
            {
                n += 1;
            }
        }
    }
    n
}
