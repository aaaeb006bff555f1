//! Hosted zones with routing policies and health (weighted, failover, multivalue, ALIAS that
//! evaluates target health), asked with `dig` against a real `portico serve` whose health comes
//! from real backends on loopback: the load balancer's target-group checks, and the zones' own
//! HTTP checks.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use common::admin::{call, serve};
use common::support::{self, eventually, Backend, TempDir};
use common::{free_port, Proc};

/// `dig +short` for `count` queries of `name`/`rtype` in one dig run (dig takes many queries on
/// one command line), every answer line.
fn dig_many(port: u16, name: &str, rtype: &str, count: usize) -> Vec<String> {
    let mut args = vec![
        "@127.0.0.1".to_string(),
        "-p".into(),
        port.to_string(),
        "+short".into(),
        "+time=2".into(),
        "+tries=2".into(),
    ];
    for _ in 0..count {
        args.push(name.into());
        args.push(rtype.into());
    }
    let out = Command::new("dig")
        .args(&args)
        .output()
        .expect("dig is missing: apt-get install bind9-dnsutils (scripts/test installs it)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// One query's answer as a sorted set of lines.
fn answer(port: u16, name: &str, rtype: &str) -> BTreeSet<String> {
    dig_many(port, name, rtype, 1).into_iter().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn wait_answer(port: u16, name: &str, rtype: &str, want: &BTreeSet<String>, server: &Proc) {
    let (n, t) = (name.to_string(), rtype.to_string());
    let what = format!("{name} {rtype} answers {want:?}");
    let mut last = BTreeSet::new();
    let deadline = Duration::from_secs(30);
    let start = std::time::Instant::now();
    while start.elapsed() < deadline {
        last = answer(port, &n, &t);
        if &last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{what}: still {last:?} after {deadline:?}\n{}",
        server.output()
    );
}

fn config(dir: &std::path::Path, dns: u16, http: u16, blue: &Backend, green: &Backend) -> String {
    let check = r#"[target_group.health_check]
path = "/health"
interval = "1s"
timeout = "500ms"
healthy_threshold = 2
unhealthy_threshold = 2
"#;
    let mut multivalue = String::new();
    for i in 1..=10 {
        // m1-m5 follow the blue backend through a check of the zone's own, m6-m10 the green
        // target group.
        let health = if i <= 5 {
            format!(
                "health = \"http://{}/health\"\nhealth_check = {{ interval = \"1s\", healthy_threshold = 2, unhealthy_threshold = 2 }}",
                blue.addr
            )
        } else {
            "health = \"target_group:green\"".to_string()
        };
        multivalue.push_str(&format!(
            "[[zone.record]]\nname = \"m\"\ntype = \"A\"\nvalues = [\"192.0.2.{}\"]\nset_identifier = \"m{i}\"\nrouting = \"multivalue\"\n{health}\n",
            100 + i
        ));
    }
    format!(
        r#"state_dir = "{state}"
shutdown_timeout = "2s"
[admin]
listen = "127.0.0.1:0"
[dns]
listen = ["127.0.0.1:{dns}"]

[[target_group]]
name = "blue"
targets = ["{blue}"]
{check}
[[target_group]]
name = "green"
targets = ["{green}"]
{check}
[[listener]]
name = "web"
bind = "127.0.0.1:{http}"
protocol = "http"
default_action = {{ forward = "blue" }}
[[listener]]
name = "web2"
bind = "127.0.0.2:{http}"
protocol = "http"
default_action = {{ forward = "green" }}

[[zone]]
name = "example.test"
[[zone.record]]
name = "w"
type = "A"
values = ["192.0.2.1"]
set_identifier = "one"
routing = "weighted"
weight = 1
[[zone.record]]
name = "w"
type = "A"
values = ["192.0.2.3"]
set_identifier = "three"
routing = "weighted"
weight = 3
[[zone.record]]
name = "f"
type = "A"
values = ["192.0.2.10"]
set_identifier = "main"
routing = "failover"
failover = "primary"
health = "target_group:blue"
[[zone.record]]
name = "f"
type = "A"
values = ["192.0.2.20"]
set_identifier = "backup"
routing = "failover"
failover = "secondary"
[[zone.record]]
name = "a"
type = "ALIAS"
target = "listener:web"
set_identifier = "web"
routing = "multivalue"
evaluate_target_health = true
[[zone.record]]
name = "a"
type = "ALIAS"
target = "listener:web2"
set_identifier = "web2"
routing = "multivalue"
evaluate_target_health = true
{multivalue}"#,
        state = dir.join("state").display(),
        blue = blue.addr,
        green = green.addr,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_policies_follow_the_health_of_targets_listeners_and_own_checks() {
    let dir = TempDir::new("routing");
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let (dns, http) = (free_port(), free_port());
    let path = dir.path().join("portico.toml");
    std::fs::write(&path, config(dir.path(), dns, http, &blue, &green)).unwrap();
    let (server, admin, token) = serve(&path, dir.path()).await;
    let all_m: BTreeSet<String> = (101..=110).map(|i| format!("192.0.2.{i}")).collect();
    let green_m: BTreeSet<String> = (106..=110).map(|i| format!("192.0.2.{i}")).collect();

    // Weighted 1:3 over 1,000 queries: 750 expected for "three" (binomial sd 14; the tolerance
    // is five of them).
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..10 {
        for line in dig_many(dns, "w.example.test", "A", 100) {
            *counts.entry(line).or_default() += 1;
        }
    }
    let (one, three) = (counts["192.0.2.1"], counts["192.0.2.3"]);
    assert_eq!(one + three, 1000, "{counts:?}");
    assert!((680..=820).contains(&three), "{counts:?}");
    // The TTL where no health decides is the default 300; failover with health gets 60.
    let ttl = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &dns.to_string(),
            "+noall",
            "+answer",
            "f.example.test",
            "A",
        ])
        .output()
        .unwrap();
    let ttl = String::from_utf8_lossy(&ttl.stdout).to_string();
    assert!(ttl.contains("\t60\tIN\tA\t192.0.2.10"), "{ttl}");

    // Everything healthy: the primary, every listener, eight of the ten multivalue addresses.
    wait_answer(dns, "f.example.test", "A", &set(&["192.0.2.10"]), &server).await;
    wait_answer(
        dns,
        "a.example.test",
        "A",
        &set(&["127.0.0.1", "127.0.0.2"]),
        &server,
    )
    .await;
    for _ in 0..5 {
        let m = answer(dns, "m.example.test", "A");
        assert_eq!(m.len(), 8, "{m:?}");
        assert!(m.is_subset(&all_m), "{m:?}");
    }

    // Blue fails its checks: failover to the secondary, the web listener dropped from the
    // ALIAS, only green's multivalue addresses.
    blue.health.store(503, std::sync::atomic::Ordering::Relaxed);
    let failed_at = std::time::Instant::now();
    wait_answer(dns, "f.example.test", "A", &set(&["192.0.2.20"]), &server).await;
    let took = failed_at.elapsed();
    wait_answer(dns, "a.example.test", "A", &set(&["127.0.0.2"]), &server).await;
    wait_answer(dns, "m.example.test", "A", &green_m, &server).await;
    let (s, zone) = call(
        admin,
        Some(&token),
        "GET",
        "/api/v1/zones/example.test",
        None,
    )
    .await;
    assert_eq!(s, 200, "{zone}");
    let main = zone["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["set_identifier"] == "main")
        .unwrap()
        .clone();
    assert_eq!(main["healthy"], false, "{main}");
    assert_eq!(main["health"], "target_group:blue", "{main}");

    // Green fails too: nothing healthy, so every set answers (Route 53's behaviour); failover
    // stays on the secondary, which has no check.
    green
        .health
        .store(503, std::sync::atomic::Ordering::Relaxed);
    let mut seen = BTreeSet::new();
    eventually(
        "all multivalue addresses answer again",
        Duration::from_secs(30),
        || {
            let m = answer(dns, "m.example.test", "A");
            let ok = m.len() == 8 && m.iter().any(|a| !green_m.contains(a));
            seen = m;
            async move { ok }
        },
    )
    .await;
    wait_answer(
        dns,
        "a.example.test",
        "A",
        &set(&["127.0.0.1", "127.0.0.2"]),
        &server,
    )
    .await;
    assert_eq!(answer(dns, "f.example.test", "A"), set(&["192.0.2.20"]));
    server
        .wait_output("no record set of this name and type is healthy")
        .await;

    // Blue recovers: back to the primary, blue's listener, blue's and green's... only blue's
    // own-check addresses now (green is still down).
    blue.health.store(200, std::sync::atomic::Ordering::Relaxed);
    wait_answer(dns, "f.example.test", "A", &set(&["192.0.2.10"]), &server).await;
    wait_answer(dns, "a.example.test", "A", &set(&["127.0.0.1"]), &server).await;
    let blue_m: BTreeSet<String> = (101..=105).map(|i| format!("192.0.2.{i}")).collect();
    wait_answer(dns, "m.example.test", "A", &blue_m, &server).await;

    // Metrics: answers by record set and policy, health per check.
    let (s, _) = call(admin, Some(&token), "GET", "/metrics", None).await;
    assert_eq!(s, 200);
    let metrics = metrics_text(admin, &token).await;
    assert!(
        metrics.contains(r#"portico_dns_routed_answers_total{zone="example.test.",name="w.example.test.",type="A",set_identifier="three",policy="weighted"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "portico_dns_health_check_healthy{{check=\"http://{}/health\"}} 1",
            blue.addr
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"portico_dns_record_set_healthy{zone="example.test.",name="m.example.test.",type="A",set_identifier="m6",policy="multivalue"} 0"#),
        "{metrics}"
    );

    // Export and re-import keep the policies: the exported master file, served as a new zone's
    // file by a second server, answers the same way.
    let (s, text) = call(
        admin,
        Some(&token),
        "GET",
        "/api/v1/zones/example.test/export",
        None,
    )
    .await;
    assert_eq!(s, 200);
    let text = text.as_str().unwrap().to_string();
    assert!(text.contains("; portico: set_identifier=main routing=failover failover=primary health=target_group:blue"), "{text}");
    let dir2 = TempDir::new("routing-reimport");
    std::fs::write(dir2.path().join("example.test.zone"), &text).unwrap();
    let dns2 = free_port();
    let http2 = free_port();
    let config2 = config(dir2.path(), dns2, http2, &blue, &green);
    let zone_start = config2.find("[[zone]]").unwrap();
    let config2 = format!(
        "{}[[zone]]\nname = \"example.test\"\nfile = \"example.test.zone\"\n",
        &config2[..zone_start]
    );
    let path2 = dir2.path().join("portico.toml");
    std::fs::write(&path2, config2).unwrap();
    let (server2, admin2, token2) = serve(&path2, dir2.path()).await;
    let (_, zone1) = call(
        admin,
        Some(&token),
        "GET",
        "/api/v1/zones/example.test",
        None,
    )
    .await;
    let (_, zone2) = call(
        admin2,
        Some(&token2),
        "GET",
        "/api/v1/zones/example.test",
        None,
    )
    .await;
    let routing_of = |z: &serde_json::Value| -> BTreeSet<String> {
        z["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r.get("set_identifier").is_some())
            .map(|r| {
                let mut r = r.clone();
                let o = r.as_object_mut().unwrap();
                o.remove("answered");
                o.remove("healthy");
                r.to_string()
            })
            .collect()
    };
    assert_eq!(routing_of(&zone1), routing_of(&zone2));
    assert_eq!(routing_of(&zone1).len(), 16);
    wait_answer(dns2, "f.example.test", "A", &set(&["192.0.2.10"]), &server2).await;
    drop(server2);
    eprintln!("failover to the secondary took {took:?} (interval 1 s x threshold 2)");
}

async fn metrics_text(admin: std::net::SocketAddr, token: &str) -> String {
    match call(admin, Some(token), "GET", "/metrics", None).await.1 {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

/// Bad routing in config is refused before anything is served, naming the record.
#[test]
fn bad_routing_names_the_record_and_hints() {
    let dir = TempDir::new("routing-bad");
    let path = dir.path().join("portico.toml");
    std::fs::write(
        &path,
        format!(
            r#"state_dir = "{}"
[[zone]]
name = "example.test"
[[zone.record]]
name = "f"
type = "A"
ttl = 3600
values = ["192.0.2.1"]
set_identifier = "main"
routing = "failover"
failover = "primary"
health = "target_group:blue"
"#,
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let (code, out) = common::run(&["check", "-c", path.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("portico.toml:"), "{out}");
    assert!(out.contains("TTL 3600 is above 300"), "{out}");
    assert!(out.contains("use 60"), "{out}");
    assert!(out.contains("no target group \"blue\""), "{out}");
    assert!(out.contains("no [[target_group]] is configured"), "{out}");
}
