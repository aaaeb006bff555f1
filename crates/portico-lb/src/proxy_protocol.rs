//! PROXY protocol v1 and v2 (HAProxy's), as a network load balancer in front of Portico sends
//! it: read before TLS from the listener's trusted sources only, parsed with the `ppp` crate.
//!
//! The header is read with `peek` and then consumed by its exact length, so the bytes after it
//! (a TLS ClientHello, an HTTP request) stay in the socket for the layers above and nothing has
//! to be handed back.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::v2::{Addresses, Command};
use ppp::{HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Longest header accepted: v1 is at most 107 bytes; v2 is 16 bytes, the addresses and the
/// balancer's TLVs (AWS's NLB adds a VPC endpoint id), well under this.
const MAX_HEADER: usize = 1024;
/// A header split over several segments is peeked again after this long (balancers send it in
/// one segment; the whole wait is bounded by the listener's header timeout).
const REPEEK: Duration = Duration::from_millis(5);

/// Reads the PROXY header at the start of `stream`. `Ok(Some(client))` names the client;
/// `Ok(None)` is a header without one (v2 LOCAL, a balancer's own health check, or v1 UNKNOWN):
/// the connection's own peer stands.
pub async fn read(stream: &mut TcpStream, timeout: Duration) -> Result<Option<SocketAddr>, String> {
    let work = async {
        let mut buf = [0u8; MAX_HEADER];
        loop {
            let n = stream.peek(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the connection closed before its PROXY header".to_string());
            }
            let parsed = HeaderResult::parse(&buf[..n]);
            if parsed.is_incomplete() {
                if n == MAX_HEADER {
                    return Err(format!("PROXY header longer than {MAX_HEADER} bytes"));
                }
                tokio::time::sleep(REPEEK).await;
                continue;
            }
            let (len, client) = match parsed {
                HeaderResult::V1(Ok(h)) => (
                    h.header.len(),
                    match h.addresses {
                        ppp::v1::Addresses::Tcp4(a) => {
                            Some(SocketAddr::new(a.source_address.into(), a.source_port))
                        }
                        ppp::v1::Addresses::Tcp6(a) => {
                            Some(SocketAddr::new(a.source_address.into(), a.source_port))
                        }
                        ppp::v1::Addresses::Unknown => None,
                    },
                ),
                HeaderResult::V2(Ok(h)) => (
                    h.header.len(),
                    match (h.command, h.addresses) {
                        (Command::Proxy, Addresses::IPv4(a)) => {
                            Some(SocketAddr::new(a.source_address.into(), a.source_port))
                        }
                        (Command::Proxy, Addresses::IPv6(a)) => {
                            Some(SocketAddr::new(a.source_address.into(), a.source_port))
                        }
                        _ => None,
                    },
                ),
                HeaderResult::V1(Err(e)) => {
                    return Err(format!("no valid PROXY protocol header: {e}"))
                }
                HeaderResult::V2(Err(e)) => {
                    return Err(format!("no valid PROXY protocol v2 header: {e}"))
                }
            };
            stream
                .read_exact(&mut buf[..len])
                .await
                .map_err(|e| e.to_string())?;
            return Ok(client);
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| "no PROXY header within the header timeout".to_string())?
}

/// Do the first bytes of `stream` start a PROXY header? (Sent by a source that is not trusted
/// to, the connection is closed rather than served with a forged address or misread.)
pub async fn starts_with_header(stream: &TcpStream, timeout: Duration) -> bool {
    const V1: &[u8] = b"PROXY ";
    const V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
    let mut buf = [0u8; 12];
    match tokio::time::timeout(timeout, stream.peek(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => {
            let got = &buf[..n];
            V1.starts_with(&got[..n.min(V1.len())]) || V2.starts_with(&got[..n.min(V2.len())])
        }
        _ => false,
    }
}
