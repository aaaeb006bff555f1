//! `portico store migrate`: copy the state directory into the configured store and back.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use portico_dns::shared::{SharedZones, Stored};
use portico_store::{LocalDir, Store};

use crate::store::shared;

#[derive(clap::Subcommand)]
pub enum StoreCommand {
    /// Copy every key (certificates, accounts, the internal CA, zones, API changes) from the state
    /// directory into etcd (`--to etcd`), or from etcd into the state directory (`--to dir`).
    Migrate {
        #[arg(long, value_enum)]
        to: Direction,
        #[arg(short, long, default_value = "portico.toml")]
        config: PathBuf,
    },
}

/// Which way `portico store migrate` copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Direction {
    /// From the state directory into the configured etcd.
    Etcd,
    /// From the configured etcd into the state directory.
    Dir,
}

pub fn migrate(config_path: &Path, to: Direction) -> anyhow::Result<()> {
    let source = crate::config::Source::read(config_path)?;
    let config = source.parse()?;
    let shared: Arc<dyn Store> = shared(&config, &source.base_dir())?
        .map(Arc::from)
        .with_context(|| {
            format!(
                "{}: no [store] section names the etcd to migrate {}",
                config_path.display(),
                if to == Direction::Etcd {
                    "into"
                } else {
                    "from"
                }
            )
        })?;
    let dir = LocalDir::new(&config.state_dir);
    // Zone journals are this node's own: folded into the master files before they are copied
    // out, and dropped before the master files are copied in (they would replay over them).
    match to {
        Direction::Etcd => {
            portico_dns::zones::fold_journals(&config.state_dir)
                .map_err(anyhow::Error::msg)
                .context("folding the zone journals into the master files")?;
        }
        Direction::Dir => remove_journals(&config.state_dir)?,
    }
    let (from, into): (&dyn Store, &dyn Store) = match to {
        Direction::Etcd => (&dir, shared.as_ref()),
        Direction::Dir => (shared.as_ref(), &dir),
    };
    // Zones change layout on the way: a master file in the state directory, one key per name
    // under a head in etcd (portico_dns::shared). Everything else is copied key by key.
    let n = portico_store::migrate(from, into, |k| zone_key(k).is_none())
        .with_context(|| format!("copying {} into {}", from.describe(), into.describe()))?;
    let zones = match to {
        Direction::Etcd => zones_into_etcd(&dir, shared.clone())?,
        Direction::Dir => zones_into_dir(shared.clone(), &dir)?,
    };
    println!(
        "copied {} keys from {} into {} ({zones} zones among them, each as {})",
        n + zones,
        from.describe(),
        into.describe(),
        if to == Direction::Etcd {
            "a head and one key per name"
        } else {
            "a master file"
        }
    );
    Ok(())
}

/// What a zone key is: `Some(Some(origin))` for a zone's master file (`zones/<origin>zone`) or
/// head (`zones/<origin>/head`), `Some(None)` for the rest of the per-name layout, `None` for
/// keys copied as they are.
fn zone_key(key: &str) -> Option<Option<String>> {
    let rest = key.strip_prefix("zones/")?;
    if let Some((origin, tail)) = rest.split_once('/') {
        return Some((tail == "head").then(|| origin.to_string()));
    }
    rest.strip_suffix("zone")
        .filter(|o| o.ends_with('.'))
        .map(|o| Some(o.to_string()))
}

fn zones_into_etcd(dir: &LocalDir, etcd: Arc<dyn Store>) -> anyhow::Result<usize> {
    let shared = SharedZones::new(etcd);
    let mut n = 0;
    for key in dir.list("zones/")? {
        let Some(Some(origin)) = zone_key(&key) else {
            continue;
        };
        let origin = portico_dns::zones::zone_name(&origin).map_err(anyhow::Error::msg)?;
        let text = dir.get(&key)?.unwrap_or_default();
        let mut zone = portico_dns::zone::Zone::new(&origin);
        portico_dns::zone_file::parse_into(&mut zone, &String::from_utf8_lossy(&text), 300)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.root().join(&key).display()))?;
        shared
            .import(&zone)
            .map_err(|e| anyhow::anyhow!("zone {origin}: {e}"))?;
        n += 1;
    }
    Ok(n)
}

fn zones_into_dir(etcd: Arc<dyn Store>, dir: &LocalDir) -> anyhow::Result<usize> {
    let shared = SharedZones::new(etcd.clone());
    let mut n = 0;
    for key in etcd.list("zones/")? {
        let Some(Some(origin)) = zone_key(&key) else {
            continue;
        };
        if !key.ends_with("/head") {
            // etcd's old layout: the zone as one master-file value.
            if let Some(v) = etcd.get(&key)? {
                dir.put(&key, &v, 0o644)?;
                n += 1;
            }
            continue;
        }
        let origin = portico_dns::zones::zone_name(&origin).map_err(anyhow::Error::msg)?;
        let zone = match shared.read(&origin, None) {
            Ok(Stored::Zone(z)) => z,
            Ok(_) => continue,
            Err(e) => anyhow::bail!("zone {origin}: {e}"),
        };
        dir.put(
            &format!("zones/{origin}zone"),
            portico_dns::zone_file::export(&zone).as_bytes(),
            0o644,
        )?;
        n += 1;
    }
    Ok(n)
}

fn remove_journals(state_dir: &Path) -> anyhow::Result<()> {
    let dir = state_dir.join("zones");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().ends_with(".journal") {
            std::fs::remove_file(e.path())
                .with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    Ok(())
}
