//! The last 15 minutes of the counters `/metrics` exposes, sampled in process, so the console can
//! draw rates without a Prometheus server: every [`SAMPLE_INTERVAL`] one [`Sample`] of the
//! pipeline, rule and store totals, plus one [`RuleSample`] per rule; [`MAX_SAMPLES`] kept.
//! Counters are cumulative; the browser turns neighbouring samples into rates.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::api::AppState;
use crate::store::StoreError;

/// 10 s between samples: fine enough for a 15-minute chart, cheap (one index read per sample).
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(10);

/// 90 samples of 10 s: the last 15 minutes.
pub const MAX_SAMPLES: usize = 90;

/// System-wide totals at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Device messages handed to the rules.
    pub ingested: u64,
    /// Rule executions (messages run through a rule, summed over rules).
    pub rule_runs: u64,
    /// Rule failures of every kind.
    pub rule_failed: u64,
    /// Rule outputs committed to topics.
    pub outputs: u64,
    /// Deliveries: messages committed into queues plus HTTP pushes delivered.
    pub delivered: u64,
    /// Messages dead-lettered by queues and HTTP subscriptions.
    pub dead_lettered: u64,
    /// Connected MQTT sessions (a gauge).
    pub connected: u64,
}

/// One rule's totals at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RuleSample {
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Messages the rule ran on.
    pub messages_in: u64,
    /// Decisions carried out.
    pub outputs: u64,
    /// Failures by kind.
    pub failed: BTreeMap<&'static str, u64>,
    /// Median per-message latency since start, ns.
    pub p50_ns: u64,
    /// 99th percentile latency since start, ns.
    pub p99_ns: u64,
}

#[derive(Debug, Default)]
struct Samples {
    overall: VecDeque<Sample>,
    rules: HashMap<String, VecDeque<RuleSample>>,
}

/// The kept samples. Dropping it stops its sampler task.
#[derive(Debug)]
pub struct History {
    samples: Mutex<Samples>,
    _stop: tokio_util::sync::DropGuard,
}

/// What `/console/history` answers: the kept samples plus one taken now.
#[derive(Debug, Serialize)]
pub struct HistoryView {
    /// Seconds between kept samples.
    pub interval_seconds: u64,
    /// Oldest first; the last one is live.
    pub samples: Vec<Sample>,
    /// Per rule, oldest first; the last one is live.
    pub rules: BTreeMap<String, Vec<RuleSample>>,
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() >= MAX_SAMPLES {
        q.pop_front();
    }
    q.push_back(v);
}

impl History {
    /// Starts sampling `state` on the current runtime; the task ends when the returned
    /// history is dropped.
    pub fn start(state: AppState) -> Arc<History> {
        let stop = CancellationToken::new();
        let history = Arc::new(History {
            samples: Mutex::default(),
            _stop: stop.clone().drop_guard(),
        });
        tokio::spawn(run(Arc::downgrade(&history), state, stop));
        history
    }

    fn record(&self, overall: Sample, rules: Vec<(String, RuleSample)>) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        push_bounded(&mut s.overall, overall);
        let live: std::collections::HashSet<&String> = rules.iter().map(|(n, _)| n).collect();
        s.rules.retain(|name, _| live.contains(name));
        for (name, sample) in rules {
            push_bounded(s.rules.entry(name).or_default(), sample);
        }
    }

    /// The kept samples with `now` (a live sample) appended.
    pub fn view(&self, now: Sample, rules_now: Vec<(String, RuleSample)>) -> HistoryView {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let mut samples: Vec<Sample> = s.overall.iter().cloned().collect();
        samples.push(now);
        let mut rules = BTreeMap::new();
        for (name, live) in rules_now {
            let mut series: Vec<RuleSample> = s
                .rules
                .get(&name)
                .map(|q| q.iter().cloned().collect())
                .unwrap_or_default();
            series.push(live);
            rules.insert(name, series);
        }
        HistoryView {
            interval_seconds: SAMPLE_INTERVAL.as_secs(),
            samples,
            rules,
        }
    }
}

async fn run(history: Weak<History>, state: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(history) = history.upgrade() else {
            return;
        };
        match take(&state).await {
            Ok((overall, rules)) => history.record(overall, rules),
            Err(e) => tracing::warn!("console sampler: cannot read the store: {e}"),
        }
    }
}

/// Reads every counter once: the totals and each rule's.
pub async fn take(state: &AppState) -> Result<(Sample, Vec<(String, RuleSample)>), StoreError> {
    let at_ms = crate::ids::now_ms();
    let engine = state.rules.engine();
    let mut rules = Vec::new();
    let (mut rule_runs, mut rule_failed) = (0, 0);
    for r in state.rules.list() {
        let c = engine.counters_for(&r.name).snapshot();
        rule_runs += c.messages_in;
        rule_failed += c.failed.values().sum::<u64>();
        rules.push((
            r.name,
            RuleSample {
                at_ms,
                messages_in: c.messages_in,
                outputs: c.outputs,
                failed: c.failed,
                p50_ns: c.latency_ns.p50,
                p99_ns: c.latency_ns.p99,
            },
        ));
    }
    let counters = state.store.counters().clone();
    let (mut delivered, mut dead_lettered) = (0, 0);
    for q in state.store.list_queues().await? {
        delivered += counters.queue(&q.name).enqueued;
        dead_lettered += q.dead_lettered_total;
    }
    for sub in state.store.push_subscriptions().await? {
        if let Ok(p) = state.store.push_status(&sub.topic, &sub.name).await {
            delivered += p.delivered_total;
            dead_lettered += p.dead_lettered_total;
        }
    }
    let (ingested, outputs) = state
        .stages
        .pipeline
        .as_ref()
        .map(|p| {
            (
                p.messages_in.load(Relaxed),
                p.outputs_committed.load(Relaxed),
            )
        })
        .unwrap_or_default();
    let connected = state
        .stages
        .ingest
        .as_ref()
        .map(|c| c.snapshot().sessions_active)
        .unwrap_or_default();
    Ok((
        Sample {
            at_ms,
            ingested,
            rule_runs,
            rule_failed,
            outputs,
            delivered,
            dead_lettered,
            connected,
        },
        rules,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bare() -> History {
        History {
            samples: Mutex::default(),
            _stop: CancellationToken::new().drop_guard(),
        }
    }

    /// The history keeps the last 90 samples, forgets deleted rules, and appends the live one.
    #[test]
    fn history_is_bounded_and_ends_with_the_live_sample() {
        let h = bare();
        for i in 0..(MAX_SAMPLES as u64 + 10) {
            let rule = RuleSample {
                at_ms: i,
                messages_in: i,
                ..RuleSample::default()
            };
            let mut rules = vec![("a".to_string(), rule.clone())];
            if i < 5 {
                rules.push(("gone".to_string(), rule));
            }
            h.record(
                Sample {
                    at_ms: i,
                    ingested: i,
                    ..Sample::default()
                },
                rules,
            );
        }
        let v = h.view(
            Sample {
                at_ms: 1000,
                ..Sample::default()
            },
            vec![("a".into(), RuleSample::default())],
        );
        assert_eq!(v.samples.len(), MAX_SAMPLES + 1);
        assert_eq!(v.samples[0].at_ms, 10, "the oldest were dropped");
        assert_eq!(v.samples.last().unwrap().at_ms, 1000);
        assert_eq!(v.rules["a"].len(), MAX_SAMPLES + 1);
        assert!(!v.rules.contains_key("gone"));
        assert!(!h.samples.lock().unwrap().rules.contains_key("gone"));
    }
}
