//! Topics, subscriptions and queues on a NATS JetStream cluster: the store's second backend,
//! for fleets that outgrow one machine (`--store nats://HOST:PORT[,...]`).
//!
//! # Mapping
//! - **Catalog**: topics, queues and subscriptions are JSON records in replicated key-value
//!   buckets (`{prefix}_topics`, `{prefix}_queues`, `{prefix}_subscriptions`), read through a
//!   local copy that a watcher keeps current ([`catalog`]). The receipt-signing key and the node
//!   id claims live in `{prefix}_meta`.
//! - **A queue** is one stream `{prefix}_q_{queue}` (work-queue retention, file storage, the
//!   configured replicas, `max_age` = `message_retention_period`) on subject
//!   `{prefix}.q.{queue}`, and one durable pull consumer `q` whose ack wait is the queue's
//!   `visibility_timeout`. A receive is a pull; a delete is an ack; a visibility change is a NAK
//!   with that delay.
//! - **Delay** (per message or the queue's `delay_seconds`) is the server's own message
//!   scheduling: the message is stored on `{prefix}.qd.{queue}.{id}` with `Nats-Schedule: @at
//!   TIME` and the server moves it to the queue's subject at that time.
//! - **A topic publish** is fanned out by sluice to every matching queue subscription, each copy
//!   with the deduplicating id `{message id}.{subscription}`, so a fan-out that failed half-way
//!   and is sent again stores no copy twice (within the two-minute duplicate window).
//! - **Receipt handles** carry the ack subject of the delivery and the end of its lease, signed
//!   with the cluster's key ([`receipt`]).
//! - **Dead letters**: a delivery whose count passes `max_receive_count` is copied to the
//!   dead-letter queue (deduplicating id `dl.{message id}`) and then acked, instead of being
//!   returned.
//! - **Records** (rules, devices, products, access keys): a bucket per kind, followed by every
//!   process ([`records`]).
//! - **HTTP push**: pending pushes in a stream per topic, one durable consumer per HTTP
//!   subscription shared by every process ([`push`]).
//! - **A node lost**: writes that meet a stream or consumer without a leader (an election) are
//!   tried again with backoff until the request's deadline, with the same deduplicating ids
//!   ([`retry`]).
//!
//! # Where the semantics differ from the SQLite store
//! Documented in the README ("The message service on NATS JetStream") and shown by the
//! conformance suite: priority is kept but not honoured (stream order); a handle replaced by a
//! visibility change keeps working until its own lease ends; peek shows in-flight messages too
//! and no dequeue counts; `first_dequeue_time_ms` is known only on the first delivery; a publish
//! unit is at-least-once rather than atomic; `expired_total` is not kept (the server drops
//! expired messages silently); HTTP push ([`push`]) counts deliveries rather than attempts.

mod catalog;
pub mod durability;
mod publish;
mod push;
mod queue;
mod receipt;
mod records;
mod retry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind};
use async_nats::jetstream::kv::CreateErrorKind;
use async_nats::jetstream::stream::{
    self, ConsumerError, ConsumerErrorKind, RetentionPolicy, StorageType,
};
use async_nats::jetstream::Context;
use bytes::Bytes;
use tokio::sync::mpsc;

use self::catalog::{open_bucket, Catalog, QueueRecord, SubRecord, TopicRecord};
use self::publish::{publish_in_order, Submitted};
use self::receipt::Signer;
use super::metrics::StoreCounters;
use super::{
    Endpoint, QueueAttributes, QueueInfo, Result, StoreError, SubscriptionInfo, SubscriptionSpec,
    TopicInfo,
};
use crate::ids::{now_ms, IdGenerator};

/// The durable consumer of every queue stream.
const CONSUMER: &str = "q";
/// Units queued by [`JetStream::submit_publish_batch`] before the submitting thread blocks.
const SUBMIT_DEPTH: usize = 1024;

const H_ID: &str = "Sluice-Id";
const H_ENQUEUED: &str = "Sluice-Enqueued";
const H_PRIORITY: &str = "Sluice-Priority";
const H_TAG: &str = "Sluice-Tag";
const H_ATTRIBUTES: &str = "Sluice-Attributes";
const H_DEAD_LETTER: &str = "Sluice-Dead-Letter";

/// How to reach the cluster and how to lay sluice out on it.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// `nats://HOST:PORT` of one or more servers of the cluster.
    pub servers: Vec<String>,
    /// Names of streams, subjects and buckets start with it, so several sluice deployments (or
    /// test runs) can share a cluster. Letters, digits, `-` and `_`.
    pub prefix: String,
    /// Replicas of every queue stream and bucket (3 for the durability sluice promises).
    pub replicas: usize,
    /// Stamped into message ids; claimed in the cluster so two processes cannot share it.
    pub node_id: u16,
    /// Who claims `node_id` (host and data directory): the same label may claim it again after
    /// a restart, another is refused.
    pub node_label: String,
    /// The largest body accepted for topic publishes.
    pub size_cap: u32,
}

/// A handle on the JetStream backend. Cheap to clone.
#[derive(Clone, Debug)]
pub struct JetStream {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    js: Context,
    catalog: Catalog,
    signer: Signer,
    ids: IdGenerator,
    prefix: String,
    replicas: usize,
    /// Shared, so a receive takes a reference count rather than a copy of the consumer's info.
    consumers: Mutex<HashMap<String, Arc<PullConsumer>>>,
    submit: mpsc::Sender<Submitted>,
    counters: Arc<StoreCounters>,
    push: push::PushPlane,
    records: records::Records,
}

impl JetStream {
    /// Connects, opens (creating when missing) the catalog buckets, claims the node id and loads
    /// the receipt key. Fails with a clear error when the cluster cannot be reached.
    pub async fn connect(opts: JetStreamOptions) -> Result<JetStream> {
        check_prefix(&opts.prefix)?;
        let client = async_nats::ConnectOptions::new()
            .name(format!("sluice node {}", opts.node_id))
            .connection_timeout(Duration::from_secs(5))
            .connect(opts.servers.as_slice())
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot connect to NATS at {}: {e}",
                    opts.servers.join(",")
                ))
            })?;
        let js = async_nats::jetstream::new(client);
        let (key, catalog) = until_ready(STARTUP_PATIENCE, || open_catalog(&js, &opts)).await?;
        let (submit, submitted) = mpsc::channel(SUBMIT_DEPTH);
        let store = JetStream {
            inner: Arc::new(Inner {
                js,
                catalog,
                signer: Signer::new(key),
                ids: IdGenerator::new(opts.node_id),
                prefix: opts.prefix,
                replicas: opts.replicas,
                consumers: Mutex::default(),
                submit,
                counters: Arc::default(),
                push: push::PushPlane::default(),
                records: records::Records::default(),
            }),
        };
        tokio::spawn(publish_in_order(Arc::downgrade(&store.inner), submitted));
        // The push supervisor re-reads the HTTP subscriptions whenever the bucket changes,
        // whichever process changed it.
        let mut changes = store.inner.catalog.subs.changes();
        let signals = store.inner.push.signals.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                signals.catalog_changed();
            }
        });
        Ok(store)
    }

    /// The wakers of this process's push supervisor.
    pub(super) fn push_signals(&self) -> Arc<super::PushSignals> {
        self.inner.push.signals.clone()
    }

    /// What this process's operations did to each topic and queue (for `/metrics`; every
    /// process counts its own, a scraper sums them).
    pub(super) fn counters(&self) -> &Arc<StoreCounters> {
        &self.inner.counters
    }

    // ----- topics -----

    pub(super) async fn create_topic(&self, name: &str) -> Result<bool> {
        let record = TopicRecord {
            create_time_ms: now_ms(),
        };
        Ok(self
            .inner
            .catalog
            .topics
            .create(name, &record)
            .await?
            .is_none())
    }

    pub(super) async fn delete_topic(&self, name: &str) -> Result<bool> {
        if self.inner.catalog.topics.fetch(name).await?.is_none() {
            return Ok(false);
        }
        for (key, _) in self.subscriptions_of(name) {
            self.inner.catalog.subs.delete(&key).await?;
        }
        self.drop_push_stream(name).await?;
        self.inner.catalog.topics.delete(name).await?;
        Ok(true)
    }

    pub(super) async fn get_topic(&self, name: &str) -> Result<TopicInfo> {
        let record = self.topic(name).await?;
        Ok(self.topic_info(name, &record))
    }

    pub(super) async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        Ok(self
            .inner
            .catalog
            .topics
            .all()
            .into_iter()
            .map(|(name, record)| self.topic_info(&name, &record))
            .collect())
    }

    fn topic_info(&self, name: &str, record: &TopicRecord) -> TopicInfo {
        TopicInfo {
            name: name.to_owned(),
            create_time_ms: record.create_time_ms,
            subscriptions: self.subscriptions_of(name).len() as u32,
        }
    }

    async fn topic(&self, name: &str) -> Result<TopicRecord> {
        self.inner
            .catalog
            .topics
            .fetch(name)
            .await?
            .ok_or_else(|| StoreError::TopicNotExist {
                name: name.to_owned(),
            })
    }

    // ----- subscriptions -----

    pub(super) async fn create_subscription(
        &self,
        topic: &str,
        name: &str,
        spec: SubscriptionSpec,
    ) -> Result<bool> {
        self.topic(topic).await?;
        match &spec.endpoint {
            Endpoint::Queue(queue) => {
                self.queue(queue).await?;
            }
            Endpoint::Http(_) => {
                return Ok(self
                    .create_push_subscription(topic, name, spec)
                    .await?
                    .created)
            }
        }
        let record = SubRecord {
            topic: topic.to_owned(),
            name: name.to_owned(),
            spec: spec.clone(),
            create_time_ms: now_ms(),
            push: None,
        };
        match self
            .inner
            .catalog
            .subs
            .create(&sub_key(topic, name), &record)
            .await?
        {
            None => Ok(true),
            Some(existing) if existing.spec == spec => Ok(false),
            Some(_) => Err(StoreError::SubscriptionAlreadyExist {
                topic: topic.to_owned(),
                name: name.to_owned(),
            }),
        }
    }

    pub(super) async fn delete_subscription(&self, topic: &str, name: &str) -> Result<bool> {
        self.topic(topic).await?;
        let key = sub_key(topic, name);
        let Some(record) = self.inner.catalog.subs.fetch(&key).await? else {
            return Ok(false);
        };
        self.inner.catalog.subs.delete(&key).await?;
        if record.push.is_some() {
            self.drop_push_subscription(topic, name).await?;
        }
        Ok(true)
    }

    pub(super) async fn get_subscription(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<SubscriptionInfo> {
        self.topic(topic).await?;
        self.inner
            .catalog
            .subs
            .fetch(&sub_key(topic, name))
            .await?
            .map(sub_info)
            .ok_or_else(|| StoreError::SubscriptionNotExist {
                topic: topic.to_owned(),
                name: name.to_owned(),
            })
    }

    pub(super) async fn list_subscriptions(&self, topic: &str) -> Result<Vec<SubscriptionInfo>> {
        self.topic(topic).await?;
        Ok(self
            .subscriptions_of(topic)
            .into_iter()
            .map(|(_, r)| sub_info(r))
            .collect())
    }

    fn subscriptions_of(&self, topic: &str) -> Vec<(String, SubRecord)> {
        self.inner.catalog.subs.with_prefix(&format!("{topic}."))
    }

    // ----- queues -----

    pub(super) async fn create_queue(
        &self,
        name: &str,
        attributes: QueueAttributes,
    ) -> Result<bool> {
        if let Some(dlq) = &attributes.dead_letter_queue {
            if dlq == name {
                return Err(StoreError::invalid(
                    "dead_letter_queue",
                    "a queue cannot be its own dead-letter queue",
                ));
            }
            self.queue(dlq).await.map_err(|_| {
                StoreError::invalid(
                    "dead_letter_queue",
                    format!("dead-letter queue `{dlq}` does not exist; create it first"),
                )
            })?;
        }
        let record = QueueRecord {
            attributes: attributes.clone(),
            create_time_ms: now_ms(),
        };
        match self.inner.catalog.queues.create(name, &record).await? {
            Some(existing) if existing.attributes == attributes => {
                // Created by a process that may have died before its stream existed.
                self.ensure_stream(name, &existing.attributes).await?;
                Ok(false)
            }
            Some(_) => Err(StoreError::QueueAlreadyExist {
                name: name.to_owned(),
            }),
            None => match self.ensure_stream(name, &attributes).await {
                Ok(()) => Ok(true),
                Err(e) => {
                    // Leave no catalog entry without its stream.
                    let _ = self.inner.catalog.queues.delete(name).await;
                    Err(e)
                }
            },
        }
    }

    pub(super) async fn set_queue_attributes(
        &self,
        name: &str,
        attributes: QueueAttributes,
    ) -> Result<()> {
        let mut record = self.queue(name).await?;
        if let Some(dlq) = &attributes.dead_letter_queue {
            if dlq == name || self.queue(dlq).await.is_err() {
                return Err(StoreError::invalid(
                    "dead_letter_queue",
                    format!("dead-letter queue `{dlq}` must exist and differ from the queue"),
                ));
            }
        }
        self.ensure_stream(name, &attributes).await?;
        record.attributes = attributes;
        self.inner.catalog.queues.put(name, &record).await
    }

    pub(super) async fn delete_queue(&self, name: &str) -> Result<bool> {
        if self.inner.catalog.queues.fetch(name).await?.is_none() {
            return Ok(false);
        }
        for (key, sub) in self.inner.catalog.subs.all() {
            if sub.spec.endpoint == Endpoint::Queue(name.to_owned()) {
                self.inner.catalog.subs.delete(&key).await?;
            }
        }
        match self.inner.js.delete_stream(self.stream_name(name)).await {
            Ok(_) => {}
            Err(e) if e.to_string().contains("not found") => {}
            Err(e) => return Err(unavailable(format!("deleting queue {name}"), e)),
        }
        self.consumers().remove(name);
        let stats = &self.inner.catalog.queue_stats;
        for (key, _) in stats.with_prefix(&format!("{name}.")) {
            stats.delete(&key).await?;
        }
        self.inner.catalog.queues.delete(name).await?;
        Ok(true)
    }

    pub(super) async fn get_queue(&self, name: &str) -> Result<QueueInfo> {
        let record = self.queue(name).await?;
        self.queue_info(name, record).await
    }

    pub(super) async fn list_queues(&self) -> Result<Vec<QueueInfo>> {
        let mut out = Vec::new();
        for (name, record) in self.inner.catalog.queues.all() {
            match self.queue_info(&name, record).await {
                Ok(info) => out.push(info),
                // Deleted by another process since the catalog was read.
                Err(StoreError::QueueNotExist { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn queue_info(&self, name: &str, record: QueueRecord) -> Result<QueueInfo> {
        // The consumer first: it recreates a stream whose creator died half-way.
        // `info` asks the server afresh and needs its own handle.
        let mut consumer = PullConsumer::clone(&*self.consumer(name).await?);
        let mut stream = self.stream(name).await?;
        let state = stream
            .info()
            .await
            .map_err(|e| unavailable(format!("queue {name}"), e))?
            .state
            .clone();
        let c = consumer
            .info()
            .await
            .map_err(|e| unavailable(format!("queue {name}"), e))?
            .clone();
        let active = c.num_pending;
        let inactive = c.num_ack_pending as u64;
        let delayed = state.messages.saturating_sub(active + inactive);
        let oldest =
            (state.messages > 0).then(|| now_ms().saturating_sub(ms_of(state.first_timestamp)));
        Ok(QueueInfo {
            name: name.to_owned(),
            attributes: record.attributes,
            create_time_ms: record.create_time_ms,
            active_messages: active,
            inactive_messages: inactive,
            delayed_messages: delayed,
            oldest_message_age_ms: oldest,
            expired_total: 0,
            dead_lettered_total: self
                .inner
                .catalog
                .queue_stats
                .with_prefix(&format!("{name}."))
                .iter()
                .map(|(_, s)| s.dead_lettered)
                .sum(),
        })
    }

    /// Counts one dead-letter move out of `queue` in this process's entry.
    async fn count_dead_letter(&self, queue: &str) -> Result<()> {
        let stats = &self.inner.catalog.queue_stats;
        let key = format!("{queue}.{}", self.inner.ids.node());
        loop {
            let bumped = stats.update(&key, |s| {
                s.dead_lettered += 1;
                Ok(())
            });
            if bumped.await?.is_some() {
                return Ok(());
            }
            let first = catalog::QueueStats { dead_lettered: 1 };
            if stats.create(&key, &first).await?.is_none() {
                return Ok(());
            }
        }
    }

    async fn queue(&self, name: &str) -> Result<QueueRecord> {
        self.inner
            .catalog
            .queues
            .fetch(name)
            .await?
            .ok_or_else(|| StoreError::QueueNotExist {
                name: name.to_owned(),
            })
    }

    /// What every sluice stream shares: work-queue retention (a message goes when acked), file
    /// storage, the configured replicas, the two-minute duplicate window the deduplicating ids
    /// rely on, and direct gets (peek, dead-letter scans).
    fn work_queue_config(&self, name: String, subjects: Vec<String>) -> stream::Config {
        stream::Config {
            name,
            subjects,
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            num_replicas: self.inner.replicas,
            duplicate_window: Duration::from_secs(120),
            allow_direct: true,
            ..Default::default()
        }
    }

    /// Creates the stream or brings it to `config` (idempotent, so processes racing to create
    /// one both succeed), then opens it.
    async fn upsert_stream(
        &self,
        config: stream::Config,
        context: impl Fn() -> String,
    ) -> Result<stream::Stream> {
        let name = config.name.clone();
        let js = &self.inner.js;
        while_transient(&name, || js.create_or_update_stream(config.clone()))
            .await
            .map_err(|e| unavailable(context(), e))?;
        self.inner
            .js
            .get_stream(name)
            .await
            .map_err(|e| unavailable(context(), e))
    }

    /// Creates or updates the queue's stream and consumer to match `attributes`.
    async fn ensure_stream(&self, name: &str, attributes: &QueueAttributes) -> Result<()> {
        let config = stream::Config {
            max_age: Duration::from_secs(attributes.message_retention_period.into()),
            allow_message_schedules: true,
            ..self.work_queue_config(
                self.stream_name(name),
                vec![
                    self.subject(name),
                    format!("{}.qd.{name}.*", self.inner.prefix),
                ],
            )
        };
        let context = || format!("creating the stream of queue {name}");
        let stream = self.upsert_stream(config, context).await?;
        let config = pull::Config {
            durable_name: Some(CONSUMER.into()),
            filter_subject: self.subject(name),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(attributes.visibility_timeout.into()),
            deliver_policy: DeliverPolicy::All,
            max_deliver: -1,
            max_ack_pending: 1_000_000,
            max_waiting: 4096,
            ..Default::default()
        };
        let consumer = while_transient(name, || stream.create_consumer(config.clone()))
            .await
            .map_err(|e| unavailable(context(), e))?;
        self.consumers().insert(name.to_owned(), Arc::new(consumer));
        Ok(())
    }

    async fn stream(&self, queue: &str) -> Result<stream::Stream> {
        self.inner
            .js
            .get_stream(self.stream_name(queue))
            .await
            .map_err(|e| match e.kind() {
                stream_missing if stream_missing.to_string().contains("not found") => {
                    StoreError::QueueNotExist {
                        name: queue.to_owned(),
                    }
                }
                _ => unavailable(format!("queue {queue}"), e),
            })
    }

    async fn consumer(&self, queue: &str) -> Result<Arc<PullConsumer>> {
        if let Some(c) = self.consumers().get(queue) {
            return Ok(c.clone());
        }
        let record = self.queue(queue).await?;
        // Another process created the queue: make sure its stream and consumer exist with the
        // catalog's attributes (create-or-update is idempotent).
        self.ensure_stream(queue, &record.attributes).await?;
        self.consumers()
            .get(queue)
            .cloned()
            .ok_or_else(|| StoreError::Internal("consumer vanished".into()))
    }

    fn consumers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<PullConsumer>>> {
        self.inner
            .consumers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stream_name(&self, queue: &str) -> String {
        format!("{}_q_{queue}", self.inner.prefix)
    }

    fn subject(&self, queue: &str) -> String {
        format!("{}.q.{queue}", self.inner.prefix)
    }
}

fn sub_key(topic: &str, name: &str) -> String {
    format!("{topic}.{name}")
}

fn sub_info(r: SubRecord) -> SubscriptionInfo {
    SubscriptionInfo {
        topic: r.topic,
        name: r.name,
        spec: r.spec,
        create_time_ms: r.create_time_ms,
    }
}

/// How long [`JetStream::connect`] waits for a cluster that answers but is not ready yet (a
/// stream without a leader, direct-get responders still starting): long enough for a cluster
/// started beside sluice to elect its leaders.
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

/// Opens the meta bucket, claims the node id, loads the receipt key and opens the catalog.
async fn open_catalog(js: &Context, opts: &JetStreamOptions) -> Result<([u8; 32], Catalog)> {
    let meta = open_bucket(js, &format!("{}_meta", opts.prefix), opts.replicas).await?;
    claim_node(&meta, opts.node_id, &opts.node_label).await?;
    let key = receipt_key(&meta).await?;
    let catalog = Catalog::open(js, &opts.prefix, opts.replicas).await?;
    Ok((key, catalog))
}

/// Runs `step` again while it fails with [`StoreError::Unavailable`] (a cluster that is still
/// electing leaders answers "no responders" for a moment), for at most `patience`. Any other
/// error, such as a node id held by another process, is returned at once.
async fn until_ready<T, F, Fut>(patience: Duration, mut step: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    let mut pause = Duration::from_millis(100);
    loop {
        match step().await {
            Err(StoreError::Unavailable(why)) if tokio::time::Instant::now() + pause < deadline => {
                tracing::info!(%why, "JetStream is not ready yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// Claims `node.{id}` in the meta bucket for `label`; the same label may claim it again.
async fn claim_node(
    meta: &async_nats::jetstream::kv::Store,
    node_id: u16,
    label: &str,
) -> Result<()> {
    let key = format!("node.{node_id}");
    match meta
        .create(&key, Bytes::copy_from_slice(label.as_bytes()))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
            let holder = meta
                .get(&key)
                .await
                .map_err(|e| unavailable("reading the node id claims".to_owned(), e))?
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            if holder == label {
                Ok(())
            } else {
                Err(StoreError::invalid(
                    "node_id",
                    format!(
                        "node id {node_id} is already used in this NATS cluster by {holder}; \
                         give every sluice process its own --node-id"
                    ),
                ))
            }
        }
        Err(e) => Err(unavailable("claiming the node id".to_owned(), e)),
    }
}

/// The cluster's receipt-signing key: created once by the first process, read by the others.
async fn receipt_key(meta: &async_nats::jetstream::kv::Store) -> Result<[u8; 32]> {
    let fresh: [u8; 32] = rand::random();
    let text = match meta
        .create("receipt-key", Bytes::from(hex::encode(fresh)))
        .await
    {
        Ok(_) => return Ok(fresh),
        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => meta
            .get("receipt-key")
            .await
            .map_err(|e| unavailable("reading the receipt key".to_owned(), e))?
            .unwrap_or_default(),
        Err(e) => return Err(unavailable("creating the receipt key".to_owned(), e)),
    };
    let mut key = [0u8; 32];
    hex::decode_to_slice(&text[..], &mut key)
        .map_err(|_| StoreError::Internal("the cluster's receipt key is unreadable".into()))?;
    Ok(key)
}

fn check_prefix(prefix: &str) -> Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 32
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::invalid(
            "nats_prefix",
            "1-32 letters, digits, `-` or `_`",
        ))
    }
}

/// A NATS failure as a retryable "service unavailable".
pub(super) fn unavailable(what: impl std::fmt::Display, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

fn ms_of(t: time::OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn rfc3339_ms(ms: u64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// How long creating a stream or its consumer goes on through transient cluster errors.
const PLACEMENT_WAIT: Duration = Duration::from_secs(15);

/// Runs an idempotent creation (a stream or a durable consumer, created or updated to the same
/// config) again while it fails transiently: a cluster that is still forming, or has a node
/// restarting, cannot place replicas for a moment, and a loaded one can let a request time out.
/// sluice often starts beside its NATS cluster, so this waits a little instead of failing.
async fn while_transient<T, E: Transient, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> Result<T, E> {
    let give_up = tokio::time::Instant::now() + PLACEMENT_WAIT;
    let mut pause = Duration::from_millis(100);
    loop {
        match attempt().await {
            Err(e) if e.is_transient() && tokio::time::Instant::now() < give_up => {
                tracing::info!(what, error = %e, "the NATS cluster is not ready for it yet; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            done => return done,
        }
    }
}

/// An error of a creation [`while_transient`] tries again: a request that timed out, or a
/// cluster that cannot place replicas yet.
trait Transient: std::fmt::Display {
    fn is_transient(&self) -> bool;
}

/// The stream and consumer creation errors have kinds of the same shape but different types.
macro_rules! transient_on {
    ($error:ident, $kind:ident) => {
        impl Transient for $error {
            fn is_transient(&self) -> bool {
                match self.kind() {
                    $kind::TimedOut => true,
                    $kind::JetStream(js) => is_placement_error(&js),
                    _ => false,
                }
            }
        }
    };
}

transient_on!(CreateStreamError, CreateStreamErrorKind);
transient_on!(ConsumerError, ConsumerErrorKind);

/// True for the errors of a cluster that cannot place replicas yet: not enough peers online
/// (10005) or the cluster not available (10008). Both pass once the nodes have met.
fn is_placement_error(e: &async_nats::jetstream::Error) -> bool {
    use async_nats::jetstream::ErrorCode;
    matches!(
        e.error_code(),
        ErrorCode::CLUSTER_NO_PEERS | ErrorCode::CLUSTER_NOT_AVAILABLE
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn startup_retries_an_unready_cluster_and_stops_at_other_errors() {
        let calls = AtomicU32::new(0);
        let ready = until_ready(Duration::from_secs(10), || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(StoreError::Unavailable("503 no responders".into())),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(ready.unwrap(), 2);

        let calls = AtomicU32::new(0);
        let refused: Result<()> = until_ready(Duration::from_secs(10), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(StoreError::invalid("node_id", "taken"))
        })
        .await;
        assert!(matches!(refused, Err(StoreError::InvalidArgument { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a refusal is not retried");

        let gave_up: Result<()> = until_ready(Duration::from_millis(250), || async {
            Err(StoreError::Unavailable("still electing".into()))
        })
        .await;
        assert!(matches!(gave_up, Err(StoreError::Unavailable(_))));
    }
}
