//! The live tail: server-sent events for a topic filter (device messages as they enter the
//! rules), a rule's output (its forwards) or a queue (messages as they become visible).
//!
//! Topic and rule tails read the pipeline's lossy [`crate::pipeline::Tap`]: a browser that falls
//! behind skips ahead (an `lagged` event says how many it missed) and never slows ingest. A
//! queue tail peeks the queue's head twice a second and sends each message once; it changes
//! nothing in the queue. Every stream ends when the pipeline shuts down (so the server's graceful
//! shutdown does not wait on a browser) and after [`MAX_STREAM`] (the browser reconnects).
//! Open tails are capped per key and in all ([`Tails`]), so one key cannot hold an unbounded
//! number of tasks and queue polls.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ConsoleState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::pipeline::TapEvent;

/// 10 minutes: an open tail is re-established by the browser after this, which bounds how long
/// a stream can outlive anything it depends on.
pub const MAX_STREAM: Duration = Duration::from_secs(600);

/// Queue tails peek this often.
pub const QUEUE_POLL: Duration = Duration::from_millis(500);

/// Events buffered per browser before the producer waits.
const STREAM_BUFFER: usize = 64;

/// Message ids a queue tail remembers as already sent.
const SEEN_IDS: usize = 1024;

/// Default cap on open tails of one key (config `console_max_tails_per_key`): a browser holds
/// at most about six connections to one server, so this is a few people's browsers on one key.
pub const DEFAULT_MAX_TAILS_PER_KEY: usize = 16;

/// Default cap on open tails in all (config `console_max_tails`): each is a task, and a queue
/// tail peeks twice a second.
pub const DEFAULT_MAX_TAILS: usize = 256;

/// How many tails may be open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailLimits {
    /// Open tails of one key.
    pub per_key: usize,
    /// Open tails in all.
    pub total: usize,
}

impl Default for TailLimits {
    fn default() -> TailLimits {
        TailLimits {
            per_key: DEFAULT_MAX_TAILS_PER_KEY,
            total: DEFAULT_MAX_TAILS,
        }
    }
}

/// The open tails by key, held to their caps. A tail holds a [`TailPermit`] for as long as its
/// stream runs.
#[derive(Debug, Default)]
pub struct Tails {
    limits: TailLimits,
    open: Mutex<HashMap<String, usize>>,
    refused_per_key: AtomicU64,
    refused_total: AtomicU64,
}

/// Open tails and refused ones, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TailCounts {
    /// Tails open now.
    pub open: u64,
    /// Tails refused by the per-key cap.
    pub refused_per_key: u64,
    /// Tails refused by the total cap.
    pub refused_total: u64,
}

/// One open tail's place; dropping it (the stream ended) frees the place.
#[derive(Debug)]
pub struct TailPermit {
    tails: Arc<Tails>,
    key_id: String,
}

impl Drop for TailPermit {
    fn drop(&mut self) {
        let mut open = self.tails.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key_id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key_id);
            }
        }
    }
}

impl Tails {
    /// No tails yet, with these caps.
    pub fn new(limits: TailLimits) -> Tails {
        Tails {
            limits,
            ..Tails::default()
        }
    }

    /// A place for one more tail of `key_id`, or a 429 naming the cap reached and its setting.
    pub fn open(self: &Arc<Self>, key_id: &str) -> Result<TailPermit, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let refused = |counter: &AtomicU64, message: String| {
            counter.fetch_add(1, Ordering::Relaxed);
            ApiError {
                status: axum::http::StatusCode::TOO_MANY_REQUESTS,
                code: "TooManyTails",
                message,
                field: None,
            }
        };
        let total: usize = open.values().sum();
        if total >= self.limits.total {
            return Err(refused(
                &self.refused_total,
                format!(
                    "the server already has {} live tails open (the cap in all): close some, or \
                     raise `console_max_tails` in sluice.toml",
                    self.limits.total
                ),
            ));
        }
        let mine = open.entry(key_id.to_string()).or_default();
        if *mine >= self.limits.per_key {
            return Err(refused(
                &self.refused_per_key,
                format!(
                    "this access key already has {} live tails open (the cap per key): close \
                     some, or raise `console_max_tails_per_key` in sluice.toml",
                    self.limits.per_key
                ),
            ));
        }
        *mine += 1;
        Ok(TailPermit {
            tails: self.clone(),
            key_id: key_id.to_string(),
        })
    }

    /// Open tails and refusals.
    pub fn counts(&self) -> TailCounts {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        TailCounts {
            open: open.values().sum::<usize>() as u64,
            refused_per_key: self.refused_per_key.load(Ordering::Relaxed),
            refused_total: self.refused_total.load(Ordering::Relaxed),
        }
    }
}

/// `?filter=` of a topic tail.
#[derive(Debug, Deserialize)]
pub struct FilterQuery {
    /// An MQTT topic filter (`#` for everything).
    pub filter: String,
}

/// A payload as JSON when it is JSON, else as text.
fn body_value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn stream(
    rx: mpsc::Receiver<Event>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + Send + 'static> {
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(s).keep_alive(KeepAlive::default())
}

fn message_event(v: Value) -> Event {
    Event::default()
        .event("message")
        .data(v.to_string())
        .retry(Duration::from_millis(1000))
}

/// The pipeline's tap and its shutdown signal, or a 503 when the pipeline does not run
/// (`--ingest-only`).
fn tap(state: &ConsoleState) -> Result<(crate::pipeline::Tap, CancellationToken), ApiError> {
    let p = state.app.stages.pipeline.as_ref().ok_or_else(|| ApiError {
        status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
        code: "TailUnavailable",
        message: "the rule pipeline does not run (--ingest-only), so there is nothing to tail"
            .into(),
        field: None,
    })?;
    Ok((p.tap.clone(), p.tap.closed()))
}

/// Forwards tap events that `pick` turns into JSON until the browser leaves or sluice stops.
fn follow_tap(
    state: &ConsoleState,
    caller: &Caller,
    pick: impl Fn(TapEvent) -> Option<Value> + Send + 'static,
) -> Result<Response, ApiError> {
    let (tap, closed) = tap(state)?;
    let permit = state.app.tails.open(&caller.0.id)?;
    let mut events = tap.subscribe();
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        let _permit = permit;
        let deadline = tokio::time::sleep(MAX_STREAM);
        tokio::pin!(deadline);
        loop {
            let event = tokio::select! {
                _ = closed.cancelled() => return,
                _ = tx.closed() => return,
                _ = &mut deadline => return,
                e = events.recv() => e,
            };
            let out = match event {
                Ok(e) => match pick(e) {
                    Some(v) => message_event(v),
                    None => continue,
                },
                Err(RecvError::Lagged(n)) => Event::default()
                    .event("lagged")
                    .data(json!({ "missed": n }).to_string()),
                Err(RecvError::Closed) => return,
            };
            if tx.send(out).await.is_err() {
                return;
            }
        }
    });
    Ok(stream(rx).into_response())
}

/// `GET /console/events/topic?filter=F`: device messages whose MQTT topic matches `F`.
pub async fn topic(
    State(state): State<ConsoleState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<FilterQuery>,
) -> Result<Response, ApiError> {
    crate::topic::validate_filter(&q.filter)
        .map_err(|e| ApiError::invalid("filter", e.to_string()))?;
    let filter = q.filter;
    follow_tap(&state, &caller, move |e| match e {
        TapEvent::Ingested {
            topic,
            payload,
            at_ms,
        } if crate::topic::topic_matches(&filter, &topic) => Some(json!({
            "source": "device",
            "topic": topic,
            "at_ms": at_ms,
            "body": body_value(&payload),
        })),
        _ => None,
    })
}

/// `GET /console/events/rule/{name}`: the rule's forwards as it makes them.
pub async fn rule(
    State(state): State<ConsoleState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.app.rules.get(&name)?;
    follow_tap(&state, &caller, move |e| match e {
        TapEvent::Output {
            rule,
            topic,
            payload,
            at_ms,
        } if rule == name => Some(json!({
            "source": "rule",
            "rule": rule,
            "topic": topic,
            "at_ms": at_ms,
            "body": body_value(&payload),
        })),
        _ => None,
    })
}

/// `GET /console/events/queue/{queue}`: messages at the queue's head, each sent once, without
/// receiving them.
pub async fn queue(
    State(state): State<ConsoleState>,
    Extension(caller): Extension<Caller>,
    Path(queue): Path<String>,
) -> Result<Response, ApiError> {
    state.app.store.get_queue(&queue).await?;
    let permit = state.app.tails.open(&caller.0.id)?;
    let closed = state
        .app
        .stages
        .pipeline
        .as_ref()
        .map(|p| p.tap.closed())
        .unwrap_or_default();
    let store = state.app.store.clone();
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        let _permit = permit;
        let deadline = tokio::time::Instant::now() + MAX_STREAM;
        let mut seen: HashSet<String> = HashSet::new();
        let mut order: VecDeque<String> = VecDeque::new();
        loop {
            let messages = match store.peek(&queue, 16).await {
                Ok(m) => m,
                Err(e) => {
                    let _ = tx
                        .send(
                            Event::default()
                                .event("failed")
                                .data(json!({ "error": e.to_string() }).to_string()),
                        )
                        .await;
                    return;
                }
            };
            for m in messages {
                let id = m.id.to_string();
                if !seen.insert(id.clone()) {
                    continue;
                }
                order.push_back(id.clone());
                if order.len() > SEEN_IDS {
                    if let Some(old) = order.pop_front() {
                        seen.remove(&old);
                    }
                }
                let body = match std::str::from_utf8(&m.body) {
                    Ok(text) => body_value(text.as_bytes()),
                    Err(_) => Value::String(format!("({} bytes, not UTF-8)", m.body.len())),
                };
                let v = json!({
                    "source": "queue",
                    "queue": queue,
                    "id": id,
                    "at_ms": m.enqueue_time_ms,
                    "body": body,
                });
                if tx.send(message_event(v)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = closed.cancelled() => return,
                _ = tx.closed() => return,
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tokio::time::sleep(QUEUE_POLL) => {}
            }
        }
    });
    Ok(stream(rx).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tails are capped per key and in all; a refusal is a counted 429 naming the setting, and
    /// a closed tail frees its place.
    #[test]
    fn tails_are_capped_per_key_and_in_all() {
        let tails = Arc::new(Tails::new(TailLimits {
            per_key: 2,
            total: 3,
        }));
        let a1 = tails.open("a").unwrap();
        let _a2 = tails.open("a").unwrap();
        let e = tails.open("a").unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(
            e.message.contains("console_max_tails_per_key"),
            "{}",
            e.message
        );
        let _b1 = tails.open("b").unwrap();
        let e = tails.open("c").unwrap_err();
        assert!(e.message.contains("`console_max_tails`"), "{}", e.message);
        drop(a1);
        let _c1 = tails.open("c").unwrap();
        let c = tails.counts();
        assert_eq!((c.open, c.refused_per_key, c.refused_total), (3, 1, 1));
    }
}
