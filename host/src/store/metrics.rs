//! Counters of the store since start, for `/metrics`: what each topic, queue and commit did.
//!
//! The writer counts an operation only once its savepoint is released and counts a batch only
//! once its COMMIT succeeded, so a rolled-back request or a failed commit (disk full) is never
//! counted: these figures are what is durable, not what was attempted.

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::histogram::LatencyHistogram;

/// Per-queue totals since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueTotals {
    /// Messages committed into the queue (sends, topic fan-out, dead-letter moves in).
    pub enqueued: u64,
    /// Messages handed to consumers by receives (each delivery counts).
    pub received: u64,
    /// Messages deleted by consumers.
    pub deleted: u64,
}

impl QueueTotals {
    fn add(&mut self, other: &QueueTotals) {
        self.enqueued += other.enqueued;
        self.received += other.received;
        self.deleted += other.deleted;
    }
}

/// The store's counters, shared by the writer (which adds) and the metrics endpoint (which
/// reads). Keyed by name; a queue or topic deleted and created again continues its counters,
/// which Prometheus reads as the same series.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Requests served per commit (group commit at work: higher is cheaper per request).
    pub batch_requests: LatencyHistogram,
    /// Time from BEGIN to the end of COMMIT, nanoseconds (at `synchronous=FULL` the fsync is
    /// not part of it: it runs on the sync thread, see `sync_time`).
    pub commit_time: LatencyHistogram,
    /// Time one fsync of the write-ahead log took at `synchronous=FULL`, nanoseconds; the
    /// acknowledgements of the commits it covers wait for it.
    pub sync_time: LatencyHistogram,
    /// Time one checkpoint took (the write-ahead log copied into the database file and synced),
    /// nanoseconds; most run on their own thread, beside the writer.
    pub checkpoint_time: LatencyHistogram,
    /// Store operations tried again because the cluster could not take them for a moment (the
    /// JetStream backend during a leader election: no leader, no answer in time); one per
    /// retry. A request that then succeeded was only slower.
    pub unavailable_retries: AtomicU64,
    queues: Mutex<HashMap<String, QueueTotals>>,
    topics: Mutex<HashMap<String, u64>>,
}

impl StoreCounters {
    /// Totals of `queue` (zero when it never did anything since start).
    pub fn queue(&self, queue: &str) -> QueueTotals {
        lock(&self.queues).get(queue).copied().unwrap_or_default()
    }

    /// Messages published to `topic` since start.
    pub fn topic_published(&self, topic: &str) -> u64 {
        lock(&self.topics).get(topic).copied().unwrap_or(0)
    }

    /// Adds one committed batch.
    pub(crate) fn add(&self, batch: &Counts, queue_name: impl Fn(i64) -> Option<String>) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        if !batch.queues.is_empty() {
            let mut queues = lock(&self.queues);
            for (id, totals) in &batch.queues {
                if let Some(name) = queue_name(*id) {
                    queues.entry(name).or_default().add(totals);
                }
            }
        }
        if !batch.topics.is_empty() {
            let mut topics = lock(&self.topics);
            for (name, n) in &batch.topics {
                match topics.get_mut(name) {
                    Some(total) => *total += n,
                    None => {
                        topics.insert(name.clone(), *n);
                    }
                }
            }
        }
    }
}

impl StoreCounters {
    /// Adds what one operation did to a queue, by name (the JetStream backend has no queue ids
    /// and no batches: each process counts its own operations).
    pub(crate) fn add_queue(&self, queue: &str, totals: QueueTotals) {
        let mut queues = lock(&self.queues);
        match queues.get_mut(queue) {
            Some(t) => t.add(&totals),
            None => {
                queues.insert(queue.to_owned(), totals);
            }
        }
    }

    /// Adds `n` publishes to a topic, by name.
    pub(crate) fn add_published(&self, topic: &str, n: u64) {
        let mut topics = lock(&self.topics);
        match topics.get_mut(topic) {
            Some(total) => *total += n,
            None => {
                topics.insert(topic.to_owned(), n);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Counts gathered by the writer for one request or one batch, by queue id and topic name.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub queues: FxHashMap<i64, QueueTotals>,
    pub topics: FxHashMap<String, u64>,
}

impl Counts {
    /// The totals of queue `id`, for adding to.
    pub fn queue(&mut self, id: i64) -> &mut QueueTotals {
        self.queues.entry(id).or_default()
    }

    /// One more publish to `topic`.
    pub fn published(&mut self, topic: &str) {
        match self.topics.get_mut(topic) {
            Some(n) => *n += 1,
            None => {
                self.topics.insert(topic.to_string(), 1);
            }
        }
    }

    /// Moves everything in `other` into `self`.
    pub fn absorb(&mut self, other: &mut Counts) {
        for (id, totals) in other.queues.drain() {
            self.queues.entry(id).or_default().add(&totals);
        }
        for (topic, n) in other.topics.drain() {
            *self.topics.entry(topic).or_default() += n;
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.queues.clear();
        self.topics.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_adds_by_name_and_skips_queues_that_are_gone() {
        let counters = StoreCounters::default();
        let mut op = Counts::default();
        op.queue(1).enqueued += 2;
        op.queue(2).received += 1;
        op.published("alerts");
        let mut batch = Counts::default();
        batch.absorb(&mut op);
        assert!(op.queues.is_empty() && op.topics.is_empty());
        counters.add(&batch, |id| (id == 1).then(|| "alerts-q".to_string()));
        counters.add(&batch, |id| (id == 1).then(|| "alerts-q".to_string()));
        assert_eq!(
            counters.queue("alerts-q"),
            QueueTotals {
                enqueued: 4,
                received: 0,
                deleted: 0
            }
        );
        assert_eq!(counters.topic_published("alerts"), 2);
        assert_eq!(counters.topic_published("other"), 0);
        assert_eq!(counters.commits.load(Ordering::Relaxed), 2);
    }
}
