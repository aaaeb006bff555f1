//! Answers checked with `dig` for every record type and rcode path, over UDP and TCP, with and
//! without EDNS; truncation and the TCP retry; REFUSED outside hosted zones; malformed input.

mod support;

use support::*;

const ZONE: &str = r#"
[[zone]]
name = "example.test"
file = "example.test.zone"

[[zone.record]]
name = "@"
type = "ALIAS"
target = "listener:https"

[[zone.record]]
name = "apex-alias"
type = "ALIAS"
target = "app"
"#;

const FILE: &str = r#"
$ORIGIN example.test.
$TTL 300
@       SOA  ns1 hostmaster 7 7200 900 1209600 120
        NS   ns1
        NS   ns2
        MX   10 mail
        CAA  0 issue "letsencrypt.org"
ns1     A    192.0.2.1
ns2     A    192.0.2.2
app     A    192.0.2.10
        AAAA 2001:db8::10
www     CNAME app
chain   CNAME www
dangling CNAME missing
mail    A    192.0.2.25
txt     TXT  "v=spf1 -all" "second string"
_sip._tcp SRV 10 5 5060 app
10      PTR  app
*.wild  A    192.0.2.99
a.b.c   TXT  "deep"
sub     NS   ns.sub
ns.sub  A    192.0.2.53
big     TXT  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
big     TXT  "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
big     TXT  "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
big     TXT  "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"
"#;

async fn setup() -> (TempDir, Dns) {
    let dir = TempDir::new("answers");
    std::fs::write(dir.path().join("example.test.zone"), FILE).unwrap();
    let dns = serve(ZONE, dir.path()).await;
    (dir, dns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_type_over_udp_and_tcp_with_and_without_edns() {
    let (_dir, dns) = setup().await;
    let a = dns.addr;
    let cases: &[(&str, &str, &str)] = &[
        ("app.example.test", "A", "app.example.test. 300 IN A 192.0.2.10"),
        ("app.example.test", "AAAA", "app.example.test. 300 IN AAAA 2001:db8::10"),
        ("www.example.test", "CNAME", "www.example.test. 300 IN CNAME app.example.test."),
        ("txt.example.test", "TXT", "txt.example.test. 300 IN TXT \"v=spf1 -all\" \"second string\""),
        ("example.test", "CAA", "example.test. 300 IN CAA 0 issue \"letsencrypt.org\""),
        ("example.test", "MX", "example.test. 300 IN MX 10 mail.example.test."),
        ("_sip._tcp.example.test", "SRV", "_sip._tcp.example.test. 300 IN SRV 10 5 5060 app.example.test."),
        ("10.example.test", "PTR", "10.example.test. 300 IN PTR app.example.test."),
        ("example.test", "NS", "example.test. 300 IN NS ns1.example.test."),
        ("example.test", "SOA", "example.test. 300 IN SOA ns1.example.test. hostmaster.example.test. 7 7200 900 1209600 120"),
        ("example.test", "A", "example.test. 300 IN A 192.0.2.80"),
        ("example.test", "AAAA", "example.test. 300 IN AAAA 2001:db8::80"),
        ("apex-alias.example.test", "A", "apex-alias.example.test. 300 IN A 192.0.2.10"),
    ];
    for transport in ["+notcp", "+tcp"] {
        for edns in ["+edns=0", "+noedns"] {
            for (name, t, want) in cases {
                let out = dig(a, &format!("{name} {t} {transport} {edns} +norec")).await;
                assert_eq!(
                    status(&out),
                    "NOERROR",
                    "{name} {t} {transport} {edns}:\n{out}"
                );
                assert!(flags(&out).contains(&"aa".to_string()), "{out}");
                assert!(
                    !flags(&out).contains(&"ra".to_string()),
                    "RA never set: {out}"
                );
                let answers = section(&out, "ANSWER");
                assert!(
                    answers.iter().any(|l| l == want),
                    "{name} {t} {transport} {edns}: want {want:?} in\n{out}"
                );
                assert_eq!(
                    out.contains("; EDNS: version: 0"),
                    edns == "+edns=0",
                    "OPT echoed only with EDNS:\n{out}"
                );
            }
        }
    }
    // MX answers carry the exchange's address in the additional section, as Knot does.
    let out = dig(a, "example.test MX").await;
    assert!(
        section(&out, "ADDITIONAL")
            .iter()
            .any(|l| l.contains("192.0.2.25")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rcode_paths() {
    let (_dir, dns) = setup().await;
    let a = dns.addr;

    let out = dig(a, "nope.example.test A").await;
    assert_eq!(status(&out), "NXDOMAIN");
    let auth = section(&out, "AUTHORITY");
    assert!(
        auth[0].starts_with("example.test. 120 IN SOA"),
        "negative TTL is the SOA minimum: {out}"
    );

    let out = dig(a, "app.example.test MX").await;
    assert_eq!(status(&out), "NOERROR");
    assert!(section(&out, "ANSWER").is_empty());
    assert!(
        section(&out, "AUTHORITY")[0].contains("SOA"),
        "NODATA carries the SOA: {out}"
    );

    let out = dig(a, "b.c.example.test A").await;
    assert_eq!(
        status(&out),
        "NOERROR",
        "empty non-terminal is NODATA: {out}"
    );

    let out = dig(a, "chain.example.test A").await;
    let ans = section(&out, "ANSWER");
    assert_eq!(ans.len(), 3, "CNAME chain followed in the zone: {out}");
    assert_eq!(ans[2], "app.example.test. 300 IN A 192.0.2.10");

    let out = dig(a, "dangling.example.test A").await;
    assert_eq!(
        status(&out),
        "NXDOMAIN",
        "chain ends in a missing name (RFC 6604): {out}"
    );
    assert_eq!(section(&out, "ANSWER").len(), 1);

    let out = dig(a, "anything.Wild.example.test A").await;
    assert_eq!(
        section(&out, "ANSWER"),
        vec!["anything.Wild.example.test. 300 IN A 192.0.2.99"]
    );

    let out = dig(a, "host.sub.example.test A +norec").await;
    assert_eq!(status(&out), "NOERROR");
    assert!(
        !flags(&out).contains(&"aa".to_string()),
        "a referral is not authoritative: {out}"
    );
    assert_eq!(
        section(&out, "AUTHORITY"),
        vec!["sub.example.test. 300 IN NS ns.sub.example.test."]
    );
    assert_eq!(
        section(&out, "ADDITIONAL")
            .iter()
            .filter(|l| l.contains("192.0.2.53"))
            .count(),
        1,
        "glue: {out}"
    );

    let out = dig(a, "example.org A").await;
    assert_eq!(status(&out), "REFUSED", "not a resolver: {out}");
    assert!(!flags(&out).contains(&"aa".to_string()));

    let out = dig(a, "example.test ANY").await;
    assert_eq!(status(&out), "NOERROR");
    let types: std::collections::HashSet<String> = section(&out, "ANSWER")
        .iter()
        .map(|l| l.split(' ').nth(3).unwrap_or("").to_string())
        .collect();
    assert_eq!(types.len(), 1, "RFC 8482: one RRset answers ANY: {out}");

    let out = dig(a, "ApP.ExAmPlE.TeSt A").await;
    assert_eq!(section(&out, "QUESTION"), vec![";ApP.ExAmPlE.TeSt. IN A"]);
    assert_eq!(
        section(&out, "ANSWER"),
        vec!["ApP.ExAmPlE.TeSt. 300 IN A 192.0.2.10"],
        "case echoed: {out}"
    );

    let out = dig(a, "app.example.test A +edns=1 +noednsnegotiation").await;
    assert_eq!(status(&out), "BADVERS", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_and_tcp_retry() {
    let (_dir, dns) = setup().await;
    let out = dig(dns.addr, "big.example.test TXT +noedns +ignore").await;
    assert!(flags(&out).contains(&"tc".to_string()), "{out}");
    assert!(section(&out, "ANSWER").is_empty());
    let out = dig(dns.addr, "big.example.test TXT +noedns").await;
    assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
    assert_eq!(section(&out, "ANSWER").len(), 4, "{out}");
    // A client that offers a large EDNS buffer gets it all over UDP.
    let out = dig(dns.addr, "big.example.test TXT +bufsize=4096 +ignore").await;
    assert!(!flags(&out).contains(&"tc".to_string()), "{out}");
    assert_eq!(section(&out, "ANSWER").len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unsupported_requests() {
    let (_dir, dns) = setup().await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = [0u8; 512];
    let ask = |bytes: Vec<u8>| {
        let sock = &sock;
        async move {
            sock.send_to(&bytes, dns.addr).await.unwrap();
            let (n, _) =
                tokio::time::timeout(std::time::Duration::from_secs(3), sock.recv_from(&mut buf))
                    .await
                    .expect("an answer")
                    .unwrap();
            buf[..n].to_vec()
        }
    };
    // A header announcing a question that is not there: FORMERR, id echoed.
    let res = ask(vec![
        0xab, 0xcd, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 7, b'e',
    ])
    .await;
    assert_eq!(&res[..2], &[0xab, 0xcd]);
    assert_eq!(res[3] & 0x0f, 1, "FORMERR");
    // Opcode 2 (STATUS): NOTIMP.
    let mut status = vec![0x12, 0x34, 0x10, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    status.extend_from_slice(b"\x07example\x04test\x00\x00\x01\x00\x01");
    let res = ask(status).await;
    assert_eq!(res[3] & 0x0f, 4, "NOTIMP");
    // Responses sent to us and runts are dropped, and the server keeps answering.
    sock.send_to(&[0x12, 0x34, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0], dns.addr)
        .await
        .unwrap();
    sock.send_to(&[1, 2, 3], dns.addr).await.unwrap();
    let out = dig(dns.addr, "app.example.test A").await;
    assert_eq!(status_of(&out), "NOERROR");
}

fn status_of(out: &str) -> String {
    status(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_rate_limiting_slips_and_drops_beyond_the_budget() {
    let dir = TempDir::new("rrl");
    std::fs::write(dir.path().join("example.test.zone"), FILE).unwrap();
    let opts = portico_dns::server::Options {
        rate_limit: Some(5),
        ..Default::default()
    };
    let dns = serve_on(ZONE, dir.path(), "127.0.0.1:0".parse().unwrap(), opts).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut query = vec![0x00, 0x01, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    query.extend_from_slice(b"\x03app\x07example\x04test\x00\x00\x01\x00\x01");
    for i in 0..40u16 {
        query[..2].copy_from_slice(&i.to_be_bytes());
        sock.send_to(&query, dns.addr).await.unwrap();
    }
    let (mut full, mut truncated) = (0, 0);
    let mut buf = [0u8; 1500];
    while let Ok(Ok((n, _))) = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        sock.recv_from(&mut buf),
    )
    .await
    {
        if buf[2] & 0x02 != 0 {
            truncated += 1;
            assert_eq!(
                u16::from_be_bytes([buf[6], buf[7]]),
                0,
                "a slipped answer carries no records"
            );
        } else {
            full += 1;
        }
        let _ = n;
    }
    assert_eq!(full, 5, "the budget is answered in full");
    assert!(
        truncated > 0,
        "some answers slip (TC) so real clients retry over TCP"
    );
    assert!(full + truncated < 40, "the rest are dropped");
    // Over TCP nothing is limited.
    assert_eq!(
        status(&dig(dns.addr, "app.example.test A +tcp").await),
        "NOERROR"
    );
}

/// A burst of queries from several clients at once: the receive loop reads them in batches
/// (recvmmsg) and every answer goes to its own sender (sendmmsg), none lost or crossed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_many_clients_is_answered_each_to_its_sender() {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let (_dir, dns) = setup().await;
    let mut clients = Vec::new();
    for c in 0..4u16 {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.connect(dns.addr).await.unwrap();
        for q in 0..64u16 {
            let mut m = Message::new(c * 1000 + q, MessageType::Query, OpCode::Query);
            let name = if q.is_multiple_of(2) {
                "app.example.test."
            } else {
                "mail.example.test."
            };
            m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
            sock.send(&m.to_vec().unwrap()).await.unwrap();
        }
        clients.push((c, sock));
    }
    for (c, sock) in clients {
        let mut seen = std::collections::HashSet::new();
        let mut buf = vec![0u8; 4096];
        while seen.len() < 64 {
            let n = tokio::time::timeout(std::time::Duration::from_secs(10), sock.recv(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("client {c}: only {} of 64 answered", seen.len()))
                .unwrap();
            let m = Message::from_vec(&buf[..n]).unwrap();
            let q =
                m.id.checked_sub(c * 1000)
                    .expect("an answer of this client");
            assert!(
                q < 64 && seen.insert(q),
                "client {c}: unexpected or repeated id {}",
                m.id
            );
            let want: std::net::Ipv4Addr = if q.is_multiple_of(2) {
                [192, 0, 2, 10]
            } else {
                [192, 0, 2, 25]
            }
            .into();
            let got: Vec<_> = m
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect();
            assert_eq!(got, vec![want], "client {c} query {q}");
        }
    }
}
