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
    /// Default 300, or 60 where health decides the answer.
    #[arg(long)]
    ttl: Option<u32>,
    /// For ALIAS: `listener:<name>` or a name in the zone.
    #[arg(long = "alias-target")]
    alias_target: Option<String>,
    /// Routing: this set among the others of its name and type.
    #[arg(long = "set-identifier")]
    set_identifier: Option<String>,
    /// `weighted`, `failover` or `multivalue` (with --set-identifier).
    #[arg(long)]
    routing: Option<String>,
    #[arg(long)]
    weight: Option<u32>,
    /// `primary` or `secondary`.
    #[arg(long)]
    failover: Option<String>,
    /// `target_group:NAME`, `listener:NAME`, or a check `http://ADDR:PORT/PATH`, `https://…`,
    /// `tcp://ADDR:PORT`.
    #[arg(long)]
    health: Option<String>,
    /// For ALIAS: answer only where the listener serves healthily.
    #[arg(long = "evaluate-target-health")]
    evaluate_target_health: bool,
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
                let mut values = match r["values"].as_array() {
                    Some(a) => a.iter().map(s).collect::<Vec<_>>().join(" | "),
                    None => s(&r["target"]),
                };
                if let Some(id) = r["set_identifier"].as_str() {
                    let mut policy = s(&r["routing"]);
                    if let Some(w) = r["weight"].as_u64() {
                        policy.push_str(&format!(" {w}"));
                    }
                    if let Some(f) = r["failover"].as_str() {
                        policy.push_str(&format!(" {f}"));
                    }
                    if let Some(h) = r["health"].as_str() {
                        policy.push_str(&format!(", health {h}"));
                    }
                    let state = if r["healthy"].as_bool() == Some(false) {
                        "unhealthy"
                    } else {
                        "healthy"
                    };
                    values.push_str(&format!("  [{id}: {policy}; {state}]"));
                }
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
        "action": action, "name": a.name, "type": a.rtype, "values": a.values,
    });
    if let Some(t) = a.ttl {
        change["ttl"] = t.into();
    }
    if let Some(t) = &a.alias_target {
        change["target"] = Value::String(t.clone());
    }
    for (key, v) in [
        ("set_identifier", &a.set_identifier),
        ("routing", &a.routing),
        ("failover", &a.failover),
        ("health", &a.health),
    ] {
        if let Some(v) = v {
            change[key] = Value::String(v.clone());
        }
    }
    if let Some(w) = a.weight {
        change["weight"] = w.into();
    }
    if a.evaluate_target_health {
        change["evaluate_target_health"] = true.into();
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
