//! What persistent sessions leave behind, and where it is kept.
//!
//! A device that connects with a persistent session (MQTT 3.1.1 with the clean-session flag off,
//! MQTT 5 with a session expiry above 0) keeps its subscriptions while it is away, and QoS 1 downlink sent to it
//! meanwhile is kept and delivered, in order, when it comes back. The listener keeps the live
//! view in memory (the router); a [`SessionStore`] makes it durable, so sessions and their kept
//! messages survive a restart or a crash. Ingest knows the store only through this trait; `sluice
//! serve` joins in the real one (`crate::session_store`).

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use super::DeviceIdentity;

/// A boxed future of the store, so the trait can be used as `dyn SessionStore`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KeepError>> + Send + 'a>>;

/// A persistent session as it is saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedState {
    /// Its MQTT client id.
    pub client_id: String,
    /// The device it is signed in as, when it is one.
    pub identity: Option<DeviceIdentity>,
    /// Its subscriptions: filter and granted QoS.
    pub filters: Vec<(String, u8)>,
    /// How long it is kept after its connection closes, in seconds.
    pub expiry_secs: u64,
    /// When its connection closed (ms since the epoch); `None` while it is connected. A session
    /// saved as connected and found so at start was cut off by a crash: it counts as closed at
    /// start.
    pub closed_at_ms: Option<u64>,
}

/// One QoS 1 message kept for a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptMessage {
    /// Orders the session's messages and names this one: fixed-width, so text order is the
    /// order they were kept in.
    pub id: String,
    /// The full topic.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// True when it may have reached the device already (it was in flight at a disconnect): it
    /// is resent with the DUP flag.
    pub dup: bool,
    /// Dropped unsent after this time (ms since the epoch).
    pub expires_at_ms: u64,
}

/// Why the store did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeepError {
    /// The session holds as many kept messages as allowed.
    #[error("session `{client_id}` already holds {max} undelivered messages, the most kept for one session")]
    Full {
        /// The session.
        client_id: String,
        /// The cap.
        max: usize,
    },
    /// The store failed.
    #[error("storage: {0}")]
    Storage(String),
}

/// Where persistent sessions and their kept messages are durable. Every method commits before it
/// returns.
pub trait SessionStore: Send + Sync + 'static {
    /// Every saved session, read at start.
    fn sessions(&self) -> StoreFuture<'_, Vec<SavedState>>;
    /// Writes a session's state, replacing what was saved for its client id.
    fn save<'a>(&'a self, state: &'a SavedState) -> StoreFuture<'a, ()>;
    /// Removes a session and every message kept for it.
    fn remove<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, ()>;
    /// Keeps (or, same id, replaces) a message for a session; a new one is refused with
    /// [`KeepError::Full`] past the per-session cap.
    fn keep<'a>(&'a self, client_id: &'a str, message: &'a KeptMessage) -> StoreFuture<'a, ()>;
    /// The session's kept messages, oldest first; those past their retention are dropped and
    /// counted instead.
    fn kept<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, Vec<KeptMessage>>;
    /// The device acknowledged these kept messages: forget them.
    fn forget<'a>(&'a self, client_id: &'a str, ids: &'a [String]) -> StoreFuture<'a, ()>;
}

/// A new kept-message id: the time in ms and a per-process sequence, fixed width, so ids sort
/// in the order messages were kept (across restarts too, the clock permitting).
pub fn kept_id(now_ms: u64) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed) % 1_000_000;
    format!("{now_ms:015}{seq:06}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_ids_sort_in_the_order_they_were_made() {
        let a = kept_id(1_700_000_000_000);
        let b = kept_id(1_700_000_000_000);
        let c = kept_id(1_700_000_000_001);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_eq!(a.len(), 21);
    }
}
