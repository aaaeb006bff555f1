//! Rules and actions over real sockets: redirect, forward (one and weighted), fixed response,
//! each rule condition, forwarded headers, and Portico's own error answers.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test]
async fn http_redirects_to_https_with_placeholders() {
    let dir = TempDir::new("redirect");
    let lb = start_lb(
        r#"
[[listener]]
name = "http"
bind = "127.0.0.1:0"
protocol = "http"
default_action = { redirect = { protocol = "https", port = 8443, status = 301 } }

[[listener.rule]]
priority = 1
host = ["old.example.com"]
action = { redirect = { host = "new.example.com", path = "/moved/#{path}", query = "from=old&#{query}", status = 308 } }
"#,
        dir.path(),
    )
    .await;
    let a = addr(&lb, "http");
    let r = get(a, "example.com", "/a/b?x=1").await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.headers["location"], "https://example.com:8443/a/b?x=1",
        "{r:?}"
    );
    let r = get(a, "old.example.com:80", "/p?q=2").await;
    assert_eq!(r.status, 308);
    // #{port} is the listener's port, as in an ALB.
    assert_eq!(
        r.headers["location"],
        format!("http://new.example.com:{}/moved/p?from=old&q=2", a.port()).as_str()
    );
}

#[tokio::test]
async fn rules_pick_actions_by_priority_and_every_condition() {
    let dir = TempDir::new("rules");
    let (api, web, admin) = (
        Backend::start("api").await,
        Backend::start("web").await,
        Backend::start("admin").await,
    );
    let lb = start_lb(
        &format!(
            r#"
[[target_group]]
name = "api"
targets = ["{api}"]
[[target_group]]
name = "web"
targets = ["{web}"]
[[target_group]]
name = "admin"
targets = ["{admin}"]

[[listener]]
name = "main"
bind = "127.0.0.1:0"
protocol = "http"
response_headers = {{ "X-Served-By" = "portico" }}
default_action = {{ forward = "web" }}

[[listener.rule]]
priority = 5
path = ["/maintenance"]
action = {{ fixed_response = {{ status = 503, content_type = "text/plain", body = "back soon" }} }}

[[listener.rule]]
priority = 10
host = ["*.api.example.com", "api.example.com"]
path = ["/v1/*"]
response_headers = {{ "Access-Control-Allow-Origin" = "https://app.example.com" }}
action = {{ forward = "api" }}

[[listener.rule]]
priority = 20
method = ["DELETE"]
action = {{ fixed_response = {{ status = 405, body = "no deletes" }} }}

[[listener.rule]]
priority = 30
header = {{ "X-Role" = ["adm?n", "root*"] }}
action = {{ forward = "admin" }}

[[listener.rule]]
priority = 40
query = {{ "debug" = "tr*" }}
action = {{ fixed_response = {{ status = 200, body = "debug on" }} }}

[[listener.rule]]
priority = 50
source = ["10.0.0.0/8"]
action = {{ fixed_response = {{ status = 403, body = "not from loopback" }} }}

[[listener.rule]]
priority = 60
source = ["127.0.0.0/8"]
path = ["/whoami"]
action = {{ fixed_response = {{ status = 200, body = "loopback" }} }}
"#,
            api = api.addr,
            web = web.addr,
            admin = admin.addr
        ),
        dir.path(),
    )
    .await;
    let a = addr(&lb, "main");

    let r = get(a, "x", "/maintenance").await;
    assert_eq!((r.status, r.body.as_str()), (503, "back soon"));
    assert_eq!(r.headers["content-type"], "text/plain");
    assert_eq!(r.headers["x-served-by"], "portico");

    let r = get(a, "API.example.com", "/v1/users").await;
    assert_eq!(r.backend(), "api");
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(get(a, "eu.api.example.com", "/v1/x").await.backend(), "api");
    assert_eq!(get(a, "api.example.com", "/v2/x").await.backend(), "web");
    assert_eq!(get(a, "example.com", "/v1/x").await.backend(), "web");

    let r = send(a, request("DELETE", "x", "/thing")).await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (405, "no deletes"));

    let mut req = request("GET", "x", "/");
    req.headers_mut().insert("x-role", "admin".parse().unwrap());
    assert_eq!(send(a, req).await.unwrap().backend(), "admin");
    let mut req = request("GET", "x", "/");
    req.headers_mut().insert("x-role", "guest".parse().unwrap());
    assert_eq!(send(a, req).await.unwrap().backend(), "web");

    assert_eq!(get(a, "x", "/?a=1&debug=true").await.body, "debug on");
    assert_eq!(get(a, "x", "/?debug=no").await.backend(), "web");

    assert_eq!(get(a, "x", "/whoami").await.body, "loopback");
}

#[tokio::test]
async fn forwarded_headers_hop_by_hop_and_host() {
    let dir = TempDir::new("headers");
    let b = Backend::start("b").await;
    let lb = start_lb(&one_group(b.addr, ""), dir.path()).await;
    let a = addr(&lb, "l");
    let mut req = request("GET", "app.example.com:8080", "/p?q=1");
    let h = req.headers_mut();
    h.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
    h.insert("connection", "keep-alive, x-secret".parse().unwrap());
    h.insert("x-secret", "drop me".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    h.insert("proxy-connection", "keep-alive".parse().unwrap());
    let r = send(a, req).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("host").as_deref(), Some("app.example.com:8080"));
    assert_eq!(
        r.echoed("x-forwarded-for").as_deref(),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(r.echoed("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        r.echoed("x-forwarded-port"),
        Some(a.port().to_string()),
        "{}",
        r.body
    );
    assert_eq!(r.echoed("x-secret"), None, "{}", r.body);
    assert_eq!(r.echoed("proxy-connection"), None);
    assert_eq!(r.echoed("path").as_deref(), Some("/p"));
    assert_eq!(r.echoed("query").as_deref(), Some("q=1"));
    // The backend's own hop-by-hop headers do not reach the client.
    assert!(!r.headers.contains_key("x-internal"), "{:?}", r.headers);
    assert!(!r.headers.contains_key("keep-alive"));
}

#[tokio::test]
async fn weighted_forward_splits_by_weight() {
    let dir = TempDir::new("weighted");
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let lb = start_lb(
        &format!(
            r#"
[[target_group]]
name = "blue"
targets = ["{}"]
[[target_group]]
name = "green"
targets = ["{}"]
[[listener]]
name = "l"
bind = "127.0.0.1:0"
protocol = "http"
default_action = {{ forward = [{{ target_group = "blue", weight = 3 }}, {{ target_group = "green", weight = 1 }}] }}
"#,
            blue.addr, green.addr
        ),
        dir.path(),
    )
    .await;
    let a = addr(&lb, "l");
    let mut blue_n = 0;
    for _ in 0..40 {
        if get(a, "x", "/").await.backend() == "blue" {
            blue_n += 1;
        }
    }
    assert_eq!(blue_n, 30, "3:1 weights over 40 requests");
}

#[tokio::test]
async fn weighted_targets_and_least_outstanding() {
    let dir = TempDir::new("lor");
    let (a1, a2) = (Backend::start("a1").await, Backend::start("a2").await);
    let lb = start_lb(
        &format!(
            r#"
[[target_group]]
name = "rr"
targets = [{{ address = "{a1}", weight = 2 }}, "{a2}"]
[[target_group]]
name = "lor"
algorithm = "least_outstanding_requests"
targets = ["{a1}", "{a2}"]
[[listener]]
name = "rr"
bind = "127.0.0.1:0"
protocol = "http"
default_action = {{ forward = "rr" }}
[[listener]]
name = "lor"
bind = "127.0.0.1:0"
protocol = "http"
default_action = {{ forward = "lor" }}
"#,
            a1 = a1.addr,
            a2 = a2.addr
        ),
        dir.path(),
    )
    .await;
    let rr = addr(&lb, "rr");
    let mut n1 = 0;
    for _ in 0..30 {
        if get(rr, "x", "/").await.backend() == "a1" {
            n1 += 1;
        }
    }
    assert_eq!(n1, 20);

    // Hold one slow request on whichever target takes it; the next ones go to the other.
    let lor = addr(&lb, "lor");
    let slow = tokio::spawn(async move { get(lor, "x", "/slow?ms=3000").await });
    let lb2 = lb.clone();
    eventually("one request outstanding", Duration::from_secs(5), || {
        let lb = lb2.clone();
        async move { lb.target_health("lor").iter().any(|t| t.outstanding == 1) }
    })
    .await;
    let busy = lb
        .target_health("lor")
        .into_iter()
        .find(|t| t.outstanding == 1)
        .unwrap()
        .addr;
    let idle_name = if busy == a1.addr { "a2" } else { "a1" };
    for _ in 0..5 {
        assert_eq!(get(lor, "x", "/").await.backend(), idle_name);
    }
    assert_eq!(slow.await.unwrap().status, 200);
}

#[tokio::test]
async fn error_answers_502_503_504_and_ambiguous_framing() {
    let dir = TempDir::new("errors");
    let slow = Backend::start("slow").await;
    // A port with nothing listening: bind, note, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let lb = start_lb(
        &format!(
            r#"
[[target_group]]
name = "empty"
[[target_group]]
name = "refused"
targets = ["{closed}"]
[[target_group]]
name = "slow"
targets = ["{slow}"]
response_timeout = "300ms"
[[listener]]
name = "l"
bind = "127.0.0.1:0"
protocol = "http"
default_action = {{ forward = "slow" }}
[[listener.rule]]
priority = 1
path = ["/empty"]
action = {{ forward = "empty" }}
[[listener.rule]]
priority = 2
path = ["/refused"]
action = {{ forward = "refused" }}
"#,
            slow = slow.addr
        ),
        dir.path(),
    )
    .await;
    let a = addr(&lb, "l");
    assert_eq!(get(a, "x", "/empty").await.status, 503);
    let r = get(a, "x", "/refused").await;
    assert_eq!(r.status, 502);
    assert!(r.body.contains("refused"), "{}", r.body);
    assert_eq!(get(a, "x", "/slow?ms=2000").await.status, 504);
    assert_eq!(get(a, "x", "/slow?ms=0").await.status, 200);

    // Both Content-Length and Transfer-Encoding (a smuggling vector): the body is framed by
    // Transfer-Encoding alone, the target never sees the Content-Length, and the client
    // connection is closed afterwards.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("connection closed after the ambiguous request")
        .unwrap();
    let reply = String::from_utf8_lossy(&buf);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("connection: close"), "{reply}");
    assert!(!reply.contains("content-length: 5"), "{reply}");
    assert!(!reply.contains("/smuggled"), "{reply}");
    assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{reply}");
}
