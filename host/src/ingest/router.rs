//! Delivery of downlink and republish messages to the device sessions subscribed to them.
//!
//! Each session owns a small bounded queue; [`SessionRouter::publish`] matches the topic against
//! every session's filters and `try_send`s into the queues. A session whose queue is full (a slow
//! or stuck device) loses that message and the drop is counted
//! (`IngestCounters::downlink_dropped_total`): the router, the API call behind it and every other
//! session never wait for one slow device. Sessions also register here by client id, which is how
//! a second connection with the same client id takes the session over.
//!
//! Matching is a scan over sessions and their filters (read lock, no await while held); fine for
//! the thousands of sessions a single node serves, as each session holds at most
//! [`RouterLimits::max_subscriptions_per_session`] filters. A filter trie can replace it behind
//! the same API when that stops being true.
//!
//! Persistent sessions (clean session off) leave their subscriptions behind when they close;
//! those are kept for [`RouterLimits::saved_session_expiry`] and at most
//! [`RouterLimits::max_saved_sessions`] of them (the oldest go first), since every new client id
//! would otherwise add one for good. With a [`SessionStore`] attached they are durable too: each
//! change marks the client id dirty, and [`SessionRouter::persist`] writes the current state of
//! dirty ids (a session's last state wins, so a burst of changes costs one write). QoS 1
//! downlink for a device whose persistent session is closed is kept in that store
//! ([`SessionRouter::keep_for_offline`]) and sent when the session comes back.
//!
//! The router also holds the synchronous calls waiting for a device's answer ([`super::rrpc`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::counters::{bump, IngestCounters};
use super::keep::{kept_id, KeepError, KeptMessage, SavedState, SessionStore};
use super::rrpc::{CallRefused, Calls, Waiting, DEFAULT_MAX_WAITING_CALLS};
use super::{now_ms, DeviceIdentity};
use crate::topic::topic_matches;

/// A message on its way to one session.
#[derive(Debug, Clone)]
pub(crate) struct Downlink {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: u8,
}

/// A session's subscriptions: filter -> granted QoS (a hash map, so a SUBSCRIBE of a filter the
/// session has costs O(1), not a scan of everything it holds).
type Filters = HashMap<Box<str>, u8>;

/// Default most subscriptions one session holds: devices subscribe to a handful of topics (the
/// IoT platforms allow about a hundred); an application client watching many devices uses
/// wildcards.
pub const DEFAULT_MAX_SUBSCRIPTIONS_PER_SESSION: usize = 256;
/// Default most saved persistent sessions: one per device of a large single-node fleet.
pub const DEFAULT_MAX_SAVED_SESSIONS: usize = 100_000;
/// Default time a saved persistent session is kept after its connection closed: 7 days, as long
/// as the IoT platforms keep an offline device's messages.
pub const DEFAULT_SAVED_SESSION_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default time a message kept for an offline session waits to be delivered: 7 days.
pub const DEFAULT_OFFLINE_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often expired saved sessions are swept out when nothing else happens.
const EXPIRY_SWEEP: Duration = Duration::from_secs(60);

/// How much the router keeps; `Default` is what `sluice serve` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterLimits {
    /// Subscriptions one session may hold; further new filters are refused (SUBACK failure).
    pub max_subscriptions_per_session: usize,
    /// Saved persistent sessions kept; past it the oldest is evicted.
    pub max_saved_sessions: usize,
    /// How long a saved persistent session is kept (an MQTT 5 client's shorter session expiry
    /// interval is honoured).
    pub saved_session_expiry: Duration,
    /// How long a message kept for an offline session waits to be delivered.
    pub offline_retention: Duration,
    /// Synchronous calls waiting for an answer at once.
    pub max_waiting_calls: usize,
}

impl Default for RouterLimits {
    fn default() -> Self {
        RouterLimits {
            max_subscriptions_per_session: DEFAULT_MAX_SUBSCRIPTIONS_PER_SESSION,
            max_saved_sessions: DEFAULT_MAX_SAVED_SESSIONS,
            saved_session_expiry: DEFAULT_SAVED_SESSION_EXPIRY,
            offline_retention: DEFAULT_OFFLINE_RETENTION,
            max_waiting_calls: DEFAULT_MAX_WAITING_CALLS,
        }
    }
}

struct SessionEntry {
    client_id: Arc<str>,
    identity: Option<DeviceIdentity>,
    tx: mpsc::Sender<Downlink>,
    /// Woken when messages were kept for this session while it was connecting.
    nudge: Arc<Notify>,
    filters: Filters,
    /// Keep the subscriptions this long after the connection closes (clean session off).
    persistent: Option<Duration>,
}

struct ClientSlot {
    session_id: u64,
    takeover: CancellationToken,
}

/// Subscriptions of disconnected persistent sessions, by client id, with the order they were
/// saved in (for evicting the oldest and expiring).
#[derive(Default)]
struct Saved {
    by_client: HashMap<Arc<str>, SavedSession>,
    /// (save number, client id, expires at) in save order; an entry whose save number no longer
    /// matches `by_client` was restored or replaced and is skipped.
    order: VecDeque<(u64, Arc<str>, Instant)>,
    next_seq: u64,
}

struct SavedSession {
    identity: Option<DeviceIdentity>,
    filters: Filters,
    keep: Duration,
    closed_at_ms: u64,
    seq: u64,
    expires_at: Instant,
}

struct RouterInner {
    sessions: RwLock<HashMap<u64, SessionEntry>>,
    clients: Mutex<HashMap<Arc<str>, ClientSlot>>,
    saved: Mutex<Saved>,
    next_id: AtomicU64,
    counters: Arc<IngestCounters>,
    limits: RouterLimits,
    calls: Arc<Calls>,
    store: OnceLock<Arc<dyn SessionStore>>,
    /// Client ids whose saved state changed since [`SessionRouter::persist`] last wrote them.
    dirty: Mutex<HashSet<Arc<str>>>,
    dirtied: Notify,
}

/// Delivers messages published inside sluice (downlink from the API, republish from rules) to
/// the connected sessions whose subscriptions match. Cheap to clone; all clones share one table.
#[derive(Clone)]
pub struct SessionRouter {
    inner: Arc<RouterInner>,
}

impl std::fmt::Debug for SessionRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRouter")
            .field("sessions", &self.session_count())
            .finish()
    }
}

/// What [`SessionRouter::register`] gives a new session.
pub(crate) struct Registration {
    pub session_id: u64,
    /// Cancelled when another connection takes over this client id.
    pub takeover: CancellationToken,
    /// True when an older session with the same client id was told to close.
    pub took_over: bool,
    /// True when the session continues an earlier one (CONNACK "session present"): its
    /// subscriptions were restored, and the device must resend its unacked publishes.
    pub session_present: bool,
    /// Woken when messages were kept for this client id after the session began.
    pub nudge: Arc<Notify>,
}

impl SessionRouter {
    /// A router with no sessions and the default limits, counting into `counters`.
    pub fn new(counters: Arc<IngestCounters>) -> SessionRouter {
        SessionRouter::with_limits(counters, RouterLimits::default())
    }

    /// A router with no sessions and the given limits, counting into `counters`.
    pub fn with_limits(counters: Arc<IngestCounters>, limits: RouterLimits) -> SessionRouter {
        SessionRouter {
            inner: Arc::new(RouterInner {
                sessions: RwLock::new(HashMap::new()),
                clients: Mutex::new(HashMap::new()),
                saved: Mutex::new(Saved::default()),
                next_id: AtomicU64::new(1),
                calls: Arc::new(Calls::new(limits.max_waiting_calls, counters.clone())),
                counters,
                limits,
                store: OnceLock::new(),
                dirty: Mutex::new(HashSet::new()),
                dirtied: Notify::new(),
            }),
        }
    }

    /// Makes persistent sessions durable in `store` (once; later calls are ignored). Restore
    /// what it holds with [`SessionRouter::restore`] and run [`SessionRouter::persist`].
    pub fn attach_store(&self, store: Arc<dyn SessionStore>) {
        let _ = self.inner.store.set(store);
    }

    /// The store persistent sessions are kept in, when one is attached.
    pub(crate) fn store(&self) -> Option<&Arc<dyn SessionStore>> {
        self.inner.store.get()
    }

    /// The limits the router was made with.
    pub(crate) fn limits(&self) -> RouterLimits {
        self.inner.limits
    }

    /// The counters the router counts into.
    pub fn counters(&self) -> &Arc<IngestCounters> {
        &self.inner.counters
    }

    fn mark_dirty(&self, client_id: &Arc<str>) {
        if self.inner.store.get().is_none() {
            return;
        }
        self.inner
            .dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(client_id.clone());
        self.inner.dirtied.notify_one();
    }

    /// Registers a wait for a device's answer on `answer_topic` (a synchronous call).
    pub fn expect_answer(&self, answer_topic: &str) -> Result<Waiting, CallRefused> {
        self.inner.calls.expect(answer_topic)
    }

    /// A device published to `topic`: true when it answered a waiting synchronous call.
    pub(crate) fn answer_call(&self, topic: &str, payload: &Bytes) -> bool {
        self.inner.calls.answer(topic, payload)
    }

    /// Wakes the connected session of `client_id`, if any, to send what was kept for it.
    pub(crate) fn nudge(&self, client_id: &str) {
        let session_id = self
            .inner
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(client_id)
            .map(|slot| slot.session_id);
        let Some(session_id) = session_id else { return };
        let sessions = self
            .inner
            .sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = sessions.get(&session_id) {
            entry.nudge.notify_one();
        }
    }

    /// Saved persistent sessions kept now (for metrics and tests).
    pub fn saved_count(&self) -> usize {
        self.lock_saved().by_client.len()
    }

    fn lock_saved(&self) -> std::sync::MutexGuard<'_, Saved> {
        self.inner
            .saved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes to every session with a matching subscription, at the lower of `qos` and the
    /// granted QoS (QoS 2 is delivered as QoS 1). Returns how many sessions took the message into
    /// their queue; never waits. Each session gets it once, even when several of its filters
    /// match.
    pub fn publish(&self, topic: &str, payload: Bytes, qos: u8) -> usize {
        let topic: Arc<str> = Arc::from(topic);
        let qos = qos.min(1);
        let sessions = self
            .inner
            .sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut delivered = 0;
        for entry in sessions.values() {
            let granted = entry
                .filters
                .iter()
                .filter(|(f, _)| topic_matches(f, &topic))
                .map(|(_, q)| *q)
                .max();
            let Some(granted) = granted else { continue };
            let msg = Downlink {
                topic: topic.clone(),
                payload: payload.clone(),
                qos: qos.min(granted),
            };
            match entry.tx.try_send(msg) {
                Ok(()) => {
                    delivered += 1;
                    bump(&self.inner.counters.downlink_total);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    bump(&self.inner.counters.downlink_dropped_total);
                    tracing::debug!(client_id = %entry.client_id, topic = %topic, "downlink queue full, message dropped");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        delivered
    }

    /// Number of connected sessions (for metrics and tests).
    pub fn session_count(&self) -> usize {
        self.inner
            .sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Adds a session. An older session with the same client id is told (through its takeover
    /// token) to close, as MQTT requires. With `persistent` (clean session off: how long the
    /// client asks its session to be kept, capped by the router's expiry) the session continues
    /// the previous one of that client id: its subscriptions carry over. Without it, any saved
    /// state of that client id is discarded.
    ///
    /// Lock order everywhere: `clients`, then `sessions`, then `saved`.
    pub(crate) fn register(
        &self,
        client_id: Arc<str>,
        identity: Option<DeviceIdentity>,
        tx: mpsc::Sender<Downlink>,
        persistent: Option<Duration>,
    ) -> Registration {
        let persistent = persistent.map(|d| d.min(self.inner.limits.saved_session_expiry));
        let session_id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let takeover = CancellationToken::new();
        let mut clients = self
            .inner
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let previous = clients.insert(
            client_id.clone(),
            ClientSlot {
                session_id,
                takeover: takeover.clone(),
            },
        );
        let mut sessions = self
            .inner
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let took_over = previous.is_some();
        let mut had_state = false;
        let carried = match previous {
            Some(old) => {
                old.takeover.cancel();
                // The old session stops receiving downlink now, not when its task gets to run.
                sessions
                    .remove(&old.session_id)
                    .filter(|e| e.persistent.is_some())
                    .map(|e| e.filters)
            }
            None => {
                let saved = self.lock_saved().by_client.remove(&client_id);
                had_state = saved.is_some();
                match saved {
                    Some(s) if s.expires_at > Instant::now() => Some(s.filters),
                    Some(_) => {
                        bump(&self.inner.counters.saved_sessions_expired_total);
                        None
                    }
                    None => None,
                }
            }
        };
        had_state |= carried.is_some();
        let (filters, session_present) = match carried {
            Some(filters) if persistent.is_some() => (filters, true),
            _ => (Filters::new(), false),
        };
        let nudge = Arc::new(Notify::new());
        sessions.insert(
            session_id,
            SessionEntry {
                client_id: client_id.clone(),
                identity,
                tx,
                nudge: nudge.clone(),
                filters,
                persistent,
            },
        );
        drop(sessions);
        drop(clients);
        // A persistent session is saved as connected; a clean one removes what an earlier
        // persistent session of this client id left (its kept messages included).
        if persistent.is_some() || had_state {
            self.mark_dirty(&client_id);
        }
        Registration {
            session_id,
            takeover,
            took_over,
            session_present,
            nudge,
        }
    }

    /// Removes a closed session; a persistent one leaves its subscriptions for its next
    /// connection (unless a newer session already took them over).
    pub(crate) fn unregister(&self, session_id: u64, client_id: &Arc<str>) {
        let mut clients = self
            .inner
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let owner = clients
            .get(client_id)
            .is_some_and(|slot| slot.session_id == session_id);
        if owner {
            clients.remove(client_id);
        }
        let entry = self
            .inner
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&session_id);
        let Some(entry) = entry.filter(|_| owner) else {
            return;
        };
        let Some(keep) = entry.persistent else {
            return;
        };
        self.save(
            entry.client_id,
            SavedSession {
                identity: entry.identity,
                filters: entry.filters,
                keep,
                closed_at_ms: now_ms(),
                seq: 0,
                expires_at: Instant::now() + keep,
            },
            true,
        );
    }

    /// Drops saved sessions past their expiry (counted, and removed from the store).
    fn expire_saved(&self, saved: &mut Saved) {
        let now = Instant::now();
        while let Some((seq, id, expires_at)) = saved.order.front() {
            let live = saved.by_client.get(id).is_some_and(|s| s.seq == *seq);
            if live && *expires_at > now {
                break;
            }
            if live {
                saved.by_client.remove(id);
                bump(&self.inner.counters.saved_sessions_expired_total);
                self.mark_dirty(id);
            }
            saved.order.pop_front();
        }
    }

    /// Keeps a closed persistent session (until `session.expires_at`), first dropping what has
    /// expired and then, past the cap, the oldest saved sessions. `changed`: the store does not
    /// have this state yet.
    fn save(&self, client_id: Arc<str>, mut session: SavedSession, changed: bool) {
        let limits = self.inner.limits;
        let counters = &self.inner.counters;
        let mut saved = self.lock_saved();
        let saved = &mut *saved;
        self.expire_saved(saved);
        if changed {
            self.mark_dirty(&client_id);
        }
        if limits.max_saved_sessions == 0 {
            bump(&counters.saved_sessions_evicted_total);
            return;
        }
        while saved.by_client.len() >= limits.max_saved_sessions {
            let Some((seq, id, _)) = saved.order.pop_front() else {
                break;
            };
            if saved.by_client.get(&id).is_some_and(|s| s.seq == seq) {
                saved.by_client.remove(&id);
                bump(&counters.saved_sessions_evicted_total);
                self.mark_dirty(&id);
                tracing::debug!(client_id = %id, "saved MQTT session evicted: too many saved sessions");
            }
        }
        saved.next_seq += 1;
        session.seq = saved.next_seq;
        saved
            .order
            .push_back((session.seq, client_id.clone(), session.expires_at));
        saved.by_client.insert(client_id, session);
        // Restored and replaced sessions leave stale entries behind; compact now and then so
        // the queue stays proportional to what is kept.
        if saved.order.len() > 2 * saved.by_client.len() + 64 {
            let by_client = &saved.by_client;
            saved
                .order
                .retain(|(seq, id, _)| by_client.get(id).is_some_and(|s| s.seq == *seq));
        }
    }

    /// Adds or replaces (same filter: new QoS) subscriptions of a session, under one lock. A new
    /// filter is refused (`false` at its index) once the session holds
    /// [`RouterLimits::max_subscriptions_per_session`]; a filter it holds is always replaced.
    pub(crate) fn subscribe(&self, session_id: u64, filters: &[(&str, u8)]) -> Vec<bool> {
        let max = self.inner.limits.max_subscriptions_per_session;
        let mut sessions = self
            .inner
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = sessions.get_mut(&session_id) else {
            return vec![true; filters.len()];
        };
        if entry.persistent.is_some() {
            self.mark_dirty(&entry.client_id);
        }
        filters
            .iter()
            .map(|&(filter, qos)| {
                if let Some(granted) = entry.filters.get_mut(filter) {
                    *granted = qos;
                    true
                } else if entry.filters.len() < max {
                    entry.filters.insert(filter.into(), qos);
                    true
                } else {
                    false
                }
            })
            .collect()
    }

    /// Removes subscriptions of a session, under one lock.
    pub(crate) fn unsubscribe(&self, session_id: u64, filters: &[String]) {
        let mut sessions = self
            .inner
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = sessions.get_mut(&session_id) {
            for filter in filters {
                entry.filters.remove(filter.as_str());
            }
            if entry.persistent.is_some() {
                self.mark_dirty(&entry.client_id);
            }
        }
    }

    /// The state to save for `client_id`: its connected persistent session, or its closed
    /// one; `None` when it has none (what was saved for it is to be removed).
    pub(crate) fn persisted(&self, client_id: &Arc<str>) -> Option<SavedState> {
        let state = |identity: &Option<DeviceIdentity>, filters: &Filters, keep: Duration| {
            let mut filters: Vec<(String, u8)> =
                filters.iter().map(|(f, q)| (f.to_string(), *q)).collect();
            filters.sort();
            SavedState {
                client_id: client_id.to_string(),
                identity: identity.clone(),
                filters,
                expiry_secs: keep.as_secs(),
                closed_at_ms: None,
            }
        };
        let clients = self
            .inner
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = clients.get(client_id) {
            let sessions = self
                .inner
                .sessions
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = sessions.get(&slot.session_id) {
                return entry
                    .persistent
                    .map(|keep| state(&entry.identity, &entry.filters, keep));
            }
        }
        let saved = self.lock_saved();
        let s = saved.by_client.get(client_id)?;
        Some(SavedState {
            closed_at_ms: Some(s.closed_at_ms),
            ..state(&s.identity, &s.filters, s.keep)
        })
    }

    /// Takes back sessions read from the store at start. A session saved as connected was cut
    /// off by a crash and counts as closed now; one past its expiry is dropped (and removed from
    /// the store).
    pub fn restore(&self, states: Vec<SavedState>) {
        for st in states {
            self.restore_one(st);
        }
    }

    fn restore_one(&self, st: SavedState) {
        let now = now_ms();
        let client_id: Arc<str> = Arc::from(st.client_id.as_str());
        let closed_at_ms = st.closed_at_ms.unwrap_or(now).min(now);
        let keep = Duration::from_secs(st.expiry_secs).min(self.inner.limits.saved_session_expiry);
        let left = keep.saturating_sub(Duration::from_millis(now - closed_at_ms));
        if left.is_zero() {
            bump(&self.inner.counters.saved_sessions_expired_total);
            self.mark_dirty(&client_id);
            return;
        }
        let filters = st
            .filters
            .into_iter()
            .map(|(f, q)| (f.into_boxed_str(), q.min(1)))
            .collect();
        self.save(
            client_id,
            SavedSession {
                identity: st.identity,
                filters,
                keep,
                closed_at_ms,
                seq: 0,
                expires_at: Instant::now() + left,
            },
            false,
        );
    }

    /// Takes in the sessions other processes sharing the store saved (JetStream): a session
    /// closed elsewhere replaces the copy here, so downlink to its device is kept for it; one
    /// open elsewhere, or gone from the store, is dropped here (the store is not touched).
    /// Sessions connected here, or changed here and not yet written, are left alone.
    pub fn follow_saved(&self, states: Vec<SavedState>) {
        let dirty = self
            .inner
            .dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let connected: HashSet<Arc<str>> = self
            .inner
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        let ours = |id: &Arc<str>| connected.contains(id) || dirty.contains(id);
        let mut in_store: HashSet<Arc<str>> = HashSet::with_capacity(states.len());
        for st in states {
            let id: Arc<str> = Arc::from(st.client_id.as_str());
            in_store.insert(id.clone());
            if ours(&id) {
                continue;
            }
            if st.closed_at_ms.is_some() {
                self.restore_one(st);
            } else {
                self.lock_saved().by_client.remove(&id);
            }
        }
        self.lock_saved()
            .by_client
            .retain(|id, _| in_store.contains(id) || ours(id));
    }

    /// Writes changed sessions to the attached store until `shutdown` (then once more), and
    /// sweeps out expired saved sessions every minute. A failed write is logged and tried again.
    pub async fn persist(self, shutdown: CancellationToken) {
        let Some(store) = self.inner.store.get().cloned() else {
            return;
        };
        loop {
            let stop = tokio::select! {
                () = self.inner.dirtied.notified() => false,
                () = tokio::time::sleep(EXPIRY_SWEEP) => {
                    self.expire_saved(&mut self.lock_saved());
                    false
                }
                () = shutdown.cancelled() => true,
            };
            if let Err(e) = self.write_dirty(&*store).await {
                tracing::warn!("saving MQTT sessions failed, trying again: {e}");
                if !stop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            if stop {
                return;
            }
        }
    }

    /// Writes the current state of every dirty client id; what fails stays dirty.
    async fn write_dirty(&self, store: &dyn SessionStore) -> Result<(), KeepError> {
        let ids: Vec<Arc<str>> = self
            .inner
            .dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect();
        for (i, id) in ids.iter().enumerate() {
            let written = match self.persisted(id) {
                Some(state) => store.save(&state).await,
                None => store.remove(id).await,
            };
            if let Err(e) = written {
                for id in &ids[i..] {
                    self.mark_dirty(id);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Keeps a QoS 1 message for every closed persistent session of `device` subscribed to
    /// `topic` at QoS 1, so it is delivered when the device comes back. Returns how many sessions
    /// it was kept for (0: none would take it). The session's state is saved first, so a kept
    /// message never outlives the session it is for.
    pub async fn keep_for_offline(
        &self,
        device: &DeviceIdentity,
        topic: &str,
        payload: Bytes,
    ) -> Result<usize, KeepError> {
        let Some(store) = self.inner.store.get().cloned() else {
            return Ok(0);
        };
        let targets: Vec<Arc<str>> = {
            let saved = self.lock_saved();
            saved
                .by_client
                .iter()
                .filter(|(_, s)| s.identity.as_ref() == Some(device))
                .filter(|(_, s)| {
                    s.filters
                        .iter()
                        .any(|(f, q)| *q >= 1 && topic_matches(f, topic))
                })
                .map(|(id, _)| id.clone())
                .collect()
        };
        let expires_at_ms = now_ms() + self.inner.limits.offline_retention.as_millis() as u64;
        for client_id in &targets {
            if let Some(state) = self.persisted(client_id) {
                store.save(&state).await?;
            }
            let message = KeptMessage {
                id: kept_id(now_ms()),
                topic: topic.to_owned(),
                payload: payload.clone(),
                dup: false,
                expires_at_ms,
            };
            match store.keep(client_id, &message).await {
                Ok(()) => bump(&self.inner.counters.offline_stored_total),
                Err(e) => {
                    if matches!(e, KeepError::Full { .. }) {
                        bump(&self.inner.counters.offline_refused_total);
                    }
                    return Err(e);
                }
            }
            // The device may have come back meanwhile: its session sends what was kept.
            self.nudge(client_id);
        }
        Ok(targets.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Option<Duration> = Some(Duration::from_secs(3600));

    impl SessionRouter {
        /// Registers a session without a device identity.
        fn register_(
            &self,
            client_id: Arc<str>,
            tx: mpsc::Sender<Downlink>,
            persistent: Option<Duration>,
        ) -> Registration {
            self.register(client_id, None, tx, persistent)
        }
    }

    fn router() -> (SessionRouter, Arc<IngestCounters>) {
        let counters = Arc::new(IngestCounters::default());
        (SessionRouter::new(counters.clone()), counters)
    }

    #[tokio::test]
    async fn delivers_once_per_matching_session_at_granted_qos() {
        let (r, counters) = router();
        let (tx1, mut rx1) = mpsc::channel(8);
        let (tx2, mut rx2) = mpsc::channel(8);
        let s1 = r.register_("a".into(), tx1, None);
        let s2 = r.register_("b".into(), tx2, None);
        r.subscribe(s1.session_id, &[("/pk/+/user/#", 1), ("#", 0)]);
        r.subscribe(s2.session_id, &[("other", 1)]);

        assert_eq!(
            r.publish("/pk/dev/user/get", Bytes::from_static(b"x"), 2),
            1
        );
        let got = rx1.recv().await.unwrap();
        assert_eq!(&*got.topic, "/pk/dev/user/get");
        assert_eq!(got.qos, 1, "max of the matching grants, QoS 2 capped at 1");
        assert!(
            rx1.try_recv().is_err(),
            "delivered once despite two matching filters"
        );
        assert!(rx2.try_recv().is_err());

        assert_eq!(r.publish("nobody/listens", Bytes::new(), 1), 1, "'#' of s1");
        r.unsubscribe(s1.session_id, &["#".to_owned()]);
        assert_eq!(r.publish("nobody/listens", Bytes::new(), 1), 0);
        assert_eq!(counters.snapshot().downlink_total, 2);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_blocking_others() {
        let (r, counters) = router();
        let (slow_tx, _slow_rx) = mpsc::channel(1);
        let (fast_tx, mut fast_rx) = mpsc::channel(16);
        let slow = r.register_("slow".into(), slow_tx, None);
        let fast = r.register_("fast".into(), fast_tx, None);
        r.subscribe(slow.session_id, &[("t", 1)]);
        r.subscribe(fast.session_id, &[("t", 1)]);
        for _ in 0..10 {
            r.publish("t", Bytes::from_static(b"p"), 1);
        }
        let mut n = 0;
        while fast_rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, 10);
        assert_eq!(counters.snapshot().downlink_dropped_total, 9);
    }

    #[tokio::test]
    async fn same_client_id_takes_over() {
        let (r, _) = router();
        let (tx1, _rx1) = mpsc::channel(1);
        let (tx2, _rx2) = mpsc::channel(1);
        let client: Arc<str> = "dev-1".into();
        let first = r.register_(client.clone(), tx1, None);
        assert!(!first.took_over);
        let second = r.register_(client.clone(), tx2, None);
        assert!(second.took_over);
        assert!(first.takeover.is_cancelled());
        assert!(!second.takeover.is_cancelled());
        assert_eq!(r.session_count(), 1);
        // The old session's late unregister must not remove the new one.
        r.unregister(first.session_id, &client);
        assert_eq!(r.session_count(), 1);
        r.unregister(second.session_id, &client);
        assert_eq!(r.session_count(), 0);
    }

    #[tokio::test]
    async fn persistent_sessions_keep_subscriptions_across_reconnects() {
        let (r, _) = router();
        let client: Arc<str> = "dev-p".into();
        let (tx, _rx) = mpsc::channel(4);
        let first = r.register_(client.clone(), tx, KEEP);
        assert!(!first.session_present);
        r.subscribe(first.session_id, &[("down/#", 1)]);
        r.unregister(first.session_id, &client);

        let (tx, mut rx) = mpsc::channel(4);
        let second = r.register_(client.clone(), tx, KEEP);
        assert!(second.session_present, "subscriptions were restored");
        assert_eq!(r.publish("down/x", Bytes::from_static(b"1"), 1), 1);
        assert_eq!(&*rx.recv().await.unwrap().topic, "down/x");

        // Takeover of a live persistent session carries the subscriptions too.
        let (tx, _rx3) = mpsc::channel(4);
        let third = r.register_(client.clone(), tx, KEEP);
        assert!(third.session_present && third.took_over);
        assert_eq!(r.publish("down/y", Bytes::new(), 0), 1);
        r.unregister(third.session_id, &client);

        // A clean session discards the saved state.
        let (tx, _rx4) = mpsc::channel(4);
        let clean = r.register_(client.clone(), tx, None);
        assert!(!clean.session_present);
        assert_eq!(r.publish("down/z", Bytes::new(), 0), 0);
        r.unregister(clean.session_id, &client);
        let (tx, _rx5) = mpsc::channel(4);
        assert!(!r.register_(client, tx, KEEP).session_present);
    }

    #[tokio::test]
    async fn a_session_holds_at_most_its_cap_of_subscriptions() {
        // Proves the per-session cap: new filters past it are refused, a filter the session
        // holds is still replaced (new QoS), and unsubscribing makes room again.
        let counters = Arc::new(IngestCounters::default());
        let r = SessionRouter::with_limits(
            counters,
            RouterLimits {
                max_subscriptions_per_session: 2,
                ..RouterLimits::default()
            },
        );
        let (tx, _rx) = mpsc::channel(4);
        let s = r.register_("c".into(), tx, None);
        assert_eq!(
            r.subscribe(s.session_id, &[("a", 0), ("b", 0), ("c", 0), ("a", 1)]),
            vec![true, true, false, true]
        );
        r.unsubscribe(s.session_id, &["b".to_owned()]);
        assert_eq!(r.subscribe(s.session_id, &[("c", 1)]), vec![true]);
    }

    #[tokio::test(start_paused = true)]
    async fn saved_sessions_expire_and_the_oldest_are_evicted_past_the_cap() {
        // Proves the saved-session bounds: past the cap the oldest saved session goes (counted),
        // a saved session past its expiry is not restored and is dropped (counted), and an MQTT 5
        // client's shorter expiry is honoured.
        let counters = Arc::new(IngestCounters::default());
        let r = SessionRouter::with_limits(
            counters.clone(),
            RouterLimits {
                max_saved_sessions: 2,
                saved_session_expiry: Duration::from_secs(60),
                ..RouterLimits::default()
            },
        );
        let save = |id: &str, keep: Duration| {
            let (tx, _rx) = mpsc::channel(1);
            let client: Arc<str> = id.into();
            let reg = r.register_(client.clone(), tx, Some(keep));
            r.subscribe(reg.session_id, &[("t", 1)]);
            r.unregister(reg.session_id, &client);
        };
        let hour = Duration::from_secs(3600);
        save("one", hour);
        save("two", hour);
        save("three", hour);
        assert_eq!(r.saved_count(), 2);
        assert_eq!(counters.snapshot().saved_sessions_evicted_total, 1);
        let (tx, _rx) = mpsc::channel(1);
        assert!(
            !r.register_("one".into(), tx, KEEP).session_present,
            "evicted"
        );
        let (tx, _rx) = mpsc::channel(1);
        let two = r.register_("two".into(), tx, KEEP);
        assert!(two.session_present, "kept");
        r.unregister(two.session_id, &"two".into());

        save("short", Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(6)).await;
        let (tx, _rx) = mpsc::channel(1);
        assert!(
            !r.register_("short".into(), tx, KEEP).session_present,
            "expired"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        save("late", hour);
        assert_eq!(r.saved_count(), 1, "the expired ones were dropped");
        assert!(counters.snapshot().saved_sessions_expired_total >= 1);
    }
}
