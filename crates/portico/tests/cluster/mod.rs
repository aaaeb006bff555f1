//! Cluster mode on a real etcd (Debian's etcd-server) started by the tests on loopback.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::support::TempDir;
use super::{free_port, run, Proc};

/// An etcd on loopback with its own data directory, killed when the test ends.
pub struct EtcdProc {
    pub endpoint: String,
    _proc: Proc,
    _dir: TempDir,
}

pub fn start_etcd() -> EtcdProc {
    let dir = TempDir::new("etcd");
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let proc = Proc::spawn_program(
        "etcd",
        &[
            "--name",
            "t",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--listen-client-urls",
            &endpoint,
            "--advertise-client-urls",
            &endpoint,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("t={peer_url}"),
        ],
        &[("ETCD_UNSUPPORTED_ARCH", "")],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = etcdctl(&endpoint, &["endpoint", "health"]);
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
    EtcdProc {
        endpoint,
        _proc: proc,
        _dir: dir,
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
            if name.starts_with('.') || name == "portico.pid" || name == "admin.url" {
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
    let env = super::admin::AdminEnv::start("migrate").await;
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
    super::support::eventually("the certificate is issued", Duration::from_secs(30), || {
        let exists = live.exists();
        async move { exists }
    })
    .await;
    let super::admin::AdminEnv {
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
    assert!(keys.contains("t1/zones/example.test.zone"), "{keys}");
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
