//! The zone journal, from outside: `portico serve` changed with nsupdate (RFC 2136 with TSIG),
//! killed with SIGKILL or cut short in the middle of a checkpoint, and read back with dig
//! (AXFR, IXFR) after a restart.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::support::{self, eventually, TempDir};
use common::{free_port, Proc, BIN};

const SECRET: &str = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=";

fn config(dir: &Path, dns: u16) -> String {
    format!(
        r#"state_dir = "{state}"
shutdown_timeout = "5s"
[dns]
listen = ["127.0.0.1:{dns}"]
[[tsig_key]]
name = "upd"
algorithm = "hmac-sha256"
secret = "{SECRET}"
[[zone]]
name = "example.test"
nameservers = ["ns1.example.test."]
update_keys = ["upd"]
# Transfers are allowed from the secondaries' address: dig on 127.0.0.1 (nothing listens on
# the port, so NOTIFYs go unanswered).
secondaries = ["127.0.0.1:{unused}"]
[[zone.record]]
name = "ns1"
type = "A"
values = ["127.0.0.1"]
"#,
        state = dir.join("state").display(),
        unused = free_port(),
    )
}

struct Server {
    config: std::path::PathBuf,
    dns: u16,
}

impl Server {
    fn new(dir: &Path) -> Server {
        let dns = free_port();
        let config = dir.join("portico.toml");
        std::fs::write(&config, self::config(dir, dns)).unwrap();
        Server { config, dns }
    }

    /// Starts `portico serve` (with extra environment) and waits until it answers.
    async fn start(&self, env: &[(&str, &str)]) -> Proc {
        let mut vars = vec![("RUST_LOG", "info")];
        vars.extend_from_slice(env);
        let proc = Proc::spawn_program(BIN, &["serve", "-c", self.config.to_str().unwrap()], &vars);
        let (dns, out) = (self.dns, proc.out.clone());
        eventually(
            "portico answers for the zone",
            Duration::from_secs(30),
            || {
                let ok = dig(dns, &["ns1.example.test", "A", "+short"]) == "127.0.0.1";
                let o = out.clone();
                async move {
                    if !ok {
                        eprintln!(
                            "waiting: {}",
                            o.lock().unwrap().lines().last().unwrap_or("")
                        );
                    }
                    ok
                }
            },
        )
        .await;
        proc
    }

    /// One RFC 2136 update adding an A and a TXT record at `n<i>` in one message; true when
    /// the server acknowledged it.
    fn update(&self, i: usize) -> bool {
        let script = format!(
            "server 127.0.0.1 {port}\nzone example.test\nupdate add n{i}.example.test 60 A 192.0.2.{a}\nupdate add n{i}.example.test 60 TXT \"n{i}\"\nsend\n",
            port = self.dns,
            a = i % 250 + 1,
        );
        let mut child = Command::new("nsupdate")
            .args(["-v", "-t", "3", "-y", &format!("hmac-sha256:upd:{SECRET}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "nsupdate is missing: apt-get install bind9-dnsutils (scripts/test installs it)",
            );
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        child.wait().unwrap().success()
    }

    /// The zone by AXFR: owner name → records at it (type and data).
    fn axfr(&self) -> BTreeMap<String, BTreeSet<String>> {
        let out = dig(
            self.dns,
            &["example.test", "AXFR", "+noall", "+answer", "+nocomments"],
        );
        assert!(!out.contains("Transfer failed"), "{out}");
        let mut zone: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for line in out.lines().filter(|l| !l.starts_with(';') && !l.is_empty()) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 5 {
                zone.entry(f[0].to_string()).or_default().insert(format!(
                    "{} {}",
                    f[3],
                    f[4..].join(" ")
                ));
            }
        }
        zone
    }

    fn serial(&self) -> u32 {
        let out = dig(self.dns, &["example.test", "SOA", "+short"]);
        out.split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no SOA serial in {out:?}"))
    }
}

fn dig(port: u16, args: &[&str]) -> String {
    let out = Command::new("dig")
        .args(["+time=3", "+tries=1", "@127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("dig is missing: apt-get install bind9-dnsutils (scripts/test installs it)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn has_update(zone: &BTreeMap<String, BTreeSet<String>>, i: usize) -> bool {
    let Some(at) = zone.get(&format!("n{i}.example.test.")) else {
        return false;
    };
    at.contains(&format!("A 192.0.2.{}", i % 250 + 1)) && at.contains(&format!("TXT \"n{i}\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_a_stream_of_updates_keeps_every_acknowledged_one_and_none_half_applied() {
    let dir = TempDir::new("journal-kill");
    let server = Arc::new(Server::new(dir.path()));
    let mut proc = server.start(&[]).await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stream = {
        let (server, acked) = (server.clone(), acked.clone());
        std::thread::spawn(move || {
            for i in 0..2000 {
                if !server.update(i) {
                    return i;
                }
                acked.lock().unwrap().push(i);
            }
            2000
        })
    };
    let count = acked.clone();
    eventually("40 updates acknowledged", Duration::from_secs(60), || {
        let n = count.lock().unwrap().len();
        async move { n >= 40 }
    })
    .await;
    // In the middle of the stream: nsupdate is sending the next update now or about to.
    proc.signal(libc::SIGKILL);
    proc.wait_exit(Duration::from_secs(10));
    let first_failed = stream.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(first_failed < 2000, "the stream ran into the kill");
    let zones = dir.path().join("state/zones");
    assert!(zones.join("example.test.journal").exists());

    let _proc = server.start(&[]).await;
    let zone = server.axfr();
    for i in &acked {
        assert!(
            has_update(&zone, *i),
            "acknowledged update {i} lost: {zone:?}"
        );
    }
    // Nothing half-applied: every name holds both records of its update or nothing.
    for (name, records) in &zone {
        if let Some(i) = name
            .strip_prefix('n')
            .and_then(|r| r.strip_suffix(".example.test."))
            .and_then(|i| i.parse::<usize>().ok())
        {
            assert!(
                has_update(&zone, i),
                "half an update at {name}: {records:?}"
            );
            assert!(i <= first_failed, "an update never sent is present: {name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_cut_short_leaves_the_previous_master_file_and_a_journal_that_replays() {
    let dir = TempDir::new("journal-checkpoint");
    let server = Server::new(dir.path());
    // The test double of a crash: the process aborts half-way through writing the checkpoint.
    let mut proc = server
        .start(&[("PORTICO_TEST_FAULT", "checkpoint-crash")])
        .await;
    let zones = dir.path().join("state/zones");
    let master = zones.join("example.test.zone");
    let before = std::fs::read_to_string(&master).unwrap();
    let serial = server.serial();
    for i in 0..5 {
        assert!(server.update(i), "update {i}");
    }
    assert_eq!(server.serial(), serial + 5);
    assert_eq!(
        std::fs::read_to_string(&master).unwrap(),
        before,
        "a change is journaled, not a rewrite of the master file"
    );
    // A clean shutdown checkpoints; the fault cuts it short.
    proc.signal(libc::SIGTERM);
    let code = proc.wait_exit(Duration::from_secs(20));
    assert_ne!(code, 0, "the checkpoint crashed:\n{}", proc.output());
    assert_eq!(std::fs::read_to_string(&master).unwrap(), before);
    let torn: Vec<_> = std::fs::read_dir(&zones)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".example.test.zone.tmp"))
        .collect();
    assert_eq!(
        torn.len(),
        1,
        "the half-written checkpoint is left: {torn:?}"
    );

    let mut proc = server.start(&[]).await;
    assert_eq!(server.serial(), serial + 5);
    let zone = server.axfr();
    for i in 0..5 {
        assert!(has_update(&zone, i), "update {i} after the crash: {zone:?}");
    }
    // Now a clean shutdown writes the master file with every change.
    proc.signal(libc::SIGTERM);
    assert_eq!(proc.wait_exit(Duration::from_secs(20)), 0);
    let after = std::fs::read_to_string(&master).unwrap();
    assert!(after.contains("n4\t60\tIN\tTXT"), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ixfr_from_a_serial_older_than_the_restart_is_answered_incrementally() {
    let dir = TempDir::new("journal-ixfr");
    let server = Server::new(dir.path());
    let mut proc = server.start(&[]).await;
    let s0 = server.serial();
    for i in 0..3 {
        assert!(server.update(i));
    }
    proc.signal(libc::SIGTERM);
    assert_eq!(proc.wait_exit(Duration::from_secs(20)), 0);

    let _proc = server.start(&[]).await;
    assert!(server.update(3));
    let now = server.serial();
    assert_eq!(now, s0 + 4);
    let from = s0 + 1;
    let out = dig(
        server.dns,
        &[
            "example.test",
            &format!("IXFR={from}"),
            "+noall",
            "+answer",
            "+nocomments",
        ],
    );
    let records: Vec<Vec<&str>> = out
        .lines()
        .filter(|l| !l.starts_with(';') && !l.is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    let soa_serial =
        |r: &Vec<&str>| (r.get(3) == Some(&"SOA")).then(|| r[6].parse::<u32>().unwrap());
    assert_eq!(records.first().and_then(soa_serial), Some(now), "{out}");
    assert_eq!(
        records.get(1).and_then(soa_serial),
        Some(from),
        "an incremental transfer (RFC 1995: the old SOA second), not a full one: {out}"
    );
    for i in 1..4 {
        let name = format!("n{i}.example.test.");
        assert!(records.iter().any(|r| r[0] == name), "{name} added: {out}");
    }
    assert!(
        !records
            .iter()
            .any(|r| r[0] == "n0.example.test." || r[0] == "ns1.example.test."),
        "only what changed after serial {from}: {out}"
    );
}
