//! `portico doctor`: each finding from a case built for it (both nameservers, CAA, HTTP-01,
//! HTTPS, dns-01, private names).

mod common;

use std::time::Duration;

use common::support::*;
use common::*;

/// Runs `portico doctor --json`; returns the exit code and (severity, name, explanation) rows.
fn doctor(domain: &str, common: &[String], extra: &[&str]) -> (i32, Vec<(String, String, String)>) {
    let mut args: Vec<&str> = vec!["doctor", domain, "--json"];
    args.extend(common.iter().map(String::as_str));
    args.extend_from_slice(extra);
    let (code, out) = run(&args);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("doctor --json: {e}:\n{out}"));
    let rows = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["severity"].as_str().unwrap().to_string(),
                f["name"].as_str().unwrap().to_string(),
                f["explanation"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (code, rows)
}

fn has(rows: &[(String, String, String)], severity: &str, name: &str) -> bool {
    rows.iter().any(|r| r.0 == severity && r.1 == name)
}

/// The doctor against zones Portico serves on loopback: two authoritative servers (127.0.0.1 and
/// 127.0.0.2) for example.com (in sync) and example.net (the second one behind), HTTP and HTTPS
/// listeners with an internal-CA certificate and an expired imported one. Each finding comes from
/// a case built to produce it; the healthy name is all OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_each_finding_from_a_case_built_for_it() {
    let dir = TempDir::new("doctor");
    let d = dir.path();
    let (dns, http, https, closed) = (free_port(), free_port(), free_port(), free_port());
    let com = "$ORIGIN example.com.\n$TTL 60\n\
        @ SOA ns1.example.com. hostmaster.example.com. 2024010101 3600 600 86400 60\n\
        @ NS ns1.example.com.\n@ NS ns2.example.com.\n\
        ns1 A 127.0.0.1\nns2 A 127.0.0.2\n\
        app A 127.0.0.1\nredir A 127.0.0.1\nexpired A 127.0.0.1\n\
        www CNAME app\n\
        blocked A 127.0.0.1\nblocked CAA 0 issue \"other-ca.example\"\n\
        strict CAA 0 issue \"other-ca.example\"\napp.strict A 127.0.0.1\n\
        critical A 127.0.0.1\ncritical CAA 128 tbs \"unknown\"\n\
        dual A 127.0.0.1\ndual AAAA ::1\n\
        delegated A 127.0.0.1\n_acme-challenge.delegated CNAME delegated.example.net.\n";
    std::fs::write(d.join("example.com.zone"), com).unwrap();
    let net = |serial: u32, lagging: bool| {
        format!(
            "$ORIGIN example.net.\n$TTL 60\n\
             @ SOA ns1.example.com. hostmaster.example.com. {serial} 3600 600 86400 60\n\
             @ NS ns1.example.com.\n@ NS ns2.example.com.\nok A 127.0.0.1\n{}",
            if lagging { "lagging A 127.0.0.1\n" } else { "" }
        )
    };
    std::fs::write(d.join("primary.net.zone"), net(5, true)).unwrap();
    std::fs::write(d.join("behind.net.zone"), net(4, false)).unwrap();
    // An expired certificate from a CA of our own, imported.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["expired.example.com".to_string()]).unwrap();
    leaf.not_before = rcgen::date_time_ymd(2020, 1, 1);
    leaf.not_after = rcgen::date_time_ymd(2020, 2, 1);
    let leaf = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    std::fs::write(d.join("expired.pem"), leaf.pem()).unwrap();
    std::fs::write(d.join("expired.key"), leaf_key.serialize_pem()).unwrap();

    let zones = |com: &str, net: &str| {
        format!(
            "[[zone]]\nname = \"example.com\"\nfile = \"{com}\"\n[[zone]]\nname = \"example.net\"\nfile = \"{net}\"\n"
        )
    };
    let primary = d.join("primary.toml");
    std::fs::write(
        &primary,
        format!(
            r#"state_dir = "{state}"
[dns]
listen = ["127.0.0.1:{dns}"]
{zones}
[[certificate]]
name = "app"
domains = ["app.example.com", "redir.example.com"]
issuer = "internal"
[[certificate]]
name = "expired"
cert_file = "expired.pem"
key_file = "expired.key"
[[listener]]
name = "http"
bind = "127.0.0.1:{http}"
protocol = "http"
default_action = {{ redirect = {{ protocol = "https", port = {https} }} }}
[[listener.rule]]
priority = 1
host = ["redir.example.com"]
action = {{ redirect = {{ protocol = "https", port = 1234 }} }}
[[listener]]
name = "https"
bind = "127.0.0.1:{https}"
protocol = "https"
certificates = ["app", "expired"]
default_action = {{ fixed_response = {{ status = 200, body = "ok" }} }}
"#,
            state = d.join("state1").display(),
            zones = zones("example.com.zone", "primary.net.zone"),
        ),
    )
    .unwrap();
    let secondary = d.join("secondary.toml");
    std::fs::write(
        &secondary,
        format!(
            "state_dir = \"{}\"\n[dns]\nlisten = [\"127.0.0.2:{dns}\"]\n{}",
            d.join("state2").display(),
            zones("example.com.zone", "behind.net.zone")
        ),
    )
    .unwrap();
    let p1 = Proc::spawn(&["serve", "-c", primary.to_str().unwrap()]);
    let _p2 = Proc::spawn(&["serve", "-c", secondary.to_str().unwrap()]);
    wait_file(
        &d.join("state1/certificates/live/app/fullchain.pem"),
        Duration::from_secs(20),
        "internal certificate not issued",
        &p1,
    )
    .await;
    wait_listening(https).await;
    // Roots: the internal CA and the CA of the expired certificate.
    let mut roots = std::fs::read_to_string(d.join("state1/ca/root.pem")).unwrap();
    roots.push_str(&ca_cert.pem());
    std::fs::write(d.join("roots.pem"), roots).unwrap();
    let common: Vec<String> = [
        "--resolver".to_string(),
        format!("127.0.0.1:{dns}"),
        "--dns-port".into(),
        dns.to_string(),
        "--http-port".into(),
        http.to_string(),
        "--https-port".into(),
        https.to_string(),
        "--ca-roots".into(),
        d.join("roots.pem").display().to_string(),
        "-c".into(),
        primary.display().to_string(),
    ]
    .into();
    let private = ["--private-ca"];
    eventually("both nameservers answer", Duration::from_secs(20), || {
        let common = common.clone();
        async move {
            let (_, rows) = doctor("app.example.com", &common, &private);
            has(&rows, "OK", "Propagation")
        }
    })
    .await;

    // Healthy: every finding OK, exit 0.
    let (code, rows) = doctor("app.example.com", &common, &private);
    assert_eq!(code, 0, "{rows:#?}");
    assert!(rows.iter().all(|r| r.0 == "OK"), "{rows:#?}");
    for name in [
        "Resolves",
        "Propagation",
        "CAA",
        "AHTTP01",
        "HTTPS",
        "DNS01Ready",
    ] {
        assert!(has(&rows, "OK", name), "{name}: {rows:#?}");
    }
    // A CNAME chain is followed and named.
    let (_, rows) = doctor("www.example.com", &common, &private);
    assert!(
        rows.iter()
            .any(|r| r.1 == "Resolves" && r.2.contains("via CNAME app.example.com")),
        "{rows:#?}"
    );

    // Missing record.
    let (code, rows) = doctor("nothere.example.com", &common, &private);
    assert_eq!(code, 1);
    assert!(has(&rows, "FATAL", "NoRecords"), "{rows:#?}");

    // One nameserver behind: named, with its serial.
    let (code, rows) = doctor("lagging.example.net", &common, &private);
    assert_eq!(code, 1);
    let lag = rows
        .iter()
        .find(|r| r.1 == "NameserversDisagree")
        .unwrap_or_else(|| panic!("{rows:#?}"));
    assert_eq!(lag.0, "ERROR");
    assert!(
        lag.2.contains(&format!("127.0.0.2:{dns}")) && lag.2.contains("serial 4"),
        "{}",
        lag.2
    );
    assert!(
        !lag.2.contains(&format!("127.0.0.1:{dns}) has")),
        "{}",
        lag.2
    );

    // CAA forbidding the CA: on the name, on a parent (climbing), and a critical unknown tag.
    let (code, rows) = doctor("blocked.example.com", &common, &private);
    assert_eq!(code, 1);
    assert!(has(&rows, "ERROR", "CAAIssuanceNotAllowed"), "{rows:#?}");
    let (_, rows) = doctor("app.strict.example.com", &common, &private);
    assert!(
        rows.iter()
            .any(|r| r.1 == "CAAIssuanceNotAllowed" && r.2.contains("strict.example.com")),
        "{rows:#?}"
    );
    let (_, rows) = doctor("critical.example.com", &common, &private);
    assert!(has(&rows, "ERROR", "CAACriticalUnknown"), "{rows:#?}");
    let (_, rows) = doctor(
        "blocked.example.com",
        &common,
        &["--private-ca", "--caa-identity", "other-ca.example"],
    );
    assert!(has(&rows, "OK", "CAA"), "{rows:#?}");

    // Closed port 80 (here: the port a CA would use).
    let mut closed_80 = common.clone();
    closed_80[5] = closed.to_string();
    assert_eq!(common[4], "--http-port");
    let (code, rows) = doctor("app.example.com", &closed_80, &private);
    assert_eq!(code, 1);
    assert!(has(&rows, "ERROR", "ANotWorking"), "{rows:#?}");

    // A redirect a CA will not follow.
    let (_, rows) = doctor("redir.example.com", &common, &private);
    assert!(
        rows.iter()
            .any(|r| r.1 == "BadRedirect" && r.2.contains("port 1234")),
        "{rows:#?}"
    );

    // IPv6: the AAAA record's address does not answer on port 80 (only IPv4 listens).
    let (code, rows) = doctor("dual.example.com", &common, &private);
    assert_eq!(code, 1);
    assert!(has(&rows, "ERROR", "AAAANotWorking"), "{rows:#?}");
    assert!(has(&rows, "OK", "AHTTP01"), "{rows:#?}");

    // DNS-01 through an `_acme-challenge` CNAME into a hosted zone.
    let (_, rows) = doctor("delegated.example.com", &common, &private);
    assert!(
        rows.iter().any(|r| r.1 == "DNS01Ready"
            && r.2.contains("CNAME to delegated.example.net")
            && r.2.contains("hosted zone example.net")),
        "{rows:#?}"
    );

    // An expired certificate.
    let (code, rows) = doctor("expired.example.com", &common, &private);
    assert_eq!(code, 1);
    assert!(has(&rows, "ERROR", "CertificateExpired"), "{rows:#?}");

    // A public CA: loopback addresses and private names are refused.
    let (code, rows) = doctor("app.example.com", &common, &[]);
    assert_eq!(code, 1);
    assert!(has(&rows, "FATAL", "ReservedAddress"), "{rows:#?}");
    // An address is checked as an IP-address certificate (RFC 8738): a documentation address
    // is not publicly routable, so a public CA cannot validate it.
    let (_, rows) = doctor("192.0.2.1", &common, &[]);
    assert!(has(&rows, "OK", "IPAddress"), "{rows:#?}");
    assert!(has(&rows, "FATAL", "ReservedAddress"), "{rows:#?}");
    // A private name without --private-ca is said to be one, and the checks that do not need a
    // public CA still run (here: resolution, which Portico refuses for a zone it does not host).
    let (code, rows) = doctor("app.example.test", &common, &[]);
    assert_eq!(code, 1);
    assert!(
        rows.iter()
            .any(|r| r.1 == "InvalidDomain" && r.2.contains("not under a public suffix")),
        "{rows:#?}"
    );
    assert!(
        rows.iter()
            .any(|r| ["DNSLookupFailed", "NoRecords", "Resolves"].contains(&r.1.as_str())),
        "{rows:#?}"
    );

    // The text report: a fix line under each problem and a final line.
    let (code, out) = run(&[
        "doctor",
        "nothere.example.com",
        "--private-ca",
        "--resolver",
        &format!("127.0.0.1:{dns}"),
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("FATAL") && out.contains("NoRecords"), "{out}");
    assert!(out.contains("fix: add an A"), "{out}");
    assert!(out.contains("result: 1 fatal"), "{out}");
}
