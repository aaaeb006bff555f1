//! Portico's certificate manager: what AWS Certificate Manager and certbot do. A user names
//! domains; Portico proves control, obtains the certificate, stores it in certbot's layout,
//! serves it through the load balancer's cert resolver at once, and renews it.

pub mod alerts;
pub mod certbot;
pub mod challenge;
pub mod clock;
pub mod issuer;
pub mod keys;
pub mod lock;
pub mod manager;
pub mod self_check;
pub mod storage;

pub use manager::{AcmeSettings, CertManager, CertRequest, Challenge, IssuerKind};
