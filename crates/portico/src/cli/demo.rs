//! `portico demo`: the recipe on loopback with nothing to configure.
//!
//! It writes a real `portico.toml` (printed, so it doubles as an example) and a throwaway CA and
//! certificate into a state directory, starts two built-in demo targets, and serves the config
//! through the same path as `portico serve`. It grows as Portico does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::config::Source;
use crate::server::{init_tracing, runtime, Server};
use portico_config::files::write_atomic;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Port of the HTTP listener (redirects to HTTPS).
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// Port of the HTTPS listener.
    #[arg(long, default_value_t = 8443)]
    https_port: u16,
    /// Port of the authoritative DNS server for the zone demo.test (UDP and TCP).
    #[arg(long, default_value_t = 5353)]
    dns_port: u16,
    /// Port of the admin API, `/metrics` and the web console (0: any free port).
    #[arg(long, default_value_t = 9180)]
    admin_port: u16,
    /// Where the demo keeps its config, CA and certificate.
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("portico-demo"));
    std::fs::create_dir_all(&state_dir).with_context(|| {
        format!(
            "cannot create the demo state directory {}",
            state_dir.display()
        )
    })?;
    runtime()?.block_on(demo(args, state_dir))
}

async fn demo(args: DemoArgs, state_dir: PathBuf) -> anyhow::Result<()> {
    say("Portico demo: a load balancer with TLS in front of two demo targets, all on loopback.");
    say("1. Starting two demo targets (what your app servers would be).");
    let t1 = demo_target("target-1").await?;
    let t2 = demo_target("target-2").await?;
    say(&format!("   demo targets on {t1} and {t2}"));

    let ca_path = state_dir.join("ca").join("root.pem");

    let config_path = state_dir.join("portico.toml");
    let text = demo_config(&state_dir, &args, t1, t2);
    write_atomic(&config_path, text.as_bytes(), 0o644)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    say(&format!(
        "2. Writing the config Portico serves: {}",
        config_path.display()
    ));

    let source = Source::read(&config_path)?;
    let config = source.parse()?;
    init_tracing(&config);
    say(&format!(
        "3. Listening: HTTP on 127.0.0.1:{} (redirects to HTTPS), HTTPS on 127.0.0.1:{} (TLS 1.2/1.3, h2).",
        args.http_port, args.https_port
    ));
    let server = Server::start(source, config).await.map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\n  hint: choose other ports with --http-port, --https-port, --dns-port and --admin-port"
        )
    })?;
    say("   Requesting a certificate for demo.test, app.demo.test and localhost from Portico's internal CA,");
    say("   through the certificate manager like any other certificate (stored in certbot's layout).");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while server.lb.certs().get("demo").is_none() {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the demo certificate was not issued within 20 s: see `portico certs list -c {}`",
                config_path.display()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    say(&format!(
        "   Issued and serving: {}",
        state_dir
            .join("certificates/live/demo/fullchain.pem")
            .display()
    ));
    say("4. The target group checks /health on both targets every 2 s; requests alternate between them.");
    say(&format!(
        "5. Hosted zone demo.test on 127.0.0.1:{} (UDP and TCP): app.demo.test A 127.0.0.1, and an ALIAS at the apex answering with the HTTPS listener's address.",
        args.dns_port
    ));
    say("6. The doctor checks app.demo.test the way a CA would (DNS, every nameserver, CAA, HTTP-01 on");
    say("   port 80's stand-in, the HTTPS certificate); the same as `portico doctor` on a real name:");
    let mut opts = portico_doctor::Options::new("app.demo.test");
    opts.resolver = Some(SocketAddr::from(([127, 0, 0, 1], args.dns_port)));
    opts.ns_port = args.dns_port;
    opts.ports = portico_doctor::web::Ports {
        http: args.http_port,
        https: args.https_port,
    };
    opts.roots = Some(ca_path.clone());
    opts.ca = portico_doctor::CaKind::Private;
    opts.hosted_zones = vec!["demo.test".into()];
    let report = portico_doctor::run(&opts).await;
    for line in report.text().lines() {
        println!("   {line}");
    }
    println!();
    // A user who ran `cargo run --release -- demo` has no `portico` on the PATH: name this binary.
    let me = command_name();
    println!("Try:");
    println!("  curl -i http://localhost:{}/", args.http_port);
    println!(
        "  curl --cacert {} https://localhost:{}/",
        ca_path.display(),
        args.https_port
    );
    println!(
        "  curl --cacert {} --resolve app.demo.test:{}:127.0.0.1 https://app.demo.test:{}/",
        ca_path.display(),
        args.https_port,
        args.https_port
    );
    println!(
        "  curl --cacert {} https://localhost:{}/status",
        ca_path.display(),
        args.https_port
    );
    println!("  dig @127.0.0.1 -p {} app.demo.test", args.dns_port);
    println!("  dig @127.0.0.1 -p {} demo.test A", args.dns_port);
    println!("  {me} certs list -c {}", config_path.display());
    println!(
        "  {me} records upsert --zone demo.test --name api --type A --value 127.0.0.2 -c {}",
        config_path.display()
    );
    println!("  {me} targets list -c {}", config_path.display());
    println!(
        "  {me} doctor app.demo.test --private-ca --resolver 127.0.0.1:{d} --dns-port {d} --http-port {} --https-port {} --ca-roots {} -c {}",
        args.http_port,
        args.https_port,
        ca_path.display(),
        config_path.display(),
        d = args.dns_port
    );
    if let Some(admin) = server.admin_addr() {
        println!();
        println!(
            "Console: http://{admin}/  (sign in with the token in {}; the API is under /api/v1, metrics at /metrics)",
            state_dir.join(portico_admin::TOKEN_FILE).display()
        );
    }
    println!();
    println!(
        "Edit {} and run `kill -HUP {}` to reload it. Ctrl-C stops the demo.",
        config_path.display(),
        std::process::id()
    );
    server.run_until_signal().await
}

/// `portico` when that name on the PATH is this binary, else this binary's path.
fn command_name() -> String {
    let Ok(me) = std::env::current_exe().and_then(|p| p.canonicalize()) else {
        return "portico".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .any(|d| d.join("portico").canonicalize().is_ok_and(|p| p == me))
    });
    if on_path {
        "portico".into()
    } else {
        me.display().to_string()
    }
}

fn say(line: &str) {
    println!("{line}");
}

fn demo_config(state_dir: &Path, args: &DemoArgs, t1: SocketAddr, t2: SocketAddr) -> String {
    let (http, https, dns, admin) = (
        args.http_port,
        args.https_port,
        args.dns_port,
        args.admin_port,
    );
    format!(
        r#"# Written by `portico demo`. Serve it yourself with: portico serve -c {config}
state_dir = "{state}"

[log]
level = "info"

[admin]
listen = "127.0.0.1:{admin}"

[dns]
listen = ["127.0.0.1:{dns}"]

[[zone]]
name = "demo.test"
nameservers = ["ns1.demo.test"]

[[zone.record]]
name = "ns1"
type = "A"
ttl = 60
values = ["127.0.0.1"]

[[zone.record]]
name = "app"
type = "A"
ttl = 60
values = ["127.0.0.1"]

[[zone.record]]
name = "@"
type = "ALIAS"
ttl = 60
target = "listener:https"

[[certificate]]
name = "demo"
domains = ["demo.test", "app.demo.test", "localhost", "127.0.0.1"]
issuer = "internal"

[[target_group]]
name = "demo"
algorithm = "round_robin"
targets = ["{t1}", "{t2}"]

[target_group.health_check]
path = "/health"
interval = "2s"
timeout = "1s"
healthy_threshold = 2
unhealthy_threshold = 2
matcher = "200"

[[listener]]
name = "http"
bind = "127.0.0.1:{http}"
protocol = "http"
default_action = {{ redirect = {{ protocol = "https", port = {https}, status = 301 }} }}

[[listener]]
name = "https"
bind = "127.0.0.1:{https}"
protocol = "https"
certificates = ["demo"]
tls_policy = "intermediate"
response_headers = {{ "Strict-Transport-Security" = "max-age=300" }}
access_log = {{ path = "-", format = "combined" }}
default_action = {{ forward = "demo" }}

[[listener.rule]]
priority = 10
path = ["/status"]
action = {{ fixed_response = {{ status = 200, content_type = "application/json", body = '{{"portico":"ok"}}' }} }}
"#,
        config = state_dir.join("portico.toml").display(),
        state = state_dir.display(),
    )
}

/// A tiny app server: answers every path with its own name, `/health` with 200.
async fn demo_target(name: &'static str) -> anyhow::Result<SocketAddr> {
    let socket = TcpListener::bind("127.0.0.1:0").await?;
    let addr = socket.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = socket.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let body = if req.uri().path() == "/health" {
                            "ok\n".to_string()
                        } else {
                            format!(
                                "Hello from {name} via Portico: {} {}\n",
                                req.method(),
                                req.uri()
                            )
                        };
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}
