//! Query counters by zone and response code, rendered in the Prometheus text format.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::Name;

/// Counts of answered queries. One uncontended lock per query: small beside parsing and
/// encoding the message, and the map only grows by one entry per zone.
#[derive(Debug, Default)]
pub struct DnsMetrics {
    by_zone: Mutex<HashMap<Name, HashMap<u16, u64>>>,
    /// Queries for names in no hosted zone (answered REFUSED).
    outside: Mutex<HashMap<u16, u64>>,
}

impl DnsMetrics {
    pub fn record(&self, zone: Option<&Name>, rcode: ResponseCode) {
        let code = u16::from(rcode);
        match zone {
            Some(z) => {
                let mut map = self.by_zone.lock().unwrap_or_else(|e| e.into_inner());
                match map.get_mut(z) {
                    Some(m) => *m.entry(code).or_default() += 1,
                    None => {
                        map.insert(z.clone(), HashMap::from([(code, 1)]));
                    }
                }
            }
            None => {
                *self
                    .outside
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(code)
                    .or_default() += 1
            }
        }
    }

    /// The count for one zone ("" for names outside every zone) and rcode.
    pub fn count(&self, zone: Option<&Name>, rcode: ResponseCode) -> u64 {
        let code = u16::from(rcode);
        match zone {
            Some(z) => self
                .by_zone
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(z)
                .and_then(|m| m.get(&code).copied())
                .unwrap_or(0),
            None => self
                .outside
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&code)
                .copied()
                .unwrap_or(0),
        }
    }

    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP portico_dns_queries_total DNS queries answered, by zone and response code.\n# TYPE portico_dns_queries_total counter\n");
        let mut rows: Vec<(String, u16, u64)> = Vec::new();
        for (z, m) in self
            .by_zone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            rows.extend(m.iter().map(|(c, n)| (z.to_string(), *c, *n)));
        }
        for (c, n) in self
            .outside
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            rows.push((String::new(), *c, *n));
        }
        rows.sort();
        for (zone, code, n) in rows {
            let _ = writeln!(
                out,
                "portico_dns_queries_total{{zone=\"{}\",rcode=\"{}\"}} {n}",
                zone.replace('\\', "\\\\").replace('"', "\\\""),
                format!("{:?}", <ResponseCode as From<u16>>::from(code)).to_uppercase()
            );
        }
    }
}
