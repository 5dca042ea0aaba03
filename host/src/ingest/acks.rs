//! The acks of a session's QoS 1/2 publishes, waited for in arrival order.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::FutureExt as _;

use tokio::sync::oneshot;

use super::AckOutcome;

/// How a publish's ack finished, as the session acts on it.
pub(super) enum Resolved {
    Committed,
    Rejected(String),
    /// The pipeline dropped the ack without an outcome (counts as a rejection).
    Dropped,
    /// The policy refused the publish (MQTT 5 only; 3.1.1 closes instead).
    NotAuthorized,
    /// A resent QoS 2 publish whose exchange is already under way: answer PUBREC again.
    Duplicate,
}

/// The ack of one QoS 1/2 publish, in the ordered queue.
pub(super) struct AckWait {
    pkid: u16,
    qos: u8,
    rx: Option<oneshot::Receiver<AckOutcome>>,
    ready: Option<Resolved>,
}

impl AckWait {
    pub(super) fn waiting(pkid: u16, qos: u8, rx: oneshot::Receiver<AckOutcome>) -> AckWait {
        AckWait {
            pkid,
            qos,
            rx: Some(rx),
            ready: None,
        }
    }

    pub(super) fn ready(pkid: u16, qos: u8, resolved: Resolved) -> AckWait {
        AckWait {
            pkid,
            qos,
            rx: None,
            ready: Some(resolved),
        }
    }
}

impl Future for AckWait {
    type Output = Done;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let resolved = match this.rx.as_mut() {
            Some(rx) => match Pin::new(rx).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(AckOutcome::Committed)) => Resolved::Committed,
                Poll::Ready(Ok(AckOutcome::Rejected(reason))) => Resolved::Rejected(reason),
                Poll::Ready(Err(_)) => Resolved::Dropped,
            },
            None => this.ready.take().unwrap_or(Resolved::Dropped),
        };
        Poll::Ready((this.pkid, this.qos, resolved))
    }
}

/// What a resolved ack gives the session: packet id, QoS, outcome.
pub(super) type Done = (u16, u8, Resolved);

/// A session's acks in the order its PUBLISHes came. PUBACKs leave in that order (MQTT-4.6.0),
/// so only the oldest is ever waited on: a later one that resolves first waits its turn
/// anyway. A queue polled at its front costs nothing per ack beyond the ack's own channel;
/// `FuturesOrdered` would allocate a task per ack and wake it, plus keep a heap to reorder.
#[derive(Default)]
pub(super) struct AckQueue(VecDeque<AckWait>);

impl AckQueue {
    pub(super) fn push_back(&mut self, wait: AckWait) {
        self.0.push_back(wait);
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The oldest ack, once it resolves; never while the queue is empty.
    pub(super) fn next(&mut self) -> impl Future<Output = Done> + '_ {
        std::future::poll_fn(move |cx| self.poll_front(cx))
    }

    /// The oldest ack if it has resolved already.
    pub(super) fn ready(&mut self) -> Option<Done> {
        self.next().now_or_never()
    }

    fn poll_front(&mut self, cx: &mut Context<'_>) -> Poll<Done> {
        let Some(front) = self.0.front_mut() else {
            return Poll::Pending;
        };
        let done = std::task::ready!(Pin::new(front).poll(cx));
        self.0.pop_front();
        Poll::Ready(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::Ack;

    #[tokio::test]
    async fn acks_come_out_in_arrival_order_whatever_order_they_resolve_in() {
        let mut queue = AckQueue::default();
        let (first, first_rx) = Ack::channel();
        let (second, second_rx) = Ack::channel();
        queue.push_back(AckWait::waiting(1, 1, first_rx));
        queue.push_back(AckWait::ready(2, 2, Resolved::Duplicate));
        queue.push_back(AckWait::waiting(3, 1, second_rx));
        assert!(queue.ready().is_none(), "nothing resolved yet");
        second.commit();
        assert!(queue.ready().is_none(), "the third waits for the first");
        first.reject("disk full");
        let (pkid, qos, resolved) = queue.next().await;
        assert_eq!((pkid, qos), (1, 1));
        assert!(matches!(resolved, Resolved::Rejected(r) if r == "disk full"));
        assert!(matches!(queue.ready(), Some((2, 2, Resolved::Duplicate))));
        assert!(matches!(queue.ready(), Some((3, 1, Resolved::Committed))));
        assert!(queue.is_empty() && queue.ready().is_none());
    }
}
