//! How the admin API's additions ([`Runtime`], `<state_dir>/runtime.toml`, defined with the API
//! in `portico-admin`) combine with the config file.
//!
//! The config file owns what it declares, the API owns what it creates. Every apply (start,
//! reload, API change) merges both and validates the result on the same path as a config
//! reload, so an API change that the config would refuse is refused too, and a reload never
//! drops what the API made. A certificate or listener name declared in both is refused with the
//! way out named, not silently shadowed. Records are not here: a record change goes into the
//! zone's own state (see `HostedZones::load` for how config records combine with it).

use std::path::Path;

pub use portico_admin::node::runtime_path as path;
pub use portico_admin::node::RUNTIME_FILE as FILE;
pub use portico_admin::Runtime;
use portico_lb::ConfigIssue;

use crate::config::{ConfigError, PorticoConfig, Problem, Source};

/// The API's changes from the state directory (none yet when the file does not exist).
pub fn load(state_dir: &Path) -> Result<Runtime, ConfigError> {
    Runtime::load(state_dir).map_err(|e| problem(&e.path, e.message, e.hint))
}

/// The config file with the API's additions, as one config. Problems in the file are located
/// in it; problems of the additions name the API's entry.
pub fn merge(
    rt: &Runtime,
    source: &Source,
    state_dir: &Path,
) -> Result<PorticoConfig, ConfigError> {
    let file_config = source.parse()?;
    if *rt == Runtime::default() {
        return Ok(file_config);
    }
    let mut doc: toml::Table = toml::from_str(&source.text)
        .map_err(|e| problem(&source.path, e.message().trim().to_string(), None))?;
    let mut issues = Vec::new();
    for (key, extra, what) in [
        ("certificate", &rt.certificate, "portico certs delete"),
        ("listener", &rt.listener, "portico listeners delete"),
    ] {
        let array = doc
            .entry(key)
            .or_insert_with(|| toml::Value::Array(Vec::new()));
        let Some(array) = array.as_array_mut() else {
            continue;
        };
        for t in extra {
            let name = t.get("name").and_then(|n| n.as_str()).unwrap_or("");
            if array
                .iter()
                .any(|v| v.get("name").and_then(|n| n.as_str()) == Some(name))
            {
                issues.push(format!(
                        "{key} {name:?} is declared in {} and was also created through the admin API; remove one (`{what} {name}` removes the API's)",
                        source.path.display()
                    ));
                continue;
            }
            array.push(toml::Value::Table(t.clone()));
        }
    }
    for (group, targets) in &rt.targets {
        let entry = doc
            .get_mut("target_group")
            .and_then(|v| v.as_array_mut())
            .and_then(|groups| {
                groups
                    .iter_mut()
                    .find(|g| g.get("name").and_then(|n| n.as_str()) == Some(group.as_str()))
            })
            .and_then(|g| g.as_table_mut());
        let Some(entry) = entry else {
            if !targets.is_empty() {
                issues.push(format!(
                        "targets are registered through the admin API in target group {group:?}, which {} no longer declares; declare it again, or deregister them",
                        source.path.display()
                    ));
            }
            continue;
        };
        let list = entry
            .entry("targets")
            .or_insert_with(|| toml::Value::Array(Vec::new()));
        if let Some(list) = list.as_array_mut() {
            for t in targets {
                let addr = Runtime::target_address(t);
                if !list.iter().any(|v| Runtime::target_address(v) == addr) {
                    list.push(t.clone());
                }
            }
        }
    }
    if !issues.is_empty() {
        return Err(ConfigError {
            file: path(state_dir),
            problems: issues
                .into_iter()
                .map(|m| Problem {
                    at: None,
                    line_text: None,
                    message: m,
                    hint: None,
                })
                .collect(),
        });
    }
    toml::Value::Table(doc)
        .try_into::<PorticoConfig>()
        .map_err(|e| {
            problem(
                &path(state_dir),
                format!("admin API change: {}", e.message().trim()),
                None,
            )
        })
}

/// Locates validation issues of a merged config: those of the file's own entries in the
/// file, those of the API's additions by their place in the merged config.
pub fn locate(
    source: &Source,
    file_config: &PorticoConfig,
    state_dir: &Path,
    issues: &[ConfigIssue],
) -> ConfigError {
    use portico_lb::PathSeg;
    let from_api = |i: &ConfigIssue| match (i.path.first(), i.path.get(1)) {
        (Some(PathSeg::Key(k)), Some(PathSeg::Index(n))) => match k.as_str() {
            "certificate" => *n >= file_config.certificate.len(),
            "listener" => *n >= file_config.listener.len(),
            _ => false,
        },
        _ => false,
    };
    let (api, file): (Vec<ConfigIssue>, Vec<ConfigIssue>) =
        issues.iter().cloned().partition(from_api);
    let mut e = source.locate(&file);
    if !api.is_empty() {
        if file.is_empty() {
            e.file = path(state_dir);
            e.problems.clear();
        }
        e.problems.extend(api.iter().map(|i| Problem {
            at: None,
            line_text: None,
            message: format!("admin API change: {}: {}", i.dotted_path(), i.message),
            hint: i.hint.clone(),
        }));
    }
    e
}

fn problem(file: &Path, message: String, hint: Option<String>) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        problems: vec![Problem {
            at: None,
            line_text: None,
            message,
            hint,
        }],
    }
}
