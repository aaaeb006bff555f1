//! The certificate manager's clock: when to renew, how long to back off, and the validity the
//! internal CA gives. Production uses the system clock; tests use a clock they move by hand, so
//! that a 6-day certificate's renewal can be tested without waiting days (see the manager's
//! tests), as FACTS asks of renewal logic.

use std::time::{Duration, SystemTime};

use crate::challenge::BoxFuture;

/// The time now, and sleeping until a later time.
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
    /// Returns once `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> BoxFuture<'_, ()>;
}

/// The system's clock and tokio's timer.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'_, ()> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// A clock that moves only when told to (a test double for the passing of days).
#[cfg(test)]
pub mod manual {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub struct ManualClock {
        now: tokio::sync::watch::Sender<SystemTime>,
        /// How many sleeps are waiting for the clock to move.
        pub sleepers: AtomicUsize,
        /// How many sleeps have begun (a sleeper woken by a move and asleep again adds one).
        pub started: AtomicUsize,
    }

    impl ManualClock {
        pub fn new(start: SystemTime) -> Self {
            ManualClock {
                now: tokio::sync::watch::channel(start).0,
                sleepers: AtomicUsize::new(0),
                started: AtomicUsize::new(0),
            }
        }

        pub fn advance(&self, d: Duration) {
            self.now.send_modify(|t| *t += d);
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> SystemTime {
            *self.now.borrow()
        }

        fn sleep(&self, d: Duration) -> BoxFuture<'_, ()> {
            let until = self.now() + d;
            let mut rx = self.now.subscribe();
            Box::pin(async move {
                self.sleepers.fetch_add(1, Ordering::SeqCst);
                self.started.fetch_add(1, Ordering::SeqCst);
                let _ = rx.wait_for(|t| *t >= until).await;
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
            })
        }
    }
}
