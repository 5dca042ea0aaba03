//! The writer's in-memory state: the catalog (topics, subscriptions, queues) and, per queue, the
//! index of which messages are visible, in flight or delayed. Every change is journaled as an
//! [`Undo`] entry so a request rolled back to its savepoint, or a batch whose commit fails,
//! leaves memory equal to the database.

use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, BTreeSet};

use super::schema::queue_table;
use crate::store::types::{QueueAttributes, SubscriptionSpec};

/// Bits of a key that hold the seq; the priority sits above them.
const SEQ_BITS: u32 = 58;

/// The delivery-order key of a visible message: priority first (1 before 16), then seq (oldest
/// first).
pub(crate) fn pack(priority: u8, seq: u64) -> u64 {
    (u64::from(priority) << SEQ_BITS) | seq
}

/// Inverse of [`pack`].
pub(crate) fn unpack(key: u64) -> (u8, u64) {
    ((key >> SEQ_BITS) as u8, key & ((1 << SEQ_BITS) - 1))
}

/// Per-queue index; bodies are never held here.
#[derive(Debug, Default)]
pub(crate) struct QueueIndex {
    /// Receivable now, in delivery order.
    pub visible: BTreeSet<u64>,
    /// Received, lease running: `(next_visible_ms, key)`.
    pub inflight: BTreeSet<(u64, u64)>,
    /// Sent with a delay, never visible yet: `(next_visible_ms, key)`.
    pub delayed: BTreeSet<(u64, u64)>,
}

impl QueueIndex {
    /// The earliest time a not-visible message becomes visible.
    pub fn earliest_invisible(&self) -> Option<u64> {
        let a = self.inflight.first().map(|e| e.0);
        let b = self.delayed.first().map(|e| e.0);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (x, None) | (None, x) => x,
        }
    }
}

/// Recently deleted `(seq, gen)` pairs, so a repeated delete with the same handle succeeds.
/// Kept until the lease would have ended, or until a message [`MAX_TOMBSTONES`] or more seqs
/// later takes its slot; lost on restart (a repeated delete then answers `MessageNotExist`).
///
/// A ring indexed by seq: slot `seq % len` holds the latest tombstone of that remainder.
/// Messages are mostly deleted in seq order, so adding one writes next to the one before; a
/// hash map with a queue of deletion order cost two cache misses per delete (~4 % of the
/// writer draining a queue). The ring starts small and doubles while live tombstones would be
/// overwritten, up to [`MAX_TOMBSTONES`] slots.
#[derive(Debug, Default)]
pub(crate) struct Tombstones {
    slots: Vec<Option<Tombstone>>,
}

/// One deleted message's handle, answered "deleted" again until `until_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tombstone {
    seq: u64,
    gen: i64,
    until_ms: u64,
}

/// Slots of [`Tombstones`] per queue at most (2 MiB).
pub(crate) const MAX_TOMBSTONES: usize = 65_536;

/// Slots of a queue's first tombstone ring.
const FIRST_TOMBSTONE_SLOTS: usize = 256;

impl Tombstones {
    pub fn add(&mut self, seq: u64, gen: i64, until_ms: u64, now: u64) {
        if self.slots.is_empty() {
            self.slots = vec![None; FIRST_TOMBSTONE_SLOTS];
        }
        while self.slots.len() < MAX_TOMBSTONES
            && self.slots[self.slot(seq)].is_some_and(|t| t.seq != seq && t.until_ms > now)
        {
            self.grow(now);
        }
        let i = self.slot(seq);
        self.slots[i] = Some(Tombstone { seq, gen, until_ms });
    }

    pub fn matches(&self, seq: u64, gen: i64, now: u64) -> bool {
        !self.slots.is_empty()
            && self.slots[self.slot(seq)]
                .is_some_and(|t| t.seq == seq && t.gen == gen && t.until_ms > now)
    }

    pub fn remove(&mut self, seq: u64) {
        if self.slots.is_empty() {
            return;
        }
        let i = self.slot(seq);
        if self.slots[i].is_some_and(|t| t.seq == seq) {
            self.slots[i] = None;
        }
    }

    fn slot(&self, seq: u64) -> usize {
        (seq as usize) & (self.slots.len() - 1)
    }

    /// Doubles the ring, keeping the live tombstones (the later seq where two meet).
    fn grow(&mut self, now: u64) {
        let doubled = vec![None; self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, doubled);
        for t in old.into_iter().flatten().filter(|t| t.until_ms > now) {
            let i = self.slot(t.seq);
            if self.slots[i].is_none_or(|held| held.seq < t.seq) {
                self.slots[i] = Some(t);
            }
        }
    }
}

/// SQL text of one queue's statements, formatted once (prepared statements are cached by text).
#[derive(Debug)]
pub(crate) struct QueueSql {
    pub insert: String,
    pub claim: String,
    pub state: String,
    pub row: String,
    pub delete: String,
    pub set_visibility: String,
    pub release: String,
    pub sweep: String,
    pub oldest: String,
    pub origin_src: String,
}

/// The columns of a full message row, in the order `writer::RawRow` reads them.
pub(crate) const ROW_COLS: &str = "seq, next_visible_ms, receipt_gen, dequeue_count, \
    first_dequeue_ms, priority, enqueue_ms, message_id, body_md5, tag, attributes, origin, \
    body_ref, body";

impl QueueSql {
    pub fn new(id: i64) -> QueueSql {
        let t = queue_table(id);
        QueueSql {
            insert: format!(
                "INSERT INTO {t} (seq, next_visible_ms, receipt_gen, dequeue_count, \
                 first_dequeue_ms, priority, enqueue_ms, message_id, body_md5, tag, attributes, \
                 origin, body_ref, body) VALUES (?1, ?2, 0, 0, NULL, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
                 ?10, ?11)"
            ),
            // Without RETURNING: the row is read first (`row`); RETURNING would buffer its
            // output in an ephemeral table per call, opened and freed on every claim.
            claim: format!(
                "UPDATE {t} SET next_visible_ms = ?1, receipt_gen = ?2, \
                 dequeue_count = dequeue_count + 1, first_dequeue_ms = \
                 COALESCE(first_dequeue_ms, ?3) WHERE seq = ?4"
            ),
            state: format!(
                "SELECT receipt_gen, next_visible_ms, priority, body_ref, dequeue_count \
                 FROM {t} WHERE seq = ?1"
            ),
            row: format!("SELECT {ROW_COLS} FROM {t} WHERE seq = ?1"),
            delete: format!("DELETE FROM {t} WHERE seq = ?1"),
            set_visibility: format!(
                "UPDATE {t} SET next_visible_ms = ?1, receipt_gen = ?2 WHERE seq = ?3"
            ),
            release: format!(
                "UPDATE {t} SET next_visible_ms = ?1, receipt_gen = ?2, \
                 dequeue_count = dequeue_count - 1, first_dequeue_ms = CASE WHEN \
                 dequeue_count <= 1 THEN NULL ELSE first_dequeue_ms END WHERE seq = ?3"
            ),
            sweep: format!(
                "SELECT seq, enqueue_ms, next_visible_ms, priority, body_ref FROM {t} \
                 ORDER BY seq LIMIT ?1"
            ),
            oldest: format!("SELECT enqueue_ms FROM {t} ORDER BY seq LIMIT 1"),
            origin_src: format!(
                "SELECT message_id, dequeue_count, enqueue_ms FROM {t} WHERE seq = ?1"
            ),
        }
    }
}

/// One queue as the writer knows it.
#[derive(Debug)]
pub(crate) struct QueueState {
    pub id: i64,
    pub name: String,
    pub attrs: QueueAttributes,
    pub create_time_ms: u64,
    pub idx: QueueIndex,
    /// Seq of the next inserted row (max seq at open + 1; gaps are harmless).
    pub next_seq: u64,
    /// When the retention sweep should next look at the front of the table.
    pub next_sweep_ms: u64,
    pub expired_total: u64,
    pub dead_lettered_total: u64,
    pub tombstones: Tombstones,
    pub sql: QueueSql,
}

/// One subscription as the writer knows it.
#[derive(Debug, Clone)]
pub(crate) struct SubState {
    pub id: i64,
    pub spec: SubscriptionSpec,
}

/// One topic with its subscriptions.
#[derive(Debug, Clone)]
pub(crate) struct TopicState {
    pub id: i64,
    pub subs: BTreeMap<String, SubState>,
}

/// The whole in-memory catalog.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    pub queues: FxHashMap<i64, QueueState>,
    pub queue_ids: FxHashMap<String, i64>,
    pub topics: FxHashMap<String, TopicState>,
    /// HTTP subscriptions and their pending pushes.
    pub push: super::push_state::PushIndex,
}

/// How to undo one in-memory change.
#[derive(Debug)]
pub(crate) enum Undo {
    VisibleAdded(i64, u64),
    VisibleRemoved(i64, u64),
    InflightAdded(i64, (u64, u64)),
    InflightRemoved(i64, (u64, u64)),
    DelayedAdded(i64, (u64, u64)),
    DelayedRemoved(i64, (u64, u64)),
    TombstoneAdded(i64, u64),
    Counters {
        queue: i64,
        expired: u64,
        dead_lettered: u64,
    },
    QueueAdded(i64),
    QueueRemoved(Box<QueueState>),
    QueueAttrs(i64, QueueAttributes),
    Topics(FxHashMap<String, TopicState>),
    Push(super::push_state::PushUndo),
}

/// Which long polls of a queue to wake after a commit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wake {
    /// Messages that became visible: wake that many waiters (one each), not all of them, so
    /// one new message does not send every waiting consumer to the writer.
    pub visible: u32,
    /// The earliest time a message becomes visible moved earlier: every waiter's timer is
    /// stale, so all wake.
    pub retime: bool,
}

/// The journaled mutations of a queue's index. Holds the journal and, per queue, which
/// long-poll waiters must be woken after the commit.
pub(crate) struct Journal<'a> {
    pub undo: &'a mut Vec<Undo>,
    pub wake: &'a mut FxHashMap<i64, Wake>,
}

impl Journal<'_> {
    pub fn add_visible(&mut self, q: &mut QueueState, key: u64) {
        if q.idx.visible.insert(key) {
            self.undo.push(Undo::VisibleAdded(q.id, key));
        }
        let w = self.wake.entry(q.id).or_default();
        w.visible = w.visible.saturating_add(1);
    }

    pub fn remove_visible(&mut self, q: &mut QueueState, key: u64) -> bool {
        let removed = q.idx.visible.remove(&key);
        if removed {
            self.undo.push(Undo::VisibleRemoved(q.id, key));
        }
        removed
    }

    /// Adds a lease; wakes waiters when it is now the earliest invisible time (their timers
    /// were set for a later one).
    pub fn add_inflight(&mut self, q: &mut QueueState, at: u64, key: u64) {
        if q.idx.earliest_invisible().is_none_or(|e| at < e) {
            self.wake.entry(q.id).or_default().retime = true;
        }
        if q.idx.inflight.insert((at, key)) {
            self.undo.push(Undo::InflightAdded(q.id, (at, key)));
        }
    }

    pub fn remove_inflight(&mut self, q: &mut QueueState, at: u64, key: u64) -> bool {
        let removed = q.idx.inflight.remove(&(at, key));
        if removed {
            self.undo.push(Undo::InflightRemoved(q.id, (at, key)));
        }
        removed
    }

    pub fn add_delayed(&mut self, q: &mut QueueState, at: u64, key: u64) {
        if q.idx.earliest_invisible().is_none_or(|e| at < e) {
            self.wake.entry(q.id).or_default().retime = true;
        }
        if q.idx.delayed.insert((at, key)) {
            self.undo.push(Undo::DelayedAdded(q.id, (at, key)));
        }
    }

    /// Removes a message from whichever set holds it (`at` is the row's `next_visible_ms`).
    pub fn remove_any(&mut self, q: &mut QueueState, at: u64, key: u64) -> bool {
        if self.remove_visible(q, key) || self.remove_inflight(q, at, key) {
            return true;
        }
        let removed = q.idx.delayed.remove(&(at, key));
        if removed {
            self.undo.push(Undo::DelayedRemoved(q.id, (at, key)));
        }
        removed
    }

    /// Moves every in-flight or delayed message whose time has come to the visible set.
    pub fn promote(&mut self, q: &mut QueueState, now: u64) {
        while let Some(&(at, key)) = q.idx.inflight.first() {
            if at > now {
                break;
            }
            q.idx.inflight.pop_first();
            self.undo.push(Undo::InflightRemoved(q.id, (at, key)));
            q.idx.visible.insert(key);
            self.undo.push(Undo::VisibleAdded(q.id, key));
        }
        while let Some(&(at, key)) = q.idx.delayed.first() {
            if at > now {
                break;
            }
            q.idx.delayed.pop_first();
            self.undo.push(Undo::DelayedRemoved(q.id, (at, key)));
            q.idx.visible.insert(key);
            self.undo.push(Undo::VisibleAdded(q.id, key));
        }
    }

    pub fn add_tombstone(&mut self, q: &mut QueueState, seq: u64, gen: i64, until: u64, now: u64) {
        q.tombstones.add(seq, gen, until, now);
        self.undo.push(Undo::TombstoneAdded(q.id, seq));
    }
}

impl Catalog {
    /// Undoes journal entries back to `mark`, newest first.
    pub fn rollback(&mut self, undo: &mut Vec<Undo>, mark: usize) {
        while undo.len() > mark {
            let Some(u) = undo.pop() else { break };
            match u {
                Undo::VisibleAdded(q, k) => {
                    if let Some(q) = self.queues.get_mut(&q) {
                        q.idx.visible.remove(&k);
                    }
                }
                Undo::VisibleRemoved(q, k) => {
                    if let Some(q) = self.queues.get_mut(&q) {
                        q.idx.visible.insert(k);
                    }
                }
                Undo::InflightAdded(q, e) => {
                    if let Some(q) = self.queues.get_mut(&q) {
                        q.idx.inflight.remove(&e);
                    }
                }
                Undo::InflightRemoved(q, e) => {
                    if let Some(q) = self.queues.get_mut(&q) {
                        q.idx.inflight.insert(e);
                    }
                }
                Undo::DelayedAdded(q, e) => {
                    if let Some(q) = self.queues.get_mut(&q) {
                        q.idx.delayed.remove(&e);
                    }
                }
                Undo::DelayedRemoved(q, e) => {
                    if let Some(q) = self.queues.get_mut(&q) {
                        q.idx.delayed.insert(e);
                    }
                }
                Undo::TombstoneAdded(q, seq) => {
                    if let Some(q) = self.queues.get_mut(&q) {
                        q.tombstones.remove(seq);
                    }
                }
                Undo::Counters {
                    queue,
                    expired,
                    dead_lettered,
                } => {
                    if let Some(q) = self.queues.get_mut(&queue) {
                        q.expired_total -= expired;
                        q.dead_lettered_total -= dead_lettered;
                    }
                }
                Undo::QueueAdded(id) => {
                    if let Some(q) = self.queues.remove(&id) {
                        self.queue_ids.remove(&q.name);
                    }
                }
                Undo::QueueRemoved(q) => {
                    self.queue_ids.insert(q.name.clone(), q.id);
                    self.queues.insert(q.id, *q);
                }
                Undo::QueueAttrs(id, attrs) => {
                    if let Some(q) = self.queues.get_mut(&id) {
                        q.attrs = attrs;
                    }
                }
                Undo::Topics(topics) => self.topics = topics,
                Undo::Push(u) => self.push.undo(u),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_by_priority_then_seq() {
        let mut keys = [pack(8, 5), pack(1, 9), pack(8, 2), pack(16, 1)];
        keys.sort();
        let order: Vec<_> = keys.iter().map(|&k| unpack(k)).collect();
        assert_eq!(order, vec![(1, 9), (8, 2), (8, 5), (16, 1)]);
    }

    #[test]
    fn tombstones_expire_and_stay_bounded() {
        let mut t = Tombstones::default();
        t.add(1, 11, 100, 0);
        assert!(t.matches(1, 11, 99));
        assert!(!t.matches(1, 12, 99));
        assert!(!t.matches(1, 11, 100));
        for seq in 2..(3 * MAX_TOMBSTONES as u64) {
            t.add(seq, 1, u64::MAX, 0);
        }
        assert_eq!(t.slots.len(), MAX_TOMBSTONES);
        // The latest MAX_TOMBSTONES are kept; older ones gave their slots up.
        let last = 3 * MAX_TOMBSTONES as u64 - 1;
        assert!(t.matches(last, 1, 0));
        assert!(t.matches(last + 1 - MAX_TOMBSTONES as u64, 1, 0));
        assert!(!t.matches(last - MAX_TOMBSTONES as u64, 1, 0));
    }

    #[test]
    fn tombstones_grow_only_while_live_ones_would_be_overwritten() {
        let mut t = Tombstones::default();
        // Deleted out of order, with gaps: every live one is kept while the ring can grow.
        let seqs: Vec<u64> = (0..2000u64).map(|i| (i * 7919) % 5000 + 1).collect();
        for &seq in &seqs {
            t.add(seq, seq as i64, 1_000, 0);
        }
        assert!(seqs.iter().all(|&s| t.matches(s, s as i64, 999)));
        assert!(
            !t.matches(seqs[0], seqs[0] as i64 + 1, 999),
            "another handle"
        );
        let grown = t.slots.len();
        assert!(grown <= 8192, "{grown} slots for 2000 tombstones");
        // Expired ones are overwritten instead of growing the ring.
        for seq in 10_000..10_000 + grown as u64 {
            t.add(seq, 1, 5_000, 1_000);
        }
        assert_eq!(t.slots.len(), grown);
        assert!(
            !t.matches(seqs[0], seqs[0] as i64, 999),
            "overwritten once expired"
        );
        // A rolled-back delete takes its tombstone back.
        t.remove(10_000);
        assert!(!t.matches(10_000, 1, 1_000));
        assert!(t.matches(10_001, 1, 1_000));
    }
}
