//! `portico zones list|export`: hosted zones from the running server, else read from the state
//! directory and config without writing anything.

use std::path::Path;

use anyhow::Context;

use portico_dns::zones::HostedZones;

use crate::cli::client::{print_json, running_api, Target};

#[derive(clap::Subcommand)]
pub enum ZonesCommand {
    /// Each hosted zone with its serial and record count (from the running server's admin API,
    /// else from the state directory and config, read only).
    List {
        #[command(flatten)]
        target: Target,
    },
    /// The zone as a master file (what `file =` reads back).
    Export {
        zone: String,
        #[command(flatten)]
        target: Target,
    },
}

pub fn run(cmd: ZonesCommand) -> anyhow::Result<()> {
    match cmd {
        ZonesCommand::List { target } => zones_list(&target),
        ZonesCommand::Export { zone, target } => zones_export(&target, &zone),
    }
}

/// Zones as the running server serves them: its state directory with the config applied,
/// read without writing anything.
pub(crate) fn zones_now(path: &Path) -> anyhow::Result<std::sync::Arc<HostedZones>> {
    let (source, config) = crate::node::load(path)?;
    let zones = HostedZones::read_only(config.state_dir.clone());
    crate::server::runtime()?
        .block_on(zones.load(&config.dns(), &source.base_dir()))
        .map_err(|issues| source.locate(&issues))?;
    Ok(zones)
}

pub fn zones_list(t: &Target) -> anyhow::Result<()> {
    let zones: Vec<serde_json::Value> = match running_api(t)? {
        Some(admin) => serde_json::from_value(admin.call("GET", "/api/v1/zones", None)?)?,
        None => {
            let zones = zones_now(&t.config)?;
            let catalog = zones.catalog();
            let mut names: Vec<_> = catalog.zones.keys().collect();
            names.sort();
            names
                .into_iter()
                .map(|n| {
                    let z = &catalog.zones[n];
                    serde_json::json!({"name": n.to_string(), "serial": z.serial(), "records": z.record_count()})
                })
                .collect()
        }
    };
    if t.json {
        print_json(&serde_json::Value::Array(zones));
        return Ok(());
    }
    println!("{:<40} {:>12} {:>10}", "ZONE", "SERIAL", "RECORDS");
    for z in zones {
        println!(
            "{:<40} {:>12} {:>10}",
            z["name"].as_str().unwrap_or(""),
            // As numbers: a JSON value's Display ignores width and alignment.
            z["serial"].as_u64().unwrap_or(0),
            z["records"].as_u64().unwrap_or(0)
        );
    }
    Ok(())
}

pub fn zones_export(t: &Target, zone: &str) -> anyhow::Result<()> {
    let text = match running_api(t)? {
        Some(admin) => admin.call_text("GET", &format!("/api/v1/zones/{zone}/export"), None)?,
        None => zones_now(&t.config)?
            .export(zone)
            .with_context(|| format!("no hosted zone {zone:?} in {}", t.config.display()))?,
    };
    print!("{text}");
    Ok(())
}
