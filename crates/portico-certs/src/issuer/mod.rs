//! Issuers: who signs a requested certificate. ACME (any CA speaking RFC 8555) or the internal CA.
pub mod acme;
pub mod internal;
pub mod rollover;
