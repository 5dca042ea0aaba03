//! The supervisor and the per-subscription workers (see the module doc of `deliver`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::classify::{classify_failure, classify_status, AttemptFailure, Verdict};
use super::egress::{check_url, EgressDenied, EgressPolicy, GuardedResolver};
use super::schedule::{retry_delay, scaled};
use super::sign::Signer;
use super::signing_keys::ActiveKey;
use super::{format, mns_sign, DeliverConfig, DeliverError, RESPONSE_BODY_CAP};
use crate::store::{
    Clock, NotifyStrategy, PushDelivery, PushOutcome, PushResult, PushSubscription, Store,
    StoreError,
};

/// Wait after a failed store call before trying again.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Longest error text kept per attempt (it ends up in the store and in `sub show`).
const MAX_REASON_CHARS: usize = 300;

struct Running {
    sub: watch::Sender<Arc<PushSubscription>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Keeps one worker per HTTP subscription until `shutdown`.
pub(super) async fn supervise(store: Store, cfg: Arc<DeliverConfig>, shutdown: CancellationToken) {
    let signals = store.push_signals();
    let mut catalog = signals.catalog();
    let mut running: HashMap<i64, Running> = HashMap::new();
    loop {
        catalog.borrow_and_update();
        match store.push_subscriptions().await {
            Ok(subs) => reconcile(&store, &cfg, &mut running, subs),
            Err(StoreError::Closed) => break,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the HTTP subscriptions; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(STORE_RETRY) => continue,
                }
            }
        }
        tokio::select! {
            changed = catalog.changed() => if changed.is_err() { break },
            _ = shutdown.cancelled() => break,
        }
    }
    for r in running.values() {
        r.stop.cancel();
    }
    for (_, r) in running {
        let _ = r.task.await;
    }
}

fn reconcile(
    store: &Store,
    cfg: &Arc<DeliverConfig>,
    running: &mut HashMap<i64, Running>,
    subs: Vec<PushSubscription>,
) {
    let ids: HashSet<i64> = subs.iter().map(|s| s.id).collect();
    running.retain(|id, r| {
        let keep = ids.contains(id);
        if !keep {
            r.stop.cancel();
        }
        keep
    });
    for sub in subs {
        if let Some(r) = running.get(&sub.id) {
            let current = r.sub.borrow().clone();
            if current.push == sub.push {
                if *current != sub {
                    r.sub.send_replace(Arc::new(sub));
                }
                continue;
            }
            // A different endpoint: a new worker (the old one finishes its in-flight pushes).
            r.stop.cancel();
        }
        let client = match build_client(&sub, cfg) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(topic = %sub.topic, subscription = %sub.name, error = %e,
                    "HTTP subscription not pushed");
                continue;
            }
        };
        let id = sub.id;
        let (tx, rx) = watch::channel(Arc::new(sub));
        let stop = CancellationToken::new();
        let worker = Worker {
            store: store.clone(),
            cfg: cfg.clone(),
            sub: rx,
            stop: stop.clone(),
            client,
            notify: store.push_signals().sub(id),
        };
        let task = tokio::spawn(worker.run());
        running.insert(
            id,
            Running {
                sub: tx,
                stop,
                task,
            },
        );
    }
}

fn build_client(
    sub: &PushSubscription,
    cfg: &DeliverConfig,
) -> Result<reqwest::Client, DeliverError> {
    let mut resolver = GuardedResolver::new(cfg.egress.deny_private_networks);
    for (name, ips) in &cfg.resolve_overrides {
        resolver = resolver.with_override(name, ips.clone());
    }
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(resolver))
        .connect_timeout(Duration::from_secs(sub.push.push_timeout_seconds.into()))
        .pool_max_idle_per_host(sub.push.max_concurrency as usize)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|source| DeliverError::Client {
            subscription: sub.name.clone(),
            source,
        })
}

/// The signer of a subscription now: the current secret, plus the old one in its grace period.
fn signer(sub: &PushSubscription, now_ms: u64) -> Result<Signer, DeliverError> {
    let old = sub
        .old_secret
        .as_ref()
        .filter(|o| o.1 > now_ms)
        .map(|o| o.0.as_str());
    Signer::new(std::iter::once(sub.secret.as_str()).chain(old))
}

struct Worker {
    store: Store,
    cfg: Arc<DeliverConfig>,
    sub: watch::Receiver<Arc<PushSubscription>>,
    stop: CancellationToken,
    client: reqwest::Client,
    notify: Arc<tokio::sync::Notify>,
}

type CycleFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<crate::store::PushCycle, StoreError>> + Send>,
>;

impl Worker {
    /// The worker loop. Store round trips run beside the pushes: while one cycle (report +
    /// claim) is on its way, finished pushes are collected and claimed ones keep starting from
    /// a small local queue (up to `max_concurrency` claimed ahead), so the endpoint never
    /// waits for the store.
    async fn run(mut self) {
        let clock = self.store.clock().clone();
        let first = self.sub.borrow().clone();
        let (id, topic, name) = (first.id, first.topic.clone(), first.name.clone());
        let conc = first.push.max_concurrency.max(1) as usize;
        let mut enabled = first.enabled;
        let mut tasks: JoinSet<PushOutcome> = JoinSet::new();
        let mut inflight: HashMap<tokio::task::Id, u64> = HashMap::new();
        let mut ready: std::collections::VecDeque<PushDelivery> = Default::default();
        let mut outcomes: Vec<PushOutcome> = Vec::new();
        let mut next_due: Option<u64> = Some(0);
        let mut cycle: Option<(CycleFuture, Vec<PushOutcome>)> = None;
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut gone = false;
        let mut signer_cache: Option<(Arc<PushSubscription>, Arc<Signer>, u64)> = None;
        tracing::debug!(topic = %topic, subscription = %name, "push worker started");
        loop {
            while let Some(done) = tasks.try_join_next_with_id() {
                finished(done, &mut inflight, &mut outcomes);
            }
            let now = clock.now_ms();
            // Start claimed pushes while there is room.
            if enabled {
                while inflight.len() < conc {
                    let Some(d) = ready.pop_front() else { break };
                    let sub = self.sub.borrow().clone();
                    let signer = match &signer_cache {
                        // Re-derived when the subscription changes and every minute (a
                        // rotated-out secret stops signing when its grace period ends).
                        Some((s, g, at)) if Arc::ptr_eq(s, &sub) && now < at + 60_000 => g.clone(),
                        _ => match signer(&sub, now) {
                            Ok(g) => {
                                let g = Arc::new(g);
                                signer_cache = Some((sub.clone(), g.clone(), now));
                                g
                            }
                            Err(e) => {
                                tracing::error!(topic = %topic, subscription = %name, error = %e,
                                    "cannot sign pushes; they stay pending");
                                outcomes.push(PushOutcome {
                                    seq: d.seq,
                                    result: PushResult::Release,
                                });
                                enabled = false;
                                break;
                            }
                        },
                    };
                    let seq = d.seq;
                    let h = tasks.spawn(attempt(
                        self.client.clone(),
                        sub,
                        signer,
                        d,
                        self.cfg.clone(),
                        clock.clone(),
                    ));
                    inflight.insert(h.id(), seq);
                }
            }
            // One store round trip at a time: report what finished, claim what is due.
            if cycle.is_none() && retry_at.is_none() {
                let room = (2 * conc).saturating_sub(inflight.len() + ready.len());
                let want = if enabled && next_due.is_some_and(|d| d <= now) && ready.len() < conc {
                    room
                } else {
                    0
                };
                if !outcomes.is_empty() || want > 0 {
                    let sent = std::mem::take(&mut outcomes);
                    let store = self.store.clone();
                    let report = sent.clone();
                    cycle = Some((
                        Box::pin(async move { store.push_cycle(id, report, want).await }),
                        sent,
                    ));
                }
            }
            let sleep_for = next_due
                .filter(|_| enabled && cycle.is_none() && retry_at.is_none())
                .map(|d| Duration::from_millis(d.saturating_sub(now)));
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                result = async { (&mut cycle.as_mut().expect("guarded").0).await }, if cycle.is_some() => {
                    let sent = cycle.take().map(|c| c.1).unwrap_or_default();
                    match result {
                        Ok(c) if c.gone => {
                            gone = true;
                            break;
                        }
                        Ok(c) => {
                            enabled = c.enabled;
                            next_due = c.next_due_ms;
                            if !enabled {
                                // Claimed before the disable: give them back untouched.
                                outcomes.extend(ready.drain(..).map(|d| PushOutcome {
                                    seq: d.seq,
                                    result: PushResult::Release,
                                }));
                            }
                            if enabled {
                                ready.extend(c.deliveries);
                            } else {
                                outcomes.extend(c.deliveries.into_iter().map(|d| PushOutcome {
                                    seq: d.seq,
                                    result: PushResult::Release,
                                }));
                            }
                        }
                        Err(StoreError::Closed) => break,
                        Err(e) => {
                            tracing::warn!(topic = %topic, subscription = %name, error = %e,
                                "push bookkeeping failed; retrying");
                            let mut sent = sent;
                            sent.append(&mut outcomes);
                            outcomes = sent;
                            retry_at = Some(tokio::time::Instant::now() + STORE_RETRY);
                        }
                    }
                }
                _ = async { tokio::time::sleep_until(retry_at.expect("guarded")).await }, if retry_at.is_some() => {
                    retry_at = None;
                }
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    finished(done, &mut inflight, &mut outcomes);
                }
                _ = self.notify.notified() => next_due = Some(0),
                changed = self.sub.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    enabled = self.sub.borrow().enabled;
                    next_due = Some(0);
                    if !enabled {
                        // Disabled: claimed pushes not started yet go back untouched.
                        outcomes.extend(ready.drain(..).map(|d| PushOutcome {
                            seq: d.seq,
                            result: PushResult::Release,
                        }));
                    }
                }
                _ = tokio::time::sleep(sleep_for.unwrap_or(Duration::ZERO)), if sleep_for.is_some() => {}
            }
        }
        // Stopping: a cycle on its way still counts (its claims must be released).
        if let Some((fut, sent)) = cycle.take() {
            match fut.await {
                Ok(c) => ready.extend(c.deliveries),
                Err(_) => outcomes.extend(sent),
            }
        }
        // Let pushes in flight finish within the grace period, release the rest.
        let grace = tokio::time::sleep(self.cfg.shutdown_grace);
        tokio::pin!(grace);
        while !tasks.is_empty() {
            tokio::select! {
                Some(done) = tasks.join_next_with_id() => finished(done, &mut inflight, &mut outcomes),
                _ = &mut grace => {
                    tasks.abort_all();
                    break;
                }
            }
        }
        outcomes.extend(
            inflight
                .into_values()
                .chain(ready.into_iter().map(|d| d.seq))
                .map(|seq| PushOutcome {
                    seq,
                    result: PushResult::Release,
                }),
        );
        if !gone && !outcomes.is_empty() {
            if let Err(e) = self.store.push_cycle(id, outcomes, 0).await {
                // Not lost: unreported rows are due again after the restart.
                tracing::debug!(topic = %topic, subscription = %name, error = %e,
                    "outcomes not recorded at stop");
            }
        }
        tracing::debug!(topic = %topic, subscription = %name, "push worker stopped");
    }
}

fn finished(
    done: Result<(tokio::task::Id, PushOutcome), tokio::task::JoinError>,
    inflight: &mut HashMap<tokio::task::Id, u64>,
    outcomes: &mut Vec<PushOutcome>,
) {
    match done {
        Ok((id, o)) => {
            inflight.remove(&id);
            outcomes.push(o);
        }
        Err(e) => {
            // A panicked attempt: the push is released and tried again.
            if let Some(seq) = inflight.remove(&e.id()) {
                tracing::error!(seq, error = %e, "push attempt failed unexpectedly");
                outcomes.push(PushOutcome {
                    seq,
                    result: PushResult::Release,
                });
            }
        }
    }
}

async fn attempt(
    client: reqwest::Client,
    sub: Arc<PushSubscription>,
    signer: Arc<Signer>,
    d: PushDelivery,
    cfg: Arc<DeliverConfig>,
    clock: Arc<dyn Clock>,
) -> PushOutcome {
    let verdict = match mns_key(&sub, &cfg).await {
        Ok(key) => attempt_result(&client, &sub, &signer, key.as_deref(), &d, &cfg.egress).await,
        Err(reason) => Verdict::Retry {
            reason,
            retry_after: None,
        },
    };
    let result = next_result(
        verdict,
        sub.push.strategy,
        d.attempts,
        cfg.retry_scale,
        clock.now_ms(),
        rand::random(),
    );
    match &result {
        PushResult::Delivered => {}
        PushResult::Retry { due_ms, error } => {
            tracing::debug!(topic = %sub.topic, subscription = %sub.name, message_id = %d.message_id,
                attempt = d.attempts + 1, next_attempt_ms = due_ms, error = %error, "push failed; will retry");
        }
        other => {
            tracing::info!(topic = %sub.topic, subscription = %sub.name, message_id = %d.message_id,
                attempt = d.attempts + 1, result = ?other, "push failed");
        }
    }
    PushOutcome { seq: d.seq, result }
}

/// The MNS signing key when the subscription signs the MNS way; why not when it cannot be had
/// (the attempt then fails and is retried on the schedule).
async fn mns_key(
    sub: &PushSubscription,
    cfg: &DeliverConfig,
) -> Result<Option<Arc<ActiveKey>>, String> {
    if !sub.push.signing.mns() {
        return Ok(None);
    }
    let keys = cfg
        .signing_keys
        .as_ref()
        .ok_or_else(|| "MNS signing: this process has no signing keys".to_string())?;
    match keys.current().await {
        Ok(k) => Ok(Some(k)),
        Err(e) => {
            let reason: String = format!("MNS signing key: {e}")
                .chars()
                .take(MAX_REASON_CHARS)
                .collect();
            tracing::warn!(topic = %sub.topic, subscription = %sub.name, error = %reason,
                "cannot sign the push");
            Err(reason)
        }
    }
}

/// What to record after an attempt: pure, so the whole schedule can be walked in tests.
/// `attempts_before` is the number of failed attempts before this one; `unit` a random number
/// in `[0, 1)` for BACKOFF_RETRY.
pub fn next_result(
    verdict: Verdict,
    strategy: NotifyStrategy,
    attempts_before: u32,
    retry_scale: f64,
    now_ms: u64,
    unit: f64,
) -> PushResult {
    match verdict {
        Verdict::Done => PushResult::Delivered,
        Verdict::Disable { reason } => PushResult::Disable { error: reason },
        Verdict::GiveUp { reason } => PushResult::GiveUp { error: reason },
        Verdict::Retry {
            reason,
            retry_after,
        } => match retry_delay(strategy, attempts_before + 1, unit) {
            None => PushResult::GiveUp {
                error: format!("{reason} (attempt {}, the last)", attempts_before + 1),
            },
            Some(wait) => {
                let mut wait = scaled(wait, retry_scale);
                if let Some(ra) = retry_after {
                    wait = wait.max(ra);
                }
                PushResult::Retry {
                    due_ms: now_ms + wait.as_millis() as u64,
                    error: reason,
                }
            }
        },
    }
}

/// One POST of `d` to the subscription's endpoint, bounded by its push timeout, classified.
/// Signed with `signer` (Standard Webhooks) and `mns` (the MNS signature) as the subscription's
/// signing mode says; `mns` must be given when the mode includes MNS.
pub async fn attempt_result(
    client: &reqwest::Client,
    sub: &PushSubscription,
    signer: &Signer,
    mns: Option<&ActiveKey>,
    d: &PushDelivery,
    egress: &EgressPolicy,
) -> Verdict {
    let url = match reqwest::Url::parse(&sub.push.url) {
        Ok(u) => u,
        Err(e) => return classify_failure(&AttemptFailure::Request(e.to_string())),
    };
    // IP literals skip the resolver: check them here (the subscription may predate the
    // policy). Names are checked by the resolver, on the addresses connected to.
    if let Err(e) = check_url(&url, egress.deny_private_networks) {
        egress.count_refused_connect();
        return classify_failure(&AttemptFailure::Egress(e.to_string()));
    }
    let deadline = Instant::now() + Duration::from_secs(sub.push.push_timeout_seconds.into());
    let rendered = format::render(sub.push.format, &sub.topic, &sub.name, d);
    let now = SystemTime::now();
    let mns_headers = match (sub.push.signing.mns(), mns) {
        (false, _) => Vec::new(),
        (true, Some(key)) => mns_sign::headers(
            key,
            &url,
            rendered.content_type,
            &rendered.body,
            &rendered.headers,
            now,
        ),
        (true, None) => {
            return Verdict::Retry {
                reason: "MNS signing: no signing key".into(),
                retry_after: None,
            }
        }
    };
    let mut req = client.post(url).header(
        CONTENT_TYPE,
        HeaderValue::from_static(rendered.content_type),
    );
    if sub.push.signing.standard_webhooks() {
        let timestamp = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let signature = signer.signature(&d.message_id, timestamp, &rendered.body);
        req = req
            .header("webhook-id", d.message_id.as_str())
            .header("webhook-timestamp", timestamp)
            .header("webhook-signature", signature);
    }
    for (k, v) in rendered.headers.into_iter().chain(mns_headers) {
        req = req.header(k, v);
    }
    let send = req.body(rendered.body).send();
    let resp = match tokio::time::timeout_at(deadline.into(), send).await {
        Err(_) => return classify_failure(&AttemptFailure::Timeout),
        Ok(Err(e)) => {
            let failure = failure_of(&e);
            if let AttemptFailure::Egress(_) = failure {
                egress.count_refused_connect();
            }
            return classify_failure(&failure);
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // The verdict is the status; the answer's body is read (up to a cap, within the deadline)
    // only so the connection can be reused, then dropped.
    let _ = tokio::time::timeout_at(deadline.into(), drain(resp)).await;
    classify_status(status, retry_after.as_deref(), SystemTime::now())
}

async fn drain(mut resp: reqwest::Response) {
    let mut read = 0usize;
    while read < RESPONSE_BODY_CAP {
        match resp.chunk().await {
            Ok(Some(c)) => read += c.len(),
            _ => break,
        }
    }
}

/// Sorts a client error into a failure kind by its type (and its causes' types), never by text.
fn failure_of(e: &reqwest::Error) -> AttemptFailure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut root = String::new();
    while let Some(s) = source {
        if let Some(denied) = s.downcast_ref::<EgressDenied>() {
            return AttemptFailure::Egress(denied.to_string());
        }
        root = s.to_string();
        source = s.source();
    }
    let root: String = root.chars().take(MAX_REASON_CHARS).collect();
    if e.is_timeout() {
        AttemptFailure::Timeout
    } else if e.is_builder() {
        AttemptFailure::Request(root)
    } else if e.is_connect() {
        AttemptFailure::Connect(root)
    } else {
        AttemptFailure::Transport(root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry() -> Verdict {
        Verdict::Retry {
            reason: "HTTP 500".into(),
            retry_after: None,
        }
    }

    #[test]
    fn the_exponential_schedule_walks_a_day_then_gives_up() {
        // A simulated clock: every attempt fails, the next one happens when it is due.
        let mut now = 1_000_000u64;
        let start = now;
        let mut waits = Vec::new();
        let mut attempts = 0u32;
        loop {
            match next_result(
                retry(),
                NotifyStrategy::ExponentialDecayRetry,
                attempts,
                1.0,
                now,
                0.5,
            ) {
                PushResult::Retry { due_ms, .. } => {
                    waits.push((due_ms - now) / 1000);
                    now = due_ms;
                    attempts += 1;
                }
                PushResult::GiveUp { error } => {
                    assert!(error.contains("attempt 177"), "{error}");
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(attempts, 176, "176 retries after the first attempt");
        assert_eq!(&waits[..10], &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512]);
        assert!(waits[10..].iter().all(|&w| w == 512));
        assert_eq!((now - start) / 1000, 86_015, "about one day");
    }

    #[test]
    fn backoff_gives_up_after_three_retries_and_retry_after_stretches_a_wait() {
        let s = NotifyStrategy::BackoffRetry;
        for n in 0..3 {
            assert!(matches!(
                next_result(retry(), s, n, 1.0, 0, 0.0),
                PushResult::Retry { due_ms: 10_000, .. }
            ));
        }
        assert!(matches!(
            next_result(retry(), s, 3, 1.0, 0, 0.0),
            PushResult::GiveUp { .. }
        ));
        let scaled = next_result(retry(), s, 0, 0.01, 0, 0.0);
        assert!(
            matches!(scaled, PushResult::Retry { due_ms: 100, .. }),
            "{scaled:?}"
        );
        let ra = Verdict::Retry {
            reason: "HTTP 429".into(),
            retry_after: Some(Duration::from_secs(30)),
        };
        assert!(matches!(
            next_result(ra, s, 0, 1.0, 0, 0.0),
            PushResult::Retry { due_ms: 30_000, .. }
        ));
        assert_eq!(
            next_result(Verdict::Done, s, 2, 1.0, 0, 0.0),
            PushResult::Delivered
        );
        assert!(matches!(
            next_result(
                Verdict::Disable {
                    reason: "410".into()
                },
                s,
                0,
                1.0,
                0,
                0.0
            ),
            PushResult::Disable { .. }
        ));
    }
}
