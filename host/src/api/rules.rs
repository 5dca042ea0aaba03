//! `/v1/rules`: create (stopped), update, list, show, start, stop, delete, and test a definition
//! on a sample message.

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
    let registry = state.rules.clone();
    let deleted = name.clone();
    tokio::task::spawn_blocking(move || registry.delete(&deleted))
        .await
        .map_err(join_error)??;
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

/// The body of `POST /v1/rules/{name}/test`: a rule definition (as for create; the rule need
/// not exist) and a sample message.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    /// The rule as it would be created or updated.
    pub rule: crate::rules::spec::RuleDefinition,
    /// The MQTT topic the sample arrived on.
    pub topic: String,
    /// The sample payload (text; JSON for JSON rules).
    #[serde(default)]
    pub payload: String,
    /// The clock the rule sees, ms since the epoch [default: now].
    pub timestamp_ms: Option<i64>,
}

/// `POST /v1/rules/{name}/test`: runs the definition on the sample through the same compiler
/// and sandbox as `sluice rule eval` (one shared function, [`crate::rules::trial::run`]) and
/// answers the decisions. A SQL error is a 400 whose error carries `line` and `column`, so the
/// console's editor can point at it. Nothing is stored and nothing is forwarded.
pub async fn test(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<TestRequest>,
) -> Result<Json<Value>, axum::response::Response> {
    use crate::rules::trial::{self, Trial, TrialError, TrialOutcome, TrialSource};
    use axum::response::IntoResponse;
    let sql_error = |e: &crate::rules::sql::SqlError| {
        let (line, column) = e.position().unwrap_or((1, 1));
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {
                "code": "InvalidRuleSql",
                "message": e.to_string(),
                "field": "sql",
                "kind": e.kind(),
                "line": line,
                "column": column,
            }})),
        )
            .into_response()
    };
    let data_type = match req.rule.data_type.as_deref() {
        Some("binary") => crate::rules::DataType::Binary,
        _ => crate::rules::DataType::Json,
    };
    // Compile first: the spec check below would report the same error without its position.
    if let Some(sql) = &req.rule.sql {
        let opts = crate::rules::sql::CompileOptions { data_type };
        if let Err(e) = crate::rules::sql::compile(sql, &opts) {
            return Err(sql_error(&e));
        }
    }
    let spec = req.rule.into_spec(&name).map_err(|e| {
        ApiError::from(crate::rules::registry::RegistryError::from(e)).into_response()
    })?;
    let trial = Trial {
        source: match spec.source {
            crate::rules::RuleSource::Sql { sql } => TrialSource::Sql(sql),
            crate::rules::RuleSource::Wasm { module } => TrialSource::Wasm(module),
        },
        data_type: spec.data_type,
        topic: req.topic,
        from: Some(spec.from_filter),
        payload: req.payload.into_bytes(),
        timestamp_ms: req
            .timestamp_ms
            .unwrap_or_else(|| crate::ids::now_ms() as i64),
        message_id: "0".repeat(32),
        seed: 0,
        utc_offset_seconds: spec.utc_offset_seconds,
        actions: spec.actions,
        grant: spec.grant,
    };
    let runtime = state.rules.engine().runtime().clone();
    let outcome = tokio::task::spawn_blocking(move || trial::run(&runtime, &trial))
        .await
        .map_err(|e| join_error(e).into_response())?
        .map_err(|e| match e {
            TrialError::Sql(e) => sql_error(&e),
            TrialError::Module(e) => {
                ApiError::invalid("module_base64", e.to_string()).into_response()
            }
        })?;
    Ok(Json(match outcome {
        TrialOutcome::Emitted(decisions) => json!({
            "outcome": "emitted",
            "decisions": decisions.into_iter().map(|d| json!({
                "kind": d.kind,
                "target": d.target,
                "payload": serde_json::from_str::<Value>(&d.payload_json).unwrap_or(Value::Null),
            })).collect::<Vec<_>>(),
        }),
        TrialOutcome::Dropped => json!({"outcome": "dropped", "decisions": []}),
        TrialOutcome::TopicNotMatched { filter } => json!({
            "outcome": "topic_not_matched",
            "decisions": [],
            "filter": filter,
        }),
        TrialOutcome::Failed { kind, message } => json!({
            "outcome": "failed",
            "decisions": [],
            "failure": {"kind": kind, "message": message},
        }),
    }))
}
