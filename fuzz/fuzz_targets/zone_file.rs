//! Untrusted master files into the zone-file parser: it must never panic, and whatever it
//! accepts must export to a file that parses back to the same zone.
#![no_main]

use hickory_proto::rr::Name;
use libfuzzer_sys::fuzz_target;
use portico_dns::zone::Zone;
use portico_dns::zone_file::{export, parse_into};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let origin = Name::from_ascii("example.test.").unwrap();
    let mut zone = Zone::new(&origin);
    if parse_into(&mut zone, text, 300).is_ok() {
        let exported = export(&zone);
        let mut again = Zone::new(&origin);
        parse_into(&mut again, &exported, 300).expect("an exported zone parses");
        assert_eq!(again, zone, "round trip:\n{exported}");
    }
});
