//! The durable store: topics, subscriptions and queues on SQLite, with the semantics of
//! docs/message-service.md (visibility timeout, receipt handles, long polling, delay,
//! priority, retention, dead letters).
//!
//! # Shape
//! [`Store`] is a cheap `Clone` handle. Every change goes to **one writer thread** that owns the
//! write connection: it takes the first waiting request, drains up to `max_batch_requests` more
//! that are already queued, runs them in **one transaction** (each inside its own SAVEPOINT, so a
//! failed request is rolled back alone and never poisons the others), commits, and only then
//! answers each request (group commit: one fsync for many acknowledgements). At
//! `synchronous=FULL` the fsync runs on a sync thread and the answers wait for it (receives
//! excepted: a claim acknowledges nothing stored), while the writer goes on with the next
//! batch, keeping it open to take more requests as long as the disk is busy (`writer::syncer`).
//! Catalog reads
//! (topics, subscriptions) and backups use separate read connections (WAL readers never block
//! the writer), off the async runtime with `spawn_blocking`. Receive is a write (a claim).
//! `peek` and `get_queue`/`list_queues` also go to the writer, because the delivery order and
//! the visible / in-flight / delayed counts live in its in-memory index: there they cost a few
//! rowid lookups, on a read connection they would be full-table scans with a sort.
//!
//! # Schema (v1) and the claim path
//! - `topics`, `queues` (attributes as JSON, durable `expired_total` / `dead_lettered_total`
//!   counters), `subscriptions` (spec as JSON), `bodies(id, refs, body)`.
//! - **One table per queue**, `q_<queue id>`, keyed by `seq INTEGER PRIMARY KEY` (the rowid),
//!   with the delivery state first (`next_visible_ms, receipt_gen, dequeue_count,
//!   first_dequeue_ms, priority, enqueue_ms`) and the message after it (`message_id, body_md5,
//!   tag, attributes, origin, body_ref, body`). No secondary index: inserts, claims and deletes
//!   touch rows by rowid only, and the rowid order is the enqueue order, which the retention
//!   sweep walks from the front.
//! - A body is stored once: inline in the queue row when the message reaches one queue (a send,
//!   or a topic with one matching subscription — the common case, one row per message), else in
//!   `bodies` with a reference count that each queue row holds. Pending HTTP pushes hold
//!   references the same way from `push_pending` (schema v2, see [`push`]).
//! - The writer keeps, per queue, an **in-memory index**: the visible messages as a
//!   `BTreeSet<u64>` of `priority << 58 | seq` (so the first element is the next to deliver:
//!   priority 1 first, then oldest), and two `BTreeSet<(next_visible_ms, key)>` for in-flight and
//!   delayed messages, promoted to visible when their time comes. About 8–16 bytes plus B-tree
//!   overhead per queued message; bodies are never held. It is rebuilt from disk at open by one
//!   scan of each queue table's leading columns. A claim pops the first keys and runs one
//!   `UPDATE .. WHERE seq = ? RETURNING ..` each — no sort, no index on a changing column (that
//!   design measured ~3 k msg/s against ~90 k for rowid claims).
//! - Every in-memory change records an undo entry, so a request rolled back to its savepoint, or
//!   a batch whose COMMIT fails (disk full), leaves memory equal to disk.
//!
//! # Receipt handles
//! `base64url(seq ‖ gen)`: 22 characters of `[A-Za-z0-9_-]`. `gen` is a fresh random non-zero
//! 64-bit value per receive or visibility change, stored in the row, so a handle can neither be
//! forged nor guessed into another message; only the row's current `gen` with an unexpired lease
//! is accepted. Recently deleted `(seq, gen)` pairs are remembered (bounded, in memory until the
//! lease would have ended) so a second delete with the same handle also succeeds.
//!
//! # Long polling
//! Each queue has a `tokio::sync::Notify`. After a commit that made a message visible in a queue
//! (or brought its earliest next-visible time forward) the writer wakes that queue's waiters; a
//! waiter also sleeps only until the queue's earliest next-visible time (a delay or visibility
//! timeout ending) or its own deadline, whichever is first. The database is never polled.
//!
//! # Time
//! Every time decision reads the [`Clock`] of [`StoreOptions`]; [`SystemClock`] is anchored on
//! the wall clock at start and advances monotonically, so a wall-clock step while running does
//! not expire or stretch leases.
//!
//! # Limits and failures
//! A full disk (or `StoreOptions::max_db_bytes`, a soft cap on new messages that leaves headroom
//! for receives and deletes so consumers can drain) fails requests with
//! [`StoreError::StorageFull`]; nothing acknowledged is touched and the store recovers by
//! itself once space is free. Deleting a queue also deletes the subscriptions that deliver to
//! it. Measured on the 2-core dev machine (release, 250-byte bodies, FULL): ~190 k msg/s for
//! `publish_batch` of 64, ~160 k msg/s for single publishes from 256 tasks, receive 16 +
//! delete 16 ~50 k msg/s with 4 consumers and ~78 k with 16 (NORMAL: ~78 k / ~105 k).
//!
//! # Ownership
//! One process owns a data directory (`sluice.lock` is held with an exclusive file lock): the
//! in-memory index requires a single writer.

mod clock;
pub mod devices;
mod error;
mod index;
pub mod jetstream;
pub mod keys;
pub mod metrics;
pub mod push;
mod read;
mod receipt;
mod schema;
mod types;
mod writer;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod push_tests;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, watch, Notify};

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::StoreError;
pub use push::{
    ContentFormat, HttpPush, NotifyStrategy, PushCreated, PushCycle, PushDelivery, PushOutcome,
    PushResult, PushSignals, PushStatus, PushSubscription,
};
pub use types::QueueAttributesPatch;
pub use types::{
    validate_name, Attributes, DeadLetterOrigin, Endpoint, Message, PublishRequest, Published,
    QueueAttributes, QueueInfo, SendRequest, Sent, StoreOptions, SubscriptionInfo,
    SubscriptionSpec, Synchronous, TopicInfo, VisibilityChanged, DEFAULT_PRIORITY, MAX_BATCH,
    MAX_MESSAGE_SIZE_CAP, MAX_PUBLISH_UNIT, MAX_WAIT_SECONDS,
};

use types::check_range;
use writer::{Op, OpKind, Reply};

/// A publish unit with each message's [`writer::Digest`], computed on the caller's thread. The
/// attribute maps are dropped here too: the writer stores their JSON text, and a map freed on the
/// thread that built it is cheaper than one freed on the writer's.
fn digested(
    items: Vec<(String, PublishRequest)>,
) -> Result<Vec<(String, PublishRequest, writer::Digest)>> {
    items
        .into_iter()
        .map(|(topic, mut req)| {
            let digest = writer::Digest::of(&req.body, &req.attributes)?;
            req.attributes = BTreeMap::new();
            Ok((topic, req, digest))
        })
        .collect()
}

/// One message of a publish unit, lent by a caller that keeps it until the commit (the rule
/// pipeline's outputs, kept for a resend): the store copies only what it stores, and never the
/// attribute map (it stores the map's JSON text). Lent as the caller holds it, so no borrowed
/// copy of each unit is built per message.
pub trait PublishItem {
    /// The topic.
    fn topic(&self) -> &str;
    /// The body.
    fn body(&self) -> &Bytes;
    /// Source topic, device, rule, ingest time, ... (checked when built).
    fn attributes(&self) -> &Attributes;
}

/// A publish item made of borrowed parts.
#[derive(Debug, Clone, Copy)]
pub struct PublishRef<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The body.
    pub body: &'a Bytes,
    /// Source topic, device, rule, ingest time, ... (checked when built).
    pub attributes: &'a Attributes,
}

impl PublishItem for PublishRef<'_> {
    fn topic(&self) -> &str {
        self.topic
    }

    fn body(&self) -> &Bytes {
        self.body
    }

    fn attributes(&self) -> &Attributes {
        self.attributes
    }
}

/// An item as the JetStream backend publishes it (an attribute map).
fn to_request(item: &impl PublishItem) -> (String, PublishRequest) {
    (
        item.topic().to_owned(),
        PublishRequest {
            body: item.body().clone(),
            tag: None,
            attributes: item.attributes().to_map(),
        },
    )
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A unit of rule outputs on its way to JetStream.
type PendingUnit =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<Published>>> + Send>>;

/// Where [`Store::submit_publish_units`] queued its units.
enum Queued {
    /// One publish per unit.
    Nats(Vec<PendingUnit>),
    /// The writer's requests, with how many units each holds.
    Writer(Vec<(oneshot::Receiver<Result<Reply>>, usize)>),
}

/// Wakers of long polls, one per queue name; shared by the handles and the writer.
pub(crate) type Notifiers = Arc<Mutex<HashMap<String, Arc<QueueWaker>>>>;

/// What a queue's long polls wait on between claims.
#[derive(Debug)]
pub(crate) struct QueueWaker {
    /// Notified once per message that became visible (one waiter each, so one new message
    /// sends one poll to the writer), or for every waiter when the queue closes or goes.
    pub visible: Notify,
    /// The earliest time a message of the queue becomes visible (a lease or delay ending), ms:
    /// a waiter re-arms its timer on a change without going to the writer.
    pub earliest: watch::Sender<Option<u64>>,
}

impl Default for QueueWaker {
    fn default() -> QueueWaker {
        QueueWaker {
            visible: Notify::new(),
            earliest: watch::channel(None).0,
        }
    }
}

/// A handle on the durable store. Cheap to clone; all clones share one writer thread.
///
/// Every method that stores, changes or removes something answers only after its transaction
/// committed; a receive's claim, which acknowledges nothing, is answered as soon as it is made
/// (a claim lost to a crash only makes its messages visible again).
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: Option<writer::Lanes>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: read::ReadPool,
    notifiers: Notifiers,
    commits: watch::Receiver<u64>,
    clock: Arc<dyn Clock>,
    db_path: PathBuf,
    size_cap: u32,
    push_signals: Arc<push::PushSignals>,
    counters: Arc<metrics::StoreCounters>,
    /// When set, the catalog (topics, subscriptions, queues, devices, keys, rules), messages and
    /// pending pushes live on this JetStream cluster; the SQLite file is then unused but for
    /// the data directory's lock and schema.
    jetstream: Option<jetstream::JetStream>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel makes the writer finish its batch and exit; joining it releases the
        // data directory lock before the last handle is gone, so a reopen right after works.
        self.tx.take();
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir`: the directory 0700, `sluice.db` 0600,
    /// WAL, the chosen `synchronous`, `PRAGMA quick_check`, migrations to the current schema,
    /// then starts the writer thread with the in-memory index rebuilt from disk.
    ///
    /// Synchronous: call it before serving. Fails with a clear error naming the path when the
    /// directory is unwritable, another process owns it, or the file is damaged.
    pub fn open(data_dir: &Path, opts: StoreOptions) -> Result<Store> {
        Store::open_backed(data_dir, opts, None)
    }

    /// [`Store::open`] with everything shared on a JetStream cluster: the catalog, messages and
    /// pending pushes go to `jetstream`, so several processes serve one fleet; `data_dir`
    /// stays this process's own (its lock, its credentials file).
    pub fn open_with_jetstream(
        data_dir: &Path,
        opts: StoreOptions,
        jetstream: jetstream::JetStream,
    ) -> Result<Store> {
        Store::open_backed(data_dir, opts, Some(jetstream))
    }

    fn open_backed(
        data_dir: &Path,
        opts: StoreOptions,
        jetstream: Option<jetstream::JetStream>,
    ) -> Result<Store> {
        let paths = types::StorePaths::new(data_dir);
        let opened = schema::open(&paths, &opts)?;
        let notifiers: Notifiers = Arc::default();
        let (commit_tx, commit_rx) = watch::channel(0u64);
        // On JetStream the push supervisor is woken by the shared catalog, not by local commits.
        let push_signals = jetstream
            .as_ref()
            .map(|js| js.push_signals())
            .unwrap_or_default();
        // On JetStream the message plane counts its own operations; the writer then only counts
        // the local commits.
        let counters = jetstream
            .as_ref()
            .map(|js| js.counters().clone())
            .unwrap_or_default();
        let (tx, thread) = writer::spawn(
            opened,
            &paths,
            &opts,
            notifiers.clone(),
            commit_tx,
            push_signals.clone(),
            counters.clone(),
        )?;
        Ok(Store {
            inner: Arc::new(Inner {
                tx: Some(tx),
                thread: Mutex::new(Some(thread)),
                readers: read::ReadPool::new(paths.db.clone(), opts.busy_timeout),
                notifiers,
                commits: commit_rx,
                clock: opts.clock.clone(),
                db_path: paths.db,
                size_cap: opts.message_size_cap.clamp(1024, MAX_MESSAGE_SIZE_CAP),
                push_signals,
                counters,
                jetstream,
            }),
        })
    }

    /// The JetStream backend, when the message plane lives there.
    fn nats(&self) -> Option<&jetstream::JetStream> {
        self.inner.jetstream.as_ref()
    }

    /// On JetStream, the revisions of the shared devices, keys and rules: the in-memory views
    /// of them follow these to see other processes' changes. `None` on SQLite (one process).
    pub fn shared_changes(&self) -> Option<jetstream::shared::SharedChanges> {
        self.nats().map(|js| js.shared_changes())
    }

    /// On JetStream, the cluster's rule catalog (shared by every process); `None` on SQLite,
    /// where rules live in the data directory. Call it on the runtime.
    pub fn cluster_rule_catalog(&self) -> Option<jetstream::shared::ClusterRuleCatalog> {
        self.nats().map(|js| js.rule_catalog())
    }

    /// Which backend holds topics and queues: `sqlite` or `jetstream` (for `/healthz` and logs).
    pub fn backend(&self) -> &'static str {
        if self.nats().is_some() {
            "jetstream"
        } else {
            "sqlite"
        }
    }

    /// What each topic, queue and commit did since start (for `/metrics`).
    pub fn counters(&self) -> &Arc<metrics::StoreCounters> {
        &self.inner.counters
    }

    /// Finishes the requests already queued, checkpoints the WAL and stops the writer thread.
    /// Later calls on any clone fail with [`StoreError::Closed`]. Dropping the last handle without
    /// calling it is safe too (nothing acknowledged is lost either way).
    pub async fn close(&self) -> Result<()> {
        match self.call(OpKind::Shutdown).await {
            Ok(_) | Err(StoreError::Closed) => {}
            Err(e) => return Err(e),
        }
        let handle = self.inner.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle {
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))?
                .map_err(|_| StoreError::Internal("writer thread panicked".into()))?;
        }
        Ok(())
    }

    /// A counter bumped after every commit, for delivery workers that must wake when new work
    /// is durable (they read what they need from the store after a change).
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.inner.commits.clone()
    }

    /// The clock the store decides time with (the API shows ages relative to it).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The database file.
    pub fn db_path(&self) -> &Path {
        &self.inner.db_path
    }

    // ----- topics -----

    /// Creates a topic; `Ok(false)` when it already exists.
    pub async fn create_topic(&self, name: &str) -> Result<bool> {
        validate_name("topic_name", name)?;
        if let Some(js) = self.nats() {
            return js.create_topic(name).await;
        }
        self.call(OpKind::CreateTopic(name.to_owned()))
            .await?
            .bool()
    }

    /// Deletes a topic and its subscriptions (messages already in queues stay there);
    /// `Ok(false)` when it did not exist.
    pub async fn delete_topic(&self, name: &str) -> Result<bool> {
        if let Some(js) = self.nats() {
            return js.delete_topic(name).await;
        }
        self.call(OpKind::DeleteTopic(name.to_owned()))
            .await?
            .bool()
    }

    /// One topic.
    pub async fn get_topic(&self, name: &str) -> Result<TopicInfo> {
        if let Some(js) = self.nats() {
            return js.get_topic(name).await;
        }
        let name = name.to_owned();
        self.inner
            .readers
            .run(move |c| read::get_topic(c, &name))
            .await
    }

    /// All topics, by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        if let Some(js) = self.nats() {
            return js.list_topics().await;
        }
        self.inner.readers.run(read::list_topics).await
    }

    // ----- subscriptions -----

    /// Subscribes `name` to `topic`; `Ok(false)` when the same subscription exists,
    /// [`StoreError::SubscriptionAlreadyExist`] when one of that name differs. The endpoint
    /// queue must exist.
    pub async fn create_subscription(
        &self,
        topic: &str,
        name: &str,
        spec: SubscriptionSpec,
    ) -> Result<bool> {
        if let Endpoint::Http(_) = &spec.endpoint {
            // The secret is generated and kept; callers that must show it use
            // `create_push_subscription`.
            return Ok(self
                .create_push_subscription(topic, name, spec)
                .await?
                .created);
        }
        validate_name("subscription_name", name)?;
        if let Some(tag) = &spec.filter_tag {
            types::validate_tag_and_attributes(Some(tag), &Default::default()).map_err(|_| {
                StoreError::invalid("filter_tag", "a filter tag has 1 to 16 characters")
            })?;
        }
        if let Some(js) = self.nats() {
            return js.create_subscription(topic, name, spec).await;
        }
        self.call(OpKind::CreateSubscription {
            topic: topic.to_owned(),
            name: name.to_owned(),
            spec,
        })
        .await?
        .bool()
    }

    /// Removes a subscription; `Ok(false)` when it did not exist (the topic must exist).
    pub async fn delete_subscription(&self, topic: &str, name: &str) -> Result<bool> {
        if let Some(js) = self.nats() {
            return js.delete_subscription(topic, name).await;
        }
        self.call(OpKind::DeleteSubscription {
            topic: topic.to_owned(),
            name: name.to_owned(),
        })
        .await?
        .bool()
    }

    /// One subscription.
    pub async fn get_subscription(&self, topic: &str, name: &str) -> Result<SubscriptionInfo> {
        if let Some(js) = self.nats() {
            return js.get_subscription(topic, name).await;
        }
        let (topic, name) = (topic.to_owned(), name.to_owned());
        self.inner
            .readers
            .run(move |c| read::get_subscription(c, &topic, &name))
            .await
    }

    /// The subscriptions of a topic, by name.
    pub async fn list_subscriptions(&self, topic: &str) -> Result<Vec<SubscriptionInfo>> {
        if let Some(js) = self.nats() {
            return js.list_subscriptions(topic).await;
        }
        let topic = topic.to_owned();
        self.inner
            .readers
            .run(move |c| read::list_subscriptions(c, &topic))
            .await
    }

    // ----- queues -----

    /// Creates a queue; `Ok(false)` when one with the same attributes exists,
    /// [`StoreError::QueueAlreadyExist`] when its attributes differ. A dead-letter queue must
    /// exist and differ from the queue.
    pub async fn create_queue(&self, name: &str, attributes: QueueAttributes) -> Result<bool> {
        validate_name("queue_name", name)?;
        attributes.validate(self.size_cap())?;
        if let Some(js) = self.nats() {
            return js.create_queue(name, attributes).await;
        }
        self.call(OpKind::CreateQueue(name.to_owned(), attributes))
            .await?
            .bool()
    }

    /// Replaces a queue's attributes (validated first; nothing changes on error). New values
    /// apply to later operations; leases already given keep their time.
    pub async fn set_queue_attributes(
        &self,
        name: &str,
        attributes: QueueAttributes,
    ) -> Result<()> {
        attributes.validate(self.size_cap())?;
        if let Some(js) = self.nats() {
            return js.set_queue_attributes(name, attributes).await;
        }
        self.call(OpKind::SetQueueAttributes(name.to_owned(), attributes))
            .await?
            .unit()
    }

    /// Deletes a queue with its messages (in flight or not) and the subscriptions that point at
    /// it; `Ok(false)` when it did not exist. Long polls on it end with `QueueNotExist`.
    pub async fn delete_queue(&self, name: &str) -> Result<bool> {
        if let Some(js) = self.nats() {
            return js.delete_queue(name).await;
        }
        self.call(OpKind::DeleteQueue(name.to_owned()))
            .await?
            .bool()
    }

    /// One queue with its counts.
    pub async fn get_queue(&self, name: &str) -> Result<QueueInfo> {
        if let Some(js) = self.nats() {
            return js.get_queue(name).await;
        }
        match self.call(OpKind::GetQueue(name.to_owned())).await? {
            Reply::Queues(mut q) if q.len() == 1 => Ok(q.remove(0)),
            other => Err(other.unexpected()),
        }
    }

    /// All queues with their counts, by name.
    pub async fn list_queues(&self) -> Result<Vec<QueueInfo>> {
        if let Some(js) = self.nats() {
            return js.list_queues().await;
        }
        match self.call(OpKind::ListQueues).await? {
            Reply::Queues(q) => Ok(q),
            other => Err(other.unexpected()),
        }
    }

    // ----- publish -----

    /// Publishes one message to a topic, fanned out to every matching queue subscription in the
    /// same commit.
    pub async fn publish(&self, topic: &str, request: PublishRequest) -> Result<Published> {
        let mut out = self
            .publish_batch(vec![(topic.to_owned(), request)])
            .await?;
        out.pop()
            .ok_or_else(|| StoreError::Internal("empty publish reply".into()))
    }

    /// Publishes several messages (to one or several topics) as **one atomic unit**: all are
    /// committed together or none is (an unknown topic or an invalid message fails the whole
    /// unit and writes nothing). Results are in request order.
    pub async fn publish_batch(
        &self,
        items: Vec<(String, PublishRequest)>,
    ) -> Result<Vec<Published>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.check_publish_unit(
            items
                .iter()
                .map(|(_, r)| (r.body.len(), r.tag.as_deref(), Some(&r.attributes))),
        )?;
        if let Some(js) = self.nats() {
            return js.publish_batch(items).await;
        }
        match self.call(OpKind::Publish(digested(items)?)).await? {
            Reply::Published(p) => Ok(p),
            other => Err(other.unexpected()),
        }
    }

    /// [`Store::publish_batch`] for many units at once, from a plain thread that must keep order
    /// (the rule pipeline: one unit per device message). Each unit commits atomically on its own
    /// and gets a result of its own, in order. The units are queued to the writer before this
    /// returns (blocking while the writer's queue is full — that is the back-pressure), and the
    /// returned future resolves after their commit. Units submitted one after another commit in
    /// that order, while many of them share one commit.
    ///
    /// Must not be called from an async task (it blocks).
    pub fn submit_publish_units<U, I>(
        &self,
        units: &[U],
    ) -> impl std::future::Future<Output = Vec<Result<()>>> + Send + 'static
    where
        U: AsRef<[I]>,
        I: PublishItem,
    {
        // A unit refused here is answered with its error; the others are queued.
        // An empty unit has nothing to commit: it is answered at once, like a refused one.
        let checked: Vec<Option<Result<()>>> = units
            .iter()
            .map(|unit| {
                let unit = unit.as_ref();
                if unit.is_empty() {
                    return Some(Ok(()));
                }
                // The attributes were checked when built (`Attributes::from_pairs`).
                self.check_publish_unit(unit.iter().map(|i| (i.body().len(), None, None)))
                    .err()
                    .map(Err)
            })
            .collect();
        let accepted = units
            .iter()
            .zip(&checked)
            .filter(|(_, answered)| answered.is_none())
            .map(|(unit, _)| unit.as_ref());
        let queued = match self.nats() {
            Some(js) => Queued::Nats(
                accepted
                    .map(|unit| {
                        let items = unit.iter().map(to_request).collect();
                        Box::pin(js.submit_publish_batch(items)) as PendingUnit
                    })
                    .collect(),
            ),
            None => Queued::Writer(self.queue_units(accepted)),
        };
        async move {
            let mut results = match queued {
                Queued::Nats(commits) => futures_util::future::join_all(commits)
                    .await
                    .into_iter()
                    .map(|r| r.map(drop))
                    .collect(),
                Queued::Writer(queued) => {
                    let mut results = Vec::new();
                    for (rx, n) in queued {
                        match rx.await.unwrap_or(Err(StoreError::Closed)) {
                            Ok(Reply::Units(r)) if r.len() == n => results.extend(r),
                            Ok(other) => {
                                let e = other.unexpected();
                                results.extend((0..n).map(|_| Err(e.duplicate())));
                            }
                            Err(e) => results.extend((0..n).map(|_| Err(e.duplicate()))),
                        }
                    }
                    results
                }
            }
            .into_iter();
            // Back in submission order: each queued unit takes the next answer.
            checked
                .into_iter()
                .map(|answered| {
                    answered.unwrap_or_else(|| {
                        results.next().unwrap_or_else(|| {
                            Err(StoreError::Internal("a unit went unanswered".into()))
                        })
                    })
                })
                .collect()
        }
    }

    /// Queues units to the writer's bulk lane, [`writer::MAX_UNITS_PER_REQUEST`] to a request;
    /// returns each request's answer with how many units it holds. A unit that cannot be queued
    /// (the store is closing) is answered with that error.
    fn queue_units<'u, I: PublishItem + 'u>(
        &self,
        units: impl Iterator<Item = &'u [I]>,
    ) -> Vec<(oneshot::Receiver<Result<Reply>>, usize)> {
        let mut units = units.peekable();
        let mut queued = Vec::new();
        while units.peek().is_some() {
            let chunk: Vec<Vec<_>> = units
                .by_ref()
                .take(writer::MAX_UNITS_PER_REQUEST)
                .map(|unit| {
                    unit.iter()
                        .map(|i| {
                            let digest = writer::Digest::of_json(i.body(), i.attributes());
                            let req = PublishRequest {
                                body: i.body().clone(),
                                tag: None,
                                attributes: BTreeMap::new(),
                            };
                            (i.topic().to_owned(), req, digest)
                        })
                        .collect()
                })
                .collect();
            let n = chunk.len();
            let (reply, rx) = oneshot::channel();
            let op = Op {
                kind: OpKind::PublishUnits(chunk),
                reply,
            };
            match self.inner.tx.as_ref() {
                Some(tx) => {
                    // A send that fails drops the reply sender: the answer reads as closed.
                    let _ = tx.bulk.blocking_send(op);
                }
                None => drop(op),
            }
            queued.push((rx, n));
        }
        queued
    }

    /// Checks a publish unit before it is queued: its length, each body against the size cap,
    /// each tag and attribute map. Takes (body length, tag, attributes) per message; attributes
    /// that are `None` were checked before (a rule output's, when built).
    fn check_publish_unit<'a>(
        &self,
        items: impl ExactSizeIterator<
            Item = (usize, Option<&'a str>, Option<&'a BTreeMap<String, String>>),
        >,
    ) -> Result<()> {
        if items.len() > MAX_PUBLISH_UNIT {
            return Err(StoreError::invalid(
                "messages",
                format!("a publish unit has at most {MAX_PUBLISH_UNIT} messages"),
            ));
        }
        let cap = self.size_cap();
        for (len, tag, attributes) in items {
            if len > cap as usize {
                return Err(StoreError::MessageTooLarge {
                    size: len,
                    limit: cap,
                });
            }
            static CHECKED_BEFORE: BTreeMap<String, String> = BTreeMap::new();
            types::validate_tag_and_attributes(tag, attributes.unwrap_or(&CHECKED_BEFORE))?;
        }
        Ok(())
    }

    // ----- queue operations -----

    /// Sends one message to a queue.
    pub async fn send(&self, queue: &str, request: SendRequest) -> Result<Sent> {
        let mut out = self.send_batch(queue, vec![request]).await?;
        out.pop()
            .ok_or_else(|| StoreError::Internal("empty send reply".into()))
    }

    /// Sends up to 16 messages to a queue in one commit. Every message is checked first; one
    /// invalid message (too large, bad priority or delay, ...) refuses the whole batch and
    /// nothing is stored.
    pub async fn send_batch(&self, queue: &str, requests: Vec<SendRequest>) -> Result<Vec<Sent>> {
        check_batch("messages", requests.len())?;
        for req in &requests {
            if let Some(d) = req.delay_seconds {
                check_range("delay_seconds", d.into(), 0, 604_800)?;
            }
            if let Some(p) = req.priority {
                check_range("priority", p.into(), 1, 16)?;
            }
            types::validate_tag_and_attributes(req.tag.as_deref(), &req.attributes)?;
        }
        if let Some(js) = self.nats() {
            return js.send_batch(queue, requests).await;
        }
        let requests = requests
            .into_iter()
            .map(|r| {
                let digest = writer::Digest::of(&r.body, &r.attributes)?;
                Ok((r, digest))
            })
            .collect::<Result<Vec<_>>>()?;
        match self.call(OpKind::Send(queue.to_owned(), requests)).await? {
            Reply::Sent(s) => Ok(s),
            other => Err(other.unexpected()),
        }
    }

    /// Receives up to `max` (1–16) visible messages, each with a new receipt handle, invisible
    /// for the queue's visibility timeout. `wait` (0–30 s; `None` = the queue's
    /// `polling_wait_seconds`) long-polls: it returns as soon as a message is visible, or an
    /// empty list when the wait ends (not an error).
    ///
    /// Cancel-safe: if the caller goes away after the claim was made but before the answer
    /// reached it, the writer releases the messages again (visible, dequeue count restored).
    pub async fn receive(
        &self,
        queue: &str,
        max: usize,
        wait: Option<Duration>,
    ) -> Result<Vec<Message>> {
        check_batch("max", max)?;
        if let Some(w) = wait {
            if w > Duration::from_secs(MAX_WAIT_SECONDS) {
                return Err(StoreError::invalid(
                    "wait_seconds",
                    format!("wait_seconds must be between 0 and {MAX_WAIT_SECONDS}"),
                ));
            }
        }
        if let Some(js) = self.nats() {
            return js.receive(queue, max, wait).await;
        }
        let notify = self.notifier(queue);
        let mut earliest = notify.earliest.subscribe();
        let started = tokio::time::Instant::now();
        let mut deadline = wait.map(|w| started + w);
        loop {
            // Registered before the claim, so a commit between the claim and the wait still
            // wakes us (an enabled `Notified` is a waiter for notify_one and notify_waiters).
            let notified = notify.visible.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            earliest.borrow_and_update();
            let reply = match self.call(OpKind::Receive(queue.to_owned(), max)).await {
                Ok(reply) => reply,
                Err(e) => {
                    self.forget_notifier(queue, &notify);
                    return Err(e);
                }
            };
            let (messages, wait_default_s, next_visible_ms) = match reply {
                Reply::Received {
                    messages,
                    polling_wait_seconds,
                    next_visible_ms,
                } => (messages, polling_wait_seconds, next_visible_ms),
                other => return Err(other.unexpected()),
            };
            if !messages.is_empty() {
                return Ok(messages);
            }
            let end = *deadline
                .get_or_insert_with(|| started + Duration::from_secs(wait_default_s.into()));
            let now = tokio::time::Instant::now();
            if now >= end {
                return Ok(messages);
            }
            let clock = &self.inner.clock;
            let at = |t: u64| {
                tokio::time::Instant::now()
                    + Duration::from_millis(t.saturating_sub(clock.now_ms()))
            };
            let mut wake_at = next_visible_ms.map_or(end, |t| end.min(at(t)));
            loop {
                tokio::select! {
                    _ = &mut notified => break,
                    _ = tokio::time::sleep_until(wake_at) => break,
                    // A lease or delay now ends sooner: only the timer changes.
                    changed = earliest.changed() => match changed {
                        Ok(()) => {
                            if let Some(t) = *earliest.borrow_and_update() {
                                wake_at = wake_at.min(at(t));
                            }
                        }
                        Err(_) => break,
                    },
                }
            }
        }
    }

    /// Reads up to `max` (1–16) visible messages in delivery order without changing anything
    /// (no handle, no dequeue count).
    pub async fn peek(&self, queue: &str, max: usize) -> Result<Vec<Message>> {
        check_batch("max", max)?;
        if let Some(js) = self.nats() {
            return js.peek(queue, max).await;
        }
        match self.call(OpKind::Peek(queue.to_owned(), max)).await? {
            Reply::Messages(m) => Ok(m),
            other => Err(other.unexpected()),
        }
    }

    /// Deletes a message by its current receipt handle. A second delete with the same handle
    /// succeeds too; an earlier or expired handle is refused with
    /// [`StoreError::ReceiptHandleStale`] and changes nothing; a malformed one with
    /// [`StoreError::ReceiptHandleError`].
    pub async fn delete(&self, queue: &str, receipt_handle: &str) -> Result<()> {
        let mut out = self
            .delete_batch(queue, vec![receipt_handle.to_owned()])
            .await?;
        out.pop()
            .unwrap_or_else(|| Err(StoreError::Internal("empty delete reply".into())))
    }

    /// Deletes up to 16 messages in one commit: one result per handle, in order (a bad handle
    /// fails only itself).
    pub async fn delete_batch(
        &self,
        queue: &str,
        receipt_handles: Vec<String>,
    ) -> Result<Vec<Result<()>>> {
        check_batch("receipt_handles", receipt_handles.len())?;
        if let Some(js) = self.nats() {
            return js.delete_batch(queue, receipt_handles).await;
        }
        match self
            .call(OpKind::Delete(queue.to_owned(), receipt_handles))
            .await?
        {
            Reply::Deleted(d) => Ok(d),
            other => Err(other.unexpected()),
        }
    }

    /// Makes an in-flight message visible again `visibility_timeout` seconds (1–43200) from now,
    /// returning a new handle; the old one stops working.
    pub async fn change_visibility(
        &self,
        queue: &str,
        receipt_handle: &str,
        visibility_timeout: u32,
    ) -> Result<VisibilityChanged> {
        check_range("visibility_timeout", visibility_timeout.into(), 1, 43_200)?;
        if let Some(js) = self.nats() {
            return js
                .change_visibility(queue, receipt_handle, visibility_timeout)
                .await;
        }
        match self
            .call(OpKind::ChangeVisibility(
                queue.to_owned(),
                receipt_handle.to_owned(),
                visibility_timeout,
            ))
            .await?
        {
            Reply::Visibility(v) => Ok(v),
            other => Err(other.unexpected()),
        }
    }

    // ----- maintenance -----

    /// Copies the live store to `dest` with SQLite's online backup API (consistent snapshot,
    /// writers keep going). The file is written 0600 beside `dest` and renamed into place.
    pub async fn backup(&self, dest: &Path) -> Result<()> {
        if self.nats().is_some() {
            // Everything lives in the cluster; a copy of the local file would hold nothing.
            return Err(StoreError::Unsupported(
                "on the JetStream store everything lives in the NATS cluster: back up its \
                 streams and key-value buckets (those named after --nats-prefix) with the NATS \
                 tools, e.g. `nats account backup`"
                    .into(),
            ));
        }
        let dest = dest.to_path_buf();
        self.inner
            .readers
            .run(move |c| read::backup(c, &dest))
            .await
    }

    // ----- internals -----

    /// The largest body this store takes (its `message_size_cap`): topic publishes are held to
    /// it, and the MNS API reports it as a topic's `MaximumMessageSize`.
    pub fn size_cap(&self) -> u32 {
        self.inner.size_cap
    }

    fn notifier(&self, queue: &str) -> Arc<QueueWaker> {
        let mut map = self
            .inner
            .notifiers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(queue.to_owned()).or_default().clone()
    }

    /// Drops the waker entry of a queue nobody waits on (after `QueueNotExist`), so polling
    /// made-up queue names cannot grow the map.
    fn forget_notifier(&self, queue: &str, notify: &Arc<QueueWaker>) {
        let mut map = self
            .inner
            .notifiers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = map.get(queue) {
            // Ours and the map's are the only references: no other waiter.
            if Arc::ptr_eq(entry, notify) && Arc::strong_count(notify) == 2 {
                map.remove(queue);
            }
        }
    }

    async fn call(&self, kind: OpKind) -> Result<Reply> {
        let tx = self.inner.tx.as_ref().ok_or(StoreError::Closed)?;
        let (reply, rx) = oneshot::channel();
        tx.interactive
            .send(Op { kind, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

fn check_batch(field: &'static str, n: usize) -> Result<()> {
    if n == 0 || n > MAX_BATCH {
        return Err(StoreError::invalid(
            field,
            format!("{n} is out of range: a batch has 1 to {MAX_BATCH} entries"),
        ));
    }
    Ok(())
}
