//! `portico check`: validate the config (and the zones and certificates it names) and exit.

use std::path::Path;

pub fn check(path: &Path) -> anyhow::Result<()> {
    let (_, config) = crate::node::load(path)?;
    println!(
        "{}: ok ({} listeners, {} target groups, {} certificates, {} zones)",
        path.display(),
        config.listener.len(),
        config.target_group.len(),
        config.certificate.len(),
        config.zone.len()
    );
    Ok(())
}
