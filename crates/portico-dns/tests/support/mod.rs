//! Shared DNS test setup: hosted zones from a TOML string served on a free loopback port, and
//! `dig`/`nsupdate` from bind9-dnsutils as the clients. Child processes are killed on drop.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portico_dns::answer::ListenerAddrs;
use portico_dns::config::DnsSections;
use portico_dns::handler::Ctx;
use portico_dns::server::{DnsServer, Options};
use portico_dns::zones::HostedZones;

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "portico-dns-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A listener named "https" on 192.0.2.80 and 2001:db8::80, for ALIAS tests.
pub struct TestListeners;

impl ListenerAddrs for TestListeners {
    fn addrs(&self, listener: &str, _healthy_only: bool) -> Vec<IpAddr> {
        if listener == "https" {
            vec![
                "192.0.2.80".parse().unwrap(),
                "2001:db8::80".parse().unwrap(),
            ]
        } else {
            Vec::new()
        }
    }
}

pub struct Dns {
    pub zones: Arc<HostedZones>,
    pub server: DnsServer,
    pub addr: SocketAddr,
}

/// Serves the `[[zone]]`/`[[tsig_key]]` sections in `toml_text` on 127.0.0.1 (a free port).
pub async fn serve(toml_text: &str, dir: &Path) -> Dns {
    serve_on(
        toml_text,
        dir,
        "127.0.0.1:0".parse().unwrap(),
        Options::default(),
    )
    .await
}

pub async fn serve_on(toml_text: &str, dir: &Path, addr: SocketAddr, opts: Options) -> Dns {
    let sections: DnsSections = toml::from_str(toml_text).expect("test config parses");
    let zones = HostedZones::new(Some(dir.join("state")));
    zones.load(&sections, dir).await.expect("zones load");
    let ctx = Arc::new(Ctx {
        zones: zones.clone(),
        listeners: Arc::new(TestListeners),
    });
    let server = DnsServer::start(ctx, &[addr], opts).await.unwrap();
    let addr = server.addrs[0];
    Dns {
        zones,
        server,
        addr,
    }
}

/// Runs a command from a Debian package, failing loudly with an install hint when it is absent.
pub async fn run(
    program: &str,
    package: &str,
    args: &[String],
    stdin: Option<&str>,
) -> (i32, String) {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run {program} ({e}): install it with `apt-get install {package}` (scripts/test does this)")
    });
    if let Some(input) = stdin {
        use tokio::io::AsyncWriteExt;
        let mut w = child.stdin.take().unwrap();
        w.write_all(input.as_bytes()).await.unwrap();
        drop(w);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish in 30 s"))
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `dig @addr -p port ARGS` with short timeouts; returns the full output.
pub async fn dig(addr: SocketAddr, args: &str) -> String {
    let mut a = vec![
        format!("@{}", addr.ip()),
        "-p".into(),
        addr.port().to_string(),
        "+time=2".into(),
        "+tries=2".into(),
    ];
    a.extend(args.split_whitespace().map(String::from));
    run("dig", "bind9-dnsutils", &a, None).await.1
}

/// The status (NOERROR, NXDOMAIN, …) from dig's header line.
pub fn status(out: &str) -> String {
    out.lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no status in dig output:\n{out}"))
}

/// The flags from dig's header line (`qr aa rd`).
pub fn flags(out: &str) -> Vec<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(";; flags: "))
        .map(|l| {
            l.split(';')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Records of one section of dig's output (`ANSWER`, `AUTHORITY`, `ADDITIONAL`), one per line.
pub fn section(out: &str, name: &str) -> Vec<String> {
    let header = format!(";; {name} SECTION:");
    let mut lines = out.lines().skip_while(|l| *l != header);
    lines.next();
    lines
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
