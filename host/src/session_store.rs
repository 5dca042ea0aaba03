//! Persistent MQTT sessions and the downlink kept for them, as store records: where the
//! listener's [`SessionStore`] seam meets the store (neither knows the other).
//!
//! - [`SESSIONS`]: one record per session, keyed by a digest of its client id (client ids may
//!   hold any character; the digest is a valid record key on both backends), holding the client
//!   id, the device, the subscriptions and the expiry.
//! - [`KEPT`]: one record per kept message, `{session key}/{message id}`, so a session's
//!   messages are one key range, in the order they were kept.
//!
//! Each call is one commit (SQLite) or one key-value write per record (JetStream).

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ingest::keep::{kept_id, KeepError, KeptMessage, SavedState, SessionStore, StoreFuture};
use crate::ingest::{DeviceIdentity, IngestCounters};
use crate::store::{Record, Store, StoreError};

/// The record kind of saved sessions.
pub const SESSIONS: &str = "mqtt_sessions";
/// The record kind of kept downlink messages.
pub const KEPT: &str = "mqtt_kept";
/// Default most undelivered messages kept for one session.
pub const DEFAULT_MAX_KEPT_PER_SESSION: usize = 1000;

/// Sessions and kept messages on a [`Store`].
#[derive(Debug, Clone)]
pub struct StoredSessions {
    store: Store,
    max_kept: usize,
    counters: std::sync::Arc<IngestCounters>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SessionDoc {
    client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    product_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_name: Option<String>,
    filters: Vec<(String, u8)>,
    expiry_secs: u64,
    #[serde(default)]
    closed_at_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct KeptDoc {
    topic: String,
    payload_base64: String,
    #[serde(default)]
    dup: bool,
    expires_at_ms: u64,
}

/// The record key of a client id's session: 32 hex digits of its SHA-256.
fn session_key(client_id: &str) -> String {
    hex::encode(&Sha256::digest(client_id.as_bytes())[..16])
}

fn storage(e: StoreError) -> KeepError {
    KeepError::Storage(e.to_string())
}

fn corrupt(kind: &str, key: &str, e: impl std::fmt::Display) -> KeepError {
    KeepError::Storage(format!("record {kind}/{key} is not readable: {e}"))
}

impl StoredSessions {
    /// Sessions on `store`, at most `max_kept` undelivered messages per session; expired kept
    /// messages are counted into `counters`.
    pub fn new(
        store: Store,
        max_kept: usize,
        counters: std::sync::Arc<IngestCounters>,
    ) -> StoredSessions {
        StoredSessions {
            store,
            max_kept,
            counters,
        }
    }

    async fn load_sessions(&self) -> Result<Vec<SavedState>, KeepError> {
        let records = self.store.list_records(SESSIONS).await.map_err(storage)?;
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let d: SessionDoc =
                serde_json::from_str(&r.value).map_err(|e| corrupt(SESSIONS, &r.key, e))?;
            let identity = match (d.product_key, d.device_name) {
                (Some(product_key), Some(device_name)) => Some(DeviceIdentity {
                    product_key,
                    device_name,
                }),
                _ => None,
            };
            out.push(SavedState {
                client_id: d.client_id,
                identity,
                filters: d.filters,
                expiry_secs: d.expiry_secs,
                closed_at_ms: d.closed_at_ms,
            });
        }
        Ok(out)
    }

    /// Deletes kept messages whose session is gone (it was removed while a message was being
    /// kept for it), so nothing is kept for good; called at start. A message kept in the last
    /// minute is left alone: on a shared store another process may be keeping it for a session
    /// it has just saved.
    pub async fn drop_orphans(&self) -> Result<(), KeepError> {
        let live: std::collections::HashSet<String> = self
            .load_sessions()
            .await?
            .iter()
            .map(|s| session_key(&s.client_id))
            .collect();
        let recent = kept_id(crate::ingest::now_ms().saturating_sub(60_000));
        let orphans: Vec<String> = self
            .store
            .list_records(KEPT)
            .await
            .map_err(storage)?
            .into_iter()
            .map(|r| r.key)
            .filter(|k| {
                let (session, id) = k.split_once('/').unwrap_or((k, ""));
                !live.contains(session) && id < recent.as_str()
            })
            .collect();
        if !orphans.is_empty() {
            tracing::info!(
                messages = orphans.len(),
                "dropping kept downlink messages of sessions that no longer exist"
            );
            self.store
                .delete_records(KEPT, &orphans)
                .await
                .map_err(storage)?;
        }
        Ok(())
    }

    async fn save_session(&self, s: &SavedState) -> Result<(), KeepError> {
        let doc = SessionDoc {
            client_id: s.client_id.clone(),
            product_key: s.identity.as_ref().map(|i| i.product_key.clone()),
            device_name: s.identity.as_ref().map(|i| i.device_name.clone()),
            filters: s.filters.clone(),
            expiry_secs: s.expiry_secs,
            closed_at_ms: s.closed_at_ms,
        };
        let value = serde_json::to_string(&doc).map_err(|e| KeepError::Storage(e.to_string()))?;
        self.store
            .put_record(
                SESSIONS,
                Record {
                    key: session_key(&s.client_id),
                    value,
                },
            )
            .await
            .map_err(storage)
    }

    async fn remove_session(&self, client_id: &str) -> Result<(), KeepError> {
        let key = session_key(client_id);
        self.store
            .delete_records_under(KEPT, &key)
            .await
            .map_err(storage)?;
        self.store
            .delete_record(SESSIONS, &key)
            .await
            .map_err(storage)?;
        Ok(())
    }

    async fn keep_message(&self, client_id: &str, m: &KeptMessage) -> Result<(), KeepError> {
        let parent = session_key(client_id);
        let key = format!("{parent}/{}", m.id);
        let exists = self
            .store
            .get_record(KEPT, &key)
            .await
            .map_err(storage)?
            .is_some();
        if !exists {
            let held = self
                .store
                .count_records_under(KEPT, &parent)
                .await
                .map_err(storage)?;
            if held >= self.max_kept {
                return Err(KeepError::Full {
                    client_id: client_id.to_owned(),
                    max: self.max_kept,
                });
            }
        }
        let doc = KeptDoc {
            topic: m.topic.clone(),
            payload_base64: base64::engine::general_purpose::STANDARD.encode(&m.payload),
            dup: m.dup,
            expires_at_ms: m.expires_at_ms,
        };
        let value = serde_json::to_string(&doc).map_err(|e| KeepError::Storage(e.to_string()))?;
        self.store
            .put_record(KEPT, Record { key, value })
            .await
            .map_err(storage)
    }

    async fn kept_messages(&self, client_id: &str) -> Result<Vec<KeptMessage>, KeepError> {
        let parent = session_key(client_id);
        let records = self
            .store
            .list_records_under(KEPT, &parent)
            .await
            .map_err(storage)?;
        let now = crate::ingest::now_ms();
        let (mut out, mut expired) = (Vec::with_capacity(records.len()), Vec::new());
        for r in records {
            let d: KeptDoc =
                serde_json::from_str(&r.value).map_err(|e| corrupt(KEPT, &r.key, e))?;
            if d.expires_at_ms <= now {
                expired.push(r.key);
                continue;
            }
            let payload = base64::engine::general_purpose::STANDARD
                .decode(d.payload_base64.as_bytes())
                .map_err(|e| corrupt(KEPT, &r.key, e))?;
            let id = r.key[parent.len() + 1..].to_owned();
            out.push(KeptMessage {
                id,
                topic: d.topic,
                payload: Bytes::from(payload),
                dup: d.dup,
                expires_at_ms: d.expires_at_ms,
            });
        }
        if !expired.is_empty() {
            self.counters
                .offline_expired_total
                .fetch_add(expired.len() as u64, std::sync::atomic::Ordering::Relaxed);
            self.store
                .delete_records(KEPT, &expired)
                .await
                .map_err(storage)?;
        }
        Ok(out)
    }

    async fn forget_messages(&self, client_id: &str, ids: &[String]) -> Result<(), KeepError> {
        let parent = session_key(client_id);
        let keys: Vec<String> = ids.iter().map(|id| format!("{parent}/{id}")).collect();
        self.store
            .delete_records(KEPT, &keys)
            .await
            .map_err(storage)?;
        Ok(())
    }
}

impl SessionStore for StoredSessions {
    fn sessions(&self) -> StoreFuture<'_, Vec<SavedState>> {
        Box::pin(self.load_sessions())
    }

    fn save<'a>(&'a self, state: &'a SavedState) -> StoreFuture<'a, ()> {
        Box::pin(self.save_session(state))
    }

    fn remove<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(self.remove_session(client_id))
    }

    fn keep<'a>(&'a self, client_id: &'a str, message: &'a KeptMessage) -> StoreFuture<'a, ()> {
        Box::pin(self.keep_message(client_id, message))
    }

    fn kept<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, Vec<KeptMessage>> {
        Box::pin(self.kept_messages(client_id))
    }

    fn forget<'a>(&'a self, client_id: &'a str, ids: &'a [String]) -> StoreFuture<'a, ()> {
        Box::pin(self.forget_messages(client_id, ids))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::StoreOptions;

    fn message(id: &str, expires_at_ms: u64) -> KeptMessage {
        KeptMessage {
            id: id.into(),
            topic: "/pk/dn/user/get".into(),
            payload: Bytes::from_static(b"\x00bin\xff"),
            dup: false,
            expires_at_ms,
        }
    }

    #[tokio::test]
    async fn sessions_and_kept_messages_round_trip_and_stay_bounded() {
        // Proves the record mapping on a real SQLite store: a saved session reads back whole,
        // kept messages come back in order with binary payloads intact, the per-session cap
        // refuses a new message but lets one be replaced, expired messages are dropped and
        // counted, forget and remove delete what they name and nothing of other sessions.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let counters = Arc::new(IngestCounters::default());
        let s = StoredSessions::new(store.clone(), 2, counters.clone());
        let state = SavedState {
            client_id: "pk.dn|securemode=2,signmethod=hmacsha256|".into(),
            identity: Some(DeviceIdentity {
                product_key: "pk".into(),
                device_name: "dn".into(),
            }),
            filters: vec![("/pk/dn/user/#".into(), 1)],
            expiry_secs: 3600,
            closed_at_ms: Some(5),
        };
        s.save(&state).await.unwrap();
        let other = SavedState {
            client_id: "other".into(),
            identity: None,
            closed_at_ms: None,
            ..state.clone()
        };
        s.save(&other).await.unwrap();
        let mut loaded = s.sessions().await.unwrap();
        loaded.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        assert_eq!(loaded, vec![other.clone(), state.clone()]);

        let id = &state.client_id;
        let far = u64::MAX / 2;
        s.keep(id, &message("002", far)).await.unwrap();
        s.keep(id, &message("001", far)).await.unwrap();
        s.keep("other", &message("001", far)).await.unwrap();
        assert!(matches!(
            s.keep(id, &message("003", far)).await,
            Err(KeepError::Full { max: 2, .. })
        ));
        let mut dup = message("001", far);
        dup.dup = true;
        s.keep(id, &dup).await.unwrap();
        let kept = s.kept(id).await.unwrap();
        assert_eq!(kept, vec![dup.clone(), message("002", far)]);

        s.forget(id, &["001".into()]).await.unwrap();
        s.keep(id, &message("004", 1)).await.unwrap();
        assert_eq!(s.kept(id).await.unwrap(), vec![message("002", far)]);
        assert_eq!(counters.snapshot().offline_expired_total, 1);

        s.remove(id).await.unwrap();
        assert!(s.kept(id).await.unwrap().is_empty());
        assert_eq!(s.kept("other").await.unwrap().len(), 1);
        assert_eq!(s.sessions().await.unwrap(), vec![other]);
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_router_on_the_store_restores_sessions_and_forgets_evicted_ones() {
        // Proves the router and the store together: a persistent session written by one
        // router is restored by the next on the same store (session present, downlink kept for
        // it while away), and a session evicted past the saved-session cap is removed from the
        // store with its kept messages.
        use crate::ingest::router::{RouterLimits, SessionRouter};
        use tokio::sync::mpsc;
        use tokio_util::sync::CancellationToken;

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let device = DeviceIdentity {
            product_key: "pk".into(),
            device_name: "dn".into(),
        };
        let limits = RouterLimits {
            max_saved_sessions: 1,
            ..RouterLimits::default()
        };
        let start = |store: Store| {
            let counters = Arc::new(IngestCounters::default());
            let router = SessionRouter::with_limits(counters.clone(), limits);
            let sessions = StoredSessions::new(store, 10, counters);
            (router, sessions)
        };
        let keep = Some(std::time::Duration::from_secs(3600));
        let persist = |router: &SessionRouter| {
            let stop = CancellationToken::new();
            (tokio::spawn(router.clone().persist(stop.clone())), stop)
        };

        let (router, sessions) = start(store.clone());
        router.attach_store(Arc::new(sessions));
        let (task, stop) = persist(&router);
        let (tx, _rx) = mpsc::channel(4);
        let client: Arc<str> = "pk.dn|securemode=2|".into();
        let reg = router.register(client.clone(), Some(device.clone()), tx, keep);
        router.subscribe(reg.session_id, &[("/pk/dn/user/#", 1)]);
        router.unregister(reg.session_id, &client);
        let kept = router
            .keep_for_offline(&device, "/pk/dn/user/get", Bytes::from_static(b"m1"))
            .await
            .unwrap();
        assert_eq!(kept, 1);
        stop.cancel();
        task.await.unwrap();

        let (router, sessions) = start(store.clone());
        let saved = sessions.sessions().await.unwrap();
        assert_eq!(saved.len(), 1);
        assert!(saved[0].closed_at_ms.is_some());
        router.attach_store(Arc::new(sessions.clone()));
        router.restore(saved);
        let (task, stop) = persist(&router);
        let (tx, _rx) = mpsc::channel(4);
        let back = router.register(client.clone(), Some(device.clone()), tx, keep);
        assert!(back.session_present, "restored from the store");
        let kept = sessions.kept(&client).await.unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(&kept[0].payload[..], b"m1");
        router.unregister(back.session_id, &client);

        // A second device's session takes the only saved place: the first goes, kept
        // messages and all.
        let (tx, _rx) = mpsc::channel(4);
        let other: Arc<str> = "other".into();
        let reg = router.register(other.clone(), None, tx, keep);
        router.unregister(reg.session_id, &other);
        stop.cancel();
        task.await.unwrap();
        let left: Vec<String> = sessions
            .sessions()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.client_id)
            .collect();
        assert_eq!(left, vec!["other".to_string()]);
        assert!(store.list_records(KEPT).await.unwrap().is_empty());
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn kept_messages_of_removed_sessions_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let s = StoredSessions::new(store.clone(), 10, Arc::new(IngestCounters::default()));
        s.keep("gone", &message("001", u64::MAX / 2)).await.unwrap();
        let fresh = kept_id(crate::ingest::now_ms());
        s.keep("gone", &message(&fresh, u64::MAX / 2))
            .await
            .unwrap();
        s.drop_orphans().await.unwrap();
        let left = store.list_records(KEPT).await.unwrap();
        assert_eq!(
            left.len(),
            1,
            "a message kept this minute may belong to a session just saved"
        );
        assert!(left[0].key.ends_with(&fresh));
        store.close().await.unwrap();
    }
}
