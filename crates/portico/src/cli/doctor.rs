//! `portico doctor DOMAIN`: the checks a CA makes, explained (crates/portico-doctor), with the
//! zones and issuance history of a Portico config when one is given.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use portico_doctor::{CaKind, Options};

#[derive(clap::Args)]
pub struct DoctorArgs {
    /// The name to check, e.g. api.example.com (or *.example.com).
    pub domain: String,
    /// A DNS resolver to ask (default: the first nameserver of /etc/resolv.conf).
    #[arg(long, value_name = "ADDR")]
    pub resolver: Option<String>,
    /// The findings as JSON.
    #[arg(long)]
    pub json: bool,
    /// The port the zone's authoritative nameservers are asked on.
    #[arg(long, default_value_t = 53)]
    pub dns_port: u16,
    /// The port a CA fetches HTTP-01 from (80; another only for test CAs such as Pebble).
    #[arg(long, default_value_t = 80)]
    pub http_port: u16,
    /// The HTTPS port checked (443).
    #[arg(long, default_value_t = 443)]
    pub https_port: u16,
    /// Roots of trust (PEM) for the HTTPS check, instead of the system's.
    #[arg(long, value_name = "PEM")]
    pub ca_roots: Option<PathBuf>,
    /// The CA's CAA issuer domain (RFC 8659).
    #[arg(long, default_value = "letsencrypt.org")]
    pub caa_identity: String,
    /// The CA is on this network (Pebble, the internal CA): private names and addresses are fine.
    #[arg(long)]
    pub private_ca: bool,
    /// A Portico config: its hosted zones (dns-01 readiness), issuance history (rate limits),
    /// and the ACME account and challenge of the certificate for DOMAIN (CAA accounturi and
    /// validationmethods).
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// The ACME account URL that orders come from (default: Portico's own, with --config).
    #[arg(long, value_name = "URL")]
    pub account_uri: Option<String>,
    /// The challenge method orders use: http-01, tls-alpn-01 or dns-01 (default: the
    /// certificate's, with --config).
    #[arg(long)]
    pub method: Option<String>,
}

impl DoctorArgs {
    pub fn options(&self) -> anyhow::Result<Options> {
        let mut o = Options::new(&self.domain);
        o.resolver = match &self.resolver {
            Some(r) => Some(parse_addr(r).with_context(|| {
                format!("--resolver {r}: expected an address such as 127.0.0.1:53 or 127.0.0.1")
            })?),
            None => None,
        };
        o.ns_port = self.dns_port;
        o.ports = portico_doctor::web::Ports {
            http: self.http_port,
            https: self.https_port,
        };
        o.roots = self.ca_roots.clone();
        o.caa_identity = self.caa_identity.clone();
        o.ca = if self.private_ca {
            CaKind::Private
        } else {
            CaKind::Public
        };
        if let Some(path) = &self.config {
            let source = crate::config::Source::read(path)?;
            let config = source.parse()?;
            o.hosted_zones = config.zone.iter().map(|z| z.name.clone()).collect();
            o.state_dir = Some(config.state_dir.clone());
            let domain = self.domain.trim_end_matches('.').to_ascii_lowercase();
            let cert = config.certificate.iter().find(|c| {
                c.issuer.as_deref().unwrap_or("acme") == "acme"
                    && c.domains.iter().any(|d| d.to_ascii_lowercase() == domain)
            });
            if let (Some(c), Some(acme)) = (cert, &config.acme) {
                o.method = Some(c.challenge.clone().unwrap_or_else(|| "http-01".into()));
                o.account_uri =
                    portico_certs::issuer::acme::account_uri(&config.state_dir, &acme.directory);
            }
        }
        if let Some(a) = &self.account_uri {
            o.account_uri = Some(a.clone());
        }
        if let Some(m) = &self.method {
            o.method = Some(m.clone());
        }
        Ok(o)
    }
}

fn parse_addr(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>().ok().or_else(|| {
        s.parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

pub fn run(args: DoctorArgs) -> anyhow::Result<bool> {
    let opts = args.options()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(portico_doctor::run(&opts));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(!report.failed())
}
