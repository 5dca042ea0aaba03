//! The durable store: topics, subscriptions and queues with the semantics of
//! docs/message-service.md (visibility timeout, receipt handles, long polling, delay,
//! priority, retention, dead letters).
//!
//! Backends: [`sqlite`] (one process; the default) and [`jetstream`] (a NATS JetStream
//! cluster shared by several processes). [`Store`] is the one handle the rest of sluice uses: it
//! checks every request's arguments the same way for both, then hands it to the backend chosen
//! at start, with one `match` per operation. Each backend documents how it keeps the semantics
//! (and the few documented differences on JetStream).
//!
//! Beside the message service the store keeps [`records`]: rules, devices, products and access
//! keys as JSON documents whose shape belongs to the layer that owns them.
//!
//! Every method that stores, changes or removes something answers only after it is durable; a
//! receive's claim, which acknowledges nothing, is answered as soon as it is made (a claim lost
//! to a crash only makes its messages visible again).

/// Runs the same expression on whichever backend is chosen, `$b` bound to it.
macro_rules! on_backend {
    ($store:expr, $b:ident => $e:expr) => {
        match &$store.inner.backend {
            Backend::Sqlite($b) => $e,
            Backend::JetStream { js: $b, .. } => $e,
        }
    };
}

mod clock;
mod data_dir;
mod error;
pub mod jetstream;
pub mod metrics;
pub mod push;
pub mod records;
pub(crate) mod sqlite;
mod types;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::StoreError;
pub use push::{
    ContentFormat, HttpPush, NotifyStrategy, PushCreated, PushCycle, PushDelivery, PushOutcome,
    PushResult, PushSignals, PushStatus, PushSubscription, SigningMode,
};
pub use records::Record;
pub use types::QueueAttributesPatch;
pub use types::{
    validate_name, Attributes, DeadLetterOrigin, Endpoint, Message, PublishRequest, Published,
    QueueAttributes, QueueInfo, SendRequest, Sent, StoreOptions, SubscriptionInfo,
    SubscriptionSpec, Synchronous, TopicInfo, VisibilityChanged, DEFAULT_PRIORITY, MAX_BATCH,
    MAX_MESSAGE_SIZE_CAP, MAX_NAME_LEN, MAX_PUBLISH_UNIT, MAX_WAIT_SECONDS,
};

use types::check_range;

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
    Writer(Vec<(sqlite::QueuedUnits, usize)>),
}

/// The backend chosen at start.
#[derive(Debug)]
enum Backend {
    /// One SQLite file in the data directory, one writer thread.
    Sqlite(sqlite::SqliteStore),
    /// A JetStream cluster; the data directory holds only this process's lock.
    JetStream {
        js: jetstream::JetStream,
        /// Holds the data directory's lock while the store is open.
        _lock: std::fs::File,
        /// Never bumped: commits happen in the cluster, and delivery follows its own signals.
        commits: watch::Sender<u64>,
    },
}

/// A handle on the durable store. Cheap to clone; all clones share one backend.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backend: Backend,
    clock: Arc<dyn Clock>,
    data_dir: PathBuf,
    size_cap: u32,
    push_signals: Arc<PushSignals>,
    counters: Arc<metrics::StoreCounters>,
}

impl Store {
    /// Opens (creating if needed) the SQLite store in `data_dir`: the directory 0700 and
    /// locked, `sluice.db` 0600, WAL, the chosen `synchronous`, `PRAGMA quick_check`,
    /// migrations to the current schema, then the writer thread with the in-memory index
    /// rebuilt from disk.
    ///
    /// Synchronous: call it before serving. Fails with a clear error naming the path when the
    /// directory is unwritable, another process owns it, or the file is damaged.
    pub fn open(data_dir: &Path, opts: StoreOptions) -> Result<Store> {
        let push_signals = Arc::<PushSignals>::default();
        let counters = Arc::<metrics::StoreCounters>::default();
        let sqlite =
            sqlite::SqliteStore::open(data_dir, &opts, push_signals.clone(), counters.clone())?;
        Ok(Store::with_backend(
            Backend::Sqlite(sqlite),
            data_dir,
            &opts,
            push_signals,
            counters,
        ))
    }

    /// The store on a JetStream cluster: the catalog, messages, pending pushes and records live
    /// there, so several processes serve one fleet. `data_dir` holds only this process's own
    /// files (its lock, its credentials file); no SQLite database or thread is started.
    pub fn open_with_jetstream(
        data_dir: &Path,
        opts: StoreOptions,
        js: jetstream::JetStream,
    ) -> Result<Store> {
        let paths = types::StorePaths::new(data_dir);
        let lock = data_dir::lock(&paths.dir, &paths.lock)?;
        // The cluster wakes the push supervisor, and the message plane counts its own
        // operations.
        let push_signals = js.push_signals();
        let counters = js.counters().clone();
        let backend = Backend::JetStream {
            js,
            _lock: lock,
            commits: watch::channel(0).0,
        };
        Ok(Store::with_backend(
            backend,
            data_dir,
            &opts,
            push_signals,
            counters,
        ))
    }

    fn with_backend(
        backend: Backend,
        data_dir: &Path,
        opts: &StoreOptions,
        push_signals: Arc<PushSignals>,
        counters: Arc<metrics::StoreCounters>,
    ) -> Store {
        Store {
            inner: Arc::new(Inner {
                backend,
                clock: opts.clock.clone(),
                data_dir: data_dir.to_path_buf(),
                size_cap: opts.message_size_cap.clamp(1024, MAX_MESSAGE_SIZE_CAP),
                push_signals,
                counters,
            }),
        }
    }

    /// Which backend holds topics and queues: `sqlite` or `jetstream` (for `/healthz` and logs).
    pub fn backend(&self) -> &'static str {
        match &self.inner.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::JetStream { .. } => "jetstream",
        }
    }

    /// What each topic, queue and commit did since start (for `/metrics`).
    pub fn counters(&self) -> &Arc<metrics::StoreCounters> {
        &self.inner.counters
    }

    /// On SQLite: finishes the requests already queued, checkpoints the WAL and stops the
    /// writer thread; later calls on any clone fail with [`StoreError::Closed`]. On JetStream
    /// every operation is answered when it is made and the cluster stays up, so there is
    /// nothing to finish; the data directory's lock goes with the last handle. Dropping the
    /// last handle without calling it is safe too (nothing acknowledged is lost either way).
    pub async fn close(&self) -> Result<()> {
        match &self.inner.backend {
            Backend::Sqlite(s) => s.close().await,
            Backend::JetStream { .. } => Ok(()),
        }
    }

    /// A counter bumped after every local commit, for delivery workers that must wake when new
    /// work is durable (they read what they need from the store after a change). On JetStream
    /// it never moves: the cluster's own signals wake delivery there.
    pub fn commits(&self) -> watch::Receiver<u64> {
        match &self.inner.backend {
            Backend::Sqlite(s) => s.commits(),
            Backend::JetStream { commits, .. } => commits.subscribe(),
        }
    }

    /// The clock the store decides time with (the API shows ages relative to it).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The data directory (on SQLite, where the database file lives).
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    // ----- topics -----

    /// Creates a topic; `Ok(false)` when it already exists.
    pub async fn create_topic(&self, name: &str) -> Result<bool> {
        validate_name("topic_name", name)?;
        on_backend!(self, b => b.create_topic(name).await)
    }

    /// Deletes a topic and its subscriptions (messages already in queues stay there);
    /// `Ok(false)` when it did not exist.
    pub async fn delete_topic(&self, name: &str) -> Result<bool> {
        on_backend!(self, b => b.delete_topic(name).await)
    }

    /// One topic.
    pub async fn get_topic(&self, name: &str) -> Result<TopicInfo> {
        on_backend!(self, b => b.get_topic(name).await)
    }

    /// All topics, by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        on_backend!(self, b => b.list_topics().await)
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
        check_filter_tag(&spec)?;
        on_backend!(self, b => b.create_subscription(topic, name, spec).await)
    }

    /// Removes a subscription; `Ok(false)` when it did not exist (the topic must exist).
    pub async fn delete_subscription(&self, topic: &str, name: &str) -> Result<bool> {
        on_backend!(self, b => b.delete_subscription(topic, name).await)
    }

    /// One subscription.
    pub async fn get_subscription(&self, topic: &str, name: &str) -> Result<SubscriptionInfo> {
        on_backend!(self, b => b.get_subscription(topic, name).await)
    }

    /// The subscriptions of a topic, by name.
    pub async fn list_subscriptions(&self, topic: &str) -> Result<Vec<SubscriptionInfo>> {
        on_backend!(self, b => b.list_subscriptions(topic).await)
    }

    // ----- queues -----

    /// Creates a queue; `Ok(false)` when one with the same attributes exists,
    /// [`StoreError::QueueAlreadyExist`] when its attributes differ. A dead-letter queue must
    /// exist and differ from the queue.
    pub async fn create_queue(&self, name: &str, attributes: QueueAttributes) -> Result<bool> {
        validate_name("queue_name", name)?;
        attributes.validate(self.size_cap())?;
        on_backend!(self, b => b.create_queue(name, attributes).await)
    }

    /// Replaces a queue's attributes (validated first; nothing changes on error). New values
    /// apply to later operations; leases already given keep their time.
    pub async fn set_queue_attributes(
        &self,
        name: &str,
        attributes: QueueAttributes,
    ) -> Result<()> {
        attributes.validate(self.size_cap())?;
        on_backend!(self, b => b.set_queue_attributes(name, attributes).await)
    }

    /// Deletes a queue with its messages (in flight or not) and the subscriptions that point at
    /// it; `Ok(false)` when it did not exist. Long polls on it end with `QueueNotExist`.
    pub async fn delete_queue(&self, name: &str) -> Result<bool> {
        on_backend!(self, b => b.delete_queue(name).await)
    }

    /// One queue with its counts.
    pub async fn get_queue(&self, name: &str) -> Result<QueueInfo> {
        on_backend!(self, b => b.get_queue(name).await)
    }

    /// All queues with their counts, by name.
    pub async fn list_queues(&self) -> Result<Vec<QueueInfo>> {
        on_backend!(self, b => b.list_queues().await)
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
        on_backend!(self, b => b.publish_batch(items).await)
    }

    /// [`Store::publish_batch`] for many units at once, from a plain thread that must keep order
    /// (the rule pipeline: one unit per device message). Each unit commits atomically on its own
    /// and gets a result of its own, in order. The units are queued to the backend before this
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
        let queued = match &self.inner.backend {
            Backend::JetStream { js, .. } => Queued::Nats(
                accepted
                    .map(|unit| {
                        let items = unit.iter().map(to_request).collect();
                        Box::pin(js.submit_publish_batch(items)) as PendingUnit
                    })
                    .collect(),
            ),
            Backend::Sqlite(s) => Queued::Writer(s.queue_units(accepted)),
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
                            Ok(r) if r.len() == n => results.extend(r),
                            Ok(r) => {
                                let e = StoreError::Internal(format!(
                                    "{} answers for {n} units of rule outputs",
                                    r.len()
                                ));
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
        on_backend!(self, b => b.send_batch(queue, requests).await)
    }

    /// Receives up to `max` (1–16) visible messages, each with a new receipt handle, invisible
    /// for the queue's visibility timeout. `wait` (0–30 s; `None` = the queue's
    /// `polling_wait_seconds`) long-polls: it returns as soon as a message is visible, or an
    /// empty list when the wait ends (not an error).
    ///
    /// Cancel-safe: if the caller goes away after the claim was made but before the answer
    /// reached it, the messages are released again (visible, dequeue count restored).
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
        on_backend!(self, b => b.receive(queue, max, wait).await)
    }

    /// Reads up to `max` (1–16) visible messages in delivery order without changing anything
    /// (no handle, no dequeue count).
    pub async fn peek(&self, queue: &str, max: usize) -> Result<Vec<Message>> {
        check_batch("max", max)?;
        on_backend!(self, b => b.peek(queue, max).await)
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
        on_backend!(self, b => b.delete_batch(queue, receipt_handles).await)
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
        on_backend!(self, b => b.change_visibility(queue, receipt_handle, visibility_timeout).await)
    }

    // ----- records -----

    /// Stores a record unless one with its key exists: `Ok(false)` then, and the stored one is
    /// left unchanged.
    pub async fn insert_record(&self, kind: &str, record: Record) -> Result<bool> {
        check_record(kind, &record)?;
        on_backend!(self, b => b.insert_record(kind, record).await)
    }

    /// Stores a record, replacing one with the same key.
    pub async fn put_record(&self, kind: &str, record: Record) -> Result<()> {
        check_record(kind, &record)?;
        on_backend!(self, b => b.put_record(kind, record).await)
    }

    /// Removes a record; `Ok(false)` when there was none.
    pub async fn delete_record(&self, kind: &str, key: &str) -> Result<bool> {
        records::check_kind(kind)?;
        records::check_key(key)?;
        on_backend!(self, b => b.delete_record(kind, key).await)
    }

    /// One record's value, or `None`.
    pub async fn get_record(&self, kind: &str, key: &str) -> Result<Option<String>> {
        records::check_kind(kind)?;
        records::check_key(key)?;
        on_backend!(self, b => b.get_record(kind, key).await)
    }

    /// Every record of a kind, by key.
    pub async fn list_records(&self, kind: &str) -> Result<Vec<Record>> {
        records::check_kind(kind)?;
        on_backend!(self, b => b.list_records(kind).await)
    }

    /// The records of a kind whose keys lie under `parent` (`parent/...`), by key.
    pub async fn list_records_under(&self, kind: &str, parent: &str) -> Result<Vec<Record>> {
        records::check_kind(kind)?;
        records::check_key(parent)?;
        on_backend!(self, b => b.list_records_under(kind, parent).await)
    }

    /// How many records of a kind lie under `parent`.
    pub async fn count_records_under(&self, kind: &str, parent: &str) -> Result<usize> {
        records::check_kind(kind)?;
        records::check_key(parent)?;
        on_backend!(self, b => b.count_records_under(kind, parent).await)
    }

    /// Removes records of a kind by key, in one commit; how many existed.
    pub async fn delete_records(&self, kind: &str, keys: &[String]) -> Result<usize> {
        records::check_kind(kind)?;
        for key in keys {
            records::check_key(key)?;
        }
        on_backend!(self, b => b.delete_records(kind, keys.to_vec()).await)
    }

    /// Removes every record of a kind under `parent`; how many there were.
    pub async fn delete_records_under(&self, kind: &str, parent: &str) -> Result<usize> {
        records::check_kind(kind)?;
        records::check_key(parent)?;
        on_backend!(self, b => b.delete_records_under(kind, parent).await)
    }

    /// On JetStream, a counter that moves whenever any process changed a record of `kind`, so
    /// its owner can rebuild its in-memory view; `None` on SQLite, where this process makes
    /// every change itself.
    pub async fn record_changes(&self, kind: &str) -> Result<Option<watch::Receiver<u64>>> {
        records::check_kind(kind)?;
        match &self.inner.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::JetStream { js, .. } => js.record_changes(kind).await.map(Some),
        }
    }

    // ----- maintenance -----

    /// Copies the live store to `dest` (SQLite's online backup API: a consistent snapshot,
    /// writers keep going). The file is written 0600 beside `dest` and renamed into place.
    pub async fn backup(&self, dest: &Path) -> Result<()> {
        match &self.inner.backend {
            Backend::Sqlite(s) => s.backup(dest).await,
            // Everything lives in the cluster; a copy of a local file would hold nothing.
            Backend::JetStream { .. } => Err(StoreError::Unsupported(
                "on the JetStream store everything lives in the NATS cluster: back up its \
                 streams and key-value buckets (those named after --nats-prefix) with the NATS \
                 tools, e.g. `nats account backup`"
                    .into(),
            )),
        }
    }

    /// The SQLite backend, for tests that reach past the handle.
    #[cfg(test)]
    pub(crate) fn sqlite(&self) -> &sqlite::SqliteStore {
        match &self.inner.backend {
            Backend::Sqlite(s) => s,
            Backend::JetStream { .. } => panic!("not a SQLite store"),
        }
    }

    /// The largest body this store takes (its `message_size_cap`): topic publishes are held to
    /// it, and the MNS API reports it as a topic's `MaximumMessageSize`.
    pub fn size_cap(&self) -> u32 {
        self.inner.size_cap
    }
}

/// A subscription's filter tag: 1 to 16 characters.
fn check_filter_tag(spec: &SubscriptionSpec) -> Result<()> {
    if let Some(tag) = &spec.filter_tag {
        types::validate_tag_and_attributes(Some(tag), &Default::default()).map_err(|_| {
            StoreError::invalid("filter_tag", "a filter tag has 1 to 16 characters")
        })?;
    }
    Ok(())
}

fn check_record(kind: &str, record: &Record) -> Result<()> {
    records::check_kind(kind)?;
    records::check_key(&record.key)?;
    records::check_value(&record.value)
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
