//! `/v1/rules`: create (stopped), update, list, show, start, stop, delete.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::json::JsonBody;
use super::AppState;
use crate::rules::spec::{RuleDefinition, RuleState};

/// `POST /v1/rules/{name}`: the rule is created stopped.
pub async fn create(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(def): JsonBody<RuleDefinition>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let spec = def
        .into_spec(&name)
        .map_err(crate::rules::registry::RegistryError::from)?;
    let registry = state.rules.clone();
    let view = tokio::task::spawn_blocking(move || registry.create(spec))
        .await
        .map_err(join_error)??;
    Ok((StatusCode::CREATED, Json(json!(view))))
}

/// `PUT /v1/rules/{name}`: a new version; a running rule switches over without losing messages.
pub async fn update(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(def): JsonBody<RuleDefinition>,
) -> Result<Json<Value>, ApiError> {
    let spec = def
        .into_spec(&name)
        .map_err(crate::rules::registry::RegistryError::from)?;
    let registry = state.rules.clone();
    let view = tokio::task::spawn_blocking(move || registry.update(spec))
        .await
        .map_err(join_error)??;
    Ok(Json(json!(view)))
}

/// `GET /v1/rules`
pub async fn list(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "rules": state.rules.list() }))
}

/// `GET /v1/rules/{name}`
pub async fn show(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(state.rules.get(&name)?)))
}

/// `POST /v1/rules/{name}/start`
pub async fn start(state: State<AppState>, name: Path<String>) -> Result<Json<Value>, ApiError> {
    set_state(state, name, RuleState::Running).await
}

/// `POST /v1/rules/{name}/stop`
pub async fn stop(state: State<AppState>, name: Path<String>) -> Result<Json<Value>, ApiError> {
    set_state(state, name, RuleState::Stopped).await
}

async fn set_state(
    State(state): State<AppState>,
    Path(name): Path<String>,
    to: RuleState,
) -> Result<Json<Value>, ApiError> {
    let registry = state.rules.clone();
    let view = tokio::task::spawn_blocking(move || registry.set_state(&name, to))
        .await
        .map_err(join_error)??;
    Ok(Json(json!(view)))
}

/// `DELETE /v1/rules/{name}`
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.rules.delete(&name)?;
    Ok(Json(json!({ "deleted": name })))
}

fn join_error(e: tokio::task::JoinError) -> ApiError {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "InternalError",
        message: format!("rule operation failed: {e}"),
        field: None,
    }
}
