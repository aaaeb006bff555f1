//! HTTPS listeners with a real TLS client trusting a test CA: SNI, the default certificate,
//! policies, ALPN and HTTP/2, and certificates swapped at run time.

mod support;

use std::sync::Arc;

use rustls::version::{TLS12, TLS13};
use support::*;

fn leaf_cn(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn two_cert_lb(policy: &str) -> (TempDir, TestCa, Backend, Arc<portico_lb::LoadBalancer>) {
    let dir = TempDir::new("tls");
    let ca = TestCa::new();
    ca.issue(dir.path(), "api", &["api.example.com"]);
    ca.issue(dir.path(), "www", &["www.example.com", "*.cdn.example.com"]);
    let b = Backend::start("b").await;
    let lb = start_lb(
        &format!(
            r#"
[[certificate]]
name = "api"
cert_file = "api.crt"
key_file = "api.key"
[[certificate]]
name = "www"
cert_file = "www.crt"
key_file = "www.key"
[[target_group]]
name = "g"
targets = ["{}"]
[[listener]]
name = "https"
bind = "127.0.0.1:0"
protocol = "https"
tls_policy = "{policy}"
certificates = ["api", "www"]
default_certificate = "www"
response_headers = {{ "Strict-Transport-Security" = "max-age=31536000" }}
default_action = {{ forward = "g" }}
"#,
            b.addr
        ),
        dir.path(),
    )
    .await;
    (dir, ca, b, lb)
}

#[tokio::test]
async fn sni_selects_the_certificate_and_default_serves_the_rest() {
    let (dir, ca, _b, lb) = two_cert_lb("intermediate").await;
    let a = addr(&lb, "https");
    let client = ca.client(&[b"http/1.1"], &[&TLS13, &TLS12]);
    let api_der = std::fs::read_to_string(dir.path().join("api.crt")).unwrap();
    let api = rustls::pki_types::CertificateDer::from_pem_slice_helper(api_der.as_bytes());

    let tls = tls_connect(a, "api.example.com", client.clone())
        .await
        .unwrap();
    assert_eq!(leaf_cn(&tls), api);
    let tls = tls_connect(a, "img.cdn.example.com", client.clone())
        .await
        .unwrap();
    assert_ne!(
        leaf_cn(&tls),
        api,
        "wildcard name picks the www certificate"
    );
    // Unknown name: the default certificate is served (and fails verification for that name).
    assert!(tls_connect(a, "other.example.com", client.clone())
        .await
        .is_err());

    let r = send_tls(
        a,
        "api.example.com",
        client,
        request("GET", "api.example.com", "/"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_11);
    assert_eq!(r.echoed("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(r.headers["strict-transport-security"], "max-age=31536000");
}

#[tokio::test]
async fn no_sni_gets_the_default_certificate() {
    let (dir, ca, _b, lb) = two_cert_lb("intermediate").await;
    let a = addr(&lb, "https");
    // A client that sends no SNI at all.
    let mut client = (*ca.client(&[], &[&TLS13])).clone();
    client.enable_sni = false;
    let tls = tls_connect(a, "www.example.com", Arc::new(client))
        .await
        .unwrap();
    let www = std::fs::read_to_string(dir.path().join("www.crt")).unwrap();
    assert_eq!(
        leaf_cn(&tls),
        rustls::pki_types::CertificateDer::from_pem_slice_helper(www.as_bytes())
    );
}

#[tokio::test]
async fn http2_by_alpn() {
    let (_dir, ca, _b, lb) = two_cert_lb("intermediate").await;
    let a = addr(&lb, "https");
    let client = ca.client(&[b"h2", b"http/1.1"], &[&TLS13, &TLS12]);
    let r = send_tls(
        a,
        "api.example.com",
        client,
        request("GET", "api.example.com", "/h2?x=1"),
    )
    .await
    .unwrap();
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("host").as_deref(), Some("api.example.com"));
    assert_eq!(
        r.echoed("version").as_deref(),
        Some("HTTP/1.1"),
        "HTTP/1.1 to the target"
    );
    assert_eq!(r.echoed("path").as_deref(), Some("/h2"));
}

#[tokio::test]
async fn policies_bound_the_protocol_versions() {
    let (_dir, ca, _b, lb) = two_cert_lb("modern").await;
    let a = addr(&lb, "https");
    let tls12 = ca.client(&[], &[&TLS12]);
    assert!(
        tls_connect(a, "api.example.com", tls12).await.is_err(),
        "modern refuses TLS 1.2"
    );
    let tls13 = ca.client(&[], &[&TLS13]);
    let s = tls_connect(a, "api.example.com", tls13).await.unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    let (_dir, ca, _b, lb) = two_cert_lb("intermediate").await;
    let a = addr(&lb, "https");
    let s = tls_connect(a, "api.example.com", ca.client(&[], &[&TLS12]))
        .await
        .unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
}

#[tokio::test]
async fn published_certificate_is_served_at_once() {
    let (dir, ca, _b, lb) = two_cert_lb("intermediate").await;
    let a = addr(&lb, "https");
    let client = ca.client(&[], &[&TLS13]);
    assert!(tls_connect(a, "new.example.com", client.clone())
        .await
        .is_err());
    // What the certificate manager does after an issuance: publish under an existing name.
    let (c, k) = ca.issue(
        dir.path(),
        "renewed",
        &["api.example.com", "new.example.com"],
    );
    let cert = portico_lb::tls::load_pem_files(&c, &k).unwrap();
    lb.certs().publish("api", cert);
    tls_connect(a, "new.example.com", client)
        .await
        .expect("new certificate served without reload");
}

/// Parses the first PEM certificate, for comparing served certificates with files.
trait FromPemHelper {
    fn from_pem_slice_helper(pem: &[u8]) -> Vec<u8>;
}

impl FromPemHelper for rustls::pki_types::CertificateDer<'_> {
    fn from_pem_slice_helper(pem: &[u8]) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::pem_slice_iter(pem)
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    }
}

/// A client offering exactly `groups` (by name), on aws-lc-rs, trusting the test CA.
fn client_with_groups(ca: &TestCa, groups: &[rustls::NamedGroup]) -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups.retain(|g| groups.contains(&g.name()));
    assert_eq!(
        provider.kx_groups.len(),
        groups.len(),
        "the provider has them all"
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[tokio::test]
async fn post_quantum_key_exchange_preferred_classic_ones_still_offered() {
    use rustls::NamedGroup;
    let (_dir, ca, _b, lb) = two_cert_lb("intermediate").await;
    let a = addr(&lb, "https");
    // A client like current browsers: the hybrid first, X25519 beside it.
    let browser = client_with_groups(&ca, &[NamedGroup::X25519MLKEM768, NamedGroup::X25519]);
    let tls = tls_connect(a, "api.example.com", browser).await.unwrap();
    assert_eq!(
        tls.get_ref()
            .1
            .negotiated_key_exchange_group()
            .map(|g| g.name()),
        Some(NamedGroup::X25519MLKEM768)
    );
    // Clients without it (OpenSSL 3.0, older browsers) still get X25519 or P-256.
    for g in [NamedGroup::X25519, NamedGroup::secp256r1] {
        let tls = tls_connect(a, "api.example.com", client_with_groups(&ca, &[g]))
            .await
            .unwrap_or_else(|e| panic!("{g:?}: {e}"));
        assert_eq!(
            tls.get_ref()
                .1
                .negotiated_key_exchange_group()
                .map(|k| k.name()),
            Some(g)
        );
    }
}

fn mtls_config(backend: std::net::SocketAddr, client_auth: &str) -> String {
    format!(
        r#"
[[certificate]]
name = "api"
cert_file = "api.crt"
key_file = "api.key"
[[target_group]]
name = "g"
targets = ["{backend}"]
[[listener]]
name = "https"
bind = "127.0.0.1:0"
protocol = "https"
certificates = ["api"]
client_ca_file = "clients-ca.pem"
client_auth = "{client_auth}"
default_action = {{ forward = "g" }}
"#
    )
}

#[tokio::test]
async fn mutual_tls_verifies_clients_and_tells_targets_who_they_are() {
    let dir = TempDir::new("mtls");
    let (server_ca, client_ca, stranger_ca) = (TestCa::new(), TestCa::new(), TestCa::new());
    server_ca.issue(dir.path(), "api", &["api.example.com"]);
    client_ca.issue(dir.path(), "alice", &["alice.clients.example"]);
    stranger_ca.issue(dir.path(), "mallory", &["mallory.example"]);
    std::fs::write(dir.path().join("clients-ca.pem"), client_ca.pem()).unwrap();
    std::fs::write(dir.path().join("server-ca.pem"), server_ca.pem()).unwrap();
    let b = Backend::start("b").await;
    let lb = start_lb(&mtls_config(b.addr, "required"), dir.path()).await;
    let port = addr(&lb, "https").port();
    let p = |f: &str| dir.path().join(f).display().to_string();
    let (resolve, url) = (
        format!("api.example.com:{port}:127.0.0.1"),
        format!("https://api.example.com:{port}/"),
    );
    let base = [
        "--cacert".to_string(),
        p("server-ca.pem"),
        "--resolve".to_string(),
        resolve.clone(),
    ];
    let run = |extra: &[String]| {
        let mut args: Vec<String> = base.to_vec();
        args.extend(extra.iter().cloned());
        args.push(url.clone());
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(&args).await
        }
    };
    let alice = [
        "--cert".to_string(),
        p("alice.crt"),
        "--key".to_string(),
        p("alice.key"),
        "-H".to_string(),
        "X-Portico-Client-Cert-Subject: CN=forged".to_string(),
    ];
    let (code, body, err) = run(&alice).await;
    assert_eq!(code, 0, "{err}");
    assert!(body.contains("backend: b"), "{body}");
    let echoed = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::to_string)
    };
    assert_eq!(
        echoed("x-portico-client-cert-subject").as_deref(),
        Some("CN=alice.clients.example"),
        "the verified subject, not the client's forged header: {body}"
    );
    assert_eq!(
        echoed("x-portico-client-cert-issuer").as_deref(),
        Some("CN=Portico test CA")
    );
    let alice_der = rustls::pki_types::CertificateDer::from_pem_slice_helper(
        std::fs::read_to_string(dir.path().join("alice.crt"))
            .unwrap()
            .as_bytes(),
    );
    let fp = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &alice_der);
    let hex: String = fp.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        echoed("x-portico-client-cert-fingerprint").as_deref(),
        Some(hex.as_str())
    );
    assert!(echoed("x-portico-client-cert-serial").is_some_and(|s| !s.is_empty()));
    assert!(echoed("x-portico-client-cert-leaf")
        .is_some_and(|s| s.starts_with("-----BEGIN%20CERTIFICATE")));

    // Without a certificate, or with one from another CA: the handshake is refused.
    // (With TLS 1.3 the client may learn of the refusal, rustls's `certificate_required`
    // alert, only when it reads: curl then reports the alert or a closed connection.)
    let (code, body, _) = run(&[]).await;
    assert_ne!(code, 0, "no client certificate must be refused");
    assert!(body.is_empty(), "{body}");
    let mallory = [
        "--cert".to_string(),
        p("mallory.crt"),
        "--key".to_string(),
        p("mallory.key"),
    ];
    let (code, body, _) = run(&mallory).await;
    assert_ne!(code, 0, "a certificate of another CA must be refused");
    assert!(body.is_empty(), "{body}");

    // Optional: no certificate is served (and no certificate headers reach the target); an
    // invalid one is still refused.
    apply(&lb, &mtls_config(b.addr, "optional"), dir.path())
        .await
        .unwrap();
    let (code, body, err) = run(&[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!body.contains("x-portico-client-cert-"), "{body}");
    let (code, _, _) = run(&mallory).await;
    assert_ne!(code, 0);
    let (code, body, _) = run(&alice[..4]).await;
    assert_eq!(code, 0);
    assert!(
        body.contains("x-portico-client-cert-subject: CN=alice.clients.example"),
        "{body}"
    );
}

#[tokio::test]
async fn mutual_tls_without_a_readable_ca_file_is_refused_naming_the_key() {
    let dir = TempDir::new("mtls-bad");
    let ca = TestCa::new();
    ca.issue(dir.path(), "api", &["api.example.com"]);
    let lb = portico_lb::LoadBalancer::new(portico_lb::tls::CertStore::new());
    let errs = apply(
        &lb,
        &mtls_config("127.0.0.1:9".parse().unwrap(), "required"),
        dir.path(),
    )
    .await
    .unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.to_string().contains("listener[0].client_ca_file")
                && e.to_string().contains("clients-ca.pem")),
        "{errs:?}"
    );
}

/// Two IP-address certificates on one listener: a client without SNI gets the one for the
/// address it connected to (and verifies it), not the first.
#[tokio::test]
async fn no_sni_gets_the_certificate_for_the_address_connected_to() {
    let dir = TempDir::new("tls-ip");
    let ca = TestCa::new();
    ca.issue(dir.path(), "one", &["127.0.0.1"]);
    ca.issue(dir.path(), "two", &["127.0.0.2"]);
    let b = Backend::start("b").await;
    // Bound to every address so that 127.0.0.1 and 127.0.0.2 reach it; only loopback is dialled.
    let lb = start_lb(
        &format!(
            r#"
[[certificate]]
name = "one"
cert_file = "one.crt"
key_file = "one.key"
[[certificate]]
name = "two"
cert_file = "two.crt"
key_file = "two.key"
[[target_group]]
name = "g"
targets = ["{}"]
[[listener]]
name = "https"
bind = "0.0.0.0:0"
protocol = "https"
certificates = ["one", "two"]
default_action = {{ forward = "g" }}
"#,
            b.addr
        ),
        dir.path(),
    )
    .await;
    let port = addr(&lb, "https").port();
    let mut client = (*ca.client(&[], &[&TLS13])).clone();
    client.enable_sni = false;
    let client = Arc::new(client);
    for (ip, name) in [("127.0.0.1", "one"), ("127.0.0.2", "two")] {
        let a: std::net::SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let tls = tls_connect(a, ip, client.clone())
            .await
            .unwrap_or_else(|e| panic!("{ip}: {e}"));
        let pem = std::fs::read_to_string(dir.path().join(format!("{name}.crt"))).unwrap();
        assert_eq!(
            leaf_cn(&tls),
            rustls::pki_types::CertificateDer::from_pem_slice_helper(pem.as_bytes()),
            "{ip}"
        );
    }
}
