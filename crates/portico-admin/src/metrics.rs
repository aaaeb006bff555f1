//! `/metrics` in the Prometheus text format (version 0.0.4), gathered from the parts at scrape
//! time: the load balancer's counters, the DNS server's, certificate records and target health.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::Ctx;

/// A label value with `\`, `"` and newlines escaped as the format requires.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub(super) async fn render(State(ctx): State<Ctx>) -> Response {
    let mut out = String::with_capacity(8 * 1024);
    let node = &ctx.node;

    // Load balancer: requests, latency, connections, TLS.
    node.lb().render_metrics(&mut out);

    // Target health, per node (each node checks its own targets).
    let groups = node.applied().await.group_names();
    out.push_str("# HELP portico_target_healthy 1 when the target is healthy, 0 when not.\n# TYPE portico_target_healthy gauge\n");
    for g in &groups {
        for t in node.lb().target_health(g) {
            let _ = writeln!(
                out,
                "portico_target_healthy{{target_group=\"{}\",target=\"{}\",state=\"{}\"}} {}",
                esc(g),
                t.addr,
                if t.draining {
                    "draining"
                } else if t.healthy {
                    "healthy"
                } else {
                    "unhealthy"
                },
                u8::from(t.healthy)
            );
        }
    }
    out.push_str("# HELP portico_target_requests_in_flight Requests a target is serving now.\n# TYPE portico_target_requests_in_flight gauge\n");
    for g in &groups {
        for t in node.lb().target_health(g) {
            let _ = writeln!(
                out,
                "portico_target_requests_in_flight{{target_group=\"{}\",target=\"{}\"}} {}",
                esc(g),
                t.addr,
                t.outstanding
            );
        }
    }

    // Cluster mode: is the shared store answering?
    if let Some(c) = node.store() {
        let _ = writeln!(
            out,
            "# HELP portico_store_reachable 1 while the shared store (etcd) answers; 0 while this node serves from its cache and refuses changes.\n# TYPE portico_store_reachable gauge\nportico_store_reachable{{store=\"{}\"}} {}",
            esc(&c.describe),
            u8::from(c.reachable)
        );
    }

    // DNS.
    node.zones().metrics.render(&mut out);
    node.render_dns_checks(&mut out);
    {
        let catalog = node.zones().catalog();
        let seen = node.answers_see();
        let mut rows = Vec::new();
        for z in catalog.zones.values() {
            for (name, r) in z.routed_sets() {
                let labels = format!(
                    "zone=\"{}\",name=\"{}\",type=\"{}\",set_identifier=\"{}\",policy=\"{}\"",
                    esc(&z.origin.to_string()),
                    esc(&name.to_string()),
                    r.type_name(),
                    esc(&r.id),
                    r.policy.kind()
                );
                let healthy = portico_dns::answer::set_healthy(z, r, seen.as_ref());
                rows.push((labels, r.stats.answered(), healthy));
            }
        }
        rows.sort();
        out.push_str("# HELP portico_dns_routed_answers_total Answers given from each DNS record set with a routing policy.\n# TYPE portico_dns_routed_answers_total counter\n");
        for (labels, n, _) in &rows {
            let _ = writeln!(out, "portico_dns_routed_answers_total{{{labels}}} {n}");
        }
        out.push_str("# HELP portico_dns_record_set_healthy 1 while a DNS record set with a routing policy counts as healthy, 0 when not.\n# TYPE portico_dns_record_set_healthy gauge\n");
        for (labels, _, healthy) in &rows {
            let _ = writeln!(
                out,
                "portico_dns_record_set_healthy{{{labels}}} {}",
                u8::from(*healthy)
            );
        }
    }
    out.push_str("# HELP portico_dns_zone_serial The SOA serial each hosted zone serves.\n# TYPE portico_dns_zone_serial gauge\n");
    let catalog = node.zones().catalog();
    let mut zones: Vec<_> = catalog.zones.values().collect();
    zones.sort_by_key(|z| z.origin.to_string());
    for z in zones {
        let _ = writeln!(
            out,
            "portico_dns_zone_serial{{zone=\"{}\"}} {}",
            esc(&z.origin.to_string()),
            z.serial()
        );
    }

    // Certificates.
    let records = node.certs().storage().records();
    out.push_str("# HELP portico_certificate_expiry_timestamp_seconds When the served certificate expires (Unix time).\n# TYPE portico_certificate_expiry_timestamp_seconds gauge\n");
    for r in &records {
        let expiry = r
            .not_after
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        if let Some(e) = expiry {
            let _ = writeln!(
                out,
                "portico_certificate_expiry_timestamp_seconds{{certificate=\"{}\"}} {}",
                esc(&r.name),
                e.as_secs()
            );
        }
    }
    // Seconds left, for an alerting rule without arithmetic on timestamps.
    let now = std::time::SystemTime::now();
    out.push_str("# HELP portico_certificate_expiry_seconds Seconds until the served certificate expires (negative once it has).\n# TYPE portico_certificate_expiry_seconds gauge\n");
    for r in &records {
        let expiry = r
            .not_after
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
        if let Some(e) = expiry {
            let left = match e.duration_since(now) {
                Ok(d) => d.as_secs() as i64,
                Err(past) => -(past.duration().as_secs() as i64),
            };
            let _ = writeln!(
                out,
                "portico_certificate_expiry_seconds{{certificate=\"{}\"}} {left}",
                esc(&r.name)
            );
        }
    }
    out.push_str("# HELP portico_certificate_status 1 for the certificate's current status.\n# TYPE portico_certificate_status gauge\n");
    for r in &records {
        let _ = writeln!(
            out,
            "portico_certificate_status{{certificate=\"{}\",status=\"{}\"}} 1",
            esc(&r.name),
            esc(&r.status)
        );
    }
    out.push_str("# HELP portico_certificate_renewal_failures_total Failed orders and renewals since this process started.\n# TYPE portico_certificate_renewal_failures_total counter\n");
    for (name, n) in node.certs().failure_counts() {
        let _ = writeln!(
            out,
            "portico_certificate_renewal_failures_total{{certificate=\"{}\"}} {n}",
            esc(&name)
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
