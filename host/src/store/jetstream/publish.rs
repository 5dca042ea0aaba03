//! Publishing: the topic fan-out to queue streams and HTTP subscriptions' pending pushes with
//! deduplicating ids, the shared message
//! encoding, and the ordered submission path of the rule pipeline. Every copy waits for the
//! cluster's acknowledgement and is sent again with the same id when none comes.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{
    rfc3339_ms, unavailable, Inner, JetStream, H_ATTRIBUTES, H_DEAD_LETTER, H_ENQUEUED, H_ID,
    H_PRIORITY, H_TAG,
};
use crate::ids::{now_ms, MessageId};
use crate::store::metrics::{QueueTotals, StoreCounters};
use crate::store::types::{md5_hex, md5_of};
use crate::store::{
    DeadLetterOrigin, Endpoint, PublishRequest, Published, Result, StoreError, DEFAULT_PRIORITY,
};

/// Publishes of one fan-out are sent again (same deduplicating ids) this many times when the
/// cluster does not answer, e.g. during a leader election after a node died.
const PUBLISH_ATTEMPTS: u32 = 6;

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
    ack: async_nats::jetstream::context::PublishAckFuture,
}

impl JetStream {
    pub(in crate::store) async fn publish_batch(&self, items: Unit) -> Result<Vec<Published>> {
        let pending = self.start_publish(items).await?;
        finish_publish(&self.inner.js, &self.inner.counters, pending).await
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
        let ack = self
            .inner
            .js
            .send_publish(subject.clone(), message.clone())
            .await
            .map_err(|e| publish_error(&subject, e))?;
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

/// Waits for a copy's ack; when the cluster does not answer (a leader election, a node gone),
/// sends the same message again with the same deduplicating id, so it is stored once.
pub(super) async fn confirm(js: &Context, copy: Resend) -> Result<()> {
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
    if e.kind() == PublishErrorKind::StreamNotFound {
        // NATS's "no responders": no server took the publish. The catalog knows the stream,
        // so it has no leader right now (an election after a node failed) or was just deleted.
        return StoreError::Unavailable(format!(
            "storing a message on {subject}: no NATS server took it; the stream has no leader \
             (an election after a node failed takes up to about 10 s) or was deleted; retry"
        ));
    }
    unavailable(format!("storing a message on {subject}"), e)
}
