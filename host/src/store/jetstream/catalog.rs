//! The catalog (topics, queues, subscriptions) in replicated JetStream key-value buckets, with a
//! local copy kept current by a watcher per bucket.
//!
//! Every sluice process of a cluster reads the same buckets, so a queue created through one is
//! known to all. Reads come from the local copy (a publish resolves its topic's subscriptions
//! without a round trip); a write waits until this process's watcher has applied it, so a
//! process always reads its own writes. Another process sees a change as soon as its watcher
//! does (milliseconds on a healthy cluster).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation};
use async_nats::jetstream::stream::StorageType;
use async_nats::jetstream::Context;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::unavailable;
use crate::store::{QueueAttributes, Result, StoreError, SubscriptionSpec};

/// How long a write waits for the local watcher to show it before it is called a failure.
const CATCH_UP: Duration = Duration::from_secs(10);
/// Compare-and-set rounds of [`Bucket::update`] before it gives up on a record under contention.
const UPDATE_ATTEMPTS: usize = 16;

/// A topic's catalog entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct TopicRecord {
    pub create_time_ms: u64,
}

/// A queue's catalog entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct QueueRecord {
    pub attributes: QueueAttributes,
    pub create_time_ms: u64,
}

/// A subscription's catalog entry (key `topic.name`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SubRecord {
    pub topic: String,
    pub name: String,
    pub spec: SubscriptionSpec,
    pub create_time_ms: u64,
    /// The push state of an HTTP subscription (absent for queue subscriptions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushState>,
}

/// What every process pushing an HTTP subscription must agree on: its id, whether it is
/// pushed, and the signing secrets.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct PushState {
    pub id: i64,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub secret: String,
    pub old_secret: Option<(String, u64)>,
}

impl std::fmt::Debug for PushState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushState")
            .field("id", &self.id)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// One process's delivery counters of one HTTP subscription (key `topic.name.node`): each
/// process writes only its own entry, `sub show` adds them up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct PushStats {
    pub delivered: u64,
    pub failed: u64,
    pub dropped: u64,
    pub dead_lettered: u64,
    pub last_error: Option<(String, u64)>,
}

/// One process's count of a queue's messages moved to its dead-letter queue (key
/// `queue.node`): each process bumps only its own entry, queue info adds them up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct QueueStats {
    pub dead_lettered: u64,
}

/// The catalog buckets.
#[derive(Debug)]
pub(super) struct Catalog {
    pub topics: Bucket<TopicRecord>,
    pub queues: Bucket<QueueRecord>,
    pub subs: Bucket<SubRecord>,
    pub push_stats: Bucket<PushStats>,
    pub queue_stats: Bucket<QueueStats>,
}

impl Catalog {
    pub(super) async fn open(js: &Context, prefix: &str, replicas: usize) -> Result<Catalog> {
        Ok(Catalog {
            topics: Bucket::open(js, format!("{prefix}_topics"), replicas).await?,
            queues: Bucket::open(js, format!("{prefix}_queues"), replicas).await?,
            subs: Bucket::open(js, format!("{prefix}_subscriptions"), replicas).await?,
            push_stats: Bucket::open(js, format!("{prefix}_push_stats"), replicas).await?,
            queue_stats: Bucket::open(js, format!("{prefix}_queue_stats"), replicas).await?,
        })
    }
}

/// A key no record uses: [`open_bucket`] reads it to learn that the bucket answers reads.
const READY_PROBE: &str = "sluice-ready-probe";

/// Opens a bucket, creating it when missing (two processes racing to create it both succeed),
/// and returns it once it answers reads. Reads are direct gets, answered by the bucket's
/// replicas, which start answering a moment after the stream exists: until then a read fails
/// with "no responders" (seen as the first read of the admin key failing a start on a fresh
/// cluster). The failure is [`StoreError::Unavailable`], which the start retries.
pub(super) async fn open_bucket(js: &Context, name: &str, replicas: usize) -> Result<kv::Store> {
    let kv = find_or_create_bucket(js, name, replicas).await?;
    kv.get(READY_PROBE)
        .await
        .map_err(|e| unavailable(format!("reading from key-value bucket {name}"), e))?;
    Ok(kv)
}

async fn find_or_create_bucket(js: &Context, name: &str, replicas: usize) -> Result<kv::Store> {
    if let Ok(kv) = js.get_key_value(name).await {
        return Ok(kv);
    }
    let config = kv::Config {
        bucket: name.to_owned(),
        history: 1,
        storage: StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    match js.create_key_value(config).await {
        Ok(kv) => Ok(kv),
        Err(created) => js
            .get_key_value(name)
            .await
            .map_err(|_| unavailable(format!("key-value bucket {name}"), created)),
    }
}

/// One bucket of JSON records and its local copy.
pub(super) struct Bucket<T> {
    name: String,
    kv: kv::Store,
    cache: Arc<RwLock<BTreeMap<String, T>>>,
    applied: watch::Receiver<u64>,
    follower: tokio::task::JoinHandle<()>,
}

impl<T> std::fmt::Debug for Bucket<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket").field("name", &self.name).finish()
    }
}

impl<T> Drop for Bucket<T> {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl<T> Bucket<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    pub(super) async fn open(js: &Context, name: String, replicas: usize) -> Result<Bucket<T>> {
        let kv = open_bucket(js, &name, replicas).await?;
        let last = last_revision(&kv, &name).await?;
        let cache: Arc<RwLock<BTreeMap<String, T>>> = Arc::default();
        let (applied_tx, applied) = watch::channel(0u64);
        let follower = tokio::spawn(follow(kv.clone(), cache.clone(), applied_tx));
        let bucket = Bucket {
            name,
            kv,
            cache,
            applied,
            follower,
        };
        bucket.caught_up(last).await?;
        Ok(bucket)
    }

    /// The record under `key`, from the local copy.
    pub(super) fn get(&self, key: &str) -> Option<T> {
        self.read().get(key).cloned()
    }

    /// Every record, by key.
    pub(super) fn all(&self) -> Vec<(String, T)> {
        self.read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The first record `f` picks, read in place (no copy of the other records).
    pub(super) fn find_map<R>(&self, f: impl FnMut((&String, &T)) -> Option<R>) -> Option<R> {
        self.read().iter().find_map(f)
    }

    /// The records whose keys start with `prefix`, by key (a range of the local copy, not a
    /// scan: a publish resolves its topic's subscriptions this way).
    pub(super) fn with_prefix(&self, prefix: &str) -> Vec<(String, T)> {
        self.read()
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The record under `key`, read from the cluster (for a key another process may have just
    /// written, before this process's watcher shows it).
    pub(super) async fn fetch(&self, key: &str) -> Result<Option<T>> {
        if let Some(v) = self.get(key) {
            return Ok(Some(v));
        }
        let raw = self
            .kv
            .get(key)
            .await
            .map_err(|e| unavailable(format!("reading {key} from {}", self.name), e))?;
        raw.map(|b| decode(&self.name, &b)).transpose()
    }

    /// Creates `key`; when it exists, returns the record already there instead.
    pub(super) async fn create(&self, key: &str, value: &T) -> Result<Option<T>> {
        match self.kv.create(key, encode(value)?).await {
            Ok(revision) => {
                self.caught_up(revision).await?;
                Ok(None)
            }
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => match self.fetch(key).await? {
                Some(existing) => Ok(Some(existing)),
                None => Err(StoreError::Unavailable(format!(
                    "{key} in {} was deleted while being created; retry",
                    self.name
                ))),
            },
            Err(e) => Err(unavailable(format!("writing {key} to {}", self.name), e)),
        }
    }

    /// Writes `key` (created or replaced).
    pub(super) async fn put(&self, key: &str, value: &T) -> Result<()> {
        let revision = self
            .kv
            .put(key, encode(value)?)
            .await
            .map_err(|e| unavailable(format!("writing {key} to {}", self.name), e))?;
        self.caught_up(revision).await
    }

    /// Changes the record under `key` with `change` as one compare-and-set (two processes
    /// changing the same record never lose one of the changes): reads it from the cluster,
    /// applies `change`, writes it only if nobody wrote in between, else starts over. Returns
    /// the record as written, or `None` when `key` does not exist.
    pub(super) async fn update(
        &self,
        key: &str,
        mut change: impl FnMut(&mut T) -> Result<()>,
    ) -> Result<Option<T>> {
        for _ in 0..UPDATE_ATTEMPTS {
            let entry = self
                .kv
                .entry(key)
                .await
                .map_err(|e| unavailable(format!("reading {key} from {}", self.name), e))?;
            let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
                return Ok(None);
            };
            let mut value: T = decode(&self.name, &entry.value)?;
            change(&mut value)?;
            match self.kv.update(key, encode(&value)?, entry.revision).await {
                Ok(revision) => {
                    self.caught_up(revision).await?;
                    return Ok(Some(value));
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(unavailable(format!("writing {key} to {}", self.name), e)),
            }
        }
        Err(StoreError::Unavailable(format!(
            "{key} in {} kept changing under this update; retry",
            self.name
        )))
    }

    /// The revision the local copy has reached: changes when any record changes (the push
    /// supervisor re-reads the subscriptions then).
    pub(super) fn changes(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Removes `key` (a no-op when it is absent).
    pub(super) async fn delete(&self, key: &str) -> Result<()> {
        self.kv
            .delete(key)
            .await
            .map_err(|e| unavailable(format!("deleting {key} from {}", self.name), e))?;
        let last = last_revision(&self.kv, &self.name).await?;
        self.caught_up(last).await
    }

    /// Waits until the local copy includes revision `revision` of the bucket.
    async fn caught_up(&self, revision: u64) -> Result<()> {
        let mut applied = self.applied.clone();
        let reached = tokio::time::timeout(CATCH_UP, applied.wait_for(|&a| a >= revision))
            .await
            .is_ok_and(|r| r.is_ok());
        match reached {
            true => Ok(()),
            false => Err(StoreError::Unavailable(format!(
                "the catalog copy of {} did not reach revision {revision} within {}s",
                self.name,
                CATCH_UP.as_secs()
            ))),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, T>> {
        self.cache
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Applies every change of the bucket to the local copy, from the first revision on, and
/// resumes where it stopped when the watch breaks (a NATS node going away).
async fn follow<T: DeserializeOwned>(
    kv: kv::Store,
    cache: Arc<RwLock<BTreeMap<String, T>>>,
    applied: watch::Sender<u64>,
) {
    let mut next = 1u64;
    loop {
        if let Ok(mut changes) = kv.watch_all_from_revision(next).await {
            while let Some(Ok(entry)) = changes.next().await {
                {
                    let mut map = cache.write().unwrap_or_else(|p| p.into_inner());
                    match entry.operation {
                        Operation::Put => match serde_json::from_slice::<T>(&entry.value) {
                            Ok(v) => {
                                map.insert(entry.key.clone(), v);
                            }
                            Err(e) => tracing::warn!(
                                key = %entry.key,
                                error = %e,
                                "catalog entry is not readable; ignored"
                            ),
                        },
                        Operation::Delete | Operation::Purge => {
                            map.remove(&entry.key);
                        }
                    }
                }
                next = entry.revision + 1;
                applied.send_replace(entry.revision);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The bucket's latest revision, asked of the server (the client's cached status can be old).
async fn last_revision(kv: &kv::Store, name: &str) -> Result<u64> {
    let mut stream = kv.stream.clone();
    Ok(stream
        .info()
        .await
        .map_err(|e| unavailable(format!("key-value bucket {name}"), e))?
        .state
        .last_sequence)
}

fn encode<T: Serialize>(value: &T) -> Result<bytes::Bytes> {
    serde_json::to_vec(value)
        .map(bytes::Bytes::from)
        .map_err(|e| StoreError::Internal(e.to_string()))
}

fn decode<T: DeserializeOwned>(bucket: &str, raw: &[u8]) -> Result<T> {
    serde_json::from_slice(raw)
        .map_err(|e| StoreError::Internal(format!("unreadable entry in {bucket}: {e}")))
}
