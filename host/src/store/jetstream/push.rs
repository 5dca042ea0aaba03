//! HTTP push on JetStream: every process runs the same delivery workers (`deliver`) as on
//! SQLite, but the pending pushes of a subscription live in the cluster, behind one durable
//! consumer that all processes share, so each message is pushed by one process.
//!
//! # Mapping
//! - **Pending pushes**: one stream per topic with HTTP subscriptions, `{prefix}_p_{topic}`
//!   (work-queue retention, file storage, the configured replicas, no age limit: a schedule
//!   always runs to its end), subjects `{prefix}.p.{topic}.{subscription}`. A publish stores one
//!   copy per matching HTTP subscription there, with the deduplicating id
//!   `{message id}.{subscription}`, like the queue copies.
//! - **Claims**: one durable pull consumer per HTTP subscription, named after it, filtered to its
//!   subject. A worker's cycle pulls from it (waiting up to [`POLL`] when nothing is ready).
//!   Every process pulls from the same consumer, so the cluster hands each message to one.
//! - **Outcomes**: a delivered push is acked; a failed attempt is NAKed with the delay of the
//!   subscription's schedule (the cluster keeps the timer, so any process makes the next
//!   attempt); a schedule that ran out is copied to the dead-letter queue (id
//!   `dl.{id}.{sub}.{sequence}`) and acked; a release is a NAK with a short delay. The attempts so
//!   far are the consumer's delivery count minus one.
//! - **Subscription state** (enabled, the reason of a 410, secrets) is the `push` part of the
//!   subscription's catalog record, changed by compare-and-set, so a 410 seen by one process
//!   stops every process.
//! - **Counters**: each process keeps its own per subscription and writes them to
//!   `{prefix}_push_stats` under `{topic}.{subscription}.{node id}` at most once a second;
//!   `sub show` adds them up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::AckKind;

use super::catalog::{PushState, PushStats, SubRecord};
use super::publish::Envelope;
use super::queue::{decode, fetch};
use super::retry::Retry;
use super::{ms_of, sub_key, unavailable, JetStream};
use crate::ids::now_ms;
use crate::store::push::new_secret;
use crate::store::{
    DeadLetterOrigin, Endpoint, HttpPush, Message, PushCreated, PushCycle, PushDelivery,
    PushOutcome, PushResult, PushSignals, PushStatus, PushSubscription, Result, StoreError,
    SubscriptionSpec, DEFAULT_PRIORITY,
};

/// Longest a push cycle waits for a message when none is ready: the workers' long poll.
pub(super) const POLL: Duration = Duration::from_secs(1);
/// How long a message whose push disabled the subscription is held back from every process.
const DISABLE_HOLD: Duration = Duration::from_secs(5);
/// A process writes its counters of a subscription to the cluster at most this often.
const STATS_EVERY_MS: u64 = 1000;
/// Most dead-letter-queue messages one list or redrive looks at.
const DEAD_LETTER_SCAN: usize = 10_000;

/// This process's share of the push plane.
#[derive(Debug, Default)]
pub(super) struct PushPlane {
    /// Deliveries claimed by this process's workers and not answered yet: by push id, then
    /// stream sequence.
    held: Mutex<HashMap<i64, HashMap<u64, async_nats::jetstream::Message>>>,
    consumers: Mutex<HashMap<i64, Arc<PullConsumer>>>,
    stats: Mutex<HashMap<i64, LocalStats>>,
    /// The supervisor's waker: bumped whenever the subscriptions bucket changes.
    pub(super) signals: Arc<PushSignals>,
}

#[derive(Debug, Default)]
struct LocalStats {
    stats: PushStats,
    dirty: bool,
    flushed_ms: u64,
}

/// An HTTP subscription as a push cycle needs it.
struct Found {
    topic: String,
    name: String,
    state: PushState,
    push: HttpPush,
}

impl Found {
    /// The push part of `record`; `None` for a queue subscription.
    fn of(record: &SubRecord) -> Option<Found> {
        let (Some(state), Endpoint::Http(push)) = (&record.push, &record.spec.endpoint) else {
            return None;
        };
        Some(Found {
            topic: record.topic.clone(),
            name: record.name.clone(),
            state: state.clone(),
            push: push.clone(),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl JetStream {
    /// The stream of a topic's pending pushes.
    fn push_stream_name(&self, topic: &str) -> String {
        format!("{}_p_{topic}", self.inner.prefix)
    }

    /// The subject of one HTTP subscription's pending pushes.
    pub(super) fn push_subject(&self, topic: &str, name: &str) -> String {
        format!("{}.p.{topic}.{name}", self.inner.prefix)
    }

    /// Creates (or confirms) the topic's push stream and the subscription's consumer.
    async fn ensure_push_consumer(
        &self,
        topic: &str,
        name: &str,
        push: &HttpPush,
    ) -> Result<PullConsumer> {
        let context = || format!("preparing the pushes of {topic}/{name}");
        let config = self.work_queue_config(
            self.push_stream_name(topic),
            vec![format!("{}.p.{topic}.*", self.inner.prefix)],
        );
        let stream = self.upsert_stream(config, context).await?;
        // A claimed push may wait behind `max_concurrency` others before its attempt starts:
        // the lease covers that and the attempt, so a live process never loses its claims.
        let ack_wait = Duration::from_secs(60 + 4 * u64::from(push.push_timeout_seconds));
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(name.to_owned()),
                filter_subject: self.push_subject(topic, name),
                ack_policy: AckPolicy::Explicit,
                deliver_policy: DeliverPolicy::All,
                ack_wait,
                max_deliver: -1,
                // Messages waiting for a retry are unacknowledged too: no cap, or a day of
                // failures would stall the subscription.
                max_ack_pending: -1,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(context(), e))?;
        Ok(consumer)
    }

    pub(in crate::store) async fn create_push_subscription(
        &self,
        topic: &str,
        name: &str,
        spec: SubscriptionSpec,
    ) -> Result<PushCreated> {
        self.topic(topic).await?;
        let Endpoint::Http(push) = &spec.endpoint else {
            return Err(StoreError::invalid("http", "not an HTTP subscription"));
        };
        if let Some(dlq) = &push.dead_letter_queue {
            if self.inner.catalog.queues.fetch(dlq).await?.is_none() {
                return Err(StoreError::invalid(
                    "dead_letter_queue",
                    format!("queue `{dlq}` does not exist"),
                ));
            }
        }
        let key = sub_key(topic, name);
        let same = |existing: SubRecord| {
            if existing.spec == spec && existing.push.is_some() {
                Ok(PushCreated {
                    created: false,
                    secret: None,
                })
            } else {
                Err(StoreError::SubscriptionAlreadyExist {
                    topic: topic.to_owned(),
                    name: name.to_owned(),
                })
            }
        };
        if let Some(existing) = self.inner.catalog.subs.fetch(&key).await? {
            return same(existing);
        }
        // The consumer first: a subscription in the catalog always has somewhere to pull from.
        self.ensure_push_consumer(topic, name, push).await?;
        let secret = new_secret();
        let record = SubRecord {
            topic: topic.to_owned(),
            name: name.to_owned(),
            spec: spec.clone(),
            create_time_ms: now_ms(),
            push: Some(PushState {
                // Positive and random: every process must agree on it without a counter.
                id: (rand::random::<u64>() >> 1) as i64,
                enabled: true,
                disabled_reason: None,
                secret: secret.clone(),
                old_secret: None,
            }),
        };
        match self.inner.catalog.subs.create(&key, &record).await? {
            None => Ok(PushCreated {
                created: true,
                secret: Some(secret),
            }),
            Some(existing) => same(existing),
        }
    }

    /// Removes the consumer and the pending pushes of an HTTP subscription that left the
    /// catalog.
    pub(super) async fn drop_push_subscription(&self, topic: &str, name: &str) -> Result<()> {
        let stream = match self.inner.js.get_stream(self.push_stream_name(topic)).await {
            Ok(s) => s,
            Err(e) if e.to_string().contains("not found") => return Ok(()),
            Err(e) => return Err(unavailable(format!("the pushes of {topic}"), e)),
        };
        match stream.delete_consumer(name).await {
            Ok(_) => {}
            Err(e) if e.to_string().contains("not found") => {}
            Err(e) => return Err(unavailable(format!("deleting the pushes of {name}"), e)),
        }
        stream
            .purge()
            .filter(self.push_subject(topic, name))
            .await
            .map_err(|e| unavailable(format!("deleting the pushes of {name}"), e))?;
        Ok(())
    }

    /// Removes a deleted topic's push stream.
    pub(super) async fn drop_push_stream(&self, topic: &str) -> Result<()> {
        match self
            .inner
            .js
            .delete_stream(self.push_stream_name(topic))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Ok(()),
            Err(e) => Err(unavailable(format!("deleting the pushes of {topic}"), e)),
        }
    }

    pub(in crate::store) fn push_subscriptions(&self) -> Vec<PushSubscription> {
        self.inner
            .catalog
            .subs
            .all()
            .into_iter()
            .filter_map(|(_, record)| {
                let state = record.push?;
                let Endpoint::Http(push) = record.spec.endpoint else {
                    return None;
                };
                Some(PushSubscription {
                    id: state.id,
                    topic: record.topic,
                    name: record.name,
                    push,
                    enabled: state.enabled,
                    secret: state.secret,
                    old_secret: state.old_secret,
                })
            })
            .collect()
    }

    /// The HTTP subscription with push id `id` (every cycle asks: found in place in the
    /// catalog copy, only the match is copied).
    fn push_sub(&self, id: i64) -> Option<Found> {
        self.inner.catalog.subs.find_map(|(_, record)| {
            record.push.as_ref().filter(|s| s.id == id)?;
            Found::of(record)
        })
    }

    async fn push_consumer(&self, found: &Found) -> Result<Arc<PullConsumer>> {
        if let Some(c) = lock(&self.inner.push.consumers).get(&found.state.id) {
            return Ok(c.clone());
        }
        let consumer = Arc::new(
            self.ensure_push_consumer(&found.topic, &found.name, &found.push)
                .await?,
        );
        lock(&self.inner.push.consumers).insert(found.state.id, consumer.clone());
        Ok(consumer)
    }

    /// Answers the finished attempts, then claims up to `claim` pushes (waiting up to [`POLL`]
    /// for the first when none is ready).
    pub(in crate::store) async fn push_cycle(
        &self,
        id: i64,
        outcomes: Vec<PushOutcome>,
        claim: usize,
    ) -> Result<PushCycle> {
        let Some(found) = self.push_sub(id) else {
            lock(&self.inner.push.held).remove(&id);
            lock(&self.inner.push.consumers).remove(&id);
            return Ok(PushCycle {
                gone: true,
                ..PushCycle::default()
            });
        };
        let answered = futures_util::future::join_all(
            outcomes
                .into_iter()
                .map(|outcome| self.answer_push(&found, outcome)),
        )
        .await;
        let disable = answered.into_iter().flatten().next();
        let mut enabled = found.state.enabled;
        if let Some(reason) = disable {
            self.disable_push(&found, reason).await?;
            enabled = false;
        }
        let nothing_held = lock(&self.inner.push.held)
            .get(&id)
            .is_none_or(HashMap::is_empty);
        self.flush_push_stats(&found, claim == 0 && nothing_held)
            .await;
        if !enabled || claim == 0 {
            return Ok(PushCycle {
                enabled,
                next_due_ms: enabled.then(now_ms),
                ..PushCycle::default()
            });
        }
        let consumer = self.push_consumer(&found).await?;
        let mut got = fetch(&consumer, claim, None).await?;
        if got.is_empty() {
            got = fetch(&consumer, 1, Some(POLL)).await?;
            if !got.is_empty() && claim > 1 {
                got.extend(fetch(&consumer, claim - 1, None).await?);
            }
        }
        let now = now_ms();
        let mut deliveries = Vec::with_capacity(got.len());
        for m in got {
            let info = m
                .info()
                .map_err(|e| StoreError::Internal(format!("push without JetStream info: {e}")))?;
            let (seq, attempts) = (info.stream_sequence, info.delivered.max(1) - 1);
            let message = decode(m.headers.as_ref(), &m.payload, ms_of(info.published))?;
            deliveries.push(PushDelivery {
                seq,
                message_id: message.id.to_string(),
                body: message.body,
                body_md5: message.body_md5,
                tag: message.tag,
                attributes: message.attributes.to_map(),
                publish_time_ms: message.enqueue_time_ms,
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                due_ms: now,
            });
            lock(&self.inner.push.held)
                .entry(id)
                .or_default()
                .insert(seq, m);
        }
        Ok(PushCycle {
            deliveries,
            next_due_ms: Some(now),
            enabled: true,
            gone: false,
        })
    }

    /// Answers one finished attempt to the cluster and counts it. Returns the reason when the
    /// endpoint asked to be disabled. Failures are logged, not returned: an unanswered claim
    /// comes back when its lease ends.
    async fn answer_push(&self, found: &Found, outcome: PushOutcome) -> Option<String> {
        let (topic, name) = (&found.topic, &found.name);
        let m = lock(&self.inner.push.held)
            .get_mut(&found.state.id)?
            .remove(&outcome.seq)?;
        let (kind, disable) = match outcome.result {
            PushResult::Delivered => {
                self.count_push(found, |s| s.delivered += 1);
                (AckKind::Ack, None)
            }
            PushResult::Retry { due_ms, error } => {
                self.count_failure(found, &error);
                let delay = Duration::from_millis(due_ms.saturating_sub(now_ms()));
                (AckKind::Nak(Some(delay)), None)
            }
            // Not attempted (a stop, a disable): back to the consumer after a moment, by which
            // time every process has seen a disable.
            PushResult::Release => (AckKind::Nak(Some(POLL)), None),
            PushResult::Disable { error } => {
                self.count_failure(found, &error);
                // Kept for a re-enable; held back long enough that no other process pushes it
                // before the disable reaches it.
                (AckKind::Nak(Some(DISABLE_HOLD)), Some(error))
            }
            PushResult::GiveUp { error } => match self.give_up_push(found, &m, &error).await {
                Ok(()) => {
                    self.count_failure(found, &error);
                    (AckKind::Ack, None)
                }
                Err(e) => {
                    tracing::warn!(topic = %topic, subscription = %name, error = %e,
                        "moving an exhausted push to the dead-letter queue failed; it will be tried again");
                    (AckKind::Nak(Some(POLL)), None)
                }
            },
        };
        let reply = match kind {
            AckKind::Ack => m.double_ack().await,
            other => m.ack_with(other).await,
        };
        if let Err(e) = reply {
            tracing::debug!(topic = %topic, subscription = %name, error = %e,
                "answering a push to the cluster failed; it comes back when its lease ends");
        }
        disable
    }

    /// The schedule ran out: a copy to the subscription's dead-letter queue, or a counted drop.
    async fn give_up_push(
        &self,
        found: &Found,
        m: &async_nats::jetstream::Message,
        error: &str,
    ) -> Result<()> {
        let (topic, name) = (&found.topic, &found.name);
        let info = m
            .info()
            .map_err(|e| StoreError::Internal(format!("push without JetStream info: {e}")))?;
        let message = decode(m.headers.as_ref(), &m.payload, ms_of(info.published))?;
        let Some(dlq) = &found.push.dead_letter_queue else {
            tracing::warn!(topic = %topic, subscription = %name, message_id = %message.id, error,
                "push dropped after its last retry (the subscription has no dead-letter queue)");
            self.count_push(found, |s| s.dropped += 1);
            return Ok(());
        };
        let origin = DeadLetterOrigin {
            source_queue: topic.clone(),
            source_subscription: Some(name.clone()),
            original_id: message.id.to_string(),
            dequeue_count: u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
            original_enqueue_time_ms: message.enqueue_time_ms,
            last_error: Some(error.to_owned()),
        };
        // The push copy's sequence makes the id unique per exhausted schedule (a redriven
        // message that runs out again is a new dead letter), the same on a resend.
        let dedup_id = format!("dl.{}.{name}.{}", message.id, info.stream_sequence);
        self.store_dead_letter(dlq, &message, &origin, &dedup_id)
            .await?;
        tracing::info!(topic = %topic, subscription = %name, message_id = %message.id,
            dead_letter_queue = %dlq, error, "push moved to the dead-letter queue after its last retry");
        self.count_push(found, |s| s.dead_lettered += 1);
        Ok(())
    }

    /// `410 Gone`: every process stops pushing the subscription.
    async fn disable_push(&self, found: &Found, reason: String) -> Result<()> {
        let (topic, name) = (&found.topic, &found.name);
        tracing::warn!(topic = %topic, subscription = %name, reason = %reason,
            "HTTP subscription disabled by its endpoint");
        self.change_push(topic, name, |state, _| {
            state.enabled = false;
            state.disabled_reason = Some(reason.clone());
        })
        .await
    }

    /// Changes an HTTP subscription's catalog record by compare-and-set.
    async fn change_push(
        &self,
        topic: &str,
        name: &str,
        mut change: impl FnMut(&mut PushState, &mut HttpPush),
    ) -> Result<()> {
        self.topic(topic).await?;
        let updated = self
            .inner
            .catalog
            .subs
            .update(&sub_key(topic, name), |record| {
                let (Some(state), Endpoint::Http(push)) =
                    (record.push.as_mut(), &mut record.spec.endpoint)
                else {
                    return Err(not_http(topic, name));
                };
                change(state, push);
                Ok(())
            })
            .await?;
        updated
            .map(|_| ())
            .ok_or_else(|| StoreError::SubscriptionNotExist {
                topic: topic.to_owned(),
                name: name.to_owned(),
            })
    }

    pub(in crate::store) async fn set_push_enabled(
        &self,
        topic: &str,
        name: &str,
        enabled: bool,
    ) -> Result<()> {
        self.change_push(topic, name, |state, _| {
            state.enabled = enabled;
            if enabled {
                state.disabled_reason = None;
            }
        })
        .await
    }

    pub(in crate::store) async fn set_push_strategy(
        &self,
        topic: &str,
        name: &str,
        strategy: crate::store::NotifyStrategy,
    ) -> Result<()> {
        self.change_push(topic, name, |_, push| push.strategy = strategy)
            .await
    }

    pub(in crate::store) async fn rotate_push_secret(
        &self,
        topic: &str,
        name: &str,
        grace: Duration,
    ) -> Result<String> {
        let secret = new_secret();
        let until = now_ms() + grace.as_millis() as u64;
        self.change_push(topic, name, |state, _| {
            let old = std::mem::replace(&mut state.secret, secret.clone());
            state.old_secret = Some((old, until));
        })
        .await?;
        Ok(secret)
    }

    /// The HTTP subscription `name` of `topic`, with the errors a user should see.
    async fn http_subscription(&self, topic: &str, name: &str) -> Result<Found> {
        self.topic(topic).await?;
        let record = self
            .inner
            .catalog
            .subs
            .fetch(&sub_key(topic, name))
            .await?
            .ok_or_else(|| StoreError::SubscriptionNotExist {
                topic: topic.to_owned(),
                name: name.to_owned(),
            })?;
        Found::of(&record).ok_or_else(|| not_http(topic, name))
    }

    pub(in crate::store) async fn push_status(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<PushStatus> {
        let found = self.http_subscription(topic, name).await?;
        let mine = stats_key(topic, name, self.inner.ids.node());
        let mut total = PushStats::default();
        let mut add = |s: &PushStats| {
            total.delivered += s.delivered;
            total.failed += s.failed;
            total.dropped += s.dropped;
            total.dead_lettered += s.dead_lettered;
            if s.last_error.as_ref().map(|e| e.1) > total.last_error.as_ref().map(|e| e.1) {
                total.last_error = s.last_error.clone();
            }
        };
        for (key, s) in self
            .inner
            .catalog
            .push_stats
            .with_prefix(&format!("{topic}.{name}."))
        {
            if key != mine {
                add(&s);
            }
        }
        add(&self.local_stats(&found));
        let consumer = self.push_consumer(&found).await?;
        let info = consumer
            .get_info()
            .await
            .map_err(|e| unavailable(format!("the pushes of {topic}/{name}"), e))?;
        let in_flight = info.num_ack_pending as u64;
        Ok(PushStatus {
            enabled: found.state.enabled,
            disabled_reason: found.state.disabled_reason.clone(),
            delivered_total: total.delivered,
            failed_attempts_total: total.failed,
            dropped_total: total.dropped,
            dead_lettered_total: total.dead_lettered,
            backlog: info.num_pending + in_flight,
            in_flight,
            next_attempt_time_ms: None,
            last_error: total.last_error.as_ref().map(|e| e.0.clone()),
            last_error_time_ms: total.last_error.as_ref().map(|e| e.1),
            previous_secret_valid_until_ms: found
                .state
                .old_secret
                .as_ref()
                .map(|o| o.1)
                .filter(|&until| until > now_ms()),
        })
    }

    /// The subscription's messages in its dead-letter queue (oldest first, at most `max`), and
    /// their stream sequences.
    async fn push_dead_letter_scan(
        &self,
        topic: &str,
        name: &str,
        max: usize,
    ) -> Result<(String, Vec<(u64, Message)>)> {
        let found = self.http_subscription(topic, name).await?;
        let dlq = found.push.dead_letter_queue.clone().ok_or_else(|| {
            StoreError::invalid(
                "dead_letter_queue",
                format!("subscription `{name}` has no dead-letter queue"),
            )
        })?;
        let ours = |m: &Message| {
            m.dead_letter.as_ref().is_some_and(|o| {
                o.source_queue == topic && o.source_subscription.as_deref() == Some(name)
            })
        };
        let found = self.scan(&dlq, max, DEAD_LETTER_SCAN, ours).await?;
        Ok((dlq, found))
    }

    pub(in crate::store) async fn push_dead_letters(
        &self,
        topic: &str,
        name: &str,
        max: usize,
    ) -> Result<Vec<Message>> {
        let (_, found) = self.push_dead_letter_scan(topic, name, max).await?;
        Ok(found.into_iter().map(|(_, m)| m).collect())
    }

    /// Publishes each dead letter of the subscription back to its pending pushes (same message
    /// id, a fresh schedule), then removes it from the dead-letter queue.
    pub(in crate::store) async fn redrive_push_dead_letters(
        &self,
        topic: &str,
        name: &str,
        max: usize,
    ) -> Result<u64> {
        let (dlq, found) = self.push_dead_letter_scan(topic, name, max).await?;
        let stream = self.stream(&dlq).await?;
        let mut moved = 0u64;
        for (seq, m) in found {
            let enqueue_time_ms = m
                .dead_letter
                .as_ref()
                .map_or(m.enqueue_time_ms, |o| o.original_enqueue_time_ms);
            let envelope = Envelope {
                id: m.id,
                tag: m.tag.as_deref(),
                attributes: &m.attributes.to_map(),
                priority: DEFAULT_PRIORITY,
                enqueue_time_ms,
                dead_letter: None,
            };
            let message = async_nats::jetstream::message::PublishMessage::build()
                .payload(m.body.clone())
                .headers(envelope.headers()?)
                .message_id(format!("{}.{name}.r{seq}", m.id));
            let copy = self
                .send_copy(None, self.push_subject(topic, name), message)
                .await?;
            self.confirm(copy, &mut Retry::new(&self.inner.counters))
                .await?;
            match stream.delete_message(seq).await {
                Ok(_) => {}
                // Taken by a consumer of the dead-letter queue meanwhile: it is pushed again
                // and also there, which at-least-once allows.
                Err(e) if e.to_string().contains("not found") => {}
                Err(e) => return Err(unavailable(format!("removing a dead letter of {dlq}"), e)),
            }
            moved += 1;
        }
        if moved > 0 {
            tracing::info!(
                topic,
                subscription = name,
                messages = moved,
                "dead letters redriven to pending pushes"
            );
        }
        Ok(moved)
    }

    /// This process's counters of a subscription: loaded from the cluster the first time (so a
    /// restarted process goes on from its own totals), changed in memory after that.
    fn local_stats(&self, found: &Found) -> PushStats {
        let mut stats = lock(&self.inner.push.stats);
        self.local_entry(&mut stats, found).stats.clone()
    }

    fn local_entry<'a>(
        &self,
        stats: &'a mut HashMap<i64, LocalStats>,
        found: &Found,
    ) -> &'a mut LocalStats {
        stats.entry(found.state.id).or_insert_with(|| LocalStats {
            stats: self
                .inner
                .catalog
                .push_stats
                .get(&stats_key(&found.topic, &found.name, self.inner.ids.node()))
                .unwrap_or_default(),
            dirty: false,
            flushed_ms: now_ms(),
        })
    }

    /// A failed attempt (the last of a schedule too), as SQLite counts it.
    fn count_failure(&self, found: &Found, error: &str) {
        self.count_push(found, |s| {
            s.failed += 1;
            s.last_error = Some((error.to_owned(), now_ms()));
        });
    }

    fn count_push(&self, found: &Found, change: impl FnOnce(&mut PushStats)) {
        let mut stats = lock(&self.inner.push.stats);
        let entry = self.local_entry(&mut stats, found);
        change(&mut entry.stats);
        entry.dirty = true;
    }

    /// Writes this process's counters of the subscription to the cluster when they changed and
    /// a second has passed (or at once when `now` is set: the worker is stopping).
    async fn flush_push_stats(&self, found: &Found, now: bool) {
        let due = {
            let mut stats = lock(&self.inner.push.stats);
            let entry = self.local_entry(&mut stats, found);
            let at = now_ms();
            (entry.dirty && (now || at >= entry.flushed_ms + STATS_EVERY_MS)).then(|| {
                entry.dirty = false;
                entry.flushed_ms = at;
                entry.stats.clone()
            })
        };
        let Some(stats) = due else { return };
        let key = stats_key(&found.topic, &found.name, self.inner.ids.node());
        if let Err(e) = self.inner.catalog.push_stats.put(&key, &stats).await {
            tracing::debug!(key, error = %e, "push counters not written; next time");
            let mut all = lock(&self.inner.push.stats);
            self.local_entry(&mut all, found).dirty = true;
        }
    }
}

fn stats_key(topic: &str, name: &str, node: u16) -> String {
    format!("{topic}.{name}.{node}")
}

fn not_http(topic: &str, name: &str) -> StoreError {
    StoreError::invalid(
        "subscription_name",
        format!("subscription `{name}` of topic `{topic}` is not an HTTP subscription"),
    )
}
