//! HTTP/1 pieces both sides write with: the server path (`h1.rs`) and the client to targets
//! (`upstream/`), and the connection-only headers the proxy (`proxy.rs`) never forwards.

use bytes::BufMut;
use http::header::{self, HeaderName};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
pub(crate) const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// One `name: value` header line (the upstream client writes its request heads with it too).
pub(crate) fn put_header(out: &mut impl BufMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// A chunk's size line (`1f4\r\n`), without formatting a string.
pub(crate) fn put_chunk_size(out: &mut impl BufMut, n: usize) {
    let (mut digits, mut i, mut n) = ([0u8; 16], 16, n);
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
    out.put_slice(b"\r\n");
}
