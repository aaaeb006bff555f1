//! Changes: change batches (visible in the next answer, higher serial, survive a restart, refused
//! whole when they would break the zone), RFC 2136 with `nsupdate -y`, and a BIND secondary that
//! transfers the zone by AXFR and follows a change after NOTIFY.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use portico_dns::zones::{wait_insync, Action, ChangeStatus, RecordChange};
use support::*;

const SECRET: &str = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=";

fn zone_config(extra: &str) -> String {
    format!(
        r#"
[[tsig_key]]
name = "certbot"
secret = "{SECRET}"
[[tsig_key]]
name = "other"
secret = "b3RoZXJvdGhlcm90aGVyb3RoZXJvdGhlcm90aGVyMTI="
[[zone]]
name = "example.test"
update_keys = ["certbot"]
{extra}
[[zone.record]]
name = "www"
type = "A"
values = ["192.0.2.10"]
"#
    )
}

fn change(action: Action, name: &str, t: &str, values: &[&str]) -> RecordChange {
    RecordChange {
        action,
        name: name.into(),
        rtype: t.into(),
        ttl: Some(60),
        values: values.iter().map(|v| v.to_string()).collect(),
        target: None,
        routing: Default::default(),
    }
}

async fn serial(addr: SocketAddr) -> u32 {
    let out = dig(addr, "example.test SOA +short").await;
    out.split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no SOA: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_batches_apply_atomically_and_survive_restart() {
    let dir = TempDir::new("batch");
    let dns = serve(&zone_config(""), dir.path()).await;
    let before = serial(dns.addr).await;

    let info = dns
        .zones
        .change(
            "example.test",
            &[
                change(Action::Create, "api", "A", &["192.0.2.20", "192.0.2.21"]),
                change(Action::Upsert, "www", "A", &["192.0.2.11"]),
                change(Action::Create, "_acme-challenge", "TXT", &["token value"]),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        info.status,
        ChangeStatus::Insync,
        "no secondaries: in sync at once"
    );
    assert!(info.id.starts_with('C'));
    assert_eq!(info.serial, before + 1);
    assert_eq!(serial(dns.addr).await, before + 1);
    assert_eq!(
        dig(dns.addr, "api.example.test A +short")
            .await
            .lines()
            .count(),
        2
    );
    assert_eq!(
        dig(dns.addr, "www.example.test A +short").await.trim(),
        "192.0.2.11"
    );
    assert_eq!(
        dig(dns.addr, "_acme-challenge.example.test TXT +short")
            .await
            .trim(),
        "\"token value\""
    );

    // A batch that would break the zone is refused whole: nothing of it applies.
    let err = dns
        .zones
        .change(
            "example.test",
            &[
                change(Action::Create, "new", "A", &["192.0.2.30"]),
                change(Action::Create, "api", "CNAME", &["www"]),
            ],
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CNAME cannot coexist"), "{err}");
    assert_eq!(
        status(&dig(dns.addr, "new.example.test A").await),
        "NXDOMAIN"
    );
    let err = dns
        .zones
        .change(
            "example.test",
            &[change(Action::Create, "api", "A", &["192.0.2.1"])],
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    let err = dns
        .zones
        .change(
            "example.test",
            &[change(Action::Delete, "api", "A", &["192.0.2.99"])],
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("do not match"), "{err}");
    let err = dns
        .zones
        .change(
            "example.test",
            &[change(
                Action::Create,
                "x.example.org.",
                "A",
                &["192.0.2.1"],
            )],
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("outside the zone"), "{err}");
    assert_eq!(
        serial(dns.addr).await,
        before + 1,
        "refused batches leave the serial alone"
    );

    // Restart: a new server on the same state directory serves the changed zone.
    dns.server.stop();
    drop(dns);
    let dns = serve(&zone_config(""), dir.path()).await;
    assert_eq!(serial(dns.addr).await, before + 1);
    assert_eq!(
        dig(dns.addr, "api.example.test A +short")
            .await
            .lines()
            .count(),
        2
    );
    assert_eq!(
        dig(dns.addr, "_acme-challenge.example.test TXT +short")
            .await
            .trim(),
        "\"token value\""
    );
    // www is also in the config, unchanged there: the run-time UPSERT stands.
    assert_eq!(
        dig(dns.addr, "www.example.test A +short").await.trim(),
        "192.0.2.11"
    );
    dns.server.stop();
    drop(dns);
    // Editing the config's record set applies it again: config changes take effect.
    let edited = zone_config("").replace("192.0.2.10", "192.0.2.12");
    let dns = serve(&edited, dir.path()).await;
    assert_eq!(
        dig(dns.addr, "www.example.test A +short").await.trim(),
        "192.0.2.12"
    );
    assert_eq!(serial(dns.addr).await, before + 2);

    let text = dns.zones.export("example.test").unwrap();
    assert!(text.contains("api\t60\tIN\tA\t192.0.2.20"), "{text}");
}

async fn nsupdate(dns: SocketAddr, key: &str, commands: &str) -> (i32, String) {
    let script = format!(
        "server {} {}\nzone example.test\n{commands}\nsend\n",
        dns.ip(),
        dns.port()
    );
    let mut args = Vec::new();
    if !key.is_empty() {
        args.push("-y".to_string());
        args.push(key.to_string());
    }
    run("nsupdate", "bind9-dnsutils", &args, Some(&script)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nsupdate_with_tsig_adds_and_deletes_and_bad_keys_are_refused() {
    let dir = TempDir::new("nsupdate");
    let dns = serve(&zone_config(""), dir.path()).await;
    let key = format!("hmac-sha256:certbot:{SECRET}");
    let before = serial(dns.addr).await;

    let (code, out) = nsupdate(
        dns.addr,
        &key,
        "update add _acme-challenge.example.test. 60 TXT \"abc\"",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        dig(dns.addr, "_acme-challenge.example.test TXT +short")
            .await
            .trim(),
        "\"abc\""
    );
    assert_eq!(serial(dns.addr).await, before + 1);

    // Prerequisites: "yxrrset" holds, "nxdomain" fails with YXDOMAIN.
    let (code, out) = nsupdate(
        dns.addr,
        &key,
        "prereq yxrrset www.example.test. A\nupdate add two.example.test. 60 A 192.0.2.2",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = nsupdate(
        dns.addr,
        &key,
        "prereq nxdomain www.example.test.\nupdate add three.example.test. 60 A 192.0.2.3",
    )
    .await;
    assert_ne!(code, 0);
    assert!(out.contains("YXDOMAIN"), "{out}");
    assert_eq!(
        status(&dig(dns.addr, "three.example.test A").await),
        "NXDOMAIN"
    );

    let (code, out) = nsupdate(
        dns.addr,
        &key,
        "update delete _acme-challenge.example.test. TXT",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        status(&dig(dns.addr, "_acme-challenge.example.test TXT").await),
        "NXDOMAIN"
    );

    // A wrong secret: NOTAUTH(BADSIG). No key: REFUSED. A valid key not allowed here: REFUSED.
    let (code, out) = nsupdate(
        dns.addr,
        "hmac-sha256:certbot:YmFkYmFkYmFkYmFkYmFkYmFkYmFkYmFkYmFkYmFkYmE=",
        "update add bad.example.test. 60 A 192.0.2.9",
    )
    .await;
    assert_ne!(code, 0);
    assert!(out.contains("BADSIG"), "{out}");
    let (code, out) = nsupdate(dns.addr, "", "update add bad.example.test. 60 A 192.0.2.9").await;
    assert_ne!(code, 0);
    assert!(out.contains("REFUSED"), "{out}");
    let (code, out) = nsupdate(
        dns.addr,
        "hmac-sha256:other:b3RoZXJvdGhlcm90aGVyb3RoZXJvdGhlcm90aGVyMTI=",
        "update add bad.example.test. 60 A 192.0.2.9",
    )
    .await;
    assert_ne!(code, 0);
    assert!(out.contains("REFUSED"), "{out}");
    let (code, out) = nsupdate(
        dns.addr,
        "hmac-sha256:nobody:b3RoZXJvdGhlcm90aGVyb3RoZXJvdGhlcm90aGVyMTI=",
        "update add bad.example.test. 60 A 192.0.2.9",
    )
    .await;
    assert_ne!(code, 0);
    assert!(out.contains("NOTAUTH") || out.contains("BADKEY"), "{out}");
    assert_eq!(
        status(&dig(dns.addr, "bad.example.test A").await),
        "NXDOMAIN"
    );
}

fn free_udp_tcp_port() -> u16 {
    loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A BIND secondary of example.test on 127.0.0.1:`port`, transferring from `primary`; `key`
/// makes it sign everything to the primary with that hmac-sha256 secret and accept NOTIFY only
/// signed with it. Killed when the child drops.
fn start_bind_secondary(
    dir: &std::path::Path,
    port: u16,
    primary: SocketAddr,
    key: Option<&str>,
) -> tokio::process::Child {
    let named_dir = dir.join("named");
    std::fs::create_dir_all(&named_dir).unwrap();
    let conf = named_dir.join("named.conf");
    let (key_conf, primary_key, allow_notify) = match key {
        Some(secret) => (
            format!(
                "key \"xfr\" {{ algorithm hmac-sha256; secret \"{secret}\"; }};\nserver 127.0.0.1 {{ keys {{ xfr; }}; }};\n"
            ),
            " key xfr",
            "  allow-notify { key xfr; };\n",
        ),
        None => (String::new(), "", ""),
    };
    std::fs::write(
        &conf,
        format!(
            r#"{key_conf}options {{
  directory "{d}";
  pid-file "{d}/named.pid";
  listen-on port {port} {{ 127.0.0.1; }};
  listen-on-v6 {{ none; }};
  recursion no;
  dnssec-validation no;
  notify no;
  allow-query {{ any; }};
}};
zone "example.test" {{
  type secondary;
  primaries {{ 127.0.0.1 port {p}{primary_key}; }};
{allow_notify}  file "{d}/example.test.db";
}};
"#,
            d = named_dir.display(),
            p = primary.port()
        ),
    )
    .unwrap();
    let named = if std::path::Path::new("/usr/sbin/named").exists() {
        "/usr/sbin/named"
    } else {
        "named"
    };
    tokio::process::Command::new(named)
        .args(["-g", "-c", conf.to_str().unwrap(), "-n", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run named ({e}): install it with `apt-get install bind9` (scripts/test does this)"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_secondary_transfers_and_follows_notify() {
    let dir = TempDir::new("secondary");
    let bind_port = free_udp_tcp_port();
    let dns = serve(
        &zone_config(&format!("secondaries = [\"127.0.0.1:{bind_port}\"]")),
        dir.path(),
    )
    .await;

    // AXFR is refused to anyone else: dig from 127.0.0.2 is not a configured secondary.
    let out = dig(dns.addr, "example.test AXFR -b 127.0.0.2").await;
    assert!(
        out.contains("Transfer failed") || out.contains("REFUSED"),
        "{out}"
    );

    let mut child = start_bind_secondary(dir.path(), bind_port, dns.addr, None);
    let secondary: SocketAddr = format!("127.0.0.1:{bind_port}").parse().unwrap();
    eventually(
        "BIND transferred the zone",
        Duration::from_secs(30),
        || async { dig(secondary, "www.example.test A +short").await.trim() == "192.0.2.10" },
    )
    .await;

    let info = dns
        .zones
        .change(
            "example.test",
            &[change(Action::Create, "after-notify", "A", &["192.0.2.77"])],
        )
        .await
        .unwrap();
    assert_eq!(
        info.status,
        ChangeStatus::Pending,
        "a secondary must catch up first"
    );
    assert!(
        wait_insync(&dns.zones, &info.id, Duration::from_secs(30)).await,
        "INSYNC once BIND serves the serial"
    );
    assert_eq!(
        dig(secondary, "after-notify.example.test A +short")
            .await
            .trim(),
        "192.0.2.77"
    );
    assert_eq!(serial(secondary).await, info.serial);
    let _ = child.start_kill();
    let _ = child.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_file_and_config_edits_reach_a_stored_zone() {
    let dir = TempDir::new("fileedit");
    let file = dir.path().join("example.test.zone");
    std::fs::write(&file, "from-file A 192.0.2.1\nkept A 192.0.2.2\n").unwrap();
    let config = |extra: &str| zone_config(&format!("file = \"example.test.zone\"\n{extra}"));
    let dns = serve(&config(""), dir.path()).await;
    dns.zones
        .change(
            "example.test",
            &[change(Action::Create, "runtime", "A", &["192.0.2.50"])],
        )
        .await
        .unwrap();
    dns.server.stop();
    drop(dns);

    // The file changes one record and drops another; the run-time record stays.
    std::fs::write(&file, "from-file A 192.0.2.9\n").unwrap();
    let dns = serve(&config(""), dir.path()).await;
    assert_eq!(
        dig(dns.addr, "from-file.example.test A +short")
            .await
            .trim(),
        "192.0.2.9"
    );
    assert_eq!(
        status(&dig(dns.addr, "kept.example.test A").await),
        "NXDOMAIN"
    );
    assert_eq!(
        dig(dns.addr, "runtime.example.test A +short").await.trim(),
        "192.0.2.50"
    );
    dns.server.stop();
    drop(dns);

    // A [[zone.record]] removed from the config is removed from the zone.
    let without_www = config("").replace(
        "[[zone.record]]\nname = \"www\"\ntype = \"A\"\nvalues = [\"192.0.2.10\"]\n",
        "",
    );
    assert_ne!(without_www, config(""));
    let dns = serve(&without_www, dir.path()).await;
    assert_eq!(
        status(&dig(dns.addr, "www.example.test A").await),
        "NXDOMAIN"
    );
    assert_eq!(
        dig(dns.addr, "runtime.example.test A +short").await.trim(),
        "192.0.2.50"
    );
}

/// Glue is precomputed for the served zone: an MX answer carries the exchange's address, a
/// change of that address reaches the additional section, and so does a delegation's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precomputed_glue_follows_changes_to_the_targets() {
    let dir = TempDir::new("glue");
    let dns = serve(&zone_config(""), dir.path()).await;
    dns.zones
        .change(
            "example.test",
            &[
                change(Action::Create, "@", "MX", &["10 mail"]),
                change(Action::Create, "mail", "A", &["192.0.2.25"]),
                change(Action::Create, "sub", "NS", &["ns.sub"]),
                change(Action::Create, "ns.sub", "A", &["192.0.2.53"]),
            ],
        )
        .await
        .unwrap();
    let additional = |out: String| {
        out.lines()
            .skip_while(|l| !l.contains("ADDITIONAL SECTION"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mx = additional(dig(dns.addr, "example.test MX +norec").await);
    assert!(
        mx.contains("mail.example.test.") && mx.contains("192.0.2.25"),
        "{mx}"
    );
    dns.zones
        .change(
            "example.test",
            &[
                change(Action::Upsert, "mail", "A", &["192.0.2.26"]),
                change(Action::Upsert, "ns.sub", "A", &["192.0.2.54"]),
            ],
        )
        .await
        .unwrap();
    let mx = additional(dig(dns.addr, "example.test MX +norec").await);
    assert!(
        mx.contains("192.0.2.26") && !mx.contains("192.0.2.25"),
        "{mx}"
    );
    let referral = additional(dig(dns.addr, "host.sub.example.test A +norec").await);
    assert!(
        referral.contains("ns.sub.example.test.") && referral.contains("192.0.2.54"),
        "{referral}"
    );
}

const XFR_SECRET: &str = "eGZyeGZyeGZyeGZyeGZyeGZyeGZyeGZyeGZyeGZyMTI=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_signed_with_tsig_to_a_bind_secondary_and_unsigned_ones_refused() {
    let dir = TempDir::new("secondary-tsig");
    let bind_port = free_udp_tcp_port();
    let dns = serve(
        &zone_config(&format!(
            "secondaries = [\"127.0.0.1:{bind_port}\"]\ntransfer_keys = [\"xfr\"]\n[[tsig_key]]\nname = \"xfr\"\nsecret = \"{XFR_SECRET}\"\n[[zone]]\nname = \"unused.test\"",
        )),
        dir.path(),
    )
    .await;
    // Enough records for several transfer messages, so that the TSIG chain is exercised.
    let many: Vec<RecordChange> = (0..250)
        .map(|i| change(Action::Create, &format!("host{i}"), "A", &["192.0.2.1"]))
        .collect();
    dns.zones.change("example.test", &many).await.unwrap();

    // Unsigned: refused, even from the secondary's own address; a wrong key: refused too.
    let out = dig(dns.addr, "example.test AXFR").await;
    assert!(
        out.contains("Transfer failed") || out.contains("REFUSED"),
        "{out}"
    );
    let out = dig(
        dns.addr,
        "example.test AXFR -y hmac-sha256:xfr:b3RoZXJvdGhlcm90aGVyb3RoZXJvdGhlcm90aGVyMTI=",
    )
    .await;
    assert!(!out.contains("host249.example.test"), "{out}");
    // Signed with the key: every message verifies (dig checks the chain of MACs).
    let out = dig(
        dns.addr,
        &format!("example.test AXFR -y hmac-sha256:xfr:{XFR_SECRET}"),
    )
    .await;
    assert!(out.contains("host249.example.test"), "{out}");
    assert!(
        !out.to_ascii_lowercase().contains("failure") && !out.contains("Transfer failed"),
        "{out}"
    );
    assert!(out.contains("XFR size: 254 records (messages 3"), "{out}");

    let mut child = start_bind_secondary(dir.path(), bind_port, dns.addr, Some(XFR_SECRET));
    let secondary: SocketAddr = format!("127.0.0.1:{bind_port}").parse().unwrap();
    eventually(
        "BIND transferred the zone with the key",
        Duration::from_secs(30),
        || async { dig(secondary, "host249.example.test A +short").await.trim() == "192.0.2.1" },
    )
    .await;
    // A change reaches BIND by a signed NOTIFY (BIND accepts NOTIFY only with the key here) and
    // a signed IXFR or AXFR.
    let info = dns
        .zones
        .change(
            "example.test",
            &[change(Action::Create, "after-notify", "A", &["192.0.2.77"])],
        )
        .await
        .unwrap();
    assert!(
        wait_insync(&dns.zones, &info.id, Duration::from_secs(30)).await,
        "INSYNC once BIND serves the serial"
    );
    assert_eq!(
        dig(secondary, "after-notify.example.test A +short")
            .await
            .trim(),
        "192.0.2.77"
    );
    let _ = child.start_kill();
    let _ = child.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_queries_get_signed_answers_truncated_when_the_signature_would_not_fit() {
    let dir = TempDir::new("signed-query");
    let dns = serve(&zone_config(""), dir.path()).await;
    let text = format!("\"{}\" \"{}\"", "a".repeat(200), "b".repeat(200));
    dns.zones
        .change(
            "example.test",
            &[change(Action::Create, "big", "TXT", &[&text])],
        )
        .await
        .unwrap();
    let key = format!("-y hmac-sha256:certbot:{SECRET}");
    let out = dig(dns.addr, &format!("www.example.test A +noedns {key}")).await;
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(out.contains("192.0.2.10"), "{out}");
    assert!(
        out.contains("TSIG") && !out.to_ascii_lowercase().contains("failure"),
        "dig verifies the answer's TSIG: {out}"
    );
    // The TXT answer fits 512 bytes unsigned, not with its TSIG: the question alone, TC, signed.
    let out = dig(dns.addr, "big.example.test TXT +noedns +ignore").await;
    assert!(
        !flags(&out).iter().any(|f| f == "tc"),
        "unsigned, it fits: {out}"
    );
    let out = dig(
        dns.addr,
        &format!("big.example.test TXT +noedns +ignore {key}"),
    )
    .await;
    assert!(flags(&out).iter().any(|f| f == "tc"), "{out}");
    assert!(!out.to_ascii_lowercase().contains("failure"), "{out}");
    // Over TCP the whole answer comes, signed.
    let out = dig(dns.addr, &format!("big.example.test TXT +tcp {key}")).await;
    assert!(
        out.contains(&"b".repeat(200)) && !out.to_ascii_lowercase().contains("failure"),
        "{out}"
    );
}
