//! The `portico` binary as users run it: check with located errors, serve with SIGHUP and
//! `portico reload`, SIGTERM draining, the commands that need a running server, zone listings.
//! The other journeys are beside this file: demo, proxy, certs (Pebble), doctor, admin, cluster.

mod common;

use std::path::Path;
use std::time::Duration;

use common::support::*;
use common::*;

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
fn every_commented_load_balancer_key_of_the_example_is_accepted_too() {
    // The example's optional keys (stickiness, slow start, HTTPS/HTTP/2 targets, mutual TLS,
    // compression, PROXY protocol), uncommented, are a valid config as well.
    let dir = TempDir::new("example-all");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/portico.toml");
    let text = std::fs::read_to_string(example).unwrap();
    let keys = [
        "protocol = \"https\"",
        "protocol_version",
        "ca_file",
        "server_name",
        "verify",
        "deregistration_delay",
        "stickiness",
        "slow_start",
        "client_ca_file",
        "client_auth",
        "compress",
        "proxy_protocol",
    ];
    let mut uncommented = 0;
    let text: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if keys.iter().any(|k| rest.starts_with(k)) => {
                uncommented += 1;
                format!("{rest}\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    assert!(uncommented >= 13, "{uncommented} keys uncommented");
    std::fs::write(dir.path().join("portico.toml"), text).unwrap();
    let ca = TestCa::new();
    write_pem_pair(&ca, dir.path(), &["api.example.com"]);
    std::fs::write(dir.path().join("targets-ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("clients-ca.pem"), ca.pem()).unwrap();
    let (code, out) = run(&[
        "check",
        "-c",
        dir.path().join("portico.toml").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: target_group[0] \"api\": verify = false"),
        "check says verify = false loudly: {out}"
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

/// `portico certs renew` follows the renewal inside `portico serve`; when the process it
/// signalled dies instead (here a stand-in that SIGHUP ends), it says so at
/// once rather than waiting out its 11-minute limit, and leaves no request behind.
#[test]
fn certs_renew_stops_waiting_when_the_server_is_gone() {
    let dir = TempDir::new("renew-dead");
    let config = dir.path().join("portico.toml");
    let state = dir.path().join("state");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[acme]\ndirectory = \"https://127.0.0.1:9/dir\"\n[[certificate]]\nname = \"app\"\ndomains = [\"app.example.test\"]\n",
            state.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    // A stand-in that ends on SIGHUP, whatever disposition it inherited (a process started
    // with SIGHUP ignored would keep `sleep` alive); it says when its handler is set.
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut stand_in = Reaped(
        std::process::Command::new("python3")
            .args([
                "-c",
                "import signal, sys, time\nsignal.signal(signal.SIGHUP, lambda *a: sys.exit(0))\nprint('ready', flush=True)\ntime.sleep(600)\n",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 (Debian python3) runs the stand-in"),
    );
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(stand_in.0.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready");
    let pid = stand_in.0.id();
    std::fs::write(dir.path().join("state/portico.pid"), pid.to_string()).unwrap();
    // Exited but not reaped (a zombie of this test) counts as gone.
    let (code, out) = run(&["certs", "renew", "app", "-c", config.to_str().unwrap()]);
    drop(stand_in);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "portico serve (pid {pid}) exited before the renewal finished"
        )),
        "{out}"
    );
    assert!(
        !dir.path()
            .join("state/certificates/renewal/app.renew")
            .exists(),
        "no renewal request is left behind"
    );
}
