//! Requests to the writer, each with an answer channel of its own type.
//!
//! A request is the work to do on the writer thread (a closure over the [`Writer`]) and the
//! channel its result goes back on. The result is held until the batch commits (or fails with
//! the commit); the type of each answer is fixed where the request is made, so no caller ever
//! unpacks a general reply and checks at run time that it got the kind it asked for.

use tokio::sync::oneshot;

use super::{Received, Writer};
use crate::store::error::StoreError;
use crate::store::Result;

/// Where one request's answer goes.
pub(crate) type Answer<T> = oneshot::Sender<Result<T>>;

/// When a request's answer is sent. Only what acknowledges something stored waits for the
/// fsync; were a commit lost to a power cut, what was answered at it would simply happen again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    /// After the commit is on disk (at FULL): publishes, sends, deletes, changes.
    Durable,
    /// At the commit: a push worker's cycle (its outcomes and claims are sluice's own
    /// bookkeeping; a lost cycle means a message pushed once more).
    Internal,
}

/// How a request runs inside the batch's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isolation {
    /// Inside a SAVEPOINT of its own: a failure rolls back only this request, on disk and in
    /// the index. Catalog changes, sends, visibility changes, push bookkeeping.
    Savepoint,
    /// Without one: reads, and writes that are whole or nothing by themselves or open their own
    /// savepoint when they need one (publishes, deletes).
    Direct,
}

/// A request on its way to the writer.
pub(crate) enum Request {
    /// Work on the writer with a typed answer.
    Job(Box<dyn Job>),
    /// A claim of up to `max` messages of `queue`, answered at the commit; when its requester
    /// went away by then, the messages are given back.
    Receive {
        queue: String,
        max: usize,
        answer: Answer<Received>,
    },
    /// Finish the queued requests, close, then answer.
    Shutdown(Answer<()>),
}

impl Request {
    /// A request that runs `work` inside a savepoint and answers after the commit is durable.
    pub(crate) fn write<T, F>(work: F) -> (Request, oneshot::Receiver<Result<T>>)
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer) -> Result<T> + Send + 'static,
    {
        Request::job(Isolation::Savepoint, When::Durable, 1, work)
    }

    /// A request that runs `work` without a savepoint of its own and answers after the commit is
    /// durable.
    pub(crate) fn direct<T, F>(work: F) -> (Request, oneshot::Receiver<Result<T>>)
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer) -> Result<T> + Send + 'static,
    {
        Request::job(Isolation::Direct, When::Durable, 1, work)
    }

    /// The general form: `units` is what the request counts for in a batch's share of rule
    /// outputs (its number of device messages; 1 for everything else).
    pub(crate) fn job<T, F>(
        isolation: Isolation,
        when: When,
        units: usize,
        work: F,
    ) -> (Request, oneshot::Receiver<Result<T>>)
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer) -> Result<T> + Send + 'static,
    {
        let (answer, rx) = oneshot::channel();
        let job = Call {
            answer,
            work,
            isolation,
            when,
            units,
        };
        (Request::Job(Box::new(job)), rx)
    }

    /// What the request counts for against the batch's share of rule outputs.
    pub(crate) fn units(&self) -> usize {
        match self {
            Request::Job(job) => job.units(),
            _ => 1,
        }
    }

    /// Answers the request with `e` without running it.
    pub(crate) fn refuse(self, e: StoreError) {
        match self {
            Request::Job(job) => job.refuse(e),
            Request::Receive { answer, .. } => {
                let _ = answer.send(Err(e));
            }
            Request::Shutdown(answer) => {
                let _ = answer.send(Err(e));
            }
        }
    }
}

/// Work for the writer whose answer type is known only to itself.
pub(crate) trait Job: Send {
    /// How it runs in the transaction.
    fn isolation(&self) -> Isolation;
    /// When its answer is sent.
    fn when(&self) -> When;
    /// What it counts for in a batch's share of rule outputs.
    fn units(&self) -> usize;
    /// Runs it; the answer is held until the commit. `Err` only when the work failed (the held
    /// answer carries the error too), for the batch to see whether SQLite ended it.
    fn run(self: Box<Self>, writer: &mut Writer) -> (Box<dyn Held>, Option<StoreError>);
    /// Answers with `e` instead of running.
    fn refuse(self: Box<Self>, e: StoreError);
}

/// An answer computed in the open transaction, waiting for its commit.
pub(crate) trait Held: Send {
    /// Sends the answer, or `failed` (the commit's or the fsync's error) in its place when the
    /// answer was a success.
    fn send(self: Box<Self>, failed: Option<&StoreError>);
}

struct Call<T, F> {
    answer: Answer<T>,
    work: F,
    isolation: Isolation,
    when: When,
    units: usize,
}

impl<T, F> Job for Call<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut Writer) -> Result<T> + Send + 'static,
{
    fn isolation(&self) -> Isolation {
        self.isolation
    }

    fn when(&self) -> When {
        self.when
    }

    fn units(&self) -> usize {
        self.units
    }

    fn run(self: Box<Self>, writer: &mut Writer) -> (Box<dyn Held>, Option<StoreError>) {
        let Call { answer, work, .. } = *self;
        let result = work(writer).map_err(|e| writer.classify(e));
        let error = result.as_ref().err().map(StoreError::duplicate);
        (Box::new(Pending { answer, result }), error)
    }

    fn refuse(self: Box<Self>, e: StoreError) {
        let _ = self.answer.send(Err(e));
    }
}

/// A typed answer and its channel.
pub(crate) struct Pending<T> {
    pub answer: Answer<T>,
    pub result: Result<T>,
}

impl<T: Send> Held for Pending<T> {
    fn send(self: Box<Self>, failed: Option<&StoreError>) {
        let result = match failed {
            Some(e) => self.result.and(Err(e.duplicate())),
            None => self.result,
        };
        let _ = self.answer.send(result);
    }
}

/// An answer that fails with `error` whatever it held (its request was rolled back).
pub(crate) struct Failed {
    held: Box<dyn Held>,
    error: StoreError,
}

impl Failed {
    pub(crate) fn wrap(held: Box<dyn Held>, error: StoreError) -> Box<dyn Held> {
        Box::new(Failed { held, error })
    }
}

impl Held for Failed {
    fn send(self: Box<Self>, failed: Option<&StoreError>) {
        self.held.send(Some(failed.unwrap_or(&self.error)));
    }
}
