//! The HTTP API: JSON under `/v1/` (queues, topics, subscriptions, rules, keys), the
//! MNS-compatible XML API (`/queues`, `/topics`, see [`mns`]), `/healthz`, and the web
//! [`console`] under `/console/`. Every request but `/healthz`, the console's sign-in page and
//! assets, and the push signing certificates ([`signing_certs`]) passes the access-key check of
//! [`auth`] first.
//! Handlers are thin: they parse, call the store or the rule registry, and shape the answer.

pub mod auth;
mod backup;
mod body;
pub mod console;
mod devices;
pub mod error;
mod json;
mod keys;
pub mod metrics;
pub mod mns;
pub mod policy;
mod queues;
mod rules;
pub mod server;
pub mod signing_certs;
mod subscriptions;
pub mod tls;
mod topics;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::rules::registry::RuleRegistry;
use crate::store::Store;

/// What every handler can reach: the services behind one `Arc`, so the clone that axum's
/// `State` makes per request is one reference count, not one per service.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    /// Shares `services` with every handler.
    pub fn new(services: Services) -> AppState {
        AppState(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The services behind [`AppState`].
pub struct Services {
    /// Topics, subscriptions, queues.
    pub store: Store,
    /// Rule lifecycle.
    pub rules: Arc<RuleRegistry>,
    /// The device registry and downlink.
    pub devices: crate::devices::DeviceService,
    /// The MQTT front end's and the pipeline's counters, for `/metrics`.
    pub stages: metrics::StageCounters,
    /// The access keys, checked on every request.
    pub keys: Arc<auth::KeyRing>,
    /// The console's open live tails, capped per key and in all.
    pub tails: Arc<console::tail::Tails>,
    /// Served over HTTPS (`--http-tls-cert`): the console's session cookie is then `Secure`.
    pub https: bool,
    /// Where HTTP subscriptions may push: checked when one is created (both API faces).
    pub push_egress: crate::deliver::egress::EgressPolicy,
    /// The keys of MNS-signed pushes, whose certificates the API serves.
    pub signing_keys: Arc<crate::deliver::signing_keys::SigningKeys>,
}

/// 2 MiB: the largest message (1 MiB) as base64 JSON fits; anything larger is cut off early.
pub const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;
/// 32 MiB for rule uploads: Wasm modules built with std and serde are a few hundred KiB.
pub const MAX_RULE_UPLOAD_BYTES: usize = 32 * 1024 * 1024;

/// The API router.
pub fn router(state: AppState) -> Router {
    let rules = Router::new()
        .route("/v1/rules", get(rules::list))
        .route(
            "/v1/rules/{name}",
            get(rules::show)
                .post(rules::create)
                .put(rules::update)
                .delete(rules::delete),
        )
        .route("/v1/rules/{name}/start", post(rules::start))
        .route("/v1/rules/{name}/stop", post(rules::stop))
        .route("/v1/rules/{name}/test", post(rules::test))
        .layer(DefaultBodyLimit::max(MAX_RULE_UPLOAD_BYTES));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics::scrape))
        .route("/v1/devices", get(devices::list))
        .route(
            "/v1/devices/{pk}/{dn}",
            get(devices::show)
                .put(devices::create)
                .delete(devices::remove),
        )
        .route("/v1/devices/{pk}/{dn}/messages", post(devices::send))
        .route("/v1/devices/{pk}/{dn}/rrpc", post(devices::call))
        .route("/v1/queues", get(queues::list))
        .route(
            "/v1/queues/{queue}",
            get(queues::show)
                .put(queues::create)
                .patch(queues::set_attributes)
                .delete(queues::remove),
        )
        .route(
            "/v1/queues/{queue}/messages",
            get(queues::receive).post(queues::send),
        )
        .route(
            "/v1/queues/{queue}/messages/delete",
            post(queues::delete_batch),
        )
        .route(
            "/v1/queues/{queue}/messages/{receipt_handle}",
            axum::routing::delete(queues::delete_message).put(queues::change_visibility),
        )
        .route("/v1/backup", get(backup::snapshot))
        .route("/v1/keys", get(keys::list).post(keys::create))
        .route("/v1/keys/{id}", get(keys::show).delete(keys::delete))
        .route("/v1/signing-certificates", get(signing_certs::list))
        .route(
            "/v1/signing-certificates/rotate",
            post(signing_certs::rotate),
        )
        .route(
            "/v1/signing-certificates/{file}",
            get(signing_certs::certificate),
        )
        .route("/v1/topics", get(topics::list))
        .route(
            "/v1/topics/{topic}",
            get(topics::show).put(topics::create).delete(topics::remove),
        )
        .route("/v1/topics/{topic}/messages", post(topics::publish))
        .route("/v1/topics/{topic}/subscriptions", get(subscriptions::list))
        .route(
            "/v1/topics/{topic}/subscriptions/{name}",
            get(subscriptions::show)
                .put(subscriptions::subscribe)
                .delete(subscriptions::remove),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{name}/enable",
            post(subscriptions::enable),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{name}/disable",
            post(subscriptions::disable),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{name}/rotate-secret",
            post(subscriptions::rotate_secret),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{name}/dead-letters",
            get(subscriptions::dead_letters),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{name}/dead-letters/redrive",
            post(subscriptions::redrive),
        )
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .merge(rules)
        .merge(mns::router())
        .merge(console::router(state.clone()))
        .method_not_allowed_fallback(|| async {
            error::ApiError {
                status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
                code: "MethodNotAllowed",
                message: "this path does not take that method (see the API table in README)".into(),
                field: None,
            }
        })
        .fallback(|| async {
            error::ApiError {
                status: axum::http::StatusCode::NOT_FOUND,
                code: "NotFound",
                message: "no such endpoint; the API lives under /v1/ (see README)".into(),
                field: None,
            }
        })
        // Last, so it guards every route above (and the fallbacks).
        .layer(axum::middleware::from_fn_with_state(
            state.keys.clone(),
            auth::check,
        ))
        .with_state(state)
}
