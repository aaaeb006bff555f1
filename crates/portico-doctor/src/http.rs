//! HTTP-01 (port 80 reachable, the challenge path served) and the HTTPS certificate served now.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use hickory_proto::rr::RecordType;

use crate::{dns, finding, web, Finding, Options, Severity};

/// Port 80 on every address, a random token path fetched through the real route.
pub(crate) async fn check_http01(
    resolver: SocketAddr,
    domain: &str,
    ips: &[IpAddr],
    ports: web::Ports,
) -> Vec<Finding> {
    let token: String = {
        use rand::Rng;
        rand::thread_rng()
            .sample_iter(&rand::distributions::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect()
    };
    let path = format!("/.well-known/acme-challenge/{token}");
    let resolve = move |host: String| -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Option<IpAddr>> + Send>,
    > {
        Box::pin(async move {
            let n = dns::fqdn(&host).ok()?;
            dns::resolve(resolver, &n, RecordType::A)
                .await
                .ok()?
                .ips()
                .first()
                .copied()
        })
    };
    let mut out = Vec::new();
    let mut statuses: BTreeMap<bool, BTreeSet<u16>> = BTreeMap::new();
    for ip in ips {
        let v6 = ip.is_ipv6();
        let fetch = web::fetch_http01(domain, *ip, &path, ports, &resolve).await;
        match fetch {
            web::Fetch::Answered { status, hops } => {
                statuses.entry(v6).or_default().insert(status);
                let route = if hops.len() > 1 {
                    format!(" after {} redirect(s) ending at {}", hops.len() - 1, hops.last().cloned().unwrap_or_default())
                } else {
                    String::new()
                };
                let (sev, note) = match status {
                    404 => (Severity::Ok, "reachable (404 for a random token, as expected)"),
                    200..=299 => (Severity::Ok, "reachable (the CA then compares the body with its token; Portico answers its own tokens before redirects)"),
                    _ => (Severity::Warning, "the CA needs a 200 with the token here: check that nothing in front (auth, WAF, an error page) answers this path"),
                };
                out.push(finding(
                    sev,
                    if v6 { "AAAAHTTP01" } else { "AHTTP01" },
                    format!("http://{domain}:{} through {ip} answered {status}{route}: {note}", ports.http),
                    "",
                ));
            }
            web::Fetch::Unreachable { addr, error } => out.push(finding(
                Severity::Error,
                if v6 { "AAAANotWorking" } else { "ANotWorking" },
                format!("port {} on {ip} cannot be reached ({addr}: {error}): HTTP-01 validation will fail", ports.http),
                if v6 {
                    "open the port on IPv6 too (the CA prefers IPv6), or remove the AAAA record"
                } else {
                    "open the port in the firewall / security group and make a listener serve it"
                },
            )),
            web::Fetch::BadRedirect { location, reason } => out.push(finding(
                Severity::Error,
                "BadRedirect",
                format!("through {ip}, the challenge path redirects to {location}: {reason}"),
                "serve /.well-known/acme-challenge/ before redirects (Portico does), or redirect to http/https on the standard ports",
            )),
        }
    }
    if let (Some(v4), Some(v6)) = (statuses.get(&false), statuses.get(&true)) {
        if v4 != v6 {
            out.push(finding(
                Severity::Warning,
                "IPv4AndIPv6Different",
                format!("IPv4 answered {v4:?} but IPv6 answered {v6:?}: the CA uses IPv6 when there is a AAAA record"),
                "make both addresses reach the same server",
            ));
        }
    }
    out
}

/// The HTTPS listener: handshake, chain, name, expiry, ALPN.
pub(crate) async fn check_https(domain: &str, ips: &[IpAddr], opts: &Options) -> Vec<Finding> {
    let roots = match load_roots(opts.roots.as_ref()) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            return vec![finding(
                Severity::Error,
                "RootsUnreadable",
                e,
                "pass a PEM file with --ca-roots",
            )]
        }
    };
    let mut out = Vec::new();
    for ip in ips {
        let addr = SocketAddr::new(*ip, opts.ports.https);
        match web::handshake(domain, addr, roots.clone()).await {
            Err(e) if e.contains("refused") || e.contains("within") => out.push(finding(
                Severity::Warning,
                "HTTPSNotWorking",
                format!("nothing serves HTTPS on {addr}: {e}"),
                "not needed to get a certificate with http-01 or dns-01, but needed to serve it: add an HTTPS listener",
            )),
            Err(e) => out.push(finding(
                Severity::Error,
                "TLSHandshakeFailed",
                format!("TLS with {addr} for {domain} failed: {e}"),
                "check that the HTTPS listener has a certificate for this name (SNI)",
            )),
            Ok(served) => out.push(https_verdict(domain, addr, &served)),
        }
    }
    out
}

pub(crate) fn https_verdict(domain: &str, addr: SocketAddr, s: &web::Served) -> Finding {
    let parsed = x509_parser::parse_x509_certificate(&s.leaf).ok();
    let (not_before, not_after, issuer) = parsed
        .as_ref()
        .map(|(_, c)| {
            (
                c.validity().not_before.timestamp(),
                c.validity().not_after.timestamp(),
                c.issuer().to_string(),
            )
        })
        .unwrap_or((0, 0, "?".into()));
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = (not_after - now) as f64 / 86_400.0;
    let alpn = s.alpn.as_deref().unwrap_or("none");
    match &s.verdict {
        Ok(()) => {
            let life = (not_after - not_before).max(1) as f64;
            let left = (not_after - now) as f64 / life;
            if left < 0.25 {
                finding(
                    Severity::Warning,
                    "CertificateExpiresSoon",
                    format!("{addr} serves a valid certificate for {domain} that expires in {days:.1} days (issuer {issuer}); it should have been renewed"),
                    "check the renewal: `portico certs show NAME` names the last error",
                )
            } else {
                finding(
                    Severity::Ok,
                    "HTTPS",
                    format!("{addr} serves a valid certificate for {domain}, {days:.0} days left, issuer {issuer}, {}, ALPN {alpn}", s.version),
                    "",
                )
            }
        }
        Err(rustls::Error::InvalidCertificate(e)) => {
            use rustls::CertificateError as C;
            match e {
                C::Expired | C::ExpiredContext { .. } => finding(
                    Severity::Error,
                    "CertificateExpired",
                    format!("{addr} serves a certificate for {domain} that expired {:.1} days ago (issuer {issuer})", -days),
                    "renew it (`portico certs list` shows why it was not), or fix the clock",
                ),
                C::NotValidForName | C::NotValidForNameContext { .. } => finding(
                    Severity::Error,
                    "CertificateNameMismatch",
                    format!("{addr} serves a certificate that does not cover {domain} (issuer {issuer})"),
                    "add the name to the certificate's domains and the certificate to the listener",
                ),
                C::UnknownIssuer => finding(
                    Severity::Error,
                    "CertificateUntrusted",
                    format!("{addr} serves a certificate for {domain} from an issuer clients do not trust ({issuer})"),
                    "serve the full chain (fullchain.pem), or for a private CA pass its root with --ca-roots",
                ),
                other => finding(
                    Severity::Error,
                    "CertificateInvalid",
                    format!("{addr} serves an invalid certificate for {domain}: {other:?}"),
                    "",
                ),
            }
        }
        Err(other) => finding(
            Severity::Error,
            "CertificateInvalid",
            format!("{addr}: {other}"),
            "",
        ),
    }
}

pub(crate) fn load_roots(path: Option<&PathBuf>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    match path {
        Some(p) => {
            use rustls_pki_types::pem::PemObject;
            for c in rustls_pki_types::CertificateDer::pem_file_iter(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
            {
                let c = c.map_err(|e| format!("{}: {e}", p.display()))?;
                roots.add(c).map_err(|e| format!("{}: {e}", p.display()))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    Ok(roots)
}
