//! The per-worker pool of target connections: reuse, spreading over workers, and what happens to
//! requests when a target dies with pooled connections and requests in flight.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use support::*;

#[tokio::test]
async fn a_second_request_reuses_the_first_ones_target_connection() {
    let dir = TempDir::new("reuse");
    let backend = Backend::start("b").await;
    let lb = start_lb(&one_group(backend.addr, ""), dir.path()).await;
    // One client connection lives on one worker, and so do the target connections it uses.
    let mut client = KeepAlive::connect(addr(&lb, "l")).await;
    for i in 0..5 {
        let r = client.send(request("GET", "x", "/")).await.unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    let r = client
        .send({
            let mut r = request("POST", "x", "/upload");
            *r.body_mut() = Full::new(Bytes::from_static(b"some body"));
            r
        })
        .await
        .unwrap();
    assert_eq!(r.body, "received 9\n");
    let r = client.send(request("HEAD", "x", "/")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(backend.hits.load(Ordering::Relaxed), 7);
    assert_eq!(
        backend.accepted.load(Ordering::Relaxed),
        1,
        "seven requests in a row (GET, POST with a body, HEAD) used one target connection"
    );
}

#[tokio::test]
async fn connections_spread_over_every_worker() {
    let dir = TempDir::new("spread");
    let backend = Backend::start("b").await;
    let lb = start_lb(&one_group(backend.addr, ""), dir.path()).await;
    let before = lb.worker_connections();
    for _ in 0..(8 * before.len()) {
        assert_eq!(get(addr(&lb, "l"), "x", "/").await.status, 200);
    }
    let after = lb.worker_connections();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(
            a - b >= 4,
            "worker {i} got {} of the connections: {after:?}",
            a - b
        );
    }
}

fn two_groups(a: std::net::SocketAddr, b: std::net::SocketAddr) -> String {
    format!(
        r#"
[[target_group]]
name = "both"
targets = ["{a}", "{b}"]
[[target_group]]
name = "a"
targets = ["{a}"]
[[listener]]
name = "l"
bind = "127.0.0.1:0"
protocol = "http"
default_action = {{ forward = "both" }}
[[listener.rule]]
priority = 1
host = ["a-only"]
action = {{ forward = "a" }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_killed_with_pooled_connections_and_requests_in_flight() {
    let dir = TempDir::new("kill");
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = start_lb(&two_groups(a.addr, b.addr), dir.path()).await;
    let l = addr(&lb, "l");

    // Keep-alive clients on every worker warm the pools with connections to both targets.
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut c = KeepAlive::connect(l).await;
        for _ in 0..6 {
            assert_eq!(c.send(request("GET", "x", "/")).await.unwrap().status, 200);
        }
        clients.push(c);
    }
    assert!(a.hits.load(Ordering::Relaxed) >= 8 && b.hits.load(Ordering::Relaxed) >= 8);

    // Requests in flight when the target dies: slow GETs over both targets, and a POST with a
    // body to the group that only has `a`.
    let started_on_a = a.started.load(Ordering::Relaxed);
    let mut slow = Vec::new();
    for _ in 0..6 {
        slow.push(tokio::spawn(async move {
            send(l, request("GET", "x", "/slow?ms=1500")).await
        }));
    }
    let post = tokio::spawn(async move {
        let mut r = request("POST", "a-only", "/slow?ms=1500");
        *r.body_mut() = Full::new(Bytes::from_static(b"not to be sent twice"));
        send(l, r).await
    });
    let a_started = a.started.clone();
    eventually(
        "slow GETs and the POST reached target a",
        Duration::from_secs(10),
        || {
            let n = a_started.load(Ordering::Relaxed);
            async move { n >= started_on_a + 2 }
        },
    )
    .await;
    a.stop();

    for (i, s) in slow.into_iter().enumerate() {
        let r = s.await.unwrap().unwrap();
        assert_eq!(r.status, 200, "slow GET {i} retried elsewhere: {}", r.body);
        assert_eq!(r.backend(), "b", "slow GET {i}");
    }
    let r = post.await.unwrap().unwrap();
    assert_eq!(
        r.status, 502,
        "a POST whose body was sent is not retried: {}",
        r.body
    );

    // The pooled connections to the dead target: every idempotent request still succeeds.
    for (i, c) in clients.iter_mut().enumerate() {
        for j in 0..6 {
            let r = c.send(request("GET", "x", "/")).await.unwrap();
            assert_eq!(r.status, 200, "client {i} request {j}: {}", r.body);
            assert_eq!(r.backend(), "b");
        }
    }
}
