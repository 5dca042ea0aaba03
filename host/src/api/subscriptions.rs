//! `/v1/topics/{topic}/subscriptions`: queue and HTTP subscriptions of a topic; for HTTP ones
//! also delivery counters, enable/disable, secret rotation and dead letters.
//!
//! The signing secret of an HTTP subscription is in the answer to the create call only (`201`,
//! field `secret`); `show` and `list` never include it. An HTTP subscription's `signing` mode
//! (`standard-webhooks`, the default; `mns`; `both`) is shown in its `endpoint.http`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{deny_queue, Caller};
use super::error::ApiError;
use super::json::JsonBody;
use super::AppState;
use crate::api::policy::Permission;
use crate::store::{
    ContentFormat, Endpoint, HttpPush, NotifyStrategy, SigningMode, StoreError, SubscriptionInfo,
    SubscriptionSpec,
};

/// A subscription to create: `queue` or `http` (with its push settings).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionBody {
    queue: Option<String>,
    http: Option<String>,
    filter_tag: Option<String>,
    #[serde(default)]
    base64_body: bool,
    strategy: Option<String>,
    format: Option<String>,
    push_timeout_seconds: Option<u32>,
    dead_letter_queue: Option<String>,
    max_concurrency: Option<u32>,
    signing: Option<String>,
}

/// `standard-webhooks`, `mns` or `both` (any case).
pub fn parse_signing(s: &str) -> Result<SigningMode, ApiError> {
    SigningMode::parse(s).ok_or_else(|| {
        ApiError::invalid(
            "signing",
            format!("`{s}`: use standard-webhooks, mns or both"),
        )
    })
}

/// `BACKOFF_RETRY` / `backoff`, `EXPONENTIAL_DECAY_RETRY` / `exponential` (any case).
pub fn parse_strategy(s: &str) -> Result<NotifyStrategy, ApiError> {
    match s.to_ascii_lowercase().as_str() {
        "backoff_retry" | "backoff" => Ok(NotifyStrategy::BackoffRetry),
        "exponential_decay_retry" | "exponential" => Ok(NotifyStrategy::ExponentialDecayRetry),
        _ => Err(ApiError::invalid(
            "strategy",
            format!("`{s}`: use BACKOFF_RETRY (backoff) or EXPONENTIAL_DECAY_RETRY (exponential)"),
        )),
    }
}

/// `SIMPLIFIED`, `JSON` or `XML` (any case).
pub fn parse_format(s: &str) -> Result<ContentFormat, ApiError> {
    match s.to_ascii_lowercase().as_str() {
        "simplified" => Ok(ContentFormat::Simplified),
        "json" => Ok(ContentFormat::Json),
        "xml" => Ok(ContentFormat::Xml),
        _ => Err(ApiError::invalid(
            "format",
            format!("`{s}`: use SIMPLIFIED, JSON or XML"),
        )),
    }
}

impl SubscriptionBody {
    fn into_spec(self) -> Result<SubscriptionSpec, ApiError> {
        let push_only = [
            ("strategy", self.strategy.is_some()),
            ("format", self.format.is_some()),
            ("push_timeout_seconds", self.push_timeout_seconds.is_some()),
            ("dead_letter_queue", self.dead_letter_queue.is_some()),
            ("max_concurrency", self.max_concurrency.is_some()),
            ("signing", self.signing.is_some()),
        ];
        let endpoint = match (self.queue, self.http) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "http",
                    "give either `queue` or `http`, not both",
                ))
            }
            (None, None) => {
                return Err(ApiError::invalid(
                    "queue",
                    "missing: name the queue endpoint (`queue`) or the URL (`http`)",
                ))
            }
            (Some(q), None) => {
                if let Some((field, _)) = push_only.iter().find(|f| f.1) {
                    return Err(ApiError::invalid(
                        field,
                        "only HTTP subscriptions take this setting",
                    ));
                }
                Endpoint::Queue(q)
            }
            (None, Some(url)) => {
                if self.base64_body {
                    return Err(ApiError::invalid(
                        "base64_body",
                        "only queue subscriptions take this setting",
                    ));
                }
                let mut push = HttpPush::new(url);
                if let Some(s) = &self.strategy {
                    push.strategy = parse_strategy(s)?;
                }
                if let Some(f) = &self.format {
                    push.format = parse_format(f)?;
                }
                if let Some(t) = self.push_timeout_seconds {
                    push.push_timeout_seconds = t;
                }
                if let Some(c) = self.max_concurrency {
                    push.max_concurrency = c;
                }
                if let Some(m) = &self.signing {
                    push.signing = parse_signing(m)?;
                }
                push.dead_letter_queue = self.dead_letter_queue;
                Endpoint::Http(push)
            }
        };
        Ok(SubscriptionSpec {
            endpoint,
            filter_tag: self.filter_tag,
            base64_body: self.base64_body,
        })
    }
}

/// A subscription as shown: its info, plus `push` (delivery counters and state) for HTTP ones.
async fn shown(state: &AppState, info: SubscriptionInfo) -> Result<Value, ApiError> {
    let mut v = json!(info);
    if let Endpoint::Http(_) = &info.spec.endpoint {
        match state.store.push_status(&info.topic, &info.name).await {
            Ok(status) => v["push"] = json!(status),
            // Deleted between the two reads: show what was read.
            Err(StoreError::SubscriptionNotExist { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(v)
}

/// `PUT /v1/topics/{topic}/subscriptions/{name}`: `201` with the subscription (and, for an HTTP
/// one, its signing `secret`, shown this once); `200` without a secret when the same
/// subscription exists; `409 SubscriptionAlreadyExist` when a different one does.
/// Subscribing a queue writes into it, so the caller's key needs `send` on that queue too; so
/// does naming an HTTP subscription's `dead_letter_queue` (failed pushes are written there).
/// An endpoint the egress policy refuses (an IP literal or a metadata host name) is a `400`.
pub async fn subscribe(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((topic, name)): Path<(String, String)>,
    JsonBody(req): JsonBody<SubscriptionBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let spec = req.into_spec()?;
    if let Endpoint::Http(push) = &spec.endpoint {
        state
            .push_egress
            .check_new_endpoint(&push.url)
            .map_err(|message| ApiError::invalid("http", message))?;
    }
    let written = match &spec.endpoint {
        Endpoint::Queue(queue) => Some(("queue", queue)),
        Endpoint::Http(push) => push
            .dead_letter_queue
            .as_ref()
            .map(|q| ("dead_letter_queue", q)),
    };
    if let Some((field, queue)) = written {
        if let Some(d) = deny_queue(&caller, queue, Permission::Send) {
            return Err(d.at(field));
        }
    }
    let (created, secret) = if let Endpoint::Http(_) = &spec.endpoint {
        let c = state
            .store
            .create_push_subscription(&topic, &name, spec)
            .await?;
        (c.created, c.secret)
    } else {
        (
            state.store.create_subscription(&topic, &name, spec).await?,
            None,
        )
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let info = state.store.get_subscription(&topic, &name).await?;
    let mut v = shown(&state, info).await?;
    if let Some(secret) = secret {
        v["secret"] = json!(secret);
    }
    Ok((status, Json(v)))
}

/// `GET /v1/topics/{topic}/subscriptions`
pub async fn list(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut out = Vec::new();
    for info in state.store.list_subscriptions(&topic).await? {
        out.push(shown(&state, info).await?);
    }
    Ok(Json(json!({ "subscriptions": out })))
}

/// `GET /v1/topics/{topic}/subscriptions/{name}`
pub async fn show(
    State(state): State<AppState>,
    Path((topic, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let info = state.store.get_subscription(&topic, &name).await?;
    Ok(Json(shown(&state, info).await?))
}

/// `DELETE /v1/topics/{topic}/subscriptions/{name}`: `404 SubscriptionNotExist` when there is
/// none. An HTTP subscription's pending pushes go with it (counted in the log).
pub async fn remove(
    State(state): State<AppState>,
    Path((topic, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    if !state.store.delete_subscription(&topic, &name).await? {
        return Err(StoreError::SubscriptionNotExist { topic, name }.into());
    }
    Ok(Json(json!({ "deleted": name })))
}

/// `POST .../subscriptions/{name}/enable`: pushing resumes (pending messages first).
pub async fn enable(
    State(state): State<AppState>,
    Path((topic, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    state.store.set_push_enabled(&topic, &name, true).await?;
    let info = state.store.get_subscription(&topic, &name).await?;
    Ok(Json(shown(&state, info).await?))
}

/// `POST .../subscriptions/{name}/disable`: pushing stops; messages keep arriving as pending.
pub async fn disable(
    State(state): State<AppState>,
    Path((topic, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    state.store.set_push_enabled(&topic, &name, false).await?;
    let info = state.store.get_subscription(&topic, &name).await?;
    Ok(Json(shown(&state, info).await?))
}

/// Body of a rotation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// How long the old secret keeps signing beside the new one (0–604800, default a day).
    grace_seconds: Option<u32>,
}

/// `POST .../subscriptions/{name}/rotate-secret`: a new secret (in the answer, shown once); the
/// old one signs too until `previous_secret_valid_until_ms`.
pub async fn rotate_secret(
    State(state): State<AppState>,
    Path((topic, name)): Path<(String, String)>,
    JsonBody(req): JsonBody<RotateBody>,
) -> Result<Json<Value>, ApiError> {
    let grace = req
        .grace_seconds
        .unwrap_or(crate::store::push::DEFAULT_ROTATION_GRACE_SECONDS);
    if grace > 604_800 {
        return Err(ApiError::invalid(
            "grace_seconds",
            format!("{grace} is out of range: grace_seconds must be between 0 and 604800"),
        ));
    }
    let secret = state
        .store
        .rotate_push_secret(&topic, &name, std::time::Duration::from_secs(grace.into()))
        .await?;
    let status = state.store.push_status(&topic, &name).await?;
    Ok(Json(json!({
        "secret": secret,
        "previous_secret_valid_until_ms": status.previous_secret_valid_until_ms,
    })))
}

/// `?max=N` of the dead-letter calls.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxQuery {
    max: Option<usize>,
}

fn check_max(max: Option<usize>) -> Result<usize, ApiError> {
    let max = max.unwrap_or(100);
    let limit = crate::store::push::MAX_DEAD_LETTER_PAGE;
    if max == 0 || max > limit {
        return Err(ApiError::invalid(
            "max",
            format!("{max} is out of range: max must be between 1 and {limit}"),
        ));
    }
    Ok(max)
}

/// Checks that the caller may do `action` on the subscription's dead-letter queue, which holds
/// the messages the dead-letter calls read or move (the topic's grant does not cover that
/// queue).
async fn check_dead_letter_queue(
    state: &AppState,
    caller: &Caller,
    topic: &str,
    name: &str,
    action: Permission,
) -> Result<(), ApiError> {
    let info = state.store.get_subscription(topic, name).await?;
    if let Endpoint::Http(push) = &info.spec.endpoint {
        if let Some(queue) = &push.dead_letter_queue {
            if let Some(d) = deny_queue(caller, queue, action) {
                return Err(d.at("dead_letter_queue"));
            }
        }
    }
    Ok(())
}

/// `GET .../subscriptions/{name}/dead-letters?max=N`: the subscription's messages in its
/// dead-letter queue, each with its `dead_letter` origin (attempts, last error). Needs `read` on
/// that queue.
pub async fn dead_letters(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((topic, name)): Path<(String, String)>,
    Query(q): Query<MaxQuery>,
) -> Result<Json<Value>, ApiError> {
    let max = check_max(q.max)?;
    check_dead_letter_queue(&state, &caller, &topic, &name, Permission::Read).await?;
    let messages = state.store.push_dead_letters(&topic, &name, max).await?;
    Ok(Json(json!({ "messages": messages })))
}

/// `POST .../subscriptions/{name}/dead-letters/redrive` (`{"max": N}`, default 100): moves
/// them back to pending pushes with a fresh schedule and the same message ids. Takes them out
/// of the dead-letter queue, so it needs `consume` on that queue.
pub async fn redrive(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((topic, name)): Path<(String, String)>,
    JsonBody(req): JsonBody<MaxQuery>,
) -> Result<Json<Value>, ApiError> {
    let max = check_max(req.max)?;
    check_dead_letter_queue(&state, &caller, &topic, &name, Permission::Consume).await?;
    let n = state
        .store
        .redrive_push_dead_letters(&topic, &name, max)
        .await?;
    Ok(Json(json!({ "redriven": n })))
}
