//! The queue operations: send, receive (a pull, with the dead-letter move), peek, delete
//! (acks), visibility changes (NAKs with a delay), and reading stored messages back.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::AckKind;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;

use super::publish::Envelope;
use super::retry::{pull_transient, request_transient, Retry};
use super::{
    ms_of, receipt, unavailable, JetStream, H_ATTRIBUTES, H_DEAD_LETTER, H_ENQUEUED, H_ID,
    H_PRIORITY, H_TAG,
};
use crate::ids::{now_ms, MessageId};
use crate::store::metrics::QueueTotals;
use crate::store::types::{md5_hex, md5_of};
use crate::store::{
    Attributes, DeadLetterOrigin, Message, QueueAttributes, Result, SendRequest, Sent, StoreError,
    VisibilityChanged, DEFAULT_PRIORITY,
};

/// The shortest pull: how long a receive without a wait still listens for a message that was
/// stored an instant ago.
const SETTLE: Duration = Duration::from_millis(50);

impl JetStream {
    pub(in crate::store) async fn send_batch(
        &self,
        queue: &str,
        requests: Vec<SendRequest>,
    ) -> Result<Vec<Sent>> {
        let mut retry = Retry::new(&self.inner.counters);
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
            let envelope = Envelope {
                id,
                tag: req.tag.as_deref(),
                attributes: &req.attributes,
                priority: req.priority.unwrap_or(DEFAULT_PRIORITY),
                enqueue_time_ms: now,
                dead_letter: None,
            };
            let (subject, message) = self.message_for(
                queue,
                &envelope,
                envelope.headers()?,
                req.body.clone(),
                delay,
                &id.to_string(),
            );
            copies.push(self.send_copy(Some(queue), subject, message).await?);
            sent.push(Sent {
                id,
                body_md5: md5_hex(&md5_of(&req.body)),
                enqueue_time_ms: now,
                next_visible_time_ms: now + u64::from(delay) * 1000,
            });
        }
        for copy in copies {
            self.confirm(copy, &mut retry).await?;
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

    pub(in crate::store) async fn receive(
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
        // A pull that nobody answers (the consumer has no leader during an election) is made
        // again until the later of the poll's end and the request's retry deadline.
        let mut retry = Retry::until(
            &self.inner.counters,
            deadline.max(tokio::time::Instant::now() + super::retry::PATIENCE),
        );
        loop {
            let mut got = fetch_retrying(&consumer, max, None, &mut retry).await?;
            if got.is_empty() {
                // Wait for one message only, so the poll returns as soon as one is there, then
                // take whatever else is ready. Even a receive that does not wait gives the
                // consumer a moment: a message acknowledged to its sender an instant ago may
                // not have reached the consumer's count yet.
                let left = deadline
                    .saturating_duration_since(tokio::time::Instant::now())
                    .max(SETTLE);
                got = fetch_retrying(&consumer, 1, Some(left), &mut retry).await?;
                if got.is_empty() {
                    return Ok(Vec::new());
                }
                if max > 1 {
                    got.extend(fetch_retrying(&consumer, max - 1, None, &mut retry).await?);
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
    pub(super) async fn deliver(
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
        let mut message = decode(m.headers.as_ref(), &m.payload, ms_of(info.published))?;
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

    pub(super) async fn move_to_dead_letters(
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
        self.store_dead_letter(dlq, message, &origin, &format!("dl.{}", message.id))
            .await?;
        if let Err(e) = self.count_dead_letter(queue).await {
            // The move happened; only the count is short.
            tracing::warn!(queue, error = %e, "dead-letter move not counted");
        }
        Ok(())
    }

    /// Stores `message` in dead-letter queue `dlq` with its `origin`, under the deduplicating
    /// id `dedup_id`, and waits for the cluster's acknowledgement.
    pub(super) async fn store_dead_letter(
        &self,
        dlq: &str,
        message: &Message,
        origin: &DeadLetterOrigin,
        dedup_id: &str,
    ) -> Result<()> {
        let envelope = Envelope {
            id: message.id,
            tag: message.tag.as_deref(),
            attributes: &message.attributes.to_map(),
            priority: message.priority,
            enqueue_time_ms: now_ms(),
            dead_letter: Some(origin),
        };
        let headers = envelope.headers()?;
        let (subject, msg) =
            self.message_for(dlq, &envelope, headers, message.body.clone(), 0, dedup_id);
        let copy = self.send_copy(Some(dlq), subject, msg).await?;
        self.confirm(copy, &mut Retry::new(&self.inner.counters))
            .await
    }

    pub(in crate::store) async fn peek(&self, queue: &str, max: usize) -> Result<Vec<Message>> {
        let found = self.scan(queue, max, max, |_| true).await?;
        Ok(found.into_iter().map(|(_, m)| m).collect())
    }

    /// Reads the queue's stored messages oldest first, without receiving them: the first `max`
    /// that `wanted` accepts among the first `limit`, with their stream sequences.
    pub(super) async fn scan(
        &self,
        queue: &str,
        max: usize,
        limit: usize,
        wanted: impl Fn(&Message) -> bool,
    ) -> Result<Vec<(u64, Message)>> {
        self.queue(queue).await?;
        let stream = self.stream(queue).await?;
        let subject = self.subject(queue);
        let mut out = Vec::with_capacity(max.min(64));
        let mut next = None;
        for _ in 0..limit {
            if out.len() >= max {
                break;
            }
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
                Err(e) => return Err(unavailable(format!("reading queue {queue}"), e)),
            };
            next = Some(raw.sequence + 1);
            let message = decode(Some(&raw.headers), &raw.payload, ms_of(raw.time))?;
            if wanted(&message) {
                out.push((raw.sequence, message));
            }
        }
        Ok(out)
    }

    pub(in crate::store) async fn delete_batch(
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

    pub(in crate::store) async fn change_visibility(
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
    pub(super) fn lease(&self, queue: &str, stream: &str, handle: &str) -> Result<receipt::Lease> {
        let lease = self.inner.signer.open(queue, stream, handle)?;
        if now_ms() >= lease.lease_end_ms {
            return Err(StoreError::ReceiptHandleStale {
                reason: "its visibility timeout has passed",
            });
        }
        Ok(lease)
    }

    /// Sends an ack or nak and waits for the server to confirm it. While nobody answers (the
    /// consumer has no leader during an election) or the answer does not come in time, sends
    /// it again until the request's deadline: an ack or a nak with the same delay applied twice
    /// does what it did once.
    pub(super) async fn answer(&self, ack_subject: &str, kind: AckKind) -> Result<()> {
        let client = self.inner.js.client();
        let payload: Bytes = kind.into();
        let mut retry = Retry::new(&self.inner.counters);
        let reply = loop {
            let request = client.request(ack_subject.to_owned(), payload.clone());
            let Ok(answered) = tokio::time::timeout_at(retry.deadline(), request).await else {
                return Err(StoreError::Unavailable(format!(
                    "acknowledging to the queue: no answer within {} s",
                    super::retry::PATIENCE.as_secs()
                )));
            };
            match answered {
                Ok(reply) => break reply,
                Err(e) if request_transient(e.kind()) && retry.again(ack_subject, &e).await => {}
                Err(e) => return Err(unavailable("acknowledging to the queue".to_owned(), e)),
            }
        };
        match reply.status {
            Some(status) if !status.is_success() && status.as_u16() != 0 => Err(
                StoreError::Unavailable(format!("the queue refused the acknowledgement: {status}")),
            ),
            _ => Ok(()),
        }
    }
}

/// [`fetch`], made again while the pull is not answered ([`pull_transient`]) until `retry`'s
/// deadline.
async fn fetch_retrying(
    consumer: &PullConsumer,
    max: usize,
    wait: Option<Duration>,
    retry: &mut Retry<'_>,
) -> Result<Vec<async_nats::jetstream::Message>> {
    loop {
        match fetch(consumer, max, wait).await {
            Err(StoreError::Unavailable(why))
                if pull_transient(&why) && retry.again("pulling from a queue", &why).await => {}
            done => return done,
        }
    }
}

/// Pulls up to `max` messages: those ready now (`wait` = `None`), or waiting up to `wait` for
/// the first of them.
pub(super) async fn fetch(
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
pub(super) fn decode(
    headers: Option<&HeaderMap>,
    payload: &Bytes,
    published_ms: u64,
) -> Result<Message> {
    let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    let id = header(H_ID)
        .and_then(MessageId::parse)
        .ok_or_else(|| StoreError::Internal("stored message without a sluice id".into()))?;
    let attributes = match header(H_ATTRIBUTES) {
        Some(json) => Attributes::from_json(json.to_owned())
            .map_err(|e| StoreError::Internal(format!("stored attributes: {e}")))?,
        None => Attributes::default(),
    };
    let dead_letter = match header(H_DEAD_LETTER) {
        Some(json) => Some(
            serde_json::from_str(json)
                .map_err(|e| StoreError::Internal(format!("stored dead-letter origin: {e}")))?,
        ),
        None => None,
    };
    Ok(Message {
        id,
        body: payload.clone(),
        body_md5: md5_hex(&md5_of(payload)),
        tag: header(H_TAG).map(str::to_owned),
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
