//! `[[alert]]`: the certificate manager's events (`portico_certs::alerts`) delivered as a JSON
//! `POST` to a webhook (retried) and/or to a command, each in its own task.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use portico_certs::alerts::{default_expiring_within, AlertSink, Event, EXPIRING};

use crate::config::AlertConfig;

/// Attempts per webhook delivery, and the pause before each retry.
const ATTEMPTS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_secs(1),
    Duration::from_secs(4),
];
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

struct Alert {
    label: String,
    url: Option<hyper::Uri>,
    command: Option<String>,
    events: Vec<String>,
    expiring_within: Option<Duration>,
}

/// Every configured alert (validated by `PorticoConfig::own_issues`).
pub struct Alerts {
    alerts: Vec<Alert>,
}

/// `certificate_expiring` is delivered once per alert (by what it delivers to), certificate and
/// served certificate (told apart by its expiry), for the life of the process: a reload makes a
/// new `Alerts` but must not send it again.
static EXPIRING_SENT: Mutex<Option<HashSet<(String, String, String)>>> = Mutex::new(None);

impl Alerts {
    pub fn new(config: &[AlertConfig]) -> Arc<Self> {
        let alerts = config
            .iter()
            .enumerate()
            .map(|(i, a)| Alert {
                label: a.name.clone().unwrap_or_else(|| format!("alert {}", i + 1)),
                url: a.url.as_deref().and_then(|u| u.parse().ok()),
                command: a.command.clone(),
                events: a.events.clone(),
                expiring_within: a
                    .expiring_within
                    .as_deref()
                    .and_then(|d| humantime::parse_duration(d).ok()),
            })
            .collect();
        Arc::new(Alerts { alerts })
    }
}

/// The `[[alert]]`s as the certificate manager's event sink (none when there are none).
pub fn sink(config: &[AlertConfig]) -> Option<Arc<dyn AlertSink>> {
    (!config.is_empty()).then(|| Alerts::new(config) as Arc<dyn AlertSink>)
}

impl AlertSink for Alerts {
    fn send(&self, event: Event) {
        for (i, a) in self.alerts.iter().enumerate() {
            if !a.events.is_empty() && !a.events.iter().any(|e| e == event.event) {
                continue;
            }
            if event.event == EXPIRING {
                let (Some(left), Some(within)) = (event.expires_in_seconds, a.expiring_within)
                else {
                    // No own threshold: the manager's (the default) decided.
                    if !self.first_expiring(i, &event) {
                        continue;
                    }
                    spawn_delivery(a, &event);
                    continue;
                };
                if Duration::from_secs(left) > within || !self.first_expiring(i, &event) {
                    continue;
                }
            }
            spawn_delivery(a, &event);
        }
    }

    fn expiring_within(&self, lifetime: Duration) -> Duration {
        self.alerts
            .iter()
            .map(|a| {
                a.expiring_within
                    .unwrap_or_else(|| default_expiring_within(lifetime))
            })
            .max()
            .unwrap_or_else(|| default_expiring_within(lifetime))
    }
}

impl Alerts {
    fn first_expiring(&self, alert: usize, e: &Event) -> bool {
        let a = &self.alerts[alert];
        let to = format!(
            "{} {}",
            a.url.as_ref().map(|u| u.to_string()).unwrap_or_default(),
            a.command.as_deref().unwrap_or("")
        );
        let key = (
            to,
            e.certificate.clone(),
            e.not_after.clone().unwrap_or_default(),
        );
        EXPIRING_SENT
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(HashSet::new)
            .insert(key)
    }
}

fn spawn_delivery(a: &Alert, event: &Event) {
    let body = serde_json::to_vec(event).unwrap_or_default();
    if let Some(url) = a.url.clone() {
        let (label, body, what) = (a.label.clone(), body.clone(), event.event);
        tokio::spawn(async move {
            let mut last = String::new();
            for pause in ATTEMPTS {
                tokio::time::sleep(pause).await;
                match tokio::time::timeout(WEBHOOK_TIMEOUT, post(&url, body.clone())).await {
                    Ok(Ok(status)) if status < 300 => {
                        tracing::debug!(alert = %label, event = what, status, "alert delivered");
                        return;
                    }
                    // A client error will not change on a retry.
                    Ok(Ok(status)) if (400..500).contains(&status) && status != 429 => {
                        last = format!("the webhook answered {status}");
                        break;
                    }
                    Ok(Ok(status)) => last = format!("the webhook answered {status}"),
                    Ok(Err(e)) => last = e,
                    Err(_) => last = format!("no answer within {WEBHOOK_TIMEOUT:?}"),
                }
            }
            tracing::warn!(alert = %label, event = what, url = %url, error = %last, "alert not delivered");
        });
    }
    if let Some(command) = a.command.clone() {
        let (label, what) = (a.label.clone(), event.event);
        let envs = [
            ("PORTICO_EVENT", event.event.to_string()),
            ("PORTICO_CERTIFICATE", event.certificate.clone()),
            ("PORTICO_DOMAINS", event.domains.join(" ")),
            ("PORTICO_ALERT", String::from_utf8_lossy(&body).to_string()),
        ];
        tokio::spawn(async move {
            let run = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&command)
                .envs(envs)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output();
            match tokio::time::timeout(COMMAND_TIMEOUT, run).await {
                Ok(Ok(out)) if out.status.success() => {}
                Ok(Ok(out)) => tracing::warn!(alert = %label, event = what, status = %out.status,
                    stderr = %String::from_utf8_lossy(&out.stderr).trim(), "alert command failed"),
                Ok(Err(e)) => {
                    tracing::warn!(alert = %label, event = what, error = %e, "alert command could not run")
                }
                Err(_) => {
                    tracing::warn!(alert = %label, event = what, "alert command ran over 60 s and was killed")
                }
            }
        });
    }
}

/// One JSON POST over HTTP/1.1 (TLS with the system's roots for `https`); the status code.
async fn post(url: &hyper::Uri, body: Vec<u8>) -> Result<u16, String> {
    let https = url.scheme_str() == Some("https");
    let host = url.host().ok_or("the URL has no host")?.to_string();
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let path = url.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let authority = url
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or(host.clone());
    let req = hyper::Request::post(path)
        .header("host", authority)
        .header("content-type", "application/json")
        .header("user-agent", concat!("portico/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    if https {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name =
            rustls::pki_types::ServerName::try_from(bare).map_err(|e| format!("{host}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        send(hyper_util::rt::TokioIo::new(stream), req).await
    } else {
        send(hyper_util::rt::TokioIo::new(tcp), req).await
    }
}

async fn send<T>(io: T, req: hyper::Request<Full<Bytes>>) -> Result<u16, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    // Read (and drop) what the receiver sends back, at most 64 KiB of it.
    let _ = http_body_util::Limited::new(res.into_body(), 64 * 1024)
        .collect()
        .await;
    Ok(status)
}
