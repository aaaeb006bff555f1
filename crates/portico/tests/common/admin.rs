//! A running `portico serve` with its admin API, for the admin and cluster journeys.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::Value;

use super::support::{send, TempDir};
use super::{free_port, Proc};

/// A running server with its admin API.
pub struct AdminEnv {
    pub dir: TempDir,
    pub config: PathBuf,
    pub server: Proc,
    pub admin: SocketAddr,
    pub token: String,
    pub http: u16,
    pub dns: u16,
}

pub fn admin_config(dir: &Path, http: u16, dns: u16) -> String {
    format!(
        r#"state_dir = "{state}"
shutdown_timeout = "5s"
[admin]
listen = "127.0.0.1:0"
[dns]
listen = ["127.0.0.1:{dns}"]
[[zone]]
name = "example.test"
nameservers = ["ns1.example.test."]
[[zone.record]]
name = "ns1"
type = "A"
values = ["127.0.0.1"]
[[target_group]]
name = "web"
targets = []
[target_group.health_check]
path = "/health"
interval = "1s"
timeout = "500ms"
healthy_threshold = 1
unhealthy_threshold = 1
[[listener]]
name = "http"
bind = "127.0.0.1:{http}"
protocol = "http"
default_action = {{ forward = "web" }}
"#,
        state = dir.join("state").display(),
    )
}

impl AdminEnv {
    pub async fn start(tag: &str) -> AdminEnv {
        let dir = TempDir::new(tag);
        let (http, dns) = (free_port(), free_port());
        let config = dir.path().join("portico.toml");
        std::fs::write(&config, admin_config(dir.path(), http, dns)).unwrap();
        let (server, admin, token) = serve(&config, dir.path()).await;
        AdminEnv {
            dir,
            config,
            server,
            admin,
            token,
            http,
            dns,
        }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        call(self.admin, Some(&self.token), method, path, body).await
    }

    pub fn dig(&self, name: &str, rtype: &str) -> String {
        dig(self.dns, name, rtype)
    }
}

/// Starts `portico serve` and waits for its admin API (the URL file it writes).
pub async fn serve(config: &Path, dir: &Path) -> (Proc, SocketAddr, String) {
    let url_file = dir.join("state/admin.url");
    let _ = std::fs::remove_file(&url_file);
    let mut server = Proc::spawn(&["serve", "-c", config.to_str().unwrap()]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !url_file.exists() {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("portico serve exited ({status}):\n{}", server.output());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no admin API after 30 s:\n{}",
            server.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = std::fs::read_to_string(&url_file).unwrap();
    let admin: SocketAddr = url.trim().strip_prefix("http://").unwrap().parse().unwrap();
    let token = std::fs::read_to_string(dir.join("state/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    (server, admin, token)
}

pub async fn call(
    admin: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", admin.to_string());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let bytes = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(&b).unwrap())
        }
        None => Bytes::new(),
    };
    let reply = send(admin, req.body(Full::new(bytes)).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let v = serde_json::from_str(&reply.body).unwrap_or(Value::String(reply.body));
    (reply.status, v)
}

pub fn dig(port: u16, name: &str, rtype: &str) -> String {
    let out = std::process::Command::new("dig")
        .args([
            "+short",
            "+time=2",
            "+tries=1",
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            name,
            rtype,
        ])
        .output()
        .expect("dig is missing: apt-get install bind9-dnsutils (scripts/test installs it)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
