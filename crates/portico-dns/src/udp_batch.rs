//! Batched UDP: up to [`BATCH`] datagrams read with one `recvmmsg` and the answers sent with one
//! `sendmmsg`, as Knot's UDP handler does. tokio's `UdpSocket` has no batch calls, so these are
//! the two system calls through `libc`, run inside tokio's readiness handling (`async_io`).

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Largest query read (bigger ones are truncated by the kernel and fail to parse: FORMERR).
pub const MAX_QUERY: usize = 4096;

/// Receive buffers for one worker, reused for every batch.
pub struct RecvBatch {
    bufs: Vec<[u8; MAX_QUERY]>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: [usize; BATCH],
    n: usize,
}

impl RecvBatch {
    pub fn new() -> Self {
        RecvBatch {
            bufs: vec![[0u8; MAX_QUERY]; BATCH],
            // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
            addrs: vec![unsafe { MaybeUninit::zeroed().assume_init() }; BATCH],
            lens: [0; BATCH],
            n: 0,
        }
    }

    /// Waits for at least one datagram and reads as many as are queued (up to [`BATCH`]).
    pub async fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        let fd = sock.as_raw_fd();
        let n = sock
            .async_io(Interest::READABLE, || {
                let mut iov: [libc::iovec; BATCH] = std::array::from_fn(|i| libc::iovec {
                    iov_base: self.bufs[i].as_mut_ptr().cast(),
                    iov_len: MAX_QUERY,
                });
                let mut hdrs: [libc::mmsghdr; BATCH] = std::array::from_fn(|i| {
                    header(
                        (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast(),
                        std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
                        &mut iov[i],
                    )
                });
                // SAFETY: every pointer in `hdrs` points into buffers owned by `self` or the
                // local `iov`, all alive for the call; the kernel writes at most the lengths given.
                let r = unsafe {
                    libc::recvmmsg(
                        fd,
                        hdrs.as_mut_ptr(),
                        BATCH as libc::c_uint,
                        libc::MSG_DONTWAIT,
                        std::ptr::null_mut(),
                    )
                };
                if r < 0 {
                    return Err(io::Error::last_os_error());
                }
                for (i, h) in hdrs.iter().enumerate().take(r as usize) {
                    self.lens[i] = h.msg_len as usize;
                }
                Ok(r as usize)
            })
            .await?;
        self.n = n;
        Ok(n)
    }

    /// The `i`th datagram of the last batch and its sender (None for an unknown address family).
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.n {
            return None;
        }
        let len = self.lens[i].min(MAX_QUERY);
        let src = sockaddr_to_std(&self.addrs[i])?;
        Some((&self.bufs[i][..len], src))
    }
}

/// Sends each `(bytes, destination)` with as few `sendmmsg` calls as the kernel allows; a
/// datagram the kernel refuses is dropped (as a failed `send_to` was).
pub async fn send_all(sock: &UdpSocket, out: &[(Vec<u8>, SocketAddr)]) {
    let fd = sock.as_raw_fd();
    let mut done = 0;
    while done < out.len() {
        let chunk = &out[done..out.len().min(done + BATCH)];
        let addrs: Vec<socket2::SockAddr> = chunk.iter().map(|(_, a)| (*a).into()).collect();
        let r = sock
            .async_io(Interest::WRITABLE, || {
                let mut iov: Vec<libc::iovec> = chunk
                    .iter()
                    .map(|(b, _)| libc::iovec {
                        iov_base: b.as_ptr() as *mut libc::c_void,
                        iov_len: b.len(),
                    })
                    .collect();
                let mut hdrs: Vec<libc::mmsghdr> = iov
                    .iter_mut()
                    .zip(&addrs)
                    .map(|(iov, a)| header(a.as_ptr() as *mut libc::c_void, a.len(), iov))
                    .collect();
                // SAFETY: the pointers refer to `chunk`, `addrs` and `iov`, alive for the call;
                // the kernel only reads them.
                let r = unsafe {
                    libc::sendmmsg(
                        fd,
                        hdrs.as_mut_ptr(),
                        hdrs.len() as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                if r < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(r as usize)
                }
            })
            .await;
        match r {
            Ok(0) | Err(_) => done += 1, // skip the datagram the kernel would not take
            Ok(n) => done += n,
        }
    }
}

/// One message header: a peer address buffer and one data buffer.
fn header(
    name: *mut libc::c_void,
    namelen: libc::socklen_t,
    iov: &mut libc::iovec,
) -> libc::mmsghdr {
    // SAFETY: mmsghdr is plain old data; all zeroes is a valid value, the used fields follow.
    let mut h: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    h.msg_hdr.msg_name = name;
    h.msg_hdr.msg_namelen = namelen;
    h.msg_hdr.msg_iov = iov;
    h.msg_hdr.msg_iovlen = 1;
    h
}

fn sockaddr_to_std(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::from((
                u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
