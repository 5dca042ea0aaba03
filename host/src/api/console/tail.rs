//! The live tail: server-sent events for a topic filter (device messages as they enter the
//! rules), a rule's output (its forwards) or a queue (messages as they become visible).
//!
//! Topic and rule tails read the pipeline's lossy [`crate::pipeline::Tap`]: a browser that falls
//! behind skips ahead (an `lagged` event says how many it missed) and never slows ingest. A
//! queue tail peeks the queue's head twice a second and sends each message once; it changes
//! nothing in the queue. Every stream ends when the pipeline shuts down (so the server's graceful
//! shutdown does not wait on a browser) and after [`MAX_STREAM`] (the browser reconnects).

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ConsoleState;
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
    pick: impl Fn(TapEvent) -> Option<Value> + Send + 'static,
) -> Result<Response, ApiError> {
    let (tap, closed) = tap(state)?;
    let mut events = tap.subscribe();
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
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
    Query(q): Query<FilterQuery>,
) -> Result<Response, ApiError> {
    crate::topic::validate_filter(&q.filter)
        .map_err(|e| ApiError::invalid("filter", e.to_string()))?;
    let filter = q.filter;
    follow_tap(&state, move |e| match e {
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
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.app.rules.get(&name)?;
    follow_tap(&state, move |e| match e {
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
    Path(queue): Path<String>,
) -> Result<Response, ApiError> {
    state.app.store.get_queue(&queue).await?;
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
