//! Portico's load balancer: what an Application Load Balancer or nginx does in front of an API.
//!
//! Configuration ([`config`]) is validated and compiled into an immutable [`Snapshot`]; a
//! [`LoadBalancer`] serves the current snapshot on its listeners and swaps in a new one on reload.
//! Certificates reach handshakes through the [`tls::CertStore`], which the certificate manager
//! publishes into as well.

pub mod access_log;
pub mod action;
mod body;
pub mod compress;
pub mod config;
mod connection;
pub mod counters;
mod h1;
mod idle;
pub mod metrics;
pub mod proxy;
mod proxy_protocol;
pub mod rate_limit;
pub mod rule;
mod server;
mod serving;
pub mod snapshot;
pub mod target_group;
pub mod tls;
pub mod transform;
mod upstream;
mod wire;
mod workers;

pub use portico_config::{ConfigIssue, PathSeg};
pub use server::{Http01Responder, LoadBalancer, TargetHealth};
pub use snapshot::Snapshot;
