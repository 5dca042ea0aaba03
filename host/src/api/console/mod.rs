//! The web console under `/console/`, served by the same binary on the HTTP port (`/` redirects
//! there). Server-rendered HTML pages (one per step of the flow) and one small hand-written
//! JavaScript file that fills them from the `/v1/` JSON API with the session cookie and the CSRF
//! token — so the console can do exactly what the signed-in key's policy allows, checked by the
//! same [`super::auth`] middleware as every other API call.
//!
//! - [`session`]: sign-in sessions, the cookie, the CSRF token.
//! - [`pages`]: the HTML of each page.
//! - [`assets`]: the embedded CSS and JavaScript.
//! - [`tail`]: the live tail (server-sent events).
//! - [`history`]: the in-process sampler behind the 15-minute charts.
//!
//! Open without a key: `/`, the sign-in page and the static assets.

pub mod assets;
pub mod history;
pub mod pages;
pub mod session;
pub mod tail;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router};
use serde::Deserialize;

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use crate::api::policy::{Permission, Resource};

/// What the console's handlers reach: the API's state and the sampled history.
#[derive(Clone)]
pub struct ConsoleState {
    /// The API's state (store, rules, counters, keys).
    pub app: AppState,
    /// The last 15 minutes of counters.
    pub history: Arc<history::History>,
}

/// The console session of a request, put in its extensions by the auth middleware (the page
/// embeds its CSRF token for the JavaScript).
#[derive(Debug, Clone)]
pub struct ConsoleSession {
    /// The cookie token (to sign out).
    pub token: String,
    /// The CSRF token.
    pub csrf: String,
}

/// Paths anyone may fetch: the redirect at `/`, the sign-in page, the static assets.
pub fn is_open_path(path: &str) -> bool {
    path == "/" || path == "/console/login" || path.starts_with("/console/assets/")
}

/// Console HTML pages: a request without a session is sent to the sign-in page.
pub fn is_page_path(path: &str) -> bool {
    path == "/console"
        || (path.starts_with("/console/")
            && !path.starts_with("/console/events/")
            && path != "/console/history")
}

/// What a console path needs beyond a signed-in key: `None` for a non-console path (the API's
/// own classification applies), `Some(None)` for pages any signed-in key may see (their data
/// comes from `/v1/`, checked there), `Some(Some(..))` for console data endpoints.
pub fn policy<'a>(
    path: &'a str,
    _query: Option<&str>,
) -> Option<Option<(Resource<'a>, Permission)>> {
    let rest = path.strip_prefix("/console")?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let segs: Vec<&str> = rest.trim_matches('/').split('/').collect();
    Some(match segs.as_slice() {
        ["events", "queue", q] => Some((Resource::Queue(Some(q)), Permission::Read)),
        // Tails of all device traffic or a rule's output, and system-wide history: admin.
        ["events", ..] | ["history"] => Some((Resource::Admin, Permission::Manage)),
        _ => None,
    })
}

/// A 303 to the sign-in page.
pub fn to_sign_in() -> Response {
    Redirect::to("/console/login").into_response()
}

/// The console's routes (guarded by the API's auth middleware, which the caller adds).
pub fn router(app: AppState) -> Router<AppState> {
    let state = ConsoleState {
        history: history::History::start(app.clone()),
        app,
    };
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/login", get(sign_in_page).post(sign_in))
        .route("/console/logout", post(sign_out))
        .route("/console/assets/{file}", get(assets::serve))
        .route("/console/history", get(history_json))
        .route("/console/events/topic", get(tail::topic))
        .route("/console/events/rule/{name}", get(tail::rule))
        .route("/console/events/queue/{queue}", get(tail::queue))
        .route("/console/", get(page))
        .route("/console/{page}", get(page))
        .with_state(state)
}

async fn sign_in_page() -> Response {
    pages::sign_in(None, StatusCode::OK)
}

/// The sign-in form.
#[derive(Debug, Deserialize)]
pub struct SignInForm {
    /// The AccessKeyId.
    pub key_id: String,
    /// Its secret.
    pub secret: String,
}

/// True when the request came from another site: its `Origin` names a different host, or the
/// browser says so in `Sec-Fetch-Site`. (Sign-in has no session yet, so no CSRF token; this
/// stops a foreign page from signing the browser in with the attacker's key.)
fn cross_site(headers: &HeaderMap) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if get("sec-fetch-site").is_some_and(|s| s == "cross-site" || s == "same-site") {
        return true;
    }
    match (get("origin"), get("host")) {
        (Some(origin), Some(host)) => {
            let o = origin
                .trim_start_matches("http://")
                .trim_start_matches("https://");
            o != host
        }
        (Some(_), None) => true,
        _ => false,
    }
}

async fn sign_in(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    if cross_site(&headers) {
        return pages::sign_in(
            Some("sign-in from another site refused"),
            StatusCode::FORBIDDEN,
        );
    }
    let keys = &state.app.keys;
    let Some(key) = keys.verify(form.key_id.trim(), form.secret.trim()) else {
        return pages::sign_in(
            Some("that access key id and secret do not match a key of this server"),
            StatusCode::UNAUTHORIZED,
        );
    };
    let token = match keys.sessions().create(&key.id) {
        Ok((token, _)) => token,
        Err(refused) => {
            tracing::warn!(key = %key.id, "console sign-in refused: {refused}");
            return pages::sign_in(Some(&refused.to_string()), StatusCode::TOO_MANY_REQUESTS);
        }
    };
    tracing::info!(key = %key.id, "console sign-in");
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                session::set_cookie(&token, state.app.https),
            ),
            (header::LOCATION, "/console/".to_string()),
        ],
    )
        .into_response()
}

async fn sign_out(
    State(state): State<ConsoleState>,
    s: Option<Extension<ConsoleSession>>,
) -> Response {
    if let Some(Extension(s)) = s {
        state.app.keys.sessions().remove(&s.token);
    }
    (
        [(header::SET_COOKIE, session::clear_cookie(state.app.https))],
        Json(serde_json::json!({"signed_out": true})),
    )
        .into_response()
}

async fn history_json(State(state): State<ConsoleState>) -> Result<Response, ApiError> {
    let (now, rules) = history::take(&state.app).await?;
    Ok(Json(state.history.view(now, rules)).into_response())
}

async fn page(req: Request) -> Response {
    let name = req
        .uri()
        .path()
        .trim_start_matches("/console")
        .trim_matches('/')
        .to_string();
    let (Some(s), Some(caller)) = (
        req.extensions().get::<ConsoleSession>(),
        req.extensions().get::<Caller>(),
    ) else {
        // Signed in with a Bearer key rather than the console: the pages need a session.
        return to_sign_in();
    };
    match pages::Page::from_path(&name) {
        Some(p) => pages::render(p, &s.csrf, &caller.0.id, caller.0.is_admin()),
        None => (
            StatusCode::NOT_FOUND,
            pages::not_found(&s.csrf, &caller.0.id, caller.0.is_admin()),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the redirect, the sign-in page and the assets are open; data endpoints need the
    /// admin or the queue's read grant; pages need any signed-in key.
    #[test]
    fn console_paths_are_classified() {
        assert!(is_open_path("/console/login"));
        assert!(is_open_path("/console/assets/console.js"));
        assert!(!is_open_path("/console/"));
        assert!(!is_open_path("/console/rules"));
        assert_eq!(policy("/v1/queues", None), None);
        assert_eq!(policy("/consolex", None), None);
        assert_eq!(policy("/console/rules", None), Some(None));
        assert_eq!(
            policy("/console/events/queue/q1", None),
            Some(Some((Resource::Queue(Some("q1")), Permission::Read)))
        );
        assert_eq!(
            policy("/console/history", None),
            Some(Some((Resource::Admin, Permission::Manage)))
        );
        assert!(is_page_path("/console/queues"));
        assert!(!is_page_path("/console/history"));
    }

    /// A sign-in posted from another origin is refused; one from the console's own is not.
    #[test]
    fn cross_site_sign_in_is_detected() {
        let mut h = HeaderMap::new();
        h.insert("host", "127.0.0.1:8080".parse().unwrap());
        assert!(!cross_site(&h));
        h.insert("origin", "http://127.0.0.1:8080".parse().unwrap());
        assert!(!cross_site(&h));
        h.insert("origin", "http://evil.example".parse().unwrap());
        assert!(cross_site(&h));
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(cross_site(&h));
    }
}
