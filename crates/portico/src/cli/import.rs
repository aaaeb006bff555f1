//! `portico certs import --certbot /etc/letsencrypt`: adopt certbot's lineages (read only on
//! the source), so that a user moving from nginx + certbot serves the same certificates at once,
//! with no new order, and Portico renews them from then on.

use std::path::Path;

use anyhow::{bail, Context};
use portico_certs::certbot::{account_fit, lineages, AccountFit};
use portico_certs::storage::{Issued, Storage};

use crate::cli::client::{Admin, Target};

pub fn certs_import(certbot: &Path, target: &Target) -> anyhow::Result<()> {
    let source = crate::config::Source::read(&target.config)?;
    let config = source.parse()?;
    let found = lineages(certbot).map_err(|e| anyhow::anyhow!("{e}"))?;
    if found.is_empty() {
        bail!(
            "{}: no lineages (renewal/*.conf) to import",
            certbot.display()
        );
    }
    let directory = config
        .acme
        .as_ref()
        .map(|a| portico_certs::issuer::acme::directory_url(&a.directory));
    let storage = Storage::new(&config.state_dir);
    // A running server takes the additions through its API; otherwise they go to
    // runtime.toml for the next start (the config may not validate without them yet: a
    // listener can name a certificate being imported).
    let api = if config.admin.is_some() && config.state_dir.join(portico_admin::URL_FILE).exists() {
        let admin = Admin::find(target)?;
        admin
            .call("GET", "/api/v1/status", None)
            .is_ok()
            .then_some(admin)
    } else {
        None
    };
    let mut runtime = crate::runtime::load(&config.state_dir)?;
    let mut added_offline = false;
    let mut rt = None;
    for l in &found {
        if storage.load_live(&l.name).is_some() {
            println!(
                "{}: skipped, Portico already has a certificate of that name (remove it with `portico certs delete {}` to import certbot's)",
                l.name, l.name
            );
            continue;
        }
        let declared = config.certificate.iter().find(|c| c.name == l.name);
        if declared.is_some_and(|c| c.cert_file.is_some()) {
            println!(
                "{}: skipped, the config imports it from files already (cert_file)",
                l.name
            );
            continue;
        }
        let version = storage
            .store(
                &l.name,
                &Issued {
                    cert: l.cert.clone(),
                    chain: l.chain.clone(),
                    key: l.key.clone(),
                },
            )
            .with_context(|| format!("{}: cannot store the certificate", l.name))?;
        let mut rec = storage.record(&l.name).unwrap_or_default();
        rec.name = l.name.clone();
        rec.domains = l.domains.clone();
        rec.issuer = "acme".into();
        rec.status = "ISSUED".into();
        rec.version = version;
        storage
            .save_record(&rec)
            .with_context(|| format!("{}: cannot write its renewal record", l.name))?;
        if declared.is_none() {
            let spec = serde_json::json!({
                "name": l.name, "domains": l.domains, "issuer": "acme", "challenge": l.challenge,
            });
            match &api {
                Some(admin) => {
                    admin
                        .call("POST", "/api/v1/certificates", Some(spec))
                        .with_context(|| format!("{}: the running server refused it", l.name))?;
                }
                None => {
                    let mut t = toml::Table::new();
                    t.insert("name".into(), l.name.clone().into());
                    t.insert(
                        "domains".into(),
                        toml::Value::Array(l.domains.iter().cloned().map(Into::into).collect()),
                    );
                    t.insert("issuer".into(), "acme".into());
                    t.insert("challenge".into(), l.challenge.into());
                    runtime.certificate.push(t);
                    added_offline = true;
                }
            }
        }
        println!(
            "{}: adopted version {version} ({}), renewed by {} (certbot used {})",
            l.name,
            l.domains.join(", "),
            l.challenge,
            l.authenticator
        );
        match directory
            .as_deref()
            .map(|d| account_fit(certbot, l, d))
        {
            None => println!(
                "  no [acme] section: add one for the CA at {} to renew it",
                l.server.as_deref().unwrap_or("?")
            ),
            Some(AccountFit::OtherDirectory(s)) => println!(
                "  certbot renewed it at {s}, the config's [acme] directory is another CA: Portico renews it there"
            ),
            Some(AccountFit::Missing) => {
                println!("  certbot's account files are missing: renewals use Portico's own account")
            }
            Some(AccountFit::Found { uri, key }) => {
                adopt(&config, &source.base_dir(), &uri, &key, &mut rt)?
            }
        }
    }
    if added_offline {
        runtime
            .save(&config.state_dir)
            .context("cannot write the API's additions (runtime.toml)")?;
        println!(
            "the certificates are served from the next `portico serve`; list them with `portico certs list`"
        );
    }
    Ok(())
}

/// Makes certbot's account (`uri`, signed by `key`) Portico's at the configured CA, unless
/// Portico has an account there already: its RSA key is rolled over to a P-256 key Portico
/// keeps, so renewals are ordered by the same account (CAA `accounturi`, ARI's exemption).
fn adopt(
    config: &crate::config::PorticoConfig,
    base_dir: &Path,
    uri: &str,
    key: &serde_json::Value,
    rt: &mut Option<tokio::runtime::Runtime>,
) -> anyhow::Result<()> {
    let Some(acme) = config.acme_settings(base_dir) else {
        return Ok(());
    };
    match portico_certs::issuer::acme::account_uri(&config.state_dir, &acme.directory) {
        Some(have) if have == uri => println!("  renewals use certbot's account {uri} (adopted)"),
        Some(have) => println!(
            "  Portico has its own account at this CA ({have}): renewals use it, not certbot's {uri}"
        ),
        None => {
            let issuer = portico_certs::issuer::acme::AcmeIssuer::new(
                &config.state_dir,
                &acme.directory,
                acme.email.clone(),
                acme.ca_root.clone(),
                acme.eab.clone(),
            );
            let rt = match rt {
                Some(rt) => rt,
                None => rt.insert(crate::server::runtime()?),
            };
            match rt.block_on(issuer.adopt_account(key, uri)) {
                Ok(()) => println!(
                    "  renewals use certbot's account {uri}: its key was rolled over (RFC 8555 §7.3.5) to a P-256 key that Portico keeps, so certbot can no longer sign with this account"
                ),
                Err(e) => println!(
                    "  certbot's account {uri} was not adopted ({e}): renewals use a new Portico account at the same CA"
                ),
            }
        }
    }
    Ok(())
}
