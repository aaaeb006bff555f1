//! What a rule changes and limits on the way through, over real sockets: header rewrites, Host
//! and path rewrites, rate limits answered 429, and PROXY protocol from a balancer in front.

mod support;

use std::net::IpAddr;

use support::*;

#[tokio::test]
async fn headers_host_and_path_are_rewritten_as_configured() {
    let dir = TempDir::new("rewrite");
    let api = Backend::start("api").await;
    let lb = start_lb(
        &format!(
            r#"
[[target_group]]
name = "api"
targets = ["{api}"]

[[listener]]
name = "l"
bind = "127.0.0.1:0"
protocol = "http"
response_headers = {{ "X-Served-By" = "portico", "X-Frame-Options" = "DENY" }}
request_headers = {{ set = {{ "X-Env" = "prod" }} }}
default_action = {{ forward = "api" }}

[[listener.rule]]
priority = 1
path = ["/api/*"]
action = {{ forward = "api" }}
rewrite = {{ host = "internal.example", path = {{ regex = "^/api/(.*)$", replace = "/v2/$1" }} }}
request_headers = {{ add = {{ "Via" = "1.1 portico" }}, remove = ["X-Debug"] }}
response_headers = {{ set = {{ "Cache-Control" = "no-store" }}, add = {{ "X-Rule" = "api" }}, remove = ["X-Served-By"] }}
"#,
            api = api.addr
        ),
        dir.path(),
    )
    .await;
    let a = addr(&lb, "l");

    let mut req = request("GET", "public.example.com", "/api/users/7?full=1");
    req.headers_mut()
        .insert("x-debug", http::HeaderValue::from_static("1"));
    req.headers_mut()
        .insert("via", http::HeaderValue::from_static("1.1 cdn"));
    let r = send(a, req).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.echoed("path").as_deref(),
        Some("/v2/users/7"),
        "{}",
        r.body
    );
    assert_eq!(r.echoed("query").as_deref(), Some("full=1"));
    assert_eq!(r.echoed("host").as_deref(), Some("internal.example"));
    assert_eq!(r.echoed("x-env").as_deref(), Some("prod"), "listener's set");
    assert_eq!(r.echoed("x-debug"), None, "removed");
    let via: Vec<&str> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("via: "))
        .collect();
    assert_eq!(via, ["1.1 cdn", "1.1 portico"], "added after the client's");
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_eq!(r.headers["x-rule"], "api");
    assert_eq!(r.headers["x-frame-options"], "DENY", "listener's set stays");
    assert!(
        !r.headers.contains_key("x-served-by"),
        "the rule's remove runs after the listener's set"
    );

    // Outside the rule: no rewrite, the listener's own changes only.
    let r = get(a, "public.example.com", "/api").await;
    assert_eq!(r.echoed("path").as_deref(), Some("/api"));
    assert_eq!(r.echoed("host").as_deref(), Some("public.example.com"));
    assert_eq!(r.headers["x-served-by"], "portico");
}

#[tokio::test]
async fn a_rewrite_on_a_redirect_or_a_bad_regex_is_refused_naming_the_key() {
    let dir = TempDir::new("rewrite-bad");
    let lb = portico_lb::LoadBalancer::new(portico_lb::tls::CertStore::new());
    let errs = apply(
        &lb,
        r#"
[[listener]]
name = "l"
bind = "127.0.0.1:0"
protocol = "http"
default_action = { fixed_response = { status = 200 } }

[[listener.rule]]
priority = 1
path = ["/old"]
action = { redirect = { path = "/new" } }
rewrite = { host = "x.example" }

[[listener.rule]]
priority = 2
path = ["/api/*"]
action = { fixed_response = { status = 200 } }
rate_limit = { requests_per_second = 5, key = "cookie" }
"#,
        dir.path(),
    )
    .await
    .unwrap_err();
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert!(
        text.iter()
            .any(|e| e.contains("rule[0].rewrite") && e.contains("forward actions only")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|e| e.contains("rule[1].rate_limit") && e.contains("header:")),
        "{text:?}"
    );
}

#[tokio::test]
async fn a_rate_limit_answers_429_with_retry_after_per_client_and_per_header() {
    let dir = TempDir::new("ratelimit");
    let api = Backend::start("api").await;
    let lb = start_lb(
        &format!(
            r#"
[[target_group]]
name = "api"
targets = ["{api}"]

[[listener]]
name = "l"
bind = "127.0.0.1:0"
protocol = "http"
default_action = {{ forward = "api" }}

[[listener.rule]]
priority = 1
path = ["/login"]
action = {{ forward = "api" }}
rate_limit = {{ requests_per_second = 0.2, burst = 3 }}

[[listener.rule]]
priority = 2
path = ["/v1/*"]
action = {{ forward = "api" }}
rate_limit = {{ requests_per_second = 0.2, burst = 2, key = "header:X-Api-Key" }}
"#,
            api = api.addr
        ),
        dir.path(),
    )
    .await;
    let a = addr(&lb, "l");
    for i in 0..3 {
        assert_eq!(get(a, "x", "/login").await.status, 200, "request {i}");
    }
    let r = get(a, "x", "/login").await;
    assert_eq!(r.status, 429, "{r:?}");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "Retry-After {retry}");
    // The same client from another address has its own bucket.
    let other = raw_request("127.0.0.2".parse().unwrap(), a, b"", "/login")
        .await
        .unwrap();
    assert_eq!(other.status, 200, "{other:?}");
    // Other paths are not limited.
    assert_eq!(get(a, "x", "/").await.status, 200);

    let keyed = |key: &'static str| {
        let mut r = request("GET", "x", "/v1/items");
        r.headers_mut()
            .insert("x-api-key", http::HeaderValue::from_static(key));
        r
    };
    for _ in 0..2 {
        assert_eq!(send(a, keyed("alice")).await.unwrap().status, 200);
    }
    assert_eq!(send(a, keyed("alice")).await.unwrap().status, 429);
    assert_eq!(send(a, keyed("bob")).await.unwrap().status, 200);

    let hits_before = api.hits.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(get(a, "x", "/login").await.status, 429);
    assert_eq!(
        api.hits.load(std::sync::atomic::Ordering::Relaxed),
        hits_before,
        "a limited request never reaches the target"
    );
    let mut metrics = String::new();
    lb.render_metrics(&mut metrics);
    assert!(
        metrics.contains("portico_http_rate_limited_total{listener=\"l\",rule=\"1\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portico_http_rate_limited_total{listener=\"l\",rule=\"2\"} 1"),
        "{metrics}"
    );
}

/// A PROXY protocol v2 header (PROXY command, TCP over IPv4) naming `src` as the client.
fn proxy_v2(src: std::net::SocketAddrV4, dst: std::net::SocketAddrV4) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(0x11); // AF_INET, STREAM
    h.extend_from_slice(&12u16.to_be_bytes());
    h.extend_from_slice(&src.ip().octets());
    h.extend_from_slice(&dst.ip().octets());
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

#[tokio::test]
async fn proxy_protocol_from_a_trusted_balancer_gives_the_real_client_and_is_refused_from_others() {
    let dir = TempDir::new("proxyproto");
    let api = Backend::start("api").await;
    let log = dir.path().join("access.json");
    let lb = start_lb(
        &format!(
            r#"
[[target_group]]
name = "api"
targets = ["{api}"]

[[listener]]
name = "l"
bind = "127.0.0.1:0"
protocol = "http"
proxy_protocol = true
proxy_protocol_from = ["127.0.0.2/32"]
deny = ["198.51.100.0/24"]
access_log = {{ path = "{log}", format = "json" }}
default_action = {{ forward = "api" }}
"#,
            api = api.addr,
            log = log.display()
        ),
        dir.path(),
    )
    .await;
    let a = addr(&lb, "l");
    let balancer: IpAddr = "127.0.0.2".parse().unwrap();
    let direct: IpAddr = "127.0.0.1".parse().unwrap();
    let dst = "10.0.0.5:80".parse().unwrap();

    let r = raw_request(
        balancer,
        a,
        &proxy_v2("203.0.113.9:5555".parse().unwrap(), dst),
        "/v2",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echoed("x-forwarded-for").as_deref(), Some("203.0.113.9"));

    let r = raw_request(
        balancer,
        a,
        b"PROXY TCP4 192.0.2.44 10.0.0.5 40000 80\r\n",
        "/v1",
    )
    .await
    .unwrap();
    assert_eq!(r.echoed("x-forwarded-for").as_deref(), Some("192.0.2.44"));

    // Security-group rules apply to the client the header names.
    let denied = raw_request(
        balancer,
        a,
        &proxy_v2("198.51.100.7:1".parse().unwrap(), dst),
        "/denied",
    )
    .await;
    assert!(denied.is_err(), "{denied:?}");
    // The trusted balancer must send the header.
    assert!(raw_request(balancer, a, b"", "/none").await.is_err());
    // Anyone else sending a header is closed on; without one, served as itself.
    let forged = raw_request(
        direct,
        a,
        &proxy_v2("203.0.113.9:5555".parse().unwrap(), dst),
        "/forged",
    )
    .await;
    assert!(forged.is_err(), "{forged:?}");
    let plain = raw_request(direct, a, b"", "/plain").await.unwrap();
    assert_eq!(
        plain.echoed("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );

    eventually(
        "the access log names the real clients",
        std::time::Duration::from_secs(10),
        || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let clients: Vec<(String, String)> = text
                    .lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .map(|v| {
                        (
                            v["uri"].as_str().unwrap_or("").to_string(),
                            v["client"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect();
                clients.contains(&("/v2".into(), "203.0.113.9".into()))
                    && clients.contains(&("/v1".into(), "192.0.2.44".into()))
                    && clients.contains(&("/plain".into(), "127.0.0.1".into()))
                    && !clients
                        .iter()
                        .any(|(u, _)| u == "/forged" || u == "/denied" || u == "/none")
            }
        },
    )
    .await;
}

#[tokio::test]
async fn responses_are_compressed_as_the_client_accepts_and_curl_decodes_them() {
    let dir = TempDir::new("compress");
    let app = Backend::start("app").await;
    let lb = start_lb(
        &format!(
            r#"
[[target_group]]
name = "app"
targets = ["{app}"]

[[listener]]
name = "l"
bind = "127.0.0.1:0"
protocol = "http"
compress = {{ min_bytes = 1000 }}
default_action = {{ forward = "app" }}
"#,
            app = app.addr
        ),
        dir.path(),
    )
    .await;
    let url = |path: &str| format!("http://{}{path}", addr(&lb, "l"));
    let expected: String = "Portico compresses what repeats. "
        .chars()
        .cycle()
        .take(200_000)
        .collect();
    // (encoding the client asks for, the one Portico answers with)
    for (accept, answered) in [
        ("gzip", Some("gzip")),
        ("br", Some("br")),
        ("zstd", Some("zstd")),
        ("gzip, deflate, br, zstd", Some("zstd")),
        ("identity", None),
    ] {
        let (code, out, err) = curl(&[
            "--compressed",
            "-H",
            &format!("Accept-Encoding: {accept}"),
            "-D",
            "-",
            "-w",
            "\nDOWNLOADED %{size_download}",
            &url("/page?bytes=200000"),
        ])
        .await;
        assert_eq!(code, 0, "{err}");
        let (head, rest) = out.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        let (body, downloaded) = rest.rsplit_once("\nDOWNLOADED ").unwrap();
        let downloaded: usize = downloaded.trim().parse().unwrap();
        assert_eq!(
            body, expected,
            "curl decodes what Portico encoded ({accept})"
        );
        match answered {
            Some(enc) => {
                assert!(
                    head.contains(&format!("content-encoding: {enc}")),
                    "{accept}: {head}"
                );
                assert!(
                    downloaded < 20_000,
                    "{accept}: {downloaded} bytes on the wire"
                );
                assert!(
                    head.contains("etag: w/\"v1\""),
                    "the validator is weakened: {head}"
                );
            }
            None => {
                assert!(!head.contains("content-encoding"), "{head}");
                assert_eq!(downloaded, 200_000);
            }
        }
        assert!(head.contains("vary: accept-encoding"), "{head}");
    }
    // Too short, or a type not compressed: sent as it is.
    for path in ["/page?bytes=500", "/page?bytes=5000&type=image%2Fpng"] {
        let (code, out, _) =
            curl(&["--compressed", "-D", "-", "-o", "/dev/null", &url(path)]).await;
        assert_eq!(code, 0);
        assert!(
            !out.to_ascii_lowercase().contains("content-encoding"),
            "{path}: {out}"
        );
    }
}
