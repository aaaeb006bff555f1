//! The load balancer's sections of `portico.toml`, as plain serde structs.
//!
//! These types only describe what the user wrote (`deny_unknown_fields` everywhere, so a typo is an
//! error, not a silently ignored key). [`crate::Snapshot::build`] turns them once into validated
//! runtime types; nothing past that point re-reads these structs.

use std::collections::BTreeMap;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// Everything the load balancer reads from the config file.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LbConfig {
    #[serde(default, rename = "certificate")]
    pub certificates: Vec<CertificateConfig>,
    #[serde(default, rename = "target_group")]
    pub target_groups: Vec<TargetGroupConfig>,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
}

/// `[[certificate]]`: imported from files (like "Import a certificate" in ACM). Requested
/// certificates (`domains`, `issuer`, `challenge`) are the certificate manager's; their keys are
/// accepted here so that one table serves both, and validated by whoever owns them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub name: String,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    #[serde(default)]
    pub domains: Vec<String>,
    pub issuer: Option<String>,
    pub challenge: Option<String>,
    /// Run after each issuance or renewal with `RENEWED_LINEAGE` and `RENEWED_DOMAINS` set, as
    /// certbot's `--deploy-hook` is (through `sh -c`).
    pub deploy_hook: Option<String>,
    /// dns-01 through RFC 2136 to another DNS server (`ip:port`), signed with `dns_key` (a
    /// `[[tsig_key]]`), as certbot's rfc2136 plugin does; Portico's own zones when absent.
    pub dns_server: Option<String>,
    pub dns_key: Option<String>,
    /// `ecdsa` (P-256, the default) or `rsa`, as certbot's `--key-type`.
    pub key_type: Option<String>,
    /// 2048 (default), 3072 or 4096 with `key_type = "rsa"`.
    pub rsa_key_size: Option<usize>,
    /// The ACME CA's certificate profile (`classic`, `tlsserver`, `shortlived` at Let's
    /// Encrypt); `[acme] profile` when absent, else the CA's default.
    pub profile: Option<String>,
}

/// `[[target_group]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetGroupConfig {
    pub name: String,
    #[serde(default)]
    pub algorithm: Algorithm,
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    pub health_check: Option<HealthCheckConfig>,
    /// How long to wait for a TCP connection to a target.
    #[serde(default = "defaults::connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// How long to wait for a target's response head before answering 504.
    #[serde(default = "defaults::response_timeout", with = "duration")]
    pub response_timeout: Duration,
    /// `http` (the default) or `https`: TLS to the targets, verified against the system's
    /// roots or `ca_file`.
    #[serde(default)]
    pub protocol: TargetProtocol,
    /// `http1` (the default), `http2` (h2c on `http`, h2 by ALPN on `https`) or `grpc`
    /// (HTTP/2 with gRPC health checks and gRPC errors).
    #[serde(default)]
    pub protocol_version: ProtocolVersion,
    /// PEM CA certificates that sign the targets' certificates (`https`); the system's roots
    /// when absent.
    pub ca_file: Option<String>,
    /// The name the targets' certificates are checked against and sent as SNI; by default the
    /// host each target is written with.
    pub server_name: Option<String>,
    /// `false` accepts any certificate from the targets (said loudly by `portico check`).
    #[serde(default = "defaults::yes")]
    pub verify: bool,
    /// How long a target removed from the group may finish its requests in flight before its
    /// connections are closed (ALB's `deregistration_delay`, default 300 s).
    #[serde(default = "defaults::deregistration_delay", with = "duration")]
    pub deregistration_delay: Duration,
    /// Keep a client on one target (ALB's two kinds of stickiness).
    pub stickiness: Option<StickinessConfig>,
    /// A newly registered or newly healthy target's share grows linearly over this long
    /// (ALB's `slow_start`); off when absent.
    #[serde(default, with = "duration_opt")]
    pub slow_start: Option<Duration>,
}

/// `stickiness = { type = "lb_cookie", duration = "1d" }` or
/// `{ type = "app_cookie", cookie_name = "SESSION" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickinessConfig {
    #[serde(rename = "type")]
    pub kind: StickinessKind,
    /// How long the stickiness cookie lives (ALB: 1 s to 7 days, default 1 day).
    #[serde(default = "defaults::stickiness_duration", with = "duration")]
    pub duration: Duration,
    /// `app_cookie`: the application's own cookie whose appearance starts stickiness.
    pub cookie_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StickinessKind {
    /// Portico's own cookie, set on every response.
    LbCookie,
    /// Portico's cookie, set when the application sets `cookie_name`.
    AppCookie,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetProtocol {
    #[default]
    Http,
    Https,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProtocolVersion {
    #[default]
    Http1,
    Http2,
    Grpc,
}

/// How a target group spreads requests over its healthy targets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    RoundRobin,
    LeastOutstandingRequests,
}

/// A target: `"host:port"` or `{ address = "host:port", weight = 3 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TargetConfig {
    Address(String),
    Weighted(WeightedTarget),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedTarget {
    pub address: String,
    #[serde(default = "defaults::weight")]
    pub weight: u32,
}

impl TargetConfig {
    pub fn address(&self) -> &str {
        match self {
            TargetConfig::Address(a) => a,
            TargetConfig::Weighted(w) => &w.address,
        }
    }
    pub fn weight(&self) -> u32 {
        match self {
            TargetConfig::Address(_) => 1,
            TargetConfig::Weighted(w) => w.weight,
        }
    }
}

/// `[target_group.health_check]`, with an Application Load Balancer's defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// `http`, `https` or `tcp`; the group's own protocol when absent. A `grpc` group's HTTP
    /// checks speak gRPC (`path` is the method, `matcher` gRPC status codes).
    pub protocol: Option<HealthCheckProtocol>,
    /// `/` (`/grpc.health.v1.Health/Check` for a `grpc` group) when absent.
    pub path: Option<String>,
    /// Port to check; the target's own port when absent ("traffic port").
    pub port: Option<u16>,
    #[serde(default = "defaults::health_interval", with = "duration")]
    pub interval: Duration,
    #[serde(default = "defaults::health_timeout", with = "duration")]
    pub timeout: Duration,
    #[serde(default = "defaults::healthy_threshold")]
    pub healthy_threshold: u32,
    #[serde(default = "defaults::unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Status codes that count as healthy: `"200"`, `"200,204"`, `"200-399"` (gRPC codes for a
    /// `grpc` group: `"0"` by default; ALB's `/AWS.ALB/healthcheck` path answers `"12"`).
    pub matcher: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckProtocol {
    Http,
    Https,
    Tcp,
}

/// `[[listener]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    /// One address or several (`["0.0.0.0:443", "[::]:443"]`).
    #[serde(deserialize_with = "one_or_many")]
    pub bind: Vec<String>,
    pub protocol: Protocol,
    #[serde(default)]
    pub certificates: Vec<String>,
    /// Certificate for clients that send no SNI (or an unknown name); the first of `certificates`
    /// when absent.
    pub default_certificate: Option<String>,
    #[serde(default)]
    pub tls_policy: TlsPolicy,
    /// Mutual TLS (ALB's verify mode): client certificates are verified against the CA
    /// certificates in this PEM file.
    pub client_ca_file: Option<String>,
    /// `required` (the default with `client_ca_file`: no certificate, no connection) or
    /// `optional` (a client without one is served; one with an invalid one is refused).
    pub client_auth: Option<ClientAuth>,
    /// Security-group inbound rules: when `allow` is non-empty, only these sources may connect;
    /// `deny` wins over `allow`.
    #[serde(default)]
    pub allow: Vec<IpNet>,
    #[serde(default)]
    pub deny: Vec<IpNet>,
    /// Headers set on every response: `{ "Name" = "value" }`, or `{ set = {…}, add = {…},
    /// remove = [...] }`.
    #[serde(default)]
    pub response_headers: HeadersConfig,
    /// Changes to every request before it is forwarded: `{ set = {…}, add = {…}, remove = [...] }`.
    #[serde(default)]
    pub request_headers: HeaderRewriteConfig,
    pub default_action: ActionConfig,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleConfig>,
    pub access_log: Option<AccessLogConfig>,
    #[serde(default = "defaults::header_timeout", with = "duration")]
    pub header_timeout: Duration,
    #[serde(default = "defaults::idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Plain-HTTP listeners: also accept HTTP/2 with prior knowledge (h2c), as nginx's
    /// `listen … http2` does. Off by default, so that HTTP/1.1 is served without sniffing.
    #[serde(default)]
    pub h2c: bool,
    /// Read a PROXY protocol v1/v2 header from `proxy_protocol_from` sources (a network load
    /// balancer in front): the client address it names is the one rules, logs and
    /// X-Forwarded-For see. A PROXY header from any other source closes the connection.
    /// Compress responses (zstd, brotli, gzip), as Caddy's `encode`; off when absent.
    pub compress: Option<CompressConfig>,
    #[serde(default)]
    pub proxy_protocol: bool,
    #[serde(default)]
    pub proxy_protocol_from: Vec<IpNet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Http,
    Https,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    Required,
    Optional,
}

/// Named TLS policies, after Mozilla's server-side TLS recommendations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsPolicy {
    /// TLS 1.3 only.
    Modern,
    /// TLS 1.2 (ECDHE with AEAD ciphers) and TLS 1.3.
    #[default]
    Intermediate,
}

/// `access_log = { path = "/var/log/portico/https.log", format = "json" }`; `path = "-"` is stdout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    #[serde(default = "defaults::access_log_path")]
    pub path: String,
    #[serde(default)]
    pub format: AccessLogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    #[default]
    Combined,
    Json,
}

/// `[[listener.rule]]`: every condition given must match; values within one condition are ORed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub priority: u32,
    #[serde(default)]
    pub host: Vec<String>,
    #[serde(default)]
    pub path: Vec<String>,
    #[serde(default)]
    pub method: Vec<String>,
    /// Header name → accepted value patterns (`*`, `?`).
    #[serde(default)]
    pub header: BTreeMap<String, Vec<String>>,
    /// Query key → accepted value pattern (`*`, `?`).
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    #[serde(default)]
    pub source: Vec<IpNet>,
    pub action: ActionConfig,
    #[serde(default)]
    pub response_headers: HeadersConfig,
    #[serde(default)]
    pub request_headers: HeaderRewriteConfig,
    /// Host and path rewrites on `forward` (ALB's transforms).
    pub rewrite: Option<RewriteConfig>,
    /// A token bucket per client (or per header value); over it, 429 with `Retry-After`.
    pub rate_limit: Option<RateLimitConfig>,
}

/// `compress = { encodings = ["zstd", "br", "gzip"], types = ["text/*"], min_bytes = 512 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressConfig {
    /// Media types compressed: exact, or a prefix ending in `*`; text, JSON, JavaScript, XML,
    /// WebAssembly and SVG when absent.
    pub types: Option<Vec<String>>,
    /// In order of preference; the first the client accepts is used.
    #[serde(default = "defaults::encodings")]
    pub encodings: Vec<String>,
    /// Responses with a shorter Content-Length are sent as they are.
    #[serde(default = "defaults::min_bytes")]
    pub min_bytes: u64,
}

/// Response headers: a plain map of headers to set, or the full rewrite form.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum HeadersConfig {
    Rewrite(HeaderRewriteConfig),
    Set(BTreeMap<String, String>),
}

impl Default for HeadersConfig {
    fn default() -> Self {
        HeadersConfig::Set(BTreeMap::new())
    }
}

impl HeadersConfig {
    /// The rewrite this stands for (a plain map sets its headers).
    pub fn rewrite(&self) -> HeaderRewriteConfig {
        match self {
            HeadersConfig::Rewrite(r) => r.clone(),
            HeadersConfig::Set(m) => HeaderRewriteConfig {
                set: m.clone(),
                ..Default::default()
            },
        }
    }
}

/// `{ set = { "X-Env" = "prod" }, add = { "Via" = "portico" }, remove = ["X-Debug"] }`:
/// `remove` first, then `set` (replacing every value), then `add` (appending).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRewriteConfig {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `rewrite = { host = "internal.example", path = { regex = "^/api/(.*)$", replace = "/$1" } }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    /// The Host header the target sees.
    pub host: Option<String>,
    pub path: Option<PathRewriteConfig>,
}

/// A regular expression on the path (without the query) and its replacement (`$1`, `${name}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRewriteConfig {
    pub regex: String,
    pub replace: String,
}

/// `rate_limit = { requests_per_second = 10, burst = 20, key = "source" }`; `key` is `source`
/// (the client address) or `header:NAME`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests_per_second: f64,
    /// Requests allowed at once above the rate; `requests_per_second` (at least 1) when absent.
    pub burst: Option<u32>,
    #[serde(default = "defaults::rate_limit_key")]
    pub key: String,
}

/// What a listener or rule does with a request.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionConfig {
    Forward(ForwardConfig),
    Redirect(RedirectConfig),
    FixedResponse(FixedResponseConfig),
}

/// `forward = "api"` or `forward = [{ target_group = "blue", weight = 9 }, …]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ForwardConfig {
    One(String),
    Weighted(Vec<WeightedGroup>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedGroup {
    pub target_group: String,
    #[serde(default = "defaults::weight")]
    pub weight: u32,
}

/// Redirect parts with ALB placeholders `#{protocol}`, `#{host}`, `#{port}`, `#{path}` (without
/// its leading slash) and `#{query}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    #[serde(default = "defaults::placeholder_protocol")]
    pub protocol: String,
    #[serde(default = "defaults::placeholder_host")]
    pub host: String,
    #[serde(default, deserialize_with = "port_or_placeholder")]
    pub port: Option<String>,
    #[serde(default = "defaults::placeholder_path")]
    pub path: String,
    #[serde(default = "defaults::placeholder_query")]
    pub query: String,
    #[serde(default = "defaults::redirect_status")]
    pub status: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedResponseConfig {
    pub status: u16,
    #[serde(default = "defaults::content_type")]
    pub content_type: String,
    #[serde(default)]
    pub body: String,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

fn port_or_placeholder<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Port {
        Number(u16),
        Text(String),
    }
    Ok(Some(match Port::deserialize(d)? {
        Port::Number(n) => n.to_string(),
        Port::Text(s) => s,
    }))
}

pub use portico_config::duration;

/// An optional duration (`"30s"`), for keys whose absence means "off".
mod duration_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::duration")] Duration);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

mod defaults {
    use std::time::Duration;
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn response_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn weight() -> u32 {
        1
    }
    pub fn yes() -> bool {
        true
    }
    pub fn health_interval() -> Duration {
        Duration::from_secs(30)
    }
    pub fn health_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn healthy_threshold() -> u32 {
        5
    }
    pub fn unhealthy_threshold() -> u32 {
        2
    }
    pub fn header_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn max_header_bytes() -> usize {
        16 * 1024
    }
    pub fn max_connections() -> usize {
        10_000
    }
    pub fn access_log_path() -> String {
        "-".into()
    }
    pub fn placeholder_protocol() -> String {
        "#{protocol}".into()
    }
    pub fn placeholder_host() -> String {
        "#{host}".into()
    }
    pub fn placeholder_path() -> String {
        "/#{path}".into()
    }
    pub fn placeholder_query() -> String {
        "#{query}".into()
    }
    pub fn redirect_status() -> u16 {
        301
    }
    pub fn stickiness_duration() -> Duration {
        Duration::from_secs(86_400)
    }
    pub fn deregistration_delay() -> Duration {
        Duration::from_secs(300)
    }
    pub fn encodings() -> Vec<String> {
        vec!["zstd".into(), "br".into(), "gzip".into()]
    }
    pub fn min_bytes() -> u64 {
        512
    }
    pub fn rate_limit_key() -> String {
        "source".into()
    }
    pub fn content_type() -> String {
        "text/plain; charset=utf-8".into()
    }
}
