//! Publishing: the topic fan-out to queue streams and HTTP subscriptions' pending pushes with
//! deduplicating ids, the shared message
//! encoding, and the ordered submission path of the rule pipeline. Every copy waits for the
//! cluster's acknowledgement and is sent again with the same id while the stream cannot take it
//! (a leader election), until the request's deadline ([`super::retry`]).

use std::collections::BTreeMap;

use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::HeaderMap;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::retry::{publish_transient, Retry};
use super::{
    rfc3339_ms, unavailable, Inner, JetStream, H_ATTRIBUTES, H_DEAD_LETTER, H_ENQUEUED, H_ID,
    H_PRIORITY, H_TAG,
};
use crate::ids::{now_ms, MessageId};
use crate::store::metrics::QueueTotals;
use crate::store::types::{md5_hex, md5_of};
use crate::store::{
    DeadLetterOrigin, Endpoint, PublishRequest, Published, Result, StoreError, DEFAULT_PRIORITY,
};

pub(super) type Unit = Vec<(String, PublishRequest)>;
pub(super) type Submitted = (Unit, oneshot::Sender<Result<Vec<Published>>>);

/// A pending fan-out: the acks it waits for, in request order, with the topic.
pub(super) type PendingAcks = Vec<(String, Published, Vec<Resend>)>;

/// One copy of a published message, kept until its ack arrives so it can be sent again.
pub(super) struct Resend {
    /// The queue it goes to (`None`: an HTTP subscription's pending pushes).
    queue: Option<String>,
    subject: String,
    message: PublishMessage,
    /// The ack to wait for, or why the copy could not be sent (a transient failure: it is sent
    /// again by [`JetStream::confirm`]).
    ack: std::result::Result<PublishAckFuture, PublishError>,
}

impl JetStream {
    pub(in crate::store) async fn publish_batch(&self, items: Unit) -> Result<Vec<Published>> {
        let mut retry = Retry::new(&self.inner.counters);
        let pending = self.start_publish(items).await?;
        self.finish_publish(pending, &mut retry).await
    }

    /// Queues a unit for publishing from a plain thread, in submission order; the future
    /// resolves when every copy is acknowledged by the cluster.
    pub(in crate::store) fn submit_publish_batch(
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
    pub(super) async fn start_publish(&self, items: Unit) -> Result<PendingAcks> {
        let mut plans = Vec::with_capacity(items.len());
        for (topic, req) in items {
            self.topic(&topic).await?;
            let mut targets = Vec::new();
            let mut pushes = Vec::new();
            for (_, sub) in self.subscriptions_of(&topic) {
                let matches = match &sub.spec.filter_tag {
                    None => true,
                    Some(f) => req.tag.as_deref() == Some(f.as_str()),
                };
                match (matches, &sub.spec.endpoint) {
                    (true, Endpoint::Queue(q)) => {
                        if let Some(record) = self.inner.catalog.queues.get(q) {
                            targets.push((
                                sub.name.clone(),
                                q.clone(),
                                record,
                                sub.spec.base64_body,
                            ));
                        }
                    }
                    (true, Endpoint::Http(_)) if sub.push.is_some() => pushes.push(sub.name),
                    _ => {}
                }
            }
            plans.push((topic, req, targets, pushes));
        }
        let now = now_ms();
        let mut pending = Vec::with_capacity(plans.len());
        for (topic, req, targets, pushes) in plans {
            let id = self.inner.ids.next_at(now);
            let published = Published {
                id,
                body_md5: md5_hex(&md5_of(&req.body)),
                enqueue_time_ms: now,
                queues: targets.len() as u32,
                pushes: pushes.len() as u32,
            };
            let envelope = Envelope {
                id,
                tag: req.tag.as_deref(),
                attributes: &req.attributes,
                priority: DEFAULT_PRIORITY,
                enqueue_time_ms: now,
                dead_letter: None,
            };
            // The same headers go with every copy: built once per message, cloned per queue.
            let headers = envelope.headers()?;
            let mut copies = Vec::with_capacity(targets.len());
            for (sub, queue, record, base64_body) in targets {
                let body = if base64_body {
                    use base64::Engine;
                    Bytes::from(base64::engine::general_purpose::STANDARD.encode(&req.body))
                } else {
                    req.body.clone()
                };
                let (subject, message) = self.message_for(
                    &queue,
                    &envelope,
                    headers.clone(),
                    body,
                    record.attributes.delay_seconds,
                    &format!("{id}.{sub}"),
                );
                copies.push(self.send_copy(Some(&queue), subject, message).await?);
            }
            // Each HTTP subscription's copy waits for its push behind the subscription's
            // consumer (see `push`).
            for sub in pushes {
                let message = PublishMessage::build()
                    .payload(req.body.clone())
                    .headers(headers.clone())
                    .message_id(format!("{id}.{sub}"));
                let subject = self.push_subject(&topic, &sub);
                copies.push(self.send_copy(None, subject, message).await?);
            }
            pending.push((topic, published, copies));
        }
        Ok(pending)
    }

    /// The stored form of a copy for `queue`: the envelope's `headers`, the deduplicating id
    /// and, for a delayed copy, the schedule that releases it.
    pub(super) fn message_for(
        &self,
        queue: &str,
        envelope: &Envelope<'_>,
        mut headers: HeaderMap,
        body: Bytes,
        delay_seconds: u32,
        dedup_id: &str,
    ) -> (String, PublishMessage) {
        let subject = if delay_seconds > 0 {
            let at = envelope.enqueue_time_ms + u64::from(delay_seconds) * 1000;
            headers.insert("Nats-Schedule", format!("@at {}", rfc3339_ms(at)).as_str());
            headers.insert("Nats-Schedule-Target", self.subject(queue).as_str());
            format!("{}.qd.{queue}.{}", self.inner.prefix, envelope.id)
        } else {
            self.subject(queue)
        };
        let message = PublishMessage::build()
            .payload(body)
            .headers(headers)
            .message_id(dedup_id);
        (subject, message)
    }

    pub(super) async fn send_copy(
        &self,
        queue: Option<&str>,
        subject: String,
        message: PublishMessage,
    ) -> Result<Resend> {
        let ack = match self
            .inner
            .js
            .send_publish(subject.clone(), message.clone())
            .await
        {
            Ok(ack) => Ok(ack),
            Err(e) if publish_transient(&e) => Err(e),
            Err(e) => return Err(publish_error(&subject, e)),
        };
        Ok(Resend {
            queue: queue.map(str::to_owned),
            subject,
            message,
            ack,
        })
    }
}

/// What every stored copy of a message carries, whichever queue it goes to.
pub(super) struct Envelope<'a> {
    pub(super) id: MessageId,
    pub(super) tag: Option<&'a str>,
    pub(super) attributes: &'a BTreeMap<String, String>,
    pub(super) priority: u8,
    pub(super) enqueue_time_ms: u64,
    pub(super) dead_letter: Option<&'a DeadLetterOrigin>,
}

impl Envelope<'_> {
    /// The sluice headers (`decode` in `queue.rs` reads them back).
    pub(super) fn headers(&self) -> Result<HeaderMap> {
        let mut headers = HeaderMap::new();
        headers.insert(H_ID, self.id.to_string().as_str());
        headers.insert(H_ENQUEUED, self.enqueue_time_ms.to_string().as_str());
        if self.priority != DEFAULT_PRIORITY {
            headers.insert(H_PRIORITY, self.priority.to_string().as_str());
        }
        if let Some(tag) = self.tag {
            headers.insert(H_TAG, tag);
        }
        if !self.attributes.is_empty() {
            let json = serde_json::to_string(self.attributes)
                .map_err(|e| StoreError::Internal(e.to_string()))?;
            headers.insert(H_ATTRIBUTES, json.as_str());
        }
        if let Some(origin) = self.dead_letter {
            let json =
                serde_json::to_string(origin).map_err(|e| StoreError::Internal(e.to_string()))?;
            headers.insert(H_DEAD_LETTER, json.as_str());
        }
        Ok(headers)
    }
}

/// Publishes submitted units in submission order; their acks are awaited off the loop.
pub(super) async fn publish_in_order(
    inner: std::sync::Weak<Inner>,
    mut submitted: mpsc::Receiver<Submitted>,
) {
    while let Some((unit, reply)) = submitted.recv().await {
        let Some(inner) = inner.upgrade() else {
            let _ = reply.send(Err(StoreError::Closed));
            continue;
        };
        let store = JetStream { inner };
        match store.start_publish(unit).await {
            Ok(pending) => {
                tokio::spawn(async move {
                    let mut retry = Retry::new(&store.inner.counters);
                    let _ = reply.send(store.finish_publish(pending, &mut retry).await);
                });
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

impl JetStream {
    /// Waits for every copy's ack (sending again what the stream could not take), then counts
    /// the unit.
    async fn finish_publish(
        &self,
        pending: PendingAcks,
        retry: &mut Retry<'_>,
    ) -> Result<Vec<Published>> {
        let counters = &self.inner.counters;
        let mut out = Vec::with_capacity(pending.len());
        for (topic, published, copies) in pending {
            for copy in copies {
                let queue = copy.queue.clone();
                self.confirm(copy, retry).await?;
                if let Some(queue) = queue {
                    counters.add_queue(
                        &queue,
                        QueueTotals {
                            enqueued: 1,
                            ..QueueTotals::default()
                        },
                    );
                }
            }
            counters.add_published(&topic, 1);
            out.push(published);
        }
        Ok(out)
    }

    /// Waits for a copy's ack. While the stream cannot take it (no leader during an election,
    /// no answer in time, the connection moving to another node), sends the same message again
    /// with the same deduplicating id, so it is stored once, until `retry`'s deadline. A queue
    /// deleted meanwhile ends the wait with `QueueNotExist`.
    pub(super) async fn confirm(&self, copy: Resend, retry: &mut Retry<'_>) -> Result<()> {
        let Resend {
            queue,
            subject,
            message,
            mut ack,
        } = copy;
        loop {
            let error = match ack {
                Ok(pending) => match tokio::time::timeout_at(retry.deadline(), pending).await {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(e)) => e,
                    Err(_) => PublishError::new(PublishErrorKind::TimedOut),
                },
                Err(e) => e,
            };
            if !publish_transient(&error) {
                return Err(publish_error(&subject, error));
            }
            if let Some(queue) = &queue {
                if self.inner.catalog.queues.get(queue).is_none() {
                    return Err(StoreError::QueueNotExist {
                        name: queue.clone(),
                    });
                }
            }
            if !retry.again(&subject, &error).await {
                return Err(publish_error(&subject, error));
            }
            ack = self
                .inner
                .js
                .send_publish(subject.clone(), message.clone())
                .await;
        }
    }
}

fn publish_error(subject: &str, e: PublishError) -> StoreError {
    if e.kind() == PublishErrorKind::MaxPayloadExceeded {
        return StoreError::invalid("body", e.to_string());
    }
    if e.kind() == PublishErrorKind::StreamNotFound {
        // NATS's "no responders": no server took the publish. The catalog knows the stream,
        // so it has no leader right now (an election after a node failed) or was just deleted.
        return StoreError::Unavailable(format!(
            "storing a message on {subject}: no NATS server took it for {} s; the stream has \
             had no leader that long (is a majority of its nodes up?) or was deleted; retry",
            super::retry::PATIENCE.as_secs()
        ));
    }
    unavailable(format!("storing a message on {subject}"), e)
}
