//! Joins ingest -> rules -> store and sends acks back after the commit.
//!
//! ```text
//! ingest --(bounded, one queue per worker, chosen by device)--> rule worker threads
//!     --> CommitSink::submit (the messages waiting, together; enqueued in order,
//!         group-committed by the store's writer)
//!     --(bounded)--> acker task: awaits each commit, then resolves the devices' acks
//! ```
//!
//! A worker is a plain thread (Wasm calls never run on the async reactors) with its own rule
//! instances. Messages of one device always go to the same worker, and a worker submits its
//! outputs in arrival order, so per-device order is kept from MQTT to the queue. Every queue
//! between stages is bounded: when the disk is slow, workers block on submit, their queues fill,
//! ingest stops reading, and the device (or broker) buffers.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use tokio::sync::mpsc;

use crate::ids::IdGenerator;
use crate::ingest::{Ack, IngestSink, Ingested};
use crate::rules::{
    Action, Evaluation, MessageContext, Outcome, RuleCounters, RuleEngine, RuleFailure, Target,
};
use crate::store::Attributes;
use crate::topic::device_from_topic;

/// One output of one device message: a publish to a sluice topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The sluice topic.
    pub topic: String,
    /// The body.
    pub body: Bytes,
    /// Where it came from: source topic, device, rule, message id, ingest time.
    pub attributes: Attributes,
}

/// Why a unit of outputs was not committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// A forward named a topic that does not exist (deleted after the rule was created).
    #[error("topic `{0}` does not exist")]
    TopicMissing(String),
    /// The store refused an output for good (too large, bad attributes): resending the device
    /// message would fail the same way, so that rule's output is dropped and counted.
    #[error("output refused: {0}")]
    Refused(String),
    /// The store could not commit (disk full, shutting down, ...): the device must resend.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Where outputs are made durable. `submit` must enqueue the units before it returns (so units
/// commit in submission order); the future resolves after the commit. The units are borrowed:
/// the pipeline keeps them until then, to resend what a refusal leaves.
pub trait CommitSink: Send + Sync + 'static {
    /// Commits each unit (every output of one device message) atomically on its own, and
    /// answers one result per unit, in order.
    fn submit(&self, units: &[Vec<Output>]) -> BoxFuture<'static, Vec<Result<(), CommitError>>>;
}

/// Where republish decisions go: the embedded listener's sessions or the external broker.
pub trait Republisher: Send + Sync + 'static {
    /// Publishes to MQTT subscribers of `topic`.
    fn republish(&self, topic: &str, payload: Bytes, qos: u8);
}

/// Pipeline sizing.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Rule worker threads.
    pub workers: usize,
    /// Depth of each bounded queue between stages.
    pub queue_depth: usize,
}

/// 1,024 messages per stage: enough to keep group commits full, small enough to bound memory.
pub const DEFAULT_QUEUE_DEPTH: usize = 1024;

/// One event seen by the console's live tail: a device message as it entered the rules, or a
/// rule's forward decision.
#[derive(Debug, Clone)]
pub enum TapEvent {
    /// A device message handed to the rules.
    Ingested {
        /// Its MQTT topic.
        topic: String,
        /// Its payload.
        payload: Bytes,
        /// Ingest time, ms since the epoch.
        at_ms: u64,
    },
    /// A rule's forward to a sluice topic (before its commit).
    Output {
        /// The rule.
        rule: String,
        /// The sluice topic.
        topic: String,
        /// The payload.
        payload: Bytes,
        /// Ingest time of the source message, ms since the epoch.
        at_ms: u64,
    },
}

/// 256 events: a live tail that falls further behind than this skips ahead (it is a view, not
/// a delivery path), so a slow browser never holds up the pipeline.
pub const TAP_CAPACITY: usize = 256;

/// A lossy broadcast of [`TapEvent`]s for live views. Sending costs one atomic load when nobody
/// watches (the broadcast's own receiver count sits behind a mutex, so watchers are counted
/// here).
#[derive(Debug, Clone)]
pub struct Tap {
    sender: tokio::sync::broadcast::Sender<TapEvent>,
    closed: tokio_util::sync::CancellationToken,
    watchers: Arc<AtomicUsize>,
}

impl Default for Tap {
    fn default() -> Self {
        Tap {
            sender: tokio::sync::broadcast::channel(TAP_CAPACITY).0,
            closed: tokio_util::sync::CancellationToken::new(),
            watchers: Arc::default(),
        }
    }
}

/// One watcher of a [`Tap`]; it stops counting as a watcher when dropped.
#[derive(Debug)]
pub struct TapWatch {
    events: tokio::sync::broadcast::Receiver<TapEvent>,
    watchers: Arc<AtomicUsize>,
}

impl TapWatch {
    /// The next event; `Lagged(n)` when this watcher fell `n` events behind.
    pub async fn recv(&mut self) -> Result<TapEvent, tokio::sync::broadcast::error::RecvError> {
        self.events.recv().await
    }
}

impl Drop for TapWatch {
    fn drop(&mut self) {
        self.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Tap {
    /// Cancelled when the pipeline has finished (shutdown): live views end then, so the HTTP
    /// server's graceful shutdown does not wait on an open tail.
    pub fn closed(&self) -> tokio_util::sync::CancellationToken {
        self.closed.clone()
    }

    /// A new watcher, seeing events from now on.
    pub fn subscribe(&self) -> TapWatch {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        TapWatch {
            events: self.sender.subscribe(),
            watchers: self.watchers.clone(),
        }
    }

    /// True when someone watches (build events only then).
    pub fn watched(&self) -> bool {
        self.watchers.load(Ordering::Relaxed) > 0
    }

    fn send(&self, event: TapEvent) {
        let _ = self.sender.send(event);
    }
}

/// Pipeline-wide counters, for `/metrics` and the bench.
#[derive(Debug, Default)]
pub struct PipelineCounters {
    /// Live view of messages and rule outputs, for the console's tail.
    pub tap: Tap,
    /// Messages handed over by ingest.
    pub messages_in: AtomicU64,
    /// Messages acknowledged after their outputs committed (or with nothing to commit).
    pub acked: AtomicU64,
    /// Messages whose commit failed (the device resends).
    pub rejected: AtomicU64,
    /// Outputs committed to topics.
    pub outputs_committed: AtomicU64,
    /// Messages no running rule matched.
    pub unmatched: AtomicU64,
    /// Rule outputs the store refused for good (unknown topic, too large).
    pub outputs_refused: AtomicU64,
}

/// The running pipeline. Dropping every clone of [`Pipeline::sink`] and awaiting
/// [`Pipeline::finish`] drains it: every message handed over is acked or rejected.
pub struct Pipeline {
    sink: IngestSink,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    counters: Arc<PipelineCounters>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("workers", &self.threads.len())
            .finish()
    }
}

/// Device messages whose outputs a worker submitted together, waiting for their commit.
struct Pending {
    commit: BoxFuture<'static, Vec<Result<(), CommitError>>>,
    /// Each message's outputs as submitted (kept to resend what a refusal leaves).
    units: Vec<Vec<Output>>,
    /// Each message's ack and counts, in the order of `units`.
    messages: Vec<Submitted>,
}

/// What settling one submitted device message needs besides its outputs.
struct Submitted {
    ack: Ack,
    rules: Vec<(Arc<RuleCounters>, u64)>,
}

/// Most device messages a worker takes from its queue at a time; their outputs go to the store
/// as one submission. A submission and its answer per message cost the rule threads, the writer
/// and the acker more than the rows did.
const MAX_MESSAGES_PER_SUBMIT: usize = 32;

impl Pipeline {
    /// Starts the worker threads and their ackers on the current runtime.
    pub fn start(
        config: PipelineConfig,
        rules: Arc<RuleEngine>,
        commits: Arc<dyn CommitSink>,
        republisher: Arc<dyn Republisher>,
        ids: Arc<IdGenerator>,
    ) -> Pipeline {
        let depth = config.queue_depth.max(1);
        let counters = Arc::new(PipelineCounters::default());
        let mut worker_txs = Vec::new();
        let mut tasks = Vec::new();
        let mut threads = Vec::new();
        for i in 0..config.workers.max(1) {
            let (tx, rx) = mpsc::channel::<Ingested>(depth);
            let (ack_tx, ack_rx) = mpsc::channel::<Pending>(depth);
            worker_txs.push(tx);
            tasks.push(tokio::spawn(tokio::task::unconstrained(acker(
                ack_rx,
                commits.clone(),
                counters.clone(),
            ))));
            let worker = Worker {
                runtime: tokio::runtime::Handle::current(),
                rules: rules.worker(),
                commits: commits.clone(),
                republisher: republisher.clone(),
                ids: ids.clone(),
                counters: counters.clone(),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("sluice-rule-{i}"))
                    .spawn(move || worker.run(rx, ack_tx))
                    .expect("spawn rule worker thread"),
            );
        }
        Pipeline {
            sink: IngestSink::sharded(worker_txs, shard),
            tasks,
            threads,
            counters,
        }
    }

    /// Where ingest hands messages over.
    pub fn sink(&self) -> IngestSink {
        self.sink.clone()
    }

    /// The pipeline's counters.
    pub fn counters(&self) -> Arc<PipelineCounters> {
        self.counters.clone()
    }

    /// Waits until every message handed over has been acked or rejected. Call after ingest has
    /// stopped (every other clone of the sink is dropped).
    pub async fn finish(self) {
        self.counters.tap.closed.cancel();
        drop(self.sink);
        for task in self.tasks.into_iter().rev() {
            let _ = task.await;
        }
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// Same device, same worker: per-device order.
fn shard(item: &Ingested, n: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match &item.message.identity {
        Some(id) => (&id.product_key, &id.device_name).hash(&mut h),
        None => {
            let (pk, dn) = device_from_topic(&item.message.topic);
            (pk, dn).hash(&mut h)
        }
    }
    (h.finish() % n as u64) as usize
}

struct Worker {
    /// Drives the wait for messages or a rule change (the worker is a plain thread).
    runtime: tokio::runtime::Handle,
    rules: crate::rules::RuleWorker,
    commits: Arc<dyn CommitSink>,
    republisher: Arc<dyn Republisher>,
    ids: Arc<IdGenerator>,
    counters: Arc<PipelineCounters>,
}

impl Worker {
    /// Takes what waits in the queue (the first message blocking, never waiting for more), runs
    /// the rules on each message in order, and submits their outputs together.
    fn run(mut self, mut rx: mpsc::Receiver<Ingested>, acks: mpsc::Sender<Pending>) {
        let mut taken = Vec::with_capacity(MAX_MESSAGES_PER_SUBMIT);
        while self.receive(&mut rx, &mut taken) > 0 {
            self.counters
                .messages_in
                .fetch_add(taken.len() as u64, Ordering::Relaxed);
            let mut units = Vec::with_capacity(taken.len());
            let mut messages = Vec::with_capacity(taken.len());
            for item in taken.drain(..) {
                if let Some((unit, submitted)) = self.handle(item) {
                    units.push(unit);
                    messages.push(submitted);
                }
            }
            if units.is_empty() {
                continue;
            }
            let commit = self.commits.submit(&units);
            let pending = Pending {
                commit,
                units,
                messages,
            };
            if let Err(mpsc::error::SendError(p)) = acks.blocking_send(pending) {
                for m in p.messages {
                    m.ack.reject("sluice is shutting down");
                }
            }
        }
    }

    /// Waits for messages and takes what waits (0: the channel closed). A rule change while it
    /// waits makes it drop the instances of replaced, stopped and deleted rules there and then,
    /// so their memory does not stay until this worker's next message.
    fn receive(&mut self, rx: &mut mpsc::Receiver<Ingested>, taken: &mut Vec<Ingested>) -> usize {
        loop {
            let rules = &mut self.rules;
            let got = self.runtime.block_on(async {
                tokio::select! {
                    biased;
                    n = rx.recv_many(taken, MAX_MESSAGES_PER_SUBMIT) => Some(n),
                    () = rules.changed() => None,
                }
            });
            match got {
                Some(n) => return n,
                None => self.rules.refresh(),
            }
        }
    }

    /// Runs the rules on one message; returns its outputs to commit, or acks at once when
    /// there is nothing to commit.
    fn handle(&mut self, item: Ingested) -> Option<(Vec<Output>, Submitted)> {
        let Ingested { message, ack } = item;
        let id = self.ids.next().to_string();
        let (pk, dn) = match &message.identity {
            Some(identity) => (identity.product_key.as_str(), identity.device_name.as_str()),
            None => device_from_topic(&message.topic),
        };
        let ctx = MessageContext {
            topic: &message.topic,
            payload: &message.payload,
            message_id: &id,
            product_key: pk,
            device_name: dn,
            timestamp_ms: message.received_at_ms as i64,
        };
        let tap = &self.counters.tap;
        if tap.watched() {
            tap.send(TapEvent::Ingested {
                topic: message.topic.clone(),
                payload: message.payload.clone(),
                at_ms: message.received_at_ms,
            });
        }
        let evaluations = self.rules.evaluate(&ctx);
        if evaluations.is_empty() {
            self.counters.unmatched.fetch_add(1, Ordering::Relaxed);
        }
        let mut unit = Vec::new();
        let mut rules = Vec::new();
        for evaluation in evaluations {
            let before = unit.len();
            self.apply(&ctx, evaluation, &mut unit, &mut rules, before);
        }
        if unit.is_empty() {
            self.counters.acked.fetch_add(1, Ordering::Relaxed);
            ack.commit();
            return None;
        }
        Some((unit, Submitted { ack, rules }))
    }

    fn apply(
        &self,
        ctx: &MessageContext<'_>,
        evaluation: Evaluation,
        unit: &mut Vec<Output>,
        rules: &mut Vec<(Arc<RuleCounters>, u64)>,
        before: usize,
    ) {
        let Evaluation {
            rule,
            result,
            error_action,
            counters,
        } = evaluation;
        match result {
            Ok(Outcome::Emitted(decisions)) => {
                let mut republished = 0;
                let tap = &self.counters.tap;
                for decision in decisions {
                    match decision.target {
                        Target::Forward(topic) => {
                            let body = Bytes::from(decision.payload);
                            if tap.watched() {
                                tap.send(TapEvent::Output {
                                    rule: rule.to_string(),
                                    topic: topic.clone(),
                                    payload: body.clone(),
                                    at_ms: ctx.timestamp_ms as u64,
                                });
                            }
                            if let Some(attributes) = self.attributes(ctx, &rule) {
                                unit.push(Output {
                                    topic,
                                    body,
                                    attributes,
                                });
                            }
                        }
                        Target::Republish { topic, qos } => {
                            republished += 1;
                            self.republisher
                                .republish(&topic, Bytes::from(decision.payload), qos)
                        }
                        // Only `rule eval` binds rules without actions.
                        Target::Output => {}
                    }
                }
                counters.outputs.fetch_add(republished, Ordering::Relaxed);
                let forwarded = (unit.len() - before) as u64;
                if forwarded > 0 {
                    rules.push((counters, forwarded));
                }
            }
            Ok(Outcome::Dropped) => {}
            Err(failure) => {
                let Some(action) = error_action else {
                    return;
                };
                let report = Bytes::from(error_report(ctx, &rule, &failure));
                // The report takes the path of a decision to the same action: a forward is
                // committed with the message's other outputs, a republish goes to the MQTT
                // subscribers of its topic.
                match action {
                    Action::Forward { topic } => {
                        if let Some(attributes) = self.attributes(ctx, &rule) {
                            unit.push(Output {
                                topic,
                                body: report,
                                attributes,
                            });
                        }
                    }
                    Action::Republish { topic, qos } => {
                        self.republisher.republish(&topic, report, qos)
                    }
                }
            }
        }
    }

    /// An output's attributes. Their values come from the device (its topic), so they can fail
    /// the store's checks (a CR or LF in a topic): that output is refused and counted, as the
    /// store refuses an output for good, and the device message is still acked.
    fn attributes(&self, ctx: &MessageContext<'_>, rule: &str) -> Option<Attributes> {
        let ingest_time_ms = ctx.timestamp_ms.to_string();
        match Attributes::from_pairs(&[
            ("device_name", ctx.device_name),
            ("ingest_time_ms", &ingest_time_ms),
            ("product_key", ctx.product_key),
            ("rule", rule),
            ("source_message_id", ctx.message_id),
            ("source_topic", ctx.topic),
        ]) {
            Ok(attributes) => Some(attributes),
            Err(e) => {
                tracing::warn!(rule, topic = ctx.topic, "a rule output was refused ({e})");
                self.counters
                    .outputs_refused
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// The error action's payload (docs/rule-sql.md, "Actions and the error action").
fn error_report(ctx: &MessageContext<'_>, rule: &str, failure: &RuleFailure) -> String {
    serde_json::json!({
        "ruleName": rule,
        "topic": ctx.topic,
        "productKey": ctx.product_key,
        "deviceName": ctx.device_name,
        "messageId": ctx.message_id,
        "base64OriginalPayload": base64::engine::general_purpose::STANDARD.encode(ctx.payload),
        "failures": [{
            "actionType": "RULE",
            "actionResource": rule,
            "errorMessage": failure.to_string(),
        }],
    })
    .to_string()
}

/// Submits again from the acker task: the blocking submit must not run on a reactor thread.
async fn resubmit(commits: &Arc<dyn CommitSink>, unit: Vec<Output>) -> Result<(), CommitError> {
    let commits = commits.clone();
    match tokio::task::spawn_blocking(move || commits.submit(&[unit])).await {
        Ok(commit) => commit
            .await
            .pop()
            .unwrap_or_else(|| Err(CommitError::Unavailable("the store gave no answer".into()))),
        Err(e) => Err(CommitError::Unavailable(e.to_string())),
    }
}

/// At most this many settled messages are acked together (one pass over the sessions).
const ACK_BATCH: usize = 4096;

/// Awaits each worker's commits in order and resolves the devices' acks, a commit's worth at a
/// time: every message whose commit has already finished is settled first and acked after, in
/// one tight loop. A session then finds all its acks of that commit ready at once and sends
/// them in one write; acking as each commit future was polled let a session wake (and write)
/// once or twice per commit, and a PUBACK system call cost more than the rest of the ack path.
/// The task runs unconstrained by tokio's cooperative budget (see `Pipeline::start`), so that
/// budget does not cut a commit's acks into slices of 128 either.
async fn acker(
    mut rx: mpsc::Receiver<Pending>,
    commits: Arc<dyn CommitSink>,
    counters: Arc<PipelineCounters>,
) {
    let mut settled = Vec::new();
    let mut next = None;
    loop {
        let Some(mut pending) = (match next.take() {
            Some(p) => Some(p),
            None => rx.recv().await,
        }) else {
            break;
        };
        let results = (&mut pending.commit).await;
        settle_all(pending, results, &commits, &counters, &mut settled).await;
        while settled.len() < ACK_BATCH {
            let Ok(mut pending) = rx.try_recv() else {
                break;
            };
            match (&mut pending.commit).now_or_never() {
                Some(results) => {
                    settle_all(pending, results, &commits, &counters, &mut settled).await
                }
                None => {
                    next = Some(pending);
                    break;
                }
            }
        }
        for (ack, result) in settled.drain(..) {
            match result {
                Ok(()) => ack.commit(),
                Err(e) => ack.reject(e.to_string()),
            }
        }
    }
}

/// Settles each message of a submission with its result (see [`settle`]) into `settled`.
async fn settle_all(
    pending: Pending,
    results: Vec<Result<(), CommitError>>,
    commits: &Arc<dyn CommitSink>,
    counters: &PipelineCounters,
    settled: &mut Vec<(Ack, Result<(), CommitError>)>,
) {
    let mut results = results.into_iter();
    for (unit, message) in pending.units.into_iter().zip(pending.messages) {
        let result = results.next().unwrap_or_else(|| {
            Err(CommitError::Unavailable(
                "the store gave no answer for this message".into(),
            ))
        });
        settled.push(match result {
            // The common case, without the resend machinery's future.
            Ok(()) => {
                count(unit.len(), &message.rules, &result, counters);
                (message.ack, result)
            }
            Err(_) => settle(unit, message, result, commits, counters).await,
        });
    }
}

/// Finishes one message's commit: drops the outputs the store cannot take (a deleted topic, a
/// refusal for good) and commits the rest again, counts, and says how to ack the device.
async fn settle(
    mut unit: Vec<Output>,
    message: Submitted,
    mut result: Result<(), CommitError>,
    commits: &Arc<dyn CommitSink>,
    counters: &PipelineCounters,
) -> (Ack, Result<(), CommitError>) {
    // A forward to a deleted topic fails that output only: commit the rest.
    while let Err(CommitError::TopicMissing(topic)) = &result {
        tracing::warn!(topic = %topic, "a rule forwarded to a topic that does not exist; output dropped");
        counters.outputs_refused.fetch_add(1, Ordering::Relaxed);
        let topic = topic.clone();
        unit.retain(|o| o.topic != topic);
        if unit.is_empty() {
            result = Ok(());
            break;
        }
        result = resubmit(commits, unit.clone()).await;
    }
    // Outputs the store refuses for good: find them one by one, commit the others.
    if let Err(CommitError::Refused(why)) = &result {
        tracing::warn!("the store refused a rule output ({why}); checking outputs one by one");
        let mut kept = Vec::new();
        for output in std::mem::take(&mut unit) {
            match resubmit(commits, vec![output.clone()]).await {
                Ok(()) => kept.push(output),
                Err(CommitError::Refused(_) | CommitError::TopicMissing(_)) => {
                    counters.outputs_refused.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if !matches!(result, Err(CommitError::Unavailable(_))) {
            result = Ok(());
        }
        unit = kept;
    }
    count(unit.len(), &message.rules, &result, counters);
    (message.ack, result)
}

/// Counts a settled message: its committed outputs and its ack, or its rejection.
fn count(
    committed: usize,
    rules: &[(Arc<RuleCounters>, u64)],
    result: &Result<(), CommitError>,
    counters: &PipelineCounters,
) {
    match result {
        Ok(()) => {
            for (rule, n) in rules {
                rule.outputs.fetch_add(*n, Ordering::Relaxed);
            }
            counters
                .outputs_committed
                .fetch_add(committed as u64, Ordering::Relaxed);
            counters.acked.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            counters.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("commit failed, the device will resend: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stages the pipeline joins do not depend on it: nothing under rules/, ingest/ or
    /// store/ names `crate::pipeline`.
    #[test]
    fn the_stages_do_not_import_the_pipeline() {
        fn visit(dir: &std::path::Path, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    visit(&path, found);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && std::fs::read_to_string(&path)
                        .unwrap()
                        .contains("crate::pipeline")
                {
                    found.push(path.display().to_string());
                }
            }
        }
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        for stage in ["rules", "ingest", "store"] {
            visit(&src.join(stage), &mut found);
        }
        assert!(found.is_empty(), "{found:?} import the pipeline");
    }

    #[tokio::test]
    async fn the_tap_counts_its_watchers_and_delivers_while_watched() {
        let tap = Tap::default();
        assert!(!tap.watched());
        let mut a = tap.subscribe();
        let b = tap.subscribe();
        assert!(tap.watched());
        tap.send(TapEvent::Ingested {
            topic: "t".into(),
            payload: Bytes::from_static(b"{}"),
            at_ms: 1,
        });
        assert!(matches!(
            a.recv().await,
            Ok(TapEvent::Ingested { at_ms: 1, .. })
        ));
        drop(b);
        assert!(tap.watched());
        drop(a);
        assert!(!tap.watched(), "a dropped watcher stops counting");
    }
}
