//! Backoff with jitter: a pure schedule, tested exactly, apart from the code that decides to
//! try again. Used by the external broker client's reconnects and by the JetStream store's
//! retries through a leader election (`store::jetstream::retry`).

use std::time::Duration;

/// Reconnect delays: exponential from `min` to `max`, each with "equal jitter" (between half
/// and all of the step), so many sluice processes do not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A schedule starting at `min`, capped at `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The un-jittered step of the current attempt.
    pub fn step(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay; `unit` in [0, 1] picks the jitter (random in production, fixed in tests).
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let step = self.step();
        self.attempt = self.attempt.saturating_add(1);
        let unit = unit.clamp(0.0, 1.0);
        step / 2 + step.mul_f64(unit / 2.0)
    }

    /// After a successful connect, start again from `min`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let steps: Vec<u64> = (0..7)
            .map(|_| {
                let s = b.step().as_millis() as u64;
                b.next_delay(1.0);
                s
            })
            .collect();
        assert_eq!(steps, vec![100, 200, 400, 800, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(50));
        assert_eq!(b.next_delay(1.0), Duration::from_millis(200));
        assert_eq!(b.next_delay(0.5), Duration::from_millis(300));
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..100 {
            let d = b.next_delay(0.7);
            assert!(d <= Duration::from_secs(30) && d >= Duration::from_millis(500));
        }
    }
}
