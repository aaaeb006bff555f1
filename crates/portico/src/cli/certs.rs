//! `portico certs …`: certificates' status (from the running server, else the state directory),
//! renewal and revocation through the running server, requests and deletions through its API,
//! and where the internal CA's root is.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::Value;

use std::time::Duration;

use crate::cli::client::{print_json, running_api, s, Admin, Target};
use crate::cli::reload::signal_server;
use crate::node::{load, requested_names};

#[derive(clap::Subcommand)]
pub enum CertsCommand {
    /// Each certificate with its status (ISSUED, RENEWING, FAILED …), expiry and last error
    /// (from the running server's admin API, else from the state directory).
    List {
        #[command(flatten)]
        target: Target,
    },
    /// One certificate: status, names, expiry, files, the last error as the CA reported it.
    Show {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Renew now through the running `portico serve` (whatever the schedule says); with
    /// --dry-run, order a certificate and discard it, storing nothing.
    Renew {
        name: String,
        #[arg(long)]
        dry_run: bool,
        #[arg(short, long, default_value = "portico.toml")]
        config: PathBuf,
    },
    /// Revoke the current certificate at its CA (through the running `portico serve`) and
    /// replace it at once.
    Revoke {
        name: String,
        #[arg(short, long, default_value = "portico.toml")]
        config: PathBuf,
    },
    /// Adopt certbot's lineages (live/, archive/, renewal/*.conf; the source is only read):
    /// served at once with no new order, renewed by Portico from then on.
    Import {
        /// certbot's config directory.
        #[arg(long, value_name = "DIR")]
        certbot: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Write CAA records into the hosted zones that let only the configured CA issue for the
    /// certificate's names, only to Portico's ACME account (accounturi) and only by its
    /// challenge (validationmethods), RFC 8657; through the running server's admin API.
    Lock {
        name: String,
        /// The CA's CAA domain (default: letsencrypt.org for Let's Encrypt's directories,
        /// otherwise the first the CA's directory names in meta.caaIdentities).
        #[arg(long)]
        ca_identity: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Request a certificate from the running server (admin API) and follow it until issued.
    Request {
        name: String,
        /// A name the certificate covers; repeat for several (`*.example.com` needs dns-01).
        #[arg(long = "domain", required = true)]
        domains: Vec<String>,
        /// `acme` (the [acme] CA) or `internal`.
        #[arg(long)]
        issuer: Option<String>,
        /// `http-01`, `tls-alpn-01` or `dns-01`.
        #[arg(long)]
        challenge: Option<String>,
        /// `ecdsa` (P-256, default) or `rsa`.
        #[arg(long)]
        key_type: Option<String>,
        /// 2048 (default), 3072 or 4096 with `--key-type rsa`.
        #[arg(long)]
        rsa_key_size: Option<u32>,
        /// Return once the request is accepted instead of following it.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Stop managing a certificate requested through the API (its files stay).
    Delete {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Where the internal CA's root is and how to trust it.
    Trust {
        #[arg(short, long, default_value = "portico.toml")]
        config: PathBuf,
    },
}

pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    use portico_certs::storage::RenewRequest;
    match cmd {
        CertsCommand::List { target } => certs_list(&target),
        CertsCommand::Show { name, target } => certs_show(&target, &name),
        CertsCommand::Trust { config } => certs_trust(&config),
        CertsCommand::Request {
            name,
            domains,
            issuer,
            challenge,
            key_type,
            rsa_key_size,
            no_wait,
            target,
        } => certs_request(
            &name,
            &domains,
            CertOptions {
                issuer,
                challenge,
                key_type,
                rsa_key_size,
            },
            !no_wait,
            &target,
        ),
        CertsCommand::Delete { name, target } => certs_delete(&name, &target),
        CertsCommand::Import { certbot, target } => {
            crate::cli::import::certs_import(&certbot, &target)
        }
        CertsCommand::Lock {
            name,
            ca_identity,
            target,
        } => crate::cli::lock::certs_lock(&name, ca_identity.as_deref(), &target),
        CertsCommand::Renew {
            name,
            dry_run,
            config,
        } => {
            let what = if dry_run {
                RenewRequest::DryRun
            } else {
                RenewRequest::Renew
            };
            certs_renew(&config, &name, what)
        }
        CertsCommand::Revoke { name, config } => certs_renew(&config, &name, RenewRequest::Revoke),
    }
}

/// Certificate records: from the running server, else from the state directory.
fn cert_records(t: &Target) -> anyhow::Result<(Vec<serde_json::Value>, PathBuf)> {
    let (_, config) = load(&t.config)?;
    let storage = portico_certs::storage::Storage::new(&config.state_dir);
    let list = match running_api(t)? {
        Some(admin) => serde_json::from_value(admin.call("GET", "/api/v1/certificates", None)?)?,
        None => storage
            .records()
            .into_iter()
            .map(|r| serde_json::to_value(r).unwrap_or_default())
            .collect(),
    };
    Ok((list, config.state_dir))
}

fn field(v: &serde_json::Value, k: &str) -> String {
    match &v[k] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub fn certs_list(t: &Target) -> anyhow::Result<()> {
    let (records, _) = cert_records(t)?;
    if t.json {
        print_json(&serde_json::Value::Array(records));
        return Ok(());
    }
    println!(
        "{:<20} {:<20} {:<9} {:<22} DOMAINS",
        "NAME", "STATUS", "ISSUER", "NOT AFTER"
    );
    for r in &records {
        let domains: Vec<String> = r["domains"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{:<20} {:<20} {:<9} {:<22} {}",
            field(r, "name"),
            field(r, "status"),
            field(r, "issuer"),
            field(r, "not_after"),
            domains.join(",")
        );
        if r["last_error"].is_string() {
            println!("  last error: {}", field(r, "last_error"));
        }
        if r["next_attempt"].is_string() {
            println!("  next try:   {}", field(r, "next_attempt"));
        }
    }
    Ok(())
}

pub fn certs_show(t: &Target, name: &str) -> anyhow::Result<()> {
    let (records, state_dir) = cert_records(t)?;
    let r = records
        .into_iter()
        .find(|r| r["name"] == name)
        .with_context(|| {
            format!("no certificate {name:?} has been requested yet (see `portico certs list`)")
        })?;
    if t.json {
        print_json(&r);
        return Ok(());
    }
    let list = |k: &str| -> Vec<String> {
        r[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    println!("name:        {name}");
    println!("status:      {}", field(&r, "status"));
    println!("issuer:      {}", field(&r, "issuer"));
    if r.get("profile").is_some_and(|p| !p.is_null()) {
        println!("profile:     {}", field(&r, "profile"));
    }
    println!("domains:     {}", list("domains").join(", "));
    println!("not after:   {}", field(&r, "not_after"));
    println!("renew after: {}", field(&r, "renew_after"));
    if r["renewal_window"].is_string() {
        println!(
            "CA window:   {} (ACME Renewal Information)",
            field(&r, "renewal_window")
        );
    }
    println!("version:     {}", field(&r, "version"));
    let live = portico_certs::storage::Storage::new(&state_dir).live(name);
    for f in ["fullchain.pem", "privkey.pem", "cert.pem", "chain.pem"] {
        if live.join(f).exists() {
            println!("file:        {}", live.join(f).display());
        }
    }
    for (k, label) in [
        ("last_error", "last error:  "),
        ("next_attempt", "next try:    "),
        ("dry_run", "dry run:     "),
    ] {
        if r[k].is_string() {
            println!("{label}{}", field(&r, k));
        }
    }
    for step in list("progress") {
        println!("in progress: {step}");
    }
    Ok(())
}

pub fn certs_trust(path: &Path) -> anyhow::Result<()> {
    let (_, config) = load(path)?;
    let root = portico_certs::issuer::internal::InternalCa::new(&config.state_dir).root_path();
    if !root.exists() {
        anyhow::bail!("no internal CA yet at {}: it is made when the first issuer = \"internal\" certificate is issued", root.display());
    }
    println!("Portico's internal root CA: {}", root.display());
    println!("Trust it on Debian:  cp {} /usr/local/share/ca-certificates/portico-root.crt && update-ca-certificates", root.display());
    println!(
        "Or per command:      curl --cacert {} https://…",
        root.display()
    );
    Ok(())
}

/// `portico certs renew NAME [--dry-run]`: asks the running server's certificate manager (the
/// only writer of certificate files) to renew now, or to order and discard a certificate, then
/// follows the outcome in the renewal record.
pub fn certs_renew(
    path: &Path,
    name: &str,
    what: portico_certs::storage::RenewRequest,
) -> anyhow::Result<()> {
    use portico_certs::storage::{RenewRequest, Storage};
    let dry_run = what == RenewRequest::DryRun;
    let (_, config) = load(path)?;
    if !requested_names(&config).contains(name) {
        anyhow::bail!(
            "{}: no [[certificate]] named {name:?} with domains (imported certificates are renewed by whoever issued them)",
            path.display()
        );
    }
    let storage = Storage::new(&config.state_dir);
    let before = storage.record(name).unwrap_or_default();
    if what == RenewRequest::Revoke && before.version == 0 {
        anyhow::bail!("{name}: no certificate has been issued yet, nothing to revoke");
    }
    storage
        .request_renewal(name, what)
        .context("cannot leave the renewal request")?;
    let pid = signal_server(&config).map_err(|e| {
        let _ = storage.take_renewal_request(name);
        e.context("renewal runs inside `portico serve` (its listeners answer the challenge): start it, then run this again")
    })?;
    println!(
        "{name}: {} asked of portico serve (pid {pid})",
        match what {
            RenewRequest::DryRun => "a dry run (order, validate, discard)",
            RenewRequest::Renew => "a renewal",
            RenewRequest::Revoke => "revocation and replacement",
        }
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(660);
    let mut status = before.status.clone();
    let mut shown = before.progress.len();
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if !crate::cli::reload::alive(pid) {
            let _ = storage.take_renewal_request(name);
            anyhow::bail!(
                "{name}: portico serve (pid {pid}) exited before the {} finished; nothing was changed — see its log, start it again and retry",
                match what {
                    RenewRequest::DryRun => "dry run",
                    RenewRequest::Renew => "renewal",
                    RenewRequest::Revoke => "revocation",
                }
            );
        }
        let Some(r) = storage.record(name) else {
            continue;
        };
        if r.status != status {
            println!("{name}: {}", r.status);
            status = r.status.clone();
        }
        if r.progress.len() < shown {
            shown = 0; // a new order started
        }
        for step in &r.progress[shown..] {
            println!("{name}: {step}");
        }
        shown = r.progress.len();
        if dry_run {
            if let Some(d) = r.dry_run.filter(|d| Some(d) != before.dry_run.as_ref()) {
                if d.starts_with("ok") {
                    println!(
                        "dry run {d}: the CA issued a certificate for {}; nothing was stored",
                        r.domains.join(", ")
                    );
                    return Ok(());
                }
                anyhow::bail!("dry run {d}");
            }
        } else if r.version > before.version && r.status == "ISSUED" {
            println!(
                "{}: {} version {}, not after {} (serving now)",
                if what == RenewRequest::Revoke {
                    "revoked and replaced"
                } else {
                    "renewed"
                },
                storage.live(name).join("fullchain.pem").display(),
                r.version,
                r.not_after.as_deref().unwrap_or("-")
            );
            return Ok(());
        } else if r.last_error.is_some()
            && (r.last_error != before.last_error || r.failures > before.failures)
        {
            anyhow::bail!(
                "{} failed: {}{}",
                if what == RenewRequest::Revoke {
                    "revocation"
                } else {
                    "renewal"
                },
                r.last_error.unwrap_or_default(),
                r.next_attempt
                    .map(|t| format!(" (the server retries at {t})"))
                    .unwrap_or_default()
            );
        }
    }
    anyhow::bail!("no outcome within 11 minutes: see `portico certs show {name}`")
}

/// follows it until it is issued or fails.
/// What `certs request` passes on besides the name and domains.
pub struct CertOptions {
    pub issuer: Option<String>,
    pub challenge: Option<String>,
    pub key_type: Option<String>,
    pub rsa_key_size: Option<u32>,
}

/// `portico certs request NAME --domain …`: asks the running server for a certificate, then
/// follows it until it is issued or fails.
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
