//! `portico demo` as a newcomer runs it: HTTPS in front of its targets, its zone, its report.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::support::*;
use common::*;

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
