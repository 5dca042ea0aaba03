//! Push-delivery state of HTTP subscriptions: what the store keeps so that the `deliver` stage
//! can push every message to every HTTP subscription at least once, on its retry schedule,
//! across restarts.
//!
//! # Rows
//! - `push_subs`: one row per HTTP subscription: enabled flag, the signing secret (and the
//!   previous one during a rotation's grace period), and durable delivery counters.
//! - `push_pending`: one row per message per HTTP subscription, inserted in the publish's own
//!   commit (so a message is never in the topic but missing for a push subscription). It holds
//!   the delivery state (`due_ms`, `attempts`, `last_error`) beside the message; the body is
//!   inline when the message has one destination, else a reference to the shared `bodies` row,
//!   exactly like queue rows. The row is deleted when the push succeeded, or moved to the
//!   subscription's dead-letter queue (or dropped and counted) when its schedule ran out. There
//!   is no retention sweep: a pending schedule always runs to its end.
//!
//! # The schedule survives restarts
//! A row stores when its next attempt is due and how many attempts failed, so the schedule
//! continues where it was. Retries that became due while sluice was down are set apart at open
//! and released to the delivery worker one at a time, `OVERDUE_SPACING_MS` apart (closer when
//! there are many, so all are released within `OVERDUE_WINDOW_MS`), counted from the
//! worker's first claim (not from the open, which may be seconds earlier) — instead of all
//! firing at once. First attempts are not held back.
//!
//! # Claims
//! The writer keeps, per subscription, `due: BTreeSet<(due_ms, seq)>` and the set of rows
//! leased to a delivery worker. A worker's `Store::push_cycle` reports the outcomes of its
//! finished attempts and claims due rows in one writer round trip. Leases live in memory only:
//! after a crash every leased row is simply due again, and is pushed again with the same
//! message id (`webhook-id`), so a receiver can deduplicate.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use rusqlite::Transaction;

use crate::store::push::{
    HttpPush, PushSignals, PushStatus, OVERDUE_SPACING_MS, OVERDUE_WINDOW_MS,
};

/// Durable counters of one subscription (also the `push_subs` columns).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PushCounters {
    pub delivered: u64,
    pub failed: u64,
    pub dropped: u64,
    pub dead_lettered: u64,
    pub last_error: Option<(String, u64)>,
}

/// Catalog data of one subscription (small, cloned for undo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PushMeta {
    pub topic: String,
    pub name: String,
    pub push: HttpPush,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub secret: String,
    pub old_secret: Option<(String, u64)>,
}

/// One HTTP subscription in the writer.
#[derive(Debug)]
pub(crate) struct PushSubState {
    pub id: i64,
    pub meta: PushMeta,
    pub counters: PushCounters,
    /// Waiting rows: `(due_ms, seq)`.
    pub due: BTreeSet<(u64, u64)>,
    /// Leased rows: seq -> due_ms they were claimed at.
    pub leased: HashMap<u64, u64>,
    /// Retries found overdue at open, released into `due` one per `overdue_spacing_ms`.
    pub overdue: std::collections::VecDeque<(u64, u64)>,
    /// When the next overdue retry may be released (0: at the first claim).
    pub overdue_next_ms: u64,
    /// Spacing of the overdue releases.
    pub overdue_spacing_ms: u64,
}

impl PushSubState {
    /// Moves overdue retries whose turn has come into `due`, journaled.
    pub fn release_overdue(&mut self, now: u64, undo: &mut Vec<super::index::Undo>) {
        while !self.overdue.is_empty() && self.overdue_next_ms <= now {
            let Some(entry) = self.overdue.pop_front() else {
                break;
            };
            undo.push(super::index::Undo::Push(PushUndo::OverdueReleased(
                self.id,
                entry,
                self.overdue_next_ms,
            )));
            self.due.insert((now, entry.1));
            undo.push(super::index::Undo::Push(PushUndo::DueAdded(
                self.id,
                (now, entry.1),
            )));
            self.overdue_next_ms = now + self.overdue_spacing_ms;
        }
    }

    /// When the earliest waiting row may be claimed.
    pub fn next_due(&self) -> Option<u64> {
        let overdue = (!self.overdue.is_empty()).then_some(self.overdue_next_ms);
        match (self.due.first().map(|e| e.0), overdue) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// All HTTP subscriptions in the writer, with what to signal after the next commit.
#[derive(Debug, Default)]
pub(crate) struct PushIndex {
    pub subs: HashMap<i64, PushSubState>,
    pub next_seq: u64,
    pub signals: Arc<PushSignals>,
    pub wake: HashSet<i64>,
    pub catalog_changed: bool,
}

/// How to undo one in-memory push change (see `index::Undo`).
#[derive(Debug)]
pub(crate) enum PushUndo {
    DueAdded(i64, (u64, u64)),
    DueRemoved(i64, (u64, u64)),
    LeaseAdded(i64, u64),
    LeaseRemoved(i64, u64, u64),
    Counters(i64, PushCounters),
    Meta(i64, Box<PushMeta>),
    SubAdded(i64),
    SubRemoved(Box<PushSubState>),
    OverdueReleased(i64, (u64, u64), u64),
}

impl PushIndex {
    /// Undoes one change.
    pub fn undo(&mut self, u: PushUndo) {
        match u {
            PushUndo::DueAdded(s, e) => {
                if let Some(s) = self.subs.get_mut(&s) {
                    s.due.remove(&e);
                }
            }
            PushUndo::DueRemoved(s, e) => {
                if let Some(s) = self.subs.get_mut(&s) {
                    s.due.insert(e);
                }
            }
            PushUndo::LeaseAdded(s, seq) => {
                if let Some(s) = self.subs.get_mut(&s) {
                    s.leased.remove(&seq);
                }
            }
            PushUndo::LeaseRemoved(s, seq, due) => {
                if let Some(s) = self.subs.get_mut(&s) {
                    s.leased.insert(seq, due);
                }
            }
            PushUndo::Counters(s, c) => {
                if let Some(s) = self.subs.get_mut(&s) {
                    s.counters = c;
                }
            }
            PushUndo::Meta(s, m) => {
                if let Some(s) = self.subs.get_mut(&s) {
                    s.meta = *m;
                }
            }
            PushUndo::SubAdded(id) => {
                self.subs.remove(&id);
            }
            PushUndo::SubRemoved(s) => {
                self.subs.insert(s.id, *s);
            }
            PushUndo::OverdueReleased(s, entry, next) => {
                if let Some(s) = self.subs.get_mut(&s) {
                    s.overdue.push_front(entry);
                    s.overdue_next_ms = next;
                }
            }
        }
    }

    /// Wakes the workers that got work in the commit just made, and the supervisor when the
    /// catalog changed. Spurious wakes (after a rollback) are harmless.
    pub fn signal(&mut self) {
        if !self.wake.is_empty() {
            self.signals.wake(&self.wake);
            self.wake.clear();
        }
        if std::mem::take(&mut self.catalog_changed) {
            self.signals.catalog_changed();
        }
    }

    pub fn status(&self, id: i64) -> Option<PushStatus> {
        let s = self.subs.get(&id)?;
        Some(PushStatus {
            enabled: s.meta.enabled,
            disabled_reason: s.meta.disabled_reason.clone(),
            delivered_total: s.counters.delivered,
            failed_attempts_total: s.counters.failed,
            dropped_total: s.counters.dropped,
            dead_lettered_total: s.counters.dead_lettered,
            backlog: (s.due.len() + s.leased.len() + s.overdue.len()) as u64,
            in_flight: s.leased.len() as u64,
            next_attempt_time_ms: s.next_due(),
            last_error: s.counters.last_error.as_ref().map(|e| e.0.clone()),
            last_error_time_ms: s.counters.last_error.as_ref().map(|e| e.1),
            previous_secret_valid_until_ms: s.meta.old_secret.as_ref().map(|o| o.1),
        })
    }
}

/// Spacing of `n` overdue retries released after an open: [`OVERDUE_SPACING_MS`], closer when
/// that would take longer than [`OVERDUE_WINDOW_MS`] in all.
pub(crate) fn overdue_spacing(n: usize) -> u64 {
    if n == 0 {
        return OVERDUE_SPACING_MS;
    }
    OVERDUE_SPACING_MS.min(OVERDUE_WINDOW_MS / n as u64).max(1)
}

// ----- schema -----

/// Version 2: push delivery state (see the module doc).
pub(crate) fn migrate_v2_push(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE push_subs (
            sub_id INTEGER PRIMARY KEY,
            enabled INTEGER NOT NULL,
            disabled_reason TEXT,
            secret TEXT NOT NULL,
            old_secret TEXT,
            old_secret_until_ms INTEGER,
            delivered_total INTEGER NOT NULL DEFAULT 0,
            failed_attempts_total INTEGER NOT NULL DEFAULT 0,
            dropped_total INTEGER NOT NULL DEFAULT 0,
            dead_lettered_total INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            last_error_ms INTEGER
        );
        CREATE TABLE push_pending (
            seq INTEGER PRIMARY KEY,
            sub_id INTEGER NOT NULL,
            due_ms INTEGER NOT NULL,
            attempts INTEGER NOT NULL,
            publish_ms INTEGER NOT NULL,
            message_id TEXT NOT NULL,
            body_md5 BLOB NOT NULL,
            tag TEXT,
            attributes TEXT,
            last_error TEXT,
            body_ref INTEGER,
            body BLOB
        );",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overdue_retries_are_spaced_within_the_window() {
        assert_eq!(overdue_spacing(1), OVERDUE_SPACING_MS);
        assert_eq!(overdue_spacing(600), OVERDUE_SPACING_MS);
        assert_eq!(overdue_spacing(6000), 10);
        assert_eq!(overdue_spacing(10_000_000), 1);
        assert!(overdue_spacing(10_000) * 10_000 <= OVERDUE_WINDOW_MS);
    }
}
