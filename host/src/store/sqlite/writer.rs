//! The writer thread: owns the write connection and the in-memory index, merges waiting requests
//! into one transaction (group commit) and answers each only after the commit.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use rusqlite::Connection;
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, watch};

use super::index::{
    pack, unpack, Catalog, Journal, QueueIndex, QueueSql, QueueState, SubState, Tombstones,
    TopicState, Undo, Wake,
};
use super::receipt::Receipt;
use super::schema::{queue_table, queue_table_ddl, Opened};
use super::Notifiers;
use crate::store::clock::Clock;
use crate::store::error::StoreError;
use crate::store::metrics::Counts;
use crate::store::types::{
    Attributes, DeadLetterOrigin, Endpoint, Message, PublishRequest, Published, QueueAttributes,
    QueueInfo, SendRequest, Sent, StoreOptions, StorePaths, SubscriptionSpec, VisibilityChanged,
    DEFAULT_PRIORITY,
};

mod catalog;
mod checkpointer;
mod messages;
mod push;
mod request;
mod retention;
mod syncer;
use crate::ids::{IdGenerator, MessageId};
use crate::store::types::{md5_hex, md5_of};
pub(crate) use request::{Answer, Isolation, Request, When};
use request::{Failed, Held, Pending};

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Rows the retention sweep looks at per queue per batch.
const SWEEP_ROWS: i64 = 512;
/// Longest the idle writer sleeps before re-checking retention deadlines (guards against clock
/// surprises; the deadlines themselves set the timer).
const MAX_IDLE: Duration = Duration::from_secs(60);

/// At most this many units of rule outputs (one device message's outputs each) are taken at a
/// time before the interactive requests that arrived meanwhile: each costs the writer some
/// microseconds, and a consumer's receive or delete must not wait behind a thousand of them.
const MAX_BULK_PER_BATCH: usize = 256;
/// Most units one request of rule outputs carries; larger submissions are split. The
/// bulk lane holds `max_batch_requests / MAX_UNITS_PER_REQUEST` requests, so it buffers about
/// as many device messages as when each was a request of its own.
pub(crate) const MAX_UNITS_PER_REQUEST: usize = 32;
/// Longest a transaction stays open taking requests while the disk is busy with an earlier
/// commit (see `extend_while_syncing`): a slow fsync (a stalled disk takes hundreds of ms) must
/// not hold the transaction open, and the visibility of its messages, for that long.
const EXTEND_AT_MOST: Duration = Duration::from_millis(2);
/// Most long polls of one queue one commit wakes one by one; more new messages than this
/// wake this many (each takes up to 16, and every woken poll that finds more comes back).
const MAX_WAKES: u32 = 256;
/// Prepared statements kept per connection: each queue has about ten.
const STATEMENT_CACHE: usize = 512;

/// A receive's answer: the claimed messages, and what a long poll that got none needs.
#[derive(Debug)]
pub(crate) struct Received {
    pub messages: Vec<Message>,
    /// The queue's default long-poll wait, seconds.
    pub polling_wait_seconds: u32,
    /// When the next message of the queue becomes visible (a lease or delay ending), ms.
    pub next_visible_ms: Option<u64>,
}

/// Loads the catalog and index from disk (in the caller's thread, so errors surface from
/// `Store::open`) and starts the writer thread.
pub(crate) fn spawn(
    opened: Opened,
    paths: &StorePaths,
    opts: &StoreOptions,
    notifiers: Notifiers,
    commit_tx: watch::Sender<u64>,
    push_signals: Arc<crate::store::push::PushSignals>,
    counters: Arc<crate::store::metrics::StoreCounters>,
) -> Result<(Lanes, std::thread::JoinHandle<()>)> {
    let Opened { conn, lock } = opened;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    let mut w = Writer {
        conn,
        _lock: lock,
        db: paths.db.clone(),
        clock: opts.clock.clone(),
        ids: IdGenerator::new(opts.node_id),
        max_batch: opts.max_batch_requests.max(1),
        cat: Catalog::default(),
        undo: Vec::new(),
        wake: FxHashMap::default(),
        wake_names: Vec::new(),
        releases: Vec::new(),
        notifiers,
        commit_tx,
        commit_no: 0,
        max_db_bytes: opts.max_db_bytes,
        missing_dlq_warned: HashSet::new(),
        full: false,
        counters,
        op_counts: Counts::default(),
        batch_counts: Counts::default(),
        syncer: None,
        checkpoints: None,
    };
    if opts.synchronous == crate::store::types::Synchronous::Full {
        // FULL's guarantee, with the fsync on its own thread (see `syncer`).
        w.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| StoreError::from_sqlite(e, &paths.db))?;
        w.syncer = Some(
            syncer::Syncer::start(
                paths.db.clone(),
                syncer::wal_fsync(&paths.db),
                w.counters.clone(),
            )
            .map_err(|source| StoreError::Io {
                action: "cannot start the sync thread for",
                path: paths.db.clone(),
                source,
            })?,
        );
    }
    w.checkpoints = Some(
        checkpointer::Checkpoints::start(&w.conn, &paths.db, opts.synchronous, w.counters.clone())
            .map_err(|source| StoreError::Io {
                action: "cannot start the checkpoint thread for",
                path: paths.db.clone(),
                source,
            })?,
    );
    w.cat.push.signals = push_signals;
    w.load().map_err(|e| w.classify(e))?;
    let (interactive, interactive_rx) = mpsc::channel(w.max_batch);
    let (bulk, bulk_rx) = mpsc::channel((w.max_batch / MAX_UNITS_PER_REQUEST).max(4));
    let handle = std::thread::Builder::new()
        .name("sluice-store-writer".into())
        .spawn(move || w.run(interactive_rx, bulk_rx))
        .map_err(|source| StoreError::Io {
            action: "cannot start the writer thread for",
            path: paths.db.clone(),
            source,
        })?;
    Ok((Lanes { interactive, bulk }, handle))
}

/// Moves requests already waiting in `rx` into `batch` until it holds `up_to`. All at once:
/// that gives the senders their room back in one go, where taking one at a time woke a rule
/// thread blocked on the full queue for each message.
fn take(batch: &mut Vec<Request>, rx: &mut mpsc::Receiver<Request>, up_to: usize) {
    if batch.len() < up_to {
        // Ready at once with what is waiting; pending (nothing waiting) counts as nothing.
        let _ = rx.recv_many(batch, up_to - batch.len()).now_or_never();
    }
}

/// Moves waiting bulk requests into `batch` while it holds fewer than `up_to` requests and
/// they add up to fewer than [`MAX_BULK_PER_BATCH`] units.
fn take_bulk(batch: &mut Vec<Request>, rx: &mut mpsc::Receiver<Request>, up_to: usize) {
    let mut units = 0;
    while batch.len() < up_to && units < MAX_BULK_PER_BATCH {
        match rx.try_recv() {
            Ok(request) => {
                units += request.units();
                batch.push(request);
            }
            Err(_) => break,
        }
    }
}

/// Moves waiting requests into `batch` until it holds `up_to`: interactive ones first (up to
/// half), then bulk ones up to [`MAX_BULK_PER_BATCH`] units, then interactive ones again.
fn fill(
    batch: &mut Vec<Request>,
    interactive: &mut mpsc::Receiver<Request>,
    bulk: &mut mpsc::Receiver<Request>,
    up_to: usize,
) {
    take(batch, interactive, (up_to / 2).max(1));
    take_bulk(batch, bulk, up_to);
    take(batch, interactive, up_to);
}

/// An answer held until the commit.
enum HeldAnswer {
    /// Sent once the commit is on disk (at FULL; at the commit otherwise).
    Durable(Box<dyn Held>),
    /// Sent at the commit.
    AtCommit(Box<dyn Held>),
    /// A receive of this queue, sent at the commit (its messages would be visible again and
    /// its handles refused as stale; at-least-once, as after a lost consumer).
    Claim {
        queue: String,
        pending: Pending<Received>,
    },
}

impl HeldAnswer {
    fn fail(self, e: &StoreError) {
        match self {
            HeldAnswer::Durable(held) | HeldAnswer::AtCommit(held) => held.send(Some(e)),
            HeldAnswer::Claim { pending, .. } => Box::new(pending).send(Some(e)),
        }
    }
}

/// A batch whose transaction is open.
struct Open {
    /// Answers held until the commit.
    pending: Vec<HeldAnswer>,
    /// Requests applied.
    served: u64,
    /// Whether one is answered at the commit (not after the fsync), so worth committing soon.
    answers_at_commit: bool,
    /// Claims given back or messages expired at the start (a commit worth announcing).
    changed: bool,
    /// A shutdown request seen in the batch.
    shutdown: Option<Answer<()>>,
    /// Set when SQLite ended the transaction by itself (it rolls the whole transaction back on
    /// some errors, `SQLITE_FULL` among them, savepoint or not): the batch fails as a whole, and
    /// no later request may run, or it would commit on its own, outside the batch and its fsync.
    aborted: Option<StoreError>,
}

/// Answers every request of a batch that could not start with `e`; returns a shutdown
/// request's answer if one was among them.
fn refuse(batch: Vec<Request>, e: &StoreError) -> Option<Answer<()>> {
    let mut shutdown = None;
    for request in batch {
        match request {
            Request::Shutdown(answer) => shutdown = Some(answer),
            other => other.refuse(e.duplicate()),
        }
    }
    shutdown
}

/// The writer's two request queues. Rule outputs arrive on `bulk` as fast as devices publish
/// and keep it full under load (that is the back-pressure on ingest); everything else — API
/// requests such as a consumer's receive and delete, push bookkeeping — arrives on
/// `interactive`. Each batch takes interactive requests first (up to half the batch), then bulk
/// ones, then more interactive ones, so a consumer waits for at most the commit in progress,
/// not behind a thousand queued rule outputs, and a flood of API requests cannot starve ingest.
#[derive(Debug)]
pub(crate) struct Lanes {
    pub interactive: mpsc::Sender<Request>,
    pub bulk: mpsc::Sender<Request>,
}

pub(crate) struct Writer {
    conn: Connection,
    _lock: File,
    db: PathBuf,
    clock: Arc<dyn Clock>,
    ids: IdGenerator,
    max_batch: usize,
    cat: Catalog,
    undo: Vec<Undo>,
    /// Queues whose waiters are woken after the commit, and how.
    wake: FxHashMap<i64, Wake>,
    /// Deleted queues whose waiters are woken after the commit.
    wake_names: Vec<String>,
    /// Claims whose requester went away; released in the next batch.
    releases: Vec<(String, Receipt)>,
    notifiers: Notifiers,
    commit_tx: watch::Sender<u64>,
    commit_no: u64,
    /// `StoreOptions::max_db_bytes`.
    max_db_bytes: Option<u64>,
    /// Queues whose missing dead-letter queue was already reported.
    missing_dlq_warned: HashSet<i64>,
    /// Set at the start of a batch when the database has reached `max_db_bytes`: new messages
    /// are refused, everything else goes on (so consumers can drain it).
    full: bool,
    /// Shared with the store handles; added to after each commit.
    counters: Arc<crate::store::metrics::StoreCounters>,
    /// What the request being applied did (kept only if it succeeds).
    pub(super) op_counts: Counts,
    /// What the requests of this batch did (kept only if the batch commits).
    batch_counts: Counts,
    /// At `synchronous=FULL`, the thread that fsyncs each commit and then sends its answers.
    syncer: Option<syncer::Syncer>,
    /// Copies the write-ahead log into the database, mostly on a thread of its own.
    checkpoints: Option<checkpointer::Checkpoints>,
}

/// A full queue row as read from SQLite.
struct RawRow {
    next_visible_ms: u64,
    dequeue_count: u32,
    first_dequeue_ms: Option<u64>,
    priority: u8,
    enqueue_ms: u64,
    message_id: String,
    body_md5: Vec<u8>,
    tag: Option<String>,
    attributes: Option<String>,
    origin: Option<String>,
    body_ref: Option<i64>,
    body: Option<Vec<u8>>,
}

impl RawRow {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
        // Columns 0 (seq) and 2 (receipt_gen) are known to the caller.
        Ok(RawRow {
            next_visible_ms: r.get::<_, i64>(1)? as u64,
            dequeue_count: r.get::<_, i64>(3)? as u32,
            first_dequeue_ms: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
            priority: r.get::<_, i64>(5)? as u8,
            enqueue_ms: r.get::<_, i64>(6)? as u64,
            message_id: r.get(7)?,
            body_md5: r.get(8)?,
            tag: r.get(9)?,
            attributes: r.get(10)?,
            origin: r.get(11)?,
            body_ref: r.get(12)?,
            body: r.get(13)?,
        })
    }
}

/// What a receipt handle finds.
enum Lease {
    /// The handle is the row's current one and its lease is running.
    Held(RowState),
    /// The row exists but this handle no longer holds it.
    Stale(&'static str),
    /// No row (deleted, expired by retention, moved to the dead-letter queue, or made up).
    Gone,
}

/// The delivery state of one row, for handle checks.
struct RowState {
    gen: i64,
    next_visible_ms: u64,
    priority: u8,
    body_ref: Option<i64>,
}

/// What a message's stored row needs that only its content decides: computed by the caller,
/// so the single writer thread spends its time on SQLite, not on hashing and JSON.
pub(crate) struct Digest {
    pub md5: [u8; 16],
    /// The attributes as stored (JSON), `None` when there are none.
    pub attributes: Option<String>,
}

impl Digest {
    pub(crate) fn of(body: &[u8], attributes: &BTreeMap<String, String>) -> Result<Digest> {
        Ok(Digest {
            md5: md5_of(body),
            attributes: attributes_json(attributes)?,
        })
    }

    /// For attributes that are JSON text already.
    pub(crate) fn of_json(body: &[u8], attributes: &Attributes) -> Digest {
        Digest {
            md5: md5_of(body),
            attributes: attributes.json().map(str::to_owned),
        }
    }
}

fn attributes_json(a: &BTreeMap<String, String>) -> Result<Option<String>> {
    if a.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(a)
        .map(Some)
        .map_err(|e| StoreError::Internal(e.to_string()))
}

fn ms(seconds: u32) -> u64 {
    u64::from(seconds) * 1000
}

/// How a new row holds its body.
enum BodyRef<'a> {
    Inline(&'a [u8]),
    Shared(i64),
}

/// A new row's message fields.
struct NewRow<'a> {
    message_id: &'a str,
    md5: &'a [u8],
    tag: Option<&'a str>,
    attributes: Option<&'a str>,
    priority: u8,
    delay_s: u32,
    body: BodyRef<'a>,
}

impl Writer {
    fn classify(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Sqlite(e) => StoreError::from_sqlite(e, &self.db),
            e => e,
        }
    }

    fn journal(&mut self) -> Journal<'_> {
        Journal {
            undo: &mut self.undo,
            wake: &mut self.wake,
        }
    }

    // ----- loading -----

    fn load(&mut self) -> Result<()> {
        let now = self.clock.now_ms();
        let mut queues = Vec::new();
        {
            let mut stmt = self.conn.prepare(
                "SELECT id, name, create_time_ms, attributes, expired_total, dead_lettered_total \
                 FROM queues",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })?;
            for row in rows {
                queues.push(row?);
            }
        }
        for (id, name, created, attrs, expired, dead) in queues {
            let attrs: QueueAttributes = serde_json::from_str(&attrs)
                .map_err(|e| StoreError::Internal(format!("queue `{name}` attributes: {e}")))?;
            let mut idx = QueueIndex::default();
            let mut max_seq = 0u64;
            {
                let mut stmt = self.conn.prepare(&format!(
                    "SELECT seq, next_visible_ms, dequeue_count, priority FROM {}",
                    queue_table(id)
                ))?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    let seq = r.get::<_, i64>(0)? as u64;
                    let at = r.get::<_, i64>(1)? as u64;
                    let count: i64 = r.get(2)?;
                    let key = pack(r.get::<_, i64>(3)? as u8, seq);
                    max_seq = max_seq.max(seq);
                    if at <= now {
                        idx.visible.insert(key);
                    } else if count == 0 {
                        idx.delayed.insert((at, key));
                    } else {
                        idx.inflight.insert((at, key));
                    }
                }
            }
            tracing::debug!(
                queue = %name,
                visible = idx.visible.len(),
                inflight = idx.inflight.len(),
                delayed = idx.delayed.len(),
                "queue index rebuilt"
            );
            self.cat.queue_ids.insert(name.clone(), id);
            self.cat.queues.insert(
                id,
                QueueState {
                    id,
                    name,
                    attrs,
                    create_time_ms: created as u64,
                    idx,
                    next_seq: max_seq + 1,
                    next_sweep_ms: now,
                    expired_total: expired as u64,
                    dead_lettered_total: dead as u64,
                    tombstones: Tombstones::default(),
                    sql: QueueSql::new(id),
                },
            );
        }
        {
            let mut stmt = self.conn.prepare("SELECT id, name FROM topics")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (id, name) = row?;
                self.cat.topics.insert(
                    name,
                    TopicState {
                        id,
                        subs: BTreeMap::new(),
                    },
                );
            }
        }
        let mut stmt = self.conn.prepare(
            "SELECT s.id, t.name, s.name, s.spec FROM subscriptions s \
             JOIN topics t ON t.id = s.topic_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        for row in rows {
            let (id, topic, name, spec) = row?;
            let spec: SubscriptionSpec = serde_json::from_str(&spec)
                .map_err(|e| StoreError::Internal(format!("subscription `{name}` spec: {e}")))?;
            if let Some(t) = self.cat.topics.get_mut(&topic) {
                t.subs.insert(name, SubState { id, spec });
            }
        }
        drop(stmt);
        self.push_load(now)
    }

    // ----- the loop -----

    fn run(mut self, mut interactive: mpsc::Receiver<Request>, mut bulk: mpsc::Receiver<Request>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "store writer cannot start its timer runtime");
                return;
            }
        };
        loop {
            let mut batch = Vec::new();
            let mut closed = false;
            if self.releases.is_empty() {
                let idle = self.idle_time();
                let first = rt.block_on(async {
                    tokio::time::timeout(idle, async {
                        tokio::select! {
                            biased;
                            op = interactive.recv() => op,
                            op = bulk.recv() => op,
                        }
                    })
                    .await
                });
                match first {
                    Ok(Some(op)) => batch.push(op),
                    // One lane is closed for good (both close together, when the store is
                    // dropped): finish what the other still holds, then stop.
                    Ok(None) => closed = true,
                    Err(_) => {} // timer: retention sweeps
                }
            }
            fill(&mut batch, &mut interactive, &mut bulk, self.max_batch);
            if closed && batch.is_empty() {
                break;
            }
            let started = std::time::Instant::now();
            let mut open = match self.begin() {
                Ok(open) => open,
                Err(e) => {
                    tracing::error!(error = %e, "store cannot begin a transaction");
                    match refuse(batch, &e) {
                        Some(reply) => return self.shut_down(reply, interactive, bulk),
                        None => continue,
                    }
                }
            };
            self.apply_ops(&mut open, batch);
            self.extend_while_syncing(&rt, &mut open, &mut interactive, &mut bulk);
            let served = open.served;
            let shutdown = self.commit(open);
            if served > 0 {
                self.counters.commit_time.record_duration(started.elapsed());
            }
            if let Some(reply) = shutdown {
                return self.shut_down(reply, interactive, bulk);
            }
        }
        self.finish();
    }

    /// While the sync thread is still writing an earlier commit to disk, requests that arrive
    /// would wait for the next fsync whenever they commit: apply them in this transaction
    /// instead, and commit when the disk is free, the batch is full or [`EXTEND_AT_MOST`] has
    /// passed. Fewer, larger commits write each touched page once instead of once per small
    /// commit, at little cost in latency.
    fn extend_while_syncing(
        &mut self,
        rt: &tokio::runtime::Runtime,
        open: &mut Open,
        interactive: &mut mpsc::Receiver<Request>,
        bulk: &mut mpsc::Receiver<Request>,
    ) {
        let Some(syncer) = self.syncer.as_ref() else {
            return;
        };
        let progress = syncer.progress();
        let until = tokio::time::Instant::now() + EXTEND_AT_MOST;
        // An answer given at the commit would wait; answers that wait for an fsync
        // anyway lose nothing by it (the next fsync could not start before this one ends).
        while open.shutdown.is_none()
            && open.aborted.is_none()
            && open.served < self.max_batch as u64
            && !open.answers_at_commit
        {
            let next = rt.block_on(async {
                let synced = progress.notified();
                tokio::pin!(synced);
                synced.as_mut().enable();
                if !progress.busy() {
                    return None;
                }
                tokio::select! {
                    biased;
                    _ = &mut synced => None,
                    _ = tokio::time::sleep_until(until) => None,
                    op = interactive.recv() => op,
                    op = bulk.recv() => op,
                }
            });
            let Some(op) = next else {
                return;
            };
            let mut more = vec![op];
            let room = self.max_batch.saturating_sub(open.served as usize);
            fill(&mut more, interactive, bulk, room.max(1));
            self.apply_ops(open, more);
        }
    }

    /// Answers the requests still queued after a shutdown request, closes the store, and
    /// answers the shutdown last.
    fn shut_down(
        mut self,
        reply: Answer<()>,
        mut interactive: mpsc::Receiver<Request>,
        mut bulk: mpsc::Receiver<Request>,
    ) {
        for rx in [&mut interactive, &mut bulk] {
            rx.close();
            while let Ok(request) = rx.try_recv() {
                request.refuse(StoreError::Closed);
            }
        }
        self.finish();
        let _ = reply.send(Ok(()));
    }

    fn finish(&mut self) {
        // Every answer of a committed batch is sent before the store reports itself closed.
        if let Some(syncer) = self.syncer.as_mut() {
            syncer.finish();
        }
        if let Some(checkpoints) = self.checkpoints.as_mut() {
            checkpoints.finish();
        }
        // Long polls wake now and find the store closed instead of sleeping out their wait.
        if let Ok(map) = self.notifiers.lock() {
            for n in map.values() {
                n.visible.notify_waiters();
            }
        }
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            tracing::warn!(error = %e, "store checkpoint at close failed");
        }
    }

    /// How long to wait for a request before the next retention deadline.
    fn idle_time(&self) -> Duration {
        let now = self.clock.now_ms();
        let next = self
            .cat
            .queues
            .values()
            .filter(|q| !q.idx.visible.is_empty() || q.idx.earliest_invisible().is_some())
            .map(|q| q.next_sweep_ms)
            .min();
        match next {
            Some(t) => Duration::from_millis(t.saturating_sub(now)).min(MAX_IDLE),
            None => MAX_IDLE,
        }
    }

    /// Opens a batch's transaction: gives back claims nobody received and sweeps expired
    /// messages, so the requests of this batch see them gone.
    fn begin(&mut self) -> Result<Open> {
        if let Some(failed) = self.syncer.as_ref().and_then(|s| s.failed()) {
            return Err(failed);
        }
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| StoreError::from_sqlite(e, &self.db))?;
        self.undo.clear();
        self.wake.clear();
        self.wake_names.clear();
        self.batch_counts.clear();
        self.full = match self.used_bytes() {
            Ok(used) => self.max_db_bytes.is_some_and(|max| used >= max),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the database size");
                false
            }
        };
        let released = !self.releases.is_empty();
        for (queue, receipt) in std::mem::take(&mut self.releases) {
            if let Err(e) = self.in_savepoint(|w| w.release(&queue, receipt)) {
                tracing::warn!(queue = %queue, error = %e, "releasing an unanswered receive failed");
            }
        }
        let swept = match self.in_savepoint(|w| w.sweep_due()) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "retention sweep failed");
                0
            }
        };
        if self.conn.is_autocommit() {
            // SQLite rolled the transaction back while releasing or sweeping: so must the index.
            let mut undo = std::mem::take(&mut self.undo);
            self.cat.rollback(&mut undo, 0);
            self.undo = undo;
            return Err(StoreError::Internal(
                "the transaction was rolled back while it began; the batch is refused".into(),
            ));
        }
        Ok(Open {
            pending: Vec::new(),
            served: 0,
            answers_at_commit: false,
            changed: released || swept > 0,
            shutdown: None,
            aborted: None,
        })
    }

    /// Applies requests in the open transaction; their answers wait for the commit.
    fn apply_ops(&mut self, open: &mut Open, requests: Vec<Request>) {
        for request in requests {
            let job = match request {
                Request::Shutdown(answer) => {
                    open.shutdown = Some(answer);
                    continue;
                }
                other if open.aborted.is_some() => {
                    if let Some(e) = &open.aborted {
                        other.refuse(e.duplicate());
                    }
                    continue;
                }
                Request::Receive { queue, max, answer } => {
                    open.served += 1;
                    self.op_counts.clear();
                    // No savepoint: each claim is applied whole or not at all on its own.
                    let result = self.receive(&queue, max).map_err(|e| self.classify(e));
                    self.after_op(open, result.as_ref().err());
                    open.answers_at_commit = true;
                    open.pending.push(HeldAnswer::Claim {
                        queue,
                        pending: Pending { answer, result },
                    });
                    continue;
                }
                Request::Job(job) => job,
            };
            open.served += 1;
            let when = job.when();
            self.op_counts.clear();
            let (held, error) = match job.isolation() {
                Isolation::Savepoint => {
                    let mut job = Some(job);
                    let mut ran = None;
                    let outcome = self.in_savepoint(|w| {
                        let (held, error) = job.take().expect("a job runs once").run(w);
                        ran = Some(held);
                        error.map_or(Ok(()), Err)
                    });
                    match (outcome, ran) {
                        (Ok(()), Some(held)) => (held, None),
                        // Failed, or ran but its savepoint could not be released: rolled back,
                        // so it answers with the error.
                        (Err(e), Some(held)) => (Failed::wrap(held, e.duplicate()), Some(e)),
                        // The savepoint could not even be opened: it never ran.
                        (outcome, None) => {
                            let e = outcome.err().unwrap_or_else(|| {
                                StoreError::Internal("a request did not run".into())
                            });
                            self.after_op(open, Some(&e));
                            if let Some(job) = job {
                                job.refuse(e);
                            }
                            continue;
                        }
                    }
                }
                Isolation::Direct => job.run(self),
            };
            self.after_op(open, error.as_ref());
            open.answers_at_commit |= when != When::Durable;
            open.pending.push(match when {
                When::Durable => HeldAnswer::Durable(held),
                When::Internal => HeldAnswer::AtCommit(held),
            });
        }
    }

    /// Keeps what a request did if it succeeded; a failure that ended the whole transaction
    /// fails the batch as one.
    fn after_op(&mut self, open: &mut Open, error: Option<&StoreError>) {
        match error {
            None => self.batch_counts.absorb(&mut self.op_counts),
            Some(e) if self.conn.is_autocommit() => {
                tracing::error!(error = %e, "SQLite rolled back the whole batch; it fails as one");
                open.aborted = Some(e.duplicate());
            }
            Some(_) => {}
        }
    }

    /// Commits the open transaction and answers its requests (through the sync thread at
    /// FULL); returns the shutdown answer if one was in it.
    fn commit(&mut self, open: Open) -> Option<Answer<()>> {
        let Open {
            pending,
            served,
            changed,
            shutdown,
            aborted,
            ..
        } = open;
        let committed = match aborted {
            Some(e) => Err(e),
            None => self
                .conn
                .execute_batch("COMMIT")
                .map_err(|e| StoreError::from_sqlite(e, &self.db)),
        };
        match committed {
            Ok(()) => {
                if served > 0 || changed {
                    self.commit_no += 1;
                    self.commit_tx.send_replace(self.commit_no);
                    let queues = &self.cat.queues;
                    self.counters.add(&self.batch_counts, |id| {
                        queues.get(&id).map(|q| q.name.clone())
                    });
                    self.counters.batch_requests.record(served);
                }
                self.notify();
                self.cat.push.signal();
                let mut durable = Vec::with_capacity(pending.len());
                for held in pending {
                    match held {
                        HeldAnswer::Claim { queue, pending } => self.answer_claim(pending, queue),
                        HeldAnswer::AtCommit(held) => held.send(None),
                        HeldAnswer::Durable(held) => durable.push(held),
                    }
                }
                match &self.syncer {
                    // Answered once the commit is on disk, while the next batch runs.
                    Some(syncer) => syncer.after_commit(durable),
                    None => {
                        for held in durable {
                            held.send(None);
                        }
                    }
                }
                if let Some(checkpoints) = self.checkpoints.as_mut() {
                    checkpoints.after_commit(&self.conn);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed; batch rolled back");
                self.batch_counts.clear();
                let _ = self.conn.execute_batch("ROLLBACK");
                let mut undo = std::mem::take(&mut self.undo);
                self.cat.rollback(&mut undo, 0);
                self.undo = undo;
                let now = self.clock.now_ms();
                for q in self.cat.queues.values_mut() {
                    q.next_sweep_ms = q.next_sweep_ms.min(now);
                }
                for held in pending {
                    held.fail(&e);
                }
            }
        }
        shutdown
    }

    /// Answers a receive; when its requester went away, the messages it claimed are given back
    /// in the next batch rather than left leased to nobody.
    fn answer_claim(&mut self, pending: Pending<Received>, queue: String) {
        if let Err(Ok(received)) = pending.answer.send(pending.result) {
            self.give_back(&queue, received.messages);
        }
    }

    /// Hands claimed `messages` of `queue` that nobody will get back to the queue in the next
    /// batch, so they are not left leased to nobody until their visibility timeout.
    fn give_back(&mut self, queue: &str, messages: Vec<Message>) {
        for m in messages {
            let receipt = m.receipt_handle.as_deref().map(Receipt::decode);
            if let Some(Ok(receipt)) = receipt {
                self.releases.push((queue.to_owned(), receipt));
            }
        }
    }

    /// Bytes in use (pages not on the free list); only read when a limit is set.
    fn used_bytes(&self) -> Result<u64> {
        if self.max_db_bytes.is_none() {
            return Ok(0);
        }
        let q = |p: &str| -> Result<u64> {
            Ok(self
                .conn
                .prepare_cached(p)?
                .query_row([], |r| r.get::<_, i64>(0))? as u64)
        };
        let used = q("PRAGMA page_count")?.saturating_sub(q("PRAGMA freelist_count")?);
        Ok(used * q("PRAGMA page_size")?)
    }

    fn check_space(&self) -> Result<()> {
        match self.max_db_bytes {
            Some(max) if self.full => Err(StoreError::StorageFull(format!(
                "the database has reached its limit of {max} bytes (max_db_bytes)"
            ))),
            _ => Ok(()),
        }
    }

    /// Wakes the long polls of every queue that got a newly visible message or an earlier
    /// next-visible time in this commit.
    fn notify(&mut self) {
        if self.wake.is_empty() && self.wake_names.is_empty() {
            return;
        }
        let mut map = self
            .notifiers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (id, wake) in self.wake.drain() {
            let Some(q) = self.cat.queues.get(&id) else {
                continue;
            };
            let Some(n) = map.get(&q.name) else {
                continue;
            };
            if wake.retime {
                n.earliest.send_replace(q.idx.earliest_invisible());
            }
            // One waiter per new message (a woken waiter that goes away passes its turn on);
            // with none waiting, one permit is kept for the next.
            for _ in 0..wake.visible.min(MAX_WAKES) {
                n.visible.notify_one();
            }
        }
        for name in self.wake_names.drain(..) {
            // A deleted queue: its waiters wake to find it gone; a queue created later under the
            // same name gets a fresh entry.
            if let Some(n) = map.remove(&name) {
                n.visible.notify_waiters();
            }
        }
    }

    /// Runs `f` inside a SAVEPOINT: on error the database and the in-memory index are rolled
    /// back to where they were, and the rest of the batch goes on.
    fn in_savepoint<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let mark = self.undo.len();
        self.conn.prepare_cached("SAVEPOINT op")?.execute([])?;
        match f(self) {
            Ok(v) => {
                self.conn.prepare_cached("RELEASE op")?.execute([])?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK TO op; RELEASE op");
                let mut undo = std::mem::take(&mut self.undo);
                self.cat.rollback(&mut undo, mark);
                self.undo = undo;
                Err(self.classify(e))
            }
        }
    }

    /// The store's clock, ms.
    pub(crate) fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The write connection, for requests that only run statements (records).
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// One queue with its counts.
    pub(crate) fn get_queue(&mut self, name: &str) -> Result<QueueInfo> {
        let id = self.queue_id(name)?;
        self.queue_info(id)
    }

    /// Every queue with its counts, by name.
    pub(crate) fn list_queues(&mut self) -> Result<Vec<QueueInfo>> {
        let mut ids: Vec<(String, i64)> = self
            .cat
            .queue_ids
            .iter()
            .map(|(n, &id)| (n.clone(), id))
            .collect();
        ids.sort();
        ids.into_iter().map(|(_, id)| self.queue_info(id)).collect()
    }

    /// An API publish: one unit, answered with each message's id.
    pub(crate) fn publish_unit(
        &mut self,
        items: Vec<(String, PublishRequest, Digest)>,
    ) -> Result<Vec<Published>> {
        let now = self.clock.now_ms();
        let mut published = Vec::with_capacity(items.len());
        self.publish(items, now, Some(&mut published))?;
        Ok(published)
    }

    /// Deletes messages of `queue` by receipt handle: one result per handle. No savepoint:
    /// each delete is applied whole or not at all on its own (see `delete_batch`).
    pub(crate) fn delete_handles(
        &mut self,
        queue: &str,
        handles: &[String],
    ) -> Result<Vec<Result<()>>> {
        let id = self.queue_id(queue)?;
        self.with_queue(id, |w, q| w.delete_batch(q, handles))
    }

    pub(crate) fn queue_id(&self, name: &str) -> Result<i64> {
        self.cat
            .queue_ids
            .get(name)
            .copied()
            .ok_or_else(|| StoreError::QueueNotExist {
                name: name.to_owned(),
            })
    }

    /// Takes a queue out of the catalog for the duration of `f` (so `f` may touch other queues,
    /// e.g. the dead-letter queue) and puts it back whatever happens.
    pub(crate) fn with_queue<T>(
        &mut self,
        id: i64,
        f: impl FnOnce(&mut Self, &mut QueueState) -> Result<T>,
    ) -> Result<T> {
        let mut q = self
            .cat
            .queues
            .remove(&id)
            .ok_or_else(|| StoreError::Internal(format!("queue id {id} not in the catalog")))?;
        let result = f(self, &mut q);
        self.cat.queues.insert(id, q);
        result
    }
}
