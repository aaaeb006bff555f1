//! The CLI side of the admin API: the commands that talk to a running `portico serve`
//! (`records`, `targets`, `listeners`, `certs request|delete`, and `zones`/`certs` listings when
//! a server runs) find it through this. The address and token come from
//! `--admin URL --token T`, else from the config (`<state_dir>/admin.url`, written by serve with
//! the port it really listens on, then `[admin] listen`; the token from `<state_dir>/admin.token`).

use std::time::Duration;

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::Value;

use portico_admin::URL_FILE;

/// Where the admin API is and the token to use.
pub struct Admin {
    pub url: String,
    pub token: String,
}

/// How a command names the server: `-c`, or `--admin`/`--token`.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    #[arg(short, long, default_value = "portico.toml")]
    pub config: std::path::PathBuf,
    /// The admin API's URL (default: found from the config).
    #[arg(long)]
    pub admin: Option<String>,
    /// The bearer token (default: `<state_dir>/admin.token`).
    #[arg(long)]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl Admin {
    pub fn find(t: &Target) -> anyhow::Result<Admin> {
        let state_dir = || -> anyhow::Result<std::path::PathBuf> {
            let source = crate::config::Source::read(&t.config)?;
            Ok(source.parse()?.state_dir)
        };
        let url = match &t.admin {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => {
                let dir = state_dir()?;
                match std::fs::read_to_string(dir.join(URL_FILE)) {
                    Ok(u) => u.trim().trim_end_matches('/').to_string(),
                    Err(_) => {
                        let source = crate::config::Source::read(&t.config)?;
                        let config = source.parse()?;
                        let Some(a) = config.admin else {
                            bail!(
                                "{}: no [admin] section, so no admin API to talk to; add `[admin]` with `listen = \"127.0.0.1:9180\"`, or pass --admin URL --token T",
                                t.config.display()
                            );
                        };
                        format!("http://{}", a.listen)
                    }
                }
            }
        };
        let token = match &t.token {
            Some(tok) => tok.clone(),
            None => {
                let p = state_dir()?.join(portico_admin::TOKEN_FILE);
                std::fs::read_to_string(&p)
                    .with_context(|| {
                        format!(
                            "cannot read the admin token {} (made by `portico serve` on first start; or pass --token)",
                            p.display()
                        )
                    })?
                    .trim()
                    .to_string()
            }
        };
        Ok(Admin { url, token })
    }

    /// One API call; the JSON answer, or the API's error and hint as the error.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let text = self.call_text(method, path, body)?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{path}: the answer is not JSON"))
    }

    pub fn call_text(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<String> {
        if self.url.starts_with("https://") {
            bail!(
                "the CLI talks plain HTTP to a loopback admin API; for {} use curl with the token",
                self.url
            );
        }
        let uri = format!("{}{path}", self.url);
        let rt = crate::server::runtime()?;
        rt.block_on(async {
            let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http();
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(&uri)
                .header("authorization", format!("Bearer {}", self.token));
            let bytes = match body {
                Some(b) => {
                    req = req.header("content-type", "application/json");
                    Bytes::from(serde_json::to_vec(&b)?)
                }
                None => Bytes::new(),
            };
            let req = req.body(Full::new(bytes)).context("bad request")?;
            let res = tokio::time::timeout(Duration::from_secs(60), client.request(req))
                .await
                .with_context(|| format!("{uri}: no answer within 60 s"))?
                .with_context(|| {
                    format!(
                        "cannot reach the admin API at {} (is `portico serve` running?)",
                        self.url
                    )
                })?;
            let status = res.status();
            let body = res
                .into_body()
                .collect()
                .await
                .context("reading the answer")?
                .to_bytes();
            let text = String::from_utf8_lossy(&body).to_string();
            if !status.is_success() {
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let error = v["error"].as_str().unwrap_or(text.as_str());
                match v["hint"].as_str() {
                    Some(h) => bail!("{status}: {error}\nhint: {h}"),
                    None => bail!("{status}: {error}"),
                }
            }
            Ok(text)
        })
    }
}

pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The running server's admin API when it has one (given with `--admin`, or found through the
/// config and answering); `None` means: read the state directory instead.
pub fn running_api(t: &Target) -> anyhow::Result<Option<Admin>> {
    if t.admin.is_some() {
        return Ok(Some(Admin::find(t)?));
    }
    let (_, config) = crate::node::load(&t.config)?;
    if config.admin.is_none() || !config.state_dir.join(URL_FILE).exists() {
        return Ok(None);
    }
    let admin = Admin::find(t)?;
    // A URL file left by a server that died: fall back to the state directory.
    Ok(admin
        .call("GET", "/api/v1/zones", None)
        .is_ok()
        .then_some(admin))
}
