//! Worker threads, one per core, each running a single-threaded tokio runtime, as nginx runs one
//! worker process per core.
//!
//! Why not tokio's multi-threaded scheduler: proxying is a ping-pong between a client connection
//! task and a target connection task. On the work-stealing scheduler the two often sit on
//! different threads, and every hand-off is a futex wake-up and a context switch; the benchmark
//! (docs/benchmarks.md) measured that as the largest cost. Here a connection, its requests and the
//! pooled target connections they use all live on one thread. Accepting stays on the caller's
//! runtime and hands each accepted socket to the next worker.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

pub struct Workers {
    handles: Vec<Handle>,
    /// Connections handed to each worker so far (`/metrics`: how they spread).
    accepted: Vec<AtomicU64>,
    next: AtomicUsize,
    stop: CancellationToken,
}

impl Workers {
    /// Starts `n` worker threads (at least one).
    pub fn start(n: usize) -> std::io::Result<Self> {
        let stop = CancellationToken::new();
        let mut handles = Vec::new();
        for i in 0..n.max(1) {
            let (tx, rx) = std::sync::mpsc::channel();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("portico-worker-{i}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(stop.cancelled());
                })?;
            let handle = rx
                .recv()
                .map_err(|_| std::io::Error::other("worker thread died at start"))??;
            handles.push(handle);
        }
        Ok(Workers {
            accepted: handles.iter().map(|_| AtomicU64::new(0)).collect(),
            handles,
            next: AtomicUsize::new(0),
            stop,
        })
    }

    /// The worker that takes the next connection (round robin).
    pub fn next(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.accepted[i].fetch_add(1, Ordering::Relaxed);
        &self.handles[i]
    }

    /// How many connections each worker has been given.
    pub fn accepted(&self) -> Vec<u64> {
        self.accepted
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }

    /// Ends the worker threads; tasks still on them are dropped.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// How many workers to run: one per available core.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
