//! `portico store migrate`: copy the state directory into the configured store and back.

use std::path::{Path, PathBuf};

use anyhow::Context;
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
    let shared = shared(&config, &source.base_dir())?.with_context(|| {
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
    let n = portico_store::migrate(from, into)
        .with_context(|| format!("copying {} into {}", from.describe(), into.describe()))?;
    println!(
        "copied {n} keys from {} into {}",
        from.describe(),
        into.describe()
    );
    Ok(())
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
