//! `portico targets …`: targets of target groups with their health; register, deregister.

use serde_json::Value;

use crate::cli::client::{print_json, s, Admin, Target};

#[derive(clap::Subcommand)]
pub enum TargetsCommand {
    /// Targets with their health (every group, or one).
    List {
        group: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Add targets to a group: they take traffic once healthy, with no reload.
    Register {
        group: String,
        /// `host:port`; repeat for several.
        #[arg(required = true)]
        addresses: Vec<String>,
        #[arg(long)]
        weight: Option<u32>,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a target: no new requests; those in flight finish (draining).
    Deregister {
        group: String,
        address: String,
        #[command(flatten)]
        target: Target,
    },
}

fn print_groups(groups: &[Value]) {
    println!(
        "{:<20} {:<24} {:<10} {:>9} {:<7} REASON",
        "TARGET GROUP", "TARGET", "STATE", "IN FLIGHT", "BY"
    );
    for g in groups {
        for t in g["targets"].as_array().into_iter().flatten() {
            println!(
                "{:<20} {:<24} {:<10} {:>9} {:<7} {}",
                s(&g["name"]),
                s(&t["address"]),
                s(&t["state"]),
                s(&t["in_flight"]),
                s(&t["registered_by"]),
                s(&t["reason"])
            );
        }
    }
}

pub fn targets(cmd: TargetsCommand) -> anyhow::Result<()> {
    let (target, v) = match cmd {
        TargetsCommand::List { group, target } => {
            let admin = Admin::find(&target)?;
            let v = match group {
                Some(g) => Value::Array(vec![admin.call(
                    "GET",
                    &format!("/api/v1/target-groups/{g}"),
                    None,
                )?]),
                None => admin.call("GET", "/api/v1/target-groups", None)?,
            };
            (target, v)
        }
        TargetsCommand::Register {
            group,
            addresses,
            weight,
            target,
        } => {
            let admin = Admin::find(&target)?;
            let targets: Vec<Value> = addresses
                .iter()
                .map(|a| match weight {
                    Some(w) => serde_json::json!({"address": a, "weight": w}),
                    None => serde_json::json!({ "address": a }),
                })
                .collect();
            let v = admin.call(
                "POST",
                &format!("/api/v1/target-groups/{group}/targets"),
                Some(serde_json::json!({ "targets": targets })),
            )?;
            (target, Value::Array(vec![v]))
        }
        TargetsCommand::Deregister {
            group,
            address,
            target,
        } => {
            let admin = Admin::find(&target)?;
            let v = admin.call(
                "DELETE",
                &format!("/api/v1/target-groups/{group}/targets/{address}"),
                None,
            )?;
            (target, Value::Array(vec![v]))
        }
    };
    if target.json {
        print_json(&v);
    } else {
        print_groups(v.as_array().map(Vec::as_slice).unwrap_or_default());
    }
    Ok(())
}
