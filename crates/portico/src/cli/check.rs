//! `portico check`: validate the config (and the zones and certificates it names) and exit.

use std::path::Path;

pub fn check(path: &Path) -> anyhow::Result<()> {
    let (_, config) = crate::node::load(path)?;
    for (i, tg) in config.target_group.iter().enumerate() {
        if !tg.verify {
            eprintln!(
                "warning: target_group[{i}] {:?}: verify = false: the targets' certificates are not checked; anyone on the path to them can pose as them (hint: ca_file = \"targets-ca.pem\" with the CA that signed them)",
                tg.name
            );
        }
    }
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
