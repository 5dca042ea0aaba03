//! Access-key checks for every request except `/healthz` and the push signing certificates
//! (`GET /v1/signing-certificates/{id}.pem`, fetched by the endpoints that verify pushes): who
//! is calling (`Authorization: Bearer ID:SECRET`, or the MNS signature `Authorization: MNS
//! ID:SIGNATURE`) and whether the key's policy allows what the request does.
//!
//! The MNS signature is verified as Alibaba Cloud MNS does and as its SDKs build it
//! (`aliyun-mns-sdk`, `MNSClient.get_signature`): base64 of HMAC-SHA1, keyed by the secret, over
//!
//! ```text
//! METHOD \n content-md5 \n content-type \n date \n
//! x-mns-*:value \n ...   (lower-case names, sorted)
//! path?query             (as sent)
//! ```
//!
//! A `Date` more than 15 minutes from the server's clock is refused (a captured request cannot
//! be replayed later), and a request with a body must carry `Content-MD5` and match it (the
//! signature covers the digest, the digest covers the body). An unknown key id and a wrong
//! secret or signature get the same answer, so answers do not tell which key ids exist. Errors
//! come back in the face of the request: MNS XML for `/queues/...` and `/topics/...`, the JSON
//! error shape for `/v1/...`.
//!
//! Keys are looked up in memory ([`KeyRing`], loaded at start and changed only by the key API
//! after its commit), so a request costs no database read.
//!
//! The web console is a third way in: a browser signed in with an access key carries a session
//! cookie ([`super::console::session`]) that resolves to that same key, so the console can do
//! exactly what the key's policy allows and nothing more. A state-changing request on a session
//! must echo the session's CSRF token in `X-CSRF-Token` (a cross-site form cannot set headers).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};

use super::console::session::{self, Sessions};
use super::console::ConsoleSession;
use super::error::ApiError;
use super::json::QueryArgs;
use super::mns::MnsQuery;
use super::queues::ReceiveQuery;
use crate::api::policy::{AccessKey, Permission, Resource};

/// Largest clock difference accepted in an MNS-signed request's `Date` (MNS: 15 minutes).
pub const MAX_DATE_SKEW_SECONDS: i64 = 15 * 60;

/// Largest body read to check its `Content-MD5`: the API's own request limit.
const MAX_DIGEST_BODY_BYTES: usize = super::MAX_REQUEST_BYTES;

/// The access keys by id, in memory.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: RwLock<HashMap<String, Arc<AccessKey>>>,
    /// Console sign-ins, each standing for one of the keys above.
    sessions: Sessions,
}

impl KeyRing {
    /// A ring holding `keys` (all keys of the store, read at start), whose console sign-ins
    /// are capped by `sessions`.
    pub fn new(keys: Vec<AccessKey>, sessions: session::SessionLimits) -> KeyRing {
        let ring = KeyRing {
            keys: RwLock::default(),
            sessions: Sessions::new(sessions),
        };
        for k in keys {
            ring.insert(k);
        }
        ring
    }

    /// The key with this id.
    pub fn get(&self, id: &str) -> Option<Arc<AccessKey>> {
        self.keys.read().ok()?.get(id).cloned()
    }

    /// Adds (or replaces) a key after its commit.
    pub fn insert(&self, key: AccessKey) {
        if let Ok(mut keys) = self.keys.write() {
            keys.insert(key.id.clone(), Arc::new(key));
        }
    }

    /// Forgets a key after its deletion committed, and signs out its console sessions.
    pub fn remove(&self, id: &str) {
        if let Ok(mut keys) = self.keys.write() {
            keys.remove(id);
        }
        self.sessions.remove_key(id);
    }

    /// Makes the ring hold exactly `keys` (the store's keys after another process changed
    /// them): new and changed keys are taken, and a key gone from the store is revoked at
    /// once, its console sessions signed out.
    pub fn replace_all(&self, keys: Vec<AccessKey>) {
        let wanted: HashMap<String, AccessKey> =
            keys.into_iter().map(|k| (k.id.clone(), k)).collect();
        let gone: Vec<String> = self
            .keys
            .read()
            .map(|held| {
                held.keys()
                    .filter(|id| !wanted.contains_key(*id))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for id in gone {
            self.remove(&id);
        }
        for (_, key) in wanted {
            if self.get(&key.id).is_none_or(|held| *held != key) {
                self.insert(key);
            }
        }
    }

    /// The console's signed-in sessions (kept beside the keys they stand for, so deleting a
    /// key ends them).
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The key with this id if `secret` is its secret (the console's sign-in check).
    pub fn verify(&self, id: &str, secret: &str) -> Option<Arc<AccessKey>> {
        self.get(id)
            .filter(|k| constant_time_eq(secret.as_bytes(), k.secret.as_bytes()))
    }
}

/// Why a request was refused, with the MNS error code of each case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// HTTP status.
    pub status: StatusCode,
    /// MNS error code.
    pub code: &'static str,
    /// What is wrong, for the person reading it.
    pub message: String,
}

impl Denied {
    /// The refusal as a `/v1/` error naming the request field that named the resource.
    pub fn at(self, field: &str) -> ApiError {
        ApiError {
            status: self.status,
            code: self.code,
            message: self.message,
            field: Some(field.to_string()),
        }
    }
}

fn denied(status: StatusCode, code: &'static str, message: impl Into<String>) -> Denied {
    Denied {
        status,
        code,
        message: message.into(),
    }
}

/// The authenticated key of a request, put in its extensions for handlers that check more
/// (a subscription's target queue).
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<AccessKey>);

/// True for paths of the MNS face.
pub fn is_mns_path(path: &str) -> bool {
    path == "/queues"
        || path == "/topics"
        || path.starts_with("/queues/")
        || path.starts_with("/topics/")
}

/// The middleware: authenticates, checks the policy, then runs the request.
pub async fn check(State(keys): State<Arc<KeyRing>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let open_certificate = req.method() == Method::GET && super::signing_certs::is_open_path(&path);
    if path == "/healthz" || super::console::is_open_path(&path) || open_certificate {
        return next.run(req).await;
    }
    let mns = is_mns_path(&path);
    let console_page = req.method() == Method::GET && super::console::is_page_path(&path);
    match authorize(&keys, req).await {
        Ok(req) => next.run(req).await,
        // A console page without a session: the browser goes to the sign-in page.
        Err(_) if console_page => super::console::to_sign_in(),
        Err(d) if mns => {
            crate::api::mns::error::denied(d.status, d.code, d.message).into_response()
        }
        Err(d) => {
            let mut r = ApiError {
                status: d.status,
                code: d.code,
                message: d.message,
                field: None,
            }
            .into_response();
            if d.status == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer"),
                );
            }
            r
        }
    }
}

/// Resolves a console session cookie to its key; state-changing requests must carry the
/// session's CSRF token.
fn authorize_session(keys: &KeyRing, req: &mut Request) -> Result<Arc<AccessKey>, Denied> {
    let signed_out = || {
        denied(
            StatusCode::UNAUTHORIZED,
            "MissingAuthorizationHeader",
            "this endpoint needs an access key: send `Authorization: Bearer ID:SECRET` or an \
             MNS signature (create keys with `sluice key create`), or sign in to the console",
        )
    };
    let token = session::token_from_cookies(req.headers()).ok_or_else(signed_out)?;
    let s = keys.sessions.get(&token).ok_or_else(signed_out)?;
    let key = keys.get(&s.key_id).ok_or_else(signed_out)?;
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        let given = header(req.headers(), session::CSRF_HEADER);
        if !constant_time_eq(given.as_bytes(), s.csrf.as_bytes()) {
            return Err(denied(
                StatusCode::FORBIDDEN,
                "InvalidCsrfToken",
                "a console request that changes something must carry the session's \
                 X-CSRF-Token header (reload the page)",
            ));
        }
    }
    req.extensions_mut().insert(ConsoleSession {
        token,
        csrf: s.csrf,
    });
    Ok(key)
}

async fn authorize(keys: &KeyRing, mut req: Request) -> Result<Request, Denied> {
    if req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .is_none()
    {
        let key = authorize_session(keys, &mut req)?;
        return check_policy(key, req);
    }
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            denied(
                StatusCode::UNAUTHORIZED,
                "MissingAuthorizationHeader",
                "this endpoint needs an access key: send `Authorization: Bearer ID:SECRET` or an \
                 MNS signature (create keys with `sluice key create`)",
            )
        })?
        .to_str()
        .map_err(|_| invalid_header())?
        .to_string();
    let (scheme, credentials) = header.split_once(' ').ok_or_else(invalid_header)?;
    let (id, proof) = credentials
        .trim()
        .split_once(':')
        .ok_or_else(invalid_header)?;
    // An unknown key takes the same steps as a known one (a stand-in secret, the same HMAC), and
    // a stale Date is refused whether the key exists or not: no answer or timing says which.
    let key = keys.get(id);
    let secret = key
        .as_ref()
        .map_or(UNKNOWN_KEY_SECRET, |k| k.secret.as_str());
    let proven = match scheme {
        "Bearer" => constant_time_eq(proof.as_bytes(), secret.as_bytes()),
        "MNS" => {
            check_date(req.headers())?;
            let expected = mns_signature(
                secret,
                req.method(),
                req.headers(),
                req.uri().path_and_query().map_or("/", |p| p.as_str()),
            );
            constant_time_eq(proof.as_bytes(), expected.as_bytes())
        }
        _ => return Err(invalid_header()),
    };
    let Some(key) = key.filter(|_| proven) else {
        return Err(bad_credentials());
    };
    let req = if scheme == "MNS" {
        check_body_digest(req).await?
    } else {
        req
    };
    check_policy(key, req)
}

/// Whether the key's policy allows what the request does.
fn check_policy(key: Arc<AccessKey>, mut req: Request) -> Result<Request, Denied> {
    let peek = match super::console::policy(req.uri().path(), req.uri().query()) {
        // A console page: any signed-in key may see the page; its data comes from `/v1/`.
        Some(None) => {
            req.extensions_mut().insert(Caller(key));
            return Ok(req);
        }
        Some(Some(_)) => false,
        None => parse_query_once(&mut req)?,
    };
    let (resource, action) = match super::console::policy(req.uri().path(), req.uri().query()) {
        Some(Some(needs)) => needs,
        _ => classify(req.method(), req.uri().path(), peek),
    };
    if let Some(d) = deny(&key, &resource, action) {
        return Err(d);
    }
    req.extensions_mut().insert(Caller(key));
    Ok(req)
}

/// Parses the query of a request whose needed permission depends on it, leaves the parse in
/// the request's extensions for the handler (one parse, so the check and the handler cannot
/// disagree about it) and says whether the request only peeks. Every MNS request's query is
/// parsed here (a repeated parameter is refused on that face); on `/v1/`, a message read's.
fn parse_query_once(req: &mut Request) -> Result<bool, Denied> {
    let refused = |status, code, message| denied(status, code, message);
    if is_mns_path(req.uri().path()) {
        let q =
            MnsQuery::parse(req.uri().query()).map_err(|e| refused(e.status, e.code, e.message))?;
        let peek = q.peek_only();
        req.extensions_mut().insert(q);
        return Ok(peek);
    }
    let segs: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
    if req.method() == Method::GET && matches!(segs.as_slice(), ["v1", "queues", _, "messages"]) {
        let q = QueryArgs::<ReceiveQuery>::parse(req.uri())
            .map_err(|e| refused(e.status, e.code, e.message))?;
        let peek = q.0.peek;
        req.extensions_mut().insert(q);
        return Ok(peek);
    }
    Ok(false)
}

/// A 403 naming the key, the action and the resource when `key` may not do `action` there.
fn deny(key: &AccessKey, resource: &Resource<'_>, action: Permission) -> Option<Denied> {
    if key.allows(resource, action) {
        return None;
    }
    let what = match resource {
        Resource::Queue(Some(n)) => format!("{} on queue `{n}`", action.as_str()),
        Resource::Topic(Some(n)) => format!("{} on topic `{n}`", action.as_str()),
        Resource::Queue(None) => format!("{} on all queues", action.as_str()),
        Resource::Topic(None) => format!("{} on all topics", action.as_str()),
        Resource::Admin => "this endpoint (admin keys only)".to_string(),
    };
    Some(denied(
        StatusCode::FORBIDDEN,
        "AccessDenied",
        format!("access key `{}` ({}) may not {what}", key.id, key.name),
    ))
}

/// Stands in for the secret of an unknown key, so its check takes the same steps as a known
/// key's (the request is refused whatever it matches).
const UNKNOWN_KEY_SECRET: &str = "stand-in secret of an unknown access key";

/// The one answer for an unknown key id and a wrong secret or signature, on both faces: telling
/// them apart (or quoting the id) would confirm which key ids exist.
fn bad_credentials() -> Denied {
    denied(
        StatusCode::FORBIDDEN,
        "SignatureDoesNotMatch",
        "the access key id is unknown or its secret is wrong (an MNS signature is made with the \
         secret): check both (`sluice key list`; the MNS string-to-sign is in README)",
    )
}

fn invalid_header() -> Denied {
    denied(
        StatusCode::BAD_REQUEST,
        "InvalidAuthorizationHeader",
        "Authorization must be `Bearer ID:SECRET` or `MNS ID:SIGNATURE`",
    )
}

/// Compares secrets without an early exit, so timing does not reveal how much matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The MNS signature of a request: base64 HMAC-SHA1 of its string-to-sign.
pub fn mns_signature(secret: &str, method: &Method, headers: &HeaderMap, resource: &str) -> String {
    let mut mns_headers: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-mns-"))
        .map(|(k, v)| (k.as_str(), v.to_str().unwrap_or("")))
        .collect();
    mns_headers.sort();
    let mut to_sign = format!(
        "{}\n{}\n{}\n{}\n",
        method.as_str(),
        header(headers, "content-md5"),
        header(headers, "content-type"),
        header(headers, "date"),
    );
    for (k, v) in mns_headers {
        to_sign.push_str(k);
        to_sign.push(':');
        to_sign.push_str(v);
        to_sign.push('\n');
    }
    to_sign.push_str(resource);
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn check_date(headers: &HeaderMap) -> Result<(), Denied> {
    let date = header(headers, "date");
    if date.is_empty() {
        return Err(denied(
            StatusCode::BAD_REQUEST,
            "MissingDateHeader",
            "an MNS-signed request needs a Date header (RFC 1123, GMT)",
        ));
    }
    let at = chrono::DateTime::parse_from_rfc2822(date).map_err(|_| {
        denied(
            StatusCode::BAD_REQUEST,
            "InvalidDateHeader",
            format!("Date `{date}` is not an RFC 1123 date like `Thu, 26 Nov 2026 10:00:00 GMT`"),
        )
    })?;
    let skew = (chrono::Utc::now().timestamp() - at.timestamp()).abs();
    if skew > MAX_DATE_SKEW_SECONDS {
        return Err(denied(
            StatusCode::REQUEST_TIMEOUT,
            "TimeExpired",
            format!(
                "Date `{date}` is {skew} s away from the server's clock (at most \
                 {MAX_DATE_SKEW_SECONDS} s): check the client's clock"
            ),
        ));
    }
    Ok(())
}

/// Checks the body of an MNS-signed request against its `Content-MD5`. The signature covers the
/// digest and only the digest covers the body, so a request with a body must carry one (the
/// official SDK sends it with every body), or a captured request could be replayed with another
/// body while its `Date` is fresh. The SDK sends base64 of the hex digest; the standard form
/// (base64 of the raw digest) is accepted too.
async fn check_body_digest(req: Request) -> Result<Request, Denied> {
    use axum::body::HttpBody as _;
    let given = header(req.headers(), "content-md5").to_string();
    if given.is_empty() && req.body().size_hint().exact() == Some(0) {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_DIGEST_BODY_BYTES)
        .await
        .map_err(|_| {
            denied(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLarge",
                format!("the request body is over {MAX_DIGEST_BODY_BYTES} bytes"),
            )
        })?;
    if given.is_empty() {
        if bytes.is_empty() {
            return Ok(Request::from_parts(parts, Body::from(bytes)));
        }
        return Err(denied(
            StatusCode::BAD_REQUEST,
            "MissingContentMD5",
            "an MNS-signed request with a body must carry Content-MD5 (base64 of the body's MD5) \
             and sign it, so the signature covers the body",
        ));
    }
    let digest = Md5::digest(&bytes);
    let b64 = &base64::engine::general_purpose::STANDARD;
    let sdk_form = b64.encode(hex::encode(digest));
    let standard = b64.encode(digest);
    if given != sdk_form && given != standard {
        return Err(denied(
            StatusCode::BAD_REQUEST,
            "InvalidDigest",
            "Content-MD5 does not match the request body",
        ));
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// What a request does: the queue or topic it touches and the action, by method and path;
/// `peek` is what the parsed query says (a peek needs `read`, a receive `consume`). Anything that
/// is not a queue or topic operation is [`Resource::Admin`].
pub fn classify<'a>(method: &Method, path: &'a str, peek: bool) -> (Resource<'a>, Permission) {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let segs: &[&str] = match segs.first() {
        Some(&"v1") => &segs[1..],
        _ => &segs[..],
    };
    let read_or_manage = if method == Method::GET || method == Method::HEAD {
        Permission::Read
    } else {
        Permission::Manage
    };
    match segs {
        ["queues"] => (Resource::Queue(None), Permission::Read),
        ["queues", q] => (Resource::Queue(Some(q)), read_or_manage),
        ["queues", q, "messages", ..] => {
            let action = if method == Method::POST && segs.len() == 3 {
                Permission::Send
            } else if method == Method::GET && segs.len() == 3 && peek {
                Permission::Read
            } else {
                Permission::Consume
            };
            (Resource::Queue(Some(q)), action)
        }
        ["topics"] => (Resource::Topic(None), Permission::Read),
        ["topics", t] => (Resource::Topic(Some(t)), read_or_manage),
        ["topics", t, "messages"] => (Resource::Topic(Some(t)), Permission::Send),
        ["topics", t, "subscriptions", ..] => (Resource::Topic(Some(t)), read_or_manage),
        _ => (Resource::Admin, Permission::Manage),
    }
}

/// A 403 for a handler's own policy check of a second queue a request names (a subscription's
/// target or dead-letter queue, a queue's dead-letter queue): each queue named is checked with
/// the permission the operation needs on it.
pub fn deny_queue(caller: &Caller, queue: &str, action: Permission) -> Option<Denied> {
    deny(&caller.0, &Resource::Queue(Some(queue)), action)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signature of a request built exactly as `aliyun-mns-sdk` 1.3.0 builds it (values
    /// computed with the SDK's `get_signature`).
    #[test]
    fn signature_matches_the_sdk_string_to_sign() {
        let mut h = HeaderMap::new();
        h.insert(
            "content-md5",
            "ZDQxZDhjZDk4ZjAwYjIwNGU5ODAwOTk4ZWNmODQyN2U="
                .parse()
                .unwrap(),
        );
        h.insert("content-type", "text/xml;charset=UTF-8".parse().unwrap());
        h.insert("date", "Thu, 26 Nov 2026 23:50:00 GMT".parse().unwrap());
        h.insert("x-mns-version", "2015-06-06".parse().unwrap());
        h.insert("host", "127.0.0.1:8080".parse().unwrap());
        let sig = mns_signature("secret", &Method::PUT, &h, "/queues/q?metaoverride=true");
        assert_eq!(sig, SDK_SIGNATURE);
    }

    /// Signature computed by the SDK for the request above (see the test).
    const SDK_SIGNATURE: &str = "aquwuzYU7qBX4v8Xxi1o2NfOz4U=";

    /// Paths of both faces map to the queue or topic and the action the policy checks.
    #[test]
    fn requests_classify_by_method_and_path() {
        let c = |m: Method, p: &'static str, peek: bool| classify(&m, p, peek);
        assert_eq!(
            c(Method::GET, "/queues", false),
            (Resource::Queue(None), Permission::Read)
        );
        assert_eq!(
            c(Method::GET, "/queues/q/messages", false),
            (Resource::Queue(Some("q")), Permission::Consume)
        );
        assert_eq!(
            c(Method::GET, "/queues/q/messages", true),
            (Resource::Queue(Some("q")), Permission::Read)
        );
        assert_eq!(
            c(Method::POST, "/v1/queues/q/messages", false),
            (Resource::Queue(Some("q")), Permission::Send)
        );
        assert_eq!(
            c(Method::POST, "/v1/queues/q/messages/delete", true),
            (Resource::Queue(Some("q")), Permission::Consume)
        );
        assert_eq!(
            c(Method::PUT, "/topics/t/subscriptions/s", false),
            (Resource::Topic(Some("t")), Permission::Manage)
        );
        assert_eq!(
            c(Method::POST, "/topics/t/messages", false),
            (Resource::Topic(Some("t")), Permission::Send)
        );
        assert_eq!(c(Method::GET, "/v1/rules", false).0, Resource::Admin);
        assert_eq!(c(Method::GET, "/v1/keys", false).0, Resource::Admin);
        assert_eq!(
            c(Method::POST, "/v1/signing-certificates/rotate", false).0,
            Resource::Admin
        );
        assert_eq!(c(Method::GET, "/metrics", false).0, Resource::Admin);
    }

    fn ring_with(grant: &str) -> (KeyRing, AccessKey) {
        let key = AccessKey::generate(
            "k",
            vec![crate::api::policy::Allow::parse(grant).unwrap()],
            0,
        );
        (KeyRing::new(vec![key.clone()], Default::default()), key)
    }

    fn request(method: Method, path: &str, cookie: Option<&str>, csrf: Option<&str>) -> Request {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(c) = cookie {
            b = b.header("cookie", format!("{}={c}", session::COOKIE_NAME));
        }
        if let Some(t) = csrf {
            b = b.header(session::CSRF_HEADER, t);
        }
        b.body(Body::empty()).unwrap()
    }

    /// Method, path, session cookie, CSRF header, and the expected outcome.
    type Case<'a> = (
        Method,
        &'a str,
        &'a str,
        Option<&'a str>,
        Result<(), &'static str>,
    );

    /// What the middleware makes of one request with the session cookie `cookie` and the CSRF
    /// header `csrf`: `Ok(())` or the refusal's code.
    async fn outcome(
        ring: &KeyRing,
        method: Method,
        path: &str,
        cookie: &str,
        csrf: Option<&str>,
    ) -> Result<(), &'static str> {
        authorize(ring, request(method, path, Some(cookie), csrf))
            .await
            .map(|_| ())
            .map_err(|d| d.code)
    }

    /// A console session stands for its key: reads pass, writes need the CSRF token, the key's
    /// policy still applies, and deleting the key ends the session.
    #[tokio::test]
    async fn a_session_cookie_is_the_key_with_csrf_on_writes() {
        let (ring, key) = ring_with("queues/q*:read,send");
        let (token, s) = ring.sessions().create(&key.id).unwrap();
        let post = Method::POST;
        let send = "/v1/queues/q1/messages";
        let cases: [Case; 8] = [
            (Method::GET, "/v1/queues/q1", &token, None, Ok(())),
            (post.clone(), send, &token, None, Err("InvalidCsrfToken")),
            (
                post.clone(),
                send,
                &token,
                Some("bad"),
                Err("InvalidCsrfToken"),
            ),
            (post.clone(), send, &token, Some(&s.csrf), Ok(())),
            // The policy still applies: no admin endpoints, no other queues.
            (Method::GET, "/v1/rules", &token, None, Err("AccessDenied")),
            (
                Method::GET,
                "/console/history",
                &token,
                None,
                Err("AccessDenied"),
            ),
            (
                Method::GET,
                "/console/events/queue/q1",
                &token,
                None,
                Ok(()),
            ),
            (
                Method::GET,
                "/v1/queues/q1",
                "forged",
                None,
                Err("MissingAuthorizationHeader"),
            ),
        ];
        for (method, path, cookie, csrf, want) in cases {
            let got = outcome(&ring, method.clone(), path, cookie, csrf).await;
            assert_eq!(got, want, "{method} {path} cookie={cookie} csrf={csrf:?}");
        }
        ring.remove(&key.id);
        assert_eq!(
            outcome(&ring, Method::GET, "/v1/queues/q1", &token, None).await,
            Err("MissingAuthorizationHeader")
        );
    }
}
