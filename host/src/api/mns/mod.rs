//! The MNS-compatible face of the message service: Alibaba Cloud MNS's REST/XML API
//! (`/queues/...`, `/topics/...`), so application servers written against the MNS SDKs work
//! unchanged, only pointed at sluice.
//!
//! One store, two faces: every handler calls the same [`Store`](crate::store::Store) functions
//! as the native `/v1/` API and only translates XML to the store's types and back. Authentication
//! and policy checks happen before (`api::auth`); errors are MNS error documents
//! ([`error::MnsError`]).
//!
//! | operation | request |
//! |---|---|
//! | CreateQueue / SetQueueAttributes | `PUT /queues/{q}` (`?metaoverride=true` to set) |
//! | GetQueueAttributes / DeleteQueue / ListQueue | `GET`/`DELETE /queues/{q}`, `GET /queues` |
//! | SendMessage / BatchSendMessage | `POST /queues/{q}/messages` (`<Message>` or `<Messages>`) |
//! | (Batch)ReceiveMessage, (Batch)PeekMessage | `GET /queues/{q}/messages?waitseconds&numOfMessages&peekonly` |
//! | DeleteMessage / BatchDeleteMessage | `DELETE /queues/{q}/messages?ReceiptHandle=` / with `<ReceiptHandles>` |
//! | ChangeMessageVisibility | `PUT /queues/{q}/messages?ReceiptHandle&VisibilityTimeout` |
//! | CreateTopic, Get/SetTopicAttributes, DeleteTopic, ListTopic | `/topics/{t}`, `/topics` |
//! | PublishMessage | `POST /topics/{t}/messages` |
//! | Subscribe, Unsubscribe, Get/SetSubscriptionAttributes, ListSubscriptionByTopic | `/topics/{t}/subscriptions/{s}` |

pub(crate) mod error;
pub(crate) mod query;
mod queues;
#[cfg(test)]
mod tests;
mod topics;
pub(crate) mod xml;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderValue};
use axum::routing::get;
use axum::Router;

use super::AppState;
use error::MnsError;
pub(crate) use query::MnsQuery;

/// Queue subscription endpoints in the MNS form: `acs:mns:{region}:{account}:queues/{name}`.
pub const QUEUE_ENDPOINT_PREFIX: &str = "acs:mns:";

/// The MNS routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/queues", get(queues::list))
        .route(
            "/queues/{queue}",
            get(queues::get_attributes)
                .put(queues::create_or_set)
                .delete(queues::delete),
        )
        .route(
            "/queues/{queue}/messages",
            get(queues::receive_or_peek)
                .post(queues::send)
                .delete(queues::delete_messages)
                .put(queues::change_visibility),
        )
        .route("/topics", get(topics::list))
        .route(
            "/topics/{topic}",
            get(topics::get_attributes)
                .put(topics::create_or_set)
                .delete(topics::delete),
        )
        .route(
            "/topics/{topic}/messages",
            axum::routing::post(topics::publish),
        )
        .route(
            "/topics/{topic}/subscriptions",
            get(topics::list_subscriptions),
        )
        .route(
            "/topics/{topic}/subscriptions/{name}",
            get(topics::get_subscription)
                .put(topics::subscribe_or_set)
                .delete(topics::unsubscribe),
        )
        .layer(DefaultBodyLimit::max(super::MAX_REQUEST_BYTES))
        .layer(axum::middleware::map_response(add_request_id))
}

/// Every MNS answer carries `x-mns-request-id` (errors set their own, matching the document).
async fn add_request_id(mut r: axum::response::Response) -> axum::response::Response {
    if !r.headers().contains_key("x-mns-request-id") {
        if let Ok(v) = HeaderValue::from_str(&error::request_id()) {
            r.headers_mut().insert("x-mns-request-id", v);
        }
    }
    r
}

/// `http://{Host}`: the base of the URLs MNS answers carry (QueueURL, Location, ...).
/// `x-mns-with-meta: true` on a List request: answer full attributes, not just names.
fn with_meta(headers: &HeaderMap) -> bool {
    headers
        .get("x-mns-with-meta")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// A header number (`x-mns-ret-number`), naming the header on error.
fn header_number(headers: &HeaderMap, name: &str) -> Result<Option<usize>, MnsError> {
    match headers.get(name).and_then(|v| v.to_str().ok()) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| MnsError::invalid(name, format!("`{v}` is not a number"))),
    }
}

/// The paging of ListQueue / ListTopic / ListSubscriptionByTopic: `x-mns-prefix`,
/// `x-mns-marker` (the first name of the page) and `x-mns-ret-number` (1–1000, default 1000).
/// Returns the page's items sorted by `name` and the next marker.
fn page<I>(
    mut items: Vec<I>,
    name: impl Fn(&I) -> &str,
    headers: &HeaderMap,
) -> Result<(Vec<I>, Option<String>), MnsError> {
    let text = |h: &str| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let prefix = text("x-mns-prefix");
    let marker = text("x-mns-marker");
    let n = header_number(headers, "x-mns-ret-number")?.unwrap_or(1000);
    if !(1..=1000).contains(&n) {
        return Err(MnsError::invalid(
            "x-mns-ret-number",
            format!("{n} is out of range: 1 to 1000"),
        ));
    }
    items.retain(|i| name(i).starts_with(&prefix) && name(i) >= marker.as_str());
    items.sort_by(|a, b| name(a).cmp(name(b)));
    let next = items.get(n).map(|i| name(i).to_owned());
    items.truncate(n);
    Ok((items, next))
}

/// `True`/`False` of `LoggingEnabled`: sluice has no MNS logging, so only `False` is accepted.
fn check_logging(v: &Option<String>) -> Result<(), MnsError> {
    match v.as_deref().map(str::trim) {
        None | Some("") => Ok(()),
        Some(s) if s.eq_ignore_ascii_case("false") => Ok(()),
        Some(s) if s.eq_ignore_ascii_case("true") => Err(MnsError::invalid(
            "LoggingEnabled",
            "sluice has no MNS access logging; use the server's log and /metrics instead",
        )),
        Some(s) => Err(MnsError::invalid(
            "LoggingEnabled",
            format!("`{s}`: use True or False"),
        )),
    }
}

/// Milliseconds to the seconds MNS uses for create and modify times.
fn seconds(ms: u64) -> u64 {
    ms / 1000
}
