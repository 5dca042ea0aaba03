//! `/v1/queues`: create, list, show, remove, send, receive (long poll), peek, delete.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::json::JsonBody;
use super::{body, AppState};
use crate::store::{QueueAttributes, SendRequest, MAX_BATCH};

/// Attributes for create; omitted ones take the spec's defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueBody {
    delay_seconds: Option<u32>,
    maximum_message_size: Option<u32>,
    message_retention_period: Option<u32>,
    visibility_timeout: Option<u32>,
    polling_wait_seconds: Option<u32>,
    dead_letter_queue: Option<String>,
    max_receive_count: Option<u32>,
}

impl QueueBody {
    /// Applies the given attributes over the defaults.
    pub fn attributes(self) -> QueueAttributes {
        let mut a = QueueAttributes::default();
        if let Some(v) = self.delay_seconds {
            a.delay_seconds = v;
        }
        if let Some(v) = self.maximum_message_size {
            a.maximum_message_size = v;
        }
        if let Some(v) = self.message_retention_period {
            a.message_retention_period = v;
        }
        if let Some(v) = self.visibility_timeout {
            a.visibility_timeout = v;
        }
        if let Some(v) = self.polling_wait_seconds {
            a.polling_wait_seconds = v;
        }
        a.dead_letter_queue = self.dead_letter_queue;
        a.max_receive_count = self.max_receive_count;
        a
    }
}

/// `PUT /v1/queues/{queue}`
pub async fn create(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    JsonBody(body): JsonBody<QueueBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let created = state.store.create_queue(&queue, body.attributes()).await?;
    let info = state.store.get_queue(&queue).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!(info))))
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

/// `DELETE /v1/queues/{queue}`
pub async fn remove(
    State(state): State<AppState>,
    Path(queue): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.store.delete_queue(&queue).await?;
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

/// `POST /v1/queues/{queue}/messages`
pub async fn send(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    JsonBody(req): JsonBody<SendBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let sent = state
        .store
        .send(
            &queue,
            SendRequest {
                body: body::decode(req.body, req.body_base64)?,
                delay_seconds: req.delay_seconds,
                priority: req.priority,
                tag: req.tag,
                attributes: req.attributes,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(json!(sent))))
}

/// Query of a receive or peek.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveQuery {
    max: Option<u32>,
    wait_seconds: Option<u32>,
    #[serde(default)]
    peek: bool,
}

/// `GET /v1/queues/{queue}/messages?max=N&wait_seconds=S[&peek=true]`. An empty queue after the
/// wait answers 200 with `"messages": []` — the documented "no message" answer.
pub async fn receive(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    Query(q): Query<ReceiveQuery>,
) -> Result<Json<Value>, ApiError> {
    let max = q.max.unwrap_or(1);
    if max == 0 || max as usize > MAX_BATCH {
        return Err(ApiError::invalid(
            "max",
            format!("max is {max}; receive 1 to {MAX_BATCH} messages at a time"),
        ));
    }
    let messages = if q.peek {
        state.store.peek(&queue, max as usize).await?
    } else {
        let wait = q.wait_seconds.map(|s| Duration::from_secs(s as u64));
        state.store.receive(&queue, max as usize, wait).await?
    };
    Ok(Json(json!({ "messages": messages })))
}

/// `DELETE /v1/queues/{queue}/messages/{receipt_handle}`
pub async fn delete_message(
    State(state): State<AppState>,
    Path((queue, receipt)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    state.store.delete(&queue, &receipt).await?;
    Ok(Json(json!({ "deleted": receipt })))
}
