//! The selection algorithms: weighted round robin and least outstanding requests.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::Target;

/// Walks the weighted sequence from the shared cursor to the first candidate.
pub fn round_robin<'a>(
    targets: &'a [Target],
    sequence: &[usize],
    next: &AtomicUsize,
    candidate: &dyn Fn(&Target) -> bool,
) -> Option<&'a Target> {
    if sequence.is_empty() {
        return None;
    }
    let start = next.fetch_add(1, Ordering::Relaxed);
    (0..sequence.len())
        .map(|k| &targets[sequence[(start + k) % sequence.len()]])
        .find(|t| candidate(t))
}

/// The candidate with the fewest requests in flight per unit of weight; ties are broken by a
/// rotating start so that idle targets share the load.
pub fn least_outstanding<'a>(
    targets: &'a [Target],
    next: &AtomicUsize,
    candidate: &dyn Fn(&Target) -> bool,
) -> Option<&'a Target> {
    if targets.is_empty() {
        return None;
    }
    let start = next.fetch_add(1, Ordering::Relaxed);
    let mut best: Option<(&Target, u64)> = None;
    for k in 0..targets.len() {
        let t = &targets[(start + k) % targets.len()];
        if !candidate(t) {
            continue;
        }
        // Compare outstanding/weight without division: scale by the other weights' product
        // is overkill; scaling by 1000/weight is precise enough for weights up to 1000.
        let load = (t.state.outstanding() as u64 * 1000) / t.weight.max(1) as u64;
        if best.is_none_or(|(_, b)| load < b) {
            best = Some((t, load));
        }
    }
    best.map(|(t, _)| t)
}
