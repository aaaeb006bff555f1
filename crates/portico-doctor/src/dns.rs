//! A small DNS client for the doctor: one question to one server over UDP (TCP when truncated),
//! with a timeout and a retry; and resolution through a resolver that follows CNAME chains
//! itself, so that an authoritative server works as a "resolver" in offline tests.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const TIMEOUT: Duration = Duration::from_secs(2);
const MAX_CHAIN: usize = 8;

/// Asks `server` one question; `recursion` sets RD.
pub async fn query(
    server: SocketAddr,
    name: &Name,
    rtype: RecordType,
    recursion: bool,
) -> Result<Message, String> {
    let id: u16 = rand::random();
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = recursion;
    msg.add_query(Query::query(name.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    msg.set_edns(edns);
    let bytes = msg.to_vec().map_err(|e| e.to_string())?;
    let mut last = String::new();
    for _ in 0..2 {
        match udp(server, &bytes, id).await {
            Ok(m) if m.metadata.truncation => return tcp(server, &bytes, id).await,
            Ok(m) => return Ok(m),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn udp(server: SocketAddr, bytes: &[u8], id: u16) -> Result<Message, String> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let sock = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    sock.connect(server).await.map_err(|e| e.to_string())?;
    sock.send(bytes).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65_535];
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| format!("no answer from {server} within {TIMEOUT:?}"))?
            .map_err(|e| format!("{server}: {e}"))?;
        if let Ok(m) = Message::from_vec(&buf[..n]) {
            if m.metadata.id == id {
                return Ok(m);
            }
        }
    }
}

async fn tcp(server: SocketAddr, bytes: &[u8], id: u16) -> Result<Message, String> {
    let work = async {
        let mut s = TcpStream::connect(server)
            .await
            .map_err(|e| format!("{server} (TCP): {e}"))?;
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(bytes);
        s.write_all(&framed).await.map_err(|e| e.to_string())?;
        let len = s.read_u16().await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; len as usize];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        let m = Message::from_vec(&buf).map_err(|e| e.to_string())?;
        if m.metadata.id != id {
            return Err(format!("{server} (TCP) answered another question"));
        }
        Ok(m)
    };
    tokio::time::timeout(TIMEOUT * 2, work)
        .await
        .map_err(|_| format!("no answer from {server} over TCP"))?
}

/// What a name resolves to for one type, after its CNAME chain.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// The CNAMEs passed through, in order (empty when none).
    pub chain: Vec<Name>,
    pub records: Vec<Record>,
    pub rcode: Option<ResponseCode>,
}

impl Resolved {
    pub fn ips(&self) -> Vec<IpAddr> {
        self.records
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect()
    }
}

/// Resolves `name`/`rtype` through `resolver`, following CNAMEs inside each answer and by asking
/// again when an answer stops at a CNAME whose target it does not hold.
pub async fn resolve(
    resolver: SocketAddr,
    name: &Name,
    rtype: RecordType,
) -> Result<Resolved, String> {
    let mut out = Resolved::default();
    let mut current = name.clone();
    for _ in 0..MAX_CHAIN {
        let asked = current.clone();
        let m = query(resolver, &asked, rtype, true).await?;
        out.rcode = Some(m.metadata.response_code);
        if !matches!(
            m.metadata.response_code,
            ResponseCode::NoError | ResponseCode::NXDomain
        ) {
            return Err(format!(
                "{resolver} answered {} for {asked} {rtype}",
                m.metadata.response_code
            ));
        }
        loop {
            let set: Vec<Record> = m
                .answers
                .iter()
                .filter(|r| r.name == current && r.record_type() == rtype)
                .cloned()
                .collect();
            if !set.is_empty() {
                out.records = set;
                return Ok(out);
            }
            let next = m.answers.iter().find_map(|r| match &r.data {
                RData::CNAME(c) if r.name == current && rtype != RecordType::CNAME => {
                    Some(c.0.clone())
                }
                _ => None,
            });
            match next {
                Some(n) => {
                    if out.chain.len() >= MAX_CHAIN || out.chain.contains(&n) || n == *name {
                        return Err(format!("CNAME loop or overlong chain from {name}"));
                    }
                    out.chain.push(n.clone());
                    current = n;
                }
                None => break,
            }
        }
        if current == asked {
            // The answer about this name is final: no data, or NXDOMAIN.
            return Ok(out);
        }
        // The chain left what this answer holds: ask about its last target.
    }
    Err(format!("CNAME chain from {name} longer than {MAX_CHAIN}"))
}

/// The apex of the zone that holds `name`, from the SOA a resolver returns (answer or authority).
pub async fn zone_apex(resolver: SocketAddr, name: &Name) -> Result<(Name, u32), String> {
    let mut candidate = name.clone();
    loop {
        let m = query(resolver, &candidate, RecordType::SOA, true).await?;
        let cname_here = m
            .answers
            .iter()
            .any(|r| r.name == candidate && r.record_type() == RecordType::CNAME);
        if !cname_here {
            let soa = m
                .answers
                .iter()
                .chain(m.authorities.iter())
                .find_map(|r| match &r.data {
                    RData::SOA(s) if r.name.zone_of(&candidate) => {
                        Some((r.name.clone(), s.minimum))
                    }
                    _ => None,
                });
            if let Some(found) = soa {
                return Ok(found);
            }
        }
        if candidate.is_root() {
            return Err(format!("no zone (SOA) found for {name} through {resolver}"));
        }
        candidate = candidate.base_name();
    }
}

/// The nameservers of the zone `apex` (its NS set through `resolver`), each with its A and
/// AAAA addresses (empty when the name has none).
pub async fn nameservers(
    resolver: SocketAddr,
    apex: &Name,
) -> Result<Vec<(Name, Vec<IpAddr>)>, String> {
    let names: Vec<Name> = resolve(resolver, apex, RecordType::NS)
        .await?
        .records
        .iter()
        .filter_map(|r| match &r.data {
            RData::NS(ns) => Some(ns.0.clone()),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for ns in names {
        let mut addrs = Vec::new();
        for t in [RecordType::A, RecordType::AAAA] {
            if let Ok(r) = resolve(resolver, &ns, t).await {
                addrs.extend(r.ips());
            }
        }
        out.push((ns, addrs));
    }
    Ok(out)
}

pub fn fqdn(s: &str) -> Result<Name, String> {
    let mut n = Name::from_ascii(s).map_err(|e| format!("{s}: {e}"))?;
    n.set_fqdn(true);
    Ok(n.to_lowercase())
}

/// The first `nameserver` of /etc/resolv.conf, else 127.0.0.1:53.
pub fn system_resolver() -> SocketAddr {
    std::fs::read_to_string("/etc/resolv.conf")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("nameserver"))
                    .then(|| w.next()?.parse::<IpAddr>().ok())
                    .flatten()
            })
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .unwrap_or_else(|| "127.0.0.1:53".parse().unwrap())
}
