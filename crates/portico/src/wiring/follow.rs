//! Cluster mode: what another node changed in the shared store reaches this node's parts (zones,
//! certificates, the API's additions).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use std::collections::HashMap;

use crate::cluster::{changed, Cluster, POLL, SHARED};
use crate::node::Core;

/// Follows the shared store until `stop`: brings other nodes' writes in and tells the parts,
/// and pushes this node's own.
pub async fn follow(cluster: Arc<Cluster>, core: Arc<Core>, stop: CancellationToken) {
    let mut watched = SHARED.to_vec();
    watched.push(portico_certs::challenge::SHARED_TLS_ALPN01);
    let mut woken = cluster.store.watch(&watched);
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let beat = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => true,
            Some(()) = changed(woken.as_mut()) => false,
        };
        let (c, certs) = (cluster.clone(), core.certs.clone());
        let Ok(arrived) = tokio::task::spawn_blocking(move || {
            if let Err(e) = certs.mirror_challenges() {
                tracing::debug!(error = %e, "cannot read the shared TLS-ALPN-01 challenges");
            }
            c.pull()
        })
        .await
        else {
            continue;
        };
        // One read of each zone's head; names only when it moved.
        let origins: Vec<_> = core.zones.catalog().zones.keys().cloned().collect();
        let mut zones_changed = false;
        for origin in &origins {
            match core.zones.sync_shared(origin).await {
                Ok(changed) => zones_changed |= changed,
                Err(e) => {
                    tracing::warn!(zone = %origin, error = %e, "cannot serve the zone another node changed")
                }
            }
        }
        for name in &arrived.certificates {
            core.certs.refresh(name);
        }
        if arrived.runtime {
            core.reload_runtime().await;
        }
        // The heartbeat carries the served serials, so a zone that just arrived is reported at
        // once (a change is INSYNC when every node's heartbeat has its serial).
        if !beat && !zones_changed {
            continue;
        }
        let serials: HashMap<String, u32> = core
            .zones
            .catalog()
            .zones
            .iter()
            .map(|(n, z)| (n.to_string(), z.serial()))
            .collect();
        let c = cluster.clone();
        let own = core.listeners.own();
        if let Ok(peers) = tokio::task::spawn_blocking(move || {
            c.push();
            c.heartbeat(&serials, &own);
            c.peer_listeners()
        })
        .await
        {
            core.listeners.set_peers(peers);
        }
    }
}
