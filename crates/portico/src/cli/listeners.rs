//! `portico listeners …`: listeners and their rules, through the admin API.

use crate::cli::client::{print_json, s, Admin, Target};

#[derive(clap::Subcommand)]
pub enum ListenersCommand {
    /// Listeners: protocol, addresses, certificates, rules, and who made them.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Remove a listener made through the API.
    Delete {
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

pub fn listeners(cmd: ListenersCommand) -> anyhow::Result<()> {
    match cmd {
        ListenersCommand::List { target } => {
            let v = Admin::find(&target)?.call("GET", "/api/v1/listeners", None)?;
            if target.json {
                print_json(&v);
                return Ok(());
            }
            println!(
                "{:<16} {:<6} {:<24} {:>5} {:<7} CERTIFICATES",
                "LISTENER", "PROTO", "LISTENING ON", "RULES", "BY"
            );
            for l in v.as_array().into_iter().flatten() {
                let on = l["listening_on"]
                    .as_array()
                    .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                    .unwrap_or_default();
                let certs = l["certificates"]
                    .as_array()
                    .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                    .unwrap_or_default();
                println!(
                    "{:<16} {:<6} {:<24} {:>5} {:<7} {certs}",
                    s(&l["name"]),
                    s(&l["protocol"]),
                    on,
                    s(&l["rules"]),
                    s(&l["source"])
                );
            }
            Ok(())
        }
        ListenersCommand::Delete { name, target } => {
            Admin::find(&target)?.call("DELETE", &format!("/api/v1/listeners/{name}"), None)?;
            println!("listener {name} deleted");
            Ok(())
        }
    }
}
