//! What the certificate manager tells the outside world about: a certificate issued or renewed,
//! a renewal that failed (with the CA's problem), one expiring with no successful renewal, and
//! the CA's renewal window moving (RFC 9773: a CA that revokes early pulls it forward). Let's
//! Encrypt no longer e-mails before expiry; `[[alert]]` webhooks and hooks take its place.
//! Delivery is the binary's (`wiring/alerts.rs`); the manager only emits.

use std::time::{Duration, SystemTime};

use serde::Serialize;

/// Event names, as `[[alert]] events` lists them and the JSON's `event` field carries them.
pub const ISSUED: &str = "certificate_issued";
pub const RENEWED: &str = "certificate_renewed";
pub const FAILED: &str = "renewal_failed";
pub const EXPIRING: &str = "certificate_expiring";
pub const WINDOW_MOVED: &str = "renewal_window_moved";
pub const EVENTS: [&str; 5] = [ISSUED, RENEWED, FAILED, EXPIRING, WINDOW_MOVED];

/// One event, as the webhook's JSON body.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Event {
    pub event: &'static str,
    pub certificate: String,
    pub domains: Vec<String>,
    /// When it happened (RFC 3339).
    pub at: String,
    /// The certificate's version (its number under `archive/<name>/`), when one is stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// When the served certificate expires (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// Seconds until it expires (`certificate_expiring`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u64>,
    /// What went wrong, with the CA's problem document when it sent one (`renewal_failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The CA's renewal window, before and after (`renewal_window_moved`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

impl Event {
    pub fn new(
        event: &'static str,
        certificate: &str,
        domains: &[String],
        now: SystemTime,
    ) -> Self {
        Event {
            event,
            certificate: certificate.to_string(),
            domains: domains.to_vec(),
            at: humantime::format_rfc3339_seconds(now).to_string(),
            version: None,
            not_after: None,
            expires_in_seconds: None,
            error: None,
            window_before: None,
            window: None,
        }
    }
}

/// Where events go. Sending must not block: deliveries run in their own tasks.
pub trait AlertSink: Send + Sync {
    fn send(&self, event: Event);
    /// Below how much remaining validity a certificate with no successful renewal is reported
    /// as expiring, for a certificate valid for `lifetime` in all.
    fn expiring_within(&self, lifetime: Duration) -> Duration;
}

/// The default threshold: a week, or a third of the lifetime for short-lived certificates
/// (a 6-day certificate is renewed with about two days left).
pub fn default_expiring_within(lifetime: Duration) -> Duration {
    (lifetime / 3).min(Duration::from_secs(7 * 86_400))
}
