//! `portico proxy --domain D --to ADDR`: what `certbot --nginx` plus an nginx site do, in one
//! command. It writes a real config (printed, so it can grow into a `portico serve` setup) and
//! serves it through the same path as `portico serve`: HTTP redirecting to HTTPS, a certificate
//! (ACME HTTP-01 by default, or the internal CA), a health-checked target, renewal.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::config::Source;
use crate::server::{init_tracing, runtime, Server};
use portico_config::files::write_atomic;

#[derive(clap::Args)]
pub struct ProxyArgs {
    /// The name to serve (repeat for more names on the same certificate).
    #[arg(long, required = true)]
    pub domain: Vec<String>,
    /// The app server to forward to, e.g. 127.0.0.1:8000.
    #[arg(long)]
    pub to: String,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: String,
    /// HTTP port (redirects to HTTPS; answers HTTP-01).
    #[arg(long, default_value_t = 80)]
    pub http_port: u16,
    /// HTTPS port.
    #[arg(long, default_value_t = 443)]
    pub https_port: u16,
    /// `acme` (a public or private ACME CA) or `internal` (Portico's own CA, for private names).
    #[arg(long, default_value = "acme")]
    pub issuer: String,
    /// ACME directory: `letsencrypt`, `letsencrypt-staging`, or a URL.
    #[arg(long, default_value = "letsencrypt")]
    pub acme_dir: String,
    /// Contact email for the ACME account.
    #[arg(long)]
    pub email: Option<String>,
    /// Extra root (PEM) trusted for the ACME server's own HTTPS (Pebble, a private CA).
    #[arg(long, value_name = "PEM")]
    pub ca_roots: Option<PathBuf>,
    /// DNS resolver for the pre-order self-check (default: the system's).
    #[arg(long, value_name = "ADDR")]
    pub resolver: Option<String>,
    /// Health check path on the target (any HTTP answer below 500 counts as healthy).
    #[arg(long, default_value = "/")]
    pub health_path: String,
    /// Where the config, account, certificates and state are kept.
    #[arg(long, default_value = "/var/lib/portico")]
    pub state_dir: PathBuf,
}

pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.state_dir).with_context(|| {
        format!(
            "cannot create the state directory {} (choose another with --state-dir)",
            args.state_dir.display()
        )
    })?;
    runtime()?.block_on(proxy(args))
}

fn config_text(a: &ProxyArgs, state_dir: &std::path::Path) -> anyhow::Result<String> {
    let q = |s: &str| toml_edit::Value::from(s).to_string();
    let name = a.domain[0].trim_start_matches("*.").to_string();
    let domains = a.domain.iter().map(|d| q(d)).collect::<Vec<_>>().join(", ");
    let bind = |port: u16| {
        if a.bind.contains(':') {
            format!("[{}]:{port}", a.bind.trim_matches(['[', ']']))
        } else {
            format!("{}:{port}", a.bind)
        }
    };
    let acme = match a.issuer.as_str() {
        "acme" => {
            let mut t = format!(
                "[acme]\ndirectory = {}\nhttp_port = {}\n",
                q(&a.acme_dir),
                a.http_port
            );
            if let Some(e) = &a.email {
                t.push_str(&format!("email = {}\n", q(e)));
            }
            if let Some(r) = &a.ca_roots {
                let abs = std::fs::canonicalize(r)
                    .with_context(|| format!("--ca-roots {}", r.display()))?;
                t.push_str(&format!("ca_roots = [{}]\n", q(&abs.display().to_string())));
            }
            if let Some(r) = &a.resolver {
                t.push_str(&format!("resolver = {}\n", q(r)));
            }
            t
        }
        "internal" => String::new(),
        other => anyhow::bail!("--issuer {other:?}: expected \"acme\" or \"internal\""),
    };
    Ok(format!(
        r#"# Written by `portico proxy`. Serve it yourself with: portico serve -c {config}
state_dir = {state}

{acme}
[[certificate]]
name = {name}
domains = [{domains}]
issuer = {issuer}

[[target_group]]
name = "app"
targets = [{to}]

[target_group.health_check]
path = {health}
interval = "10s"
timeout = "5s"
healthy_threshold = 2
unhealthy_threshold = 2
matcher = "200-499"

[[listener]]
name = "http"
bind = {http}
protocol = "http"
default_action = {{ redirect = {{ protocol = "https", port = {https_port}, status = 301 }} }}

[[listener]]
name = "https"
bind = {https}
protocol = "https"
certificates = [{name}]
default_action = {{ forward = "app" }}
"#,
        config = state_dir.join("proxy.toml").display(),
        state = q(&state_dir.display().to_string()),
        name = q(&name),
        issuer = q(&a.issuer),
        to = q(&a.to),
        health = q(&a.health_path),
        http = q(&bind(a.http_port)),
        https = q(&bind(a.https_port)),
        https_port = a.https_port,
    ))
}

async fn proxy(args: ProxyArgs) -> anyhow::Result<()> {
    let state_dir = std::fs::canonicalize(&args.state_dir)?;
    let path = state_dir.join("proxy.toml");
    let text = config_text(&args, &state_dir)?;
    write_atomic(&path, text.as_bytes(), 0o644)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let source = Source::read(&path)?;
    let config = source.parse()?;
    init_tracing(&config);
    let name = args.domain[0].trim_start_matches("*.").to_string();
    println!("portico proxy: https://{name}/ -> http://{}", args.to);
    println!("  config: {}", path.display());
    let server = Server::start(source, config).await.map_err(|e| {
        anyhow::anyhow!("{e:#}\n  hint: choose other ports with --http-port and --https-port, or another address with --bind")
    })?;
    println!(
        "  listening: HTTP on {}:{} (redirects to HTTPS, answers HTTP-01), HTTPS on {}:{}",
        args.bind, args.http_port, args.bind, args.https_port
    );
    let ca = if args.issuer == "internal" {
        "Portico's internal CA".to_string()
    } else {
        format!("{} (http-01)", args.acme_dir)
    };
    println!(
        "  requesting a certificate for {} from {ca}",
        args.domain.join(", ")
    );
    let storage = portico_certs::storage::Storage::new(&state_dir);
    let mut last_status = String::new();
    let mut last_error = String::new();
    while server.lb.certs().get(&name).is_none() {
        if let Some(r) = storage.record(&name) {
            if r.status != last_status {
                println!("  certificate: {}", r.status);
                last_status = r.status.clone();
            }
            if let Some(e) = r.last_error.filter(|e| *e != last_error) {
                println!("  failed: {e}");
                if let Some(t) = &r.next_attempt {
                    println!("  retrying at {t} (`portico doctor {name}` explains what a CA sees)");
                }
                last_error = e;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "  issued and serving: {} (renewed automatically)",
        storage.live(&name).join("fullchain.pem").display()
    );
    println!(
        "ready: https://{name}:{}/ forwards to {}. Ctrl-C stops.",
        args.https_port, args.to
    );
    server.run_until_signal().await
}
