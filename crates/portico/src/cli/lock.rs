//! `portico certs lock NAME`: CAA records (RFC 8659, with RFC 8657's `accounturi` and
//! `validationmethods`) that let only the configured CA issue for the certificate's names, only
//! to Portico's ACME account and only by the challenge it uses; written into the hosted zones as
//! one change batch per zone through the running server's admin API. Every CA must honour both
//! parameters from 2027-03-15.

use std::collections::BTreeMap;

use anyhow::{bail, Context};

use crate::cli::client::{print_json, s, Admin, Target};

/// The CAA record set to write at one name: its `issue` and `issuewild` values.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Lock {
    pub zone: String,
    pub name: String,
    pub values: Vec<String>,
}

/// The CAA value that allows `ca` only for `account` by `method`.
pub fn caa_value(tag: &str, ca: &str, account: &str, method: &str) -> String {
    format!("0 {tag} \"{ca}; accounturi={account}; validationmethods={method}\"")
}

/// The record sets that lock `domains` (IP addresses have no CAA and are skipped), by name,
/// each in the longest hosted zone holding it.
pub fn locks(
    domains: &[String],
    zones: &[String],
    ca: &str,
    account: &str,
    method: &str,
) -> anyhow::Result<Vec<Lock>> {
    let mut by_name: BTreeMap<String, Lock> = BTreeMap::new();
    for d in domains {
        if d.parse::<std::net::IpAddr>().is_ok() {
            continue;
        }
        let wildcard = d.starts_with("*.");
        let name = d
            .trim_start_matches("*.")
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let Some(zone) = zones
            .iter()
            .map(|z| z.trim_end_matches('.').to_ascii_lowercase())
            .filter(|z| name == *z || name.ends_with(&format!(".{z}")))
            .max_by_key(|z| z.len())
        else {
            bail!(
                "{d} is not in a zone this Portico hosts, so its CAA records cannot be written here; add them at its DNS provider: {}",
                caa_value(if wildcard { "issuewild" } else { "issue" }, ca, account, method)
            );
        };
        let lock = by_name.entry(name.clone()).or_insert_with(|| Lock {
            zone,
            name: format!("{name}."),
            values: Vec::new(),
        });
        let v = caa_value(
            if wildcard { "issuewild" } else { "issue" },
            ca,
            account,
            method,
        );
        if !lock.values.contains(&v) {
            lock.values.push(v);
        }
    }
    Ok(by_name.into_values().collect())
}

pub fn certs_lock(name: &str, ca_identity: Option<&str>, target: &Target) -> anyhow::Result<()> {
    let source = crate::config::Source::read(&target.config)?;
    let config = source.parse()?;
    let cert = config
        .certificate
        .iter()
        .find(|c| c.name == name)
        .with_context(|| {
            format!(
                "{}: no [[certificate]] named {name:?}",
                target.config.display()
            )
        })?;
    if cert.issuer.as_deref().unwrap_or("acme") != "acme" || cert.domains.is_empty() {
        bail!("{name:?} is not ordered from an ACME CA: CAA locks the CA, account and method of ACME orders");
    }
    let acme = config
        .acme
        .as_ref()
        .context("no [acme] section: CAA names the ACME CA that may issue")?;
    let directory = portico_certs::issuer::acme::directory_url(&acme.directory);
    let ca = match ca_identity {
        Some(c) => c.to_string(),
        None if directory.contains(".letsencrypt.org/") => "letsencrypt.org".to_string(),
        None => bail!(
            "which CAA domain does the CA at {directory} use? pass --ca-identity (its directory lists it under meta.caaIdentities; Let's Encrypt's is letsencrypt.org)"
        ),
    };
    let account = portico_certs::issuer::acme::account_uri(&config.state_dir, &acme.directory)
        .with_context(|| {
            format!(
                "no ACME account at {directory} in {} yet: start `portico serve` once (it registers the account), then lock",
                config.state_dir.display()
            )
        })?;
    let method = cert.challenge.as_deref().unwrap_or("http-01");
    let zones: Vec<String> = config.zone.iter().map(|z| z.name.clone()).collect();
    let locks = locks(&cert.domains, &zones, &ca, &account, method)?;
    if locks.is_empty() {
        bail!("{name:?} names only IP addresses, which CAA does not cover");
    }
    let admin = Admin::find(target)?;
    let mut by_zone: BTreeMap<&str, Vec<serde_json::Value>> = BTreeMap::new();
    for l in &locks {
        by_zone.entry(&l.zone).or_default().push(serde_json::json!({
            "action": "UPSERT", "name": l.name, "type": "CAA", "ttl": 300, "values": l.values,
        }));
    }
    let mut answers = Vec::new();
    for (zone, changes) in by_zone {
        let v = admin.call(
            "POST",
            &format!("/api/v1/zones/{zone}/changes"),
            Some(serde_json::json!({
                "comment": format!("portico certs lock {name}"),
                "changes": changes,
            })),
        )?;
        answers.push(v);
    }
    if target.json {
        print_json(&serde_json::Value::Array(answers));
        return Ok(());
    }
    for l in &locks {
        for v in &l.values {
            println!("{} CAA {v}", l.name);
        }
    }
    for v in &answers {
        println!(
            "{}: change {} {} (serial {})",
            s(&v["zone"]),
            s(&v["id"]),
            s(&v["status"]),
            s(&v["serial"])
        );
    }
    println!("only {ca} may issue for these names now, only to {account}, only by {method}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_set_per_name_in_the_longest_zone_wildcards_as_issuewild() {
        let zones = vec!["example.com".to_string(), "shop.example.com.".to_string()];
        let domains: Vec<String> = [
            "example.com",
            "*.example.com",
            "a.shop.example.com",
            "192.0.2.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let l = locks(
            &domains,
            &zones,
            "letsencrypt.org",
            "https://ca/acct/1",
            "dns-01",
        )
        .unwrap();
        assert_eq!(l.len(), 2, "{l:?}");
        assert_eq!(
            (l[0].zone.as_str(), l[0].name.as_str()),
            ("shop.example.com", "a.shop.example.com.")
        );
        assert_eq!(l[1].values, vec![
            "0 issue \"letsencrypt.org; accounturi=https://ca/acct/1; validationmethods=dns-01\"".to_string(),
            "0 issuewild \"letsencrypt.org; accounturi=https://ca/acct/1; validationmethods=dns-01\"".to_string(),
        ]);
        let err = locks(&["www.other.net".into()], &zones, "x", "y", "http-01").unwrap_err();
        assert!(
            err.to_string().contains("not in a zone this Portico hosts"),
            "{err}"
        );
    }
}
