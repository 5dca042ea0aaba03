//! A lock-free latency histogram shared by every stage that times something (rule calls, store
//! commits, HTTP pushes): cheap enough to record on every message from many threads, read by
//! `show` commands as quantiles and by `/metrics` as Prometheus buckets.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Sub-buckets per power of two: 4 keeps every quantile within 25 % of the true value.
const SUB_BUCKET_BITS: u32 = 2;
const SUB_BUCKETS: usize = 1 << SUB_BUCKET_BITS;
/// Enough buckets for any `u64` of nanoseconds.
const LATENCY_BUCKETS: usize = (64 - SUB_BUCKET_BITS as usize + 1) * SUB_BUCKETS;

/// A lock-free latency histogram: log-linear buckets (4 per power of two) of relaxed atomic
/// counters. Recording is two atomic adds and a `fetch_max`, so every worker records into the
/// same histogram without a lock; a quantile is read by walking 252 counters, which is only
/// done by `rule show`.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS],
    max_ns: AtomicU64,
    sum_ns: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            max_ns: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }
}

/// Latency quantiles in nanoseconds (bucket upper bounds, capped at the largest sample).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// How many samples the quantiles are over.
    pub samples: u64,
    /// Half of the messages took at most this long.
    pub p50: u64,
    /// 99 % of the messages took at most this long.
    pub p99: u64,
    /// The slowest message.
    pub max: u64,
}

impl LatencyHistogram {
    /// Records one sample.
    pub fn record(&self, ns: u64) {
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Records one sample from a [`std::time::Duration`].
    pub fn record_duration(&self, d: std::time::Duration) {
        self.record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The quantile `q` (0..=1) in nanoseconds, or 0 with no samples.
    pub fn quantile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        quantile_of(&counts, q).min(self.max_ns.load(Ordering::Relaxed))
    }

    /// p50, p99, max and the sample count, read once.
    pub fn snapshot(&self) -> LatencySnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let max = self.max_ns.load(Ordering::Relaxed);
        LatencySnapshot {
            samples: counts.iter().sum(),
            p50: quantile_of(&counts, 0.50).min(max),
            p99: quantile_of(&counts, 0.99).min(max),
            max,
        }
    }
}

impl LatencyHistogram {
    /// The histogram in Prometheus form: cumulative counts at each of `bounds_ns` (ascending),
    /// the sample count and the sum in nanoseconds. A sample counts towards a bound when its
    /// whole log-linear bucket lies at or below it, so a cumulative count can lag by the samples
    /// of one straddling bucket (within 25 % of the bound), never lead.
    pub fn cumulative(&self, bounds_ns: &[u64]) -> Cumulative {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let mut at_bounds = Vec::with_capacity(bounds_ns.len());
        let (mut i, mut seen) = (0, 0u64);
        for &bound in bounds_ns {
            while i < counts.len() && bucket_upper(i) <= bound {
                seen += counts[i];
                i += 1;
            }
            at_bounds.push(seen);
        }
        Cumulative {
            at_bounds,
            count: counts.iter().sum(),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// A histogram read for export: see [`LatencyHistogram::cumulative`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cumulative {
    /// Samples at or below each bound, in the order of the bounds asked for.
    pub at_bounds: Vec<u64>,
    /// Every sample.
    pub count: u64,
    /// The sum of every sample, nanoseconds.
    pub sum_ns: u64,
}

/// The bucket of `ns`: exact below 4, then 4 buckets per power of two.
fn bucket_of(ns: u64) -> usize {
    if ns < SUB_BUCKETS as u64 {
        return ns as usize;
    }
    let exp = 63 - ns.leading_zeros(); // >= SUB_BUCKET_BITS
    let sub = (ns >> (exp - SUB_BUCKET_BITS)) as usize & (SUB_BUCKETS - 1);
    (exp - SUB_BUCKET_BITS + 1) as usize * SUB_BUCKETS + sub
}

/// The largest value that falls in bucket `i`.
fn bucket_upper(i: usize) -> u64 {
    if i < SUB_BUCKETS {
        return i as u64;
    }
    let exp = (i / SUB_BUCKETS) as u32 + SUB_BUCKET_BITS - 1;
    let sub = (i % SUB_BUCKETS) as u64;
    let width = 1u64 << (exp - SUB_BUCKET_BITS);
    let lower = (SUB_BUCKETS as u64 + sub) << (exp - SUB_BUCKET_BITS);
    lower.saturating_add(width - 1)
}

fn quantile_of(counts: &[u64], q: f64) -> u64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0;
    }
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return bucket_upper(i);
        }
    }
    bucket_upper(counts.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_contiguous_and_quantiles_within_a_quarter() {
        let mut last = None;
        for ns in (0..100_000u64).chain([u64::MAX / 3, u64::MAX]) {
            let b = bucket_of(ns);
            assert!(ns <= bucket_upper(b), "{ns} above its bucket's bound");
            if let Some((prev_ns, prev_b)) = last {
                if ns == prev_ns + 1 {
                    assert!(b == prev_b || b == prev_b + 1, "buckets skip at {ns}");
                }
            }
            last = Some((ns, b));
        }
        let h = LatencyHistogram::default();
        for ns in 1..=10_000u64 {
            h.record(ns * 1000);
        }
        let s = h.snapshot();
        assert_eq!(s.samples, 10_000);
        assert_eq!(s.max, 10_000_000);
        let within = |got: u64, want: f64| (got as f64) >= want && (got as f64) <= want * 1.25;
        assert!(within(s.p50, 5_000_000.0), "p50 {}", s.p50);
        assert!(within(s.p99, 9_900_000.0), "p99 {}", s.p99);
        assert_eq!(
            LatencyHistogram::default().snapshot(),
            LatencySnapshot::default()
        );
        let c = h.cumulative(&[1_000_000, 5_000_000, u64::MAX]);
        assert_eq!(c.count, 10_000);
        assert_eq!(c.sum_ns, (1..=10_000u64).sum::<u64>() * 1000);
        assert_eq!(c.at_bounds[2], 10_000);
        // Never leads the true count; lags by at most one bucket (a quarter of the bound).
        assert!(
            c.at_bounds[0] <= 1000 && c.at_bounds[0] >= 750,
            "{:?}",
            c.at_bounds
        );
        assert!(
            c.at_bounds[1] <= 5000 && c.at_bounds[1] >= 3750,
            "{:?}",
            c.at_bounds
        );
    }
}
