//! The DNS sections of `portico.toml`: `[dns]`, `[[tsig_key]]`, `[[zone]]` and `[[zone.record]]`.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct DnsSections {
    #[serde(default)]
    pub dns: Option<DnsConfig>,
    #[serde(default, rename = "tsig_key")]
    pub tsig_keys: Vec<TsigKeyConfig>,
    #[serde(default, rename = "zone")]
    pub zones: Vec<ZoneConfig>,
}

/// `[dns]`: where the authoritative server listens (UDP and TCP on each address).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Response rate limiting: answers per second per client /24 (IPv4) or /56 (IPv6);
    /// beyond it every other answer is dropped and the rest are truncated (slip), so real
    /// clients retry over TCP. Off when absent.
    pub rate_limit: Option<u32>,
    #[serde(default = "default_tcp_idle", with = "portico_config::duration")]
    pub tcp_idle_timeout: std::time::Duration,
    #[serde(default = "default_tcp_max")]
    pub max_tcp_connections: usize,
}

fn default_listen() -> Vec<String> {
    vec!["127.0.0.1:53".into()]
}
fn default_tcp_idle() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}
fn default_tcp_max() -> usize {
    1000
}

/// `[[tsig_key]]`: a shared secret for RFC 2136 updates (and transfers).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TsigKeyConfig {
    pub name: String,
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    pub secret: Option<String>,
    pub secret_file: Option<String>,
}

fn default_algorithm() -> String {
    "hmac-sha256".into()
}

/// `[[zone]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    pub name: String,
    /// An RFC 1035 master file with the zone's records.
    pub file: Option<String>,
    /// Secondaries (`ip:port`): sent NOTIFY on every change and allowed AXFR/IXFR.
    #[serde(default)]
    pub secondaries: Vec<String>,
    /// TSIG keys allowed to change the zone with RFC 2136 UPDATE.
    #[serde(default)]
    pub update_keys: Vec<String>,
    /// TSIG keys that allow AXFR/IXFR. When given, every transfer must be signed with one of
    /// them (from any address, secondaries included), answers are signed, and NOTIFY is signed
    /// with the first; without them, `secondaries` are allowed by address.
    #[serde(default)]
    pub transfer_keys: Vec<String>,
    /// Nameserver names (fully qualified) for the apex NS (and SOA MNAME) when the zone has
    /// none; default `ns1.<zone>` and `ns2.<zone>`.
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default, rename = "record")]
    pub records: Vec<RecordConfig>,
}

/// `[[zone.record]]`: one record set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    /// Relative to the zone; `@` is the apex.
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: String,
    /// Default 300, or 60 where health decides the answer.
    pub ttl: Option<u32>,
    #[serde(default)]
    pub values: Vec<String>,
    /// ALIAS only: `listener:NAME` or a name in the zone.
    pub target: Option<String>,
    /// Routing (see `routing.rs`): this set among the others of its name and type.
    pub set_identifier: Option<String>,
    /// `weighted`, `failover` or `multivalue`.
    pub routing: Option<String>,
    pub weight: Option<u32>,
    /// `primary` or `secondary`.
    pub failover: Option<String>,
    /// `target_group:NAME`, `listener:NAME`, or a check `http://ADDR:PORT/PATH`, `https://…`,
    /// `tcp://ADDR:PORT`.
    pub health: Option<String>,
    pub health_check: Option<crate::routing::CheckFields>,
    /// ALIAS only: answer only where the listener serves healthily.
    pub evaluate_target_health: Option<bool>,
}

impl RecordConfig {
    pub fn routing_fields(&self) -> crate::routing::RoutingFields {
        crate::routing::RoutingFields {
            set_identifier: self.set_identifier.clone(),
            routing: self.routing.clone(),
            weight: self.weight,
            failover: self.failover.clone(),
            health: self.health.clone(),
            health_check: self.health_check.clone(),
            evaluate_target_health: self.evaluate_target_health,
        }
    }
}
