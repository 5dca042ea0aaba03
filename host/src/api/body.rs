//! Message bodies in JSON: `body` (UTF-8 text) or `body_base64` (any bytes), exactly one.

use base64::Engine as _;
use bytes::Bytes;

use super::error::ApiError;

/// A body for an answer: `("body", text)` when it is UTF-8, else `("body_base64", ...)`.
pub fn encode(payload: &[u8]) -> (&'static str, String) {
    match std::str::from_utf8(payload) {
        Ok(text) => ("body", text.to_owned()),
        Err(_) => (
            "body_base64",
            base64::engine::general_purpose::STANDARD.encode(payload),
        ),
    }
}

/// Decodes the body of a send or publish request.
pub fn decode(body: Option<String>, body_base64: Option<String>) -> Result<Bytes, ApiError> {
    match (body, body_base64) {
        (Some(text), None) => Ok(Bytes::from(text)),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map(Bytes::from)
            .map_err(|e| ApiError::invalid("body_base64", format!("not valid base64: {e}"))),
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "body",
            "give either body (text) or body_base64, not both",
        )),
        (None, None) => Err(ApiError::invalid(
            "body",
            "missing: give body (UTF-8 text) or body_base64",
        )),
    }
}
