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
use crate::store::{PublishRequest, SubscriptionSpec};

/// `PUT /v1/topics/{topic}`
pub async fn create(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    JsonBody(_): JsonBody<serde::de::IgnoredAny>,
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

/// `DELETE /v1/topics/{topic}`
pub async fn remove(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.store.delete_topic(&topic).await?;
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

/// `POST /v1/topics/{topic}/messages`: acknowledged after the commit that also fans it out.
pub async fn publish(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    JsonBody(req): JsonBody<PublishBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let published = state
        .store
        .publish(
            &topic,
            PublishRequest {
                body: body::decode(req.body, req.body_base64)?,
                tag: req.tag,
                attributes: req.attributes,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(json!(published))))
}

/// A subscription to create.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionBody {
    queue: Option<String>,
    filter_tag: Option<String>,
    #[serde(default)]
    base64_body: bool,
}

/// `PUT /v1/topics/{topic}/subscriptions/{name}`
pub async fn subscribe(
    State(state): State<AppState>,
    Path((topic, name)): Path<(String, String)>,
    JsonBody(req): JsonBody<SubscriptionBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let queue = req
        .queue
        .ok_or_else(|| ApiError::invalid("queue", "missing: name the queue endpoint"))?;
    let mut spec = SubscriptionSpec::queue(queue);
    spec.filter_tag = req.filter_tag;
    spec.base64_body = req.base64_body;
    let created = state.store.create_subscription(&topic, &name, spec).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!(state.store.get_subscription(&topic, &name).await?)),
    ))
}

/// `GET /v1/topics/{topic}/subscriptions`
pub async fn subscriptions(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        json!({ "subscriptions": state.store.list_subscriptions(&topic).await? }),
    ))
}

/// `GET /v1/topics/{topic}/subscriptions/{name}`
pub async fn subscription(
    State(state): State<AppState>,
    Path((topic, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(
        state.store.get_subscription(&topic, &name).await?
    )))
}

/// `DELETE /v1/topics/{topic}/subscriptions/{name}`
pub async fn unsubscribe(
    State(state): State<AppState>,
    Path((topic, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    state.store.delete_subscription(&topic, &name).await?;
    Ok(Json(json!({ "deleted": name })))
}
