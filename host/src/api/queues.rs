//! `/v1/queues`: create, set attributes, list, show, remove; send (one or a batch), receive
//! (long poll, batch), peek, delete (one or a batch), change visibility.
//!
//! | method and path | operation |
//! |---|---|
//! | `PUT /v1/queues/{queue}` | create (idempotent: same attributes `200`, different `409 QueueAlreadyExist`) |
//! | `PATCH /v1/queues/{queue}` | set the given attributes, keep the others (`null` clears the dead-letter queue) |
//! | `POST /v1/queues/{queue}/messages` | send one message, or `{"messages":[...]}` (1–16) in one commit |
//! | `GET /v1/queues/{queue}/messages?max&wait_seconds&peek` | receive or peek |
//! | `POST /v1/queues/{queue}/messages/delete` | batch delete `{"receipt_handles":[...]}`, one result per handle |
//! | `DELETE /v1/queues/{queue}/messages/{receipt_handle}` | delete one |
//! | `PUT /v1/queues/{queue}/messages/{receipt_handle}` | change visibility `{"visibility_timeout": s}`, returns the new handle |

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::auth::{deny_queue, Caller};
use super::error::{ApiError, ErrorDetail};
use super::json::{JsonBody, QueryArgs};
use super::{body, AppState};
use crate::api::policy::Permission;
use crate::store::{Message, QueueAttributesPatch, SendRequest, StoreError};

/// Refuses a `dead_letter_queue` the caller may not send to: messages that exceed
/// `max_receive_count` are written there.
fn check_dead_letter_queue(body: &QueueAttributesPatch, caller: &Caller) -> Result<(), ApiError> {
    if let Some(Some(queue)) = &body.dead_letter_queue {
        if let Some(d) = deny_queue(caller, queue, Permission::Send) {
            return Err(d.at("dead_letter_queue"));
        }
    }
    Ok(())
}

/// `PUT /v1/queues/{queue}`: creates the queue. Idempotent: the same attributes again answer
/// `200`, different ones `409 QueueAlreadyExist` (change them with `PATCH`). Naming a
/// `dead_letter_queue` needs `send` on it.
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(queue): Path<String>,
    JsonBody(body): JsonBody<QueueAttributesPatch>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_dead_letter_queue(&body, &caller)?;
    let created = state.store.create_queue(&queue, body.attributes()).await?;
    let info = state.store.get_queue(&queue).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!(info))))
}

/// `PATCH /v1/queues/{queue}`: sets the attributes given in the body and keeps the others.
/// Validated as a whole; nothing changes on error. New values apply to later operations.
/// Naming a `dead_letter_queue` needs `send` on it.
pub async fn set_attributes(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(queue): Path<String>,
    JsonBody(body): JsonBody<QueueAttributesPatch>,
) -> Result<Json<Value>, ApiError> {
    check_dead_letter_queue(&body, &caller)?;
    let current = state.store.get_queue(&queue).await?.attributes;
    state
        .store
        .set_queue_attributes(&queue, body.apply(current))
        .await?;
    Ok(Json(json!(state.store.get_queue(&queue).await?)))
}

/// `GET /v1/queues`
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let queues = state.store.list_queues().await?;
    Ok(Json(json!({ "queues": queues })))
}

/// `GET /v1/queues/{queue}`
pub async fn show(
    State(state): State<AppState>,
    Path(queue): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(state.store.get_queue(&queue).await?)))
}

/// `DELETE /v1/queues/{queue}`: `404 QueueNotExist` when there is no such queue.
pub async fn remove(
    State(state): State<AppState>,
    Path(queue): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !state.store.delete_queue(&queue).await? {
        return Err(StoreError::QueueNotExist { name: queue }.into());
    }
    Ok(Json(json!({ "deleted": queue })))
}

/// A message to send.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    body: Option<String>,
    body_base64: Option<String>,
    delay_seconds: Option<u32>,
    priority: Option<u8>,
    tag: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

impl SendBody {
    fn into_request(self) -> Result<SendRequest, ApiError> {
        Ok(SendRequest {
            body: body::decode(self.body, self.body_base64)?,
            delay_seconds: self.delay_seconds,
            priority: self.priority,
            tag: self.tag,
            attributes: self.attributes,
        })
    }
}

/// A batch of messages to send in one commit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBatchBody {
    messages: Vec<SendBody>,
}

/// `POST /v1/queues/{queue}/messages`: one message (`{"body", ...}`, answered with its receipt
/// `{"id", "body_md5", ...}`) or a batch (`{"messages": [...]}`, 1–16, answered with
/// `{"messages": [...]}` in order). A batch is all or nothing: one invalid message refuses it.
pub async fn send(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    JsonBody(raw): JsonBody<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let is_batch = raw.as_object().is_some_and(|o| o.contains_key("messages"));
    if is_batch {
        let batch: SendBatchBody = serde_json::from_value(raw)
            .map_err(|e| ApiError::malformed(format!("request body: {e}")))?;
        let requests = batch
            .messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                m.into_request().map_err(|mut e| {
                    e.message = format!("messages[{i}]: {}", e.message);
                    e
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sent = state.store.send_batch(&queue, requests).await?;
        Ok((StatusCode::CREATED, Json(json!({ "messages": sent }))))
    } else {
        let one: SendBody = serde_json::from_value(raw)
            .map_err(|e| ApiError::malformed(format!("request body: {e}")))?;
        let sent = state.store.send(&queue, one.into_request()?).await?;
        Ok((StatusCode::CREATED, Json(json!(sent))))
    }
}

/// Query of a receive or peek. The auth middleware parses it first (`peek` decides whether the
/// request needs `read` or `consume`) and the handler takes that same parse.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveQuery {
    max: Option<u32>,
    wait_seconds: Option<u32>,
    #[serde(default)]
    pub(crate) peek: bool,
}

/// `GET /v1/queues/{queue}/messages?max=N&wait_seconds=S[&peek=true]`. An empty queue after the
/// wait answers 200 with `"messages": []` — the documented "no message" answer.
pub async fn receive(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    QueryArgs(q): QueryArgs<ReceiveQuery>,
) -> Result<Received, ApiError> {
    // The store checks the ranges (max 1-16, wait 0-30) and names the field.
    let max = q.max.unwrap_or(1) as usize;
    let messages = if q.peek {
        if q.wait_seconds.is_some() {
            return Err(ApiError::invalid(
                "wait_seconds",
                "peek does not wait; leave out wait_seconds",
            ));
        }
        state.store.peek(&queue, max).await?
    } else {
        let wait = q.wait_seconds.map(|s| Duration::from_secs(s.into()));
        state.store.receive(&queue, max, wait).await?
    };
    Ok(Received { messages })
}

/// A receive's answer, serialised straight to the response (no `serde_json::Value` tree built
/// per message on the hot path).
#[derive(Debug, Serialize)]
pub struct Received {
    messages: Vec<Message>,
}

impl axum::response::IntoResponse for Received {
    fn into_response(self) -> axum::response::Response {
        // Sized once from the messages, so a large answer is not copied at every doubling of a
        // buffer that starts at axum's 128 bytes.
        let estimate: usize = self
            .messages
            .iter()
            .map(|m| 2 * m.body.len() + m.attributes.json().map_or(2, str::len) + 320)
            .sum();
        let mut buf = Vec::with_capacity(estimate + 16);
        match serde_json::to_writer(&mut buf, &self) {
            Ok(()) => (
                [(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/json"),
                )],
                buf,
            )
                .into_response(),
            Err(e) => ApiError::internal(format!("cannot encode the answer: {e}")).into_response(),
        }
    }
}

/// `DELETE /v1/queues/{queue}/messages/{receipt_handle}`
pub async fn delete_message(
    State(state): State<AppState>,
    Path((queue, receipt)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    state.store.delete(&queue, &receipt).await?;
    Ok(Json(json!({ "deleted": receipt })))
}

/// Receipt handles to delete in one commit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteBatchBody {
    receipt_handles: Vec<String>,
}

/// `POST /v1/queues/{queue}/messages/delete` with `{"receipt_handles": [...]}` (1–16): one
/// result per handle, in order — `{"receipt_handle", "deleted": true}` or
/// `{"receipt_handle", "deleted": false, "error": {"code", "message", "field"}}`. The answer is
/// 200 when the batch was processed, even if some handles failed; a bad request as a whole
/// (unknown queue, 0 or 17 handles) is an error answer.
pub async fn delete_batch(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    JsonBody(req): JsonBody<DeleteBatchBody>,
) -> Result<Json<DeleteAnswer>, ApiError> {
    let results = state
        .store
        .delete_batch(&queue, req.receipt_handles.clone())
        .await?;
    let results = req
        .receipt_handles
        .into_iter()
        .zip(results)
        .map(|(receipt_handle, r)| DeleteResult {
            deleted: r.is_ok(),
            error: r.err().as_ref().map(ErrorDetail::from),
            receipt_handle,
        })
        .collect();
    Ok(Json(DeleteAnswer { results }))
}

/// A batch delete's answer (typed: a `serde_json::Value` per handle cost a map per message).
/// Fields in the order the `json!` maps had them (sorted).
#[derive(Debug, Serialize)]
pub struct DeleteAnswer {
    results: Vec<DeleteResult>,
}

/// One handle's result of a batch delete.
#[derive(Debug, Serialize)]
pub struct DeleteResult {
    deleted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorDetail>,
    receipt_handle: String,
}

/// A visibility change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisibilityBody {
    visibility_timeout: Option<u32>,
}

/// `PUT /v1/queues/{queue}/messages/{receipt_handle}` with `{"visibility_timeout": s}`
/// (1–43200): the message becomes visible `s` seconds from now; answers
/// `{"receipt_handle", "next_visible_time_ms"}` with the new handle (the old one stops working).
pub async fn change_visibility(
    State(state): State<AppState>,
    Path((queue, receipt)): Path<(String, String)>,
    JsonBody(req): JsonBody<VisibilityBody>,
) -> Result<Json<Value>, ApiError> {
    let seconds = req.visibility_timeout.ok_or_else(|| {
        ApiError::invalid(
            "visibility_timeout",
            "missing: give visibility_timeout in seconds (1-43200)",
        )
    })?;
    let changed = state
        .store
        .change_visibility(&queue, &receipt, seconds)
        .await?;
    Ok(Json(json!(changed)))
}
