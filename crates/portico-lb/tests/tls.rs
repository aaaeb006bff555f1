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
