//! Stickiness (lb_cookie and app_cookie) and slow start, over real sockets to real backends.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;

fn sticky_config(a: &Backend, b: &Backend, stickiness: &str) -> String {
    format!(
        r#"
[[target_group]]
name = "g"
targets = ["{a}", "{b}"]
stickiness = {stickiness}

[[listener]]
name = "l"
bind = "127.0.0.1:0"
protocol = "http"
default_action = {{ forward = "g" }}
"#,
        a = a.addr,
        b = b.addr
    )
}

/// The `name=value` of the cookie called `name` among a response's Set-Cookie headers.
fn set_cookie(r: &Reply, name: &str) -> Option<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_string())
}

fn with_cookie(path: &str, cookie: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut r = request("GET", "example.com", path);
    r.headers_mut()
        .insert("cookie", http::HeaderValue::from_str(cookie).unwrap());
    r
}

async fn backends_of(
    a: std::net::SocketAddr,
    n: usize,
    cookie: Option<&str>,
) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = match cookie {
            Some(c) => send(a, with_cookie("/", c)).await.unwrap(),
            None => get(a, "example.com", "/").await,
        };
        assert_eq!(r.status, 200, "{r:?}");
        *seen.entry(r.backend()).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn lb_cookie_keeps_a_client_on_its_target_until_the_target_dies() {
    let dir = TempDir::new("sticky-lb");
    let (one, two) = (Backend::start("one").await, Backend::start("two").await);
    let lb = start_lb(
        &sticky_config(&one, &two, r#"{ type = "lb_cookie", duration = "1h" }"#),
        dir.path(),
    )
    .await;
    let a = addr(&lb, "l");
    let first = get(a, "example.com", "/").await;
    let full = first
        .headers
        .get_all("set-cookie")
        .iter()
        .find_map(|v| v.to_str().ok().filter(|v| v.starts_with("portico_lb_g=")))
        .expect("Portico's cookie on the first response")
        .to_string();
    assert!(
        full.contains("Max-Age=3600") && full.contains("HttpOnly"),
        "{full}"
    );
    let cookie = set_cookie(&first, "portico_lb_g").unwrap();
    let sticky = first.backend();

    let seen = backends_of(a, 100, Some(&cookie)).await;
    assert_eq!(seen.get(&sticky), Some(&100), "{seen:?}");
    // Without the cookie, requests are balanced as usual.
    let seen = backends_of(a, 20, None).await;
    assert_eq!(seen.len(), 2, "{seen:?}");

    // The sticky target dies: the client moves, and its new cookie keeps it on the new target.
    let (dead, alive) = if sticky == "one" {
        (&one, "two")
    } else {
        (&two, "one")
    };
    dead.stop();
    let moved = send(a, with_cookie("/", &cookie)).await.unwrap();
    assert_eq!(moved.status, 200, "{moved:?}");
    assert_eq!(moved.backend(), alive);
    let new_cookie = set_cookie(&moved, "portico_lb_g").unwrap();
    assert_ne!(new_cookie, cookie);
    let seen = backends_of(a, 20, Some(&new_cookie)).await;
    assert_eq!(seen.get(alive), Some(&20), "{seen:?}");
}

#[tokio::test]
async fn app_cookie_starts_when_the_application_sets_its_cookie() {
    let dir = TempDir::new("sticky-app");
    let (one, two) = (Backend::start("one").await, Backend::start("two").await);
    let lb = start_lb(
        &sticky_config(
            &one,
            &two,
            r#"{ type = "app_cookie", cookie_name = "SESSION" }"#,
        ),
        dir.path(),
    )
    .await;
    let a = addr(&lb, "l");
    // No application cookie, no stickiness cookie.
    let plain = get(a, "example.com", "/").await;
    assert!(set_cookie(&plain, "portico_app_g").is_none(), "{plain:?}");

    let login = get(a, "example.com", "/login").await;
    let session = set_cookie(&login, "SESSION").expect("the application's cookie passes");
    let ours = set_cookie(&login, "portico_app_g").expect("Portico's cookie beside it");
    let sticky = login.backend();
    let both = format!("{session}; {ours}");
    let seen = backends_of(a, 100, Some(&both)).await;
    assert_eq!(seen.get(&sticky), Some(&100), "{seen:?}");

    // The sticky target is taken out of the group: the client moves and is told so.
    let remaining = if sticky == "one" { &two } else { &one };
    apply(
        &lb,
        &format!(
            r#"
[[target_group]]
name = "g"
targets = ["{r}"]
stickiness = {{ type = "app_cookie", cookie_name = "SESSION" }}

[[listener]]
name = "l"
bind = "127.0.0.1:0"
protocol = "http"
default_action = {{ forward = "g" }}
"#,
            r = remaining.addr
        ),
        dir.path(),
    )
    .await
    .unwrap();
    let moved = send(a, with_cookie("/", &both)).await.unwrap();
    assert_eq!(moved.backend(), remaining.name);
    let new = set_cookie(&moved, "portico_app_g").expect("the move is told in a new cookie");
    assert_ne!(new, ours);
}

#[tokio::test]
async fn slow_start_gives_a_newly_registered_target_a_growing_share() {
    let dir = TempDir::new("slowstart");
    let (old, new) = (Backend::start("old").await, Backend::start("new").await);
    let config = |targets: &str| {
        format!(
            r#"
[[target_group]]
name = "g"
targets = [{targets}]
slow_start = "10s"

[[listener]]
name = "l"
bind = "127.0.0.1:0"
protocol = "http"
default_action = {{ forward = "g" }}
"#
        )
    };
    let lb = start_lb(&config(&format!("\"{}\"", old.addr)), dir.path()).await;
    let bind = addr(&lb, "l");
    // Targets present from the start are not warming up.
    let seen = backends_of(bind, 20, None).await;
    assert_eq!(seen.get("old"), Some(&20));

    let both = config(&format!("\"{}\", \"{}\"", old.addr, new.addr));
    apply(&lb, &both, dir.path()).await.unwrap();
    let registered = std::time::Instant::now();
    let seen = backends_of(bind, 100, None).await;
    let early = *seen.get("new").unwrap_or(&0);
    // Round robin over two gives the new target half of its share; its share starts at 0 and
    // is at most (time since registration) / 10 s.
    let bound = (registered.elapsed().as_secs_f64() / 10.0 / 2.0 * 100.0) as usize + 15;
    assert!(
        early <= bound,
        "new target got {early} of 100 right after registration (bound {bound})"
    );

    // After the window, an even split.
    eventually(
        "the new target takes half the requests",
        Duration::from_secs(40),
        || async {
            let seen = backends_of(bind, 100, None).await;
            let n = *seen.get("new").unwrap_or(&0);
            (38..=62).contains(&n)
        },
    )
    .await;
}
