//! The API's error shape: `{"error":{"code","message","field"}}` with an HTTP status. Codes
//! follow MNS names where MNS has one; every error names the field at fault when there is one.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use crate::rules::registry::RegistryError;
use crate::store::StoreError;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: &'static str,
    /// What went wrong and how to fix it.
    pub message: String,
    /// The request field at fault.
    pub field: Option<String>,
}

impl ApiError {
    /// A 400 naming a field.
    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "InvalidArgument",
            message: message.into(),
            field: Some(field.to_string()),
        }
    }

    /// A 500 for a failure of sluice itself (logged, since the client cannot fix it).
    pub fn internal(message: impl Into<String>) -> ApiError {
        let message = message.into();
        tracing::error!("{message}");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "InternalError",
            message,
            field: None,
        }
    }

    /// A 400 for a body that is not the JSON expected.
    pub fn malformed(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "MalformedJson",
            message: message.into(),
            field: None,
        }
    }
}

/// The object inside `"error"`; also one item's failure in a batch answer (a batch delete's
/// results). Fields in the order a `json!` map gives them (sorted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorDetail {
    /// Machine-readable code.
    pub code: &'static str,
    /// The request field at fault.
    pub field: Option<String>,
    /// What went wrong and how to fix it.
    pub message: String,
}

impl From<&StoreError> for ErrorDetail {
    fn from(e: &StoreError) -> ErrorDetail {
        ErrorDetail {
            code: e.code(),
            field: e.field().map(str::to_string),
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let detail = ErrorDetail {
            code: self.code,
            field: self.field,
            message: self.message,
        };
        let body = json!({ "error": detail });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the oversized body stays unread, so this connection cannot carry another
            // request; saying so stops a client from reusing it and failing its next request.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!("store error: {e}");
        }
        let ErrorDetail {
            code,
            field,
            message,
        } = ErrorDetail::from(&e);
        ApiError {
            status,
            code,
            message,
            field,
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        let (status, code, field) = match &e {
            RegistryError::NotFound(_) => (StatusCode::NOT_FOUND, "RuleNotExist", None),
            RegistryError::Exists(_) => (StatusCode::CONFLICT, "RuleAlreadyExist", None),
            RegistryError::Rule(r) => (StatusCode::BAD_REQUEST, "InvalidRule", r.field()),
            RegistryError::Catalog(_) => {
                tracing::error!("rule catalog error: {e}");
                (StatusCode::INTERNAL_SERVER_ERROR, "InternalError", None)
            }
        };
        ApiError {
            status,
            code,
            message: e.to_string(),
            field: field.map(str::to_string),
        }
    }
}
