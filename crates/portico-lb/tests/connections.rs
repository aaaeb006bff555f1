//! What a client connection may do and for how long: WebSocket pass-through, security-group
//! rules at accept, the header-read timeout against slowloris, the idle timeout, the connection
//! limit.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the peer closes; returns what arrived. Fails the test after `deadline`.
async fn read_until_closed(s: &mut TcpStream, deadline: Duration) -> String {
    let mut buf = Vec::new();
    match tokio::time::timeout(deadline, s.read_to_end(&mut buf)).await {
        Ok(_) => String::from_utf8_lossy(&buf).into_owned(),
        Err(_) => panic!("connection still open after {deadline:?}"),
    }
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let dir = TempDir::new("ws");
    let b = Backend::start("b").await;
    let lb = start_lb(&one_group(b.addr, ""), dir.path()).await;
    let stream = TcpStream::connect(addr(&lb, "l")).await.unwrap();
    let (mut ws, res) = tokio_tungstenite::client_async("ws://example.com/ws", stream)
        .await
        .expect("upgrade passes through");
    assert_eq!(res.status(), 101);
    for msg in ["hello", "portico", "bye"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), msg);
    }
}

#[tokio::test]
async fn security_group_rules_close_before_any_work() {
    let dir = TempDir::new("sg");
    let b = Backend::start("b").await;
    let lb = start_lb(
        &format!(
            r#"
[[target_group]]
name = "g"
targets = ["{t}"]
[[listener]]
name = "denied"
bind = "127.0.0.1:0"
protocol = "http"
deny = ["127.0.0.0/8"]
default_action = {{ forward = "g" }}
[[listener]]
name = "not-allowed"
bind = "127.0.0.1:0"
protocol = "http"
allow = ["10.0.0.0/8", "::1/128"]
default_action = {{ forward = "g" }}
[[listener]]
name = "allowed"
bind = "127.0.0.1:0"
protocol = "http"
allow = ["127.0.0.1/32"]
deny = ["127.0.0.2/32"]
default_action = {{ forward = "g" }}
"#,
            t = b.addr
        ),
        dir.path(),
    )
    .await;
    for name in ["denied", "not-allowed"] {
        let mut s = TcpStream::connect(addr(&lb, name)).await.unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let got = read_until_closed(&mut s, Duration::from_secs(5)).await;
        assert_eq!(got, "", "{name}: closed without an answer");
    }
    assert_eq!(get(addr(&lb, "allowed"), "x", "/").await.status, 200);
    assert_eq!(b.hits.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn slowloris_is_cut_off_by_the_header_timeout() {
    let dir = TempDir::new("slowloris");
    let b = Backend::start("b").await;
    let lb = start_lb(&one_group(b.addr, "header_timeout = \"500ms\""), dir.path()).await;
    let mut s = TcpStream::connect(addr(&lb, "l")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Trickle a header line now and then, never finishing the head.
    let trickle = async {
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(format!("X-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), trickle).await;
    let got = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 408"), "{got}");
    assert_eq!(b.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let dir = TempDir::new("idle");
    let b = Backend::start("b").await;
    let lb = start_lb(&one_group(b.addr, "idle_timeout = \"300ms\""), dir.path()).await;
    let mut s = TcpStream::connect(addr(&lb, "l")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}

#[tokio::test]
async fn connection_limit_closes_the_extra_connection() {
    let dir = TempDir::new("limit");
    let b = Backend::start("b").await;
    let lb = start_lb(&one_group(b.addr, "max_connections = 2"), dir.path()).await;
    let l = addr(&lb, "l");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(l).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(s);
    }
    let mut extra = TcpStream::connect(l).await.unwrap();
    let _ = extra.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(
        read_until_closed(&mut extra, Duration::from_secs(5)).await,
        ""
    );
    drop(held);
    eventually("a slot frees up", Duration::from_secs(5), || async {
        send(l, request("GET", "x", "/"))
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
}

#[tokio::test]
async fn pipelined_requests_in_order_across_the_handover_to_hyper() {
    // A plain GET and a small POST take the hand-written HTTP/1.1 path; the chunked POST hands
    // the connection, with the bytes already read, to hyper, which serves the rest of it.
    let dir = TempDir::new("pipeline");
    let b = Backend::start("b").await;
    let lb = start_lb(&one_group(b.addr, ""), dir.path()).await;
    let mut s = TcpStream::connect(addr(&lb, "l")).await.unwrap();
    s.write_all(
        b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nchunked\r\n0\r\n\r\n\
          GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(10)).await;
    let at = |needle: &str| {
        got.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing in {got}"))
    };
    assert!(at("path: /first") < at("received 5\n"), "{got}");
    assert!(at("received 5\n") < at("received 7\n"), "{got}");
    assert!(at("received 7\n") < at("path: /last"), "{got}");
    assert_eq!(got.matches("HTTP/1.1 200 OK\r\n").count(), 4, "{got}");
    let first_head = &got[..at("\r\n\r\n")];
    assert!(first_head.contains("\r\ndate: "), "{first_head}");
    assert!(first_head.contains("\r\ncontent-length: "), "{first_head}");
    assert!(
        !first_head.contains("x-internal"),
        "hop-by-hop passed on: {first_head}"
    );
    assert!(got.contains("connection: close\r\n"), "{got}");
}
