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

/// The MNS code and status of a store error. The store's own codes are MNS names where MNS has
/// one; where the two faces differ this says what MNS answers (see the table in
/// docs/message-service.md):
///
/// - a receipt handle that is no longer current is `404 MessageNotExist`, as MNS answers for a
///   handle of an earlier receive (`/v1/` keeps `409 ReceiptHandleStale`);
/// - a body over the size cap is `400 InvalidArgument` (MNS: "the value of MessageBody should
///   be between 1 and N bytes"), not `413`;
/// - a full disk and every "try again later" condition are `503 ServiceUnavailable`;
/// - everything else that is not the caller's fault is `500 InternalError`.
pub fn store_code(e: &StoreError) -> (StatusCode, &'static str) {
    match e {
        StoreError::QueueNotExist { .. } => (StatusCode::NOT_FOUND, "QueueNotExist"),
        StoreError::TopicNotExist { .. } => (StatusCode::NOT_FOUND, "TopicNotExist"),
        StoreError::SubscriptionNotExist { .. } => (StatusCode::NOT_FOUND, "SubscriptionNotExist"),
        StoreError::MessageNotExist { .. } | StoreError::ReceiptHandleStale { .. } => {
            (StatusCode::NOT_FOUND, "MessageNotExist")
        }
        StoreError::QueueAlreadyExist { .. } => (StatusCode::CONFLICT, "QueueAlreadyExist"),
        StoreError::SubscriptionAlreadyExist { .. } => {
            (StatusCode::CONFLICT, "SubscriptionAlreadyExist")
        }
        StoreError::InvalidArgument { .. } | StoreError::MessageTooLarge { .. } => {
            (StatusCode::BAD_REQUEST, "InvalidArgument")
        }
        StoreError::ReceiptHandleError { .. } => (StatusCode::BAD_REQUEST, "ReceiptHandleError"),
        StoreError::StorageFull(_)
        | StoreError::Busy { .. }
        | StoreError::Locked { .. }
        | StoreError::Closed
        | StoreError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
        StoreError::Unsupported(_)
        | StoreError::Damaged { .. }
        | StoreError::SchemaTooNew { .. }
        | StoreError::Io { .. }
        | StoreError::Sqlite(_)
        | StoreError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
    }
}

impl From<StoreError> for MnsError {
    fn from(e: StoreError) -> MnsError {
        let (status, code) = store_code(&e);
        if status.is_server_error() {
            tracing::error!("store error: {e}");
        }
        MnsError::new(status, code, e.to_string())
    }
}

/// What a refused request answers on the MNS face. The checks are shared with `/v1/`; where
/// MNS answers differently the code or status changes here: no credentials at all is MNS's
/// `400 MissingAuthorizationHeader` (`/v1/` answers `401` with `WWW-Authenticate`), and a body
/// that does not match its Content-MD5 is MNS's `InvalidDegist` (sic: MNS spells it so).
pub fn denied(status: StatusCode, code: &'static str, message: String) -> MnsError {
    match code {
        "MissingAuthorizationHeader" => MnsError::new(StatusCode::BAD_REQUEST, code, message),
        "InvalidDigest" => MnsError::new(status, "InvalidDegist", message),
        _ => MnsError::new(status, code, message),
    }
}

/// The kinds of MNS names, for the MNS name errors.
#[derive(Debug, Clone, Copy)]
pub enum NameKind {
    /// A queue name (`InvalidQueueName`, `QueueNameLengthError`).
    Queue,
    /// A topic name (`TopicNameInvalid`, `TopicNameLengthError`).
    Topic,
    /// A subscription name (`SubscriptionNameInvalid`, `SubscriptionNameLengthError`).
    Subscription,
}

/// Checks a name being created as MNS does, with MNS's codes: a length outside 1–120 (MNS
/// allows 256; sluice names are shorter) is `QueueNameLengthError` (or the topic's or
/// subscription's), other characters than letters, digits and `-`, or a first `-`, is
/// `InvalidQueueName` (`TopicNameInvalid`, `SubscriptionNameInvalid`). Both are `400`.
pub fn check_name(kind: NameKind, name: &str) -> Result<(), MnsError> {
    let (invalid, length, what) = match kind {
        NameKind::Queue => ("InvalidQueueName", "QueueNameLengthError", "queue"),
        NameKind::Topic => ("TopicNameInvalid", "TopicNameLengthError", "topic"),
        NameKind::Subscription => (
            "SubscriptionNameInvalid",
            "SubscriptionNameLengthError",
            "subscription",
        ),
    };
    if !(1..=crate::store::MAX_NAME_LEN).contains(&name.len()) {
        return Err(MnsError::new(
            StatusCode::BAD_REQUEST,
            length,
            format!(
                "the {what} name is {} characters long: it must be 1 to {}",
                name.chars().count(),
                crate::store::MAX_NAME_LEN
            ),
        ));
    }
    crate::store::validate_name("name", name).map_err(|_| {
        MnsError::new(
            StatusCode::BAD_REQUEST,
            invalid,
            format!(
                "`{}` is not a valid {what} name: letters, digits and `-`, starting with a \
                 letter or digit",
                name.escape_debug()
            ),
        )
    })
}
