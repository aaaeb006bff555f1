//! NOTIFY (RFC 1996) to secondaries after a change, then watching each secondary's SOA serial
//! until it serves the change: that is when the change becomes INSYNC.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType, TSigner};
use tokio::net::UdpSocket;

/// How long a secondary has to pick up a change before we stop watching (the change stays PENDING).
const WATCH_FOR: Duration = Duration::from_secs(120);

/// Notifies `secondaries` of `serial` and calls `insync` once every one of them serves it.
pub fn spawn(
    zone: Name,
    serial: u32,
    change: String,
    secondaries: Vec<SocketAddr>,
    key: Option<TSigner>,
    insync: impl FnOnce() + Send + 'static,
) {
    tokio::spawn(async move {
        let mut set = tokio::task::JoinSet::new();
        for s in secondaries {
            let (zone, key) = (zone.clone(), key.clone());
            set.spawn(async move { sync_one(&zone, serial, s, key.as_ref()).await });
        }
        let mut all_ok = true;
        while let Some(r) = set.join_next().await {
            all_ok &= r.unwrap_or(false);
        }
        if all_ok {
            insync();
            tracing::info!(%zone, serial, %change, "change INSYNC on every secondary");
        } else {
            tracing::warn!(%zone, serial, %change, "a secondary did not pick up the change; it stays PENDING");
        }
    });
}

async fn sync_one(zone: &Name, serial: u32, secondary: SocketAddr, key: Option<&TSigner>) -> bool {
    let deadline = tokio::time::Instant::now() + WATCH_FOR;
    let mut notified = false;
    let mut attempt = 0u32;
    while tokio::time::Instant::now() < deadline {
        if !notified {
            notified = exchange_signed(secondary, zone, OpCode::Notify, RecordType::SOA, key)
                .await
                .is_some();
            if !notified {
                tracing::debug!(%zone, %secondary, "NOTIFY not answered yet");
            }
        }
        if let Some(res) = exchange(secondary, zone, OpCode::Query, RecordType::SOA).await {
            let theirs = res.answers.iter().find_map(|r| match &r.data {
                RData::SOA(s) => Some(s.serial),
                _ => None,
            });
            if theirs.is_some_and(|t| serial_ge(t, serial)) {
                return true;
            }
        }
        attempt += 1;
        // Back off gently: the secondary transfers the zone after our NOTIFY.
        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(10)))).await;
    }
    false
}

/// RFC 1982 serial number arithmetic: is `a` at or after `b`?
fn serial_ge(a: u32, b: u32) -> bool {
    a == b || (a.wrapping_sub(b) as i32) > 0
}

/// One query (or NOTIFY) over UDP with a one-second timeout; the answer if it came.
pub async fn exchange(
    to: SocketAddr,
    zone: &Name,
    op: OpCode,
    qtype: RecordType,
) -> Option<Message> {
    exchange_signed(to, zone, op, qtype, None).await
}

/// [`exchange`], the message signed with TSIG when `key` is given (a signed NOTIFY).
pub async fn exchange_signed(
    to: SocketAddr,
    zone: &Name,
    op: OpCode,
    qtype: RecordType,
    key: Option<&TSigner>,
) -> Option<Message> {
    let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .ok()?;
    let sock = UdpSocket::bind(bind).await.ok()?;
    let id: u16 = rand_id();
    let mut msg = Message::new(id, MessageType::Query, op);
    msg.metadata.authoritative = op == OpCode::Notify;
    msg.queries.push(Query::query(zone.clone(), qtype));
    if let Some(key) = key {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        msg.finalize(key, now).ok()?;
    }
    let bytes = msg.to_vec().ok()?;
    sock.send_to(&bytes, to).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let (n, from) = tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    if from != to {
        return None;
    }
    let res = Message::from_vec(&buf[..n]).ok()?;
    (res.id == id).then_some(res)
}

/// A DNS message id that is hard to guess (RFC 5452).
pub fn rand_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish() as u16
}

#[cfg(test)]
mod tests {
    #[test]
    fn serial_arithmetic() {
        assert!(super::serial_ge(2, 1));
        assert!(super::serial_ge(1, u32::MAX), "wraps");
        assert!(!super::serial_ge(1, 2));
    }
}
