//! dns-01 through RFC 2136 to another DNS server, signed with TSIG, as certbot's rfc2136 plugin
//! and lego's provider do: find the zone by asking the server for the name's SOA, send one UPDATE
//! adding (or deleting) the TXT record, then wait until the server answers it.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use portico_certs::challenge::{BoxFuture, Dns01Publisher};
use portico_dns::notify::{exchange, rand_id};

pub struct Rfc2136 {
    pub server: SocketAddr,
    pub key: TSigner,
}

impl Rfc2136 {
    /// The zone that holds `name` on the server: the owner of the SOA it answers with (in the
    /// answer for a zone apex, in the authority section otherwise).
    async fn zone_of(&self, name: &Name) -> Result<Name, String> {
        let mut n = name.clone();
        loop {
            if let Some(m) = exchange(self.server, &n, OpCode::Query, RecordType::SOA).await {
                if let Some(r) = m
                    .answers
                    .iter()
                    .chain(&m.authorities)
                    .find(|r| r.record_type() == RecordType::SOA)
                {
                    return Ok(r.name.clone());
                }
            }
            if n.is_root() {
                return Err(format!("{} has no zone for {name}", self.server));
            }
            n = n.base_name();
        }
    }

    async fn update(&self, name: &str, value: &str, add: bool) -> Result<(Name, Name), String> {
        let mut fqdn = Name::from_ascii(name).map_err(|e| format!("{name}: {e}"))?;
        fqdn.set_fqdn(true);
        let zone = self.zone_of(&fqdn).await?;
        let mut msg = Message::new(rand_id(), MessageType::Query, OpCode::Update);
        let mut q = Query::query(zone.clone(), RecordType::SOA);
        q.set_query_class(DNSClass::IN);
        msg.queries.push(q);
        let mut rr = Record::from_rdata(
            fqdn.clone(),
            if add { 60 } else { 0 },
            RData::TXT(TXT::new(vec![value.to_string()])),
        );
        if !add {
            rr.dns_class = DNSClass::NONE;
        }
        msg.authorities.push(rr);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        msg.finalize(&self.key, now)
            .map_err(|e| format!("cannot sign the UPDATE: {e}"))?;
        let bytes = msg.to_vec().map_err(|e| e.to_string())?;
        let answer = self.send_tcp(&bytes).await?;
        let res = Message::from_vec(&answer).map_err(|e| format!("bad UPDATE answer: {e}"))?;
        if res.response_code != ResponseCode::NoError {
            return Err(format!(
                "{} refused the UPDATE for {name}: {}",
                self.server, res.response_code
            ));
        }
        Ok((fqdn, zone))
    }

    async fn send_tcp(&self, bytes: &[u8]) -> Result<Vec<u8>, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let go = async {
            let mut s = tokio::net::TcpStream::connect(self.server)
                .await
                .map_err(|e| format!("{}: {e}", self.server))?;
            let len = u16::try_from(bytes.len()).map_err(|_| "UPDATE too large".to_string())?;
            let mut out = len.to_be_bytes().to_vec();
            out.extend_from_slice(bytes);
            s.write_all(&out).await.map_err(|e| e.to_string())?;
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await.map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; u16::from_be_bytes(l) as usize];
            s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(buf)
        };
        tokio::time::timeout(Duration::from_secs(10), go)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "{} did not answer the UPDATE within 10 s",
                    self.server
                ))
            })
    }
}

impl Dns01Publisher for Rfc2136 {
    fn publish<'a>(
        &'a self,
        name: &'a str,
        value: &'a str,
        progress: &'a (dyn Fn(String) + Send + Sync),
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let (fqdn, zone) = self.update(name, value, true).await?;
            progress(format!(
                "{} accepted the UPDATE for {name} (zone {zone}); waiting until it answers",
                self.server
            ));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let seen = exchange(self.server, &fqdn, OpCode::Query, RecordType::TXT).await.is_some_and(|m| {
                    m.answers.iter().any(|r| matches!(&r.data, RData::TXT(t) if t.txt_data.iter().any(|d| d.as_ref() == value.as_bytes())))
                });
                if seen {
                    tracing::info!(%name, %zone, server = %self.server, "dns-01: TXT record added by RFC 2136 and served");
                    return Ok(());
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(format!(
                        "{} accepted the UPDATE but does not answer the TXT for {name}",
                        self.server
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }

    fn remove<'a>(&'a self, name: &'a str, value: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.update(name, value, false).await.map(|_| ()) })
    }
}
