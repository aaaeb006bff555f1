//! What a connection reads of the load balancer while it serves: the current snapshot and its
//! generation, the HTTP-01 responder, the listeners' counters. The load balancer (`server.rs`)
//! owns it and swaps snapshots into it; connections (`connection.rs`, `proxy.rs`) only read it,
//! so they do not import the load balancer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::metrics::{LbMetrics, ListenerMetrics};
use crate::snapshot::{Listener, Snapshot};

/// Answers ACME HTTP-01 challenges: the key authorization for a token, if one is pending.
/// The certificate manager implements it; the load balancer only serves it.
///
/// The answer is a future because a cluster node may have to ask the shared store for a token
/// another node published; the load balancer's worker must not block on that.
pub trait Http01Responder: Send + Sync {
    fn key_authorization<'a>(
        &'a self,
        token: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send + 'a>>;
}

pub struct Serving {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    /// Bumped after every snapshot swap: a connection whose listener came from the current
    /// generation uses it as is, without a lookup and an `Arc` clone per request.
    generation: AtomicU64,
    pub(crate) http01: ArcSwapOption<Box<dyn Http01Responder>>,
    pub(crate) metrics: LbMetrics,
}

impl Serving {
    pub(crate) fn new() -> Self {
        Serving {
            snapshot: ArcSwap::from_pointee(Snapshot {
                listeners: Vec::new(),
                target_groups: HashMap::new(),
            }),
            generation: AtomicU64::new(0),
            http01: ArcSwapOption::empty(),
            metrics: Default::default(),
        }
    }

    /// Serves `snapshot` from now on; the one it replaces.
    pub(crate) fn swap(&self, snapshot: Arc<Snapshot>) -> Arc<Snapshot> {
        let old = self.snapshot.swap(snapshot);
        self.generation.fetch_add(1, Ordering::Release);
        old
    }

    /// The snapshot generation (see the field).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn listener_named(&self, name: &str) -> Option<Arc<Listener>> {
        self.snapshot.load().listener(name).cloned()
    }

    /// The key authorization for an HTTP-01 token, if one is pending.
    pub(crate) async fn http01(&self, token: &str) -> Option<String> {
        let responder = self.http01.load_full()?;
        responder.key_authorization(token).await
    }

    /// Counters of one listener (kept by name across reloads).
    pub fn listener_metrics(&self, listener: &str) -> Arc<ListenerMetrics> {
        self.metrics.listener(listener)
    }
}
