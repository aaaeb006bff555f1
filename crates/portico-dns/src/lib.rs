//! Portico's hosted zones: an authoritative DNS server for the user's domains.
pub mod answer;
pub mod config;
pub mod handler;
pub mod journal;
pub mod metrics;
pub mod notify;
pub mod owner;
pub mod reply;
pub mod rrset;
pub mod server;
pub mod transfer;
mod udp_batch;
mod update;
pub mod wire;
pub mod zone;
pub mod zone_config;
pub mod zone_file;
pub mod zones;
