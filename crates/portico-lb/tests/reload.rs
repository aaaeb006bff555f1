//! Reloads and shutdown: an invalid config changes nothing, a valid one is swapped in while the
//! sockets stay open and no request is lost, and shutdown lets requests in flight finish.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

fn config(port: u16, target: std::net::SocketAddr, body: &str) -> String {
    format!(
        r#"
[[target_group]]
name = "g"
targets = ["{target}"]
[[listener]]
name = "l"
bind = "127.0.0.1:{port}"
protocol = "http"
default_action = {{ forward = "g" }}
[[listener.rule]]
priority = 1
path = ["/version"]
action = {{ fixed_response = {{ status = 200, body = "{body}" }} }}
"#
    )
}

#[tokio::test]
async fn invalid_reload_keeps_the_old_config() {
    let dir = TempDir::new("badreload");
    let b = Backend::start("b").await;
    let lb = start_lb(&config(0, b.addr, "v1"), dir.path()).await;
    let l = addr(&lb, "l");
    let bad = config(0, b.addr, "v2").replace("forward = \"g\"", "forward = \"missing\"");
    let issues = apply(&lb, &bad, dir.path()).await.unwrap_err();
    assert!(
        issues[0]
            .to_string()
            .contains("no [[target_group]] named \"missing\""),
        "{issues:?}"
    );
    assert_eq!(addr(&lb, "l"), l, "same socket");
    assert_eq!(get(l, "x", "/version").await.body, "v1");
    assert_eq!(get(l, "x", "/").await.backend(), "b");

    // A port already taken also refuses the whole reload.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let extra = format!(
        "{}\n[[listener]]\nname = \"other\"\nbind = \"{}\"\nprotocol = \"http\"\ndefault_action = {{ forward = \"g\" }}\n",
        config(0, b.addr, "v3"),
        taken.local_addr().unwrap()
    );
    let issues = apply(&lb, &extra, dir.path()).await.unwrap_err();
    assert!(
        issues[0].to_string().contains("cannot listen on"),
        "{issues:?}"
    );
    assert_eq!(get(l, "x", "/version").await.body, "v1");

    // A target group with an error of its own is reported once, not again at each listener
    // that forwards to it.
    let bad_group = config(0, b.addr, "v4").replace(
        "targets = [",
        "health_check = { interval = \"5s\", timeout = \"5s\" }\ntargets = [",
    );
    let issues = apply(&lb, &bad_group, dir.path()).await.unwrap_err();
    let text: Vec<String> = issues.iter().map(|i| i.to_string()).collect();
    assert_eq!(text.len(), 1, "{text:#?}");
    assert!(
        text[0].contains("target_group[0].health_check")
            && text[0].contains("timeout must be shorter than interval"),
        "{text:#?}"
    );
    assert_eq!(get(l, "x", "/version").await.body, "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_no_request() {
    let dir = TempDir::new("reloadload");
    let b = Backend::start("b").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let lb = start_lb(&config(port, b.addr, "v0"), dir.path()).await;
    let l = addr(&lb, "l");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            // Half the clients open a connection per request, half keep one alive throughout.
            let mut kept = if c % 2 == 1 {
                Some(KeepAlive::connect(l).await)
            } else {
                None
            };
            while !stop.load(Ordering::Relaxed) {
                let path = if c < 2 { "/" } else { "/version" };
                let reply = match kept.as_mut() {
                    Some(k) => k.send(request("GET", "x", path)).await,
                    None => send(l, request("GET", "x", path)).await,
                };
                match reply {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for v in 1..=20 {
        apply(&lb, &config(port, b.addr, &format!("v{v}")), dir.path())
            .await
            .unwrap();
        let want = format!("v{v}");
        eventually("new config answers", Duration::from_secs(5), || async {
            get(l, "x", "/version").await.body == want
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "load ran: {}",
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests lost during 20 reloads"
    );
    assert_eq!(addr(&lb, "l"), l);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight() {
    let dir = TempDir::new("drain");
    let b = Backend::start("b").await;
    let lb = start_lb(&config(0, b.addr, "v1"), dir.path()).await;
    let l = addr(&lb, "l");
    let in_flight = tokio::spawn(async move { get(l, "x", "/slow?ms=800").await });
    let lb2 = lb.clone();
    eventually("request reached the target", Duration::from_secs(5), || {
        let lb = lb2.clone();
        async move { lb.target_health("g")[0].outstanding == 1 }
    })
    .await;
    let drained = lb.shutdown(Duration::from_secs(10)).await;
    assert!(drained, "every connection ended before the deadline");
    let r = in_flight.await.unwrap();
    assert_eq!((r.status, r.backend().as_str()), (200, "b"));
    assert!(
        tokio::net::TcpStream::connect(l).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_target_drains_its_request_in_flight() {
    let dir = TempDir::new("deregister");
    let (old, new) = (Backend::start("old").await, Backend::start("new").await);
    let lb = start_lb(&config(0, old.addr, "v1"), dir.path()).await;
    let l = addr(&lb, "l");
    let in_flight = tokio::spawn(async move { get(l, "x", "/slow?ms=700").await });
    eventually(
        "request reached the old target",
        Duration::from_secs(5),
        || async { old.started.load(Ordering::Relaxed) == 1 },
    )
    .await;
    // The target group now names only the new target; the old one is being drained.
    let reloaded = config(0, new.addr, "v2");
    apply(&lb, &reloaded, dir.path()).await.unwrap();
    assert_eq!(get(l, "x", "/").await.backend(), "new");
    let r = in_flight.await.unwrap();
    assert_eq!(
        (r.status, r.backend().as_str()),
        (200, "old"),
        "in-flight request finished"
    );
}

#[tokio::test]
async fn ipv6_and_ipv4_listeners_side_by_side() {
    let dir = TempDir::new("ipv6");
    let b = Backend::start("b").await;
    let lb = start_lb(
        &format!(
            r#"
[[target_group]]
name = "g"
targets = ["{}"]
[[listener]]
name = "dual"
bind = ["127.0.0.1:0", "[::1]:0"]
protocol = "http"
default_action = {{ forward = "g" }}
"#,
            b.addr
        ),
        dir.path(),
    )
    .await;
    let addrs = lb.local_addrs("dual");
    assert_eq!(addrs.len(), 2);
    assert!(addrs[1].is_ipv6());
    for a in addrs {
        let r = get(a, "x", "/").await;
        assert_eq!(r.status, 200);
        let client = if a.is_ipv6() { "::1" } else { "127.0.0.1" };
        assert_eq!(r.echoed("x-forwarded-for").as_deref(), Some(client));
    }
}

#[tokio::test]
async fn a_removed_target_drains_until_its_deregistration_delay_then_is_cut() {
    let dir = TempDir::new("dereg");
    let (slow, other) = (Backend::start("slow").await, Backend::start("other").await);
    let group = |target: std::net::SocketAddr| {
        format!(
            r#"
[[target_group]]
name = "g"
targets = ["{target}"]
deregistration_delay = "1s"
[[listener]]
name = "l"
bind = "127.0.0.1:0"
protocol = "http"
default_action = {{ forward = "g" }}
"#
        )
    };
    let lb = start_lb(&group(slow.addr), dir.path()).await;
    let a = addr(&lb, "l");
    // A POST with a body is never retried: when its connection is cut it gets 502.
    let started = std::time::Instant::now();
    let in_flight = tokio::spawn(async move {
        let req = http::Request::builder()
            .method("POST")
            .uri("/slow?ms=30000")
            .header("host", "x")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"payload",
            )))
            .unwrap();
        send(a, req).await
    });
    eventually(
        "the request reached the target",
        Duration::from_secs(10),
        || async { slow.started.load(Ordering::Relaxed) == 1 },
    )
    .await;
    apply(&lb, &group(other.addr), dir.path()).await.unwrap();
    let draining = lb.target_health("g");
    assert!(
        draining.iter().any(|t| t.addr == slow.addr && t.draining),
        "{draining:?}"
    );
    assert_eq!(
        get(a, "x", "/").await.backend(),
        "other",
        "new requests go elsewhere"
    );
    let r = tokio::time::timeout(Duration::from_secs(20), in_flight)
        .await
        .expect("the request in flight ends when the delay is over, not when the target answers")
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(25));
    eventually(
        "the target is no longer draining",
        Duration::from_secs(10),
        || async { !lb.target_health("g").iter().any(|t| t.addr == slow.addr) },
    )
    .await;
}
