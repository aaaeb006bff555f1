//! Target health over real sockets: active checks take a stopped target out of rotation within
//! interval × threshold and bring it back, all-unhealthy fails open, a failed connect is retried
//! on another target and counts against the target (passive detection).

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;

fn config(targets: &[std::net::SocketAddr], check: &str) -> String {
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        r#"
[[target_group]]
name = "g"
targets = [{}]
{check}
[[listener]]
name = "l"
bind = "127.0.0.1:0"
protocol = "http"
default_action = {{ forward = "g" }}
"#,
        list.join(", ")
    )
}

const CHECK: &str = r#"
[target_group.health_check]
path = "/health"
interval = "300ms"
timeout = "250ms"
healthy_threshold = 2
unhealthy_threshold = 2
"#;

async fn healthy(lb: &portico_lb::LoadBalancer, addr: std::net::SocketAddr) -> bool {
    lb.target_health("g")
        .iter()
        .any(|t| t.addr == addr && t.healthy)
}

#[tokio::test]
async fn stopped_target_leaves_rotation_and_returns() {
    let dir = TempDir::new("health");
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let lb = start_lb(&config(&[a.addr, b.addr], CHECK), dir.path()).await;
    let l = addr(&lb, "l");

    // A failing health status takes a target out within interval × threshold (plus slack).
    a.health.store(500, Ordering::Relaxed);
    eventually("a unhealthy by status", Duration::from_secs(15), || async {
        !healthy(&lb, a.addr).await
    })
    .await;
    let reason = lb.target_health("g")[0].reason.clone();
    assert!(reason.contains("500"), "{reason}");
    for _ in 0..6 {
        assert_eq!(get(l, "x", "/").await.backend(), "b");
    }
    a.health.store(200, Ordering::Relaxed);
    eventually("a healthy again", Duration::from_secs(15), || async {
        healthy(&lb, a.addr).await
    })
    .await;

    // A stopped target (port closed) leaves rotation; started again, it comes back.
    let b_addr = b.addr;
    b.stop();
    eventually(
        "b unhealthy when stopped",
        Duration::from_secs(15),
        || async { !healthy(&lb, b_addr).await },
    )
    .await;
    for _ in 0..6 {
        assert_eq!(get(l, "x", "/").await.backend(), "a");
    }
    let b2 = Backend::start_on("b", b_addr).await;
    eventually("b back in rotation", Duration::from_secs(15), || async {
        healthy(&lb, b2.addr).await
    })
    .await;
    let mut seen_b = false;
    for _ in 0..6 {
        seen_b |= get(l, "x", "/").await.backend() == "b";
    }
    assert!(seen_b);
}

#[tokio::test]
async fn all_unhealthy_fails_open() {
    let dir = TempDir::new("failopen");
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    a.health.store(503, Ordering::Relaxed);
    b.health.store(503, Ordering::Relaxed);
    let lb = start_lb(&config(&[a.addr, b.addr], CHECK), dir.path()).await;
    eventually("both unhealthy", Duration::from_secs(15), || async {
        lb.target_health("g").iter().all(|t| !t.healthy)
    })
    .await;
    let l = addr(&lb, "l");
    let mut names = std::collections::HashSet::new();
    for _ in 0..4 {
        let r = get(l, "x", "/").await;
        assert_eq!(r.status, 200, "fail open still serves");
        names.insert(r.backend());
    }
    assert_eq!(
        names.len(),
        2,
        "both targets get traffic while failing open"
    );
}

#[tokio::test]
async fn connect_failure_is_retried_on_another_target_and_counted() {
    let dir = TempDir::new("retry");
    let live = Backend::start("live").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // No active check: passive detection alone takes the dead target out.
    let lb = start_lb(&config(&[dead, live.addr], ""), dir.path()).await;
    let l = addr(&lb, "l");
    for _ in 0..4 {
        let r = get(l, "x", "/").await;
        assert_eq!(r.status, 200, "GET retried on the live target: {}", r.body);
        assert_eq!(r.backend(), "live");
    }
    let dead_state = lb
        .target_health("g")
        .into_iter()
        .find(|t| t.addr == dead)
        .unwrap();
    assert!(
        !dead_state.healthy,
        "passive detection marked it: {dead_state:?}"
    );
    assert!(
        dead_state.reason.contains("connection failed"),
        "{}",
        dead_state.reason
    );

    // A POST with a body is not retried: with the dead target first, it gets 502.
    let lb = start_lb(&config(&[dead, live.addr], ""), dir.path()).await;
    let l = addr(&lb, "l");
    let mut req = request("POST", "x", "/upload");
    *req.body_mut() = http_body_util::Full::new(bytes::Bytes::from_static(b"payload"));
    let r = send(l, req).await.unwrap();
    assert_eq!(r.status, 502, "{}", r.body);
}
