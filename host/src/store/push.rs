//! Push-delivery state of HTTP subscriptions: what the store keeps so that the `deliver` stage
//! can push every message to every HTTP subscription at least once, on its retry schedule,
//! across restarts.
//!
//! # Rows
//! - `push_subs`: one row per HTTP subscription: enabled flag, the signing secret (and the
//!   previous one during a rotation's grace period), and durable delivery counters.
//! - `push_pending`: one row per message per HTTP subscription, inserted in the publish's own
//!   commit (so a message is never in the topic but missing for a push subscription). It holds
//!   the delivery state (`due_ms`, `attempts`, `last_error`) beside the message; the body is
//!   inline when the message has one destination, else a reference to the shared `bodies` row,
//!   exactly like queue rows. The row is deleted when the push succeeded, or moved to the
//!   subscription's dead-letter queue (or dropped and counted) when its schedule ran out. There
//!   is no retention sweep: a pending schedule always runs to its end.
//!
//! # The schedule survives restarts
//! A row stores when its next attempt is due and how many attempts failed, so the schedule
//! continues where it was. Retries that became due while sluice was down are set apart at open
//! and released to the delivery worker one at a time, [`OVERDUE_SPACING_MS`] apart (closer when
//! there are many, so all are released within [`OVERDUE_WINDOW_MS`]), counted from the
//! worker's first claim (not from the open, which may be seconds earlier) — instead of all
//! firing at once. First attempts are not held back.
//!
//! # Claims
//! The writer keeps, per subscription, `due: BTreeSet<(due_ms, seq)>` and the set of rows
//! leased to a delivery worker. A worker's [`Store::push_cycle`] reports the outcomes of its
//! finished attempts and claims due rows in one writer round trip. Leases live in memory only:
//! after a crash every leased row is simply due again, and is pushed again with the same
//! message id (`webhook-id`), so a receiver can deduplicate.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rusqlite::Transaction;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use super::error::StoreError;
use super::types::{validate_name, Message};
use super::writer::{OpKind, Reply};
use super::{Result, Store};

/// Longest push timeout a subscription may set, seconds.
pub const MAX_PUSH_TIMEOUT_SECONDS: u32 = 60;
/// Push timeout when the subscription does not set one, seconds.
pub const DEFAULT_PUSH_TIMEOUT_SECONDS: u32 = 5;
/// Most requests in flight to one subscription when it does not set `max_concurrency`: enough
/// to keep a healthy local endpoint busy over keep-alive connections, few enough that a dead
/// endpoint ties up little.
pub const DEFAULT_PUSH_CONCURRENCY: u32 = 32;
/// Highest `max_concurrency` a subscription may set.
pub const MAX_PUSH_CONCURRENCY: u32 = 256;
/// Spacing of overdue retries at open (released one by one, not all at once).
pub const OVERDUE_SPACING_MS: u64 = 100;
/// Overdue retries of one subscription are spread over at most this window at open.
pub const OVERDUE_WINDOW_MS: u64 = 60_000;
/// Default grace period of a secret rotation: the old secret keeps signing for a day, so
/// receivers can roll their configuration.
pub const DEFAULT_ROTATION_GRACE_SECONDS: u32 = 86_400;
/// Most dead letters one list or redrive call handles.
pub const MAX_DEAD_LETTER_PAGE: usize = 1000;

/// How the body of a push is shaped (docs/message-service.md, "HTTP push").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ContentFormat {
    /// The message body as is; id and tag in `x-mns-message-id` / `x-mns-message-tag`.
    Simplified,
    /// An MNS JSON notification object.
    Json,
    /// An MNS `<Notification>` XML document (MNS's default, so it is ours).
    #[default]
    Xml,
}

/// When failed pushes are retried (docs/message-service.md, "Retry strategies").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NotifyStrategy {
    /// Up to 3 retries, each after a random 10–20 s (MNS's default, so it is ours).
    #[default]
    BackoffRetry,
    /// Up to 176 retries: 1, 2, 4, ..., 256 s, then 512 s (about one day in all).
    ExponentialDecayRetry,
}

/// The endpoint of an HTTP subscription and how it is pushed to.
///
/// Stored in the subscription's spec (shown by `show`/`list`); the signing secret is not part of
/// it, so it is never shown there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpPush {
    /// `http://` or `https://` URL the messages are POSTed to.
    pub url: String,
    /// The retry schedule.
    #[serde(default)]
    pub strategy: NotifyStrategy,
    /// The body format.
    #[serde(default)]
    pub format: ContentFormat,
    /// An attempt that has not answered 2xx within this many seconds failed (1–60, default 5).
    #[serde(default = "default_push_timeout")]
    pub push_timeout_seconds: u32,
    /// Queue that receives messages whose schedule ran out; without it they are dropped,
    /// counted and logged.
    #[serde(default)]
    pub dead_letter_queue: Option<String>,
    /// Most requests in flight to this endpoint (1–256, default 32).
    #[serde(default = "default_concurrency")]
    pub max_concurrency: u32,
}

fn default_push_timeout() -> u32 {
    DEFAULT_PUSH_TIMEOUT_SECONDS
}

fn default_concurrency() -> u32 {
    DEFAULT_PUSH_CONCURRENCY
}

impl HttpPush {
    /// An endpoint with the defaults (BACKOFF_RETRY, XML, 5 s).
    pub fn new(url: impl Into<String>) -> HttpPush {
        HttpPush {
            url: url.into(),
            strategy: NotifyStrategy::default(),
            format: ContentFormat::default(),
            push_timeout_seconds: DEFAULT_PUSH_TIMEOUT_SECONDS,
            dead_letter_queue: None,
            max_concurrency: DEFAULT_PUSH_CONCURRENCY,
        }
    }

    /// Checks the URL and the ranges, naming the field at fault.
    pub fn validate(&self) -> Result<()> {
        let url = reqwest::Url::parse(&self.url).map_err(|e| {
            StoreError::invalid("http", format!("`{}` is not a URL: {e}", self.url))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(StoreError::invalid(
                "http",
                "the endpoint must be an http:// or https:// URL with a host",
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(StoreError::invalid(
                "http",
                "credentials in the URL are not allowed (they would be shown by `sub show`)",
            ));
        }
        super::types::check_range(
            "push_timeout_seconds",
            self.push_timeout_seconds.into(),
            1,
            MAX_PUSH_TIMEOUT_SECONDS.into(),
        )?;
        super::types::check_range(
            "max_concurrency",
            self.max_concurrency.into(),
            1,
            MAX_PUSH_CONCURRENCY.into(),
        )?;
        if let Some(q) = &self.dead_letter_queue {
            validate_name("dead_letter_queue", q)?;
        }
        Ok(())
    }
}

/// The answer to creating an HTTP subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushCreated {
    /// `false` when the same subscription already existed.
    pub created: bool,
    /// The signing secret (`whsec_...`), only when it was just created: it is shown once.
    pub secret: Option<String>,
}

/// An HTTP subscription as the delivery workers need it (with its secrets: never serialise it
/// to a user).
#[derive(Clone, PartialEq, Eq)]
pub struct PushSubscription {
    /// Internal id (stable for the subscription's life).
    pub id: i64,
    /// The topic.
    pub topic: String,
    /// The subscription name.
    pub name: String,
    /// Endpoint and settings.
    pub push: HttpPush,
    /// Disabled subscriptions keep their pending messages but are not pushed to.
    pub enabled: bool,
    /// Current secret.
    pub secret: String,
    /// The previous secret while its grace period runs: `(secret, until_ms)`.
    pub old_secret: Option<(String, u64)>,
}

impl std::fmt::Debug for PushSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushSubscription")
            .field("id", &self.id)
            .field("topic", &self.topic)
            .field("name", &self.name)
            .field("push", &self.push)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// One claimed push: the message and its delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushDelivery {
    /// The row (report outcomes by it).
    pub seq: u64,
    /// Message id: the same on every attempt (`webhook-id`).
    pub message_id: String,
    /// The body as published.
    pub body: Bytes,
    /// MD5 of the body, 32 uppercase hex characters.
    pub body_md5: String,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Attributes.
    pub attributes: BTreeMap<String, String>,
    /// When it was published, ms.
    pub publish_time_ms: u64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When this attempt was due, ms (for latency figures).
    pub due_ms: u64,
}

/// What became of one claimed push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushResult {
    /// A 2xx within the timeout: the row goes.
    Delivered,
    /// A failed attempt; try again at `due_ms`.
    Retry {
        /// Next attempt, ms.
        due_ms: u64,
        /// Why this attempt failed (kept as the last error).
        error: String,
    },
    /// `410 Gone`: the subscription is disabled; the message stays pending for a re-enable.
    Disable {
        /// Why.
        error: String,
    },
    /// The schedule ran out (or the push can never succeed): dead-letter queue or drop.
    GiveUp {
        /// The last error.
        error: String,
    },
    /// Not attempted (shutdown): due again at once, no attempt counted.
    Release,
}

/// The outcome of one claimed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOutcome {
    /// The claimed row.
    pub seq: u64,
    /// What happened.
    pub result: PushResult,
}

/// What a [`Store::push_cycle`] hands back.
#[derive(Debug, Clone, Default)]
pub struct PushCycle {
    /// Claimed rows (now leased to the caller until it reports them).
    pub deliveries: Vec<PushDelivery>,
    /// Earliest due time of the rows left unclaimed, ms (when to come back).
    pub next_due_ms: Option<u64>,
    /// The subscription is enabled (nothing is claimed while it is not).
    pub enabled: bool,
    /// The subscription no longer exists.
    pub gone: bool,
}

/// Delivery counters and state of an HTTP subscription (shown by `sub show`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct PushStatus {
    /// Pushing or not.
    pub enabled: bool,
    /// Why it was disabled, when the store did it (`410 Gone`).
    pub disabled_reason: Option<String>,
    /// Successful pushes (since creation).
    pub delivered_total: u64,
    /// Failed attempts, including ones later retried successfully.
    pub failed_attempts_total: u64,
    /// Messages dropped after their last retry (no dead-letter queue).
    pub dropped_total: u64,
    /// Messages moved to the dead-letter queue after their last retry.
    pub dead_lettered_total: u64,
    /// Messages waiting for a push (including those in flight).
    pub backlog: u64,
    /// Of those, being pushed right now.
    pub in_flight: u64,
    /// When the next waiting attempt is due, ms.
    pub next_attempt_time_ms: Option<u64>,
    /// The last failure.
    pub last_error: Option<String>,
    /// When it happened, ms.
    pub last_error_time_ms: Option<u64>,
    /// While a rotated-out secret still signs: until when, ms.
    pub previous_secret_valid_until_ms: Option<u64>,
}

// ----- writer-side state -----

/// Durable counters of one subscription (also the `push_subs` columns).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PushCounters {
    pub delivered: u64,
    pub failed: u64,
    pub dropped: u64,
    pub dead_lettered: u64,
    pub last_error: Option<(String, u64)>,
}

/// Catalog data of one subscription (small, cloned for undo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PushMeta {
    pub topic: String,
    pub name: String,
    pub push: HttpPush,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub secret: String,
    pub old_secret: Option<(String, u64)>,
}

/// One HTTP subscription in the writer.
#[derive(Debug)]
pub(crate) struct PushSubState {
    pub id: i64,
    pub meta: PushMeta,
    pub counters: PushCounters,
    /// Waiting rows: `(due_ms, seq)`.
    pub due: BTreeSet<(u64, u64)>,
    /// Leased rows: seq -> due_ms they were claimed at.
    pub leased: HashMap<u64, u64>,
    /// Retries found overdue at open, released into `due` one per `overdue_spacing_ms`.
    pub overdue: std::collections::VecDeque<(u64, u64)>,
    /// When the next overdue retry may be released (0: at the first claim).
    pub overdue_next_ms: u64,
    /// Spacing of the overdue releases.
    pub overdue_spacing_ms: u64,
}

impl PushSubState {
    /// Moves overdue retries whose turn has come into `due`, journaled.
    pub fn release_overdue(&mut self, now: u64, undo: &mut Vec<super::index::Undo>) {
        while !self.overdue.is_empty() && self.overdue_next_ms <= now {
            let Some(entry) = self.overdue.pop_front() else {
                break;
            };
            undo.push(super::index::Undo::Push(PushUndo::OverdueReleased(
                self.id,
                entry,
                self.overdue_next_ms,
            )));
            self.due.insert((now, entry.1));
            undo.push(super::index::Undo::Push(PushUndo::DueAdded(
                self.id,
                (now, entry.1),
            )));
            self.overdue_next_ms = now + self.overdue_spacing_ms;
        }
    }

    /// When the earliest waiting row may be claimed.
    pub fn next_due(&self) -> Option<u64> {
        let overdue = (!self.overdue.is_empty()).then_some(self.overdue_next_ms);
        match (self.due.first().map(|e| e.0), overdue) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Wakers shared by the writer and the delivery workers.
#[derive(Debug)]
pub struct PushSignals {
    subs: Mutex<HashMap<i64, Arc<Notify>>>,
    catalog: watch::Sender<u64>,
}

impl Default for PushSignals {
    fn default() -> Self {
        PushSignals {
            subs: Mutex::default(),
            catalog: watch::channel(0).0,
        }
    }
}

impl PushSignals {
    /// The waker of one subscription: notified after a commit that gave it new due work
    /// (a publish, a redrive, an enable).
    pub fn sub(&self, id: i64) -> Arc<Notify> {
        let mut map = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id).or_default().clone()
    }

    /// Bumped after a commit that created, deleted, enabled, disabled or re-keyed an HTTP
    /// subscription (the supervisor then re-reads the list).
    pub fn catalog(&self) -> watch::Receiver<u64> {
        self.catalog.subscribe()
    }

    /// Tells the supervisor to re-read the subscriptions (JetStream: the catalog bucket
    /// changed, maybe through another process).
    pub(crate) fn catalog_changed(&self) {
        self.catalog.send_modify(|n| *n += 1);
    }

    fn wake(&self, ids: &HashSet<i64>) {
        let map = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            if let Some(n) = map.get(id) {
                // notify_one stores a permit, so a worker between two waits does not miss it.
                n.notify_one();
            }
        }
    }
}

/// All HTTP subscriptions in the writer, with what to signal after the next commit.
#[derive(Debug, Default)]
pub(crate) struct PushIndex {
    pub subs: HashMap<i64, PushSubState>,
    pub next_seq: u64,
    pub signals: Arc<PushSignals>,
    pub wake: HashSet<i64>,
    pub catalog_changed: bool,
}

/// How to undo one in-memory push change (see `index::Undo`).
#[derive(Debug)]
pub(crate) enum PushUndo {
    DueAdded(i64, (u64, u64)),
    DueRemoved(i64, (u64, u64)),
    LeaseAdded(i64, u64),
    LeaseRemoved(i64, u64, u64),
    Counters(i64, PushCounters),
    Meta(i64, Box<PushMeta>),
    SubAdded(i64),
    SubRemoved(Box<PushSubState>),
    OverdueReleased(i64, (u64, u64), u64),
}

impl PushIndex {
    /// Undoes one change.
    pub fn undo(&mut self, u: PushUndo) {
        match u {
            PushUndo::DueAdded(s, e) => {
                if let Some(s) = self.subs.get_mut(&s) {
                    s.due.remove(&e);
                }
            }
            PushUndo::DueRemoved(s, e) => {
                if let Some(s) = self.subs.get_mut(&s) {
                    s.due.insert(e);
                }
            }
            PushUndo::LeaseAdded(s, seq) => {
                if let Some(s) = self.subs.get_mut(&s) {
                    s.leased.remove(&seq);
                }
            }
            PushUndo::LeaseRemoved(s, seq, due) => {
                if let Some(s) = self.subs.get_mut(&s) {
                    s.leased.insert(seq, due);
                }
            }
            PushUndo::Counters(s, c) => {
                if let Some(s) = self.subs.get_mut(&s) {
                    s.counters = c;
                }
            }
            PushUndo::Meta(s, m) => {
                if let Some(s) = self.subs.get_mut(&s) {
                    s.meta = *m;
                }
            }
            PushUndo::SubAdded(id) => {
                self.subs.remove(&id);
            }
            PushUndo::SubRemoved(s) => {
                self.subs.insert(s.id, *s);
            }
            PushUndo::OverdueReleased(s, entry, next) => {
                if let Some(s) = self.subs.get_mut(&s) {
                    s.overdue.push_front(entry);
                    s.overdue_next_ms = next;
                }
            }
        }
    }

    /// Wakes the workers that got work in the commit just made, and the supervisor when the
    /// catalog changed. Spurious wakes (after a rollback) are harmless.
    pub fn signal(&mut self) {
        if !self.wake.is_empty() {
            self.signals.wake(&self.wake);
            self.wake.clear();
        }
        if std::mem::take(&mut self.catalog_changed) {
            self.signals.catalog.send_modify(|n| *n += 1);
        }
    }

    pub fn status(&self, id: i64) -> Option<PushStatus> {
        let s = self.subs.get(&id)?;
        Some(PushStatus {
            enabled: s.meta.enabled,
            disabled_reason: s.meta.disabled_reason.clone(),
            delivered_total: s.counters.delivered,
            failed_attempts_total: s.counters.failed,
            dropped_total: s.counters.dropped,
            dead_lettered_total: s.counters.dead_lettered,
            backlog: (s.due.len() + s.leased.len() + s.overdue.len()) as u64,
            in_flight: s.leased.len() as u64,
            next_attempt_time_ms: s.next_due(),
            last_error: s.counters.last_error.as_ref().map(|e| e.0.clone()),
            last_error_time_ms: s.counters.last_error.as_ref().map(|e| e.1),
            previous_secret_valid_until_ms: s.meta.old_secret.as_ref().map(|o| o.1),
        })
    }
}

/// Spacing of `n` overdue retries released after an open: [`OVERDUE_SPACING_MS`], closer when
/// that would take longer than [`OVERDUE_WINDOW_MS`] in all.
pub(crate) fn overdue_spacing(n: usize) -> u64 {
    if n == 0 {
        return OVERDUE_SPACING_MS;
    }
    OVERDUE_SPACING_MS.min(OVERDUE_WINDOW_MS / n as u64).max(1)
}

/// A fresh signing secret: `whsec_` + base64 of 32 random bytes (Standard Webhooks).
pub(crate) fn new_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

// ----- schema -----

/// Version 2: push delivery state (see the module doc).
pub(crate) fn migrate_v2_push(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE push_subs (
            sub_id INTEGER PRIMARY KEY,
            enabled INTEGER NOT NULL,
            disabled_reason TEXT,
            secret TEXT NOT NULL,
            old_secret TEXT,
            old_secret_until_ms INTEGER,
            delivered_total INTEGER NOT NULL DEFAULT 0,
            failed_attempts_total INTEGER NOT NULL DEFAULT 0,
            dropped_total INTEGER NOT NULL DEFAULT 0,
            dead_lettered_total INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            last_error_ms INTEGER
        );
        CREATE TABLE push_pending (
            seq INTEGER PRIMARY KEY,
            sub_id INTEGER NOT NULL,
            due_ms INTEGER NOT NULL,
            attempts INTEGER NOT NULL,
            publish_ms INTEGER NOT NULL,
            message_id TEXT NOT NULL,
            body_md5 BLOB NOT NULL,
            tag TEXT,
            attributes TEXT,
            last_error TEXT,
            body_ref INTEGER,
            body BLOB
        );",
    )
}

// ----- writer requests -----

/// Push requests to the writer (one `OpKind` variant, so the writer's enum grows by one).
pub(crate) enum PushOp {
    Create {
        topic: String,
        name: String,
        spec: super::types::SubscriptionSpec,
        secret: String,
    },
    List,
    Cycle {
        sub: i64,
        outcomes: Vec<PushOutcome>,
        claim: usize,
    },
    SetEnabled {
        topic: String,
        name: String,
        enabled: bool,
    },
    Rotate {
        topic: String,
        name: String,
        secret: String,
        grace_ms: u64,
    },
    SetStrategy {
        topic: String,
        name: String,
        strategy: NotifyStrategy,
    },
    Status {
        topic: String,
        name: String,
    },
    DeadLetters {
        topic: String,
        name: String,
        max: usize,
        redrive: bool,
    },
}

/// Push answers from the writer.
#[derive(Debug)]
pub(crate) enum PushReply {
    Created(bool),
    List(Vec<PushSubscription>),
    Cycle(PushCycle),
    Status(PushStatus),
    DeadLetters(Vec<Message>),
    Redriven(u64),
    Unit,
}

// ----- the handle -----

impl Store {
    async fn push_call(&self, op: PushOp) -> Result<PushReply> {
        match self.call(OpKind::Push(Box::new(op))).await? {
            Reply::Push(r) => Ok(*r),
            other => Err(other.unexpected()),
        }
    }

    /// Creates an HTTP subscription with a fresh signing secret, returned only when the
    /// subscription is new (the secret is shown once). The dead-letter queue, when given, must
    /// exist.
    pub async fn create_push_subscription(
        &self,
        topic: &str,
        name: &str,
        spec: super::types::SubscriptionSpec,
    ) -> Result<PushCreated> {
        validate_name("subscription_name", name)?;
        let super::types::Endpoint::Http(push) = &spec.endpoint else {
            return Err(StoreError::invalid("http", "not an HTTP subscription"));
        };
        push.validate()?;
        if let Some(tag) = &spec.filter_tag {
            super::types::validate_tag_and_attributes(Some(tag), &Default::default()).map_err(
                |_| StoreError::invalid("filter_tag", "a filter tag has 1 to 16 characters"),
            )?;
        }
        if let Some(js) = self.nats() {
            return js.create_push_subscription(topic, name, spec).await;
        }
        let secret = new_secret();
        match self
            .push_call(PushOp::Create {
                topic: topic.to_owned(),
                name: name.to_owned(),
                spec,
                secret: secret.clone(),
            })
            .await?
        {
            PushReply::Created(created) => Ok(PushCreated {
                created,
                secret: created.then_some(secret),
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Every HTTP subscription with its secrets, for the delivery workers.
    pub async fn push_subscriptions(&self) -> Result<Vec<PushSubscription>> {
        if let Some(js) = self.nats() {
            return Ok(js.push_subscriptions());
        }
        match self.push_call(PushOp::List).await? {
            PushReply::List(l) => Ok(l),
            other => Err(unexpected(other)),
        }
    }

    /// Records the outcomes of finished pushes of subscription `sub` and claims up to `claim`
    /// rows that are due now, in one commit. Claimed rows are leased to the caller until it
    /// reports them (or the process ends).
    pub async fn push_cycle(
        &self,
        sub: i64,
        outcomes: Vec<PushOutcome>,
        claim: usize,
    ) -> Result<PushCycle> {
        if let Some(js) = self.nats() {
            return js.push_cycle(sub, outcomes, claim).await;
        }
        match self
            .push_call(PushOp::Cycle {
                sub,
                outcomes,
                claim,
            })
            .await?
        {
            PushReply::Cycle(c) => Ok(c),
            other => Err(unexpected(other)),
        }
    }

    /// Enables or disables an HTTP subscription (a disabled one keeps its pending messages).
    pub async fn set_push_enabled(&self, topic: &str, name: &str, enabled: bool) -> Result<()> {
        if let Some(js) = self.nats() {
            return js.set_push_enabled(topic, name, enabled).await;
        }
        match self
            .push_call(PushOp::SetEnabled {
                topic: topic.to_owned(),
                name: name.to_owned(),
                enabled,
            })
            .await?
        {
            PushReply::Unit => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Changes an HTTP subscription's retry strategy (MNS SetSubscriptionAttributes). Pending
    /// messages keep the attempts they have made; their next retry follows the new strategy.
    pub async fn set_push_strategy(
        &self,
        topic: &str,
        name: &str,
        strategy: NotifyStrategy,
    ) -> Result<()> {
        if let Some(js) = self.nats() {
            return js.set_push_strategy(topic, name, strategy).await;
        }
        match self
            .push_call(PushOp::SetStrategy {
                topic: topic.to_owned(),
                name: name.to_owned(),
                strategy,
            })
            .await?
        {
            PushReply::Unit => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Replaces the signing secret; the old one keeps signing beside it for `grace` (both
    /// signatures are sent). Returns the new secret (shown once).
    pub async fn rotate_push_secret(
        &self,
        topic: &str,
        name: &str,
        grace: Duration,
    ) -> Result<String> {
        if let Some(js) = self.nats() {
            return js.rotate_push_secret(topic, name, grace).await;
        }
        let secret = new_secret();
        match self
            .push_call(PushOp::Rotate {
                topic: topic.to_owned(),
                name: name.to_owned(),
                secret: secret.clone(),
                grace_ms: grace.as_millis() as u64,
            })
            .await?
        {
            PushReply::Unit => Ok(secret),
            other => Err(unexpected(other)),
        }
    }

    /// Delivery counters and state of an HTTP subscription.
    pub async fn push_status(&self, topic: &str, name: &str) -> Result<PushStatus> {
        if let Some(js) = self.nats() {
            return js.push_status(topic, name).await;
        }
        match self
            .push_call(PushOp::Status {
                topic: topic.to_owned(),
                name: name.to_owned(),
            })
            .await?
        {
            PushReply::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// The subscription's messages in its dead-letter queue (visible ones, oldest first, at
    /// most `max`), without changing anything.
    pub async fn push_dead_letters(
        &self,
        topic: &str,
        name: &str,
        max: usize,
    ) -> Result<Vec<Message>> {
        if let Some(js) = self.nats() {
            return js
                .push_dead_letters(topic, name, max.clamp(1, MAX_DEAD_LETTER_PAGE))
                .await;
        }
        match self
            .push_call(PushOp::DeadLetters {
                topic: topic.to_owned(),
                name: name.to_owned(),
                max: max.clamp(1, MAX_DEAD_LETTER_PAGE),
                redrive: false,
            })
            .await?
        {
            PushReply::DeadLetters(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    /// Moves up to `max` of the subscription's visible dead letters back to pending pushes (a
    /// fresh schedule, same message id), in one commit. Returns how many moved.
    pub async fn redrive_push_dead_letters(
        &self,
        topic: &str,
        name: &str,
        max: usize,
    ) -> Result<u64> {
        if let Some(js) = self.nats() {
            return js
                .redrive_push_dead_letters(topic, name, max.clamp(1, MAX_DEAD_LETTER_PAGE))
                .await;
        }
        match self
            .push_call(PushOp::DeadLetters {
                topic: topic.to_owned(),
                name: name.to_owned(),
                max: max.clamp(1, MAX_DEAD_LETTER_PAGE),
                redrive: true,
            })
            .await?
        {
            PushReply::Redriven(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// Wakers of the delivery workers.
    pub fn push_signals(&self) -> Arc<PushSignals> {
        self.inner.push_signals.clone()
    }
}

fn unexpected(r: PushReply) -> StoreError {
    StoreError::Internal(format!("unexpected push reply {r:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overdue_retries_are_spaced_within_the_window() {
        assert_eq!(overdue_spacing(1), OVERDUE_SPACING_MS);
        assert_eq!(overdue_spacing(600), OVERDUE_SPACING_MS);
        assert_eq!(overdue_spacing(6000), 10);
        assert_eq!(overdue_spacing(10_000_000), 1);
        assert!(overdue_spacing(10_000) * 10_000 <= OVERDUE_WINDOW_MS);
    }

    #[test]
    fn secrets_are_standard_webhooks_shaped_and_fresh() {
        use base64::Engine;
        let a = new_secret();
        let b = new_secret();
        assert_ne!(a, b);
        let raw = a.strip_prefix("whsec_").unwrap();
        let key = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .unwrap();
        assert_eq!(key.len(), 32);
    }

    #[test]
    fn http_push_validation_names_the_field() {
        let mut p = HttpPush::new("ftp://x");
        assert_eq!(p.validate().unwrap_err().field(), Some("http"));
        p.url = "http://user:pw@example.com/".into();
        assert_eq!(p.validate().unwrap_err().field(), Some("http"));
        p.url = "http://127.0.0.1:9/hook".into();
        p.validate().unwrap();
        p.push_timeout_seconds = 61;
        assert_eq!(
            p.validate().unwrap_err().field(),
            Some("push_timeout_seconds")
        );
    }
}
