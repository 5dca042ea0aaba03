//! The ack of one QoS 1/2 publish as the session waits for it in its ordered queue.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

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
    type Output = (u16, u8, Resolved);

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
