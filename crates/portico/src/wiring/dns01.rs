//! Where certificates meet hosted zones: dns-01 challenges published as changes to Portico's own
//! zones (and followed until every nameserver serves them), and names resolved as a CA would see
//! them, from the hosted zones first.

use std::sync::Arc;

use portico_dns::zones::HostedZones;

use crate::wiring::listeners::LbListeners;

/// DNS-01 through Portico's own hosted zones: the TXT value is added as one change, and the CA
/// is told to validate only once the change is INSYNC (every secondary) and every address this
/// process serves DNS on answers it.
pub(crate) struct ZonesDns01 {
    pub(crate) zones: Arc<HostedZones>,
    pub(crate) servers: Vec<std::net::SocketAddr>,
    /// `[acme] resolver`: where `_acme-challenge` CNAMEs outside the hosted zones are looked up.
    pub(crate) resolver: Option<std::net::SocketAddr>,
    /// `[acme] dns_port`: the port other zones' nameservers are asked on (53).
    pub(crate) ns_port: u16,
}

impl ZonesDns01 {
    fn name(n: &str) -> Result<(hickory_proto::rr::Name, hickory_proto::rr::Name), String> {
        let mut fqdn = hickory_proto::rr::Name::from_ascii(n).map_err(|e| format!("{n}: {e}"))?;
        fqdn.set_fqdn(true);
        Ok((fqdn.to_lowercase(), fqdn))
    }

    /// Where the TXT record for `n` goes: `n` itself when a hosted zone holds it, else the end
    /// of its CNAME chain inside a hosted zone — what ACM's validation CNAME achieves: the
    /// domain's zone stays at the registrar, `_acme-challenge.<name>` points into Portico.
    async fn delegated(&self, n: &str) -> Result<hickory_proto::rr::Name, String> {
        use hickory_proto::rr::{RData, RecordType};
        let (mut cur, _) = Self::name(n)?;
        for _ in 0..8 {
            let catalog = self.zones.catalog();
            if let Some(zone) = catalog.find(&cur) {
                let cname = zone
                    .node(&cur)
                    .and_then(|node| node.get(RecordType::CNAME))
                    .and_then(|set| set.first());
                match cname {
                    Some(RData::CNAME(t)) => {
                        cur = t.0.to_lowercase();
                        continue;
                    }
                    _ => return Ok(cur),
                }
            }
            let resolver = self
                .resolver
                .unwrap_or_else(portico_doctor::dns::system_resolver);
            let r = portico_doctor::dns::resolve(resolver, &cur, RecordType::CNAME)
                .await
                .map_err(|e| format!("looking up a CNAME for {cur}: {e}"))?;
            let target = r.records.iter().find_map(|r| match &r.data {
                RData::CNAME(t) => Some(t.0.to_lowercase()),
                _ => None,
            });
            match target {
                Some(t) => {
                    tracing::info!(from = %cur, to = %t, "dns-01: following the _acme-challenge CNAME");
                    cur = t;
                }
                None => {
                    return Err(format!(
                        "{n} is not in a hosted zone and {resolver} knows no CNAME from it into one; \
                         host the zone in Portico, add `{n} CNAME <a name in a Portico zone>` where the \
                         domain's DNS is, or use dns_server/dns_key (RFC 2136)"
                    ))
                }
            }
        }
        Err(format!("the CNAME chain from {n} is longer than 8"))
    }

    async fn edit(
        &self,
        lower: &hickory_proto::rr::Name,
        value: &str,
        add: bool,
    ) -> Result<portico_dns::zones::ChangeInfo, String> {
        use hickory_proto::rr::{rdata::TXT, RData, RecordType};
        let n = lower.to_string();
        let lower = lower.clone();
        let zone = self
            .zones
            .catalog()
            .find(&lower)
            .map(|z| z.origin.clone())
            .ok_or_else(|| format!("no hosted zone serves {n}"))?;
        let rdata = RData::TXT(TXT::new(vec![value.to_string()]));
        self.zones
            .commit(&zone, |z| {
                if add {
                    z.add(&lower, RecordType::TXT, 60, rdata);
                } else if let Some(set) =
                    z.node(&lower).and_then(|n| n.get(RecordType::TXT)).cloned()
                {
                    let rest = set.iter().filter(|r| r != &rdata).collect();
                    z.put(&lower, RecordType::TXT, set.ttl, rest);
                }
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())
    }
}

impl portico_certs::challenge::Dns01Publisher for ZonesDns01 {
    fn publish<'a>(
        &'a self,
        name: &'a str,
        value: &'a str,
        progress: &'a (dyn Fn(String) + Send + Sync),
    ) -> portico_certs::challenge::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let lower = self.delegated(name).await?;
            let info = self.edit(&lower, value, true).await?;
            progress(format!(
                "change {} applied (serial {}); waiting until it is INSYNC and every nameserver answers {lower}",
                info.id, info.serial
            ));
            if !portico_dns::zones::wait_insync(
                &self.zones,
                &info.id,
                std::time::Duration::from_secs(120),
            )
            .await
            {
                return Err(format!(
                    "change {} for {name} is not INSYNC on every secondary after 120 s",
                    info.id
                ));
            }
            progress(format!("change {} is INSYNC on every secondary", info.id));
            for (i, server) in self.servers.iter().enumerate() {
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
                loop {
                    let answer = portico_dns::notify::exchange(
                        *server,
                        &lower,
                        hickory_proto::op::OpCode::Query,
                        hickory_proto::rr::RecordType::TXT,
                    )
                    .await;
                    let seen = answer.is_some_and(|m| {
                        m.answers.iter().any(|r| matches!(&r.data, hickory_proto::rr::RData::TXT(t) if t.txt_data.iter().any(|d| d.as_ref() == value.as_bytes())))
                    });
                    if seen {
                        progress(format!(
                            "nameserver {server} answers {lower} ({} of {})",
                            i + 1,
                            self.servers.len()
                        ));
                        break;
                    }
                    if tokio::time::Instant::now() > deadline {
                        return Err(format!(
                            "nameserver {server} does not answer the TXT for {name} after 30 s"
                        ));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
            tracing::info!(%name, serial = info.serial, "dns-01: TXT record served by every nameserver");
            Ok(())
        })
    }

    fn remove<'a>(
        &'a self,
        name: &'a str,
        value: &'a str,
    ) -> portico_certs::challenge::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let lower = self.delegated(name).await?;
            self.edit(&lower, value, false).await.map(|_| ())
        })
    }

    fn check<'a>(
        &'a self,
        name: &'a str,
    ) -> portico_certs::challenge::BoxFuture<'a, Result<(), String>> {
        Box::pin(self.check_delegation(name))
    }
}

impl ZonesDns01 {
    /// The self-check before a dns-01 order: the zone that will hold the TXT record must be
    /// delegated to Portico's nameservers, or the CA asks other servers and finds nothing. The
    /// public delegation (the zone's NS set, from `[acme] resolver` or the system's) must name
    /// only nameservers in the zone's own NS set. A resolver that does not answer is not a
    /// verdict: the order goes ahead and the log says the check could not be made.
    async fn check_delegation(&self, name: &str) -> Result<(), String> {
        use hickory_proto::op::ResponseCode;
        use hickory_proto::rr::RecordType;
        let resolver = self
            .resolver
            .unwrap_or_else(portico_doctor::dns::system_resolver);
        let (asked, _) = Self::name(name)?;
        if self.zones.catalog().find(&asked).is_none() {
            self.check_cname_everywhere(&asked, resolver).await?;
        }
        let lower = self.delegated(name).await?;
        let (origin, ours) = {
            let catalog = self.zones.catalog();
            let zone = catalog
                .find(&lower)
                .ok_or_else(|| format!("no hosted zone serves {lower}"))?;
            let ours = zone
                .node(&zone.origin)
                .and_then(|n| n.get(RecordType::NS))
                .map(|set| ns_names(set.rdatas().iter()))
                .unwrap_or_default();
            (zone.origin.clone(), ours)
        };
        let answer = match portico_doctor::dns::resolve(resolver, &origin, RecordType::NS).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(zone = %origin, %resolver, error = %e,
                    "dns-01 self-check: cannot read the zone's delegation; ordering anyway");
                return Ok(());
            }
        };
        if answer.rcode == Some(ResponseCode::NXDomain) {
            return Err(format!(
                "self-check: {resolver} says the zone {origin} does not exist (NXDOMAIN), so the CA \
                 cannot find the TXT record for {name}; delegate {origin} to Portico's nameservers \
                 ({}) at the registrar", ours.join(", ")
            ));
        }
        let public = ns_names(answer.records.iter().map(|r| &r.data));
        let elsewhere: Vec<&str> = public
            .iter()
            .filter(|n| !ours.contains(n))
            .map(String::as_str)
            .collect();
        if public.is_empty() {
            return Err(format!(
                "self-check: {resolver} knows no NS records for {origin}, so the CA cannot find the \
                 TXT record for {name}; delegate {origin} to Portico's nameservers ({}) at the registrar",
                ours.join(", ")
            ));
        }
        if !elsewhere.is_empty() {
            return Err(format!(
                "self-check: {origin} is delegated to {} (through {resolver}), not only to \
                 Portico's nameservers ({}); the CA would ask {} and not find the TXT record for \
                 {name}: set the zone's NS records at the registrar to Portico's",
                public.join(", "),
                ours.join(", "),
                elsewhere.join(", ")
            ));
        }
        tracing::info!(zone = %origin, nameservers = %public.join(","), "dns-01 self-check: the zone is delegated to Portico");
        Ok(())
    }

    /// For `name` in a zone Portico does not host: every nameserver of that zone (asked
    /// directly, without recursion) must answer the `_acme-challenge` CNAME the resolver
    /// knows, or the CA may ask one that has not got it yet. A nameserver that does not answer
    /// at all, or has no address, is logged; the CA would try another.
    async fn check_cname_everywhere(
        &self,
        name: &hickory_proto::rr::Name,
        resolver: std::net::SocketAddr,
    ) -> Result<(), String> {
        use hickory_proto::rr::{RData, RecordType};
        use portico_doctor::dns;
        let cname_in = |records: &[hickory_proto::rr::Record]| {
            records.iter().find_map(|r| match &r.data {
                RData::CNAME(c) if r.name.to_lowercase() == *name => Some(c.0.to_lowercase()),
                _ => None,
            })
        };
        let Ok(found) = dns::resolve(resolver, name, RecordType::CNAME).await else {
            return Ok(()); // delegated() says why when it matters
        };
        let Some(target) = cname_in(&found.records) else {
            return Ok(());
        };
        // The zone holding the CNAME is the one of its parent (a CNAME's owner is never a zone
        // apex). Asking about `name` itself would make the resolver follow the CNAME and cache
        // "no such name" for the target, which the CA's query a moment later would then get.
        let servers = match dns::zone_apex(resolver, &name.base_name()).await {
            Ok((apex, _)) => dns::nameservers(resolver, &apex).await.map(|s| (apex, s)),
            Err(e) => Err(e),
        };
        let (apex, servers) = match servers {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%name, error = %e, "dns-01 self-check: cannot list the nameservers of the CNAME's zone; ordering anyway");
                return Ok(());
            }
        };
        for (ns, addrs) in servers {
            if addrs.is_empty() {
                tracing::warn!(%name, nameserver = %ns, "dns-01 self-check: a nameserver of the CNAME's zone has no address");
            }
            for ip in addrs {
                let at = std::net::SocketAddr::new(ip, self.ns_port);
                match dns::query(at, name, RecordType::CNAME, false).await {
                    Ok(m) if cname_in(&m.answers).as_ref() == Some(&target) => {}
                    Ok(m) => {
                        return Err(format!(
                            "self-check: {ns} ({at}), a nameserver of {apex}, answers {} without the CNAME \
                             {name} -> {target} that {resolver} returns: not every nameserver has it yet, and \
                             the CA may ask this one; wait until the zone has reached it (or add the record there)",
                            m.metadata.response_code
                        ))
                    }
                    Err(e) => {
                        tracing::warn!(%name, nameserver = %ns, %at, error = %e, "dns-01 self-check: a nameserver of the CNAME's zone does not answer")
                    }
                }
            }
        }
        tracing::info!(%name, %target, zone = %apex, "dns-01 self-check: every nameserver of the zone answers the CNAME");
        Ok(())
    }
}

/// The nameserver names among `data` (NS records), lower-case and fully qualified.
fn ns_names<'a>(data: impl Iterator<Item = &'a hickory_proto::rr::RData>) -> Vec<String> {
    data.filter_map(|d| match d {
        hickory_proto::rr::RData::NS(ns) => Some(ns.0.to_lowercase().to_string()),
        _ => None,
    })
    .collect()
}

/// Names resolve as a CA would see them: from Portico's own hosted zones when a zone holds the
/// name, else through the system resolver.
pub(crate) struct ZonesLookup {
    pub(crate) zones: Arc<HostedZones>,
    pub(crate) listeners: Arc<LbListeners>,
    /// `[acme] resolver`: asked for names outside the hosted zones instead of the system's.
    pub(crate) resolver: Option<std::net::SocketAddr>,
}

impl portico_certs::challenge::NameLookup for ZonesLookup {
    fn addrs<'a>(
        &'a self,
        name: &'a str,
    ) -> portico_certs::challenge::BoxFuture<'a, Result<Vec<std::net::IpAddr>, String>> {
        Box::pin(async move {
            let mut fqdn =
                hickory_proto::rr::Name::from_ascii(name).map_err(|e| format!("{name}: {e}"))?;
            fqdn.set_fqdn(true);
            let catalog = self.zones.catalog();
            if catalog.find(&fqdn).is_some() {
                let mut out = Vec::new();
                for t in [
                    hickory_proto::rr::RecordType::A,
                    hickory_proto::rr::RecordType::AAAA,
                ] {
                    let a =
                        portico_dns::answer::lookup(&catalog, &fqdn, t, self.listeners.as_ref());
                    out.extend(
                        portico_dns::answer::Answer::records(&a.answers)
                            .into_iter()
                            .filter_map(|r| match &r.data {
                                hickory_proto::rr::RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
                                hickory_proto::rr::RData::AAAA(a) => {
                                    Some(std::net::IpAddr::V6(a.0))
                                }
                                _ => None,
                            }),
                    );
                }
                return Ok(out);
            }
            if let Some(resolver) = self.resolver {
                let mut out = Vec::new();
                for t in [
                    hickory_proto::rr::RecordType::A,
                    hickory_proto::rr::RecordType::AAAA,
                ] {
                    let r = portico_doctor::dns::resolve(resolver, &fqdn, t).await?;
                    out.extend(r.ips());
                }
                return Ok(out);
            }
            let found = tokio::net::lookup_host((name, 80))
                .await
                .map_err(|e| e.to_string())?;
            Ok(found.map(|a| a.ip()).collect())
        })
    }
}
