//! The command line: one file per command noun, each parsing its arguments and printing its
//! tables (`serve`, `check`, `reload`, `demo`, `proxy`, `doctor`, `certs`, `zones`, `records`,
//! `targets`, `listeners`, `store`), and the admin API client they share (`client.rs`).

pub mod certs;
pub mod check;
pub mod client;
pub mod demo;
pub mod doctor;
pub mod import;
pub mod listeners;
pub mod lock;
pub mod proxy;
pub mod records;
pub mod reload;
pub mod serve;
pub mod store;
pub mod targets;
pub mod zones;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "portico",
    version,
    about = "Hosted zones, certificates and a load balancer in one binary: an API on HTTPS without the cloud"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything the config names. SIGHUP (or `portico reload`) reloads; SIGTERM drains, then exits.
    Serve {
        #[arg(short, long, default_value = "portico.toml")]
        config: PathBuf,
    },
    /// Validate the config file and exit (0 when valid).
    Check {
        #[arg(short, long, default_value = "portico.toml")]
        config: PathBuf,
    },
    /// Validate the config, then tell the running `portico serve` to load it.
    Reload {
        #[arg(short, long, default_value = "portico.toml")]
        config: PathBuf,
    },
    /// The whole recipe on loopback with embedded defaults; runs until Ctrl-C.
    Demo(demo::DemoArgs),
    /// nginx + certbot in one command: HTTPS for DOMAIN in front of ADDR, with a certificate
    /// obtained and renewed, HTTP redirected, the target health-checked.
    Proxy(proxy::ProxyArgs),
    /// Why DOMAIN can or cannot get and serve a certificate: the checks a CA makes, explained.
    /// Exits 1 when a finding is FATAL or ERROR.
    Doctor(doctor::DoctorArgs),
    /// Certificates: their status, and the internal CA's root.
    Certs {
        #[command(subcommand)]
        command: certs::CertsCommand,
    },
    /// Hosted zones: list them, or export one as an RFC 1035 master file.
    Zones {
        #[command(subcommand)]
        command: zones::ZonesCommand,
    },
    /// Records of hosted zones, through the admin API of the running server.
    Records {
        #[command(subcommand)]
        command: records::RecordsCommand,
    },
    /// Targets of target groups with their health; register and deregister (admin API).
    Targets {
        #[command(subcommand)]
        command: targets::TargetsCommand,
    },
    /// The state store: copy a state directory into etcd (`[store]`) and back.
    Store {
        #[command(subcommand)]
        command: store::StoreCommand,
    },
    /// Listeners and their rules (admin API).
    Listeners {
        #[command(subcommand)]
        command: listeners::ListenersCommand,
    },
}

/// Runs the command line's command; the process's exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve::serve(&config),
        Command::Check { config } => check::check(&config),
        Command::Reload { config } => reload::reload(&config),
        Command::Demo(args) => demo::run(args),
        Command::Proxy(args) => proxy::run(args),
        Command::Doctor(args) => match doctor::run(args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::Certs { command } => certs::run(command),
        Command::Zones { command } => zones::run(command),
        Command::Records { command } => records::records(command),
        Command::Targets { command } => targets::targets(command),
        Command::Listeners { command } => listeners::listeners(command),
        Command::Store {
            command: store::StoreCommand::Migrate { to, config },
        } => store::migrate(&config, to),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
