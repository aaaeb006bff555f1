//! `portico proxy`: nginx + certbot in one command, against Pebble.

mod common;

use std::time::Duration;

use common::support::*;
use common::*;

/// `portico proxy --domain DOMAIN --to TARGET` on the env's ports against its Pebble, with a
/// state directory of its own (returned).
fn spawn_proxy(
    env: &AcmeEnv,
    domain: &str,
    target: &Backend,
    extra: &[&str],
) -> (Proc, std::path::PathBuf) {
    let d = env.dir.path();
    let state = d.join("proxy-state");
    std::fs::create_dir_all(&state).unwrap();
    let (to, http, https) = (
        target.addr.to_string(),
        env.http.to_string(),
        env.https.to_string(),
    );
    let acme = format!("https://localhost:{}/dir", env.acme);
    let ca = d.join("ca.pem");
    let mut args = vec![
        "proxy",
        "--domain",
        domain,
        "--to",
        &to,
        "--bind",
        "127.0.0.1",
        "--http-port",
        &http,
        "--https-port",
        &https,
        "--acme-dir",
        &acme,
        "--ca-roots",
        ca.to_str().unwrap(),
        "--email",
        "ops@example.test",
        "--state-dir",
        state.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    (Proc::spawn(&args), state)
}

/// `portico proxy` against Pebble: one command obtains the certificate over HTTP-01 (resolving the
/// name through Portico DNS, as Pebble does), redirects HTTP to HTTPS and forwards to the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_obtains_a_certificate_from_pebble_and_serves_the_target() {
    let env = acme_env("", &[("PEBBLE_WFE_NONCEREJECT", "0")], "").await;
    // The name's DNS: a Portico serving only the zone, where Pebble and the self-check ask.
    let _dns = env.dns_only("api").await;
    let target = Backend::start("app-server").await;
    let resolver = format!("127.0.0.1:{}", env.dns);
    let (proxy, state) = spawn_proxy(
        &env,
        "api.example.test",
        &target,
        &["--resolver", &resolver],
    );
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

/// `portico proxy --domain 127.0.0.1`: an IP-address certificate (RFC 8738) from Pebble over
/// HTTP-01, no DNS involved, served to clients that connect by address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_with_an_ip_address_gets_and_serves_an_address_certificate() {
    let env = acme_env("", &[("PEBBLE_WFE_NONCEREJECT", "0")], "").await;
    let target = Backend::start("app-server").await;
    let (proxy, state) = spawn_proxy(&env, "127.0.0.1", &target, &[]);
    wait_file(
        &state.join("certificates/live/127.0.0.1/fullchain.pem"),
        Duration::from_secs(90),
        "portico proxy did not obtain a certificate for the address",
        &proxy,
    )
    .await;
    let client = env.pebble_client().await;
    let a = env.https();
    eventually(
        "HTTPS by address forwards to the target",
        Duration::from_secs(20),
        || {
            let client = client.clone();
            async move {
                send_tls(
                    a,
                    "127.0.0.1",
                    client,
                    request("GET", "127.0.0.1", "/hello"),
                )
                .await
                .is_ok_and(|r| r.status == 200 && r.backend() == "app-server")
            }
        },
    )
    .await;
}
