//! Bad input (docs/faults.md, "Bad input to the `/v1/` API"): every out-of-range attribute and
//! limit, malformed and oversized bodies, unknown fields, unknown queues and topics, garbled and
//! stale receipt handles, CR/LF in tags and attributes — each a 4xx with the
//! `{"error":{"code","message","field"}}` shape and a machine-readable code, and nothing changed.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::Sluice;
use crate::store_util::{Answer, Http};

/// What a queue holds, to compare before and after refused requests: its counts and attributes
/// and the bodies a peek shows.
async fn snapshot(h: &Http, q: &str) -> Value {
    let info = h.queue(q).await;
    let peek = h
        .get(&format!("/v1/queues/{q}/messages?peek=true&max=16"))
        .await;
    json!({
        "attributes": info["attributes"],
        "active": info["active_messages"],
        "inactive": info["inactive_messages"],
        "delayed": info["delayed_messages"],
        "peek": peek.json["messages"].as_array().map(|a| a.iter().map(|m| m["body"].clone()).collect::<Vec<_>>()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_is_a_clear_4xx_with_a_code_and_changes_nothing() {
    // Proves each refused request names its code (and field), and the queue is unchanged after.
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let h = Http::new(&sluice.http);
    assert_eq!(
        h.json(
            "PUT",
            "/v1/queues/bad-q",
            &json!({"visibility_timeout": 30})
        )
        .await
        .status,
        201
    );
    assert_eq!(
        h.json("PUT", "/v1/queues/other-q", &json!({})).await.status,
        201
    );
    assert_eq!(
        h.json("PUT", "/v1/topics/bad-t", &json!({})).await.status,
        201
    );
    assert_eq!(
        h.json(
            "PUT",
            "/v1/topics/bad-t/subscriptions/bad-t-to-q",
            &json!({"queue": "bad-q"})
        )
        .await
        .status,
        201
    );
    for body in ["kept-1", "kept-2"] {
        let a = h
            .json("POST", "/v1/queues/bad-q/messages", &json!({"body": body}))
            .await;
        assert_eq!(a.status, 201);
    }
    let before = snapshot(&h, "bad-q").await;
    let mut checked = 0;
    let mut check = |what: &str, a: Answer, status: u16, code: &str, field: Option<&str>| {
        println!(
            "{what:<55} -> {} {} field={:?}",
            a.status,
            a.code(),
            a.json["error"]["field"]
        );
        a.assert_error(what, status, code, field);
        checked += 1;
    };

    // 1. Queue attributes one past each end of their range, on create and on set.
    let attrs: &[(&str, Value)] = &[
        ("delay_seconds", json!(604_801)),
        ("maximum_message_size", json!(1023)),
        ("maximum_message_size", json!(65_537)),
        ("message_retention_period", json!(59)),
        ("message_retention_period", json!(604_801)),
        ("visibility_timeout", json!(0)),
        ("visibility_timeout", json!(43_201)),
        ("polling_wait_seconds", json!(31)),
    ];
    for (field, value) in attrs {
        let body = json!({ *field: value });
        let a = h.json("PUT", "/v1/queues/new-q", &body).await;
        check(
            &format!("create {field}={value}"),
            a,
            400,
            "InvalidArgument",
            Some(field),
        );
        let a = h.json("PATCH", "/v1/queues/bad-q", &body).await;
        check(
            &format!("set {field}={value}"),
            a,
            400,
            "InvalidArgument",
            Some(field),
        );
    }
    for (body, field) in [
        (
            json!({"dead_letter_queue": "other-q", "max_receive_count": 0}),
            "max_receive_count",
        ),
        (
            json!({"dead_letter_queue": "other-q", "max_receive_count": 1001}),
            "max_receive_count",
        ),
        (json!({"dead_letter_queue": "other-q"}), "max_receive_count"),
        (json!({"max_receive_count": 3}), "dead_letter_queue"),
        (
            json!({"dead_letter_queue": "bad name!", "max_receive_count": 3}),
            "dead_letter_queue",
        ),
    ] {
        let a = h.json("PUT", "/v1/queues/new-q", &body).await;
        check(
            &format!("create {body}"),
            a,
            400,
            "InvalidArgument",
            Some(field),
        );
        let a = h.json("PATCH", "/v1/queues/bad-q", &body).await;
        check(
            &format!("set {body}"),
            a,
            400,
            "InvalidArgument",
            Some(field),
        );
    }
    let a = h
        .json(
            "PUT",
            "/v1/queues/new-q",
            &json!({"dead_letter_queue": "no-such-q", "max_receive_count": 3}),
        )
        .await;
    check(
        "create with a missing dead-letter queue",
        a,
        400,
        "InvalidArgument",
        Some("dead_letter_queue"),
    );
    let a = h
        .json(
            "PATCH",
            "/v1/queues/bad-q",
            &json!({"dead_letter_queue": "bad-q", "max_receive_count": 3}),
        )
        .await;
    assert!(
        a.status >= 400 && a.status < 500,
        "dead letters to itself: {}",
        a.json
    );
    check(
        "dead letters to itself",
        a.clone(),
        a.status,
        a.code(),
        Some("dead_letter_queue"),
    );
    let a = h
        .json("PUT", "/v1/queues/new-q", &json!({"delay_seconds": -1}))
        .await;
    check("create delay_seconds=-1", a, 400, "MalformedJson", None);
    let a = h
        .json("PUT", "/v1/queues/new-q", &json!({"visibility": 5}))
        .await;
    check(
        "create with an unknown attribute",
        a,
        400,
        "MalformedJson",
        None,
    );
    let a = h.json("PUT", "/v1/queues/bad_name!", &json!({})).await;
    check(
        "create with an invalid name",
        a,
        400,
        "InvalidArgument",
        Some("queue_name"),
    );
    let long = "q".repeat(121);
    let a = h
        .json("PUT", &format!("/v1/queues/{long}"), &json!({}))
        .await;
    check(
        "create with a 121-character name",
        a,
        400,
        "InvalidArgument",
        Some("queue_name"),
    );

    // 2. Limits one past their range.
    let batch17: Vec<Value> = (0..17).map(|i| json!({"body": format!("b{i}")})).collect();
    let a = h
        .json(
            "POST",
            "/v1/queues/bad-q/messages",
            &json!({ "messages": batch17 }),
        )
        .await;
    check(
        "send a batch of 17",
        a,
        400,
        "InvalidArgument",
        Some("messages"),
    );
    let a = h
        .json(
            "POST",
            "/v1/queues/bad-q/messages",
            &json!({ "messages": [] }),
        )
        .await;
    check(
        "send a batch of 0",
        a,
        400,
        "InvalidArgument",
        Some("messages"),
    );
    let batch17: Vec<Value> = (0..17).map(|i| json!({"body": format!("b{i}")})).collect();
    let a = h
        .json(
            "POST",
            "/v1/topics/bad-t/messages",
            &json!({ "messages": batch17 }),
        )
        .await;
    check(
        "publish a batch of 17",
        a,
        400,
        "InvalidArgument",
        Some("messages"),
    );
    for (query, field) in [
        ("max=17", "max"),
        ("max=0", "max"),
        ("wait_seconds=31", "wait_seconds"),
        ("peek=true&max=17", "max"),
    ] {
        let a = h.get(&format!("/v1/queues/bad-q/messages?{query}")).await;
        check(
            &format!("receive ?{query}"),
            a,
            400,
            "InvalidArgument",
            Some(field),
        );
    }
    for query in ["max=abc", "wait_seconds=-1", "bogus=1"] {
        let a = h.get(&format!("/v1/queues/bad-q/messages?{query}")).await;
        check(
            &format!("receive ?{query}"),
            a,
            400,
            "InvalidArgument",
            None,
        );
    }
    for (msg, field) in [
        (
            json!({"body": "x", "delay_seconds": 604_801}),
            "delay_seconds",
        ),
        (json!({"body": "x", "priority": 0}), "priority"),
        (json!({"body": "x", "priority": 17}), "priority"),
        (json!({"body": "x", "tag": "seventeen-chars-x"}), "tag"),
        (json!({}), "body"),
        (json!({"body": "x", "body_base64": "eA=="}), "body"),
        (json!({"body_base64": "not base64!"}), "body_base64"),
    ] {
        let a = h.json("POST", "/v1/queues/bad-q/messages", &msg).await;
        check(
            &format!("send {msg}"),
            a,
            400,
            "InvalidArgument",
            Some(field),
        );
        // The same message inside a batch refuses the whole batch.
        let a = h
            .json(
                "POST",
                "/v1/queues/bad-q/messages",
                &json!({"messages": [{"body": "fine"}, msg]}),
            )
            .await;
        check(
            &format!("send batch with {msg}"),
            a,
            400,
            "InvalidArgument",
            Some(field),
        );
    }

    // 3. Header injection: CR/LF in tags and attributes.
    for (msg, field) in [
        (json!({"body": "x", "tag": "a\r\nb"}), "tag"),
        (json!({"body": "x", "tag": "a\nb"}), "tag"),
        (
            json!({"body": "x", "attributes": {"k": "v\r\nX-Evil: 1"}}),
            "attributes",
        ),
        (
            json!({"body": "x", "attributes": {"k\n": "v"}}),
            "attributes",
        ),
    ] {
        let a = h.json("POST", "/v1/queues/bad-q/messages", &msg).await;
        check(
            &format!("send {msg}"),
            a,
            400,
            "InvalidArgument",
            Some(field),
        );
        let a = h.json("POST", "/v1/topics/bad-t/messages", &msg).await;
        check(
            &format!("publish {msg}"),
            a,
            400,
            "InvalidArgument",
            Some(field),
        );
    }

    // 4. Malformed JSON.
    let deep = "[".repeat(10_000);
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("truncated JSON", br#"{"body": "x"#.to_vec()),
        ("invalid UTF-8", b"{\"body\": \"\xff\xfe\"}".to_vec()),
        ("deeply nested", deep.into_bytes()),
        (
            "huge number",
            br#"{"body": "x", "priority": 1e400}"#.to_vec(),
        ),
        (
            "huge integer",
            br#"{"body": "x", "delay_seconds": 99999999999999999999}"#.to_vec(),
        ),
        ("NUL byte outside a string", b"{\"body\": \"x\"\0}".to_vec()),
        ("not an object", b"[1, 2]".to_vec()),
        ("body not a string", br#"{"body": 5}"#.to_vec()),
        (
            "unknown field",
            br#"{"body": "x", "colour": "red"}"#.to_vec(),
        ),
        (
            "unknown field in a batch",
            br#"{"messages": [{"body": "x", "colour": "red"}]}"#.to_vec(),
        ),
        (
            "messages and body",
            br#"{"messages": [{"body": "x"}], "body": "y"}"#.to_vec(),
        ),
    ];
    for (what, bytes) in &malformed {
        let a = h
            .raw("POST", "/v1/queues/bad-q/messages", Some(bytes.clone()))
            .await;
        check(&format!("send: {what}"), a, 400, "MalformedJson", None);
        let a = h
            .raw("POST", "/v1/topics/bad-t/messages", Some(bytes.clone()))
            .await;
        check(&format!("publish: {what}"), a, 400, "MalformedJson", None);
    }
    let a = h
        .raw(
            "PUT",
            "/v1/topics/new-t",
            Some(br#"{"retention": 5}"#.to_vec()),
        )
        .await;
    check(
        "create topic with an unknown field",
        a,
        400,
        "MalformedJson",
        None,
    );

    // 5. Size limits: the default maximum_message_size is 65536.
    let at_limit = "a".repeat(65_536);
    let a = h
        .json(
            "POST",
            "/v1/queues/other-q/messages",
            &json!({"body": at_limit}),
        )
        .await;
    assert_eq!(
        a.status, 201,
        "a body of exactly 65536 bytes is accepted: {}",
        a.json
    );
    let a = h
        .json(
            "POST",
            "/v1/topics/bad-t/messages",
            &json!({"body": at_limit}),
        )
        .await;
    assert_eq!(
        a.status, 201,
        "a publish of exactly 65536 bytes is accepted: {}",
        a.json
    );
    // That publish reached bad-q; take it out again so the snapshot compares.
    let got = h.get("/v1/queues/bad-q/messages?max=16").await;
    let mut extra = 0;
    for m in got.json["messages"].as_array().cloned().unwrap_or_default() {
        let r = m["receipt_handle"].as_str().unwrap().to_string();
        if m["body"].as_str().map(str::len) == Some(65_536) {
            extra += 1;
            assert_eq!(
                h.raw("DELETE", &format!("/v1/queues/bad-q/messages/{r}"), None)
                    .await
                    .status,
                200
            );
        } else {
            // Give the others back at once.
            let a = h
                .json(
                    "PUT",
                    &format!("/v1/queues/bad-q/messages/{r}"),
                    &json!({"visibility_timeout": 1}),
                )
                .await;
            assert_eq!(a.status, 200, "{}", a.json);
        }
    }
    assert_eq!(extra, 1);
    let over = "a".repeat(65_537);
    let a = h
        .json("POST", "/v1/queues/bad-q/messages", &json!({"body": over}))
        .await;
    check("send 65537 bytes", a, 413, "InvalidArgument", Some("body"));
    let a = h
        .json("POST", "/v1/topics/bad-t/messages", &json!({"body": over}))
        .await;
    check(
        "publish 65537 bytes",
        a,
        413,
        "InvalidArgument",
        Some("body"),
    );
    h.json(
        "PUT",
        "/v1/queues/small-q",
        &json!({"maximum_message_size": 1024}),
    )
    .await;
    let a = h
        .json(
            "POST",
            "/v1/queues/small-q/messages",
            &json!({"body": "b".repeat(1024)}),
        )
        .await;
    assert_eq!(
        a.status, 201,
        "1024 bytes fit a 1024-byte queue: {}",
        a.json
    );
    let a = h
        .json(
            "POST",
            "/v1/queues/small-q/messages",
            &json!({"body": "b".repeat(1025)}),
        )
        .await;
    check(
        "send 1025 bytes to a 1024-byte queue",
        a,
        413,
        "InvalidArgument",
        Some("body"),
    );
    let huge = vec![b' '; 3 * 1024 * 1024];
    let a = h.raw("POST", "/v1/queues/bad-q/messages", Some(huge)).await;
    check("a 3 MiB request", a, 413, "RequestTooLarge", None);

    // 6. Unknown queue and topic.
    let nq = "/v1/queues/no-such-q";
    for (what, a) in [
        ("show", h.get(nq).await),
        (
            "set",
            h.json("PATCH", nq, &json!({"delay_seconds": 1})).await,
        ),
        ("remove", h.raw("DELETE", nq, None).await),
        (
            "send",
            h.json("POST", &format!("{nq}/messages"), &json!({"body": "x"}))
                .await,
        ),
        (
            "receive",
            h.get(&format!("{nq}/messages?wait_seconds=1")).await,
        ),
        ("peek", h.get(&format!("{nq}/messages?peek=true")).await),
        (
            "delete",
            h.raw(
                "DELETE",
                &format!("{nq}/messages/AAAAAAAAAAAAAAAAAAAAAA"),
                None,
            )
            .await,
        ),
        (
            "batch delete",
            h.json(
                "POST",
                &format!("{nq}/messages/delete"),
                &json!({"receipt_handles": ["x"]}),
            )
            .await,
        ),
        (
            "change visibility",
            h.json(
                "PUT",
                &format!("{nq}/messages/AAAAAAAAAAAAAAAAAAAAAA"),
                &json!({"visibility_timeout": 5}),
            )
            .await,
        ),
    ] {
        check(
            &format!("{what} on an unknown queue"),
            a,
            404,
            "QueueNotExist",
            None,
        );
    }
    let nt = "/v1/topics/no-such-t";
    for (what, a) in [
        ("show", h.get(nt).await),
        ("remove", h.raw("DELETE", nt, None).await),
        (
            "publish",
            h.json("POST", &format!("{nt}/messages"), &json!({"body": "x"}))
                .await,
        ),
    ] {
        check(
            &format!("{what} on an unknown topic"),
            a,
            404,
            "TopicNotExist",
            None,
        );
    }
    let a = h.raw("PATCH", "/v1/topics/bad-t", None).await;
    check(
        "a method the path does not take",
        a,
        405,
        "MethodNotAllowed",
        None,
    );

    // 7. Receipt handles: garbled, made up, stale.
    let got = h
        .get("/v1/queues/bad-q/messages?max=1&wait_seconds=5")
        .await;
    let first = got.json["messages"][0]["receipt_handle"]
        .as_str()
        .expect("a message to hold")
        .to_string();
    for bad in [
        "garbage",
        "AAAA",
        "!!!!!!!!!!!!!!!!!!!!!!",
        &"A".repeat(300),
    ] {
        let a = h
            .raw(
                "DELETE",
                &format!("/v1/queues/bad-q/messages/{}", urlish(bad)),
                None,
            )
            .await;
        check(
            &format!("delete with handle {:.24}", bad),
            a,
            400,
            "ReceiptHandleError",
            Some("receipt_handle"),
        );
    }
    let made_up = "AAAAAAAAAAAAAAAAAAAAAA";
    let a = h
        .raw(
            "DELETE",
            &format!("/v1/queues/bad-q/messages/{made_up}"),
            None,
        )
        .await;
    println!("made-up well-formed handle -> {} {}", a.status, a.code());
    assert!(
        matches!(a.code(), "ReceiptHandleError" | "MessageNotExist"),
        "a made-up handle is refused: {}",
        a.json
    );
    a.assert_error("made-up handle", a.status, a.code(), Some("receipt_handle"));
    for v in [0, 43_201] {
        let a = h
            .json(
                "PUT",
                &format!("/v1/queues/bad-q/messages/{first}"),
                &json!({"visibility_timeout": v}),
            )
            .await;
        check(
            &format!("change visibility to {v}"),
            a,
            400,
            "InvalidArgument",
            Some("visibility_timeout"),
        );
    }
    let a = h
        .json(
            "PUT",
            &format!("/v1/queues/bad-q/messages/{first}"),
            &json!({}),
        )
        .await;
    check(
        "change visibility without a value",
        a,
        400,
        "InvalidArgument",
        Some("visibility_timeout"),
    );
    // Stale: let the lease end (1 s), another consumer receives it, the old handle is refused
    // and the message stays with its new holder.
    let a = h
        .json(
            "PUT",
            &format!("/v1/queues/bad-q/messages/{first}"),
            &json!({"visibility_timeout": 1}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    let old = a.json["receipt_handle"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let a = h
        .raw("DELETE", &format!("/v1/queues/bad-q/messages/{old}"), None)
        .await;
    check(
        "delete after the lease ended",
        a,
        409,
        "ReceiptHandleStale",
        Some("receipt_handle"),
    );
    let again = h
        .get("/v1/queues/bad-q/messages?max=16&wait_seconds=5")
        .await;
    let holders: Vec<Value> = again.json["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!holders.is_empty(), "{}", again.json);
    for stale in [&first, &old] {
        let a = h
            .raw(
                "DELETE",
                &format!("/v1/queues/bad-q/messages/{stale}"),
                None,
            )
            .await;
        check(
            "delete with an earlier handle",
            a,
            409,
            "ReceiptHandleStale",
            Some("receipt_handle"),
        );
    }
    let info = h.queue("bad-q").await;
    assert_eq!(
        info["inactive_messages"].as_u64(),
        Some(holders.len() as u64),
        "still held: {info}"
    );
    // Release them for the final comparison.
    for m in &holders {
        let r = m["receipt_handle"].as_str().unwrap();
        let a = h
            .json(
                "PUT",
                &format!("/v1/queues/bad-q/messages/{r}"),
                &json!({"visibility_timeout": 1}),
            )
            .await;
        assert_eq!(a.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Nothing the refused requests touched changed; no queue or topic was created.
    let after = snapshot(&h, "bad-q").await;
    println!("before: {before}\nafter:  {after}\n{checked} refusals checked");
    assert_eq!(before, after);
    assert_eq!(h.get("/v1/queues/new-q").await.status, 404);
    assert_eq!(h.get("/v1/topics/new-t").await.status, 404);
    sluice.stop();
}

/// Percent-encodes what a URL path segment cannot carry as is.
fn urlish(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
