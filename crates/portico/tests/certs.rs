//! Certificates against Pebble (Let's Encrypt's test CA): HTTP-01, TLS-ALPN-01 and DNS-01 (through
//! Portico's zones, a CNAME into them, RFC 2136 to BIND), the internal CA, renewal, ARI and rate
//! limits through a fault-injecting proxy, EAB, self-checks that fail fast.
//!
//! Over 600 lines on purpose: each test builds its whole case (real CA, DNS, processes) end to
//! end and asserts the journey step by step; the shared set-up is in tests/common.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::support::*;
use common::*;

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
    let (url, got, _) = webhook_receiver().await;
    let alert = format!("[[alert]]\nurl = \"{url}\"\nevents = [\"renewal_window_moved\"]\n");
    let env = acme_env("", &[("PEBBLE_WFE_NONCEREJECT", "0")], &alert).await;
    let d = env.dir.path();
    let proxy = through_fault_proxy(&env).await;
    {
        let mut s = proxy.state();
        s.rate_limited_orders = 1;
        s.retry_after_secs = 15;
        s.move_window_earlier = true;
    }

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

    // The CA pulls the window forward (10–11 days ahead) when asked again after its
    // Retry-After (60 s): the renewal moves with it, and an alert says so.
    let seen = got.clone();
    eventually(
        "renewal_window_moved reaches the webhook",
        Duration::from_secs(120),
        move || {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .iter()
                    .any(|v| v["event"] == "renewal_window_moved" && v["certificate"] == "app")
            }
        },
    )
    .await;
    let moved = got.lock().unwrap()[0].clone();
    assert!(
        moved["window_before"].is_string() && moved["window"].is_string(),
        "{moved}"
    );
    let (_, out) = run(&["certs", "show", "app", "-c", env.config.to_str().unwrap()]);
    let renew_after = out
        .lines()
        .find_map(|l| l.strip_prefix("renew after:"))
        .unwrap()
        .trim()
        .to_string();
    let ahead = humantime::parse_rfc3339(&renew_after)
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        ahead > Duration::from_secs(9 * 86_400) && ahead < Duration::from_secs(12 * 86_400),
        "renew after {renew_after} follows the window moved earlier:\n{out}"
    );
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
    wait_replaced(&env, &client, &first, "the renewed certificate is served").await;

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

/// Certificate profiles: `profile` is checked against the CA's directory before ordering, sent
/// with every order (renewals included) and shown by `certs show`. Debian's Pebble 2.4 offers no
/// profiles: against it the order fails with the reason; the fault-injecting proxy (a test
/// double) advertises profiles for the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_profiles_checked_against_the_directory_kept_on_renewal_and_shown() {
    // A CA without profiles: no order is placed, the record says why.
    let plain = acme_env("", &[], "profile = \"tlsserver\"").await;
    let portico = Proc::spawn(&["serve", "-c", plain.config.to_str().unwrap()]);
    let config = plain.config.clone();
    eventually(
        "the order fails naming the profile",
        Duration::from_secs(60),
        || {
            let config = config.clone();
            async move {
                let (_, out) = run(&["certs", "show", "app", "-c", config.to_str().unwrap()]);
                out.contains("FAILED")
                    && out.contains("profile \"tlsserver\"")
                    && out.contains("offers no profiles")
            }
        },
    )
    .await;
    drop(portico);

    // A CA that offers profiles: ordered with it, and renewed with it (the proxy's ARI says the
    // first certificate's window has begun).
    let env = acme_env(
        "",
        &[("PEBBLE_WFE_NONCEREJECT", "0")],
        "profile = \"tlsserver\"",
    )
    .await;
    let d = env.dir.path();
    let proxy = through_fault_proxy(&env).await;
    proxy.state().profiles = vec![
        ("classic".into(), "90 days".into()),
        ("tlsserver".into(), "45 days".into()),
    ];
    // Tolerant parsing: fields no RFC defines everywhere, and a challenge type Portico does not
    // know (without a token) offered first in every authorization.
    proxy.state().unknown_extensions = true;
    let (portico, _client) = env.serve_until_issued().await;
    wait_file(
        &d.join("state/certificates/archive/app/cert2.pem"),
        Duration::from_secs(60),
        "not renewed inside the CA's renewal window",
        &portico,
    )
    .await;
    let profiles = proxy.state().order_profiles.clone();
    assert!(profiles.len() >= 2, "{profiles:?}");
    assert!(
        profiles.iter().all(|p| p.as_deref() == Some("tlsserver")),
        "every order, the renewal too, asks for the profile: {profiles:?}"
    );
    let (_, out) = run(&["certs", "show", "app", "-c", env.config.to_str().unwrap()]);
    assert!(out.contains("profile:     tlsserver"), "{out}");
    assert!(
        proxy.state().authorizations_extended > 0,
        "the unknown challenge type was offered"
    );

    // A profile the CA does not offer: refused before any order, naming the ones it offers.
    drop(portico);
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        text.replace("profile = \"tlsserver\"", "profile = \"shortlived\""),
    )
    .unwrap();
    let orders_before = proxy.state().orders.len();
    let _portico = Proc::spawn(&["serve", "-c", env.config.to_str().unwrap()]);
    let config = env.config.clone();
    eventually(
        "a renewal with an unknown profile is refused naming the offered ones",
        // The restarted server first comes up and asks the CA's directory.
        Duration::from_secs(60),
        || {
            let config = config.clone();
            async move {
                let c = config.to_str().unwrap().to_string();
                let (code, out) =
                    tokio::task::spawn_blocking(move || run(&["certs", "renew", "app", "-c", &c]))
                        .await
                        .unwrap();
                code != 0
                    && out.contains("profile \"shortlived\" is not offered")
                    && out.contains("classic")
                    && out.contains("tlsserver")
            }
        },
    )
    .await;
    // Asked again, the same failure is reported again (not waited on as if nothing happened:
    // the record counts failures, so an identical error text is still a new one).
    let c = config.to_str().unwrap().to_string();
    let (code, out) =
        tokio::task::spawn_blocking(move || run(&["certs", "renew", "app", "-c", &c]))
            .await
            .unwrap();
    assert!(
        code != 0 && out.contains("profile \"shortlived\" is not offered"),
        "{out}"
    );
    assert_eq!(
        proxy.state().orders.len(),
        orders_before,
        "no order is placed with a profile the CA does not offer"
    );
}

/// IP-address certificates (RFC 8738): Pebble 2.4 validates 127.0.0.1 as an `ip` identifier,
/// and the HTTPS listener serves the certificate to a client that connects by address (it
/// sends no SNI and verifies the address against the certificate's iPAddress name).
async fn ip_certificate_issued_and_served(challenge: &str) {
    let env = acme_env_for("", &[], challenge, r#"["127.0.0.1"]"#).await;
    let portico = Proc::spawn(&["serve", "-c", env.config.to_str().unwrap()]);
    wait_file(
        &env.live().join("app/fullchain.pem"),
        Duration::from_secs(90),
        "the IP-address certificate was not issued in 90 s",
        &portico,
    )
    .await;
    let client = env.pebble_client().await;
    env.wait_served_for(&client, "127.0.0.1").await;
    let pem = std::fs::read_to_string(env.live().join("app/cert.pem")).unwrap();
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(
        san.value.general_names.iter().any(|n| matches!(
            n,
            x509_parser::extensions::GeneralName::IPAddress(b) if *b == [127, 0, 0, 1]
        )),
        "the certificate names the address: {:?}",
        san.value.general_names
    );
    let (_, out) = run(&["certs", "show", "app", "-c", env.config.to_str().unwrap()]);
    assert!(out.contains("127.0.0.1") && out.contains("ISSUED"), "{out}");

    // The doctor on the address: no DNS or CAA checks, the HTTP-01 path and the certificate
    // served for it (verified against Pebble's root).
    let root = send_tls(
        format!("127.0.0.1:{}", env.mgmt).parse().unwrap(),
        "localhost",
        env.ca.client(&[b"http/1.1"], &[&rustls::version::TLS13]),
        request("GET", "localhost", "/roots/0"),
    )
    .await
    .unwrap()
    .body;
    let roots = env.dir.path().join("pebble-root.pem");
    std::fs::write(&roots, root).unwrap();
    let (http, https) = (env.http.to_string(), env.https.to_string());
    let rows = doctor_rows(&[
        "127.0.0.1",
        "--private-ca",
        "--http-port",
        &http,
        "--https-port",
        &https,
        "--ca-roots",
        roots.to_str().unwrap(),
    ]);
    let ok = |name: &str| rows.iter().any(|(s, n, _)| s == "OK" && n == name);
    assert!(ok("IPAddress") && ok("HTTPS"), "{rows:?}");
    // The HTTP-01 path is probed on the address: reachable. The listener answers an unknown
    // token by address 404 rather than redirecting it to HTTPS by address, which no CA follows
    // (the doctor reported that as BadRedirect before).
    assert!(
        rows.iter().any(|(s, n, e)| s == "OK"
            && n == "AHTTP01"
            && e.contains("127.0.0.1")
            && e.contains("404")),
        "{rows:?}"
    );
    assert!(!rows.iter().any(|(_, n, _)| n == "BadRedirect"), "{rows:?}");
    assert!(
        rows.iter()
            .all(|(_, n, _)| !["CAA", "Propagation", "Resolves", "DNS01"].contains(&n.as_str())),
        "no DNS checks for an address: {rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_address_certificate_over_http01_served_without_sni() {
    ip_certificate_issued_and_served("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_address_certificate_over_tls_alpn01_with_the_reverse_name() {
    ip_certificate_issued_and_served("challenge = \"tls-alpn-01\"").await;
}

/// An address with dns-01 is refused by `check`, naming the challenges that can validate it.
#[test]
fn ip_address_with_dns01_is_refused_naming_the_reason() {
    let dir = TempDir::new("ipdns01");
    let config = dir.path().join("portico.toml");
    std::fs::write(
        &config,
        r#"[acme]
directory = "letsencrypt-staging"
email = "ops@example.test"
[[certificate]]
name = "addr"
domains = ["203.0.113.7"]
challenge = "dns-01"
"#,
    )
    .unwrap();
    let (code, out) = run(&["check", "-c", config.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("203.0.113.7 is an IP address")
            && out.contains("http-01 or tls-alpn-01")
            && out.contains("portico.toml:7"),
        "{out}"
    );
}

/// A webhook receiver on loopback: records each POST's JSON body; the first POST is answered
/// 503 (the sender must retry it), every other one 200. Its URL, the bodies, and the POSTs seen.
async fn webhook_receiver() -> (
    String,
    Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    Arc<std::sync::atomic::AtomicU32>,
) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/portico", listener.local_addr().unwrap());
    let got: Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Arc::default();
    let posts: Arc<std::sync::atomic::AtomicU32> = Arc::default();
    let (g, p) = (got.clone(), posts.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (g, p) = (g.clone(), p.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (g, p) = (g.clone(), p.clone());
                        async move {
                            let ok = req.method() == hyper::Method::POST
                                && req.uri().path() == "/hooks/portico"
                                && req
                                    .headers()
                                    .get("content-type")
                                    .and_then(|v| v.to_str().ok())
                                    == Some("application/json");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let n = p.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let status = if !ok {
                                400
                            } else if n == 0 {
                                503
                            } else {
                                g.lock()
                                    .unwrap()
                                    .push(serde_json::from_slice(&body).unwrap());
                                200
                            };
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(http_body_util::Full::new(hyper::body::Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (url, got, posts)
}

/// `[[alert]]`s: a webhook gets issued (after a retry: its first answer is 503), renewed and
/// renewal_failed (with the reason) as JSON; a command gets certificate_expiring (its own
/// threshold) and issued through its environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_a_webhook_with_a_retry_and_a_command() {
    let (url, got, posts) = webhook_receiver().await;
    let dir = TempDir::new("alert-out");
    let out = dir.path().join("events.txt");
    let extra = format!(
        r#"
[[certificate]]
name = "broken"
domains = ["nowhere.example.test"]
issuer = "acme"
[[alert]]
name = "hook"
url = "{url}"
events = ["certificate_issued", "certificate_renewed", "renewal_failed"]
[[alert]]
name = "script"
command = "printf '%s %s\n' \"$PORTICO_EVENT\" \"$PORTICO_CERTIFICATE\" >> {out}"
events = ["certificate_issued", "certificate_expiring"]
expiring_within = "36500d"
"#,
        out = out.display()
    );
    let env = acme_env("", &[("PEBBLE_WFE_NONCEREJECT", "0")], &extra).await;
    let (portico, _client) = env.serve_until_issued().await;
    let seen = |event: &'static str, cert: &'static str| {
        let got = got.clone();
        move || {
            let got = got.clone();
            async move {
                got.lock()
                    .unwrap()
                    .iter()
                    .any(|v| v["event"] == event && v["certificate"] == cert)
            }
        }
    };
    eventually(
        "the webhook gets certificate_issued for app",
        Duration::from_secs(30),
        seen("certificate_issued", "app"),
    )
    .await;
    eventually(
        "the webhook gets renewal_failed for broken",
        Duration::from_secs(30),
        seen("renewal_failed", "broken"),
    )
    .await;
    let c = env.config.to_str().unwrap().to_string();
    let (code, text) =
        tokio::task::spawn_blocking(move || run(&["certs", "renew", "app", "-c", &c]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{text}\n{}", portico.output());
    eventually(
        "the webhook gets certificate_renewed for app",
        Duration::from_secs(30),
        seen("certificate_renewed", "app"),
    )
    .await;
    {
        let got = got.lock().unwrap();
        let failed = got.iter().find(|v| v["event"] == "renewal_failed").unwrap();
        assert!(
            failed["error"]
                .as_str()
                .unwrap_or("")
                .contains("nowhere.example.test"),
            "the reason is in the event: {failed}"
        );
        assert_eq!(
            failed["domains"],
            serde_json::json!(["nowhere.example.test"])
        );
        let renewed = got
            .iter()
            .find(|v| v["event"] == "certificate_renewed")
            .unwrap();
        assert_eq!(renewed["version"], 2, "{renewed}");
        assert!(renewed["not_after"].is_string(), "{renewed}");
        assert!(
            got.iter().all(|v| v["event"] != "certificate_expiring"),
            "the webhook did not ask for certificate_expiring: {got:?}"
        );
    }
    assert!(
        posts.load(std::sync::atomic::Ordering::SeqCst) as usize > got.lock().unwrap().len(),
        "the first POST (answered 503) was retried"
    );
    let file = out.clone();
    eventually(
        "the command gets certificate_expiring and certificate_issued",
        Duration::from_secs(30),
        move || {
            let file = file.clone();
            async move {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                text.contains("certificate_expiring app") && text.contains("certificate_issued app")
            }
        },
    )
    .await;
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.matches("certificate_expiring app").count() <= 2,
        "expiring is sent once per certificate version (two exist): {text}"
    );
    assert_eq!(
        text.matches("certificate_expiring private").count(),
        1,
        "once for the certificate that was not renewed, through reloads too: {text}"
    );
}

/// The doctor's findings for `domain` as (severity, name, explanation).
fn doctor_rows(args: &[&str]) -> Vec<(String, String, String)> {
    let mut all = vec!["doctor", "--json"];
    all.extend_from_slice(args);
    let (_, out) = run(&all);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("doctor --json: {e}:\n{out}"));
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["severity"].as_str().unwrap_or("").to_string(),
                f["name"].as_str().unwrap_or("").to_string(),
                f["explanation"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// `portico certs lock`: CAA (RFC 8657) that binds issuance to the configured CA, Portico's ACME
/// account and its challenge, written into the hosted zone as a change batch; the doctor warns
/// while a hosted name is unlocked, passes Portico's own account and method, and refuses
/// another account (accounturi) or another method (validationmethods), naming the parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_lock_binds_caa_to_the_account_and_method_and_the_doctor_checks_it() {
    let env = acme_env("", &[("PEBBLE_WFE_NONCEREJECT", "0")], "").await;
    let admin_port = free_port();
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push_str(&format!("\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n"));
    std::fs::write(&env.config, text).unwrap();
    // Through the fault-injecting proxy (a test double): Pebble's directory names no CAA
    // domain, the proxy's names one when told to.
    let proxy = through_fault_proxy(&env).await;
    let (portico, _client) = env.serve_until_issued().await;
    let config = env.config.to_str().unwrap().to_string();
    let (dns, http, https) = (
        format!("127.0.0.1:{}", env.dns),
        env.http.to_string(),
        env.https.to_string(),
    );
    let dns_port = env.dns.to_string();
    let common = [
        "app.example.test",
        "--private-ca",
        "--resolver",
        dns.as_str(),
        "--dns-port",
        dns_port.as_str(),
        "--http-port",
        http.as_str(),
        "--https-port",
        https.as_str(),
        "--caa-identity",
        "pebble.example",
        "-c",
        config.as_str(),
    ];
    let has = |rows: &[(String, String, String)], name: &str, text: &str| {
        rows.iter().any(|(_, n, e)| n == name && e.contains(text))
    };
    let rows = doctor_rows(&common);
    assert!(has(&rows, "CAAUnlocked", "app.example.test"), "{rows:?}");

    // Without --ca-identity the CA's CAA domain comes from its directory; when it names none,
    // the lock is refused with what to pass, and nothing is written.
    let lock = |c: String| async move {
        tokio::task::spawn_blocking(move || run(&["certs", "lock", "app", "-c", &c]))
            .await
            .unwrap()
    };
    let (code, out) = lock(config.clone()).await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("lists no meta.caaIdentities"), "{out}");
    assert!(out.contains("ca_identity"), "{out}");
    assert!(has(
        &doctor_rows(&common),
        "CAAUnlocked",
        "app.example.test"
    ));
    proxy.state().caa_identities = vec!["pebble.example".into(), "other.example".into()];
    let (code, out) = lock(config.clone()).await;
    assert_eq!(code, 0, "{out}\n{}", portico.output());
    let uri = acme_account_uri(&env.dir.path().join("state"));
    let want = format!(
        "app.example.test. CAA 0 issue \"pebble.example; accounturi={uri}; validationmethods=http-01\""
    );
    assert!(out.contains(&want), "{out}");

    let rows = doctor_rows(&common);
    assert!(has(&rows, "CAA", "accounturi"), "{rows:?}");
    assert!(
        !rows
            .iter()
            .any(|(_, n, _)| n == "CAAUnlocked" || n == "CAAIssuanceNotAllowed"),
        "{rows:?}"
    );
    let mut other = common.to_vec();
    other.extend(["--account-uri", "https://localhost:1/my-account/999"]);
    let rows = doctor_rows(&other);
    assert!(
        has(
            &rows,
            "CAAIssuanceNotAllowed",
            "(accounturi), not to https://localhost:1/my-account/999"
        ),
        "{rows:?}"
    );
    let mut method = common.to_vec();
    method.extend(["--method", "dns-01"]);
    let rows = doctor_rows(&method);
    assert!(
        has(
            &rows,
            "CAAIssuanceNotAllowed",
            "(validationmethods), not by dns-01"
        ),
        "{rows:?}"
    );
}

/// Every file under `dir` with its length and modification time (to show it was only read).
fn tree_state(dir: &Path) -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                todo.push(e.path());
            } else {
                out.push((e.path(), m.len(), m.modified().unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// `portico certs import --certbot`: a lineage the real certbot (Debian's) obtained from Pebble
/// is adopted with certbot's directory only read, served at once as the very same certificate
/// (so no new order was placed), and renewed by Portico later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certbot_lineage_imported_served_without_a_new_order_and_renewed_later() {
    let env = acme_env("", &[("PEBBLE_WFE_NONCEREJECT", "0")], "").await;
    let d = env.dir.path();
    // The config without its own "app" certificate: certbot's lineage becomes it.
    let text = std::fs::read_to_string(&env.config).unwrap();
    let app =
        "[[certificate]]\nname = \"app\"\ndomains = [\"app.example.test\"]\nissuer = \"acme\"\n";
    assert!(text.contains(app));
    std::fs::write(&env.config, text.replace(app, "")).unwrap();

    // certbot gets app.example.test from Pebble (standalone HTTP-01 on the port Pebble uses),
    // the name resolved by a Portico that serves only the zone.
    let dns = env.dns_only("app").await;
    let le = d.join("letsencrypt");
    let (acme, http) = (
        format!("https://localhost:{}/dir", env.acme),
        env.http.to_string(),
    );
    let ca = d.join("ca.pem");
    let mut certbot = Proc::spawn_program(
        "certbot",
        &[
            "certonly",
            "--standalone",
            "--non-interactive",
            "--agree-tos",
            "-m",
            "ops@example.test",
            "--server",
            &acme,
            "--http-01-port",
            &http,
            "--http-01-address",
            "127.0.0.1",
            "--cert-name",
            "app",
            "-d",
            "app.example.test",
            "--config-dir",
            le.to_str().unwrap(),
            "--work-dir",
            d.join("certbot-work").to_str().unwrap(),
            "--logs-dir",
            d.join("certbot-logs").to_str().unwrap(),
        ],
        &[("REQUESTS_CA_BUNDLE", ca.to_str().unwrap())],
    );
    let code = certbot.wait_exit(Duration::from_secs(180));
    assert_eq!(code, 0, "certbot failed:\n{}", certbot.output());
    drop(dns);

    let before = tree_state(&le);
    let (code, out) = run(&[
        "certs",
        "import",
        "--certbot",
        le.to_str().unwrap(),
        "-c",
        env.config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("app: adopted version 1 (app.example.test), renewed by http-01 (certbot used standalone)"),
        "{out}"
    );
    assert_eq!(tree_state(&le), before, "certbot's directory is only read");
    // certbot's RSA account becomes Portico's: same account URL, key rolled over to P-256.
    let certbot_uri = find_file(&le.join("accounts"), "regr.json")
        .map(|p| std::fs::read_to_string(p).unwrap())
        .map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap()["uri"].clone())
        .and_then(|u| u.as_str().map(String::from))
        .expect("certbot's regr.json with the account URL");
    assert!(
        out.contains(&format!(
            "renewals use certbot's account {certbot_uri}: its key was rolled over"
        )),
        "{out}"
    );
    let portico_account = || {
        let file = find_file(&env.dir.path().join("state/acme/accounts"), "account.json")
            .expect("Portico's account.json");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        v["id"].as_str().unwrap().to_string()
    };
    assert_eq!(portico_account(), certbot_uri);

    let (portico, client) = env.serve_until_issued().await;
    let pem = std::fs::read_to_string(le.join("live/app/cert.pem")).unwrap();
    use rustls::pki_types::pem::PemObject;
    let certbots = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec();
    assert_eq!(
        served_leaf(env.https(), client.clone()).await.unwrap(),
        certbots,
        "certbot's certificate is served as it is: no new order"
    );
    assert!(!env.live().join("../archive/app/cert2.pem").exists());
    let (_, show) = run(&["certs", "show", "app", "-c", env.config.to_str().unwrap()]);
    assert!(show.contains("ISSUED"), "{show}");

    let c = env.config.to_str().unwrap().to_string();
    let (code, out) =
        tokio::task::spawn_blocking(move || run(&["certs", "renew", "app", "-c", &c]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{out}\n{}", portico.output());
    wait_replaced(
        &env,
        &client,
        &certbots,
        "Portico's renewal replaces certbot's certificate",
    )
    .await;
    // The renewal was ordered (signed with the rolled-over key) by certbot's account: no
    // other account was made.
    assert_eq!(portico_account(), certbot_uri);
}

/// The first file named `name` under `dir`, depth first.
fn find_file(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

/// Waits until HTTPS serves a leaf other than `old` (a renewal took effect).
async fn wait_replaced(env: &AcmeEnv, client: &Arc<rustls::ClientConfig>, old: &[u8], what: &str) {
    let a = env.https();
    eventually(what, Duration::from_secs(20), || {
        let (client, old) = (client.clone(), old.to_vec());
        async move { served_leaf(a, client).await.is_some_and(|l| l != old) }
    })
    .await;
}
