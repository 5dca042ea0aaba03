//! A JSON body extractor whose errors use the API's error shape (axum's own answers in plain
//! text), so a malformed request always gets `{"error":{...}}` with what and where.

use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON request body of type `T`; an empty body reads as `{}`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError {
                status: e.status(),
                code: if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    "RequestTooLarge"
                } else {
                    "InvalidRequest"
                },
                message: e.body_text(),
                field: None,
            })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::malformed(format!("request body: {e}")))
    }
}

/// A query string of type `T`, whose errors use the API's error shape (axum's `Query` answers
/// in plain text): an unknown parameter, a parameter given twice or a value that is not a number
/// is a 400 `InvalidArgument`.
///
/// When the auth middleware already parsed the query (to decide which permission a request
/// needs, see `auth::check_policy`), it leaves the value in the request's extensions and the
/// handler takes that one: the check and the handler act on the same parse.
#[derive(Debug, Clone)]
pub struct QueryArgs<T>(pub T);

impl<T: DeserializeOwned> QueryArgs<T> {
    /// Parses the query of `uri`.
    pub fn parse(uri: &axum::http::Uri) -> Result<QueryArgs<T>, ApiError> {
        axum::extract::Query::try_from_uri(uri)
            .map(|q| QueryArgs(q.0))
            .map_err(|e| ApiError {
                status: axum::http::StatusCode::BAD_REQUEST,
                code: "InvalidArgument",
                message: e.body_text(),
                field: None,
            })
    }
}

impl<S, T> axum::extract::FromRequestParts<S> for QueryArgs<T>
where
    T: DeserializeOwned + Clone + Send + Sync + 'static,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<QueryArgs<T>>() {
            Some(q) => Ok(q.clone()),
            None => QueryArgs::parse(&parts.uri),
        }
    }
}
