//! The `portico` binary: the command line, and the wiring of the parts into one process.

mod admin;
mod cluster;
mod config;
mod demo;
mod doctor;
mod proxy;
mod rfc2136;
mod runtime;
mod server;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc malloc: the proxy allocates small, short-lived buffers per request,
/// and the profile in docs/benchmarks.md showed glibc's malloc/free at about 7 % of CPU time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Transparent huge pages off for this process, before the allocator grows its arena: with the
/// kernel's THP set to `always` (Debian's default here), mimalloc's eagerly committed arena was
/// backed by 2 MiB pages and the load balancer's peak memory was 29 MB instead of 18 MB, with no
/// measurable speed in return (docs/benchmarks.md).
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[derive(Parser)]
#[command(
    name = "portico",
    version,
    about = "Hosted zones, certificates and a load balancer in one binary: an API on HTTPS without the cloud"
)]
struct Cli {
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
        command: CertsCommand,
    },
    /// Hosted zones: list them, or export one as an RFC 1035 master file.
    Zones {
        #[command(subcommand)]
        command: ZonesCommand,
    },
    /// Records of hosted zones, through the admin API of the running server.
    Records {
        #[command(subcommand)]
        command: admin::client::RecordsCommand,
    },
    /// Targets of target groups with their health; register and deregister (admin API).
    Targets {
        #[command(subcommand)]
        command: admin::client::TargetsCommand,
    },
    /// The state store: copy a state directory into etcd (`[store]`) and back.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Listeners and their rules (admin API).
    Listeners {
        #[command(subcommand)]
        command: admin::client::ListenersCommand,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copy every key (certificates, accounts, the internal CA, zones, API changes) from the state
    /// directory into etcd (`--to etcd`), or from etcd into the state directory (`--to dir`).
    Migrate {
        #[arg(long, value_enum)]
        to: store::Direction,
        #[arg(short, long, default_value = "portico.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Each certificate with its status (ISSUED, RENEWING, FAILED …), expiry and last error
    /// (from the running server's admin API, else from the state directory).
    List {
        #[command(flatten)]
        target: admin::client::Target,
    },
    /// One certificate: status, names, expiry, files, the last error as the CA reported it.
    Show {
        name: String,
        #[command(flatten)]
        target: admin::client::Target,
    },
    /// Renew now through the running `portico serve` (whatever the schedule says); with
    /// --dry-run, order a certificate and discard it, storing nothing.
    Renew {
        name: String,
        #[arg(long)]
        dry_run: bool,
        #[arg(short, long, default_value = "portico.toml")]
        config: PathBuf,
    },
    /// Revoke the current certificate at its CA (through the running `portico serve`) and
    /// replace it at once.
    Revoke {
        name: String,
        #[arg(short, long, default_value = "portico.toml")]
        config: PathBuf,
    },
    /// Request a certificate from the running server (admin API) and follow it until issued.
    Request {
        name: String,
        /// A name the certificate covers; repeat for several (`*.example.com` needs dns-01).
        #[arg(long = "domain", required = true)]
        domains: Vec<String>,
        /// `acme` (the [acme] CA) or `internal`.
        #[arg(long)]
        issuer: Option<String>,
        /// `http-01`, `tls-alpn-01` or `dns-01`.
        #[arg(long)]
        challenge: Option<String>,
        /// `ecdsa` (P-256, default) or `rsa`.
        #[arg(long)]
        key_type: Option<String>,
        /// 2048 (default), 3072 or 4096 with `--key-type rsa`.
        #[arg(long)]
        rsa_key_size: Option<u32>,
        /// Return once the request is accepted instead of following it.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        target: admin::client::Target,
    },
    /// Stop managing a certificate requested through the API (its files stay).
    Delete {
        name: String,
        #[command(flatten)]
        target: admin::client::Target,
    },
    /// Where the internal CA's root is and how to trust it.
    Trust {
        #[arg(short, long, default_value = "portico.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ZonesCommand {
    /// Each hosted zone with its serial and record count (from the running server's admin API,
    /// else from the state directory and config, read only).
    List {
        #[command(flatten)]
        target: admin::client::Target,
    },
    /// The zone as a master file (what `file =` reads back).
    Export {
        zone: String,
        #[command(flatten)]
        target: admin::client::Target,
    },
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    // Two rustls providers are compiled in (ring, aws-lc-rs); code that asks for the process
    // default (etcd's and other libraries' clients) gets ring, as before.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => server::serve(&config),
        Command::Check { config } => server::check(&config),
        Command::Reload { config } => server::reload(&config),
        Command::Demo(args) => demo::run(args),
        Command::Proxy(args) => proxy::run(args),
        Command::Doctor(args) => match doctor::run(args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::Certs { command } => match command {
            CertsCommand::List { target } => server::certs_list(&target),
            CertsCommand::Show { name, target } => server::certs_show(&target, &name),
            CertsCommand::Trust { config } => server::certs_trust(&config),
            CertsCommand::Request {
                name,
                domains,
                issuer,
                challenge,
                key_type,
                rsa_key_size,
                no_wait,
                target,
            } => admin::client::certs_request(
                &name,
                &domains,
                admin::client::CertOptions {
                    issuer,
                    challenge,
                    key_type,
                    rsa_key_size,
                },
                !no_wait,
                &target,
            ),
            CertsCommand::Delete { name, target } => admin::client::certs_delete(&name, &target),
            CertsCommand::Renew {
                name,
                dry_run,
                config,
            } => {
                use portico_certs::storage::RenewRequest;
                let what = if dry_run {
                    RenewRequest::DryRun
                } else {
                    RenewRequest::Renew
                };
                server::certs_renew(&config, &name, what)
            }
            CertsCommand::Revoke { name, config } => {
                server::certs_renew(&config, &name, portico_certs::storage::RenewRequest::Revoke)
            }
        },
        Command::Zones { command } => match command {
            ZonesCommand::List { target } => server::zones_list(&target),
            ZonesCommand::Export { zone, target } => server::zones_export(&target, &zone),
        },
        Command::Records { command } => admin::client::records(command),
        Command::Targets { command } => admin::client::targets(command),
        Command::Listeners { command } => admin::client::listeners(command),
        Command::Store {
            command: StoreCommand::Migrate { to, config },
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
