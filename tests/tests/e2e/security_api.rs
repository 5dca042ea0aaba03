//! Security of the HTTP API faces against the real binary: each test replays the request a
//! review used to get past a check (see `docs/security.md`) and expects the refusal.

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method};
use base64::Engine;
use serde_json::{json, Value};

use crate::common::{Api, Sluice};

/// Creates a key allowed `allow` with the admin key; returns `ID:SECRET`.
async fn create_key(api: &Api, name: &str, allow: &[&str]) -> String {
    let (status, k) = api
        .post("/v1/keys", &json!({"name": name, "allow": allow}))
        .await;
    assert_eq!(status, 201, "{k}");
    format!(
        "{}:{}",
        k["id"].as_str().unwrap(),
        k["secret"].as_str().unwrap()
    )
}

/// A request to `sluice` with `Authorization: Bearer key`.
fn as_key(sluice: &Sluice, key: &str, method: Method, path: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .request(method, format!("{}{path}", sluice.http))
        .bearer_auth(key)
}

/// Sends `r`; returns the status and the body text.
async fn text(r: reqwest::RequestBuilder) -> (u16, String) {
    let r = r.send().await.expect("request");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// Sends `r`; returns the status and the body as JSON.
async fn json_of(r: reqwest::RequestBuilder) -> (u16, Value) {
    let (status, body) = text(r).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The text of `<tag>` in an MNS document.
fn element<'a>(doc: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let start = doc.find(&open).map(|i| i + open.len()).unwrap_or(0);
    let end = doc[start..]
        .find(&format!("</{tag}>"))
        .map_or(start, |i| start + i);
    &doc[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_key_cannot_receive_through_either_face() {
    // `queues/q:read` may peek but not receive: `?peek=true` (a native name the MNS handler
    // ignores) and a repeated `peekonly` used to pass the check as a peek and then receive,
    // hiding the message and raising its dequeue count.
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = sluice.api();
    assert_eq!(api.put("/v1/queues/q", &json!({})).await.0, 201);
    let (status, v) = api
        .post("/v1/queues/q/messages", &json!({"body": "kept"}))
        .await;
    assert_eq!(status, 201, "{v}");
    let reader = create_key(&api, "reader", &["queues/q:read"]).await;
    let get = |path: &str| text(as_key(&sluice, &reader, Method::GET, path));

    let (status, body) = get("/queues/q/messages?peek=true").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(element(&body, "Code"), "AccessDenied", "{body}");
    assert!(body.contains("consume on queue `q`"), "{body}");
    for query in [
        "peekonly=true&peekonly=false",
        "peekonly=true&PeekOnly=false",
        "numOfMessages=1&numofmessages=2",
    ] {
        let (status, body) = get(&format!("/queues/q/messages?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(element(&body, "Code"), "InvalidArgument", "{body}");
        assert!(body.contains("more than once"), "{query}: {body}");
    }
    let (status, body) = get("/queues/q/messages?peekonly=true").await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("ReceiptHandle"), "{body}");

    // The native face: one parse too; a repeated `peek` is refused, a receive needs consume.
    let (status, v) = json_of(as_key(
        &sluice,
        &reader,
        Method::GET,
        "/v1/queues/q/messages?peek=true&peek=false",
    ))
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "InvalidArgument", "{v}");
    let (status, v) = json_of(as_key(
        &sluice,
        &reader,
        Method::GET,
        "/v1/queues/q/messages",
    ))
    .await;
    assert_eq!(status, 403, "{v}");
    let (status, v) = json_of(as_key(
        &sluice,
        &reader,
        Method::GET,
        "/v1/queues/q/messages?peek=true",
    ))
    .await;
    assert_eq!(status, 200, "{v}");

    // Nothing was received: the message is visible, never dequeued.
    let (status, v) = api.get("/v1/queues/q/messages?peek=true").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["messages"][0]["body"], "kept", "{v}");
    assert_eq!(v["messages"][0]["dequeue_count"], 0, "{v}");
    sluice.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naming_a_second_queue_needs_the_permission_the_operation_needs_on_it() {
    // A dead-letter queue is written to: naming one (an HTTP subscription's, a queue's, on
    // create and on set) needs `send` on it. Dead letters are read from and moved out of that
    // queue: listing them needs `read` on it, redriving them `consume`.
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = sluice.api();
    for q in ["victim", "other"] {
        assert_eq!(api.put(&format!("/v1/queues/{q}"), &json!({})).await.0, 201);
    }
    assert_eq!(api.put("/v1/topics/t", &json!({})).await.0, 201);
    let dlq = json!({"dead_letter_queue": "victim", "max_receive_count": 1});
    let push = json!({"http": "http://127.0.0.1:9/hook", "dead_letter_queue": "victim"});
    let refused = |v: &Value, action: &str| {
        assert_eq!(v["error"]["code"], "AccessDenied", "{v}");
        assert_eq!(v["error"]["field"], "dead_letter_queue", "{v}");
        let message = v["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.contains(&format!("{action} on queue `victim`")),
            "{v}"
        );
    };

    let topic_key = create_key(&api, "topic-only", &["topics/t"]).await;
    let put_sub = |key: &str, name: &str| {
        as_key(
            &sluice,
            key,
            Method::PUT,
            &format!("/v1/topics/t/subscriptions/{name}"),
        )
        .json(&push)
    };
    let (status, v) = json_of(put_sub(&topic_key, "s1")).await;
    assert_eq!(status, 403, "{v}");
    refused(&v, "send");

    let queue_key = create_key(&api, "mine-only", &["queues/mine"]).await;
    let (status, v) =
        json_of(as_key(&sluice, &queue_key, Method::PUT, "/v1/queues/mine").json(&dlq)).await;
    assert_eq!(status, 403, "{v}");
    refused(&v, "send");
    let (status, v) =
        json_of(as_key(&sluice, &queue_key, Method::PUT, "/v1/queues/mine").json(&json!({}))).await;
    assert_eq!(status, 201, "{v}");
    let (status, v) =
        json_of(as_key(&sluice, &queue_key, Method::PATCH, "/v1/queues/mine").json(&dlq)).await;
    assert_eq!(status, 403, "{v}");
    refused(&v, "send");

    // With `send` on the dead-letter queue the same requests pass.
    let both = create_key(&api, "mine-victim", &["queues/mine", "queues/victim:send"]).await;
    let (status, v) =
        json_of(as_key(&sluice, &both, Method::PATCH, "/v1/queues/mine").json(&dlq)).await;
    assert_eq!(status, 200, "{v}");
    let pusher = create_key(&api, "pusher", &["topics/t", "queues/victim:send"]).await;
    let (status, v) = json_of(put_sub(&pusher, "s1")).await;
    assert_eq!(status, 201, "{v}");

    // Dead letters live in `victim`: the topic's grant does not reach them.
    let letters = "/v1/topics/t/subscriptions/s1/dead-letters";
    let redrive = "/v1/topics/t/subscriptions/s1/dead-letters/redrive";
    let topic_reader = create_key(&api, "topic-reader", &["topics/t:read"]).await;
    let (status, v) = json_of(as_key(&sluice, &topic_reader, Method::GET, letters)).await;
    assert_eq!(status, 403, "{v}");
    refused(&v, "read");
    let (status, v) =
        json_of(as_key(&sluice, &topic_key, Method::POST, redrive).json(&json!({}))).await;
    assert_eq!(status, 403, "{v}");
    refused(&v, "consume");
    let keeper = create_key(&api, "keeper", &["topics/t", "queues/victim:read,consume"]).await;
    let (status, v) = json_of(as_key(&sluice, &keeper, Method::GET, letters)).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) =
        json_of(as_key(&sluice, &keeper, Method::POST, redrive).json(&json!({}))).await;
    assert_eq!(status, 200, "{v}");

    // A queue subscription still needs `send` on its queue.
    let (status, v) = json_of(
        as_key(
            &sluice,
            &topic_key,
            Method::PUT,
            "/v1/topics/t/subscriptions/s2",
        )
        .json(&json!({"queue": "other"})),
    )
    .await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"]["field"], "queue", "{v}");
    sluice.stop();
}

/// XML 1.0 `Char`.
fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_attributes_xml_cannot_carry_reach_mns_consumers_intact() {
    // A body `x\u0001y` or an attribute `\u0002` sent through /v1/ made the MNS batch answer
    // ill-formed XML, and the SDK failed the whole batch (RespDataDamaged). Now the body comes
    // as base64 with `MessageEncoding`, the attribute as a BINARY property, and the SDK
    // receives every message.
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = sluice.api();
    assert_eq!(api.put("/v1/queues/ctl", &json!({})).await.0, 201);
    for m in [
        json!({"body": "plain"}),
        json!({"body": "x\u{1}y"}),
        json!({"body": "attr", "attributes": {"a": "\u{2}"}}),
    ] {
        let (status, v) = api.post("/v1/queues/ctl/messages", &m).await;
        assert_eq!(status, 201, "{v}");
    }
    let (status, xml) = text(as_key(
        &sluice,
        &sluice.key,
        Method::GET,
        "/queues/ctl/messages?numOfMessages=16&peekonly=true",
    ))
    .await;
    assert_eq!(status, 200, "{xml}");
    assert!(xml.chars().all(xml_char), "{xml:?}");
    assert!(
        xml.contains("<MessageBody>eAF5</MessageBody><MessageEncoding>base64</MessageEncoding>"),
        "{xml}"
    );
    assert!(
        xml.contains("<Name>a</Name><Value>Ag==</Value><Type>BINARY</Type>"),
        "{xml}"
    );
    crate::mns::sdk("controls", &sluice, &sluice.key, &["ctl"]);

    // A tag and an attribute key have no lossless XML form: refused at send, by field.
    for (m, field) in [
        (json!({"body": "t", "tag": "a\u{1}"}), "tag"),
        (
            json!({"body": "t", "attributes": {"k\u{1}": "v"}}),
            "attributes",
        ),
    ] {
        let (status, v) = api.post("/v1/queues/ctl/messages", &m).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    sluice.stop();
}

/// `Date` of an MNS request made `age` ago (RFC 1123, GMT).
fn mns_date(age: Duration) -> String {
    let when = chrono::Utc::now() - chrono::Duration::from_std(age).unwrap();
    when.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// Headers of an MNS-signed request: `date`, `Content-Type`, `Content-MD5` of `md5_of` when
/// given (the SDK's form: base64 of the hex digest), `x-mns-version` and the signature made with
/// `id` and `secret`.
fn mns_signed(
    method: &Method,
    resource: &str,
    md5_of: Option<&[u8]>,
    (id, secret): (&str, &str),
    date: &str,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("date", date.parse().unwrap());
    h.insert("content-type", "text/xml;charset=UTF-8".parse().unwrap());
    h.insert("x-mns-version", "2015-06-06".parse().unwrap());
    if let Some(body) = md5_of {
        use md5::Digest;
        let hex = hex::encode(md5::Md5::digest(body));
        let b64 = base64::engine::general_purpose::STANDARD.encode(hex);
        h.insert("content-md5", b64.parse().unwrap());
    }
    let sig = sluice::api::auth::mns_signature(secret, method, &h, resource);
    h.insert("authorization", format!("MNS {id}:{sig}").parse().unwrap());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mns_signatures_cover_the_body_and_unknown_keys_answer_like_wrong_secrets() {
    // The signature covers the body only through Content-MD5: a signed send without it could
    // be replayed with another body while its Date is fresh. And an unknown key id answered
    // differently from a wrong secret (and a stale Date only for known ids), telling which ids
    // exist.
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = sluice.api();
    assert_eq!(api.put("/v1/queues/sig", &json!({})).await.0, 201);
    let admin = sluice.key.split_once(':').unwrap();
    let http = reqwest::Client::new();
    let send = |headers: HeaderMap, body: &'static str| {
        http.post(format!("{}/queues/sig/messages", sluice.http))
            .headers(headers)
            .body(body)
    };
    let signed_body = "<Message><MessageBody>signed</MessageBody></Message>";
    let other_body = "<Message><MessageBody>replayed</MessageBody></Message>";
    let (post, get) = (Method::POST, Method::GET);
    let now = mns_date(Duration::ZERO);

    let bare = mns_signed(&post, "/queues/sig/messages", None, admin, &now);
    for body in [signed_body, other_body] {
        let (status, xml) = text(send(bare.clone(), body)).await;
        assert_eq!(status, 400, "{xml}");
        assert_eq!(element(&xml, "Code"), "MissingContentMD5", "{xml}");
    }
    let md5 = Some(signed_body.as_bytes());
    let with_md5 = mns_signed(&post, "/queues/sig/messages", md5, admin, &now);
    let (status, xml) = text(send(with_md5.clone(), other_body)).await;
    assert_eq!(status, 400, "{xml}");
    assert_eq!(element(&xml, "Code"), "InvalidDegist", "{xml}"); // sic: MNS's spelling
    let (status, xml) = text(send(with_md5, signed_body)).await;
    assert_eq!(status, 201, "{xml}");
    // A request without a body needs no Content-MD5.
    let (status, xml) = text(
        http.get(format!("{}/queues/sig", sluice.http))
            .headers(mns_signed(&get, "/queues/sig", None, admin, &now)),
    )
    .await;
    assert_eq!(status, 200, "{xml}");

    // Unknown id and wrong secret: the same answer, with a fresh Date (403) or a stale one (408,
    // whose message quotes the Date and the skew).
    for (age, status_wanted) in [(Duration::ZERO, 403), (Duration::from_secs(3600), 408)] {
        let date = mns_date(age);
        let mut answers = Vec::new();
        for key in [("SKnobody0000000000000", admin.1), (admin.0, "wrong")] {
            let (status, xml) = text(
                http.get(format!("{}/queues", sluice.http))
                    .headers(mns_signed(&get, "/queues", None, key, &date)),
            )
            .await;
            let message = if age.is_zero() {
                element(&xml, "Message")
            } else {
                ""
            };
            answers.push((
                status,
                element(&xml, "Code").to_string(),
                message.to_string(),
            ));
        }
        assert_eq!(answers[0], answers[1], "age {age:?}");
        assert_eq!(answers[0].0, status_wanted, "{answers:?}");
    }
    let id = admin.0;
    let mut answers = Vec::new();
    for key in ["SKnobody0000000000000:x".to_string(), format!("{id}:wrong")] {
        let (status, v) = json_of(as_key(&sluice, &key, Method::GET, "/v1/queues")).await;
        answers.push((status, v));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].0, 403, "{answers:?}");
    sluice.stop();
}

/// Signs in to the console; returns the status, the page and the session cookie.
async fn sign_in(sluice: &Sluice, key: &str) -> (u16, String, Option<String>) {
    let (id, secret) = key.split_once(':').unwrap();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client
        .post(format!("{}/console/login", sluice.http))
        .form(&[("key_id", id), ("secret", secret)])
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .map(str::to_string);
    (status, r.text().await.unwrap_or_default(), cookie)
}

/// Opens a live tail of queue `q` as `key`; returns the (streaming) response.
async fn tail(sluice: &Sluice, key: &str) -> reqwest::Response {
    as_key(sluice, key, Method::GET, "/console/events/queue/q")
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sessions_and_live_tails_are_capped_per_key_and_in_all() {
    // Sign-ins and live tails per key were unbounded. With small caps set in sluice.toml, the
    // next one past a cap is a 429 naming the setting, counted on /metrics; a closed tail and a
    // deleted key's sessions free their places.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "console_max_sessions_per_key = 2\nconsole_max_sessions = 3\n\
         console_max_tails_per_key = 1\nconsole_max_tails = 2\n",
    )
    .unwrap();
    let sluice = Sluice::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let api = sluice.api();
    assert_eq!(api.put("/v1/queues/q", &json!({})).await.0, 201);
    let k2 = create_key(&api, "k2", &["queues/q:read"]).await;
    let k3 = create_key(&api, "k3", &["queues/q:read"]).await;

    for _ in 0..2 {
        assert_eq!(sign_in(&sluice, &sluice.key).await.0, 303);
    }
    let (status, page, _) = sign_in(&sluice, &sluice.key).await;
    assert_eq!(status, 429, "{page}");
    assert!(page.contains("console_max_sessions_per_key"), "{page}");
    let (status, _, k2_cookie) = sign_in(&sluice, &k2).await;
    assert_eq!(status, 303);
    let (status, page, _) = sign_in(&sluice, &k3).await;
    assert_eq!(status, 429, "{page}");
    assert!(page.contains("`console_max_sessions`"), "{page}");
    // Deleting a key ends its sessions, which frees their places.
    let k2_id = k2.split_once(':').unwrap().0;
    assert_eq!(api.delete(&format!("/v1/keys/{k2_id}")).await.0, 200);
    let r = reqwest::Client::new()
        .get(format!("{}/v1/queues/q", sluice.http))
        .header("cookie", k2_cookie.unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(sign_in(&sluice, &k3).await.0, 303);

    let first = tail(&sluice, &sluice.key).await;
    assert_eq!(first.status(), 200);
    let (status, v) = json_of(as_key(
        &sluice,
        &sluice.key,
        Method::GET,
        "/console/events/queue/q",
    ))
    .await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["code"], "TooManyTails", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("console_max_tails_per_key"),
        "{v}"
    );
    let second = tail(&sluice, &k3).await;
    assert_eq!(second.status(), 200);
    let k4 = create_key(&api, "k4", &["queues/q:read"]).await;
    let (status, v) = json_of(as_key(&sluice, &k4, Method::GET, "/console/events/queue/q")).await;
    assert_eq!(status, 429, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`console_max_tails`"),
        "{v}"
    );
    // A closed tail frees its place (its task ends at the next poll).
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = tail(&sluice, &sluice.key).await;
        if r.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed tail's place was not freed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(second);

    let (_, metrics) = api.get_text("/metrics").await;
    for line in [
        "sluice_console_sessions_refused_total{cap=\"per_key\"} 1",
        "sluice_console_sessions_refused_total{cap=\"total\"} 1",
        "sluice_console_tails_refused_total{cap=\"per_key\"} 1",
        "sluice_console_sessions 3",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    assert!(
        metrics.contains("sluice_console_tails_refused_total{cap=\"total\"}"),
        "{metrics}"
    );
    sluice.stop();
}
