//! Per-listener access logs in nginx's `combined` format or as JSON lines.
//!
//! The request path only formats a line and hands it to a bounded channel; a writer thread owns
//! the file. When the writer falls behind, lines are dropped and counted rather than slowing
//! requests down.

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{AccessLogConfig, AccessLogFormat};

const QUEUE: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct AccessLog {
    format: AccessLogFormat,
    tx: SyncSender<String>,
    dropped: Arc<AtomicU64>,
}

/// One finished request.
#[derive(Debug)]
pub struct Entry {
    pub listener: Arc<str>,
    pub client: IpAddr,
    pub time: SystemTime,
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub host: String,
    pub status: u16,
    pub bytes: u64,
    pub referer: Option<String>,
    pub user_agent: Option<String>,
    pub target: Option<std::net::SocketAddr>,
    pub duration: Duration,
}

impl AccessLog {
    /// Opens `path` for appending (`-` is standard output) and starts its writer thread.
    pub fn open(listener: &str, config: &AccessLogConfig) -> Result<Self, String> {
        let mut out: Box<dyn Write + Send> = if config.path == "-" {
            Box::new(std::io::stdout())
        } else {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&config.path)
                .map_err(|e| format!("cannot open access log {:?}: {e}", config.path))?;
            Box::new(f)
        };
        let (tx, rx) = sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name(format!("access-log-{listener}"))
            .spawn(move || {
                let mut buf = Vec::with_capacity(64 * 1024);
                while let Ok(line) = rx.recv() {
                    buf.extend_from_slice(line.as_bytes());
                    while let Ok(more) = rx.try_recv() {
                        buf.extend_from_slice(more.as_bytes());
                        if buf.len() > 60 * 1024 {
                            break;
                        }
                    }
                    if let Err(e) = out.write_all(&buf).and_then(|_| out.flush()) {
                        tracing::error!(error = %e, "access log write failed");
                    }
                    buf.clear();
                }
            })
            .map_err(|e| format!("cannot start access log writer: {e}"))?;
        Ok(AccessLog {
            format: config.format,
            tx,
            dropped: Arc::default(),
        })
    }

    pub fn log(&self, e: &Entry) {
        let line = match self.format {
            AccessLogFormat::Combined => combined(e),
            AccessLogFormat::Json => json(e),
        };
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(dropped = n + 1, "access log behind: lines dropped");
                }
            }
        }
    }
}

fn combined(e: &Entry) -> String {
    format!(
        "{} - - [{}] \"{} {} {:?}\" {} {} \"{}\" \"{}\"\n",
        e.client,
        clf_time(e.time),
        e.method,
        e.uri,
        e.version,
        e.status,
        e.bytes,
        e.referer.as_deref().unwrap_or("-").replace('"', "\\\""),
        e.user_agent.as_deref().unwrap_or("-").replace('"', "\\\""),
    )
}

fn json(e: &Entry) -> String {
    let v = serde_json::json!({
        "time": humantime::format_rfc3339_millis(e.time).to_string(),
        "listener": &*e.listener,
        "client": e.client.to_string(),
        "method": e.method,
        "uri": e.uri,
        "protocol": format!("{:?}", e.version),
        "host": e.host,
        "status": e.status,
        "bytes": e.bytes,
        "referer": e.referer,
        "user_agent": e.user_agent,
        "target": e.target.map(|t| t.to_string()),
        "duration_ms": e.duration.as_secs_f64() * 1000.0,
    });
    let mut s = v.to_string();
    s.push('\n');
    s
}

/// `22/Nov/2026:20:42:04 +0000`, the Common Log Format's time, in UTC.
fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{:02}/{}/{}:{:02}:{:02}:{:02} +0000",
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clf_time_known_dates() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_380_124); // 2026-11-22T20:42:04Z
        assert_eq!(clf_time(t), "22/Nov/2026:20:42:04 +0000");
        assert_eq!(clf_time(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(clf_time(leap), "29/Feb/2000:00:00:00 +0000");
    }
}
