//! The store's clock. Every time decision (visibility, delay, retention, enqueue time) asks a
//! [`Clock`], so tests can step time by hand with [`ManualClock`] and production time does not
//! jump with the wall clock while the process runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A source of "now" in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current time, ms since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The production clock: the wall clock read once at creation, then advanced by the monotonic
/// clock.
///
/// Why: a wall-clock step of an hour during load must neither expire every lease at once nor
/// stretch them (fault test 24). Stored times stay wall-clock based, so a restart re-anchors on
/// the wall clock.
#[derive(Debug)]
pub struct SystemClock {
    anchor_ms: u64,
    anchor: Instant,
}

impl SystemClock {
    /// A clock anchored on the wall clock now.
    pub fn new() -> SystemClock {
        SystemClock {
            anchor_ms: crate::ids::now_ms(),
            anchor: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        self.anchor_ms + self.anchor.elapsed().as_millis() as u64
    }
}

/// A clock that moves only when told to; for tests of visibility, delay and retention.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A clock stopped at `start_ms`.
    pub fn new(start_ms: u64) -> ManualClock {
        ManualClock {
            now: AtomicU64::new(start_ms),
        }
    }

    /// Moves the clock forward by `ms`.
    pub fn advance_ms(&self, ms: u64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock to `ms` (backwards too, to test clock steps).
    pub fn set_ms(&self, ms: u64) {
        self.now.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}
