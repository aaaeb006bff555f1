//! Cluster mode on a real etcd (Debian's etcd-server) started by the tests on loopback (feature
//! `etcd`).
//!
//! Over 600 lines on purpose: each test builds its whole case (real CA, DNS, processes) end to
//! end and asserts the journey step by step; the shared set-up is in tests/common.
#![cfg(feature = "etcd")]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::support::{self, TempDir};
use common::{free_port, run, Proc};

/// An etcd on loopback with its own data directory, killed when the test ends.
pub struct EtcdProc {
    pub endpoint: String,
    peer_url: String,
    proc: Option<Proc>,
    dir: TempDir,
}

pub fn start_etcd() -> EtcdProc {
    let dir = TempDir::new("etcd");
    let (client, peer) = (free_port(), free_port());
    let mut e = EtcdProc {
        endpoint: format!("http://127.0.0.1:{client}"),
        peer_url: format!("http://127.0.0.1:{peer}"),
        proc: None,
        dir,
    };
    e.start();
    e
}

impl EtcdProc {
    /// Starts etcd (again, on the same ports and data) and waits until it is healthy.
    pub fn start(&mut self) {
        let data = self.dir.path().join("data");
        let proc = Proc::spawn_program(
            "etcd",
            &[
                "--name",
                "t",
                "--data-dir",
                data.to_str().unwrap(),
                "--listen-client-urls",
                &self.endpoint,
                "--advertise-client-urls",
                &self.endpoint,
                "--listen-peer-urls",
                &self.peer_url,
                "--initial-advertise-peer-urls",
                &self.peer_url,
                "--initial-cluster",
                &format!("t={}", self.peer_url),
            ],
            &[],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = etcdctl(&self.endpoint, &["endpoint", "health"]);
            if out.contains("is healthy") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy after 30 s (apt-get install etcd-server etcd-client): {out}\n{}",
                proc.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.proc = Some(proc);
    }

    /// Kills etcd (its data stays).
    pub fn stop(&mut self) {
        self.proc = None;
    }
}

pub fn etcdctl(endpoint: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("etcdctl")
        .args(["--endpoints", endpoint, "--dial-timeout", "2s"])
        .args(args)
        .env("ETCDCTL_API", "3")
        .output()
        .expect("etcdctl is missing: apt-get install etcd-client (scripts/test installs it)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every file under `dir` (links followed) with its bytes, except per-process files.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            // Zone journals are the node's own (folded into the master file by migrate).
            if name.starts_with('.')
                || name == "portico.pid"
                || name == "admin.url"
                || name.ends_with(".journal")
            {
                continue;
            }
            let p = e.path();
            if std::fs::metadata(&p).unwrap().is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_migrate_copies_a_state_directory_into_etcd_and_back_unchanged() {
    let etcd = start_etcd();
    let env = common::admin::AdminEnv::start("migrate").await;
    // Some state worth keeping: an API record change, an internal certificate, a registered target.
    let (s, _) = env
        .call(
            "POST",
            "/api/v1/zones/example.test/changes",
            Some(serde_json::json!({"changes": [{"action": "UPSERT", "name": "m", "type": "A", "values": ["192.0.2.77"]}]})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = env
        .call(
            "POST",
            "/api/v1/certificates",
            Some(serde_json::json!({"name": "m", "domains": ["m.example.test"], "issuer": "internal"})),
        )
        .await;
    assert_eq!(s, 202);
    let live = env
        .dir
        .path()
        .join("state/certificates/live/m/fullchain.pem");
    support::eventually("the certificate is issued", Duration::from_secs(30), || {
        let exists = live.exists();
        async move { exists }
    })
    .await;
    let common::admin::AdminEnv {
        dir,
        config,
        mut server,
        ..
    } = env;
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(20)), 0);
    let before = tree(&dir.path().join("state"));
    assert!(before.contains_key("certificates/live/m/privkey.pem"));
    assert!(before.contains_key("zones/example.test.zone"));

    // Into etcd.
    let text = std::fs::read_to_string(&config).unwrap();
    let store = format!(
        "[store]\netcd = [\"{}\"]\nprefix = \"t1/\"\n",
        etcd.endpoint
    );
    std::fs::write(&config, format!("{text}\n{store}")).unwrap();
    let (code, out) = run(&[
        "store",
        "migrate",
        "--to",
        "etcd",
        "-c",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("copied {} keys", before.len())),
        "{out}"
    );
    let keys = etcdctl(&etcd.endpoint, &["get", "--prefix", "--keys-only", "t1/"]);
    assert!(
        keys.contains("t1/certificates/archive/m/privkey1.pem"),
        "{keys}"
    );
    // The zone as a head and one key per name (the record the API added among them), not
    // as one value.
    assert!(keys.contains("t1/zones/example.test./head"), "{keys}");
    assert!(
        keys.lines()
            .any(|k| k.starts_with("t1/zones/example.test./g") && k.ends_with("/m")),
        "{keys}"
    );
    assert!(!keys.contains("t1/zones/example.test.zone"), "{keys}");
    assert!(!keys.contains("portico.pid"), "{keys}");

    // And back, into an empty state directory: the same files, the same bytes, live/ as links.
    let back = dir.path().join("back");
    let config2 = dir.path().join("back.toml");
    std::fs::write(
        &config2,
        format!(
            "state_dir = \"{}\"\n[store]\netcd = [\"{}\"]\nprefix = \"t1/\"\n",
            back.display(),
            etcd.endpoint
        ),
    )
    .unwrap();
    let (code, out) = run(&[
        "store",
        "migrate",
        "--to",
        "dir",
        "-c",
        config2.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let after = tree(&back);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    assert!(before == after, "contents differ after the round trip");
    let link = std::fs::read_link(back.join("certificates/live/m/fullchain.pem")).unwrap();
    assert_eq!(link.to_str().unwrap(), "../../archive/m/fullchain1.pem");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(back.join("certificates/archive/m/privkey1.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // etcd unreachable: a clear error naming it.
    let dead = dir.path().join("dead.toml");
    std::fs::write(
        &dead,
        format!(
            "state_dir = \"{}\"\n[store]\netcd = [\"http://127.0.0.1:{}\"]\n",
            dir.path().join("dead").display(),
            free_port()
        ),
    )
    .unwrap();
    let (code, out) = run(&[
        "store",
        "migrate",
        "--to",
        "dir",
        "-c",
        dead.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unreachable") || out.contains("etcd"), "{out}");
}

/// One node of a test cluster on 127.0.0.N.
struct Node {
    ip: std::net::IpAddr,
    proc: Option<Proc>,
    config: std::path::PathBuf,
    state: std::path::PathBuf,
    admin: std::net::SocketAddr,
    token: String,
}

impl Node {
    /// Node `n` (1..=3) from the single-node config of `env`: its own loopback address, state
    /// directory and admin API, the shared store.
    fn configure(env: &common::AcmeEnv, n: u8, etcd: &str) -> Node {
        let text = std::fs::read_to_string(&env.config).unwrap();
        let ip = format!("127.0.0.{n}");
        let state = env.dir.path().join(format!("node{n}"));
        let text = text
            .replace(
                &format!("state_dir = \"{}\"", env.dir.path().join("state").display()),
                &format!("state_dir = \"{}\"", state.display()),
            )
            .replace(
                &format!("listen = [\"127.0.0.1:{}\"]", env.dns),
                &format!("listen = [\"{ip}:{}\"]", env.dns),
            )
            .replace(
                &format!("bind = \"127.0.0.1:{}\"", env.http),
                &format!("bind = \"{ip}:{}\"", env.http),
            )
            .replace(
                &format!("bind = \"127.0.0.1:{}\"", env.https),
                &format!("bind = \"{ip}:{}\"", env.https),
            )
            // Pebble reaches node 2 for http-01, whichever node orders.
            .replace(
                "name = \"app\"\ntype = \"A\"\nvalues = [\"127.0.0.1\"]",
                "name = \"app\"\ntype = \"A\"\nvalues = [\"127.0.0.2\"]",
            );
        let config = env.dir.path().join(format!("node{n}.toml"));
        std::fs::write(
            &config,
            format!("{text}\n[admin]\nlisten = \"{ip}:0\"\n[store]\netcd = [\"{etcd}\"]\n"),
        )
        .unwrap();
        Node::new(&ip, config, state)
    }

    /// A node not started yet (`start` finds its admin API and token).
    fn new(ip: &str, config: std::path::PathBuf, state: std::path::PathBuf) -> Node {
        Node {
            ip: ip.parse().unwrap(),
            proc: None,
            config,
            state,
            admin: "127.0.0.1:1".parse().unwrap(),
            token: String::new(),
        }
    }

    async fn start(&mut self) {
        let _ = std::fs::remove_file(self.state.join("admin.url"));
        let mut proc = Proc::spawn(&["serve", "-c", self.config.to_str().unwrap()]);
        let url_file = self.state.join("admin.url");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !url_file.exists() {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!("node {} exited ({status}):\n{}", self.ip, proc.output());
            }
            assert!(
                Instant::now() < deadline,
                "node {} not up:\n{}",
                self.ip,
                proc.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let url = std::fs::read_to_string(&url_file).unwrap();
        self.admin = url.trim().trim_start_matches("http://").parse().unwrap();
        self.token = std::fs::read_to_string(self.state.join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        self.proc = Some(proc);
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        common::admin::call(self.admin, Some(&self.token), method, path, body).await
    }

    fn output(&self) -> String {
        self.proc.as_ref().map(|p| p.output()).unwrap_or_default()
    }
}

/// The body curl gets from `url` (empty on any failure).
fn curl_body(url: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "3", url])
        .output()
        .expect("curl is missing: apt-get install curl");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The DER leaf certificate an `acme-tls/1` handshake with SNI `name` gets, through openssl
/// (a client independent of Portico's own); `None` when the handshake fails.
fn alpn_leaf(addr: std::net::SocketAddr, name: &str) -> Option<Vec<u8>> {
    let script = format!(
        "openssl s_client -connect {addr} -servername {name} -alpn acme-tls/1 </dev/null 2>/dev/null \
         | openssl x509 -outform DER"
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("openssl is missing: apt-get install openssl");
    (out.status.success() && !out.stdout.is_empty()).then_some(out.stdout)
}

fn dig_at(ip: std::net::IpAddr, port: u16, name: &str) -> String {
    let out = std::process::Command::new("dig")
        .args([
            "+short",
            "+time=1",
            "+tries=1",
            &format!("@{ip}"),
            "-p",
            &port.to_string(),
            name,
            "A",
        ])
        .output()
        .expect("dig is missing: apt-get install bind9-dnsutils");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn wait_dig(nodes: &[Node], port: u16, name: &str, want: &str) {
    for n in nodes {
        let ip = n.ip;
        let (name, want) = (name.to_string(), want.to_string());
        support::eventually(
            &format!("{name} answers {want} on {ip}"),
            Duration::from_secs(10),
            || {
                let got = dig_at(ip, port, &name);
                let ok = got == want;
                async move { ok }
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_etcd_order_once_share_zones_and_survive_an_etcd_outage() {
    let mut etcd = start_etcd();
    // tls-alpn-01 here (http-01 in the lock test below): the name points at node 2, and the
    // handshake cannot wait for the store, so node 2 answers from the challenge it mirrored.
    let env = common::acme_env_full(
        "",
        &[],
        r#"challenge = "tls-alpn-01""#,
        "[\"app.example.test\"]",
        "",
    )
    .await;
    let mut nodes: Vec<Node> = (1..=3)
        .map(|n| Node::configure(&env, n, &etcd.endpoint))
        .collect();
    for n in nodes.iter_mut() {
        n.start().await;
    }

    // One order, three nodes serving the Pebble-issued certificate.
    let client = env.pebble_client().await;
    for n in &nodes {
        let addr = std::net::SocketAddr::new(n.ip, env.https);
        let client = client.clone();
        let out = n.output();
        support::eventually(
            &format!("{} serves the certificate", n.ip),
            Duration::from_secs(120),
            || {
                let client = client.clone();
                async move {
                    support::send_tls(
                        addr,
                        "app.example.test",
                        client,
                        support::request("GET", "app.example.test", "/"),
                    )
                    .await
                    .is_ok_and(|r| r.status == 200)
                }
            },
        )
        .await;
        let _ = out;
    }
    let pebble_log = env.pebble.as_ref().unwrap().output();
    assert_eq!(
        pebble_log.matches("Issued certificate serial").count(),
        1,
        "Pebble issued more than once:\n{pebble_log}"
    );
    for n in &nodes {
        assert!(n.state.join("certificates/archive/app/cert1.pem").exists());
        assert!(!n.state.join("certificates/archive/app/cert2.pem").exists());
    }

    // Challenges another node puts into the shared store (as an ordering node does) are
    // answered by every node: HTTP-01 from the store, TLS-ALPN-01 from the mirrored copy.
    let digest = [0x5au8; 32];
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    etcdctl(
        &etcd.endpoint,
        &[
            "put",
            "portico/acme/http-01/probe-Token_1",
            "probe-Token_1.print",
        ],
    );
    etcdctl(
        &etcd.endpoint,
        &["put", "portico/acme/tls-alpn-01/probe.example.test", &hex],
    );
    for n in &nodes {
        let http = format!(
            "http://{}:{}/.well-known/acme-challenge/probe-Token_1",
            n.ip, env.http
        );
        let tls = std::net::SocketAddr::new(n.ip, env.https);
        support::eventually(
            &format!("{} answers both shared challenges", n.ip),
            Duration::from_secs(10),
            || {
                let ok = curl_body(&http) == "probe-Token_1.print"
                    && alpn_leaf(tls, "probe.example.test")
                        .is_some_and(|der| der.windows(32).any(|w| w == digest));
                async move { ok }
            },
        )
        .await;
    }
    etcdctl(
        &etcd.endpoint,
        &["del", "portico/acme/tls-alpn-01/probe.example.test"],
    );
    for n in &nodes {
        let tls = std::net::SocketAddr::new(n.ip, env.https);
        support::eventually(
            &format!("{} stops answering the removed challenge", n.ip),
            Duration::from_secs(10),
            || {
                let gone = alpn_leaf(tls, "probe.example.test").is_none();
                async move { gone }
            },
        )
        .await;
    }

    // A record changed through node 1 is answered by nodes 2 and 3.
    let (s, v) = nodes[0]
        .call(
            "POST",
            "/api/v1/zones/example.test/changes",
            Some(serde_json::json!({"changes": [{"action": "UPSERT", "name": "shared", "type": "A", "values": ["192.0.2.1"]}]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    wait_dig(&nodes, env.dns, "shared.example.test", "192.0.2.1").await;
    // INSYNC once every live node serves the new serial.
    let id = v["id"].as_str().unwrap().to_string();
    let (admin, token) = (nodes[0].admin, nodes[0].token.clone());
    support::eventually(
        "the change is INSYNC on every node",
        Duration::from_secs(10),
        || {
            let (token, id) = (token.clone(), id.clone());
            async move {
                let (_, c) = common::admin::call(
                    admin,
                    Some(&token),
                    "GET",
                    &format!("/api/v1/changes/{id}"),
                    None,
                )
                .await;
                c["status"] == "INSYNC"
            }
        },
    )
    .await;

    // Conflicting change batches on two nodes at once: one wins, the other is told.
    let change = |v: &str| {
        Some(
            serde_json::json!({"changes": [{"action": "UPSERT", "name": "race", "type": "A", "values": [v]}]}),
        )
    };
    let (a, b) = tokio::join!(
        nodes[0].call(
            "POST",
            "/api/v1/zones/example.test/changes",
            change("192.0.2.10")
        ),
        nodes[1].call(
            "POST",
            "/api/v1/zones/example.test/changes",
            change("192.0.2.20")
        ),
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{a:?} {b:?}");
    let loser = if a.0 == 409 { &a.1 } else { &b.1 };
    assert!(
        loser["error"].as_str().unwrap().contains("another node"),
        "{loser}"
    );
    let winner = if a.0 == 200 {
        "192.0.2.10"
    } else {
        "192.0.2.20"
    };
    wait_dig(&nodes, env.dns, "race.example.test", winner).await;

    // A target registered through node 3 reaches the others' configuration.
    let (s, v) = nodes[2]
        .call(
            "POST",
            "/api/v1/target-groups/app/targets",
            Some(serde_json::json!({"targets": [{"address": "127.0.0.1:9"}]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for n in &nodes[..2] {
        let (admin, token) = (n.admin, n.token.clone());
        support::eventually(
            "the registration reaches every node",
            Duration::from_secs(10),
            || {
                let token = token.clone();
                async move {
                    let (_, g) = common::admin::call(
                        admin,
                        Some(&token),
                        "GET",
                        "/api/v1/target-groups/app",
                        None,
                    )
                    .await;
                    g["targets"]
                        .as_array()
                        .is_some_and(|t| t.iter().any(|t| t["address"] == "127.0.0.1:9"))
                }
            },
        )
        .await;
    }
    let (s, _) = nodes[2]
        .call(
            "DELETE",
            "/api/v1/target-groups/app/targets/127.0.0.1:9",
            None,
        )
        .await;
    assert_eq!(s, 200);

    // etcd stops: every node keeps serving HTTPS and DNS; changes are refused with the reason.
    etcd.stop();
    let end = Instant::now() + Duration::from_secs(60);
    let mut requests = 0;
    while Instant::now() < end {
        for n in &nodes {
            let addr = std::net::SocketAddr::new(n.ip, env.https);
            let r = support::send_tls(
                addr,
                "app.example.test",
                client.clone(),
                support::request("GET", "app.example.test", "/"),
            )
            .await;
            assert!(
                r.as_ref().is_ok_and(|r| r.status == 200),
                "{} failed during the outage: {r:?}",
                n.ip
            );
            assert_eq!(
                dig_at(n.ip, env.dns, "shared.example.test"),
                "192.0.2.1",
                "DNS on {}",
                n.ip
            );
            requests += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(requests > 30, "{requests}");
    let (_, st) = nodes[1].call("GET", "/api/v1/status", None).await;
    assert_eq!(st["store"]["reachable"], false, "{st}");
    let (_, m) = nodes[1].call("GET", "/metrics", None).await;
    assert!(
        m.as_str().unwrap().contains("portico_store_reachable{"),
        "{m}"
    );
    assert!(
        m.as_str()
            .unwrap()
            .lines()
            .any(|l| l.starts_with("portico_store_reachable{") && l.ends_with(" 0")),
        "{m}"
    );
    let (s, v) = nodes[0]
        .call(
            "POST",
            "/api/v1/zones/example.test/changes",
            change("192.0.2.30"),
        )
        .await;
    assert_eq!(s, 503, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("cannot be reached"),
        "{v}"
    );
    let (s, v) = nodes[1]
        .call(
            "POST",
            "/api/v1/target-groups/app/targets",
            Some(serde_json::json!({"targets": [{"address": "127.0.0.1:9"}]})),
        )
        .await;
    assert_eq!(s, 503, "{v}");

    // etcd back (same data): a change made afterwards reaches every node.
    etcd.start();
    let (admin, token) = (nodes[2].admin, nodes[2].token.clone());
    support::eventually("changes are accepted again", Duration::from_secs(30), || {
        let token = token.clone();
        async move {
            let (s, _) = common::admin::call(
                admin,
                Some(&token),
                "POST",
                "/api/v1/zones/example.test/changes",
                Some(serde_json::json!({"changes": [{"action": "UPSERT", "name": "after", "type": "A", "values": ["192.0.2.40"]}]})),
            )
            .await;
            s == 200
        }
    })
    .await;
    wait_dig(&nodes, env.dns, "after.example.test", "192.0.2.40").await;
    let (_, st) = nodes[0].call("GET", "/api/v1/status", None).await;
    assert_eq!(st["store"]["reachable"], true, "{st}");
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_holding_the_order_lock_is_replaced_after_its_lease() {
    let etcd = start_etcd();
    // Validation takes a moment (Pebble's VA sleeps up to 3 s), so the order is caught mid-way.
    let env = common::acme_env_full(
        "",
        &[("PEBBLE_VA_NOSLEEP", "0"), ("PEBBLE_VA_SLEEPTIME", "3")],
        "",
        "[\"app.example.test\"]",
        "",
    )
    .await;
    let mut nodes: Vec<Node> = (1..=3)
        .map(|n| Node::configure(&env, n, &etcd.endpoint))
        .collect();
    for n in nodes.iter_mut() {
        n.start().await;
    }
    // The node holding the order lock: its pid is in the lock key.
    let key = "portico/.locks/certificates/order/app";
    let deadline = Instant::now() + Duration::from_secs(30);
    let holder_pid = loop {
        let out = etcdctl(&etcd.endpoint, &["get", "--print-value-only", key]);
        if let Some(pid) = out
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u32>().ok())
        {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "no node took the order lock: {out}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let dead = nodes
        .iter()
        .position(|n| n.proc.as_ref().is_some_and(|p| p.child.id() == holder_pid))
        .expect("the lock holder is one of the nodes");
    // It dies mid-order: paused at once (as a stalled holder would be), then killed.
    let p = nodes[dead].proc.as_ref().unwrap();
    p.signal(libc::SIGSTOP);
    let issued_before = etcdctl(
        &etcd.endpoint,
        &[
            "get",
            "--keys-only",
            "portico/certificates/archive/app/cert1.pem",
        ],
    );
    p.signal(libc::SIGKILL);
    nodes[dead].proc = None;
    let took_over = issued_before.trim().is_empty();
    println!(
        "lock holder: node {}; it died before the certificate was stored: {took_over}",
        dead + 1
    );
    // As an operator would: the name points at a live node (the CA validates there).
    let live = nodes.iter().find(|n| n.proc.is_some()).unwrap();
    let (admin, token, ip) = (live.admin, live.token.clone(), live.ip);
    support::eventually("the name points at a live node", Duration::from_secs(20), || {
        let token = token.clone();
        async move {
            let (s, _) = common::admin::call(
                admin,
                Some(&token),
                "POST",
                "/api/v1/zones/example.test/changes",
                Some(serde_json::json!({"changes": [{"action": "UPSERT", "name": "app", "type": "A", "values": [ip.to_string()]}]})),
            )
            .await;
            s == 200
        }
    })
    .await;

    // Another node orders once the lease is gone, and every live node serves the certificate.
    let client = env.pebble_client().await;
    for n in nodes.iter().filter(|n| n.proc.is_some()) {
        let addr = std::net::SocketAddr::new(n.ip, env.https);
        let client = client.clone();
        support::eventually(
            &format!("{} serves the certificate after the holder died", n.ip),
            Duration::from_secs(120),
            || {
                let client = client.clone();
                async move {
                    support::send_tls(
                        addr,
                        "app.example.test",
                        client,
                        support::request("GET", "app.example.test", "/"),
                    )
                    .await
                    .is_ok_and(|r| r.status == 200)
                }
            },
        )
        .await;
    }
    if took_over {
        let logs: String = nodes.iter().map(Node::output).collect();
        assert!(
            logs.contains("certificate issued and serving"),
            "a surviving node ordered it:\n{logs}"
        );
    }
}

/// ARI in a cluster: one node asks the CA for a certificate's renewal window and shares it
/// (until the CA's Retry-After); the other uses it. Through the fault-injecting proxy (test
/// double: Debian's Pebble has no ARI), whose first certificate's window says "renew now", so
/// the certificate is renewed once and the renewed one's window is the one watched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_ask_the_ca_for_a_renewal_window_once_and_share_it() {
    use base64::Engine;
    let etcd = start_etcd();
    let env = common::acme_env_full(
        "",
        &[],
        r#"challenge = "tls-alpn-01""#,
        "[\"app.example.test\"]",
        "",
    )
    .await;
    let proxy = common::through_fault_proxy(&env).await;
    let mut nodes: Vec<Node> = (1..=2)
        .map(|n| Node::configure(&env, n, &etcd.endpoint))
        .collect();
    for n in nodes.iter_mut() {
        n.start().await;
    }
    // The renewed certificate: the second id the CA is asked about. Wait until a node says it
    // used the window the other fetched for it.
    let serial_of = |id: &str| {
        let serial = id.split('.').nth(1).unwrap_or("");
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(serial.trim_end_matches('='))
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<String>())
            .unwrap_or_default()
    };
    let renewed = || {
        let s = proxy.state();
        let mut ids: Vec<String> = Vec::new();
        for q in &s.ari_queries {
            if !ids.contains(q) {
                ids.push(q.clone());
            }
        }
        ids.get(1).cloned()
    };
    support::eventually(
        "a node uses the renewed certificate's window that the other node fetched",
        Duration::from_secs(180),
        || {
            let id = renewed();
            let outputs: Vec<String> = nodes.iter().map(|n| n.output()).collect();
            async move {
                let Some(id) = id else { return false };
                let serial = serial_of(&id);
                !serial.is_empty()
                    && outputs.iter().any(|o| {
                        o.lines().any(|l| {
                            l.contains("renewal window shared by another node")
                                && l.contains(&serial)
                        })
                    })
            }
        },
    )
    .await;
    let id = renewed().unwrap();
    let asked = proxy
        .state()
        .ari_queries
        .iter()
        .filter(|q| **q == id)
        .count();
    assert_eq!(
        asked,
        1,
        "the CA was asked {asked} times for one window:\n{}\n{}",
        nodes[0].output(),
        nodes[1].output()
    );
    let pebble_log = env.pebble.as_ref().unwrap().output();
    assert_eq!(
        pebble_log.matches("Issued certificate serial").count(),
        2,
        "issued, then renewed once:\n{pebble_log}"
    );
    drop(etcd);
}

/// DNS-level failover between Portico nodes: an ALIAS to a listener answers with every live
/// node's address for it, and a node whose heartbeat stops is dropped from the answer within the
/// heartbeat timeout (5 s) by the nodes still alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_to_a_listener_answers_every_live_node_and_drops_a_dead_one() {
    let etcd = start_etcd();
    let dir = TempDir::new("cluster-alias");
    let (dns, http) = (free_port(), free_port());
    let mut nodes: Vec<Node> = (1..=3u8)
        .map(|n| {
            let ip = format!("127.0.0.{n}");
            let state = dir.path().join(format!("node{n}"));
            let config = dir.path().join(format!("node{n}.toml"));
            std::fs::write(
                &config,
                format!(
                    r#"state_dir = "{state}"
shutdown_timeout = "2s"
[admin]
listen = "{ip}:0"
[store]
etcd = ["{etcd}"]
[dns]
listen = ["{ip}:{dns}"]
[[listener]]
name = "web"
bind = "{ip}:{http}"
protocol = "http"
default_action = {{ fixed_response = {{ status = 200, body = "node {n}\n" }} }}
[[zone]]
name = "example.test"
[[zone.record]]
name = "app"
type = "ALIAS"
target = "listener:web"
evaluate_target_health = true
"#,
                    state = state.display(),
                    etcd = etcd.endpoint,
                ),
            )
            .unwrap();
            Node {
                ip: ip.parse().unwrap(),
                proc: None,
                config,
                state,
                admin: "127.0.0.1:1".parse().unwrap(),
                token: String::new(),
            }
        })
        .collect();
    for n in nodes.iter_mut() {
        n.start().await;
    }
    let answer = |ip: std::net::IpAddr| {
        let mut lines: Vec<String> = dig_at(ip, dns, "app.example.test")
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        lines.join(" ")
    };
    for n in &nodes {
        let ip = n.ip;
        support::eventually(
            &format!("{ip} answers every node's address"),
            Duration::from_secs(20),
            || {
                let ok = answer(ip) == "127.0.0.1 127.0.0.2 127.0.0.3";
                async move { ok }
            },
        )
        .await;
    }

    // Node 3 dies without a word (SIGKILL): the others stop answering its address once its
    // heartbeat is older than the timeout.
    nodes[2].proc = None;
    let killed = Instant::now();
    for n in &nodes[..2] {
        let ip = n.ip;
        support::eventually(
            &format!("{ip} drops the dead node"),
            Duration::from_secs(20),
            || {
                let ok = answer(ip) == "127.0.0.1 127.0.0.2";
                async move { ok }
            },
        )
        .await;
    }
    eprintln!(
        "the dead node left the answers after {:?} (heartbeat timeout 5 s)",
        killed.elapsed()
    );

    // Back: it is answered again.
    nodes[2].start().await;
    for n in &nodes {
        let ip = n.ip;
        support::eventually(
            &format!("{ip} answers the restarted node"),
            Duration::from_secs(20),
            || {
                let ok = answer(ip) == "127.0.0.1 127.0.0.2 127.0.0.3";
                async move { ok }
            },
        )
        .await;
    }
    drop(nodes);
    drop(etcd);
}

/// Node `n` (1..=3) of a DNS-only cluster serving `zone_file` as example.test.
fn dns_node(dir: &Path, n: u8, dns: u16, etcd: &str, zone_file: &Path) -> Node {
    let ip = format!("127.0.0.{n}");
    let state = dir.join(format!("node{n}"));
    let config = dir.join(format!("node{n}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "{state}"
shutdown_timeout = "5s"
[dns]
listen = ["{ip}:{dns}"]
[[zone]]
name = "example.test"
file = "{file}"
[admin]
listen = "{ip}:0"
[store]
etcd = ["{etcd}"]
"#,
            state = state.display(),
            file = zone_file.display(),
        ),
    )
    .unwrap();
    Node::new(&ip, config, state)
}

/// How many keys etcd holds under `prefix` (Debian's etcdctl 3.4 has no --count-only).
fn etcd_count(endpoint: &str, prefix: &str) -> usize {
    etcdctl(endpoint, &["get", "--prefix", "--keys-only", prefix])
        .lines()
        .filter(|l| l.starts_with(prefix))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_larger_than_etcds_request_limit_is_stored_changed_and_served_by_three_nodes() {
    let etcd = start_etcd();
    let dir = TempDir::new("cluster-big-zone");
    // 60,000 names: about 1.9 MB as a master file, above etcd's 1.5 MiB request limit, so the
    // old one-value layout could not store it at all.
    let file = dir.path().join("example.test.zone");
    let mut text = String::from(
        "$ORIGIN example.test.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 7200 900 1209600 300\n@ IN NS ns1\nns1 IN A 192.0.2.53\n",
    );
    for i in 0..60_000u32 {
        text.push_str(&format!(
            "host{i} IN A 10.{}.{}.{}\n",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        ));
    }
    assert!(text.len() > 1536 * 1024, "{}", text.len());
    std::fs::write(&file, &text).unwrap();
    // What a crash during an earlier upload left: a generation written but never named by a
    // head, listed under gens/ since long ago. The nodes collect it.
    let orphan = "portico/zones/example.test./gdeadbeefdeadbeef/";
    etcdctl(
        &etcd.endpoint,
        &[
            "put",
            "portico/zones/example.test./gens/gdeadbeefdeadbeef",
            r#"{"buckets":2,"since":0,"dead":false}"#,
        ],
    );
    for bucket in 0..2 {
        etcdctl(
            &etcd.endpoint,
            &[
                "put",
                &format!("{orphan}{bucket}/www"),
                "www 300 IN A 192.0.2.99\n",
            ],
        );
    }
    assert_eq!(etcd_count(&etcd.endpoint, orphan), 2);
    let dns = free_port();
    let mut nodes: Vec<Node> = (1..=3)
        .map(|n| dns_node(dir.path(), n, dns, &etcd.endpoint, &file))
        .collect();
    for n in nodes.iter_mut() {
        n.start().await;
    }
    support::eventually(
        "the crashed upload's generation is collected",
        Duration::from_secs(60),
        || {
            let left = etcd_count(&etcd.endpoint, orphan)
                + etcd_count(&etcd.endpoint, "portico/zones/example.test./gens/");
            async move { left == 0 }
        },
    )
    .await;
    for n in &nodes {
        let ip = n.ip;
        support::eventually(
            &format!("{ip} serves the big zone"),
            Duration::from_secs(180),
            || {
                let ok = dig_at(ip, dns, "host59999.example.test") == "10.0.234.95";
                async move { ok }
            },
        )
        .await;
    }
    // Stored as a head and one key per name, not as one value.
    let prefix = "portico/zones/example.test./";
    let head = etcdctl(
        &etcd.endpoint,
        &["get", "--print-value-only", &format!("{prefix}head")],
    );
    let head: serde_json::Value = serde_json::from_str(head.trim()).unwrap();
    let gen = head["gen"].as_str().unwrap().to_string();
    assert!(
        etcd_count(&etcd.endpoint, &format!("{prefix}{gen}/")) >= 60_002,
        "{head}"
    );
    assert_eq!(
        etcd_count(&etcd.endpoint, "portico/zones/example.test.zone"),
        0
    );

    // A change through node 1 writes only what it touches and reaches every node.
    let (s, v) = nodes[0]
        .call(
            "POST",
            "/api/v1/zones/example.test/changes",
            Some(serde_json::json!({"changes": [{"action": "UPSERT", "name": "host7", "type": "A", "values": ["192.0.2.7"]}]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    wait_dig(&nodes, dns, "host7.example.test", "192.0.2.7").await;
    let serial = v["serial"].as_u64().unwrap();
    let head = etcdctl(
        &etcd.endpoint,
        &["get", "--print-value-only", &format!("{prefix}head")],
    );
    let head: serde_json::Value = serde_json::from_str(head.trim()).unwrap();
    assert_eq!(head["serial"].as_u64(), Some(serial), "{head}");
    let log = etcdctl(
        &etcd.endpoint,
        &[
            "get",
            "--print-value-only",
            &format!("{prefix}log/{:020}", head["seq"].as_u64().unwrap()),
        ],
    );
    let log: serde_json::Value = serde_json::from_str(log.trim()).unwrap();
    // The apex (its SOA serial) and host7: two names, not 60,003.
    assert_eq!(log["names"].as_array().map(Vec::len), Some(2), "{log}");

    // A batch larger than one etcd transaction: refused, naming the limit; nothing applied.
    let changes: Vec<serde_json::Value> = (0..200)
        .map(|i| serde_json::json!({"action": "UPSERT", "name": format!("batch{i}"), "type": "A", "values": ["192.0.2.9"]}))
        .collect();
    let (s, v) = nodes[1]
        .call(
            "POST",
            "/api/v1/zones/example.test/changes",
            Some(serde_json::json!({ "changes": changes })),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("--max-txn-ops"),
        "{v}"
    );
    assert_eq!(dig_at(nodes[1].ip, dns, "batch0.example.test"), "");
    let (_, z) = nodes[1]
        .call("GET", "/api/v1/zones/example.test", None)
        .await;
    assert_eq!(z["serial"].as_u64(), Some(serial), "{z}");

    // Node 3 down while node 2 changes the zone: back up, it catches up from etcd.
    let mut down = nodes[2].proc.take().unwrap();
    down.signal(libc::SIGTERM);
    assert_eq!(down.wait_exit(Duration::from_secs(20)), 0);
    let (s, v) = nodes[1]
        .call(
            "POST",
            "/api/v1/zones/example.test/changes",
            Some(serde_json::json!({"changes": [{"action": "DELETE", "name": "host8", "type": "A", "values": ["10.0.0.8"]}, {"action": "UPSERT", "name": "while-down", "type": "A", "values": ["192.0.2.44"]}]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    nodes[2].start().await;
    wait_dig(&nodes, dns, "while-down.example.test", "192.0.2.44").await;
    wait_dig(&nodes, dns, "host8.example.test", "").await;
    wait_dig(&nodes, dns, "host7.example.test", "192.0.2.7").await;
    drop(etcd);
}

#[test]
fn a_range_larger_than_one_grpc_answer_is_read_whole_in_smaller_pages() {
    use portico_store::Store;
    let etcd = start_etcd();
    let store =
        portico_store::etcd::Etcd::connect(std::slice::from_ref(&etcd.endpoint), "portico/", None)
            .expect("connect");
    // 2,100 keys of 4.6 KB (a zone's names with large TXT sets): 9.7 MB, more than one page of
    // 2,000 keys fits in a gRPC answer (4 MiB by default, 8 MiB as the store reads ranges).
    let value = |i: usize| format!("{i:08}").repeat(576).into_bytes();
    let entries: Vec<(String, Vec<u8>)> = (0..2100)
        .map(|i| (format!("zones/big.test./g1/n{i:05}"), value(i)))
        .collect();
    store.put_many(entries).expect("put_many");
    let (rev, _) = store.get_at("zones/big.test./g1/n00000").unwrap();
    for (what, got) in [
        (
            "scan",
            store.scan("zones/big.test./g1/", rev).expect("scan"),
        ),
        (
            "updates_since",
            store
                .updates_since(&["zones/big.test./"], 0)
                .expect("updates_since")
                .expect("etcd keeps revisions")
                .1,
        ),
    ] {
        assert_eq!(got.len(), 2100, "{what}");
        for (i, (k, v)) in got.iter().enumerate() {
            assert_eq!(k, &format!("zones/big.test./g1/n{i:05}"), "{what}");
            assert!(v == &value(i), "{what}: value of {k}");
        }
    }
    drop(etcd);
}
