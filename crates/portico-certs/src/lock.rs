//! CAA that locks a certificate's names (RFC 8659, with RFC 8657's `accounturi` and
//! `validationmethods`, which every CA honours from 2027-03-15): only the configured CA, only
//! Portico's ACME account, only the challenge it uses. `portico certs lock` and
//! `POST /api/v1/certificates/{name}/lock` write these record sets as change batches.

use std::collections::BTreeMap;

/// The CA's CAA domain when the directory is Let's Encrypt's; others must be told.
pub fn known_caa_identity(directory_url: &str) -> Option<&'static str> {
    directory_url
        .contains(".letsencrypt.org/")
        .then_some("letsencrypt.org")
}

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
) -> Result<Vec<Lock>, String> {
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
            return Err(format!(
                "{d} is not in a zone this Portico hosts, so its CAA records cannot be written here; add them at its DNS provider: {}",
                caa_value(if wildcard { "issuewild" } else { "issue" }, ca, account, method)
            ));
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
