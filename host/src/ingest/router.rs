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
//! the thousands of sessions a single node serves. A filter trie can replace it behind the same
//! API when that stops being true.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::counters::{bump, IngestCounters};
use crate::topic::topic_matches;

/// A message on its way to one session.
#[derive(Debug, Clone)]
pub(crate) struct Downlink {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: u8,
}

/// A session's subscriptions: (filter, granted QoS).
type Filters = Vec<(String, u8)>;

struct SessionEntry {
    client_id: Arc<str>,
    tx: mpsc::Sender<Downlink>,
    filters: Filters,
    /// Keep the subscriptions after the connection closes (clean session off).
    persistent: bool,
}

struct ClientSlot {
    session_id: u64,
    takeover: CancellationToken,
}

struct RouterInner {
    sessions: RwLock<HashMap<u64, SessionEntry>>,
    clients: Mutex<HashMap<Arc<str>, ClientSlot>>,
    /// Subscriptions of disconnected persistent sessions, by client id.
    saved: Mutex<HashMap<Arc<str>, Filters>>,
    next_id: AtomicU64,
    counters: Arc<IngestCounters>,
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
}

impl SessionRouter {
    /// A router with no sessions, counting into `counters`.
    pub fn new(counters: Arc<IngestCounters>) -> SessionRouter {
        SessionRouter {
            inner: Arc::new(RouterInner {
                sessions: RwLock::new(HashMap::new()),
                clients: Mutex::new(HashMap::new()),
                saved: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                counters,
            }),
        }
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
    /// token) to close, as MQTT requires. With `persistent` (clean session off) the session
    /// continues the previous one of that client id: its subscriptions carry over. Without it,
    /// any saved state of that client id is discarded.
    ///
    /// Lock order everywhere: `clients`, then `sessions`, then `saved`.
    pub(crate) fn register(
        &self,
        client_id: Arc<str>,
        tx: mpsc::Sender<Downlink>,
        persistent: bool,
    ) -> Registration {
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
        let carried = match previous {
            Some(old) => {
                old.takeover.cancel();
                // The old session stops receiving downlink now, not when its task gets to run.
                sessions
                    .remove(&old.session_id)
                    .filter(|e| e.persistent)
                    .map(|e| e.filters)
            }
            None => self
                .inner
                .saved
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&client_id),
        };
        let (filters, session_present) = match carried {
            Some(filters) if persistent => (filters, true),
            _ => (Vec::new(), false),
        };
        sessions.insert(
            session_id,
            SessionEntry {
                client_id,
                tx,
                filters,
                persistent,
            },
        );
        Registration {
            session_id,
            takeover,
            took_over,
            session_present,
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
        if let Some(entry) = entry.filter(|e| owner && e.persistent) {
            self.inner
                .saved
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(entry.client_id, entry.filters);
        }
    }

    /// Adds or replaces (same filter: new QoS) a subscription of a session.
    pub(crate) fn subscribe(&self, session_id: u64, filter: &str, qos: u8) {
        let mut sessions = self
            .inner
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = sessions.get_mut(&session_id) {
            if let Some(existing) = entry.filters.iter_mut().find(|(f, _)| f == filter) {
                existing.1 = qos;
            } else {
                entry.filters.push((filter.to_owned(), qos));
            }
        }
    }

    /// Removes a subscription; true when it existed.
    pub(crate) fn unsubscribe(&self, session_id: u64, filter: &str) -> bool {
        let mut sessions = self
            .inner
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = sessions.get_mut(&session_id) else {
            return false;
        };
        let before = entry.filters.len();
        entry.filters.retain(|(f, _)| f != filter);
        entry.filters.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> (SessionRouter, Arc<IngestCounters>) {
        let counters = Arc::new(IngestCounters::default());
        (SessionRouter::new(counters.clone()), counters)
    }

    #[tokio::test]
    async fn delivers_once_per_matching_session_at_granted_qos() {
        let (r, counters) = router();
        let (tx1, mut rx1) = mpsc::channel(8);
        let (tx2, mut rx2) = mpsc::channel(8);
        let s1 = r.register("a".into(), tx1, false);
        let s2 = r.register("b".into(), tx2, false);
        r.subscribe(s1.session_id, "/pk/+/user/#", 1);
        r.subscribe(s1.session_id, "#", 0);
        r.subscribe(s2.session_id, "other", 1);

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
        assert!(r.unsubscribe(s1.session_id, "#"));
        assert!(!r.unsubscribe(s1.session_id, "#"));
        assert_eq!(r.publish("nobody/listens", Bytes::new(), 1), 0);
        assert_eq!(counters.snapshot().downlink_total, 2);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_blocking_others() {
        let (r, counters) = router();
        let (slow_tx, _slow_rx) = mpsc::channel(1);
        let (fast_tx, mut fast_rx) = mpsc::channel(16);
        let slow = r.register("slow".into(), slow_tx, false);
        let fast = r.register("fast".into(), fast_tx, false);
        r.subscribe(slow.session_id, "t", 1);
        r.subscribe(fast.session_id, "t", 1);
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
        let first = r.register(client.clone(), tx1, false);
        assert!(!first.took_over);
        let second = r.register(client.clone(), tx2, false);
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
        let first = r.register(client.clone(), tx, true);
        assert!(!first.session_present);
        r.subscribe(first.session_id, "down/#", 1);
        r.unregister(first.session_id, &client);

        let (tx, mut rx) = mpsc::channel(4);
        let second = r.register(client.clone(), tx, true);
        assert!(second.session_present, "subscriptions were restored");
        assert_eq!(r.publish("down/x", Bytes::from_static(b"1"), 1), 1);
        assert_eq!(&*rx.recv().await.unwrap().topic, "down/x");

        // Takeover of a live persistent session carries the subscriptions too.
        let (tx, _rx3) = mpsc::channel(4);
        let third = r.register(client.clone(), tx, true);
        assert!(third.session_present && third.took_over);
        assert_eq!(r.publish("down/y", Bytes::new(), 0), 1);
        r.unregister(third.session_id, &client);

        // A clean session discards the saved state.
        let (tx, _rx4) = mpsc::channel(4);
        let clean = r.register(client.clone(), tx, false);
        assert!(!clean.session_present);
        assert_eq!(r.publish("down/z", Bytes::new(), 0), 0);
        r.unregister(clean.session_id, &client);
        let (tx, _rx5) = mpsc::channel(4);
        assert!(!r.register(client, tx, true).session_present);
    }
}
