//! `portico records …`: record sets of hosted zones, changed through the admin API.

use serde_json::Value;

use crate::cli::client::{print_json, s, Admin, Target};

#[derive(clap::Subcommand)]
pub enum RecordsCommand {
    /// The record sets of a zone.
    List {
        #[arg(long)]
        zone: String,
        #[command(flatten)]
        target: Target,
    },
    /// Set a record set, whatever was there (Route 53's UPSERT).
    Upsert(RecordArgs),
    /// Add a record set; fails if one of that name and type exists.
    Create(RecordArgs),
    /// Remove a record set; its values must match.
    Delete(RecordArgs),
}

#[derive(clap::Args)]
pub struct RecordArgs {
    #[arg(long)]
    zone: String,
    /// Relative to the zone (`@` for the apex) or fully qualified.
    #[arg(long)]
    name: String,
    #[arg(long = "type")]
    rtype: String,
    /// A value in master-file syntax; repeat for several.
    #[arg(long = "value")]
    values: Vec<String>,
    #[arg(long, default_value_t = 300)]
    ttl: u32,
    /// For ALIAS: `listener:<name>` or a name in the zone.
    #[arg(long = "alias-target")]
    alias_target: Option<String>,
    #[command(flatten)]
    target: Target,
}

pub fn records(cmd: RecordsCommand) -> anyhow::Result<()> {
    match cmd {
        RecordsCommand::List { zone, target } => {
            let admin = Admin::find(&target)?;
            let v = admin.call("GET", &format!("/api/v1/zones/{zone}"), None)?;
            if target.json {
                print_json(&v);
                return Ok(());
            }
            println!("{:<40} {:<6} {:>7}  VALUES", "NAME", "TYPE", "TTL");
            for r in v["records"].as_array().into_iter().flatten() {
                let values = match r["values"].as_array() {
                    Some(a) => a.iter().map(s).collect::<Vec<_>>().join(" | "),
                    None => s(&r["target"]),
                };
                println!(
                    "{:<40} {:<6} {:>7}  {values}",
                    s(&r["name"]),
                    s(&r["type"]),
                    s(&r["ttl"])
                );
            }
            println!("serial {}", s(&v["serial"]));
            Ok(())
        }
        RecordsCommand::Upsert(a) => change("UPSERT", a),
        RecordsCommand::Create(a) => change("CREATE", a),
        RecordsCommand::Delete(a) => change("DELETE", a),
    }
}

fn change(action: &str, a: RecordArgs) -> anyhow::Result<()> {
    let admin = Admin::find(&a.target)?;
    let mut change = serde_json::json!({
        "action": action, "name": a.name, "type": a.rtype, "ttl": a.ttl, "values": a.values,
    });
    if let Some(t) = &a.alias_target {
        change["target"] = Value::String(t.clone());
    }
    let v = admin.call(
        "POST",
        &format!("/api/v1/zones/{}/changes", a.zone),
        Some(serde_json::json!({ "changes": [change] })),
    )?;
    if a.target.json {
        print_json(&v);
    } else {
        println!(
            "{action} {} {} in {}: change {} {} (serial {})",
            a.name,
            a.rtype,
            s(&v["zone"]),
            s(&v["id"]),
            s(&v["status"]),
            s(&v["serial"])
        );
    }
    Ok(())
}
