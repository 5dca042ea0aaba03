//! Synchronous calls to devices (RRPC): an application server's request goes down to a device and
//! the device's answer comes back in the same HTTP request.
//!
//! The caller registers the topic the answer will arrive on, publishes the request and waits. A
//! device publish to a registered topic resolves the wait instead of going to the rules. The
//! topic names the device (`/sys/{pk}/{dn}/rrpc/response/{id}`, or the request's own
//! `/ext/rrpc/{id}/{pk}/{dn}/...` topic), and the device policy lets only that device publish
//! there, so no other device can answer in its place.
//!
//! Waits are bounded: at most [`Calls::max_waiting`] at once (past it a call is refused and
//! counted), each for at most the caller's timeout. A wait that ends, answered or not, removes
//! its entry (the [`Waiting`] guard), so a late answer goes to the rules like any message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::counters::{bump, IngestCounters};

/// Default most calls waiting for an answer at once.
pub const DEFAULT_MAX_WAITING_CALLS: usize = 1024;

/// The calls waiting for an answer, by the topic the answer arrives on.
#[derive(Debug)]
pub(crate) struct Calls {
    waiting: Mutex<HashMap<Arc<str>, oneshot::Sender<Bytes>>>,
    /// How many entries `waiting` holds: every device publish asks, and with no call waiting
    /// (nearly always) the answer must not cost a shared lock.
    count: AtomicUsize,
    max_waiting: usize,
    counters: Arc<IngestCounters>,
}

/// Why a call could not start waiting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallRefused {
    /// As many calls as allowed are waiting already.
    #[error("{0} synchronous calls are waiting for answers already; try again when some finish")]
    TooMany(usize),
    /// A call waits on this answer topic already (an id used twice).
    #[error("a call already waits for an answer on `{0}`")]
    Duplicate(String),
}

/// A registered wait; dropping it unregisters the topic.
#[derive(Debug)]
pub struct Waiting {
    calls: Arc<Calls>,
    topic: Arc<str>,
    rx: Option<oneshot::Receiver<Bytes>>,
}

impl Calls {
    pub(crate) fn new(max_waiting: usize, counters: Arc<IngestCounters>) -> Calls {
        Calls {
            waiting: Mutex::new(HashMap::new()),
            count: AtomicUsize::new(0),
            max_waiting,
            counters,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, oneshot::Sender<Bytes>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a wait for a device publish on `answer_topic`.
    pub(crate) fn expect(self: &Arc<Self>, answer_topic: &str) -> Result<Waiting, CallRefused> {
        let mut waiting = self.lock();
        if waiting.len() >= self.max_waiting {
            bump(&self.counters.rrpc_refused_total);
            return Err(CallRefused::TooMany(self.max_waiting));
        }
        if waiting.contains_key(answer_topic) {
            return Err(CallRefused::Duplicate(answer_topic.to_owned()));
        }
        let topic: Arc<str> = Arc::from(answer_topic);
        let (tx, rx) = oneshot::channel();
        waiting.insert(topic.clone(), tx);
        self.count.store(waiting.len(), Ordering::Release);
        bump(&self.counters.rrpc_calls_total);
        Ok(Waiting {
            calls: self.clone(),
            topic,
            rx: Some(rx),
        })
    }

    /// A device published `payload` to `topic`: true when a call was waiting for it (and now has
    /// its answer), false when the message is an ordinary one.
    pub(crate) fn answer(&self, topic: &str, payload: &Bytes) -> bool {
        // The request was published after its entry was counted, and the device answered
        // after it received the request, so a waiting call is seen here.
        if self.count.load(Ordering::Acquire) == 0 {
            return false;
        }
        let tx = {
            let mut waiting = self.lock();
            let tx = waiting.remove(topic);
            self.count.store(waiting.len(), Ordering::Release);
            tx
        };
        match tx {
            Some(tx) => {
                bump(&self.counters.rrpc_answered_total);
                // The caller may have given up this instant; then the answer is simply late.
                let _ = tx.send(payload.clone());
                true
            }
            None => false,
        }
    }

    /// Calls waiting now (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.lock().len()
    }
}

impl Waiting {
    /// The device's answer, or `None` when none came within `timeout` (counted).
    pub async fn answer(mut self, timeout: std::time::Duration) -> Option<Bytes> {
        let rx = self.rx.take()?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(payload)) => Some(payload),
            _ => {
                bump(&self.calls.counters.rrpc_timeouts_total);
                None
            }
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut waiting = self.calls.lock();
        waiting.remove(&self.topic);
        self.calls.count.store(waiting.len(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn calls(max: usize) -> (Arc<Calls>, Arc<IngestCounters>) {
        let counters = Arc::new(IngestCounters::default());
        (Arc::new(Calls::new(max, counters.clone())), counters)
    }

    #[tokio::test]
    async fn an_answer_on_the_registered_topic_resolves_the_wait_once() {
        let (calls, counters) = calls(4);
        let wait = calls.expect("/sys/pk/dn/rrpc/response/1").unwrap();
        assert!(!calls.answer("/sys/pk/dn/rrpc/response/2", &Bytes::new()));
        assert!(calls.answer("/sys/pk/dn/rrpc/response/1", &Bytes::from_static(b"ok")));
        assert!(
            !calls.answer("/sys/pk/dn/rrpc/response/1", &Bytes::new()),
            "a second answer is an ordinary message"
        );
        let got = wait.answer(Duration::from_secs(1)).await;
        assert_eq!(got.as_deref(), Some(&b"ok"[..]));
        assert_eq!(calls.waiting(), 0);
        let c = counters.snapshot();
        assert_eq!((c.rrpc_calls_total, c.rrpc_answered_total), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_its_timeout_and_unregisters() {
        let (calls, counters) = calls(4);
        let wait = calls.expect("t/1").unwrap();
        assert_eq!(wait.answer(Duration::from_secs(5)).await, None);
        assert_eq!(calls.waiting(), 0, "the guard removed the entry");
        assert!(
            !calls.answer("t/1", &Bytes::new()),
            "late answers are ordinary"
        );
        assert_eq!(counters.snapshot().rrpc_timeouts_total, 1);
    }

    #[test]
    fn waits_are_capped_and_ids_unique() {
        let (calls, counters) = calls(2);
        let a = calls.expect("a").unwrap();
        assert_eq!(
            calls.expect("a").unwrap_err(),
            CallRefused::Duplicate("a".into())
        );
        let _b = calls.expect("b").unwrap();
        assert_eq!(calls.expect("c").unwrap_err(), CallRefused::TooMany(2));
        assert_eq!(counters.snapshot().rrpc_refused_total, 1);
        drop(a);
        assert!(calls.expect("c").is_ok(), "a finished wait makes room");
    }
}
