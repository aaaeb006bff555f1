//! The admin API, its CLI and `/metrics` against a real `portico serve`, with `dig` as the DNS
//! client; and the web console driven in Debian's headless Chromium through ChromeDriver.
//!
//! Over 600 lines on purpose: each test builds its whole case (real CA, DNS, processes) end to
//! end and asserts the journey step by step; the shared set-up is in tests/common.

#[path = "admin/browser.rs"]
mod browser;
mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::{json, Value};

use common::admin::*;
use common::support::{self, eventually, get, Backend, TempDir};
use common::{free_port, run, Proc};

/// `name{labels} value` from a Prometheus text page (0 when absent).
fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// (method, path) of every operation the OpenAPI document lists.
fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

/// Route paths as the router in crates/portico-admin/src/lib.rs declares them (`.route("…"`).
fn routed_paths() -> BTreeSet<String> {
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../portico-admin/src/lib.rs"),
    )
    .unwrap();
    let mut out = BTreeSet::new();
    let mut rest = src.as_str();
    while let Some(i) = rest.find(".route(") {
        rest = &rest[i + ".route(".len()..];
        let start = rest.find('"').unwrap() + 1;
        let end = start + rest[start..].find('"').unwrap();
        out.insert(rest[start..end].to_string());
    }
    out.remove("/");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_every_route_auth_errors_dns_targets_metrics_and_restart() {
    let env = AdminEnv::start("admin-api").await;

    // The OpenAPI document is served, and it lists exactly the routes the router has.
    let (status, doc) = env.call("GET", "/api/openapi.json", None).await;
    assert_eq!(status, 200);
    let routes = documented_routes(&doc);
    let doc_paths: BTreeSet<String> = routes.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(doc_paths, routed_paths(), "OpenAPI paths vs router");

    // Without the token (or with a wrong one) every route answers 401.
    for (method, path) in &routes {
        let p = path
            .replace("{zone}", "example.test")
            .replace("{address}", "127.0.0.1:1")
            .replace(['{', '}'], "");
        let (s, body) = call(env.admin, None, method, &p, None).await;
        assert_eq!(s, 401, "{method} {p} without a token: {body}");
        let (s, _) = call(env.admin, Some("wrong"), method, &p, None).await;
        assert_eq!(s, 401, "{method} {p} with a wrong token");
    }
    // The console page itself loads without a token (it asks for one).
    let page = get(env.admin, "x", "/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Admin token"), "{}", page.body);

    // A change batch through the API, answered by DNS.
    let (s, change) = env
        .call(
            "POST",
            "/api/v1/zones/example.test/changes",
            Some(json!({"changes": [
                {"action": "UPSERT", "name": "api", "type": "A", "values": ["192.0.2.7"]},
                {"action": "CREATE", "name": "_acme-challenge.api", "type": "TXT", "values": ["\"hello\""]}
            ]})),
        )
        .await;
    assert_eq!(s, 200, "{change}");
    assert_eq!(change["status"], "INSYNC");
    assert_eq!(env.dig("api.example.test", "A"), "192.0.2.7");
    assert_eq!(
        env.dig("_acme-challenge.api.example.test", "TXT"),
        "\"hello\""
    );
    let id = change["id"].as_str().unwrap().to_string();
    let (s, c) = env
        .call("GET", &format!("/api/v1/changes/{id}"), None)
        .await;
    assert_eq!((s, c["status"].as_str()), (200, Some("INSYNC")), "{c}");
    let (s, z) = env.call("GET", "/api/v1/zones/example.test", None).await;
    assert_eq!(s, 200);
    assert!(
        z["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "api.example.test." && r["values"][0] == "192.0.2.7"),
        "{z}"
    );
    let (s, text) = env
        .call("GET", "/api/v1/zones/example.test/export", None)
        .await;
    assert_eq!(s, 200);
    assert!(text.as_str().unwrap().contains("192.0.2.7"), "{text}");

    // Bad input: a clear 4xx with a reason.
    for (method, path, body, want, says) in [
        (
            "POST",
            "/api/v1/zones/example.test/changes",
            json!({"changes": [{"action": "CREATE", "name": "api", "type": "A", "values": ["192.0.2.8"]}]}),
            400,
            "already exists",
        ),
        (
            "POST",
            "/api/v1/zones/example.test/changes",
            json!({"changes": [{"action": "UPSERT", "name": "x", "type": "A", "values": ["not-an-ip"]}]}),
            400,
            "not-an-ip",
        ),
        (
            "POST",
            "/api/v1/zones/example.test/changes",
            json!({"changez": []}),
            400,
            "changez",
        ),
        (
            "POST",
            "/api/v1/zones/nowhere.test/changes",
            json!({"changes": [{"action": "UPSERT", "name": "x", "type": "A", "values": ["192.0.2.1"]}]}),
            404,
            "no hosted zone",
        ),
        ("GET", "/api/v1/changes/NOPE", Value::Null, 404, "no change"),
        (
            "POST",
            "/api/v1/target-groups/nope/targets",
            json!({"targets": [{"address": "127.0.0.1:1"}]}),
            404,
            "no target group",
        ),
        (
            "POST",
            "/api/v1/target-groups/web/targets",
            json!({"targets": []}),
            400,
            "no targets",
        ),
        (
            "DELETE",
            "/api/v1/target-groups/web/targets/127.0.0.1:9",
            Value::Null,
            404,
            "not registered",
        ),
        (
            "POST",
            "/api/v1/certificates",
            json!({"name": "x", "domains": ["bad domain!"], "issuer": "internal"}),
            400,
            "bad domain!",
        ),
        (
            "PUT",
            "/api/v1/listeners/extra",
            json!({"bind": "127.0.0.1:1", "protocol": "gopher", "default_action": {"fixed_response": {"status": 200}}}),
            400,
            "gopher",
        ),
        (
            "PUT",
            "/api/v1/listeners/http",
            json!({"bind": "127.0.0.1:1", "protocol": "http", "default_action": {"fixed_response": {"status": 200}}}),
            409,
            "declared in the config file",
        ),
        (
            "DELETE",
            "/api/v1/certificates/none",
            Value::Null,
            404,
            "no certificate",
        ),
        (
            "POST",
            "/api/v1/certificates/none/renew",
            Value::Null,
            404,
            "no certificate",
        ),
        (
            "GET",
            "/api/v1/no-such-thing",
            Value::Null,
            404,
            "no such route",
        ),
    ] {
        let body = (!body.is_null()).then_some(body);
        let (s, v) = env.call(method, path, body).await;
        assert_eq!(s, want, "{method} {path}: {v}");
        assert!(
            v["error"].as_str().unwrap_or("").contains(says),
            "{method} {path}: {v}"
        );
    }
    // The refused changes changed nothing.
    assert_eq!(env.dig("x.example.test", "A"), "");

    // Target registration reaches the load balancer without a reload.
    let backend = Backend::start("b1").await;
    let r = get(SocketAddr::from(([127, 0, 0, 1], env.http)), "x", "/").await;
    assert_eq!(r.status, 503, "no target yet: {}", r.body);
    let (s, g) = env
        .call(
            "POST",
            "/api/v1/target-groups/web/targets",
            Some(json!({"targets": [{"address": backend.addr.to_string()}]})),
        )
        .await;
    assert_eq!(s, 200, "{g}");
    assert_eq!(g["targets"][0]["registered_by"], "api");
    let lb = SocketAddr::from(([127, 0, 0, 1], env.http));
    let (s, m0) = env.call("GET", "/metrics", None).await;
    assert_eq!(s, 200);
    let before = metric(
        m0.as_str().unwrap(),
        "portico_http_requests_total{listener=\"http\",class=\"2xx\"}",
    );
    for _ in 0..5 {
        let r = get(lb, "x", "/").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.backend(), "b1");
    }
    let (_, g) = env.call("GET", "/api/v1/target-groups/web", None).await;
    assert_eq!(g["targets"][0]["state"], "healthy", "{g}");
    // Its settings, as an ALB lists a target group's attributes (the config's defaults here).
    let a = &g["attributes"];
    assert_eq!(a["protocol"], "http", "{g}");
    assert_eq!(a["protocol_version"], "http1", "{g}");
    assert_eq!(a["deregistration_delay_seconds"], 300, "{g}");
    assert!(
        a["stickiness"].is_null() && a["slow_start_seconds"].is_null(),
        "{g}"
    );

    // Metrics move with traffic.
    let (_, m1) = env.call("GET", "/metrics", None).await;
    let m1 = m1.as_str().unwrap();
    let after = metric(
        m1,
        "portico_http_requests_total{listener=\"http\",class=\"2xx\"}",
    );
    assert_eq!(after - before, 5.0, "{m1}");
    let t = format!(
        "portico_target_requests_total{{target_group=\"web\",target=\"{}\",class=\"2xx\"}}",
        backend.addr
    );
    assert!(metric(m1, &t) >= 5.0, "{m1}");
    assert!(
        metric(
            m1,
            "portico_http_request_duration_seconds_count{listener=\"http\"}"
        ) >= 6.0,
        "{m1}"
    );
    assert!(
        metric(
            m1,
            &format!(
                "portico_target_healthy{{target_group=\"web\",target=\"{}\",state=\"healthy\"}}",
                backend.addr
            )
        ) == 1.0,
        "{m1}"
    );
    let dns_before = metric(
        m1,
        "portico_dns_queries_total{zone=\"example.test.\",rcode=\"NOERROR\"}",
    );
    assert!(dns_before >= 2.0, "{m1}");
    env.dig("api.example.test", "A");
    env.dig("nothing.example.test", "A");
    let (_, m2) = env.call("GET", "/metrics", None).await;
    let m2 = m2.as_str().unwrap();
    assert_eq!(
        metric(
            m2,
            "portico_dns_queries_total{zone=\"example.test.\",rcode=\"NOERROR\"}"
        ),
        dns_before + 1.0,
        "{m2}"
    );
    assert!(
        metric(
            m2,
            "portico_dns_queries_total{zone=\"example.test.\",rcode=\"NXDOMAIN\"}"
        ) >= 1.0,
        "{m2}"
    );

    // A certificate requested through the API (internal CA), and a listener created there.
    let (s, c) = env
        .call(
            "POST",
            "/api/v1/certificates",
            Some(
                json!({"name": "api-cert", "domains": ["app.example.test"], "issuer": "internal"}),
            ),
        )
        .await;
    assert_eq!(s, 202, "{c}");
    let admin = env.admin;
    let token = env.token.clone();
    eventually("api-cert ISSUED", Duration::from_secs(30), || {
        let token = token.clone();
        async move {
            let (_, c) = call(
                admin,
                Some(&token),
                "GET",
                "/api/v1/certificates/api-cert",
                None,
            )
            .await;
            c["status"] == "ISSUED"
        }
    })
    .await;
    let (s, dup) = env
        .call(
            "POST",
            "/api/v1/certificates",
            Some(
                json!({"name": "api-cert", "domains": ["app.example.test"], "issuer": "internal"}),
            ),
        )
        .await;
    assert_eq!(s, 409, "{dup}");
    let (_, m) = env.call("GET", "/metrics", None).await;
    let left = metric(
        m.as_str().unwrap(),
        "portico_certificate_expiry_seconds{certificate=\"api-cert\"}",
    );
    assert!(
        left > 86_400.0 && left < 400.0 * 86_400.0,
        "seconds until the issued certificate expires: {left}"
    );
    let extra = free_port();
    let (s, l) = env
        .call(
            "PUT",
            "/api/v1/listeners/extra",
            Some(json!({
                "bind": format!("127.0.0.1:{extra}"),
                "protocol": "http",
                "default_action": {"fixed_response": {"status": 200, "body": "from-api"}},
            })),
        )
        .await;
    assert_eq!(s, 200, "{l}");
    assert_eq!(l["source"], "api");
    let r = get(SocketAddr::from(([127, 0, 0, 1], extra)), "x", "/").await;
    assert_eq!(r.body, "from-api");

    // The CLI on top of the API: tables by default, JSON with --json.
    let cfg = env.config.to_str().unwrap();
    let (code, out) = run(&[
        "records",
        "upsert",
        "--zone",
        "example.test",
        "--name",
        "cli",
        "--type",
        "A",
        "--value",
        "192.0.2.9",
        "-c",
        cfg,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("INSYNC"), "{out}");
    assert_eq!(env.dig("cli.example.test", "A"), "192.0.2.9");
    let (code, out) = run(&["records", "list", "--zone", "example.test", "-c", cfg]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("cli.example.test.") && out.contains("192.0.2.9"),
        "{out}"
    );
    let (code, out) = run(&["targets", "list", "-c", cfg]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&backend.addr.to_string()) && out.contains("healthy"),
        "{out}"
    );
    // certs request follows the order to its end; an RSA key from the internal CA.
    let (code, out) = run(&[
        "certs",
        "request",
        "cli-cert",
        "--domain",
        "cli.example.test",
        "--issuer",
        "internal",
        "--key-type",
        "rsa",
        "-c",
        cfg,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("cli-cert: issued for cli.example.test"),
        "{out}"
    );
    let key = std::fs::read_to_string(
        env.dir
            .path()
            .join("state/certificates/live/cli-cert/privkey.pem"),
    )
    .unwrap();
    assert!(key.contains("BEGIN PRIVATE KEY"), "PKCS#8");
    let (code, out) = run(&["certs", "delete", "cli-cert", "-c", cfg]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&[
        "certs",
        "request",
        "bad",
        "--domain",
        "x.example.test",
        "--key-type",
        "rsa",
        "--rsa-key-size",
        "1024",
        "-c",
        cfg,
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("2048, 3072 or 4096"), "{out}");
    // certs and zones read the running server through the API (`source` is the API's field).
    let (code, out) = run(&["certs", "list", "--json", "-c", cfg]);
    assert_eq!(code, 0, "{out}");
    let certs: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(certs[0]["source"], "api", "{out}");
    let (code, out) = run(&["certs", "show", "api-cert", "-c", cfg]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("status:      ISSUED"), "{out}");
    let (code, out) = run(&["zones", "export", "example.test", "-c", cfg]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("192.0.2.9"), "{out}");
    let (code, out) = run(&["listeners", "list", "--json", "-c", cfg]);
    assert_eq!(code, 0, "{out}");
    let ls: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ls.as_array().unwrap().len(), 2, "{out}");
    let (code, out) = run(&[
        "records",
        "create",
        "--zone",
        "example.test",
        "--name",
        "cli",
        "--type",
        "A",
        "--value",
        "192.0.2.10",
        "-c",
        cfg,
    ]);
    assert_eq!(code, 1);
    assert!(
        out.contains("already exists") && out.contains("hint:"),
        "{out}"
    );
    let (code, out) = run(&[
        "targets",
        "list",
        "--admin",
        &format!("http://{}", env.admin),
        "--token",
        "wrong",
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("401"), "{out}");

    // A reload keeps what the API made; a config that clashes with it is refused, naming both.
    let (s, v) = env.call("POST", "/api/v1/reload", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        get(SocketAddr::from(([127, 0, 0, 1], extra)), "x", "/")
            .await
            .body,
        "from-api"
    );
    assert_eq!(get(lb, "x", "/").await.backend(), "b1");
    let clash = format!(
        "{}[[listener]]\nname = \"extra\"\nbind = \"127.0.0.1:{}\"\nprotocol = \"http\"\ndefault_action = {{ fixed_response = {{ status = 204 }} }}\n",
        admin_config(env.dir.path(), env.http, env.dns),
        free_port()
    );
    std::fs::write(&env.config, clash).unwrap();
    let (s, v) = env.call("POST", "/api/v1/reload", None).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("\"extra\""), "{v}");
    assert_eq!(
        get(SocketAddr::from(([127, 0, 0, 1], extra)), "x", "/")
            .await
            .body,
        "from-api"
    );
    std::fs::write(&env.config, admin_config(env.dir.path(), env.http, env.dns)).unwrap();

    // Deregistration drains: the request in flight finishes, no new request reaches the target.
    let slow = tokio::spawn(async move { get(lb, "x", "/slow?ms=3000").await });
    let (admin, token) = (env.admin, env.token.clone());
    eventually(
        "the slow request in flight",
        Duration::from_secs(10),
        || {
            let token = token.clone();
            async move {
                let (_, g) = call(
                    admin,
                    Some(&token),
                    "GET",
                    "/api/v1/target-groups/web",
                    None,
                )
                .await;
                g["targets"][0]["in_flight"] == 1
            }
        },
    )
    .await;
    let (s, g) = env
        .call(
            "DELETE",
            &format!("/api/v1/target-groups/web/targets/{}", backend.addr),
            None,
        )
        .await;
    assert_eq!(s, 200, "{g}");
    assert_eq!(g["targets"][0]["state"], "draining", "{g}");
    assert_eq!(g["targets"][0]["in_flight"], 1, "{g}");
    assert_eq!(get(lb, "x", "/").await.status, 503);
    let finished = slow.await.unwrap();
    assert_eq!((finished.status, finished.backend().as_str()), (200, "b1"));
    let (_, g) = env.call("GET", "/api/v1/target-groups/web", None).await;
    assert_eq!(g["targets"], json!([]), "drained and gone: {g}");
    let (s, g) = env
        .call(
            "POST",
            "/api/v1/target-groups/web/targets",
            Some(json!({"targets": [{"address": backend.addr.to_string()}]})),
        )
        .await;
    assert_eq!(s, 200, "{g}");

    // Everything made through the API survives a restart, and the certificate is not re-ordered.
    let (_, before_cert) = env.call("GET", "/api/v1/certificates/api-cert", None).await;
    let AdminEnv {
        dir,
        config,
        mut server,
        ..
    } = env;
    server.signal(libc::SIGTERM);
    assert_eq!(
        server.wait_exit(Duration::from_secs(20)),
        0,
        "{}",
        server.output()
    );
    let (_server, admin, token) = serve(&config, dir.path()).await;
    let (_, c) = call(
        admin,
        Some(&token),
        "GET",
        "/api/v1/certificates/api-cert",
        None,
    )
    .await;
    assert_eq!(c["status"], "ISSUED", "{c}");
    assert_eq!(c["version"], before_cert["version"], "not re-ordered: {c}");
    assert_eq!(
        dig(extra_dns(&config), "api.example.test", "A"),
        "192.0.2.7"
    );
    assert_eq!(
        dig(extra_dns(&config), "cli.example.test", "A"),
        "192.0.2.9"
    );
    let lb_port = lb.port();
    eventually(
        "the registered target serves after restart",
        Duration::from_secs(20),
        || async move {
            get(SocketAddr::from(([127, 0, 0, 1], lb_port)), "x", "/")
                .await
                .backend()
                == "b1"
        },
    )
    .await;
    eventually(
        "the API's listener serves after restart",
        Duration::from_secs(20),
        || async move {
            support::send(
                SocketAddr::from(([127, 0, 0, 1], extra)),
                support::request("GET", "x", "/"),
            )
            .await
            .is_ok_and(|r| r.body == "from-api")
        },
    )
    .await;
    let (_, c) = call(
        admin,
        Some(&token),
        "DELETE",
        "/api/v1/certificates/api-cert",
        None,
    )
    .await;
    assert_eq!(c["deleted"], "api-cert", "{c}");
    drop(backend);
}

/// The DNS port written in a config made by `admin_config`.
fn extra_dns(config: &Path) -> u16 {
    let text = std::fs::read_to_string(config).unwrap();
    let i = text.find("listen = [\"127.0.0.1:").unwrap() + "listen = [\"127.0.0.1:".len();
    text[i..].split('"').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_on_a_public_address_needs_tls_and_serves_it() {
    let dir = TempDir::new("admin-public");
    let config = dir.path().join("portico.toml");
    let state = dir.path().join("state");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[admin]\nlisten = \"0.0.0.0:0\"\n",
            state.display()
        ),
    )
    .unwrap();
    let (code, out) = run(&["check", "-c", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("admin.listen") && out.contains("in clear") && out.contains(":3:"),
        "{out}"
    );

    // With cert_file and key_file it serves HTTPS.
    let ca = support::TestCa::new();
    ca.issue(dir.path(), "admin", &["localhost"]);
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[admin]\nlisten = \"0.0.0.0:0\"\ncert_file = \"admin.crt\"\nkey_file = \"admin.key\"\n",
            state.display()
        ),
    )
    .unwrap();
    let server = Proc::spawn(&["serve", "-c", config.to_str().unwrap()]);
    let url_file = state.join("admin.url");
    let f = url_file.clone();
    eventually("the admin API's URL file", Duration::from_secs(30), || {
        let exists = f.exists();
        async move { exists }
    })
    .await;
    let url = std::fs::read_to_string(&url_file).unwrap();
    let port: u16 = url.trim().rsplit(':').next().unwrap().parse().unwrap();
    assert!(url.starts_with("https://"), "{url}");
    let token = std::fs::read_to_string(state.join("admin.token")).unwrap();
    let mode = std::fs::metadata(state.join("admin.token")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    let client = ca.client(&[b"http/1.1"], &[&rustls::version::TLS13]);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let req = hyper::Request::builder()
        .uri("/api/v1/zones")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {}", token.trim()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = support::send_tls(addr, "localhost", client.clone(), req)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.output()));
    assert_eq!((r.status, r.body.as_str()), (200, "[]"));
    let req = hyper::Request::builder()
        .uri("/metrics")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = support::send_tls(addr, "localhost", client, req)
        .await
        .unwrap();
    assert_eq!(r.status, 401);
}
