//! Portico's hosted zones: an authoritative DNS server for the user's domains.
pub mod answer;
pub mod config;
pub mod zone;
pub mod zone_file;
