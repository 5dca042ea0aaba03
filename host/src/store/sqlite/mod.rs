//! The SQLite backend: topics, subscriptions, queues, pending pushes and records in one
//! database file of the data directory, with the semantics of docs/message-service.md.
//!
//! # Shape
//! [`SqliteStore`] is owned by the [`crate::store::Store`] handle. Every change goes to **one writer thread** that owns the
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
//! - `records` (schema v5, see [`records`]): rules, devices, products and keys as their owners'
//!   JSON documents.
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
//!   design is some thirty times slower than rowid claims).
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
//! it.
//!
//! # Ownership
//! One process owns a data directory (`sluice.lock` is held with an exclusive file lock): the
//! in-memory index requires a single writer.

pub(crate) mod index;
pub(crate) mod push_state;
pub(crate) mod read;
pub(crate) mod receipt;
pub(crate) mod records;
pub(crate) mod schema;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch, Notify};

use super::error::StoreError;
use super::push::{
    new_secret, NotifyStrategy, PushCreated, PushCycle, PushOutcome, PushSignals, PushStatus,
    PushSubscription,
};
use super::records::Record;
use super::types::{
    Message, PublishRequest, Published, QueueAttributes, QueueInfo, SendRequest, Sent,
    StoreOptions, StorePaths, SubscriptionInfo, SubscriptionSpec, TopicInfo, VisibilityChanged,
};
use super::{metrics, PublishItem, Result};
use writer::{Digest, Isolation, Request, When};

pub(crate) use writer::MAX_UNITS_PER_REQUEST;

/// The answer to one request of rule-output units: a result per unit, in order.
pub(crate) type QueuedUnits = oneshot::Receiver<Result<Vec<Result<()>>>>;

/// Wakers of long polls, one per queue name; shared by the store and the writer.
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

/// The SQLite store: the writer thread's request lanes, the read connections and the long-poll
/// wakers. Dropping it finishes the writer's queued requests and releases the directory lock.
#[derive(Debug)]
pub(crate) struct SqliteStore {
    lanes: Option<writer::Lanes>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: read::ReadPool,
    notifiers: Notifiers,
    commits: watch::Receiver<u64>,
    clock: Arc<dyn super::Clock>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the lanes makes the writer finish its batch and exit; joining it releases the
        // data directory lock before the last handle is gone, so a reopen right after works.
        self.lanes.take();
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) `sluice.db` in `data_dir`: the directory 0700 and locked, the
    /// file 0600, WAL, the chosen `synchronous`, `PRAGMA quick_check`, migrations to the current
    /// schema, then starts the writer thread with the in-memory index rebuilt from disk.
    pub(crate) fn open(
        data_dir: &Path,
        opts: &StoreOptions,
        push_signals: Arc<PushSignals>,
        counters: Arc<metrics::StoreCounters>,
    ) -> Result<SqliteStore> {
        let paths = StorePaths::new(data_dir);
        let opened = schema::open(&paths, opts)?;
        let notifiers: Notifiers = Arc::default();
        let (commit_tx, commit_rx) = watch::channel(0u64);
        let (lanes, thread) = writer::spawn(
            opened,
            &paths,
            opts,
            notifiers.clone(),
            commit_tx,
            push_signals,
            counters,
        )?;
        Ok(SqliteStore {
            lanes: Some(lanes),
            thread: Mutex::new(Some(thread)),
            readers: read::ReadPool::new(paths.db.clone(), opts.busy_timeout),
            notifiers,
            commits: commit_rx,
            clock: opts.clock.clone(),
        })
    }

    /// Finishes the requests already queued, checkpoints the WAL and stops the writer thread.
    pub(crate) async fn close(&self) -> Result<()> {
        let (request, rx) = {
            let (answer, rx) = oneshot::channel();
            (Request::Shutdown(answer), rx)
        };
        match self.submit(request, rx).await {
            Ok(()) | Err(StoreError::Closed) => {}
            Err(e) => return Err(e),
        }
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle {
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))?
                .map_err(|_| StoreError::Internal("writer thread panicked".into()))?;
        }
        Ok(())
    }

    /// A counter bumped after every commit.
    pub(crate) fn commits(&self) -> watch::Receiver<u64> {
        self.commits.clone()
    }

    // ----- requests -----

    /// Sends a request on the interactive lane and waits for its typed answer.
    async fn submit<T>(&self, request: Request, answer: oneshot::Receiver<Result<T>>) -> Result<T> {
        let lanes = self.lanes.as_ref().ok_or(StoreError::Closed)?;
        lanes
            .interactive
            .send(request)
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `work` on the writer inside a savepoint; answered after the commit is durable.
    async fn write<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut writer::Writer) -> Result<T> + Send + 'static,
    {
        let (request, rx) = Request::write(work);
        self.submit(request, rx).await
    }

    /// Runs `work` on the writer without a savepoint of its own.
    async fn direct<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut writer::Writer) -> Result<T> + Send + 'static,
    {
        let (request, rx) = Request::direct(work);
        self.submit(request, rx).await
    }

    // ----- topics -----

    pub(crate) async fn create_topic(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.write(move |w| w.create_topic(&name, w.now())).await
    }

    pub(crate) async fn delete_topic(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.write(move |w| w.delete_topic(&name)).await
    }

    pub(crate) async fn get_topic(&self, name: &str) -> Result<TopicInfo> {
        let name = name.to_owned();
        self.readers.run(move |c| read::get_topic(c, &name)).await
    }

    pub(crate) async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        self.readers.run(read::list_topics).await
    }

    // ----- subscriptions -----

    pub(crate) async fn create_subscription(
        &self,
        topic: &str,
        name: &str,
        spec: SubscriptionSpec,
    ) -> Result<bool> {
        let (topic, name) = (topic.to_owned(), name.to_owned());
        self.write(move |w| w.create_subscription(&topic, &name, spec, w.now()))
            .await
    }

    pub(crate) async fn delete_subscription(&self, topic: &str, name: &str) -> Result<bool> {
        let (topic, name) = (topic.to_owned(), name.to_owned());
        self.write(move |w| w.delete_subscription(&topic, &name))
            .await
    }

    pub(crate) async fn get_subscription(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<SubscriptionInfo> {
        let (topic, name) = (topic.to_owned(), name.to_owned());
        self.readers
            .run(move |c| read::get_subscription(c, &topic, &name))
            .await
    }

    pub(crate) async fn list_subscriptions(&self, topic: &str) -> Result<Vec<SubscriptionInfo>> {
        let topic = topic.to_owned();
        self.readers
            .run(move |c| read::list_subscriptions(c, &topic))
            .await
    }

    // ----- queues -----

    pub(crate) async fn create_queue(
        &self,
        name: &str,
        attributes: QueueAttributes,
    ) -> Result<bool> {
        let name = name.to_owned();
        self.write(move |w| w.create_queue(&name, attributes, w.now()))
            .await
    }

    pub(crate) async fn set_queue_attributes(
        &self,
        name: &str,
        attributes: QueueAttributes,
    ) -> Result<()> {
        let name = name.to_owned();
        self.write(move |w| w.set_queue_attributes(&name, attributes, w.now()))
            .await
    }

    pub(crate) async fn delete_queue(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.write(move |w| w.delete_queue(&name)).await
    }

    /// On the writer: the counts live in its in-memory index (a few lookups there, a full scan
    /// on a read connection).
    pub(crate) async fn get_queue(&self, name: &str) -> Result<QueueInfo> {
        let name = name.to_owned();
        self.direct(move |w| w.get_queue(&name)).await
    }

    pub(crate) async fn list_queues(&self) -> Result<Vec<QueueInfo>> {
        self.direct(|w| w.list_queues()).await
    }

    // ----- messages -----

    /// Opens a savepoint itself when the unit writes more than one row.
    pub(crate) async fn publish_batch(
        &self,
        items: Vec<(String, PublishRequest)>,
    ) -> Result<Vec<Published>> {
        let items = digested(items)?;
        self.direct(move |w| w.publish_unit(items)).await
    }

    /// Queues units of rule outputs to the writer's bulk lane, [`MAX_UNITS_PER_REQUEST`] to a
    /// request, blocking while the lane is full (the back-pressure on ingest). Returns each
    /// request's answer with how many units it holds; a request that cannot be queued (the
    /// store is closing) reads as closed.
    pub(crate) fn queue_units<'u, I: PublishItem + 'u>(
        &self,
        units: impl Iterator<Item = &'u [I]>,
    ) -> Vec<(QueuedUnits, usize)> {
        let mut units = units.peekable();
        let mut queued = Vec::new();
        while units.peek().is_some() {
            let chunk: Vec<Vec<_>> = units
                .by_ref()
                .take(MAX_UNITS_PER_REQUEST)
                .map(|unit| {
                    unit.iter()
                        .map(|i| {
                            let digest = Digest::of_json(i.body(), i.attributes());
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
            let (request, rx) = Request::job(Isolation::Direct, When::Durable, n, move |w| {
                w.publish_units(chunk)
            });
            if let Some(lanes) = self.lanes.as_ref() {
                // A send that fails drops the request and its answer: the answer reads as closed.
                let _ = lanes.bulk.blocking_send(request);
            }
            queued.push((rx, n));
        }
        queued
    }

    pub(crate) async fn send_batch(
        &self,
        queue: &str,
        requests: Vec<SendRequest>,
    ) -> Result<Vec<Sent>> {
        let requests = requests
            .into_iter()
            .map(|r| {
                let digest = Digest::of(&r.body, &r.attributes)?;
                Ok((r, digest))
            })
            .collect::<Result<Vec<_>>>()?;
        let queue = queue.to_owned();
        self.write(move |w| w.send(&queue, requests, w.now())).await
    }

    /// Long-polls the writer for up to `max` messages: see [`crate::store::Store::receive`].
    pub(crate) async fn receive(
        &self,
        queue: &str,
        max: usize,
        wait: Option<Duration>,
    ) -> Result<Vec<Message>> {
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
            let (answer, rx) = oneshot::channel();
            let request = Request::Receive {
                queue: queue.to_owned(),
                max,
                answer,
            };
            let received = match self.submit(request, rx).await {
                Ok(received) => received,
                Err(e) => {
                    self.forget_notifier(queue, &notify);
                    return Err(e);
                }
            };
            if !received.messages.is_empty() {
                return Ok(received.messages);
            }
            let end = *deadline.get_or_insert_with(|| {
                started + Duration::from_secs(received.polling_wait_seconds.into())
            });
            let now = tokio::time::Instant::now();
            if now >= end {
                return Ok(received.messages);
            }
            let clock = &self.clock;
            let at = |t: u64| {
                tokio::time::Instant::now()
                    + Duration::from_millis(t.saturating_sub(clock.now_ms()))
            };
            let mut wake_at = received.next_visible_ms.map_or(end, |t| end.min(at(t)));
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

    /// On the writer, for the delivery order its index holds.
    pub(crate) async fn peek(&self, queue: &str, max: usize) -> Result<Vec<Message>> {
        let queue = queue.to_owned();
        self.direct(move |w| w.peek(&queue, max)).await
    }

    pub(crate) async fn delete_batch(
        &self,
        queue: &str,
        receipt_handles: Vec<String>,
    ) -> Result<Vec<Result<()>>> {
        let queue = queue.to_owned();
        self.direct(move |w| w.delete_handles(&queue, &receipt_handles))
            .await
    }

    pub(crate) async fn change_visibility(
        &self,
        queue: &str,
        receipt_handle: &str,
        visibility_timeout: u32,
    ) -> Result<VisibilityChanged> {
        let (queue, handle) = (queue.to_owned(), receipt_handle.to_owned());
        self.write(move |w| w.change_visibility(&queue, &handle, visibility_timeout, w.now()))
            .await
    }

    // ----- HTTP pushes -----

    pub(crate) async fn create_push_subscription(
        &self,
        topic: &str,
        name: &str,
        spec: SubscriptionSpec,
    ) -> Result<PushCreated> {
        let secret = new_secret();
        let (topic, name, kept) = (topic.to_owned(), name.to_owned(), secret.clone());
        let created = self
            .write(move |w| w.push_create(&topic, &name, spec, kept, w.now()))
            .await?;
        Ok(PushCreated {
            created,
            secret: created.then_some(secret),
        })
    }

    pub(crate) async fn push_subscriptions(&self) -> Result<Vec<PushSubscription>> {
        self.direct(|w| Ok(w.push_list(w.now()))).await
    }

    /// Answered at the commit, not after its fsync: a cycle is sluice's own bookkeeping.
    pub(crate) async fn push_cycle(
        &self,
        sub: i64,
        outcomes: Vec<PushOutcome>,
        claim: usize,
    ) -> Result<PushCycle> {
        let (request, rx) = Request::job(Isolation::Savepoint, When::Internal, 1, move |w| {
            w.push_cycle(sub, outcomes, claim, w.now())
        });
        self.submit(request, rx).await
    }

    pub(crate) async fn set_push_enabled(
        &self,
        topic: &str,
        name: &str,
        enabled: bool,
    ) -> Result<()> {
        let (topic, name) = (topic.to_owned(), name.to_owned());
        self.write(move |w| w.push_set_enabled_by_name(&topic, &name, enabled))
            .await
    }

    pub(crate) async fn set_push_strategy(
        &self,
        topic: &str,
        name: &str,
        strategy: NotifyStrategy,
    ) -> Result<()> {
        let (topic, name) = (topic.to_owned(), name.to_owned());
        self.write(move |w| w.push_set_strategy(&topic, &name, strategy))
            .await
    }

    pub(crate) async fn rotate_push_secret(
        &self,
        topic: &str,
        name: &str,
        grace: Duration,
    ) -> Result<String> {
        let secret = new_secret();
        let (topic, name, kept) = (topic.to_owned(), name.to_owned(), secret.clone());
        let grace_ms = grace.as_millis() as u64;
        self.write(move |w| w.push_rotate(&topic, &name, kept, grace_ms, w.now()))
            .await?;
        Ok(secret)
    }

    pub(crate) async fn push_status(&self, topic: &str, name: &str) -> Result<PushStatus> {
        let (topic, name) = (topic.to_owned(), name.to_owned());
        self.direct(move |w| w.push_status(&topic, &name)).await
    }

    pub(crate) async fn push_dead_letters(
        &self,
        topic: &str,
        name: &str,
        max: usize,
    ) -> Result<Vec<Message>> {
        let (topic, name) = (topic.to_owned(), name.to_owned());
        self.direct(move |w| w.push_dead_letters(&topic, &name, max, w.now()))
            .await
    }

    pub(crate) async fn redrive_push_dead_letters(
        &self,
        topic: &str,
        name: &str,
        max: usize,
    ) -> Result<u64> {
        let (topic, name) = (topic.to_owned(), name.to_owned());
        self.write(move |w| w.push_redrive(&topic, &name, max, w.now()))
            .await
    }

    // ----- records -----

    pub(crate) async fn insert_record(&self, kind: &str, record: Record) -> Result<bool> {
        let kind = kind.to_owned();
        self.write(move |w| records::insert(w.conn(), &kind, &record, w.now()))
            .await
    }

    pub(crate) async fn put_record(&self, kind: &str, record: Record) -> Result<()> {
        let kind = kind.to_owned();
        self.write(move |w| records::put(w.conn(), &kind, &record, w.now()))
            .await
    }

    pub(crate) async fn delete_record(&self, kind: &str, key: &str) -> Result<bool> {
        let (kind, key) = (kind.to_owned(), key.to_owned());
        self.write(move |w| records::delete(w.conn(), &kind, &key))
            .await
    }

    pub(crate) async fn get_record(&self, kind: &str, key: &str) -> Result<Option<String>> {
        let (kind, key) = (kind.to_owned(), key.to_owned());
        self.readers
            .run(move |c| records::get(c, &kind, &key))
            .await
    }

    pub(crate) async fn list_records(&self, kind: &str) -> Result<Vec<Record>> {
        let kind = kind.to_owned();
        self.readers.run(move |c| records::list(c, &kind)).await
    }

    pub(crate) async fn list_records_under(&self, kind: &str, parent: &str) -> Result<Vec<Record>> {
        let (kind, parent) = (kind.to_owned(), parent.to_owned());
        self.readers
            .run(move |c| records::list_under(c, &kind, &parent))
            .await
    }

    pub(crate) async fn count_records_under(&self, kind: &str, parent: &str) -> Result<usize> {
        let (kind, parent) = (kind.to_owned(), parent.to_owned());
        self.readers
            .run(move |c| records::count_under(c, &kind, &parent))
            .await
    }

    pub(crate) async fn delete_records(&self, kind: &str, keys: Vec<String>) -> Result<usize> {
        let kind = kind.to_owned();
        self.write(move |w| {
            let mut n = 0;
            for key in &keys {
                n += usize::from(records::delete(w.conn(), &kind, key)?);
            }
            Ok(n)
        })
        .await
    }

    pub(crate) async fn delete_records_under(&self, kind: &str, parent: &str) -> Result<usize> {
        let (kind, parent) = (kind.to_owned(), parent.to_owned());
        self.write(move |w| records::delete_under(w.conn(), &kind, &parent))
            .await
    }

    // ----- maintenance -----

    /// Copies the live database to `dest` with SQLite's online backup API.
    pub(crate) async fn backup(&self, dest: &Path) -> Result<()> {
        let dest = dest.to_path_buf();
        self.readers.run(move |c| read::backup(c, &dest)).await
    }

    /// Queues a receive whose caller is already gone (its answer channel closed).
    #[cfg(test)]
    pub(crate) async fn abandoned_receive(&self, queue: &str, max: usize) {
        let (answer, rx) = oneshot::channel();
        drop(rx);
        let request = Request::Receive {
            queue: queue.to_owned(),
            max,
            answer,
        };
        let lanes = self.lanes.as_ref().expect("open");
        assert!(lanes.interactive.send(request).await.is_ok());
    }

    fn notifier(&self, queue: &str) -> Arc<QueueWaker> {
        let mut map = self
            .notifiers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(queue.to_owned()).or_default().clone()
    }

    /// Drops the waker entry of a queue nobody waits on (after `QueueNotExist`), so polling
    /// made-up queue names cannot grow the map.
    fn forget_notifier(&self, queue: &str, notify: &Arc<QueueWaker>) {
        let mut map = self
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
}

/// A publish unit with each message's [`Digest`], computed on the caller's thread. The
/// attribute maps are dropped here too: the writer stores their JSON text, and a map freed on
/// the thread that built it is cheaper than one freed on the writer's.
fn digested(items: Vec<(String, PublishRequest)>) -> Result<Vec<(String, PublishRequest, Digest)>> {
    items
        .into_iter()
        .map(|(topic, mut req)| {
            let digest = Digest::of(&req.body, &req.attributes)?;
            req.attributes = BTreeMap::new();
            Ok((topic, req, digest))
        })
        .collect()
}
