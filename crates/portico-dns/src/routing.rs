//! Record sets answered by a routing policy, as Route 53's weighted, failover and multivalue
//! record sets: several sets share a name and type, each with its own `set_identifier`, and
//! every query is answered from those whose health allows, chosen as Route 53 chooses:
//!
//! - `weighted`: one set, with probability weight / sum of the healthy sets' weights (sets of
//!   weight 0 only when every other is unhealthy; all equally when every weight is 0);
//! - `failover`: the primary while it is healthy, else the secondary;
//! - `multivalue`: up to eight healthy records, in random order.
//!
//! When no set is healthy, all of them count as healthy (Route 53's behaviour: an answer that may
//! work beats none), and that is logged once until one is healthy again. Health comes from the
//! load balancer (a target group with a healthy target, a listener that serves one) or from a
//! check of Portico's own (`http://`, `https://`, `tcp://` to an address), all evaluated by the
//! binary through [`crate::answer::ListenerAddrs`].

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::RecordType;

use crate::zone::{Alias, RecordSet};

/// Highest TTL of a record set whose answer health decides: a resolver keeps an answer for its
/// TTL, so failover can take that much longer to reach clients.
pub const MAX_HEALTH_TTL: u32 = 300;
/// TTL of such a set when none is given (Route 53 uses 60 s for its load-balancer aliases).
pub const DEFAULT_HEALTH_TTL: u32 = 60;
/// Records in a multivalue answer, at most (Route 53's figure).
pub const MULTIVALUE_MAX: usize = 8;

/// How the sets of one name and type are chosen from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    Weighted(u8),
    Failover(Role),
    Multivalue,
}

impl Policy {
    /// The policy's name in config, the API and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Policy::Weighted(_) => "weighted",
            Policy::Failover(_) => "failover",
            Policy::Multivalue => "multivalue",
        }
    }

    /// The policy from its config fields: `routing`, with `weight` or `failover`.
    pub fn parse(
        routing: &str,
        weight: Option<u32>,
        failover: Option<&str>,
    ) -> Result<Self, String> {
        match routing.to_ascii_lowercase().as_str() {
            "weighted" => {
                let w = weight.ok_or("a weighted record set needs a weight (0-255)")?;
                if failover.is_some() {
                    return Err("failover is for failover record sets, not weighted ones".into());
                }
                u8::try_from(w)
                    .map(Policy::Weighted)
                    .map_err(|_| format!("weight {w} is above 255"))
            }
            "failover" => {
                if weight.is_some() {
                    return Err("weight is for weighted record sets, not failover ones".into());
                }
                match failover.map(str::to_ascii_lowercase).as_deref() {
                    Some("primary") => Ok(Policy::Failover(Role::Primary)),
                    Some("secondary") => Ok(Policy::Failover(Role::Secondary)),
                    Some(o) => Err(format!("failover {o:?} is neither primary nor secondary")),
                    None => Err(
                        "a failover record set needs failover = \"primary\" or \"secondary\""
                            .into(),
                    ),
                }
            }
            "multivalue" => {
                if weight.is_some() || failover.is_some() {
                    return Err("a multivalue record set takes neither weight nor failover".into());
                }
                Ok(Policy::Multivalue)
            }
            other => Err(format!(
                "routing {other:?} is not known: weighted, failover or multivalue"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Secondary,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        })
    }
}

/// What decides whether a record set is healthy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Health {
    /// Healthy while the group has a healthy target.
    TargetGroup(String),
    /// Healthy while the listener is bound and one of its target groups (if it forwards) has a
    /// healthy target.
    Listener(String),
    /// A check Portico runs itself.
    Check(Check),
}

impl Health {
    /// `target_group:NAME`, `listener:NAME`, or a check's address (`http://192.0.2.1:80/health`,
    /// `https://…`, `tcp://192.0.2.1:5432`) with `timing`.
    pub fn parse(text: &str, timing: CheckTiming) -> Result<Self, String> {
        if let Some(g) = text.strip_prefix("target_group:") {
            return nonempty(g).map(Health::TargetGroup);
        }
        if let Some(l) = text.strip_prefix("listener:") {
            return nonempty(l).map(Health::Listener);
        }
        Check::parse(text, timing).map(Health::Check)
    }
}

fn nonempty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("the health reference names nothing: write target_group:NAME or listener:NAME".into())
    } else {
        Ok(s.to_string())
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::TargetGroup(g) => write!(f, "target_group:{g}"),
            Health::Listener(l) => write!(f, "listener:{l}"),
            Health::Check(c) => c.fmt(f),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CheckProtocol {
    Http,
    Https,
    Tcp,
}

/// How often a check of Portico's own runs and how many results change its state (the keys of
/// a target group's `health_check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CheckTiming {
    pub interval_ms: u32,
    pub timeout_ms: u32,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl Default for CheckTiming {
    /// Route 53's fast checks: every 10 s, 3 results to change state.
    fn default() -> Self {
        CheckTiming {
            interval_ms: 10_000,
            timeout_ms: 5_000,
            healthy_threshold: 3,
            unhealthy_threshold: 3,
        }
    }
}

impl CheckTiming {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.into())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.into())
    }

    /// From the optional fields of config or the API (durations as `"10s"`).
    pub fn parse(
        interval: Option<&str>,
        timeout: Option<&str>,
        healthy_threshold: Option<u32>,
        unhealthy_threshold: Option<u32>,
    ) -> Result<Self, String> {
        let d = CheckTiming::default();
        let ms = |v: Option<&str>, default: u32, what: &str| -> Result<u32, String> {
            let Some(v) = v else { return Ok(default) };
            let t = humantime::parse_duration(v)
                .map_err(|e| format!("{what} {v:?}: {e} (write e.g. \"10s\")"))?;
            let ms = u32::try_from(t.as_millis()).unwrap_or(u32::MAX);
            if !(100..=300_000).contains(&ms) {
                return Err(format!("{what} {v:?} is outside 100ms-5m"));
            }
            Ok(ms)
        };
        let count = |v: Option<u32>, default: u32, what: &str| -> Result<u32, String> {
            match v.unwrap_or(default) {
                n @ 1..=10 => Ok(n),
                n => Err(format!("{what} {n} is outside 1-10")),
            }
        };
        let t = CheckTiming {
            interval_ms: ms(interval, d.interval_ms, "interval")?,
            // Without a timeout, the default one, cut to the interval.
            timeout_ms: ms(
                timeout,
                d.timeout_ms.min(ms(interval, d.interval_ms, "interval")?),
                "timeout",
            )?,
            healthy_threshold: count(healthy_threshold, d.healthy_threshold, "healthy_threshold")?,
            unhealthy_threshold: count(
                unhealthy_threshold,
                d.unhealthy_threshold,
                "unhealthy_threshold",
            )?,
        };
        if t.timeout_ms > t.interval_ms {
            return Err("the timeout is longer than the interval".into());
        }
        Ok(t)
    }

    /// The fields that differ from the defaults, as `key=value` words (for master files).
    pub fn words(&self) -> Vec<String> {
        let d = CheckTiming::default();
        let dur =
            |ms: u32| humantime::format_duration(Duration::from_millis(ms.into())).to_string();
        let mut out = Vec::new();
        if self.interval_ms != d.interval_ms {
            out.push(format!("interval={}", dur(self.interval_ms)));
        }
        if self.timeout_ms != d.timeout_ms {
            out.push(format!("timeout={}", dur(self.timeout_ms)));
        }
        if self.healthy_threshold != d.healthy_threshold {
            out.push(format!("healthy_threshold={}", self.healthy_threshold));
        }
        if self.unhealthy_threshold != d.unhealthy_threshold {
            out.push(format!("unhealthy_threshold={}", self.unhealthy_threshold));
        }
        out
    }
}

/// A check Portico runs itself: a TCP connect, or an HTTP(S) GET that must answer 2xx or 3xx.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Check {
    pub protocol: CheckProtocol,
    pub addr: SocketAddr,
    /// The HTTP path ("/" for TCP, unused).
    pub path: String,
    pub timing: CheckTiming,
}

impl Check {
    pub fn parse(text: &str, timing: CheckTiming) -> Result<Self, String> {
        let hint = "write target_group:NAME, listener:NAME, http://ADDRESS:PORT/PATH, https://ADDRESS:PORT/PATH or tcp://ADDRESS:PORT";
        let (protocol, rest) = if let Some(r) = text.strip_prefix("http://") {
            (CheckProtocol::Http, r)
        } else if let Some(r) = text.strip_prefix("https://") {
            (CheckProtocol::Https, r)
        } else if let Some(r) = text.strip_prefix("tcp://") {
            (CheckProtocol::Tcp, r)
        } else {
            return Err(format!("health {text:?} is not known: {hint}"));
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if protocol == CheckProtocol::Tcp && path != "/" {
            return Err(format!("health {text:?}: a tcp check has no path"));
        }
        let addr: SocketAddr = hostport.parse().map_err(|_| {
            format!(
                "health {text:?}: {hostport:?} is not an address with a port (a check goes to an address, e.g. 192.0.2.10:80 or [2001:db8::1]:443, so that it does not depend on DNS)"
            )
        })?;
        Ok(Check {
            protocol,
            addr,
            path: path.to_string(),
            timing,
        })
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.protocol {
            CheckProtocol::Http => write!(f, "http://{}{}", self.addr, self.path),
            CheckProtocol::Https => write!(f, "https://{}{}", self.addr, self.path),
            CheckProtocol::Tcp => write!(f, "tcp://{}", self.addr),
        }
    }
}

/// One record set of a routed group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub id: String,
    pub policy: Policy,
    pub health: Option<Health>,
    pub data: RoutedData,
    pub stats: Stats,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutedData {
    Set(RecordSet),
    /// Answers A and AAAA, as an ALIAS does.
    Alias(Alias),
}

impl Routed {
    /// The type its key is stored under: the set's, `A` for an ALIAS (which answers A and AAAA).
    pub fn rtype(&self) -> RecordType {
        match &self.data {
            RoutedData::Set(s) => s.rtype,
            RoutedData::Alias(_) => RecordType::A,
        }
    }

    /// The type as config and the API write it (`ALIAS` for an alias).
    pub fn type_name(&self) -> String {
        match &self.data {
            RoutedData::Set(s) => s.rtype.to_string(),
            RoutedData::Alias(_) => "ALIAS".into(),
        }
    }

    /// Whether it answers queries of `qtype`.
    pub fn answers(&self, qtype: RecordType) -> bool {
        match &self.data {
            RoutedData::Set(s) => s.rtype == qtype,
            RoutedData::Alias(_) => matches!(qtype, RecordType::A | RecordType::AAAA),
        }
    }

    pub fn is_alias(&self) -> bool {
        matches!(self.data, RoutedData::Alias(_))
    }

    pub fn ttl(&self) -> u32 {
        match &self.data {
            RoutedData::Set(s) => s.ttl,
            RoutedData::Alias(a) => a.ttl,
        }
    }

    /// Whether health can decide its answer (so its TTL must stay low).
    pub fn health_decides(&self) -> bool {
        self.health.is_some()
            || matches!(&self.data, RoutedData::Alias(a) if a.evaluate_target_health)
    }
}

/// Counters shared by every version of a zone that holds the set (a change copies the zone, and
/// the counts go on), and never part of a set's identity.
#[derive(Debug, Clone, Default)]
pub struct Stats(Arc<StatsInner>);

#[derive(Debug, Default)]
struct StatsInner {
    answered: AtomicU64,
    /// Set while the group answers with every set because none is healthy (logged once).
    failing_open: AtomicBool,
}

impl Stats {
    pub fn answered(&self) -> u64 {
        self.0.answered.load(Ordering::Relaxed)
    }

    pub fn count(&self) {
        self.0.answered.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes whether the group fails open now; true when that just began.
    pub fn failing_open(&self, now: bool) -> bool {
        if self.0.failing_open.load(Ordering::Relaxed) == now {
            return false;
        }
        self.0.failing_open.swap(now, Ordering::Relaxed) != now && now
    }
}

impl PartialEq for Stats {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Stats {}

/// The routing fields of a record set as config, the change-batch API and master-file comments
/// write them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoutingFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_identifier: Option<String>,
    /// `weighted`, `failover` or `multivalue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// `primary` or `secondary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<String>,
    /// `target_group:NAME`, `listener:NAME`, or a check (`http://ADDR:PORT/PATH`, `https://…`,
    /// `tcp://ADDR:PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// Timing of a check of Portico's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<CheckFields>,
    /// ALIAS only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluate_target_health: Option<bool>,
}

/// `health_check = { interval = "10s", timeout = "5s", healthy_threshold = 3,
/// unhealthy_threshold = 3 }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
}

impl RoutingFields {
    /// Whether health can decide the answer (so the default TTL is low).
    pub fn health_decides(&self) -> bool {
        self.health.is_some() || self.evaluate_target_health == Some(true)
    }

    /// The routed set these fields make of `data`; `None` for a plain set (no
    /// `set_identifier`).
    pub fn routed(&self, data: RoutedData) -> Result<Option<Routed>, String> {
        if self.evaluate_target_health.is_some() && !matches!(data, RoutedData::Alias(_)) {
            return Err("evaluate_target_health is for ALIAS record sets".into());
        }
        let timing = match &self.health_check {
            Some(c) => {
                if !self.health.as_deref().is_some_and(|h| h.contains("://")) {
                    return Err("health_check sets the timing of a check of Portico's own: give health = \"http://ADDRESS:PORT/PATH\" (or https://, tcp://) with it".into());
                }
                CheckTiming::parse(
                    c.interval.as_deref(),
                    c.timeout.as_deref(),
                    c.healthy_threshold,
                    c.unhealthy_threshold,
                )?
            }
            None => CheckTiming::default(),
        };
        let Some(id) = &self.set_identifier else {
            if self.routing.is_some() || self.weight.is_some() || self.failover.is_some() {
                return Err("a routing policy needs a set_identifier that tells this record set from the others of its name and type".into());
            }
            if self.health.is_some() {
                return Err("health decides between record sets of one name and type: give this one a set_identifier and a routing policy (failover, weighted or multivalue)".into());
            }
            return Ok(None);
        };
        if id.is_empty()
            || id.len() > 128
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._:@/+-".contains(c))
        {
            return Err(format!(
                "set_identifier {id:?}: use 1 to 128 letters, digits and . _ : @ / + -"
            ));
        }
        let routing = self
            .routing
            .as_deref()
            .ok_or("a record set with a set_identifier needs routing = \"weighted\", \"failover\" or \"multivalue\"")?;
        let policy = Policy::parse(routing, self.weight, self.failover.as_deref())?;
        let health = self
            .health
            .as_deref()
            .map(|h| Health::parse(h, timing))
            .transpose()?;
        Ok(Some(Routed {
            id: id.clone(),
            policy,
            health,
            data,
            stats: Stats::default(),
        }))
    }

    /// The fields that describe `r`.
    pub fn of(r: &Routed) -> Self {
        let mut f = RoutingFields {
            set_identifier: Some(r.id.clone()),
            routing: Some(r.policy.kind().into()),
            ..Default::default()
        };
        match r.policy {
            Policy::Weighted(w) => f.weight = Some(w.into()),
            Policy::Failover(role) => f.failover = Some(role.to_string()),
            Policy::Multivalue => {}
        }
        if let Some(h) = &r.health {
            f.health = Some(h.to_string());
            if let Health::Check(c) = h {
                if c.timing != CheckTiming::default() {
                    let dur = |ms: u32| {
                        humantime::format_duration(Duration::from_millis(ms.into())).to_string()
                    };
                    f.health_check = Some(CheckFields {
                        interval: Some(dur(c.timing.interval_ms)),
                        timeout: Some(dur(c.timing.timeout_ms)),
                        healthy_threshold: Some(c.timing.healthy_threshold),
                        unhealthy_threshold: Some(c.timing.unhealthy_threshold),
                    });
                }
            }
        }
        if let RoutedData::Alias(a) = &r.data {
            if a.evaluate_target_health {
                f.evaluate_target_health = Some(true);
            }
        }
        f
    }

    /// As `key=value` words, for a master file's `; portico:` comment.
    pub fn words(&self) -> String {
        let mut w = Vec::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                w.push(format!("{k}={v}"));
            }
        };
        put("set_identifier", self.set_identifier.clone());
        put("routing", self.routing.clone());
        put("weight", self.weight.map(|v| v.to_string()));
        put("failover", self.failover.clone());
        put("health", self.health.clone());
        if let Some(c) = &self.health_check {
            put("interval", c.interval.clone());
            put("timeout", c.timeout.clone());
            put(
                "healthy_threshold",
                c.healthy_threshold.map(|v| v.to_string()),
            );
            put(
                "unhealthy_threshold",
                c.unhealthy_threshold.map(|v| v.to_string()),
            );
        }
        put(
            "evaluate_target_health",
            self.evaluate_target_health.map(|v| v.to_string()),
        );
        w.join(" ")
    }

    /// Reads what [`RoutingFields::words`] wrote.
    pub fn from_words(text: &str) -> Result<Self, String> {
        let mut f = RoutingFields::default();
        let mut check = CheckFields::default();
        for word in text.split_whitespace() {
            let (k, v) = word
                .split_once('=')
                .ok_or_else(|| format!("portico comment: {word:?} is not key=value"))?;
            let num = |v: &str| {
                v.parse::<u32>()
                    .map_err(|_| format!("portico comment: {k}={v:?} is not a number"))
            };
            match k {
                "set_identifier" => f.set_identifier = Some(v.into()),
                "routing" => f.routing = Some(v.into()),
                "weight" => f.weight = Some(num(v)?),
                "failover" => f.failover = Some(v.into()),
                "health" => f.health = Some(v.into()),
                "interval" => check.interval = Some(v.into()),
                "timeout" => check.timeout = Some(v.into()),
                "healthy_threshold" => check.healthy_threshold = Some(num(v)?),
                "unhealthy_threshold" => check.unhealthy_threshold = Some(num(v)?),
                "evaluate_target_health" => {
                    f.evaluate_target_health = Some(v.parse().map_err(|_| {
                        format!(
                            "portico comment: evaluate_target_health={v:?} is not true or false"
                        )
                    })?)
                }
                other => return Err(format!("portico comment: unknown key {other:?}")),
            }
        }
        if check != CheckFields::default() {
            f.health_check = Some(check);
        }
        Ok(f)
    }
}
