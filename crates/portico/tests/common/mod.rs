//! What the journeys' test binaries share: a child process killed when the test ends (`Proc`),
//! the `portico` binary run as a user runs it, free ports, Pebble and Portico set up together
//! (`AcmeEnv`), a running server with its admin API (`admin`), a fault-injecting proxy in front of
//! Pebble (`fault_proxy`), BIND as a primary, and the load balancer's test support (`support`).
// Each test binary uses part of this module.
#![allow(dead_code)]

#[path = "../../../portico-lb/tests/support/mod.rs"]
pub mod support;

pub mod admin;
pub mod fault_proxy;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_portico");

/// A child process killed when the test ends, however it ends; its output is collected.
pub struct Proc {
    pub child: Child,
    pub out: Arc<Mutex<String>>,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
        Self::spawn_program(BIN, args, &[("RUST_LOG", "info")])
    }

    /// Any program; fails loudly with an install hint when it is missing.
    pub fn spawn_program(program: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} ({e}); if it is missing, scripts/test installs every peer the tests use: pebble, certbot, bind9, bind9-dnsutils, chromium, chromium-driver, openssl"));
        let out = Arc::new(Mutex::new(String::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut o = out.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        Proc { child, out }
    }

    pub fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, deadline: Duration) -> i32 {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < end,
                "still running after {deadline:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn wait_output(&self, needle: &str) {
        let out = self.out.clone();
        let needle = needle.to_string();
        let what = format!("output containing {needle:?}");
        eventually(&what, Duration::from_secs(20), || {
            let found = out.lock().unwrap().contains(&needle);
            async move { found }
        })
        .await;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A port free for TCP and UDP on 127.0.0.1, for a peer (Pebble, BIND, a Portico process) to
/// bind later. Taken below the kernel's ephemeral range (32768–60999 by default): a port the
/// kernel hands out for `bind(0)` can meanwhile become the local port of some outgoing
/// connection, and then the peer's bind fails with "Address already in use".
/// The URL of the ACME account Portico keeps in `state` (its `acme/accounts/*/account.json`).
#[allow(dead_code)]
pub fn acme_account_uri(state: &Path) -> String {
    let dir = std::fs::read_dir(state.join("acme/accounts"))
        .unwrap()
        .next()
        .expect("an ACME account")
        .unwrap()
        .path();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("account.json")).unwrap()).unwrap();
    v["id"].as_str().unwrap().to_string()
}

pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20000;
    const SPAN: u32 = 12000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Different runs start at different places, so a port a previous run's process still
    // holds (TIME_WAIT, a slow exit) is rarely the first one tried.
    let start = std::process::id() % SPAN;
    for _ in 0..SPAN {
        let port = (LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port between {LOW} and {}", LOW + SPAN);
}

pub fn write_pem_pair(ca: &TestCa, dir: &Path, names: &[&str]) {
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    let (c, k) = ca.issue(dir, "leaf", names);
    std::fs::rename(c, dir.join("certs/fullchain.pem")).unwrap();
    std::fs::rename(k, dir.join("certs/privkey.pem")).unwrap();
}

/// Waits for a file the server writes (an issued certificate), failing with the server's output.
pub async fn wait_file(path: &std::path::Path, deadline: Duration, what: &str, server: &Proc) {
    let end = std::time::Instant::now() + deadline;
    while !path.exists() {
        assert!(
            std::time::Instant::now() < end,
            "{what}:\n{}",
            server.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until something accepts TCP connections on `port`.
pub async fn wait_listening(port: u16) {
    eventually("port open", Duration::from_secs(20), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
}

/// Pebble from Debian with a generated TLS certificate, validating against Portico's listeners
/// and resolving through Portico's DNS; and a Portico config that uses it.
pub struct AcmeEnv {
    pub dir: TempDir,
    pub ca: TestCa,
    pub mgmt: u16,
    pub http: u16,
    pub https: u16,
    pub dns: u16,
    pub acme: u16,
    pub config: std::path::PathBuf,
    pub pebble: Option<Proc>,
    pub pebble_args: Vec<String>,
    pub pebble_env: Vec<(String, String)>,
    pub _backend: Backend,
}

pub async fn acme_env(
    pebble_extra: &str,
    pebble_env: &[(&str, &str)],
    cert_extra: &str,
) -> AcmeEnv {
    acme_env_for(
        pebble_extra,
        pebble_env,
        cert_extra,
        r#"["app.example.test"]"#,
    )
    .await
}

pub async fn acme_env_for(
    pebble_extra: &str,
    pebble_env: &[(&str, &str)],
    cert_extra: &str,
    domains: &str,
) -> AcmeEnv {
    acme_env_full(pebble_extra, pebble_env, cert_extra, domains, "").await
}

pub async fn acme_env_full(
    pebble_extra: &str,
    pebble_env: &[(&str, &str)],
    cert_extra: &str,
    domains: &str,
    acme_extra: &str,
) -> AcmeEnv {
    let dir = TempDir::new("acme");
    let d = dir.path().to_path_buf();
    let ca = TestCa::new();
    ca.issue(&d, "pebble", &["localhost", "127.0.0.1"]);
    std::fs::write(d.join("ca.pem"), pem_of(&ca.der)).unwrap();
    let (acme, mgmt, http, https, dns) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    std::fs::write(
        d.join("pebble.json"),
        format!(
            r#"{{"pebble": {{"listenAddress": "127.0.0.1:{acme}", "managementListenAddress": "127.0.0.1:{mgmt}",
              "certificate": "{d}/pebble.crt", "privateKey": "{d}/pebble.key",
              "httpPort": {http}, "tlsPort": {https}, "ocspResponderURL": "", "externalAccountBindingRequired": false {pebble_extra}}}}}"#,
            d = d.display()
        ),
    )
    .unwrap();
    let dns_addr = format!("127.0.0.1:{dns}");
    // `@DNS@` in the [acme] lines: this Portico's own DNS address (chosen here).
    let acme_extra = acme_extra.replace("@DNS@", &dns_addr);
    let mut env = vec![("PEBBLE_VA_NOSLEEP", "1"), ("PEBBLE_AUTHZREUSE", "0")];
    env.extend_from_slice(pebble_env);
    let pebble_args: Vec<String> = vec![
        "-config".into(),
        d.join("pebble.json").to_str().unwrap().into(),
        "-dnsserver".into(),
        dns_addr.clone(),
        "-strict=false".into(),
    ];
    let pebble_env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let b = Backend::start("app").await;
    let config = d.join("portico.toml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "{state}"
[acme]
directory = "https://localhost:{acme}/dir"
email = "ops@example.test"
ca_roots = ["ca.pem"]
http_port = {http}
tls_port = {https}
{acme_extra}
[dns]
listen = ["{dns_addr}"]
[[zone]]
name = "example.test"
[[zone.record]]
name = "app"
type = "A"
values = ["127.0.0.1"]
[[zone.record]]
name = "elsewhere"
type = "A"
values = ["127.0.0.2"]
[[certificate]]
name = "app"
domains = {domains}
issuer = "acme"
{cert_extra}
[[certificate]]
name = "private"
domains = ["private.internal", "127.0.0.1"]
issuer = "internal"
[[target_group]]
name = "app"
targets = ["{target}"]
[[listener]]
name = "http"
bind = "127.0.0.1:{http}"
protocol = "http"
default_action = {{ redirect = {{ protocol = "https", port = {https} }} }}
[[listener]]
name = "https"
bind = "127.0.0.1:{https}"
protocol = "https"
certificates = ["app", "private"]
default_action = {{ forward = "app" }}
"#,
            state = d.join("state").display(),
            target = b.addr
        ),
    )
    .unwrap();
    let mut env = AcmeEnv {
        dir,
        ca,
        mgmt,
        http,
        https,
        dns,
        acme,
        config,
        pebble: None,
        pebble_args,
        pebble_env,
        _backend: b,
    };
    env.start_pebble().await;
    env
}

impl AcmeEnv {
    pub async fn start_pebble(&mut self) {
        let args: Vec<&str> = self.pebble_args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .pebble_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.pebble = Some(Proc::spawn_program("pebble", &args, &env));
        wait_listening(self.acme).await;
        // Pebble opens its management interface on its own; under load it can come second.
        wait_listening(self.mgmt).await;
    }

    pub fn stop_pebble(&mut self) {
        self.pebble = None;
    }

    pub fn live(&self) -> std::path::PathBuf {
        self.dir.path().join("state/certificates/live")
    }

    /// A TLS client trusting Pebble's root (from its management interface).
    pub async fn pebble_client(&self) -> Arc<rustls::ClientConfig> {
        let root = send_tls(
            format!("127.0.0.1:{}", self.mgmt).parse().unwrap(),
            "localhost",
            self.ca.client(
                &[b"http/1.1"],
                &[&rustls::version::TLS13, &rustls::version::TLS12],
            ),
            request("GET", "localhost", "/roots/0"),
        )
        .await
        .unwrap()
        .body;
        client_trusting(root.as_bytes())
    }

    pub fn https(&self) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.https).parse().unwrap()
    }

    /// Starts `portico serve`, waits until the "app" certificate is issued and served; returns
    /// the server and a client trusting Pebble's root.
    /// A Portico serving only the zone example.test on this env's DNS port, with `name` A
    /// 127.0.0.1: where Pebble (and a client's self-check) resolve names when no full Portico of
    /// the env runs. Returns once it listens.
    pub async fn dns_only(&self, name: &str) -> Proc {
        let d = self.dir.path();
        let config = d.join("dns.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\n[dns]\nlisten = [\"127.0.0.1:{}\"]\n[[zone]]\nname = \"example.test\"\n[[zone.record]]\nname = \"{name}\"\ntype = \"A\"\nvalues = [\"127.0.0.1\"]\n",
                d.join("dns-state").display(),
                self.dns
            ),
        )
        .unwrap();
        let dns = Proc::spawn(&["serve", "-c", config.to_str().unwrap()]);
        wait_listening(self.dns).await;
        dns
    }

    pub async fn serve_until_issued(&self) -> (Proc, Arc<rustls::ClientConfig>) {
        let portico = Proc::spawn(&["serve", "-c", self.config.to_str().unwrap()]);
        wait_file(
            &self.live().join("app/fullchain.pem"),
            Duration::from_secs(90),
            "not issued in 90 s",
            &portico,
        )
        .await;
        let client = self.pebble_client().await;
        self.wait_served(&client).await;
        (portico, client)
    }

    pub async fn wait_served(&self, client: &Arc<rustls::ClientConfig>) {
        self.wait_served_for(client, "app.example.test").await;
    }

    /// Waits until the HTTPS listener answers 200 for `host` with a chain `client` trusts.
    pub async fn wait_served_for(&self, client: &Arc<rustls::ClientConfig>, host: &'static str) {
        let a = self.https();
        eventually(
            &format!("HTTPS serves the issued certificate for {host}"),
            Duration::from_secs(20),
            || {
                let client = client.clone();
                async move {
                    send_tls(a, host, client, request("GET", host, "/"))
                        .await
                        .is_ok_and(|r| r.status == 200)
                }
            },
        )
        .await;
    }
}

/// The leaf certificate a full handshake gets (no session resumption: a resumed TLS 1.3 session
/// reports the certificate of the session it resumes).
pub async fn served_leaf(
    a: std::net::SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> Option<Vec<u8>> {
    let mut fresh = (*client).clone();
    fresh.resumption = rustls::client::Resumption::disabled();
    let tls = tls_connect(a, "app.example.test", Arc::new(fresh))
        .await
        .ok()?;
    tls.get_ref().1.peer_certificates().map(|c| c[0].to_vec())
}

pub fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

pub fn client_trusting(pem: &[u8]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// BIND (`named`, Debian's bind9) in the foreground with `conf`, listening on `port`.
pub async fn start_bind(conf: &Path, port: u16) -> Proc {
    let named = if Path::new("/usr/sbin/named").exists() {
        "/usr/sbin/named"
    } else {
        "named"
    };
    let bind = Proc::spawn_program(named, &["-g", "-c", conf.to_str().unwrap(), "-n", "1"], &[]);
    wait_listening(port).await;
    bind
}

/// Starts the fault-injecting proxy (test double) in front of `env`'s Pebble and points the
/// config's ACME directory at it.
pub async fn through_fault_proxy(env: &AcmeEnv) -> fault_proxy::FaultProxy {
    let d = env.dir.path();
    let proxy = fault_proxy::FaultProxy::start(
        &d.join("pebble.crt"),
        &d.join("pebble.key"),
        format!("127.0.0.1:{}", env.acme).parse().unwrap(),
        env.ca.client(&[b"http/1.1"], &[&rustls::version::TLS13]),
    )
    .await;
    let text = std::fs::read_to_string(&env.config).unwrap();
    let direct = format!("https://localhost:{}/dir", env.acme);
    assert!(text.contains(&direct));
    std::fs::write(
        &env.config,
        text.replace(&direct, &format!("https://localhost:{}/dir", proxy.port)),
    )
    .unwrap();
    proxy
}
