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
//!
//! # Where the semantics differ from the SQLite store
//! Documented in the README ("The message service on NATS JetStream") and shown by the
//! conformance suite: priority is kept but not honoured (stream order); a handle replaced by a
//! visibility change keeps working until its own lease ends; peek shows in-flight messages too
//! and no dequeue counts; `first_dequeue_time_ms` is known only on the first delivery; a publish
//! unit is at-least-once rather than atomic; `expired_total` and `dead_lettered_total` are not
//! kept; HTTP subscriptions are not available yet on this backend.

mod catalog;
pub mod durability;
pub mod local;
mod receipt;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::CreateErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{AckKind, Context};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

use self::catalog::{open_bucket, Catalog, QueueRecord, SubRecord, TopicRecord};
use self::receipt::Signer;
use super::metrics::{QueueTotals, StoreCounters};
use super::writer::{md5_hex, md5_of};
use super::{
    DeadLetterOrigin, Endpoint, Message, PublishRequest, Published, QueueAttributes, QueueInfo,
    Result, SendRequest, Sent, StoreError, SubscriptionInfo, SubscriptionSpec, TopicInfo,
    VisibilityChanged, DEFAULT_PRIORITY,
};
use crate::ids::{now_ms, IdGenerator, MessageId};

/// The durable consumer of every queue stream.
const CONSUMER: &str = "q";
/// Publishes of one fan-out are sent again (same deduplicating ids) this many times when the
/// cluster does not answer, e.g. during a leader election after a node died.
const PUBLISH_ATTEMPTS: u32 = 6;
/// The shortest pull: how long a receive without a wait still listens for a message that was
/// stored an instant ago.
const SETTLE: Duration = Duration::from_millis(50);
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
    consumers: Mutex<HashMap<String, PullConsumer>>,
    submit: mpsc::Sender<Submitted>,
    counters: Arc<StoreCounters>,
}

type Unit = Vec<(String, PublishRequest)>;
type Submitted = (Unit, oneshot::Sender<Result<Vec<Published>>>);

/// A pending fan-out: the acks it waits for, in request order, with the topic.
type PendingAcks = Vec<(String, Published, Vec<Resend>)>;

/// One copy of a published message, kept until its ack arrives so it can be sent again.
struct Resend {
    /// The queue it goes to.
    queue: String,
    subject: String,
    message: PublishMessage,
    ack: async_nats::jetstream::context::PublishAckFuture,
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
        let meta = open_bucket(&js, &format!("{}_meta", opts.prefix), opts.replicas).await?;
        claim_node(&meta, opts.node_id, &opts.node_label).await?;
        let key = receipt_key(&meta).await?;
        let catalog = Catalog::open(&js, &opts.prefix, opts.replicas).await?;
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
            }),
        };
        tokio::spawn(publish_in_order(Arc::downgrade(&store.inner), submitted));
        Ok(store)
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
            _ => return Err(push_unsupported()),
        }
        let record = SubRecord {
            topic: topic.to_owned(),
            name: name.to_owned(),
            spec: spec.clone(),
            create_time_ms: now_ms(),
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
        if self.inner.catalog.subs.fetch(&key).await?.is_none() {
            return Ok(false);
        }
        self.inner.catalog.subs.delete(&key).await?;
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
        let prefix = format!("{topic}.");
        self.inner
            .catalog
            .subs
            .all()
            .into_iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .collect()
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
        let mut consumer = self.consumer(name).await?;
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
            dead_lettered_total: 0,
        })
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

    /// Creates or updates the queue's stream and consumer to match `attributes`.
    async fn ensure_stream(&self, name: &str, attributes: &QueueAttributes) -> Result<()> {
        let config = stream::Config {
            name: self.stream_name(name),
            subjects: vec![
                self.subject(name),
                format!("{}.qd.{name}.*", self.inner.prefix),
            ],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            num_replicas: self.inner.replicas,
            max_age: Duration::from_secs(attributes.message_retention_period.into()),
            duplicate_window: Duration::from_secs(120),
            allow_direct: true,
            allow_message_schedules: true,
            ..Default::default()
        };
        let context = || format!("creating the stream of queue {name}");
        self.inner
            .js
            .create_or_update_stream(config)
            .await
            .map_err(|e| unavailable(context(), e))?;
        let stream = self
            .inner
            .js
            .get_stream(self.stream_name(name))
            .await
            .map_err(|e| unavailable(context(), e))?;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(CONSUMER.into()),
                filter_subject: self.subject(name),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(attributes.visibility_timeout.into()),
                deliver_policy: DeliverPolicy::All,
                max_deliver: -1,
                max_ack_pending: 1_000_000,
                max_waiting: 4096,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(context(), e))?;
        self.consumers().insert(name.to_owned(), consumer);
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

    async fn consumer(&self, queue: &str) -> Result<PullConsumer> {
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

    fn consumers(&self) -> std::sync::MutexGuard<'_, HashMap<String, PullConsumer>> {
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

    // ----- publish -----

    pub(super) async fn publish_batch(&self, items: Unit) -> Result<Vec<Published>> {
        let pending = self.start_publish(items).await?;
        finish_publish(&self.inner.js, &self.inner.counters, pending).await
    }

    /// Queues a unit for publishing from a plain thread, in submission order; the future
    /// resolves when every copy is acknowledged by the cluster.
    pub(super) fn submit_publish_batch(
        &self,
        items: Unit,
    ) -> impl std::future::Future<Output = Result<Vec<Published>>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let queued = self
            .inner
            .submit
            .blocking_send((items, reply))
            .map_err(|_| StoreError::Closed);
        async move {
            queued?;
            rx.await.map_err(|_| StoreError::Closed)?
        }
    }

    /// Resolves the unit's topics and subscriptions, then sends every copy (in order, on one
    /// connection) and returns the acks to wait for. An unknown topic or oversized body fails
    /// the unit before anything is sent.
    async fn start_publish(&self, items: Unit) -> Result<PendingAcks> {
        let mut plans = Vec::with_capacity(items.len());
        for (topic, req) in items {
            self.topic(&topic).await?;
            let mut targets = Vec::new();
            for (_, sub) in self.subscriptions_of(&topic) {
                let matches = match &sub.spec.filter_tag {
                    None => true,
                    Some(f) => req.tag.as_deref() == Some(f.as_str()),
                };
                if let (true, Endpoint::Queue(q)) = (matches, &sub.spec.endpoint) {
                    if let Some(record) = self.inner.catalog.queues.get(q) {
                        targets.push((sub.name.clone(), q.clone(), record, sub.spec.base64_body));
                    }
                }
            }
            plans.push((topic, req, targets));
        }
        let now = now_ms();
        let mut pending = Vec::with_capacity(plans.len());
        for (topic, req, targets) in plans {
            let id = self.inner.ids.next_at(now);
            let published = Published {
                id,
                body_md5: md5_hex(&md5_of(&req.body)),
                enqueue_time_ms: now,
                queues: targets.len() as u32,
                pushes: 0,
            };
            let mut copies = Vec::with_capacity(targets.len());
            for (sub, queue, record, base64_body) in targets {
                let body = if base64_body {
                    use base64::Engine;
                    Bytes::from(base64::engine::general_purpose::STANDARD.encode(&req.body))
                } else {
                    req.body.clone()
                };
                let copy = Copy {
                    id,
                    body,
                    tag: req.tag.as_deref(),
                    attributes: &req.attributes,
                    priority: DEFAULT_PRIORITY,
                    enqueue_time_ms: now,
                    delay_seconds: record.attributes.delay_seconds,
                    dead_letter: None,
                };
                let (subject, message) = self.message_for(&queue, &copy, &format!("{id}.{sub}"))?;
                copies.push(self.send_copy(&queue, subject, message).await?);
            }
            pending.push((topic, published, copies));
        }
        Ok(pending)
    }

    /// Builds the stored form of a message for `queue`: headers, deduplicating id and, for a
    /// delayed message, the schedule that releases it.
    fn message_for(
        &self,
        queue: &str,
        copy: &Copy<'_>,
        dedup_id: &str,
    ) -> Result<(String, PublishMessage)> {
        let mut headers = HeaderMap::new();
        headers.insert(H_ID, copy.id.to_string().as_str());
        headers.insert(H_ENQUEUED, copy.enqueue_time_ms.to_string().as_str());
        if copy.priority != DEFAULT_PRIORITY {
            headers.insert(H_PRIORITY, copy.priority.to_string().as_str());
        }
        if let Some(tag) = copy.tag {
            headers.insert(H_TAG, tag);
        }
        if !copy.attributes.is_empty() {
            let json = serde_json::to_string(copy.attributes)
                .map_err(|e| StoreError::Internal(e.to_string()))?;
            headers.insert(H_ATTRIBUTES, json.as_str());
        }
        if let Some(origin) = copy.dead_letter {
            let json =
                serde_json::to_string(origin).map_err(|e| StoreError::Internal(e.to_string()))?;
            headers.insert(H_DEAD_LETTER, json.as_str());
        }
        let subject = if copy.delay_seconds > 0 {
            let at = copy.enqueue_time_ms + u64::from(copy.delay_seconds) * 1000;
            headers.insert("Nats-Schedule", format!("@at {}", rfc3339_ms(at)).as_str());
            headers.insert("Nats-Schedule-Target", self.subject(queue).as_str());
            format!("{}.qd.{queue}.{}", self.inner.prefix, copy.id)
        } else {
            self.subject(queue)
        };
        let message = PublishMessage::build()
            .payload(copy.body.clone())
            .headers(headers)
            .message_id(dedup_id);
        Ok((subject, message))
    }

    async fn send_copy(
        &self,
        queue: &str,
        subject: String,
        message: PublishMessage,
    ) -> Result<Resend> {
        let ack = self
            .inner
            .js
            .send_publish(subject.clone(), message.clone())
            .await
            .map_err(|e| publish_error(&subject, e))?;
        Ok(Resend {
            queue: queue.to_owned(),
            subject,
            message,
            ack,
        })
    }

    // ----- queue operations -----

    pub(super) async fn send_batch(
        &self,
        queue: &str,
        requests: Vec<SendRequest>,
    ) -> Result<Vec<Sent>> {
        let record = self.queue(queue).await?;
        let limit = record.attributes.maximum_message_size;
        if let Some(big) = requests.iter().find(|r| r.body.len() > limit as usize) {
            return Err(StoreError::MessageTooLarge {
                size: big.body.len(),
                limit,
            });
        }
        let now = now_ms();
        let mut sent = Vec::with_capacity(requests.len());
        let mut copies = Vec::with_capacity(requests.len());
        for req in &requests {
            let id = self.inner.ids.next_at(now);
            let delay = req.delay_seconds.unwrap_or(record.attributes.delay_seconds);
            let copy = Copy {
                id,
                body: req.body.clone(),
                tag: req.tag.as_deref(),
                attributes: &req.attributes,
                priority: req.priority.unwrap_or(DEFAULT_PRIORITY),
                enqueue_time_ms: now,
                delay_seconds: delay,
                dead_letter: None,
            };
            let (subject, message) = self.message_for(queue, &copy, &id.to_string())?;
            copies.push(self.send_copy(queue, subject, message).await?);
            sent.push(Sent {
                id,
                body_md5: md5_hex(&md5_of(&req.body)),
                enqueue_time_ms: now,
                next_visible_time_ms: now + u64::from(delay) * 1000,
            });
        }
        for copy in copies {
            confirm(&self.inner.js, copy).await?;
        }
        self.inner.counters.add_queue(
            queue,
            QueueTotals {
                enqueued: sent.len() as u64,
                ..QueueTotals::default()
            },
        );
        Ok(sent)
    }

    pub(super) async fn receive(
        &self,
        queue: &str,
        max: usize,
        wait: Option<Duration>,
    ) -> Result<Vec<Message>> {
        let record = self.queue(queue).await?;
        let consumer = self.consumer(queue).await?;
        let wait = wait
            .unwrap_or_else(|| Duration::from_secs(record.attributes.polling_wait_seconds.into()));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut got = fetch(&consumer, max, None).await?;
            if got.is_empty() {
                // Wait for one message only, so the poll returns as soon as one is there, then
                // take whatever else is ready. Even a receive that does not wait gives the
                // consumer a moment: a message acknowledged to its sender an instant ago may
                // not have reached the consumer's count yet.
                let left = deadline
                    .saturating_duration_since(tokio::time::Instant::now())
                    .max(SETTLE);
                got = fetch(&consumer, 1, Some(left)).await?;
                if got.is_empty() {
                    return Ok(Vec::new());
                }
                if max > 1 {
                    got.extend(fetch(&consumer, max - 1, None).await?);
                }
            }
            let mut out = Vec::with_capacity(got.len());
            for m in got {
                if let Some(message) = self.deliver(queue, &record.attributes, m).await? {
                    out.push(message);
                }
            }
            if !out.is_empty() || tokio::time::Instant::now() >= deadline {
                self.inner.counters.add_queue(
                    queue,
                    QueueTotals {
                        received: out.len() as u64,
                        ..QueueTotals::default()
                    },
                );
                return Ok(out);
            }
            // Everything fetched went to the dead-letter queue: keep polling.
        }
    }

    /// Turns a delivery into a received message, or moves it to the dead-letter queue when it
    /// was delivered more often than `max_receive_count`.
    async fn deliver(
        &self,
        queue: &str,
        attributes: &QueueAttributes,
        m: async_nats::jetstream::Message,
    ) -> Result<Option<Message>> {
        let now = now_ms();
        let info = m
            .info()
            .map_err(|e| StoreError::Internal(format!("delivery without JetStream info: {e}")))?;
        let dequeue_count = u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX);
        let ack_subject = m
            .reply
            .as_ref()
            .ok_or_else(|| StoreError::Internal("delivery without an ack subject".into()))?
            .to_string();
        let mut message = decode(&m.message, ms_of(info.published))?;
        if let (Some(dlq), Some(limit)) =
            (&attributes.dead_letter_queue, attributes.max_receive_count)
        {
            if dequeue_count > limit {
                self.move_to_dead_letters(queue, dlq, &message, dequeue_count - 1)
                    .await?;
                m.double_ack()
                    .await
                    .map_err(|e| unavailable(format!("acking a dead letter of {queue}"), e))?;
                return Ok(None);
            }
        }
        let lease_end = now + u64::from(attributes.visibility_timeout) * 1000;
        message.dequeue_count = dequeue_count;
        message.first_dequeue_time_ms = (dequeue_count == 1).then_some(now);
        message.next_visible_time_ms = lease_end;
        message.receipt_handle = Some(self.inner.signer.issue(queue, &ack_subject, lease_end));
        Ok(Some(message))
    }

    async fn move_to_dead_letters(
        &self,
        queue: &str,
        dlq: &str,
        message: &Message,
        dequeue_count: u32,
    ) -> Result<()> {
        let origin = DeadLetterOrigin {
            source_queue: queue.to_owned(),
            source_subscription: None,
            original_id: message.id.to_string(),
            dequeue_count,
            original_enqueue_time_ms: message.enqueue_time_ms,
            last_error: None,
        };
        let copy = Copy {
            id: message.id,
            body: message.body.clone(),
            tag: message.tag.as_deref(),
            attributes: &message.attributes,
            priority: message.priority,
            enqueue_time_ms: now_ms(),
            delay_seconds: 0,
            dead_letter: Some(&origin),
        };
        let (subject, msg) = self.message_for(dlq, &copy, &format!("dl.{}", message.id))?;
        let resend = self.send_copy(dlq, subject, msg).await?;
        confirm(&self.inner.js, resend).await
    }

    pub(super) async fn peek(&self, queue: &str, max: usize) -> Result<Vec<Message>> {
        self.queue(queue).await?;
        let stream = self.stream(queue).await?;
        let subject = self.subject(queue);
        let mut out = Vec::with_capacity(max);
        let mut next = None;
        while out.len() < max {
            let got = match next {
                None => stream.direct_get_first_for_subject(subject.as_str()).await,
                Some(seq) => {
                    stream
                        .direct_get_next_for_subject(subject.as_str(), Some(seq))
                        .await
                }
            };
            let raw = match got {
                Ok(raw) => raw,
                Err(e) if e.to_string().contains("not found") => break,
                Err(e) => return Err(unavailable(format!("peeking queue {queue}"), e)),
            };
            next = Some(raw.sequence + 1);
            let plain = async_nats::Message {
                subject: raw.subject.clone(),
                reply: None,
                payload: raw.payload.clone(),
                headers: Some(raw.headers.clone()),
                status: None,
                description: None,
                length: raw.payload.len(),
            };
            out.push(decode(&plain, ms_of(raw.time))?);
        }
        Ok(out)
    }

    pub(super) async fn delete_batch(
        &self,
        queue: &str,
        receipt_handles: Vec<String>,
    ) -> Result<Vec<Result<()>>> {
        self.queue(queue).await?;
        let stream = self.stream_name(queue);
        // The acks go out together: each waits for the cluster's replicated write, not for the
        // one before it.
        let out: Vec<Result<()>> =
            futures_util::future::join_all(receipt_handles.iter().map(|handle| async {
                let lease = self.lease(queue, &stream, handle)?;
                self.answer(&lease.ack_subject, AckKind::Ack).await
            }))
            .await;
        let deleted = out.iter().filter(|r| r.is_ok()).count() as u64;
        self.inner.counters.add_queue(
            queue,
            QueueTotals {
                deleted,
                ..QueueTotals::default()
            },
        );
        Ok(out)
    }

    pub(super) async fn change_visibility(
        &self,
        queue: &str,
        receipt_handle: &str,
        visibility_timeout: u32,
    ) -> Result<VisibilityChanged> {
        self.queue(queue).await?;
        let stream = self.stream_name(queue);
        let lease = self.lease(queue, &stream, receipt_handle)?;
        let delay = Duration::from_secs(visibility_timeout.into());
        self.answer(&lease.ack_subject, AckKind::Nak(Some(delay)))
            .await?;
        let next = now_ms() + u64::from(visibility_timeout) * 1000;
        Ok(VisibilityChanged {
            receipt_handle: self.inner.signer.issue(queue, &lease.ack_subject, next),
            next_visible_time_ms: next,
        })
    }

    /// Opens a handle and refuses it once its lease is over (JetStream itself would still act
    /// on it, even after the message went to another consumer).
    fn lease(&self, queue: &str, stream: &str, handle: &str) -> Result<receipt::Lease> {
        let lease = self.inner.signer.open(queue, stream, handle)?;
        if now_ms() >= lease.lease_end_ms {
            return Err(StoreError::ReceiptHandleStale {
                reason: "its visibility timeout has passed",
            });
        }
        Ok(lease)
    }

    /// Sends an ack or nak and waits for the server to confirm it.
    async fn answer(&self, ack_subject: &str, kind: AckKind) -> Result<()> {
        let client = self.inner.js.client();
        let payload: Bytes = kind.into();
        let reply = client
            .request(ack_subject.to_owned(), payload)
            .await
            .map_err(|e| unavailable("acknowledging to the queue".to_owned(), e))?;
        match reply.status {
            Some(status) if !status.is_success() && status.as_u16() != 0 => Err(
                StoreError::Unavailable(format!("the queue refused the acknowledgement: {status}")),
            ),
            _ => Ok(()),
        }
    }
}

/// What to store for one copy of a message in one queue.
struct Copy<'a> {
    id: MessageId,
    body: Bytes,
    tag: Option<&'a str>,
    attributes: &'a BTreeMap<String, String>,
    priority: u8,
    enqueue_time_ms: u64,
    delay_seconds: u32,
    dead_letter: Option<&'a DeadLetterOrigin>,
}

/// Publishes submitted units in submission order; their acks are awaited off the loop.
async fn publish_in_order(inner: std::sync::Weak<Inner>, mut submitted: mpsc::Receiver<Submitted>) {
    while let Some((unit, reply)) = submitted.recv().await {
        let Some(inner) = inner.upgrade() else {
            let _ = reply.send(Err(StoreError::Closed));
            continue;
        };
        let store = JetStream { inner };
        match store.start_publish(unit).await {
            Ok(pending) => {
                let (js, counters) = (store.inner.js.clone(), store.inner.counters.clone());
                tokio::spawn(async move {
                    let _ = reply.send(finish_publish(&js, &counters, pending).await);
                });
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

async fn finish_publish(
    js: &Context,
    counters: &StoreCounters,
    pending: PendingAcks,
) -> Result<Vec<Published>> {
    let mut out = Vec::with_capacity(pending.len());
    for (topic, published, copies) in pending {
        for copy in copies {
            let queue = copy.queue.clone();
            confirm(js, copy).await?;
            counters.add_queue(
                &queue,
                QueueTotals {
                    enqueued: 1,
                    ..QueueTotals::default()
                },
            );
        }
        counters.add_published(&topic, 1);
        out.push(published);
    }
    Ok(out)
}

/// Waits for a copy's ack; when the cluster does not answer (a leader election, a node gone),
/// sends the same message again with the same deduplicating id, so it is stored once.
async fn confirm(js: &Context, copy: Resend) -> Result<()> {
    let Resend {
        subject,
        message,
        ack,
        ..
    } = copy;
    let mut last = match ack.await {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    for attempt in 1..PUBLISH_ATTEMPTS {
        if !retryable(&last) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
        let sent = js.send_publish(subject.clone(), message.clone()).await;
        match sent {
            Ok(ack) => match ack.await {
                Ok(_) => return Ok(()),
                Err(e) => last = e,
            },
            Err(e) => last = e,
        }
    }
    Err(publish_error(&subject, last))
}

fn retryable(e: &async_nats::jetstream::context::PublishError) -> bool {
    matches!(
        e.kind(),
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe | PublishErrorKind::Other
    ) && !e.to_string().contains("no responders")
}

fn publish_error(subject: &str, e: async_nats::jetstream::context::PublishError) -> StoreError {
    if e.kind() == PublishErrorKind::MaxPayloadExceeded {
        return StoreError::invalid("body", e.to_string());
    }
    unavailable(format!("storing a message on {subject}"), e)
}

/// Pulls up to `max` messages: those ready now (`wait` = `None`), or waiting up to `wait` for
/// the first of them.
async fn fetch(
    consumer: &PullConsumer,
    max: usize,
    wait: Option<Duration>,
) -> Result<Vec<async_nats::jetstream::Message>> {
    let batch = match wait {
        None => consumer.fetch().max_messages(max).messages().await,
        Some(w) => {
            consumer
                .batch()
                .max_messages(max)
                .expires(w)
                .messages()
                .await
        }
    };
    let mut batch = batch.map_err(|e| unavailable("pulling from the queue".to_owned(), e))?;
    let mut out = Vec::with_capacity(max);
    while let Some(m) = batch.next().await {
        match m {
            Ok(m) => out.push(m),
            // The server ends a pull with a status (timeout, no messages): not an error here.
            Err(e) if out.is_empty() && is_end_of_pull(&e.to_string()) => break,
            Err(_) if !out.is_empty() => break,
            Err(e) => return Err(unavailable("pulling from the queue".to_owned(), e)),
        }
        if out.len() >= max {
            break;
        }
    }
    Ok(out)
}

fn is_end_of_pull(text: &str) -> bool {
    [
        "timed out",
        "timeout",
        "no messages",
        "404",
        "408",
        "heartbeat",
    ]
    .iter()
    .any(|s| text.to_ascii_lowercase().contains(s))
}

/// Reads a stored message back (without the delivery fields).
fn decode(m: &async_nats::Message, published_ms: u64) -> Result<Message> {
    let header = |name: &str| -> Option<String> {
        m.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let id = header(H_ID)
        .and_then(|t| MessageId::parse(&t))
        .ok_or_else(|| StoreError::Internal("stored message without a sluice id".into()))?;
    let attributes = match header(H_ATTRIBUTES) {
        Some(json) => serde_json::from_str(&json)
            .map_err(|e| StoreError::Internal(format!("stored attributes: {e}")))?,
        None => BTreeMap::new(),
    };
    let dead_letter = match header(H_DEAD_LETTER) {
        Some(json) => Some(
            serde_json::from_str(&json)
                .map_err(|e| StoreError::Internal(format!("stored dead-letter origin: {e}")))?,
        ),
        None => None,
    };
    Ok(Message {
        id,
        body: m.payload.clone(),
        body_md5: md5_hex(&md5_of(&m.payload)),
        tag: header(H_TAG),
        attributes,
        priority: header(H_PRIORITY)
            .and_then(|p| p.parse().ok())
            .unwrap_or(DEFAULT_PRIORITY),
        enqueue_time_ms: header(H_ENQUEUED)
            .and_then(|t| t.parse().ok())
            .unwrap_or(published_ms),
        first_dequeue_time_ms: None,
        next_visible_time_ms: published_ms,
        dequeue_count: 0,
        receipt_handle: None,
        dead_letter,
    })
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

/// HTTP push is not on this backend yet (it needs a shared durable consumer per subscription).
pub(crate) fn push_unsupported() -> StoreError {
    StoreError::Unsupported(
        "HTTP subscriptions are not available on the JetStream store yet; subscribe a queue and \
         pull it, or use the SQLite store"
            .into(),
    )
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
