//! The CLI side of the admin API: `portico records|targets|listeners …` and `certs
//! request|delete` talk to a running `portico serve` through it. The address and token come from
//! `--admin URL --token T`, else from the config (`<state_dir>/admin.url`, written by serve with
//! the port it really listens on, then `[admin] listen`; the token from `<state_dir>/admin.token`).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::Value;

pub const URL_FILE: &str = "admin.url";

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
                let p = state_dir()?.join(super::TOKEN_FILE);
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

/// Writes the URL the admin API really listens on, for the CLI (removed when serve stops).
pub fn write_url(state_dir: &Path, addr: std::net::SocketAddr, tls: bool) {
    let url = format!("{}://{addr}\n", if tls { "https" } else { "http" });
    let _ = portico_config::files::write_atomic(&state_dir.join(URL_FILE), url.as_bytes(), 0o644);
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

#[derive(clap::Subcommand)]
pub enum RecordsCommand {
    /// The record sets of a zone.
    List {
        #[arg(long)]
        zone: String,
        #[command(flatten)]
        target: Target,
    },
    /// Set a record set, whatever was there (Route 53's UPSERT).
    Upsert(RecordArgs),
    /// Add a record set; fails if one of that name and type exists.
    Create(RecordArgs),
    /// Remove a record set; its values must match.
    Delete(RecordArgs),
}

#[derive(clap::Args)]
pub struct RecordArgs {
    #[arg(long)]
    zone: String,
    /// Relative to the zone (`@` for the apex) or fully qualified.
    #[arg(long)]
    name: String,
    #[arg(long = "type")]
    rtype: String,
    /// A value in master-file syntax; repeat for several.
    #[arg(long = "value")]
    values: Vec<String>,
    #[arg(long, default_value_t = 300)]
    ttl: u32,
    /// For ALIAS: `listener:<name>` or a name in the zone.
    #[arg(long = "alias-target")]
    alias_target: Option<String>,
    #[command(flatten)]
    target: Target,
}

pub fn records(cmd: RecordsCommand) -> anyhow::Result<()> {
    match cmd {
        RecordsCommand::List { zone, target } => {
            let admin = Admin::find(&target)?;
            let v = admin.call("GET", &format!("/api/v1/zones/{zone}"), None)?;
            if target.json {
                print_json(&v);
                return Ok(());
            }
            println!("{:<40} {:<6} {:>7}  VALUES", "NAME", "TYPE", "TTL");
            for r in v["records"].as_array().into_iter().flatten() {
                let values = match r["values"].as_array() {
                    Some(a) => a.iter().map(s).collect::<Vec<_>>().join(" | "),
                    None => s(&r["target"]),
                };
                println!(
                    "{:<40} {:<6} {:>7}  {values}",
                    s(&r["name"]),
                    s(&r["type"]),
                    s(&r["ttl"])
                );
            }
            println!("serial {}", s(&v["serial"]));
            Ok(())
        }
        RecordsCommand::Upsert(a) => change("UPSERT", a),
        RecordsCommand::Create(a) => change("CREATE", a),
        RecordsCommand::Delete(a) => change("DELETE", a),
    }
}

fn change(action: &str, a: RecordArgs) -> anyhow::Result<()> {
    let admin = Admin::find(&a.target)?;
    let mut change = serde_json::json!({
        "action": action, "name": a.name, "type": a.rtype, "ttl": a.ttl, "values": a.values,
    });
    if let Some(t) = &a.alias_target {
        change["target"] = Value::String(t.clone());
    }
    let v = admin.call(
        "POST",
        &format!("/api/v1/zones/{}/changes", a.zone),
        Some(serde_json::json!({ "changes": [change] })),
    )?;
    if a.target.json {
        print_json(&v);
    } else {
        println!(
            "{action} {} {} in {}: change {} {} (serial {})",
            a.name,
            a.rtype,
            s(&v["zone"]),
            s(&v["id"]),
            s(&v["status"]),
            s(&v["serial"])
        );
    }
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum TargetsCommand {
    /// Targets with their health (every group, or one).
    List {
        group: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Add targets to a group: they take traffic once healthy, with no reload.
    Register {
        group: String,
        /// `host:port`; repeat for several.
        #[arg(required = true)]
        addresses: Vec<String>,
        #[arg(long)]
        weight: Option<u32>,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a target: no new requests; those in flight finish (draining).
    Deregister {
        group: String,
        address: String,
        #[command(flatten)]
        target: Target,
    },
}

fn print_groups(groups: &[Value]) {
    println!(
        "{:<20} {:<24} {:<10} {:>9} {:<7} REASON",
        "TARGET GROUP", "TARGET", "STATE", "IN FLIGHT", "BY"
    );
    for g in groups {
        for t in g["targets"].as_array().into_iter().flatten() {
            println!(
                "{:<20} {:<24} {:<10} {:>9} {:<7} {}",
                s(&g["name"]),
                s(&t["address"]),
                s(&t["state"]),
                s(&t["in_flight"]),
                s(&t["registered_by"]),
                s(&t["reason"])
            );
        }
    }
}

pub fn targets(cmd: TargetsCommand) -> anyhow::Result<()> {
    let (target, v) = match cmd {
        TargetsCommand::List { group, target } => {
            let admin = Admin::find(&target)?;
            let v = match group {
                Some(g) => Value::Array(vec![admin.call(
                    "GET",
                    &format!("/api/v1/target-groups/{g}"),
                    None,
                )?]),
                None => admin.call("GET", "/api/v1/target-groups", None)?,
            };
            (target, v)
        }
        TargetsCommand::Register {
            group,
            addresses,
            weight,
            target,
        } => {
            let admin = Admin::find(&target)?;
            let targets: Vec<Value> = addresses
                .iter()
                .map(|a| match weight {
                    Some(w) => serde_json::json!({"address": a, "weight": w}),
                    None => serde_json::json!({ "address": a }),
                })
                .collect();
            let v = admin.call(
                "POST",
                &format!("/api/v1/target-groups/{group}/targets"),
                Some(serde_json::json!({ "targets": targets })),
            )?;
            (target, Value::Array(vec![v]))
        }
        TargetsCommand::Deregister {
            group,
            address,
            target,
        } => {
            let admin = Admin::find(&target)?;
            let v = admin.call(
                "DELETE",
                &format!("/api/v1/target-groups/{group}/targets/{address}"),
                None,
            )?;
            (target, Value::Array(vec![v]))
        }
    };
    if target.json {
        print_json(&v);
    } else {
        print_groups(v.as_array().map(Vec::as_slice).unwrap_or_default());
    }
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum ListenersCommand {
    /// Listeners: protocol, addresses, certificates, rules, and who made them.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Remove a listener made through the API.
    Delete {
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

pub fn listeners(cmd: ListenersCommand) -> anyhow::Result<()> {
    match cmd {
        ListenersCommand::List { target } => {
            let v = Admin::find(&target)?.call("GET", "/api/v1/listeners", None)?;
            if target.json {
                print_json(&v);
                return Ok(());
            }
            println!(
                "{:<16} {:<6} {:<24} {:>5} {:<7} CERTIFICATES",
                "LISTENER", "PROTO", "LISTENING ON", "RULES", "BY"
            );
            for l in v.as_array().into_iter().flatten() {
                let on = l["listening_on"]
                    .as_array()
                    .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                    .unwrap_or_default();
                let certs = l["certificates"]
                    .as_array()
                    .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                    .unwrap_or_default();
                println!(
                    "{:<16} {:<6} {:<24} {:>5} {:<7} {certs}",
                    s(&l["name"]),
                    s(&l["protocol"]),
                    on,
                    s(&l["rules"]),
                    s(&l["source"])
                );
            }
            Ok(())
        }
        ListenersCommand::Delete { name, target } => {
            Admin::find(&target)?.call("DELETE", &format!("/api/v1/listeners/{name}"), None)?;
            println!("listener {name} deleted");
            Ok(())
        }
    }
}

/// `portico certs request NAME --domain …`: asks the running server for a certificate, then
/// follows it until it is issued or fails.
/// What `certs request` passes on besides the name and domains.
pub struct CertOptions {
    pub issuer: Option<String>,
    pub challenge: Option<String>,
    pub key_type: Option<String>,
    pub rsa_key_size: Option<u32>,
}

pub fn certs_request(
    name: &str,
    domains: &[String],
    opts: CertOptions,
    wait: bool,
    target: &Target,
) -> anyhow::Result<()> {
    let admin = Admin::find(target)?;
    let mut body = serde_json::json!({ "name": name, "domains": domains });
    for (k, v) in [
        ("issuer", opts.issuer),
        ("challenge", opts.challenge),
        ("key_type", opts.key_type),
    ] {
        if let Some(v) = v {
            body[k] = Value::String(v);
        }
    }
    if let Some(bits) = opts.rsa_key_size {
        body["rsa_key_size"] = bits.into();
    }
    let v = admin.call("POST", "/api/v1/certificates", Some(body))?;
    println!("{name}: requested ({})", s(&v["status"]));
    if !wait {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(660);
    let mut shown = 0;
    let mut status = String::new();
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        let v = admin.call("GET", &format!("/api/v1/certificates/{name}"), None)?;
        let progress = v["progress"].as_array().cloned().unwrap_or_default();
        if progress.len() < shown {
            shown = 0;
        }
        for p in &progress[shown..] {
            println!("{name}: {}", s(p));
        }
        shown = progress.len();
        let now = s(&v["status"]);
        if now != status {
            status = now.clone();
            println!("{name}: {status}");
        }
        match now.as_str() {
            "ISSUED" => {
                println!(
                    "{name}: issued for {}, not after {} — {} (serving now)",
                    v["domains"]
                        .as_array()
                        .map(|a| a.iter().map(s).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default(),
                    s(&v["not_after"]),
                    s(&v["fullchain"])
                );
                return Ok(());
            }
            "FAILED" => bail!(
                "{name}: failed: {}{}",
                s(&v["last_error"]),
                v["next_attempt"]
                    .as_str()
                    .map(|t| format!(" (the server retries at {t})"))
                    .unwrap_or_default()
            ),
            _ => {}
        }
    }
    bail!("no outcome within 11 minutes: see `portico certs show {name}`")
}

pub fn certs_delete(name: &str, target: &Target) -> anyhow::Result<()> {
    let v = Admin::find(target)?.call("DELETE", &format!("/api/v1/certificates/{name}"), None)?;
    println!("{name}: deleted ({})", s(&v["note"]));
    Ok(())
}
