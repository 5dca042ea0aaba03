//! Riding out a leader election: a write that meets a stream (or consumer) without a leader is
//! tried again, with backoff, until the request's deadline, so a NATS node lost is only latency
//! to the client. Only errors that mean "no leader / not available / no answer in time" are
//! tried again ([`publish_transient`], [`request_transient`], [`pull_transient`]); a definitive
//! refusal (a body over the server's payload limit, a stream error code that is not about
//! availability) is answered at once. Every retry is counted in
//! [`StoreCounters::unavailable_retries`] (`sluice_store_unavailable_retries_total`).
//!
//! Retried publishes cannot store a message twice: every copy carries its deduplicating
//! `Nats-Msg-Id` (the message id, or `{id}.{subscription}` for a fan-out copy), and the stream's
//! two-minute duplicate window drops a copy sent again.

use std::fmt::Display;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::RequestErrorKind;
use tokio::time::Instant;

use crate::ingest::backoff::Backoff;
use crate::store::metrics::StoreCounters;

/// How long one store operation keeps trying through an unavailable stream: the request's
/// deadline. An election after a node died takes up to about 9 s on an idle cluster (NATS's
/// election timeout is drawn between 4 and 9 s); the rest is margin for a loaded machine.
pub(super) const PATIENCE: Duration = Duration::from_secs(15);

/// The first pause between tries, doubled up to [`MAX_PAUSE`] (each with jitter).
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// The retry budget of one store operation.
pub(super) struct Retry<'a> {
    deadline: Instant,
    backoff: Backoff,
    counters: &'a StoreCounters,
}

impl<'a> Retry<'a> {
    /// A budget ending [`PATIENCE`] from now.
    pub(super) fn new(counters: &'a StoreCounters) -> Retry<'a> {
        Retry::until(counters, Instant::now() + PATIENCE)
    }

    /// A budget ending at `deadline`.
    pub(super) fn until(counters: &'a StoreCounters, deadline: Instant) -> Retry<'a> {
        Retry {
            deadline,
            backoff: Backoff::new(FIRST_PAUSE, MAX_PAUSE),
            counters,
        }
    }

    /// When the budget ends: waits for an answer end there too.
    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// After a transient failure of `what`: waits the next backoff pause and answers true
    /// (try again), or answers false at once when the deadline has passed.
    pub(super) async fn again(&mut self, what: &str, error: &(dyn Display + Sync)) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        let pause = self
            .backoff
            .next_delay(rand::random::<f64>())
            .min(self.deadline - now);
        self.counters
            .unavailable_retries
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(what, %error, ?pause, "the NATS cluster is not available; trying again");
        tokio::time::sleep(pause).await;
        true
    }
}

/// True for a publish that may succeed when sent again: no answer in time (the leader died
/// with it), the connection broke (the client reconnects to another node), "no responders"
/// (no server holds the stream's leader during an election; the catalog still knows the queue,
/// which the caller checks) and a cluster that says it is not available. A payload over the
/// limit and the stream's other error codes are definitive.
pub(super) fn publish_transient(e: &PublishError) -> bool {
    match e.kind() {
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::StreamNotFound => true,
        PublishErrorKind::Other => match js_error(e) {
            Some(js) => super::is_placement_error(js),
            // Not an answer of the server: the client's connection (reconnecting).
            None => true,
        },
        _ => false,
    }
}

/// True for an acknowledgement request (delete, visibility change) that may succeed when sent
/// again: no answer in time, or nobody listening (the consumer has no leader right now).
pub(super) fn request_transient(kind: RequestErrorKind) -> bool {
    matches!(
        kind,
        RequestErrorKind::TimedOut | RequestErrorKind::NoResponders
    )
}

/// True for a failed pull that may succeed when made again: nobody answered the pull request
/// (the consumer has no leader right now) or the client is reconnecting.
pub(super) fn pull_transient(error: &str) -> bool {
    let text = error.to_ascii_lowercase();
    [
        "no responders",
        "503",
        "disconnected",
        "broken pipe",
        "connection",
    ]
    .iter()
    .any(|s| text.contains(s))
}

/// The JetStream API error a publish failed with, if the server answered one.
fn js_error(e: &PublishError) -> Option<&async_nats::jetstream::Error> {
    std::error::Error::source(e)?.downcast_ref::<async_nats::jetstream::Error>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailability_is_retried() {
        assert!(publish_transient(&PublishError::new(
            PublishErrorKind::StreamNotFound
        )));
        assert!(publish_transient(&PublishError::new(
            PublishErrorKind::TimedOut
        )));
        assert!(publish_transient(&PublishError::new(
            PublishErrorKind::BrokenPipe
        )));
        assert!(!publish_transient(&PublishError::new(
            PublishErrorKind::MaxPayloadExceeded
        )));
        assert!(!publish_transient(&PublishError::new(
            PublishErrorKind::WrongLastMessageId
        )));
        assert!(request_transient(RequestErrorKind::NoResponders));
        assert!(request_transient(RequestErrorKind::TimedOut));
        assert!(!request_transient(RequestErrorKind::InvalidSubject));
        assert!(!request_transient(RequestErrorKind::MaxPayloadExceeded));
        assert!(pull_transient("no responders: 503"));
        assert!(!pull_transient("consumer deleted"));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_at_the_deadline_and_are_counted() {
        let counters = StoreCounters::default();
        let start = Instant::now();
        let mut retry = Retry::until(&counters, start + Duration::from_secs(3));
        let mut tries = 0;
        while retry.again("test", &"no responders").await {
            tries += 1;
            assert!(tries < 100, "no end");
        }
        let took = Instant::now() - start;
        assert_eq!(took, Duration::from_secs(3), "{took:?}");
        assert_eq!(
            counters.unavailable_retries.load(Ordering::Relaxed),
            tries as u64
        );
        assert!(tries >= 4, "{tries}");
    }
}
