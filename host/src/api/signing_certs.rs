//! `/v1/signing-certificates`: the certificates of the keys that sign MNS-signed pushes
//! ([`crate::deliver::signing_keys`]).
//!
//! | method and path | operation |
//! |---|---|
//! | `GET /v1/signing-certificates` | list the served certificates, the current one first (admin) |
//! | `POST /v1/signing-certificates/rotate` | `{"grace_seconds": N}` (0–604800, default a day): a new key signs from now on; the previous certificates stay served for the grace (admin) |
//! | `GET /v1/signing-certificates/{id}.pem` | the certificate, PEM; open without a key, since the endpoints that verify pushes fetch it |

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::json::JsonBody;
use super::AppState;
use crate::deliver::signing_keys::{SigningKeyError, CERT_PATH, DEFAULT_GRACE_SECONDS};

/// True for the open certificate URLs (`GET /v1/signing-certificates/{id}.pem`).
pub fn is_open_path(path: &str) -> bool {
    path.strip_prefix(CERT_PATH)
        .and_then(|rest| rest.strip_prefix('/'))
        .and_then(|file| file.strip_suffix(".pem"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

impl From<SigningKeyError> for ApiError {
    fn from(e: SigningKeyError) -> ApiError {
        match e {
            SigningKeyError::Store(e) => e.into(),
            e @ SigningKeyError::Grace(_) => ApiError::invalid("grace_seconds", e.to_string()),
            e @ SigningKeyError::TooMany => ApiError {
                status: StatusCode::CONFLICT,
                code: "TooManySigningCertificates",
                message: e.to_string(),
                field: Some("grace_seconds".into()),
            },
            e => ApiError::internal(e.to_string()),
        }
    }
}

/// `GET /v1/signing-certificates`
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let certs = state.signing_keys.list().await?;
    Ok(Json(json!({ "certificates": certs })))
}

/// Body of a rotation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// How long the replaced certificates stay served.
    grace_seconds: Option<u32>,
}

/// `POST /v1/signing-certificates/rotate`: the certificates after the rotation, the new
/// current one first; `409 TooManySigningCertificates` when too many are still in their grace.
pub async fn rotate(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<RotateBody>,
) -> Result<Json<Value>, ApiError> {
    let grace = req.grace_seconds.unwrap_or(DEFAULT_GRACE_SECONDS);
    let certs = state.signing_keys.rotate(grace).await?;
    Ok(Json(json!({ "certificates": certs })))
}

/// `GET /v1/signing-certificates/{id}.pem`: `404 SigningCertificateNotExist` for an unknown
/// id, a certificate whose grace ended, or a path that does not end in `.pem`.
pub async fn certificate(
    State(state): State<AppState>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let pem = match file.strip_suffix(".pem") {
        Some(id) => state.signing_keys.certificate_pem(id).await?,
        None => None,
    };
    match pem {
        Some(pem) => Ok((
            [
                (header::CONTENT_TYPE, "application/x-pem-file"),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            pem,
        )
            .into_response()),
        None => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            code: "SigningCertificateNotExist",
            message: "no signing certificate is served under this name (`sluice signing-cert \
                      list` shows the served ones)"
                .into(),
            field: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_certificate_files_are_open() {
        assert!(is_open_path("/v1/signing-certificates/0123abcd.pem"));
        for closed in [
            "/v1/signing-certificates",
            "/v1/signing-certificates/",
            "/v1/signing-certificates/rotate",
            "/v1/signing-certificates/.pem",
            "/v1/signing-certificates/a/b.pem",
            "/v1/signing-certificatesx/a.pem",
            "/v1/keys/a.pem",
        ] {
            assert!(!is_open_path(closed), "{closed}");
        }
    }
}
