//! `/v1/devices`: register, list, show and delete devices, send a downlink message to one, and
//! call one synchronously (RRPC). The secret appears once, in the answer to the create; list
//! and show never carry it.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::json::JsonBody;
use super::{body, AppState};
use crate::devices::Device;
use crate::devices::{DeviceError, DownlinkError};

/// The body of `PUT /v1/devices/{pk}/{dn}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// Tags read by rules with `attribute('key')`.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// The body of `POST /v1/devices/{pk}/{dn}/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownlinkBody {
    /// A sub-topic (`user/get` -> `/{pk}/{dn}/user/get`) or a full topic of the device.
    pub topic: String,
    /// The payload as UTF-8 text.
    pub body: Option<String>,
    /// The payload as base64 (binary).
    pub body_base64: Option<String>,
    /// 0 (default) or 1.
    #[serde(default)]
    pub qos: u8,
}

/// The body of `POST /v1/devices/{pk}/{dn}/rrpc`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallBody {
    /// The request as UTF-8 text.
    pub body: Option<String>,
    /// The request as base64 (binary).
    pub body_base64: Option<String>,
    /// A custom topic of the device (`user/get`): the call goes to `/ext/rrpc/{id}/{pk}/{dn}/...`
    /// instead of the system topic `/sys/{pk}/{dn}/rrpc/request/{id}`.
    pub topic: Option<String>,
    /// How long to wait for the answer, 1-60 seconds (default 5).
    pub timeout_secs: Option<u64>,
}

impl From<DeviceError> for ApiError {
    fn from(e: DeviceError) -> ApiError {
        match e {
            DeviceError::AlreadyExists { .. } => ApiError {
                status: StatusCode::CONFLICT,
                code: "DeviceAlreadyExist",
                message: format!("{e}; delete it first to get a new secret"),
                field: Some("device_name".into()),
            },
            DeviceError::NotFound { .. } => not_found(e.to_string()),
            DeviceError::Store(e) => e.into(),
        }
    }
}

impl From<DownlinkError> for ApiError {
    fn from(e: DownlinkError) -> ApiError {
        let message = e.to_string();
        let (status, code, field) = match e {
            DownlinkError::DeviceNotFound { .. } => return not_found(message),
            DownlinkError::InvalidTopic { .. } => {
                (StatusCode::BAD_REQUEST, "InvalidArgument", Some("topic"))
            }
            DownlinkError::InvalidQos => (StatusCode::BAD_REQUEST, "InvalidArgument", Some("qos")),
            DownlinkError::DeviceOffline { .. } => (StatusCode::CONFLICT, "DeviceOffline", None),
            DownlinkError::NotSubscribed { .. } => {
                (StatusCode::CONFLICT, "DeviceNotSubscribed", Some("topic"))
            }
            DownlinkError::Broker(_) => (StatusCode::BAD_GATEWAY, "BrokerUnavailable", None),
            DownlinkError::KeptFull(_) => (StatusCode::CONFLICT, "OfflineQueueFull", None),
            DownlinkError::Storage(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", None)
            }
            DownlinkError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "Timeout", None),
            DownlinkError::CallRefused(_) => (StatusCode::TOO_MANY_REQUESTS, "TooManyCalls", None),
            DownlinkError::InvalidTimeout => (
                StatusCode::BAD_REQUEST,
                "InvalidArgument",
                Some("timeout_secs"),
            ),
            DownlinkError::CallsUnsupported => (StatusCode::NOT_IMPLEMENTED, "NotSupported", None),
        };
        ApiError {
            status,
            code,
            message,
            field: field.map(str::to_string),
        }
    }
}

fn not_found(message: String) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "DeviceNotExist",
        message,
        field: None,
    }
}

/// A device as list and show present it: no secret, plus whether it is connected now.
fn public(state: &AppState, d: &Device) -> Value {
    json!({
        "product_key": d.product_key,
        "device_name": d.device_name,
        "tags": d.tags,
        "create_time_ms": d.create_time_ms,
        "online": state.devices.registry.is_online(&d.product_key, &d.device_name),
    })
}

/// `PUT /v1/devices/{pk}/{dn}`: registers the device; the answer carries its secret, the only
/// time it is shown. `409 DeviceAlreadyExist` when it exists.
pub async fn create(
    State(state): State<AppState>,
    Path((pk, dn)): Path<(String, String)>,
    JsonBody(b): JsonBody<CreateBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let d = state.devices.registry.create(&pk, &dn, b.tags).await?;
    let mut v = public(&state, &d);
    v["secret"] = json!(d.secret);
    Ok((StatusCode::CREATED, Json(v)))
}

/// `GET /v1/devices`
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let devices = state.devices.registry.list().await?;
    let devices: Vec<Value> = devices.iter().map(|d| public(&state, d)).collect();
    Ok(Json(json!({ "devices": devices })))
}

/// `GET /v1/devices/{pk}/{dn}`
pub async fn show(
    State(state): State<AppState>,
    Path((pk, dn)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let d = state.devices.registry.get(&pk, &dn).await?;
    Ok(Json(public(&state, &d)))
}

/// `DELETE /v1/devices/{pk}/{dn}`
pub async fn remove(
    State(state): State<AppState>,
    Path((pk, dn)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    state.devices.registry.delete(&pk, &dn).await?;
    Ok(Json(
        json!({ "deleted": {"product_key": pk, "device_name": dn} }),
    ))
}

/// `POST /v1/devices/{pk}/{dn}/messages`: publishes to the device through the broker in use.
/// `202 Accepted` with `queued` when the device is offline and its persistent session keeps
/// the message for its return.
pub async fn send(
    State(state): State<AppState>,
    Path((pk, dn)): Path<(String, String)>,
    JsonBody(b): JsonBody<DownlinkBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let payload = body::decode(b.body, b.body_base64)?;
    let out = state
        .devices
        .downlink
        .send(&state.devices.registry, &pk, &dn, &b.topic, payload, b.qos)
        .await?;
    let status = if out.kept > 0 {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({
            "topic": out.topic,
            "qos": b.qos,
            "delivered": out.delivered,
            "queued": out.kept,
        })),
    ))
}

/// `POST /v1/devices/{pk}/{dn}/rrpc`: a synchronous call; answers with the device's reply, or
/// `409 DeviceOffline`, `504 Timeout`.
pub async fn call(
    State(state): State<AppState>,
    Path((pk, dn)): Path<(String, String)>,
    JsonBody(b): JsonBody<CallBody>,
) -> Result<Json<Value>, ApiError> {
    let payload = body::decode(b.body, b.body_base64)?;
    let timeout = match b.timeout_secs {
        Some(secs) => std::time::Duration::from_secs(secs),
        None => crate::devices::downlink::DEFAULT_CALL_TIMEOUT,
    };
    let answer = state
        .devices
        .downlink
        .call(
            &state.devices.registry,
            &pk,
            &dn,
            b.topic.as_deref(),
            payload,
            timeout,
        )
        .await?;
    let (field, text) = body::encode(&answer.payload);
    Ok(Json(json!({
        "id": answer.id,
        "topic": answer.request_topic,
        field: text,
    })))
}
