//! How long to wait before the next attempt: the retry strategies of docs/message-service.md as
//! pure functions, apart from the decision whether to retry at all (`classify`), so each can be
//! tested on exact sequences.

use std::time::Duration;

use crate::store::NotifyStrategy;

/// Retries of BACKOFF_RETRY (up to 3, as in MNS).
pub const BACKOFF_RETRIES: u32 = 3;
/// Shortest wait of BACKOFF_RETRY.
pub const BACKOFF_MIN: Duration = Duration::from_secs(10);
/// Longest wait of BACKOFF_RETRY.
pub const BACKOFF_MAX: Duration = Duration::from_secs(20);
/// Retries of EXPONENTIAL_DECAY_RETRY (up to 176, as in MNS: about a day in all).
pub const EXPONENTIAL_RETRIES: u32 = 176;
/// EXPONENTIAL_DECAY_RETRY doubles from 1 s up to this wait (1, 2, 4, ..., 256 s) ...
pub const EXPONENTIAL_LAST_DOUBLING: Duration = Duration::from_secs(256);
/// ... and then waits this long for every remaining retry.
pub const EXPONENTIAL_PLATEAU: Duration = Duration::from_secs(512);

/// The wait before retry number `retry` (1 = the first retry, after the first failed attempt),
/// or `None` when the strategy has no such retry (the message is given up).
///
/// `unit` is a random number in `[0, 1)` for BACKOFF_RETRY's random wait (injected so tests
/// are exact).
pub fn retry_delay(strategy: NotifyStrategy, retry: u32, unit: f64) -> Option<Duration> {
    if retry == 0 {
        return Some(Duration::ZERO);
    }
    match strategy {
        NotifyStrategy::BackoffRetry => (retry <= BACKOFF_RETRIES).then(|| {
            let span = (BACKOFF_MAX - BACKOFF_MIN).as_secs_f64();
            BACKOFF_MIN + Duration::from_secs_f64(span * unit.clamp(0.0, 1.0))
        }),
        NotifyStrategy::ExponentialDecayRetry => (retry <= EXPONENTIAL_RETRIES).then(|| {
            let doubling = Duration::from_secs(1u64 << (retry - 1).min(20));
            if doubling <= EXPONENTIAL_LAST_DOUBLING {
                doubling
            } else {
                EXPONENTIAL_PLATEAU
            }
        }),
    }
}

/// Multiplies a wait by the test-only `push_retry_scale` (1.0 in production), keeping at least
/// one millisecond so a retry is never immediate.
pub fn scaled(wait: Duration, scale: f64) -> Duration {
    if scale == 1.0 {
        return wait;
    }
    Duration::from_secs_f64(wait.as_secs_f64() * scale).max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &[u64]) -> Vec<Option<Duration>> {
        s.iter().map(|&s| Some(Duration::from_secs(s))).collect()
    }

    #[test]
    fn exponential_decay_is_1_2_4_to_256_then_512_for_176_retries() {
        let s = NotifyStrategy::ExponentialDecayRetry;
        let first: Vec<_> = (1..=11).map(|r| retry_delay(s, r, 0.5)).collect();
        assert_eq!(first, secs(&[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 512]));
        assert_eq!(retry_delay(s, 176, 0.0), Some(Duration::from_secs(512)));
        assert_eq!(retry_delay(s, 177, 0.0), None);
        let total: Duration = (1..=176).filter_map(|r| retry_delay(s, r, 0.0)).sum();
        // 511 s of doubling + 167 * 512 s: "about one day in all".
        assert_eq!(total, Duration::from_secs(511 + 167 * 512));
        assert!(total > Duration::from_secs(23 * 3600) && total < Duration::from_secs(25 * 3600));
    }

    #[test]
    fn backoff_is_three_random_waits_of_10_to_20_seconds() {
        let s = NotifyStrategy::BackoffRetry;
        assert_eq!(retry_delay(s, 1, 0.0), Some(Duration::from_secs(10)));
        assert_eq!(retry_delay(s, 2, 0.5), Some(Duration::from_secs(15)));
        let near_max = retry_delay(s, 3, 0.999_999).unwrap();
        assert!(near_max <= Duration::from_secs(20) && near_max > Duration::from_secs(19));
        assert_eq!(retry_delay(s, 4, 0.5), None);
        for _ in 0..1000 {
            let d = retry_delay(s, 1, rand::random::<f64>()).unwrap();
            assert!((BACKOFF_MIN..=BACKOFF_MAX).contains(&d), "{d:?}");
        }
    }

    #[test]
    fn scaling_shrinks_waits_but_never_to_zero() {
        assert_eq!(
            scaled(Duration::from_secs(10), 0.01),
            Duration::from_millis(100)
        );
        assert_eq!(
            scaled(Duration::from_secs(10), 1.0),
            Duration::from_secs(10)
        );
        assert_eq!(scaled(Duration::ZERO, 0.5), Duration::from_millis(1));
    }
}
