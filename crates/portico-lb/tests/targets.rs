//! Target groups that are not plain HTTP/1.1: HTTPS targets (verified against a test CA, a wrong
//! name refused, `verify = false`), health checks over TLS, and gRPC over HTTP/2 to a real gRPC
//! server (Debian's python3-grpcio) with TLS on the listener and h2c to the target.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test]
async fn https_targets_are_verified_by_name_and_checked_over_tls() {
    let dir = TempDir::new("https-targets");
    let ca = TestCa::new();
    let (cert, key) = ca.issue(dir.path(), "app", &["app.internal"]);
    std::fs::write(dir.path().join("targets-ca.pem"), ca.pem()).unwrap();
    let app = Backend::start_tls("app", &cert, &key).await;
    let lb = start_lb(
        &format!(
            r#"
[[target_group]]
name = "good"
protocol = "https"
ca_file = "targets-ca.pem"
server_name = "app.internal"
targets = ["{app}"]
[target_group.health_check]
path = "/health"
interval = "1s"
timeout = "500ms"
healthy_threshold = 1
unhealthy_threshold = 1

[[target_group]]
name = "wrong"
protocol = "https"
ca_file = "targets-ca.pem"
server_name = "other.internal"
targets = ["{app}"]
[target_group.health_check]
path = "/health"
interval = "1s"
timeout = "500ms"
healthy_threshold = 1
unhealthy_threshold = 1

[[target_group]]
name = "unverified"
protocol = "https"
verify = false
targets = ["{app}"]

[[listener]]
name = "l"
bind = "127.0.0.1:0"
protocol = "http"
default_action = {{ forward = "good" }}
[[listener.rule]]
priority = 1
path = ["/wrong"]
action = {{ forward = "wrong" }}
[[listener.rule]]
priority = 2
path = ["/unverified"]
action = {{ forward = "unverified" }}
"#,
            app = app.addr
        ),
        dir.path(),
    )
    .await;
    let a = addr(&lb, "l");
    let r = get(a, "shop.example.com", "/orders").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.backend(), "app");
    assert_eq!(r.echoed("host").as_deref(), Some("shop.example.com"));
    assert_eq!(r.echoed("x-forwarded-proto").as_deref(), Some("http"));
    // Keep-alive over TLS: the second request reuses the first's connection.
    let before = app.accepted.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..5 {
        assert_eq!(get(a, "x", "/").await.status, 200);
    }
    let after = app.accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        after - before <= 1,
        "{} new TLS connections for 5 requests",
        after - before
    );

    let r = get(a, "x", "/wrong").await;
    assert_eq!(
        r.status, 502,
        "a certificate for another name is refused: {r:?}"
    );
    assert_eq!(get(a, "x", "/unverified").await.status, 200);

    eventually(
        "the health checks pass over TLS and fail on the wrong name",
        Duration::from_secs(20),
        || async {
            let good = lb.target_health("good");
            let wrong = lb.target_health("wrong");
            good.iter().all(|t| t.healthy)
                && wrong
                    .iter()
                    .all(|t| !t.healthy && t.reason.contains("certificate"))
        },
    )
    .await;
}

#[tokio::test]
async fn grpc_calls_stream_both_ways_and_health_follows_the_grpc_health_service() {
    let dir = TempDir::new("grpc");
    let ca = TestCa::new();
    ca.issue(dir.path(), "api", &["api.example.com"]);
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let mut peer = GrpcPeer::start().await;
    let lb = start_lb(
        &format!(
            r#"
[[certificate]]
name = "api"
cert_file = "api.crt"
key_file = "api.key"

[[target_group]]
name = "grpc"
protocol_version = "grpc"
targets = ["{peer}"]
[target_group.health_check]
interval = "1s"
timeout = "900ms"
healthy_threshold = 1
unhealthy_threshold = 1

[[listener]]
name = "https"
bind = "127.0.0.1:0"
protocol = "https"
certificates = ["api"]
default_action = {{ forward = "grpc" }}
"#,
            peer = peer.addr
        ),
        dir.path(),
    )
    .await;
    let a = addr(&lb, "https").to_string();
    let ca_pem = dir.path().join("ca.pem").display().to_string();
    let out = grpc_client(&["client", &a, &ca_pem, "api.example.com"]).await;
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["say"], "olleh", "unary call: {v}");
    assert_eq!(v["trailer"], "5", "trailers pass through: {v}");
    assert_eq!(
        v["chat"],
        serde_json::json!(["ONE", "TWO", "THREE"]),
        "bidirectional stream: {v}"
    );
    assert_eq!(v["fail_code"], "PERMISSION_DENIED", "grpc-status kept: {v}");
    assert_eq!(v["fail_details"], "no entry");

    // The gRPC health service says NOT_SERVING: the target leaves rotation; back again.
    let direct = peer.addr.to_string();
    eventually("the target is healthy", Duration::from_secs(20), || async {
        lb.target_health("grpc").iter().all(|t| t.healthy)
    })
    .await;
    grpc_client(&["serving", &direct, "0"]).await;
    eventually(
        "NOT_SERVING takes the target out",
        Duration::from_secs(20),
        || async {
            lb.target_health("grpc")
                .iter()
                .all(|t| !t.healthy && t.reason.contains("NOT_SERVING"))
        },
    )
    .await;
    grpc_client(&["serving", &direct, "1"]).await;
    eventually(
        "SERVING brings it back",
        Duration::from_secs(20),
        || async { lb.target_health("grpc").iter().all(|t| t.healthy) },
    )
    .await;

    // No target answers: a gRPC error the client can read, not an HTML page.
    peer.kill().await;
    let out = grpc_client(&["client", &a, &ca_pem, "api.example.com"]).await;
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["error"], "UNAVAILABLE", "{v}");
}
