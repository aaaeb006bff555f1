//! Untrusted bytes from the network into the DNS request handler: it must never panic, and
//! every answer it gives must itself be a parseable DNS message.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use portico_dns::config::DnsSections;
use portico_dns::handler::{handle, Ctx, Reply};
use portico_dns::zones::HostedZones;

struct Fixture {
    rt: tokio::runtime::Runtime,
    ctx: Ctx,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let zones = HostedZones::new(None);
        let sections = DnsSections {
            dns: None,
            tsig_keys: Vec::new(),
            zones: vec![portico_dns::config::ZoneConfig {
                name: "example.test".into(),
                file: None,
                secondaries: vec!["127.0.0.1:53".into()],
                update_keys: Vec::new(),
                transfer_keys: Vec::new(),
                nameservers: Vec::new(),
                records: vec![portico_dns::config::RecordConfig {
                    name: "www".into(),
                    rtype: "A".into(),
                    ttl: Some(300),
                    values: vec!["192.0.2.1".into()],
                    ..Default::default()
                }],
            }],
        };
        rt.block_on(zones.load(&sections, std::path::Path::new("."))).unwrap();
        let ctx = Ctx { zones, listeners: Arc::new(()) };
        Fixture { rt, ctx }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    for tcp in [false, true] {
        let src = "127.0.0.1:5300".parse().unwrap();
        let reply = f.rt.block_on(handle(&f.ctx, data, src, tcp));
        let messages = match reply {
            Reply::Drop => Vec::new(),
            Reply::One(b) => vec![b],
            Reply::Many(v) => v,
        };
        for m in messages {
            assert!(m.len() >= 12);
            if !tcp {
                assert!(m.len() <= 4096, "UDP answers fit the largest buffer we honour");
            }
        }
    }
});
