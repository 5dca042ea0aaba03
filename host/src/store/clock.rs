//! The store's clock. Every time decision (visibility, delay, retention, enqueue time) asks a
//! [`Clock`], so tests can step time by hand with [`ManualClock`] and production time does not
//! jump with the wall clock while the process runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A source of "now" in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current time, ms since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The production clock: the wall clock read once at creation, then advanced by the monotonic
/// clock.
///
/// Why: a wall-clock step of an hour during load must neither expire every lease at once nor
/// stretch them. Stored times stay wall-clock based, so a restart re-anchors on
/// the wall clock.
///
/// The anchor is kept in nanoseconds and rounded down once per reading: rounding the anchor and
/// the elapsed time to milliseconds each put this clock up to 1 ms behind the wall clock, so a
/// rule output could be enqueued a millisecond "before" the ingest time the wall clock gave it.
#[derive(Debug)]
pub struct SystemClock {
    anchor_ns: u128,
    anchor: Instant,
}

impl SystemClock {
    /// A clock anchored on the wall clock now.
    pub fn new() -> SystemClock {
        // The monotonic reading first: the clock then runs a few nanoseconds ahead of the wall
        // clock, never behind it.
        let anchor = Instant::now();
        let anchor_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        SystemClock { anchor_ns, anchor }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        ((self.anchor_ns + self.anchor.elapsed().as_nanos()) / 1_000_000) as u64
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_never_reads_behind_the_wall_clock_it_was_anchored_on() {
        // Proves: read after the wall clock, a fresh system clock gives the same millisecond or a
        // later one (it rounds once, not twice), so an enqueue time is never before the ingest
        // time the wall clock gave the same message.
        let clock = SystemClock::new();
        let mut later = 0;
        for _ in 0..20_000 {
            let wall = crate::ids::now_ms();
            let store = clock.now_ms();
            assert!(store >= wall, "store {store} < wall {wall}");
            later += u32::from(store > wall);
        }
        println!("20,000 readings, {later} a millisecond on (the boundary between the two reads)");
    }
}
