//! The counters requests touch: sharded by worker thread, each shard on its own cache line, read
//! by summing the shards. `metrics.rs` arranges them per listener, rule and target and renders
//! them; target groups keep their own (`TargetState::responses`).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram's buckets, as Prometheus clients default to.
pub const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counters every request touches are split into shards, one per worker thread (modulo
/// [`SHARDS`]), each on its own cache line: two workers adding to one shared atomic bounce its
/// cache line between cores on every request, which the benchmark's profile showed.
pub const SHARDS: usize = 8;

/// This thread's shard (assigned on first use, round robin over threads).
pub fn shard() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct Line<T>(pub(crate) T);

/// Requests by status class: index 1..=5 for 1xx..5xx, 0 for anything else.
#[derive(Debug, Default)]
pub struct ByClass([Line<[AtomicU64; 6]>; SHARDS]);

impl ByClass {
    pub fn add(&self, status: u16) {
        let i = match status / 100 {
            c @ 1..=5 => c as usize,
            _ => 0,
        };
        self.0[shard()].0[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, class: usize) -> u64 {
        self.0
            .iter()
            .map(|s| s.0.get(class).map_or(0, |c| c.load(Ordering::Relaxed)))
            .sum()
    }

    pub(crate) fn render(&self, out: &mut String, metric: &str, labels: &str) {
        for i in 0..6 {
            let n = self.get(i);
            if n > 0 {
                let class = if i == 0 {
                    "other".to_string()
                } else {
                    format!("{i}xx")
                };
                let _ = writeln!(out, "{metric}{{{labels},class=\"{class}\"}} {n}");
            }
        }
    }
}

#[derive(Debug, Default)]
struct HistogramShard {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Histogram([Line<HistogramShard>; SHARDS]);

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let h = &self.0[shard()].0;
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            h.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn sum(&self, f: impl Fn(&HistogramShard) -> &AtomicU64) -> u64 {
        self.0.iter().map(|s| f(&s.0).load(Ordering::Relaxed)).sum()
    }

    pub(crate) fn render(&self, out: &mut String, metric: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.sum(|h| &h.buckets[i]);
            let _ = writeln!(out, "{metric}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let count = self.sum(|h| &h.count);
        let _ = writeln!(out, "{metric}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{metric}_sum{{{labels}}} {}",
            self.sum(|h| &h.sum_micros) as f64 / 1e6
        );
        let _ = writeln!(out, "{metric}_count{{{labels}}} {count}");
    }
}
