//! The state store the config names: the state directory, or etcd (`[store]`, feature `etcd`).
//! `portico store migrate` (cli/store.rs) copies one into the other.

use std::path::Path;

#[cfg(feature = "etcd")]
use anyhow::Context;
use portico_store::Store;

use crate::config::{PorticoConfig, StoreConfig};

/// The configured shared store, when `[store]` names one.
pub fn shared(config: &PorticoConfig, base_dir: &Path) -> anyhow::Result<Option<Box<dyn Store>>> {
    match &config.store {
        None => Ok(None),
        Some(st) => connect(st, base_dir).map(Some),
    }
}

#[cfg(feature = "etcd")]
fn connect(st: &StoreConfig, base_dir: &Path) -> anyhow::Result<Box<dyn Store>> {
    let read = |f: &Option<String>| -> anyhow::Result<Option<Vec<u8>>> {
        f.as_ref()
            .map(|f| {
                let p = base_dir.join(f);
                std::fs::read(&p).with_context(|| format!("[store]: cannot read {}", p.display()))
            })
            .transpose()
    };
    let tls = (st.ca_file.is_some() || st.cert_file.is_some()).then_some(());
    let tls = match tls {
        Some(()) => Some(portico_store::etcd::EtcdTls {
            ca_pem: read(&st.ca_file)?,
            cert_pem: read(&st.cert_file)?,
            key_pem: read(&st.key_file)?,
        }),
        None => None,
    };
    let etcd = portico_store::etcd::Etcd::connect(&st.etcd, &st.prefix, tls)
        .with_context(|| format!("[store] etcd {}", st.etcd.join(",")))?;
    Ok(Box::new(etcd))
}

#[cfg(not(feature = "etcd"))]
fn connect(_: &StoreConfig, _: &Path) -> anyhow::Result<Box<dyn Store>> {
    anyhow::bail!(
        "this build of portico has no etcd support: build with `--features etcd` (needs protoc: apt-get install protobuf-compiler)"
    )
}
