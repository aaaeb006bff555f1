//! How the admin API reaches the running node: the [`Node`] trait, which the binary implements
//! on its serving core, and [`Runtime`], the additions the API makes to the config file.
//!
//! The API never applies anything itself: a change is an edit of the additions that the node
//! merges with the config file, validates on the path a reload takes, applies and persists before
//! it answers (or refuses, and nothing changed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use portico_certs::CertManager;
use portico_dns::zones::HostedZones;
use portico_lb::config::{CertificateConfig, ListenerConfig, TargetGroupConfig};
use portico_lb::LoadBalancer;
use serde::{Deserialize, Serialize};

use crate::ApiError;

/// The running node as the admin API sees it.
pub trait Node: Send + Sync + 'static {
    fn lb(&self) -> &LoadBalancer;
    fn zones(&self) -> &Arc<HostedZones>;
    fn certs(&self) -> &CertManager;
    /// What answers see of the node: listener addresses and the health routed sets name.
    fn answers_see(&self) -> Arc<dyn portico_dns::answer::ListenerAddrs>;
    /// `/metrics` of the zones' own health checks.
    fn render_dns_checks(&self, out: &mut String);
    /// `<state_dir>`: the token, the URL file and the API's additions live there.
    fn state_dir(&self) -> &Path;
    /// The config file this node serves from.
    fn config_path(&self) -> &Path;
    /// Cluster mode: the shared store; `None` for a node on its own state directory.
    fn store(&self) -> Option<StoreStatus>;
    /// Cluster mode: whether every live node serves `serial` of `zone` (always true alone).
    fn served_everywhere(&self, zone: &str, serial: u32) -> BoxFuture<'_, bool>;
    /// The config as last applied (file plus the API's additions).
    fn applied(&self) -> BoxFuture<'_, Applied>;
    /// Applies an edit of the API's additions: validated with the config file, applied and
    /// persisted before it returns; on error nothing changed.
    fn change(&self, edit: Edit) -> BoxFuture<'_, Result<(), ApiError>>;
    /// Reads the config file again and applies it with the API's additions.
    fn reload(&self) -> BoxFuture<'_, Result<(), ApiError>>;
    /// Asks the certificate manager to act on a renewal request now.
    fn kick_certs(&self) -> BoxFuture<'_, ()>;
}

/// An edit of the API's additions, given the config as last applied; its error is answered as is.
pub type Edit = Box<dyn FnOnce(&mut Runtime, &Applied) -> Result<(), ApiError> + Send>;

/// The shared store of a cluster, as `/api/v1/status` reports it.
pub struct StoreStatus {
    pub describe: String,
    pub reachable: bool,
}

/// What the API reads of the config as last applied.
#[derive(Clone)]
pub struct Applied {
    /// The config file's text (the API shows a listener's table as written).
    pub file_text: String,
    /// The directory relative paths in the config are read from.
    pub base_dir: PathBuf,
    /// The API's own additions.
    pub runtime: Runtime,
    /// The merged config's parts the API lists.
    pub listeners: Vec<ListenerConfig>,
    pub target_groups: Vec<TargetGroupConfig>,
    pub certificates: Vec<CertificateConfig>,
    /// `[acme] directory` as a URL, when there is an `[acme]` section.
    pub acme_directory: Option<String>,
}

impl Applied {
    /// The target groups' names, in config order.
    pub fn group_names(&self) -> Vec<String> {
        self.target_groups.iter().map(|g| g.name.clone()).collect()
    }
}

/// The file the additions are kept in, in the state directory.
pub const RUNTIME_FILE: &str = "runtime.toml";

/// What the admin API adds to the config file: certificates requested, listeners created and
/// targets registered at run time, kept in `<state_dir>/runtime.toml` in the config file's own
/// shape (`[[certificate]]`, `[[listener]]`, and targets by group).
///
/// How the two combine: the config file owns what it declares, the API owns what it creates.
/// Every apply (start, reload, API change) merges both and validates the result on the same path
/// as a config reload (the binary's `runtime.rs`), so an API change that the config would refuse
/// is refused too, and a reload never drops what the API made. Records are not here: a record
/// change goes into the zone's own state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificate: Vec<toml::Table>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listener: Vec<toml::Table>,
    /// Registered targets by target group: `"host:port"` or `{ address, weight }`, as in config.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub targets: BTreeMap<String, Vec<toml::Value>>,
}

/// Why `runtime.toml` could not be read: the file, what is wrong, how to fix it.
#[derive(Debug)]
pub struct RuntimeFileError {
    pub path: PathBuf,
    pub message: String,
    pub hint: Option<String>,
}

/// `<state_dir>/runtime.toml`.
pub fn runtime_path(state_dir: &Path) -> PathBuf {
    state_dir.join(RUNTIME_FILE)
}

impl Runtime {
    /// The API's changes from the state directory (none yet when the file does not exist).
    pub fn load(state_dir: &Path) -> Result<Self, RuntimeFileError> {
        let p = runtime_path(state_dir);
        match std::fs::read_to_string(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Runtime::default()),
            Err(e) => Err(RuntimeFileError {
                path: p,
                message: format!("cannot read: {e}"),
                hint: None,
            }),
            Ok(text) => toml::from_str(&text).map_err(|e| RuntimeFileError {
                path: p,
                message: e.message().trim().to_string(),
                hint: Some("this file is written by the admin API; restore it from a backup or remove the broken entry".into()),
            }),
        }
    }

    /// Written atomically (temp, fsync, rename) before an API change is acknowledged.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let text = toml::to_string(self).map_err(std::io::Error::other)?;
        std::fs::create_dir_all(state_dir)?;
        portico_config::files::write_atomic(&runtime_path(state_dir), text.as_bytes(), 0o600)
    }

    /// Removes the API's entry named `name` from `list` (its certificates or listeners); when
    /// the API made none, the error says whether the config file declares one (`in_file`) and
    /// how to remove that.
    pub fn remove_named(
        list: &mut Vec<toml::Table>,
        name: &str,
        what: &str,
        in_file: bool,
        file_hint: &str,
    ) -> Result<(), ApiError> {
        let before = list.len();
        list.retain(|t| t.get("name").and_then(|n| n.as_str()) != Some(name));
        if list.len() < before {
            return Ok(());
        }
        Err(if in_file {
            ApiError::conflict(format!("{what} {name:?} is declared in the config file"))
                .hint(file_hint)
        } else {
            ApiError::not_found(format!("no {what} {name:?}"))
        })
    }

    /// Address of a registered target entry.
    pub fn target_address(v: &toml::Value) -> Option<&str> {
        match v {
            toml::Value::String(s) => Some(s),
            toml::Value::Table(t) => t.get("address").and_then(|a| a.as_str()),
            _ => None,
        }
    }
}
