//! Let's Encrypt's duplicate-certificate limit, counted from the certificates stored here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use crate::{finding, Finding, Severity};

/// Let's Encrypt's published limits against Portico's own issuance history (the archive):
/// 50 certificates per registered domain per 7 days; 5 per exact set of names per 7 days.
pub fn check_rate_limits(domain: &str, state_dir: &std::path::Path, now: SystemTime) -> Finding {
    let registered = psl::domain_str(domain).unwrap_or(domain).to_string();
    let week = Duration::from_secs(7 * 86_400);
    let since = now
        .checked_sub(week)
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut per_domain = 0;
    let mut exact: BTreeMap<BTreeSet<String>, usize> = BTreeMap::new();
    let archive = state_dir.join("certificates").join("archive");
    for lineage in std::fs::read_dir(&archive).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(lineage.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let fname = f.file_name().to_string_lossy().to_string();
            if !(fname.starts_with("cert") && fname.ends_with(".pem")) {
                continue;
            }
            let Some((nb, names)) = cert_names(&f.path()) else {
                continue;
            };
            if nb < since {
                continue;
            }
            let under = |n: &String| {
                let n = n.trim_start_matches("*.");
                n == registered || n.ends_with(&format!(".{registered}"))
            };
            if names.iter().any(under) {
                per_domain += 1;
                *exact.entry(names).or_default() += 1;
            }
        }
    }
    let this: usize = exact
        .iter()
        .filter(|(k, _)| k.contains(domain))
        .map(|(_, v)| *v)
        .max()
        .unwrap_or(0);
    if per_domain >= 50 || this >= 5 {
        return finding(
            Severity::Error,
            "RateLimit",
            format!("Portico issued {per_domain} certificates for {registered} in the last 7 days (limit 50) and {this} for the same names (limit 5): Let's Encrypt will refuse new orders"),
            "wait for the window to pass, use letsencrypt-staging for tests, or renew within the ARI window (exempt)",
        );
    }
    let sev = if per_domain >= 40 || this >= 4 {
        Severity::Warning
    } else {
        Severity::Ok
    };
    finding(
        sev,
        "RateLimit",
        format!("{per_domain} certificates for {registered} in the last 7 days (limit 50), {this} for the same names (limit 5)"),
        "",
    )
}

pub(crate) fn cert_names(path: &std::path::Path) -> Option<(i64, BTreeSet<String>)> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .ok()?
        .next()?
        .ok()?;
    let (_, c) = x509_parser::parse_x509_certificate(&der).ok()?;
    let names = c
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    x509_parser::extensions::GeneralName::DNSName(n) => {
                        Some(n.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some((c.validity().not_before.timestamp(), names))
}
