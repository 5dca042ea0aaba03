//! MNS error answers: `<Error xmlns=...><Code/><Message/><RequestId/><HostId/></Error>` with the
//! HTTP status MNS uses, so an SDK raises its usual `MNSServerException` with the usual code.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::xml::{to_xml, xml_text, ErrorResp, XMLNS};
use crate::store::StoreError;

/// An error in the MNS face.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MnsError {
    /// HTTP status.
    pub status: StatusCode,
    /// MNS error code (`QueueNotExist`, `MessageNotExist`, `SignatureDoesNotMatch`, ...).
    pub code: &'static str,
    /// What went wrong and how to fix it; names the element at fault when there is one.
    pub message: String,
}

impl MnsError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> MnsError {
        MnsError {
            status,
            code,
            message: message.into(),
        }
    }

    /// A 400 `InvalidArgument` naming the XML element or query parameter at fault.
    pub fn invalid(field: &str, message: impl Into<String>) -> MnsError {
        MnsError::new(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            format!("invalid {field}: {}", message.into()),
        )
    }

    /// A 400 `MalformedXML` for a body that is not the XML document expected.
    pub fn malformed(message: impl Into<String>) -> MnsError {
        MnsError::new(StatusCode::BAD_REQUEST, "MalformedXML", message)
    }
}

/// A fresh request id (24 hex characters, like MNS's), echoed in `x-mns-request-id`.
pub fn request_id() -> String {
    hex::encode(rand::random::<[u8; 12]>()).to_uppercase()
}

impl IntoResponse for MnsError {
    fn into_response(self) -> Response {
        let id = request_id();
        // Messages quote what the client sent (a query value may decode to U+0001).
        let message = xml_text(&self.message);
        let body = to_xml(&ErrorResp {
            xmlns: XMLNS,
            code: self.code,
            message: &message,
            request_id: &id,
            host_id: "sluice",
        });
        let mut r = (self.status, super::xml::XML_HEADERS, body).into_response();
        if let Ok(v) = HeaderValue::from_str(&id) {
            r.headers_mut().insert("x-mns-request-id", v);
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The unread rest of the body makes the connection unusable (see api::error).
            r.headers_mut().insert(
                axum::http::header::CONNECTION,
                HeaderValue::from_static("close"),
            );
        }
        r
    }
}

impl From<StoreError> for MnsError {
    fn from(e: StoreError) -> MnsError {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!("store error: {e}");
        }
        MnsError::new(status, e.code(), e.to_string())
    }
}
