//! The `portico` binary as users run it: check with located errors, serve with SIGHUP and
//! `portico reload`, SIGTERM draining, the demo, and the commands still to come.

#[path = "../../portico-lb/tests/support/mod.rs"]
mod support;

mod admin;
#[cfg(feature = "etcd")]
mod cluster;
mod fault_proxy;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_portico");

/// A child process killed when the test ends, however it ends; its output is collected.
struct Proc {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        Self::spawn_program(BIN, args, &[("RUST_LOG", "info")])
    }

    /// Any program; fails loudly with an install hint when it is missing.
    fn spawn_program(program: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} ({e}); if it is missing, scripts/test installs every peer the tests use: pebble, bind9, bind9-dnsutils, chromium, chromium-driver, openssl"));
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

    fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the process to exit; returns its exit code.
    fn wait_exit(&mut self, deadline: Duration) -> i32 {
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

    async fn wait_output(&self, needle: &str) {
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

fn run(args: &[&str]) -> (i32, String) {
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
fn free_port() -> u16 {
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

fn write_pem_pair(ca: &TestCa, dir: &Path, names: &[&str]) {
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    let (c, k) = ca.issue(dir, "leaf", names);
    std::fs::rename(c, dir.join("certs/fullchain.pem")).unwrap();
    std::fs::rename(k, dir.join("certs/privkey.pem")).unwrap();
}

#[test]
fn the_example_config_is_valid() {
    let dir = TempDir::new("example");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/portico.toml");
    std::fs::copy(&example, dir.path().join("portico.toml")).unwrap();
    write_pem_pair(&TestCa::new(), dir.path(), &["api.example.com"]);
    let (code, out) = run(&[
        "check",
        "-c",
        dir.path().join("portico.toml").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok (2 listeners, 2 target groups, 2 certificates, 1 zones)"),
        "{out}"
    );
}

#[test]
fn check_errors_name_file_line_column_key_and_hint() {
    let dir = TempDir::new("checkerr");
    let file = dir.path().join("portico.toml");
    std::fs::write(
        &file,
        "[[target_group]]\nname = \"api\"\ntargets = [\"127.0.0.1:3000\"]\n\n[[listener]]\nname = \"http\"\nbind = \"127.0.0.1:8080\"\nprotocol = \"http\"\ndefault_action = { forward = \"apii\" }\n",
    )
    .unwrap();
    let (code, out) = run(&["check", "-c", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("portico.toml:9:20: listener[0].default_action.forward: no [[target_group]] named \"apii\""),
        "{out}"
    );
    assert!(
        out.contains("9 | default_action = { forward = \"apii\" }"),
        "{out}"
    );
    assert!(
        out.contains("hint: known target groups: [\"api\"]"),
        "{out}"
    );

    std::fs::write(
        &file,
        "[[listener]]\nname = \"x\"\nbnid = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let (code, out) = run(&["check", "-c", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        out.contains("portico.toml:3:1: unknown field `bnid`"),
        "{out}"
    );

    std::fs::write(&file, "[[listener]]\nname = \"x\"\nbind = \"127.0.0.1:1\"\nprotocol = \"http\"\nidle_timeout = \"soon\"\ndefault_action = { forward = \"g\" }\n").unwrap();
    let (code, out) = run(&["check", "-c", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        out.contains("portico.toml:5:16: invalid duration \"soon\""),
        "{out}"
    );

    let (code, out) = run(&[
        "check",
        "-c",
        dir.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        out.contains("missing.toml: cannot read the config file"),
        "{out}"
    );
}

#[test]
fn api_commands_without_a_server_say_so_and_usage_errors_exit_2() {
    let dir = TempDir::new("no-admin");
    let config = dir.path().join("portico.toml");
    std::fs::write(&config, "state_dir = \"state\"\n").unwrap();
    let (code, out) = run(&[
        "records",
        "list",
        "--zone",
        "example.com",
        "-c",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("no [admin] section"), "{out}");
    let (code, out) = run(&[
        "targets",
        "list",
        "--admin",
        &format!("http://127.0.0.1:{}", free_port()),
        "--token",
        "t",
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("is `portico serve` running?"), "{out}");
    let (code, _) = run(&["records", "list"]);
    assert_eq!(code, 2, "--zone is required");
    let (code, _) = run(&["serve", "--no-such-flag"]);
    assert_eq!(code, 2);
    let (code, out) = run(&["proxy", "--to", "127.0.0.1:1"]);
    assert_eq!(code, 2, "--domain is required: {out}");
    let (code, out) = run(&["doctor", "a.example.com", "--resolver", "nonsense"]);
    assert_eq!(code, 1);
    assert!(out.contains("--resolver nonsense"), "{out}");
}

fn serve_config(dir: &Path, port: u16, target: std::net::SocketAddr, body: &str) -> String {
    format!(
        r#"state_dir = "{state}"
shutdown_timeout = "10s"
[[target_group]]
name = "g"
targets = ["{target}"]
[[listener]]
name = "http"
bind = "127.0.0.1:{port}"
protocol = "http"
access_log = {{ path = "{log}", format = "json" }}
default_action = {{ forward = "g" }}
[[listener.rule]]
priority = 1
path = ["/version"]
action = {{ fixed_response = {{ status = 200, body = "{body}" }} }}
"#,
        state = dir.join("state").display(),
        log = dir.join("access.log").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reloads_on_sighup_and_reload_and_drains_on_sigterm() {
    let dir = TempDir::new("serve");
    let b = Backend::start("b").await;
    let port = free_port();
    let file = dir.path().join("portico.toml");
    std::fs::write(&file, serve_config(dir.path(), port, b.addr, "v1")).unwrap();
    let mut p = Proc::spawn(&["serve", "-c", file.to_str().unwrap()]);
    let l: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually("serving", Duration::from_secs(20), || async {
        send(l, request("GET", "x", "/version"))
            .await
            .is_ok_and(|r| r.body == "v1")
    })
    .await;

    // An invalid file is refused; the old config keeps serving.
    std::fs::write(
        &file,
        serve_config(dir.path(), port, b.addr, "v2")
            .replace("forward = \"g\"", "forward = \"nope\""),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    p.wait_output("reload refused").await;
    assert!(
        !p.output().contains('\u{1b}'),
        "no colour codes in logs written to a pipe: {}",
        p.output()
    );
    assert!(
        p.output()
            .contains("no [[target_group]] named \\\"nope\\\"")
            || p.output().contains("no [[target_group]] named \"nope\""),
        "{}",
        p.output()
    );
    assert_eq!(get(l, "x", "/version").await.body, "v1");

    // `portico reload` validates first and refuses an invalid file itself.
    let (code, out) = run(&["reload", "-c", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");

    // A valid file through `portico reload` (the pid file in state_dir) is applied.
    std::fs::write(&file, serve_config(dir.path(), port, b.addr, "v3")).unwrap();
    let (code, out) = run(&["reload", "-c", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    eventually("v3 served", Duration::from_secs(10), || async {
        get(l, "x", "/version").await.body == "v3"
    })
    .await;

    // SIGTERM with a request in flight: it completes, then the process exits 0.
    let in_flight = tokio::spawn(async move { get(l, "x", "/slow?ms=1000").await });
    eventually("request in flight", Duration::from_secs(5), || async {
        b.started.load(std::sync::atomic::Ordering::Relaxed) >= 1
    })
    .await;
    assert_eq!(
        b.hits.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "still in flight"
    );
    p.signal(libc::SIGTERM);
    let r = in_flight.await.unwrap();
    assert_eq!((r.status, r.backend().as_str()), (200, "b"));
    let code = tokio::task::spawn_blocking(move || {
        let c = p.wait_exit(Duration::from_secs(15));
        (c, p.output())
    })
    .await
    .unwrap();
    assert_eq!(code.0, 0, "{}", code.1);
    assert!(!dir.path().join("state/portico.pid").exists());

    let log = std::fs::read_to_string(dir.path().join("access.log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("/slow"))
        .expect("access log line");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["listener"], "http");
    assert_eq!(v["target"], b.addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_https_in_front_of_its_targets() {
    let dir = TempDir::new("demo");
    let (http, https, dns) = (free_port(), free_port(), free_port());
    let p = Proc::spawn(&[
        "demo",
        "--http-port",
        &http.to_string(),
        "--https-port",
        &https.to_string(),
        "--dns-port",
        &dns.to_string(),
        "--admin-port",
        "0",
        "--state-dir",
        dir.path().to_str().unwrap(),
    ]);
    p.wait_output("Console: http://").await;
    let admin: std::net::SocketAddr = std::fs::read_to_string(dir.path().join("admin.url"))
        .unwrap()
        .trim()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let (s, zones) = admin::call(admin, Some(token.trim()), "GET", "/api/v1/zones", None).await;
    assert_eq!(s, 200);
    assert_eq!(zones[0]["name"], "demo.test.", "{zones}");
    assert!(
        p.output().contains("Issued and serving:"),
        "the validation step is shown: {}",
        p.output()
    );
    // The "Try:" lines name this binary, not a `portico` the user may not have on the PATH.
    let me = std::path::Path::new(env!("CARGO_BIN_EXE_portico"))
        .canonicalize()
        .unwrap();
    assert!(
        p.output()
            .contains(&format!("  {} certs list -c ", me.display())),
        "{}",
        p.output()
    );
    // The doctor's report for app.demo.test, all OK.
    assert!(
        p.output().contains("portico doctor app.demo.test")
            && p.output().contains("result: 0 fatal, 0 error, 0 warning"),
        "{}",
        p.output()
    );
    let r = get(
        format!("127.0.0.1:{http}").parse().unwrap(),
        "localhost",
        "/x",
    )
    .await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.headers["location"],
        format!("https://localhost:{https}/x").as_str()
    );

    let ca_pem = std::fs::read(dir.path().join("ca/root.pem")).unwrap();
    use rustls::pki_types::pem::PemObject;
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(&ca_pem).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let client = Arc::new(client);
    let a = format!("127.0.0.1:{https}").parse().unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        let r = send_tls(
            a,
            "app.demo.test",
            client.clone(),
            request("GET", "app.demo.test", "/"),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        seen.insert(r.body.split(" via").next().unwrap().to_string());
    }
    assert_eq!(seen.len(), 2, "both demo targets answer: {seen:?}");

    // The hosted zone answers, the apex ALIAS with the HTTPS listener's address.
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &dns.to_string(),
            "+short",
            "+time=2",
            "demo.test",
            "A",
        ])
        .output()
        .expect("dig (apt-get install bind9-dnsutils)");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "127.0.0.1");

    // curl as the demo tells users to run it.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(dir.path().join("ca/root.pem"))
        .arg("--resolve")
        .arg(format!("app.demo.test:{https}:127.0.0.1"))
        .arg(format!("https://app.demo.test:{https}/"))
        .output()
        .expect("curl (apt-get install curl)");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("via Portico"),
        "{body}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The DNS port in use: named, with the flag to change it.
    let (code, out) = run(&[
        "demo",
        "--http-port",
        &free_port().to_string(),
        "--https-port",
        &free_port().to_string(),
        "--dns-port",
        &dns.to_string(),
        "--state-dir",
        dir.path().join("third").to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("127.0.0.1:{dns}")), "{out}");
    assert!(out.contains("--dns-port"), "{out}");

    // A second demo on the same ports fails clearly, naming the port.
    let (code, out) = run(&[
        "demo",
        "--http-port",
        &http.to_string(),
        "--https-port",
        &https.to_string(),
        "--dns-port",
        &dns.to_string(),
        "--state-dir",
        dir.path().join("second").to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("cannot listen on 127.0.0.1:{http}")),
        "{out}"
    );
    assert!(out.contains("--http-port"), "{out}");
    drop(p);
}

#[test]
fn zones_list_and_export_read_the_state_without_writing() {
    let dir = TempDir::new("zonescli");
    let file = dir.path().join("portico.toml");
    std::fs::write(
        &file,
        format!(
            "state_dir = \"{}\"\n[[zone]]\nname = \"example.test\"\n[[zone.record]]\nname = \"www\"\ntype = \"TXT\"\nvalues = [\"hello world\"]\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let (code, out) = run(&["zones", "list", "-c", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("example.test.") && out.contains(" 1 "),
        "{out}"
    );
    // The SERIAL and RECORDS columns end where their headings end.
    let head = out.lines().find(|l| l.starts_with("ZONE")).unwrap();
    let row = out
        .lines()
        .find(|l| l.starts_with("example.test."))
        .unwrap();
    assert_eq!(
        head.find("SERIAL").map(|i| i + 6),
        row.find(" 1 ").map(|i| i + 2),
        "{out}"
    );
    assert_eq!(head.len(), row.len(), "{out}");
    let (code, out) = run(&[
        "zones",
        "export",
        "example.test",
        "-c",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("$ORIGIN example.test.\n"), "{out}");
    assert!(out.contains("www\t300\tIN\tTXT\t\"hello world\""), "{out}");
    assert!(
        !dir.path().join("state").exists(),
        "read-only: nothing written"
    );
    let (code, out) = run(&["zones", "export", "nope.test", "-c", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("no hosted zone"), "{out}");
}

/// Waits for a file the server writes (an issued certificate), failing with the server's output.
async fn wait_file(path: &std::path::Path, deadline: Duration, what: &str, server: &Proc) {
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
async fn wait_listening(port: u16) {
    eventually("port open", Duration::from_secs(20), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
}

/// Pebble from Debian with a generated TLS certificate, validating against Portico's listeners
/// and resolving through Portico's DNS; and a Portico config that uses it.
struct AcmeEnv {
    dir: TempDir,
    ca: TestCa,
    mgmt: u16,
    http: u16,
    https: u16,
    dns: u16,
    acme: u16,
    config: std::path::PathBuf,
    pebble: Option<Proc>,
    pebble_args: Vec<String>,
    pebble_env: Vec<(String, String)>,
    _backend: Backend,
}

async fn acme_env(pebble_extra: &str, pebble_env: &[(&str, &str)], cert_extra: &str) -> AcmeEnv {
    acme_env_for(
        pebble_extra,
        pebble_env,
        cert_extra,
        r#"["app.example.test"]"#,
    )
    .await
}

async fn acme_env_for(
    pebble_extra: &str,
    pebble_env: &[(&str, &str)],
    cert_extra: &str,
    domains: &str,
) -> AcmeEnv {
    acme_env_full(pebble_extra, pebble_env, cert_extra, domains, "").await
}

async fn acme_env_full(
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
    async fn start_pebble(&mut self) {
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

    fn stop_pebble(&mut self) {
        self.pebble = None;
    }

    fn live(&self) -> std::path::PathBuf {
        self.dir.path().join("state/certificates/live")
    }

    /// A TLS client trusting Pebble's root (from its management interface).
    async fn pebble_client(&self) -> Arc<rustls::ClientConfig> {
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

    fn https(&self) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.https).parse().unwrap()
    }

    /// Starts `portico serve`, waits until the "app" certificate is issued and served; returns
    /// the server and a client trusting Pebble's root.
    async fn serve_until_issued(&self) -> (Proc, Arc<rustls::ClientConfig>) {
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

    async fn wait_served(&self, client: &Arc<rustls::ClientConfig>) {
        self.wait_served_for(client, "app.example.test").await;
    }

    /// Waits until the HTTPS listener answers 200 for `host` with a chain `client` trusts.
    async fn wait_served_for(&self, client: &Arc<rustls::ClientConfig>, host: &'static str) {
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
async fn served_leaf(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_http01_against_pebble_and_internal_issuer() {
    // RSA through the ACME path (our own CSR, finalize_csr); the internal one stays ECDSA.
    let env = acme_env(
        "",
        &[("PEBBLE_WFE_NONCEREJECT", "0")],
        "key_type = \"rsa\"\nrsa_key_size = 3072",
    )
    .await;
    let d = env.dir.path();
    let config = env.config.clone();
    let mut portico = Proc::spawn(&["serve", "-c", config.to_str().unwrap()]);
    let live = env.live();
    eventually(
        "Pebble issued the ACME certificate",
        Duration::from_secs(90),
        || {
            let f = live.join("app/fullchain.pem");
            async move { f.exists() }
        },
    )
    .await;
    eventually(
        "the internal certificate is issued",
        Duration::from_secs(20),
        || {
            let f = live.join("private/fullchain.pem");
            async move { f.exists() }
        },
    )
    .await;

    let client = env.pebble_client().await;
    env.wait_served(&client).await;
    let a = env.https();
    let served = send_tls(
        a,
        "app.example.test",
        client.clone(),
        request("GET", "app.example.test", "/"),
    )
    .await
    .unwrap();
    assert_eq!(served.backend(), "app");
    // key_type = "rsa": the served leaf carries a 3072-bit RSA key; the private key file is RSA.
    let leaf = std::fs::read_to_string(live.join("app/cert.pem")).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(leaf.as_bytes())?;
            c.wait_with_output()
        })
        .expect("openssl is missing: apt-get install openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rsaEncryption") && text.contains("3072 bit"),
        "{text}"
    );
    let internal_leaf = std::fs::read_to_string(live.join("private/cert.pem")).unwrap();
    assert!(!internal_leaf.is_empty());

    // The internal issuer's certificate chains to the internal root.
    let internal = client_trusting(&std::fs::read(d.join("state/ca/root.pem")).unwrap());
    let r = send_tls(
        a,
        "private.internal",
        internal,
        request("GET", "private.internal", "/"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);

    // certbot's layout: numbered archive files, live links, private keys 0600.
    use std::os::unix::fs::PermissionsExt;
    assert!(d
        .join("state/certificates/archive/app/fullchain1.pem")
        .exists());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&live.join("app/privkey.pem")), 0o600);
    assert_eq!(mode(&d.join("state/ca/root.key")), 0o600);
    let account = std::fs::read_dir(d.join("state/acme/accounts"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(mode(&account.join("account.json")), 0o600);

    let (code, out) = run(&["certs", "list", "-c", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("app ") && l.contains("ISSUED") && l.contains("acme")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("private ") && l.contains("ISSUED") && l.contains("internal")),
        "{out}"
    );
    let (code, out) = run(&["certs", "trust", "-c", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("state/ca/root.pem"), "{out}");
    let (code, out) = run(&["certs", "show", "app", "-c", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("status:      ISSUED") && out.contains("live/app/fullchain.pem"),
        "{out}"
    );
    let (code, out) = run(&["certs", "show", "nope", "-c", config.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("no certificate \"nope\""), "{out}");

    // Restart: the stored certificate is served at once and not ordered again.
    portico.signal(libc::SIGTERM);
    let code = tokio::task::spawn_blocking(move || portico.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(code, 0);
    let again = Proc::spawn(&["serve", "-c", config.to_str().unwrap()]);
    env.wait_served(&client).await;
    again.wait_output("portico serving").await;
    assert!(
        !again.output().contains("obtaining certificate"),
        "{}",
        again.output()
    );
    assert!(!d
        .join("state/certificates/archive/app/fullchain2.pem")
        .exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_renew_under_load_with_hooks_and_bad_nonces() {
    let hook_log = std::env::temp_dir().join(format!("portico-hook-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&hook_log);
    // 20-second certificates (renewed at half), and Pebble rejecting 20 % of nonces.
    let env = acme_env(
        r#", "certificateValidityPeriod": 20"#,
        &[("PEBBLE_WFE_NONCEREJECT", "20")],
        &format!(
            "deploy_hook = 'echo \"$RENEWED_LINEAGE|$RENEWED_DOMAINS\" >> {}'",
            hook_log.display()
        ),
    )
    .await;
    let portico = Proc::spawn(&["serve", "-c", env.config.to_str().unwrap()]);
    let archive = env.dir.path().join("state/certificates/archive/app");
    eventually("first certificate", Duration::from_secs(90), || {
        let f = archive.join("fullchain1.pem");
        async move { f.exists() }
    })
    .await;
    let client = env.pebble_client().await;
    env.wait_served(&client).await;
    let a = env.https();
    let first = served_leaf(a, client.clone()).await.unwrap();

    // A client loop over fresh TLS connections while the certificate is renewed under it.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (
        Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    );
    let looping = {
        let (stop, ok, failed, client) = (stop.clone(), ok.clone(), failed.clone(), client.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match send_tls(
                    a,
                    "app.example.test",
                    client.clone(),
                    request("GET", "app.example.test", "/"),
                )
                .await
                {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    }
                    _ => failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                };
            }
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while served_leaf(a, client.clone())
        .await
        .is_none_or(|leaf| leaf == first)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the served certificate was not renewed within 90 s:\n{}",
            portico.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    looping.await.unwrap();
    assert!(archive.join("fullchain2.pem").exists());
    assert!(ok.load(std::sync::atomic::Ordering::Relaxed) > 10);
    assert_eq!(
        failed.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "requests failed during renewal"
    );
    let hooks = std::fs::read_to_string(&hook_log).unwrap_or_default();
    let _ = std::fs::remove_file(&hook_log);
    assert!(
        hooks.lines().count() >= 2,
        "deploy hook after issuance and renewal: {hooks}"
    );
    assert!(
        hooks
            .lines()
            .all(|l| l.ends_with("certificates/live/app|app.example.test")),
        "{hooks}"
    );
}

fn pem_of(der: &[u8]) -> String {
    use base64_engine::encode;
    let b64 = encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Minimal standard base64, for writing a test CA as PEM.
mod base64_engine {
    pub fn encode(data: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in data.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

fn client_trusting(pem: &[u8]) -> Arc<rustls::ClientConfig> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_dns01_with_a_wildcard_through_portico_zones() {
    // The resolver the self-check asks about the zone's delegation: Portico itself, as the
    // CA (Pebble, -dnsserver) sees it.
    let env = acme_env_full(
        "",
        &[("PEBBLE_WFE_NONCEREJECT", "0")],
        r#"challenge = "dns-01""#,
        r#"["app.example.test", "*.example.test"]"#,
        r#"resolver = "@DNS@""#,
    )
    .await;
    let (portico, client) = env.serve_until_issued().await;
    assert!(
        portico
            .output()
            .contains("dns-01 self-check: the zone is delegated to Portico"),
        "{}",
        portico.output()
    );
    // Progress names each nameserver as it answers the record.
    assert!(
        portico.output().contains(&format!(
            "nameserver 127.0.0.1:{} answers _acme-challenge.example.test. (1 of 1)",
            env.dns
        )),
        "{}",
        portico.output()
    );
    // The wildcard covers any name in the zone.
    let a = env.https();
    let r = send_tls(
        a,
        "anything.example.test",
        client,
        request("GET", "anything.example.test", "/"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let out = portico.output();
    assert!(
        out.contains("dns-01: TXT record served by every nameserver"),
        "{out}"
    );
    // The challenge records are cleaned up afterwards.
    let (code, zone) = run(&[
        "zones",
        "export",
        "example.test",
        "-c",
        env.config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{zone}");
    assert!(!zone.contains("_acme-challenge"), "{zone}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_tls_alpn01_on_the_https_listener() {
    let env = acme_env(
        "",
        &[("PEBBLE_WFE_NONCEREJECT", "0")],
        r#"challenge = "tls-alpn-01""#,
    )
    .await;
    let (_portico, client) = env.serve_until_issued().await;
    // Without a challenge in flight, acme-tls/1 gets no certificate at all.
    let acme_only = {
        let mut c = (*client).clone();
        c.alpn_protocols = vec![b"acme-tls/1".to_vec()];
        Arc::new(c)
    };
    assert!(tls_connect(env.https(), "app.example.test", acme_only)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_unreachable_then_back_fails_cleanly_and_recovers() {
    let mut env = acme_env("", &[("PEBBLE_WFE_NONCEREJECT", "0")], "").await;
    env.stop_pebble();
    let portico = Proc::spawn(&["serve", "-c", env.config.to_str().unwrap()]);
    portico.wait_output("certificate request failed").await;
    // Nothing half-written: no lineage until a certificate exists; the failure is recorded.
    assert!(!env.live().join("app").exists());
    let (code, out) = run(&["certs", "list", "-c", env.config.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("app ") && l.contains("FAILED")),
        "{out}"
    );
    assert!(out.contains("last error:"), "{out}");
    // The CA comes back: the retry (exponential backoff from 10 s) succeeds by itself.
    env.start_pebble().await;
    wait_file(
        &env.live().join("app/fullchain.pem"),
        Duration::from_secs(60),
        "not issued after the CA came back",
        &portico,
    )
    .await;
    let client = env.pebble_client().await;
    env.wait_served(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_check_fails_fast_naming_the_record_that_points_elsewhere() {
    let env = acme_env_for(
        "",
        &[("PEBBLE_WFE_NONCEREJECT", "0")],
        "",
        r#"["elsewhere.example.test"]"#,
    )
    .await;
    let portico = Proc::spawn(&["serve", "-c", env.config.to_str().unwrap()]);
    portico.wait_output("certificate request failed").await;
    let (code, out) = run(&["certs", "list", "-c", env.config.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("app ") && l.contains("FAILED")),
        "{out}"
    );
    assert!(
        out.contains("self-check: elsewhere.example.test has the A record 127.0.0.2"),
        "the reason names the record: {out}"
    );
    assert!(
        !portico.output().contains("ACME account created"),
        "no order placed: {}",
        portico.output()
    );
}

/// dns-01 for a zone whose public delegation names other nameservers (the registrar's, here a
/// second Portico answering for example.test with its own NS set): the self-check refuses
/// before any order, naming the nameservers the CA would ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_self_check_fails_fast_when_the_zone_is_delegated_elsewhere() {
    let registrar = TempDir::new("registrar");
    let registrar_dns = free_port();
    let registrar_config = registrar.path().join("registrar.toml");
    std::fs::write(
        &registrar_config,
        format!(
            "state_dir = \"{}\"\n[dns]\nlisten = [\"127.0.0.1:{registrar_dns}\"]\n\
             [[zone]]\nname = \"example.test\"\nnameservers = [\"ns1.registrar.test\", \"ns2.registrar.test\"]\n",
            registrar.path().join("state").display()
        ),
    )
    .unwrap();
    let registrar_proc = Proc::spawn(&["serve", "-c", registrar_config.to_str().unwrap()]);
    registrar_proc.wait_output("portico serving").await;
    let env = acme_env_full(
        "",
        &[("PEBBLE_WFE_NONCEREJECT", "0")],
        r#"challenge = "dns-01""#,
        r#"["app.example.test"]"#,
        &format!("resolver = \"127.0.0.1:{registrar_dns}\""),
    )
    .await;
    let portico = Proc::spawn(&["serve", "-c", env.config.to_str().unwrap()]);
    portico.wait_output("certificate request failed").await;
    let (code, out) = run(&["certs", "show", "app", "-c", env.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("FAILED"), "{out}");
    assert!(
        out.contains("example.test. is delegated to ns1.registrar.test., ns2.registrar.test.")
            && out.contains("set the zone's NS records at the registrar"),
        "the reason names the nameservers the CA would ask: {out}"
    );
    assert!(
        !portico.output().contains("order created"),
        "no order placed: {}",
        portico.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_account_binding_with_a_ca_that_requires_it() {
    let key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let env = acme_env_full(
        &format!(r#", "externalAccountBindingRequired": true, "externalAccountMACKeys": {{"kid-1": "{key}"}}"#),
        &[("PEBBLE_WFE_NONCEREJECT", "0")],
        "",
        r#"["app.example.test"]"#,
        &format!("eab_kid = \"kid-1\"\neab_hmac_key = \"{key}\""),
    )
    .await;
    let portico = Proc::spawn(&["serve", "-c", env.config.to_str().unwrap()]);
    wait_file(
        &env.live().join("app/fullchain.pem"),
        Duration::from_secs(60),
        "not issued with EAB",
        &portico,
    )
    .await;
    // Without the binding the CA's problem document is what the user sees.
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("eab_kid = \"kid-1\"\n", "")
        .replace(&format!("eab_hmac_key = \"{key}\""), "");
    let other = TempDir::new("noeab");
    let config = other.path().join("portico.toml");
    let state = env.dir.path().join("state").display().to_string();
    let moved = text
        .replace(&state, &other.path().join("state").display().to_string())
        .replace(
            "ca.pem",
            &env.dir.path().join("ca.pem").display().to_string(),
        );
    std::fs::write(&config, moved).unwrap();
    drop(portico);
    let p2 = Proc::spawn(&["serve", "-c", config.to_str().unwrap()]);
    p2.wait_output("certificate request failed").await;
    let (_, out) = run(&["certs", "list", "-c", config.to_str().unwrap()]);
    assert!(
        out.contains("externalAccountRequired"),
        "the CA's problem type is shown: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_dns01_through_rfc2136_to_a_bind_primary() {
    let dir = TempDir::new("rfc2136");
    let d = dir.path();
    let secret = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=";
    let (bind_port, acme, mgmt, http, https) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    // BIND: the primary for example.test, accepting updates signed with the key.
    std::fs::write(
        d.join("example.test.db"),
        "$TTL 60\n@ SOA ns1.example.test. hostmaster.example.test. 1 60 60 600 60\n@ NS ns1.example.test.\nns1 A 127.0.0.1\napp A 127.0.0.1\n",
    )
    .unwrap();
    std::fs::write(
        d.join("named.conf"),
        format!(
            r#"key "certbot" {{ algorithm hmac-sha256; secret "{secret}"; }};
options {{ directory "{d}"; pid-file "{d}/named.pid"; listen-on port {bind_port} {{ 127.0.0.1; }};
  listen-on-v6 {{ none; }}; recursion no; dnssec-validation no; notify no; allow-query {{ any; }}; }};
zone "example.test" {{ type primary; file "{d}/example.test.db"; allow-update {{ key "certbot"; }}; }};
"#,
            d = d.display()
        ),
    )
    .unwrap();
    let _bind = start_bind(&d.join("named.conf"), bind_port).await;
    // Pebble resolves through BIND.
    let ca = TestCa::new();
    ca.issue(d, "pebble", &["localhost", "127.0.0.1"]);
    std::fs::write(d.join("ca.pem"), pem_of(&ca.der)).unwrap();
    std::fs::write(
        d.join("pebble.json"),
        format!(
            r#"{{"pebble": {{"listenAddress": "127.0.0.1:{acme}", "managementListenAddress": "127.0.0.1:{mgmt}",
              "certificate": "{d}/pebble.crt", "privateKey": "{d}/pebble.key", "httpPort": {http}, "tlsPort": {https},
              "ocspResponderURL": "", "externalAccountBindingRequired": false}}}}"#,
            d = d.display()
        ),
    )
    .unwrap();
    let bind_addr = format!("127.0.0.1:{bind_port}");
    let _pebble = Proc::spawn_program(
        "pebble",
        &[
            "-config",
            d.join("pebble.json").to_str().unwrap(),
            "-dnsserver",
            &bind_addr,
            "-strict=false",
        ],
        &[
            ("PEBBLE_VA_NOSLEEP", "1"),
            ("PEBBLE_WFE_NONCEREJECT", "0"),
            ("PEBBLE_AUTHZREUSE", "0"),
        ],
    );
    wait_listening(acme).await;
    let config = d.join("portico.toml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "{state}"
[acme]
directory = "https://localhost:{acme}/dir"
ca_roots = ["ca.pem"]
[[tsig_key]]
name = "certbot"
secret = "{secret}"
[[certificate]]
name = "wild"
domains = ["*.example.test"]
challenge = "dns-01"
dns_server = "{bind_addr}"
dns_key = "certbot"
[[listener]]
name = "https"
bind = "127.0.0.1:{https}"
protocol = "https"
certificates = ["wild"]
default_action = {{ fixed_response = {{ status = 200, body = "ok" }} }}
"#,
            state = d.join("state").display()
        ),
    )
    .unwrap();
    let portico = Proc::spawn(&["serve", "-c", config.to_str().unwrap()]);
    wait_file(
        &d.join("state/certificates/live/wild/fullchain.pem"),
        Duration::from_secs(90),
        "not issued through RFC 2136",
        &portico,
    )
    .await;
    assert!(
        portico
            .output()
            .contains("dns-01: TXT record added by RFC 2136 and served"),
        "{}",
        portico.output()
    );
    // The TXT record was removed from BIND afterwards.
    let dig = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &bind_port.to_string(),
            "+short",
            "_acme-challenge.example.test",
            "TXT",
        ])
        .output()
        .unwrap();
    let mut left = String::from_utf8_lossy(&dig.stdout).trim().to_string();
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !left.is_empty() && std::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &bind_port.to_string(),
                "+short",
                "_acme-challenge.example.test",
                "TXT",
            ])
            .output()
            .unwrap();
        left = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    assert!(left.is_empty(), "challenge record left behind: {left}");
}

/// RFC 9773 §4.1 identifier of a PEM certificate, computed independently with `openssl`.
fn ari_id_with_openssl(pem: &Path) -> String {
    let out = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-serial",
            "-ext",
            "authorityKeyIdentifier",
            "-in",
        ])
        .arg(pem)
        .output()
        .expect("openssl runs (Debian: apt-get install openssl)");
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = |h: &str| -> Vec<u8> {
        let h: String = h.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    };
    let mut serial = hex(text
        .lines()
        .find_map(|l| l.strip_prefix("serial="))
        .unwrap());
    if serial[0] & 0x80 != 0 {
        serial.insert(0, 0); // DER INTEGER is signed
    }
    let aki = hex(text
        .lines()
        .skip_while(|l| !l.contains("Authority Key Identifier"))
        .nth(1)
        .unwrap()
        .trim()
        .trim_start_matches("keyid:"));
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!("{}.{}", b64.encode(aki), b64.encode(serial))
}

/// Through the fault-injecting proxy (a test double: Pebble has neither ARI nor rate limits):
/// a rate-limited new order is retried no sooner than the CA's Retry-After, longer than the
/// backoff alone; the issued certificate is renewed at once when the CA's renewal window has
/// begun, the new order names it in `replaces`; the next window is the one shown and used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ari_window_and_rate_limit_retry_after_through_a_fault_injecting_proxy() {
    let env = acme_env("", &[("PEBBLE_WFE_NONCEREJECT", "0")], "").await;
    let d = env.dir.path();
    let proxy = fault_proxy::FaultProxy::start(
        &d.join("pebble.crt"),
        &d.join("pebble.key"),
        format!("127.0.0.1:{}", env.acme).parse().unwrap(),
        env.ca.client(&[b"http/1.1"], &[&rustls::version::TLS13]),
    )
    .await;
    {
        let mut s = proxy.state();
        s.rate_limited_orders = 1;
        s.retry_after_secs = 15;
    }
    let text = std::fs::read_to_string(&env.config).unwrap();
    let direct = format!("https://localhost:{}/dir", env.acme);
    assert!(text.contains(&direct));
    std::fs::write(
        &env.config,
        text.replace(&direct, &format!("https://localhost:{}/dir", proxy.port)),
    )
    .unwrap();

    let (portico, _client) = env.serve_until_issued().await;
    {
        let s = proxy.state();
        assert!(s.orders.len() >= 2, "{} orders", s.orders.len());
        let gap = s.orders[1].0 - s.orders[0].0;
        assert!(
            gap >= Duration::from_millis(14_500),
            "retried {gap:?} after a 429 with Retry-After: 15 (the backoff alone is 10 s)"
        );
    }
    // The proxy says the first certificate's window has begun: renewed, naming it in `replaces`.
    let archive = d.join("state/certificates/archive/app");
    wait_file(
        &archive.join("cert2.pem"),
        Duration::from_secs(60),
        "not renewed inside the CA's renewal window",
        &portico,
    )
    .await;
    let first = ari_id_with_openssl(&archive.join("cert1.pem"));
    {
        let s = proxy.state();
        assert_eq!(s.ari_queries.first(), Some(&first), "{:?}", s.ari_queries);
        assert_eq!(
            s.orders.last().unwrap().1.as_deref(),
            Some(first.as_str()),
            "the renewal's new order names the replaced certificate"
        );
    }
    // The second certificate's window (20–21 days ahead) is what `certs show` reports and uses.
    let second = ari_id_with_openssl(&archive.join("cert2.pem"));
    let config = env.config.clone();
    eventually(
        "the new window is recorded",
        Duration::from_secs(20),
        || {
            let config = config.clone();
            async move {
                let (_, out) = run(&["certs", "show", "app", "-c", config.to_str().unwrap()]);
                out.contains("CA window:") && out.contains("ISSUED")
            }
        },
    )
    .await;
    assert!(proxy.state().ari_queries.contains(&second));
    let (_, out) = run(&["certs", "show", "app", "-c", env.config.to_str().unwrap()]);
    let renew_after = out
        .lines()
        .find_map(|l| l.strip_prefix("renew after:"))
        .unwrap()
        .trim()
        .to_string();
    let at = humantime::parse_rfc3339(&renew_after).unwrap();
    let ahead = at.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(
        ahead > Duration::from_secs(19 * 86_400) && ahead < Duration::from_secs(22 * 86_400),
        "renew after {renew_after} is not inside the CA's window:\n{out}"
    );
    assert_eq!(proxy.state().orders.len(), 3, "no further order");
}

/// Runs `portico doctor --json`; returns the exit code and (severity, name, explanation) rows.
fn doctor(domain: &str, common: &[String], extra: &[&str]) -> (i32, Vec<(String, String, String)>) {
    let mut args: Vec<&str> = vec!["doctor", domain, "--json"];
    args.extend(common.iter().map(String::as_str));
    args.extend_from_slice(extra);
    let (code, out) = run(&args);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("doctor --json: {e}:\n{out}"));
    let rows = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["severity"].as_str().unwrap().to_string(),
                f["name"].as_str().unwrap().to_string(),
                f["explanation"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (code, rows)
}

fn has(rows: &[(String, String, String)], severity: &str, name: &str) -> bool {
    rows.iter().any(|r| r.0 == severity && r.1 == name)
}

/// The doctor against zones Portico serves on loopback: two authoritative servers (127.0.0.1 and
/// 127.0.0.2) for example.com (in sync) and example.net (the second one behind), HTTP and HTTPS
/// listeners with an internal-CA certificate and an expired imported one. Each finding comes from
/// a case built to produce it; the healthy name is all OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_each_finding_from_a_case_built_for_it() {
    let dir = TempDir::new("doctor");
    let d = dir.path();
    let (dns, http, https, closed) = (free_port(), free_port(), free_port(), free_port());
    let com = "$ORIGIN example.com.\n$TTL 60\n\
        @ SOA ns1.example.com. hostmaster.example.com. 2024010101 3600 600 86400 60\n\
        @ NS ns1.example.com.\n@ NS ns2.example.com.\n\
        ns1 A 127.0.0.1\nns2 A 127.0.0.2\n\
        app A 127.0.0.1\nredir A 127.0.0.1\nexpired A 127.0.0.1\n\
        www CNAME app\n\
        blocked A 127.0.0.1\nblocked CAA 0 issue \"other-ca.example\"\n\
        strict CAA 0 issue \"other-ca.example\"\napp.strict A 127.0.0.1\n\
        critical A 127.0.0.1\ncritical CAA 128 tbs \"unknown\"\n\
        dual A 127.0.0.1\ndual AAAA ::1\n\
        delegated A 127.0.0.1\n_acme-challenge.delegated CNAME delegated.example.net.\n";
    std::fs::write(d.join("example.com.zone"), com).unwrap();
    let net = |serial: u32, lagging: bool| {
        format!(
            "$ORIGIN example.net.\n$TTL 60\n\
             @ SOA ns1.example.com. hostmaster.example.com. {serial} 3600 600 86400 60\n\
             @ NS ns1.example.com.\n@ NS ns2.example.com.\nok A 127.0.0.1\n{}",
            if lagging { "lagging A 127.0.0.1\n" } else { "" }
        )
    };
    std::fs::write(d.join("primary.net.zone"), net(5, true)).unwrap();
    std::fs::write(d.join("behind.net.zone"), net(4, false)).unwrap();
    // An expired certificate from a CA of our own, imported.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["expired.example.com".to_string()]).unwrap();
    leaf.not_before = rcgen::date_time_ymd(2020, 1, 1);
    leaf.not_after = rcgen::date_time_ymd(2020, 2, 1);
    let leaf = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    std::fs::write(d.join("expired.pem"), leaf.pem()).unwrap();
    std::fs::write(d.join("expired.key"), leaf_key.serialize_pem()).unwrap();

    let zones = |com: &str, net: &str| {
        format!(
            "[[zone]]\nname = \"example.com\"\nfile = \"{com}\"\n[[zone]]\nname = \"example.net\"\nfile = \"{net}\"\n"
        )
    };
    let primary = d.join("primary.toml");
    std::fs::write(
        &primary,
        format!(
            r#"state_dir = "{state}"
[dns]
listen = ["127.0.0.1:{dns}"]
{zones}
[[certificate]]
name = "app"
domains = ["app.example.com", "redir.example.com"]
issuer = "internal"
[[certificate]]
name = "expired"
cert_file = "expired.pem"
key_file = "expired.key"
[[listener]]
name = "http"
bind = "127.0.0.1:{http}"
protocol = "http"
default_action = {{ redirect = {{ protocol = "https", port = {https} }} }}
[[listener.rule]]
priority = 1
host = ["redir.example.com"]
action = {{ redirect = {{ protocol = "https", port = 1234 }} }}
[[listener]]
name = "https"
bind = "127.0.0.1:{https}"
protocol = "https"
certificates = ["app", "expired"]
default_action = {{ fixed_response = {{ status = 200, body = "ok" }} }}
"#,
            state = d.join("state1").display(),
            zones = zones("example.com.zone", "primary.net.zone"),
        ),
    )
    .unwrap();
    let secondary = d.join("secondary.toml");
    std::fs::write(
        &secondary,
        format!(
            "state_dir = \"{}\"\n[dns]\nlisten = [\"127.0.0.2:{dns}\"]\n{}",
            d.join("state2").display(),
            zones("example.com.zone", "behind.net.zone")
        ),
    )
    .unwrap();
    let p1 = Proc::spawn(&["serve", "-c", primary.to_str().unwrap()]);
    let _p2 = Proc::spawn(&["serve", "-c", secondary.to_str().unwrap()]);
    wait_file(
        &d.join("state1/certificates/live/app/fullchain.pem"),
        Duration::from_secs(20),
        "internal certificate not issued",
        &p1,
    )
    .await;
    wait_listening(https).await;
    // Roots: the internal CA and the CA of the expired certificate.
    let mut roots = std::fs::read_to_string(d.join("state1/ca/root.pem")).unwrap();
    roots.push_str(&ca_cert.pem());
    std::fs::write(d.join("roots.pem"), roots).unwrap();
    let common: Vec<String> = [
        "--resolver".to_string(),
        format!("127.0.0.1:{dns}"),
        "--dns-port".into(),
        dns.to_string(),
        "--http-port".into(),
        http.to_string(),
        "--https-port".into(),
        https.to_string(),
        "--ca-roots".into(),
        d.join("roots.pem").display().to_string(),
        "-c".into(),
        primary.display().to_string(),
    ]
    .into();
    let private = ["--private-ca"];
    eventually("both nameservers answer", Duration::from_secs(20), || {
        let common = common.clone();
        async move {
            let (_, rows) = doctor("app.example.com", &common, &private);
            has(&rows, "OK", "Propagation")
        }
    })
    .await;

    // Healthy: every finding OK, exit 0.
    let (code, rows) = doctor("app.example.com", &common, &private);
    assert_eq!(code, 0, "{rows:#?}");
    assert!(rows.iter().all(|r| r.0 == "OK"), "{rows:#?}");
    for name in [
        "Resolves",
        "Propagation",
        "CAA",
        "AHTTP01",
        "HTTPS",
        "DNS01Ready",
    ] {
        assert!(has(&rows, "OK", name), "{name}: {rows:#?}");
    }
    // A CNAME chain is followed and named.
    let (_, rows) = doctor("www.example.com", &common, &private);
    assert!(
        rows.iter()
            .any(|r| r.1 == "Resolves" && r.2.contains("via CNAME app.example.com")),
        "{rows:#?}"
    );

    // Missing record.
    let (code, rows) = doctor("nothere.example.com", &common, &private);
    assert_eq!(code, 1);
    assert!(has(&rows, "FATAL", "NoRecords"), "{rows:#?}");

    // One nameserver behind: named, with its serial.
    let (code, rows) = doctor("lagging.example.net", &common, &private);
    assert_eq!(code, 1);
    let lag = rows
        .iter()
        .find(|r| r.1 == "NameserversDisagree")
        .unwrap_or_else(|| panic!("{rows:#?}"));
    assert_eq!(lag.0, "ERROR");
    assert!(
        lag.2.contains(&format!("127.0.0.2:{dns}")) && lag.2.contains("serial 4"),
        "{}",
        lag.2
    );
    assert!(
        !lag.2.contains(&format!("127.0.0.1:{dns}) has")),
        "{}",
        lag.2
    );

    // CAA forbidding the CA: on the name, on a parent (climbing), and a critical unknown tag.
    let (code, rows) = doctor("blocked.example.com", &common, &private);
    assert_eq!(code, 1);
    assert!(has(&rows, "ERROR", "CAAIssuanceNotAllowed"), "{rows:#?}");
    let (_, rows) = doctor("app.strict.example.com", &common, &private);
    assert!(
        rows.iter()
            .any(|r| r.1 == "CAAIssuanceNotAllowed" && r.2.contains("strict.example.com")),
        "{rows:#?}"
    );
    let (_, rows) = doctor("critical.example.com", &common, &private);
    assert!(has(&rows, "ERROR", "CAACriticalUnknown"), "{rows:#?}");
    let (_, rows) = doctor(
        "blocked.example.com",
        &common,
        &["--private-ca", "--caa-identity", "other-ca.example"],
    );
    assert!(has(&rows, "OK", "CAA"), "{rows:#?}");

    // Closed port 80 (here: the port a CA would use).
    let mut closed_80 = common.clone();
    closed_80[5] = closed.to_string();
    assert_eq!(common[4], "--http-port");
    let (code, rows) = doctor("app.example.com", &closed_80, &private);
    assert_eq!(code, 1);
    assert!(has(&rows, "ERROR", "ANotWorking"), "{rows:#?}");

    // A redirect a CA will not follow.
    let (_, rows) = doctor("redir.example.com", &common, &private);
    assert!(
        rows.iter()
            .any(|r| r.1 == "BadRedirect" && r.2.contains("port 1234")),
        "{rows:#?}"
    );

    // IPv6: the AAAA record's address does not answer on port 80 (only IPv4 listens).
    let (code, rows) = doctor("dual.example.com", &common, &private);
    assert_eq!(code, 1);
    assert!(has(&rows, "ERROR", "AAAANotWorking"), "{rows:#?}");
    assert!(has(&rows, "OK", "AHTTP01"), "{rows:#?}");

    // DNS-01 through an `_acme-challenge` CNAME into a hosted zone.
    let (_, rows) = doctor("delegated.example.com", &common, &private);
    assert!(
        rows.iter().any(|r| r.1 == "DNS01Ready"
            && r.2.contains("CNAME to delegated.example.net")
            && r.2.contains("hosted zone example.net")),
        "{rows:#?}"
    );

    // An expired certificate.
    let (code, rows) = doctor("expired.example.com", &common, &private);
    assert_eq!(code, 1);
    assert!(has(&rows, "ERROR", "CertificateExpired"), "{rows:#?}");

    // A public CA: loopback addresses and private names are refused.
    let (code, rows) = doctor("app.example.com", &common, &[]);
    assert_eq!(code, 1);
    assert!(has(&rows, "FATAL", "ReservedAddress"), "{rows:#?}");
    let (_, rows) = doctor("192.0.2.1", &common, &[]);
    assert!(has(&rows, "FATAL", "InvalidDomain"), "{rows:#?}");
    // A private name without --private-ca is said to be one, and the checks that do not need a
    // public CA still run (here: resolution, which Portico refuses for a zone it does not host).
    let (code, rows) = doctor("app.example.test", &common, &[]);
    assert_eq!(code, 1);
    assert!(
        rows.iter()
            .any(|r| r.1 == "InvalidDomain" && r.2.contains("not under a public suffix")),
        "{rows:#?}"
    );
    assert!(
        rows.iter()
            .any(|r| ["DNSLookupFailed", "NoRecords", "Resolves"].contains(&r.1.as_str())),
        "{rows:#?}"
    );

    // The text report: a fix line under each problem and a final line.
    let (code, out) = run(&[
        "doctor",
        "nothere.example.com",
        "--private-ca",
        "--resolver",
        &format!("127.0.0.1:{dns}"),
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("FATAL") && out.contains("NoRecords"), "{out}");
    assert!(out.contains("fix: add an A"), "{out}");
    assert!(out.contains("result: 1 fatal"), "{out}");
}

/// `portico proxy` against Pebble: one command obtains the certificate over HTTP-01 (resolving the
/// name through Portico DNS, as Pebble does), redirects HTTP to HTTPS and forwards to the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_obtains_a_certificate_from_pebble_and_serves_the_target() {
    let env = acme_env("", &[("PEBBLE_WFE_NONCEREJECT", "0")], "").await;
    let d = env.dir.path();
    // The name's DNS: a Portico serving only the zone, where Pebble and the self-check ask.
    let dns_only = d.join("dns.toml");
    std::fs::write(
        &dns_only,
        format!(
            "state_dir = \"{}\"\n[dns]\nlisten = [\"127.0.0.1:{}\"]\n[[zone]]\nname = \"example.test\"\n[[zone.record]]\nname = \"api\"\ntype = \"A\"\nvalues = [\"127.0.0.1\"]\n",
            d.join("dns-state").display(),
            env.dns
        ),
    )
    .unwrap();
    let _dns = Proc::spawn(&["serve", "-c", dns_only.to_str().unwrap()]);
    let target = Backend::start("app-server").await;
    let state = d.join("proxy-state");
    std::fs::create_dir_all(&state).unwrap();
    let proxy = Proc::spawn(&[
        "proxy",
        "--domain",
        "api.example.test",
        "--to",
        &target.addr.to_string(),
        "--bind",
        "127.0.0.1",
        "--http-port",
        &env.http.to_string(),
        "--https-port",
        &env.https.to_string(),
        "--acme-dir",
        &format!("https://localhost:{}/dir", env.acme),
        "--ca-roots",
        d.join("ca.pem").to_str().unwrap(),
        "--resolver",
        &format!("127.0.0.1:{}", env.dns),
        "--email",
        "ops@example.test",
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    wait_file(
        &state.join("certificates/live/api.example.test/fullchain.pem"),
        Duration::from_secs(90),
        "portico proxy did not obtain a certificate",
        &proxy,
    )
    .await;
    proxy.wait_output("ready: https://api.example.test").await;
    let client = env.pebble_client().await;
    let a = env.https();
    eventually(
        "HTTPS forwards to the target",
        Duration::from_secs(20),
        || {
            let client = client.clone();
            async move {
                send_tls(
                    a,
                    "api.example.test",
                    client,
                    request("GET", "api.example.test", "/hello"),
                )
                .await
                .is_ok_and(|r| r.status == 200 && r.backend() == "app-server")
            }
        },
    )
    .await;
    let r = get(
        format!("127.0.0.1:{}", env.http).parse().unwrap(),
        "api.example.test",
        "/x?y=1",
    )
    .await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.headers["location"],
        format!("https://api.example.test:{}/x?y=1", env.https).as_str()
    );
    // The config it wrote is a valid `portico serve` config.
    let (code, out) = run(&["check", "-c", state.join("proxy.toml").to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
}

/// dns-01 through an `_acme-challenge` CNAME (what ACM's validation CNAME does): the domain's zone
/// stays at another DNS server (BIND here, also the recursive resolver Pebble asks), which holds
/// `_acme-challenge.shop.customer.test CNAME shop.acme.example.test.`; Portico finds the CNAME
/// through `[acme] resolver`, writes the TXT record into its own zone example.test, and Pebble
/// validates by following the CNAME.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_dns01_through_an_acme_challenge_cname_into_a_portico_zone() {
    let bind_port = free_port();
    let mut env = acme_env_full(
        "",
        &[("PEBBLE_WFE_NONCEREJECT", "0")],
        "challenge = \"dns-01\"",
        r#"["shop.customer.test"]"#,
        &format!("resolver = \"127.0.0.1:{bind_port}\"\ndns_port = {bind_port}"),
    )
    .await;
    let d = env.dir.path().to_path_buf();
    std::fs::write(
        d.join("customer.test.db"),
        "$TTL 60\n@ SOA ns1.customer.test. hostmaster.customer.test. 1 60 60 600 60\n\
         @ NS ns1.customer.test.\n@ NS ns2.customer.test.\nns1 A 127.0.0.1\nns2 A 127.0.0.2\n\
         shop A 127.0.0.1\n_acme-challenge.shop CNAME shop.acme.example.test.\n",
    )
    .unwrap();
    // The customer zone's second nameserver (a Portico on 127.0.0.2) has not got the CNAME yet.
    let lagging = d.join("lagging.toml");
    let lagging_config = |with_cname: bool| {
        let cname = if with_cname {
            "[[zone.record]]\nname = \"_acme-challenge.shop\"\ntype = \"CNAME\"\nvalues = [\"shop.acme.example.test.\"]\n"
        } else {
            ""
        };
        format!(
            "state_dir = \"{}\"\n[dns]\nlisten = [\"127.0.0.2:{bind_port}\"]\n[[zone]]\nname = \"customer.test\"\n\
             nameservers = [\"ns1.customer.test\", \"ns2.customer.test\"]\n\
             [[zone.record]]\nname = \"shop\"\ntype = \"A\"\nvalues = [\"127.0.0.1\"]\n{cname}",
            d.join("lagging-state").display()
        )
    };
    std::fs::write(&lagging, lagging_config(false)).unwrap();
    let mut lagging_proc = Proc::spawn(&["serve", "-c", lagging.to_str().unwrap()]);
    lagging_proc.wait_output("portico serving").await;
    std::fs::write(
        d.join("named.conf"),
        format!(
            r#"options {{ directory "{d}"; pid-file "{d}/named.pid"; listen-on port {bind_port} {{ 127.0.0.1; }};
  listen-on-v6 {{ none; }}; recursion yes; allow-recursion {{ any; }}; dnssec-validation no; notify no;
  allow-query {{ any; }}; max-ncache-ttl 1; }};
zone "customer.test" {{ type primary; file "{d}/customer.test.db"; }};
zone "example.test" {{ type forward; forward only; forwarders {{ 127.0.0.1 port {dns}; }}; }};
"#,
            d = d.display(),
            dns = env.dns
        ),
    )
    .unwrap();
    let _bind = start_bind(&d.join("named.conf"), bind_port).await;
    // Pebble resolves through BIND.
    env.stop_pebble();
    assert_eq!(env.pebble_args[2], "-dnsserver");
    env.pebble_args[3] = format!("127.0.0.1:{bind_port}");
    env.start_pebble().await;

    let portico = Proc::spawn(&["serve", "-c", env.config.to_str().unwrap()]);
    // Not every nameserver of customer.test has the CNAME: refused before any order.
    portico.wait_output("certificate request failed").await;
    let (_, out) = run(&["certs", "show", "app", "-c", env.config.to_str().unwrap()]);
    assert!(
        out.contains(&format!(
            "ns2.customer.test. (127.0.0.2:{bind_port}), a nameserver of customer.test., answers Non-Existent Domain without the CNAME"
        )),
        "the lagging nameserver is named: {out}"
    );
    assert!(
        !portico.output().contains("order created"),
        "{}",
        portico.output()
    );
    // It gets the record; the next try (after the backoff) orders and succeeds.
    drop(lagging_proc);
    std::fs::write(&lagging, lagging_config(true)).unwrap();
    lagging_proc = Proc::spawn(&["serve", "-c", lagging.to_str().unwrap()]);
    lagging_proc.wait_output("portico serving").await;
    wait_file(
        &env.live().join("app/fullchain.pem"),
        Duration::from_secs(90),
        "not issued through the CNAME",
        &portico,
    )
    .await;
    assert!(
        portico
            .output()
            .contains("following the _acme-challenge CNAME"),
        "{}",
        portico.output()
    );
    assert!(
        portico
            .output()
            .contains("dns-01 self-check: every nameserver of the zone answers the CNAME"),
        "{}",
        portico.output()
    );
    drop(lagging_proc);
    let client = env.pebble_client().await;
    env.wait_served_for(&client, "shop.customer.test").await;
    // The TXT record was written under the CNAME's target and removed afterwards.
    let (_, zone) = run(&[
        "zones",
        "export",
        "example.test",
        "-c",
        env.config.to_str().unwrap(),
    ]);
    assert!(!zone.contains("shop.acme"), "cleaned up:\n{zone}");
}

/// `portico certs renew` asks the running server's manager: --dry-run orders and discards,
/// a renewal stores a new version that is served at once; without a server it says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_renew_and_dry_run_through_the_running_server() {
    let env = acme_env("", &[("PEBBLE_WFE_NONCEREJECT", "0")], "").await;
    let (portico, client) = env.serve_until_issued().await;
    let config = env.config.to_str().unwrap().to_string();
    let archive = env.dir.path().join("state/certificates/archive/app");
    let first = served_leaf(env.https(), client.clone()).await.unwrap();

    let c = config.clone();
    let (code, out) =
        tokio::task::spawn_blocking(move || run(&["certs", "renew", "app", "--dry-run", "-c", &c]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{out}\n{}", portico.output());
    assert!(out.contains("nothing was stored"), "{out}");
    assert!(
        !archive.join("cert2.pem").exists(),
        "a dry run stores nothing"
    );

    let c = config.clone();
    let (code, out) =
        tokio::task::spawn_blocking(move || run(&["certs", "renew", "app", "-c", &c]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{out}\n{}", portico.output());
    assert!(
        out.contains("renewed:") && out.contains("version 2"),
        "{out}"
    );
    // Live progress: the order's steps, then the final line.
    assert!(
        out.contains("app: order created for app.example.test") && out.contains("app: validating"),
        "{out}"
    );
    assert!(archive.join("cert2.pem").exists());
    let a = env.https();
    eventually(
        "the renewed certificate is served",
        Duration::from_secs(10),
        || {
            let (client, first) = (client.clone(), first.clone());
            async move { served_leaf(a, client).await.is_some_and(|l| l != first) }
        },
    )
    .await;

    // Revocation at Pebble, then an immediate replacement.
    let serial2 = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(archive.join("cert2.pem"))
        .output()
        .expect("openssl");
    let serial2 = String::from_utf8_lossy(&serial2.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    let c = config.clone();
    let (code, out) =
        tokio::task::spawn_blocking(move || run(&["certs", "revoke", "app", "-c", &c]))
            .await
            .unwrap();
    assert_eq!(
        code,
        0,
        "{out}
{}",
        portico.output()
    );
    assert!(
        out.contains("revoked and replaced") && out.contains("version 3"),
        "{out}"
    );
    let status = send_tls(
        format!("127.0.0.1:{}", env.mgmt).parse().unwrap(),
        "localhost",
        env.ca.client(&[b"http/1.1"], &[&rustls::version::TLS13]),
        request(
            "GET",
            "localhost",
            &format!("/cert-status-by-serial/{serial2}"),
        ),
    )
    .await
    .unwrap();
    assert!(status.body.contains("Revoked"), "Pebble: {}", status.body);

    drop(portico);
    let (code, out) = run(&["certs", "renew", "app", "-c", &config]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("start it"), "{out}");
    let (code, out) = run(&["certs", "renew", "nope", "-c", &config]);
    assert_eq!(code, 1);
    assert!(out.contains("no [[certificate]] named \"nope\""), "{out}");
}

/// BIND (`named`, Debian's bind9) in the foreground with `conf`, listening on `port`.
async fn start_bind(conf: &Path, port: u16) -> Proc {
    let named = if Path::new("/usr/sbin/named").exists() {
        "/usr/sbin/named"
    } else {
        "named"
    };
    let bind = Proc::spawn_program(named, &["-g", "-c", conf.to_str().unwrap(), "-n", "1"], &[]);
    wait_listening(port).await;
    bind
}
