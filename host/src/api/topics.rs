//! `/v1/topics`: create, list, show, remove, publish, and subscriptions.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::json::JsonBody;
use super::{body, AppState};
use crate::store::PublishRequest;

/// The body of a topic create: no settings yet, so only `{}` (or nothing); an unknown field is
/// refused rather than silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicBody {}

/// `PUT /v1/topics/{topic}`: creates the topic; `200` when it already exists.
pub async fn create(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    JsonBody(_): JsonBody<TopicBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let created = state.store.create_topic(&topic).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!(state.store.get_topic(&topic).await?))))
}

/// `GET /v1/topics`
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "topics": state.store.list_topics().await? })))
}

/// `GET /v1/topics/{topic}`
pub async fn show(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = state.store.get_topic(&topic).await?;
    let subs = state.store.list_subscriptions(&topic).await?;
    Ok(Json(json!({ "topic": info, "subscriptions": subs })))
}

/// `DELETE /v1/topics/{topic}`: `404 TopicNotExist` when there is no such topic.
pub async fn remove(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !state.store.delete_topic(&topic).await? {
        return Err(crate::store::StoreError::TopicNotExist { name: topic }.into());
    }
    Ok(Json(json!({ "deleted": topic })))
}

/// A message to publish.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    body: Option<String>,
    body_base64: Option<String>,
    tag: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

impl PublishBody {
    fn into_request(self) -> Result<PublishRequest, ApiError> {
        Ok(PublishRequest {
            body: body::decode(self.body, self.body_base64)?,
            tag: self.tag,
            attributes: self.attributes,
        })
    }
}

/// Several messages published in one commit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBatchBody {
    messages: Vec<PublishBody>,
}

/// `POST /v1/topics/{topic}/messages`: one message (`{"body", "tag", "attributes"}`, answered
/// with `{"id", "body_md5", "enqueue_time_ms", "queues"}`) or a batch (`{"messages": [...]}`,
/// 1–16, answered with `{"messages": [...]}` in order, all or nothing). Acknowledged after the
/// commit that also fans the messages out to the topic's queue subscriptions.
pub async fn publish(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    JsonBody(raw): JsonBody<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let malformed = |e: serde_json::Error| ApiError::malformed(format!("request body: {e}"));
    if raw.as_object().is_some_and(|o| o.contains_key("messages")) {
        let batch: PublishBatchBody = serde_json::from_value(raw).map_err(malformed)?;
        let n = batch.messages.len();
        if n == 0 || n > crate::store::MAX_BATCH {
            return Err(ApiError::invalid(
                "messages",
                format!(
                    "{n} is out of range: a batch has 1 to {} entries",
                    crate::store::MAX_BATCH
                ),
            ));
        }
        let items = batch
            .messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                m.into_request()
                    .map(|r| (topic.clone(), r))
                    .map_err(|mut e| {
                        e.message = format!("messages[{i}]: {}", e.message);
                        e
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let published = state.store.publish_batch(items).await?;
        Ok((StatusCode::CREATED, Json(json!({ "messages": published }))))
    } else {
        let one: PublishBody = serde_json::from_value(raw).map_err(malformed)?;
        let published = state.store.publish(&topic, one.into_request()?).await?;
        Ok((StatusCode::CREATED, Json(json!(published))))
    }
}
