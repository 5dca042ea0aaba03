//! `/v1/keys`: access keys (admin keys only, like every endpoint outside queues and topics).
//!
//! | method and path | operation |
//! |---|---|
//! | `POST /v1/keys` | create `{"name", "allow": ["queues/q:consume", ...]}`; `201` with the `secret`, shown this once |
//! | `GET /v1/keys` | list (never a secret) |
//! | `GET /v1/keys/{id}` | show (never a secret) |
//! | `DELETE /v1/keys/{id}` | delete; the key stops working at once |

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::json::JsonBody;
use super::policy::{self, AccessKey, Allow, ADMIN_KEY_NAME};
use super::AppState;

/// A key to create.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyBody {
    name: Option<String>,
    #[serde(default)]
    allow: Vec<String>,
}

/// A key as shown: everything but the secret.
pub fn shown(k: &AccessKey) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "allow": k.allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "admin": k.is_admin(),
        "create_time_ms": k.create_time_ms,
    })
}

/// `POST /v1/keys`: `201` with the key and its `secret` (the only time it is shown); `409
/// KeyAlreadyExist` when the name is taken.
pub async fn create(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<KeyBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = body
        .name
        .ok_or_else(|| ApiError::invalid("name", "missing: give the key a name"))?;
    if body.allow.is_empty() {
        return Err(ApiError::invalid(
            "allow",
            "missing: give at least one grant, e.g. `queues/alerts-q:consume` or `*` (admin)",
        ));
    }
    let grants = body
        .allow
        .iter()
        .map(|g| Allow::parse(g))
        .collect::<Result<Vec<_>, _>>()?;
    let key = AccessKey::generate(&name, grants, state.store.clock().now_ms());
    if !policy::create_key(&state.store, key.clone()).await? {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "KeyAlreadyExist",
            message: format!("a key named `{name}` exists already"),
            field: Some("name".into()),
        });
    }
    state.keys.insert(key.clone());
    let mut v = shown(&key);
    v["secret"] = json!(key.secret);
    Ok((StatusCode::CREATED, Json(v)))
}

/// `GET /v1/keys`
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let keys = policy::list_keys(&state.store).await?;
    Ok(Json(
        json!({ "keys": keys.iter().map(shown).collect::<Vec<_>>() }),
    ))
}

fn not_found(id: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "KeyNotExist",
        message: format!("access key `{id}` does not exist"),
        field: None,
    }
}

/// `GET /v1/keys/{id}`
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let key = state.keys.get(&id).ok_or_else(|| not_found(&id))?;
    Ok(Json(shown(&key)))
}

/// `DELETE /v1/keys/{id}`: the key stops working at once. The admin key cannot be deleted: it
/// is the one `serve` writes to the credentials file.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let key: Arc<AccessKey> = state.keys.get(&id).ok_or_else(|| not_found(&id))?;
    if key.name == ADMIN_KEY_NAME {
        return Err(ApiError::invalid(
            "id",
            "the admin key cannot be deleted (serve writes it to the credentials file); create \
             other keys for clients",
        ));
    }
    if !policy::delete_key(&state.store, &id).await? {
        return Err(not_found(&id));
    }
    state.keys.remove(&id);
    Ok(Json(json!({ "deleted": id })))
}
