//! Queue semantics: receive, delete, receipt handles, visibility, priority, delay, dead letters,
//! retention, limits.

use std::time::Duration;

use bytes::Bytes;

use super::{body_text, text, Env};
use crate::store::{SendRequest, StoreError, MAX_BATCH};

const NO_WAIT: Option<Duration> = Some(Duration::ZERO);

#[tokio::test]
async fn receive_then_delete_removes_the_message() {
    // Proves: a received message carries its fields and a handle, and is gone after delete.
    let env = Env::new();
    env.queue("q", |_| {}).await;
    let sent = env.store.send("q", text("hello")).await.unwrap();
    assert_eq!(sent.body_md5, "5D41402ABC4B2A76B9719D911017C592");
    let got = env.store.receive("q", 16, NO_WAIT).await.unwrap();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.id, sent.id);
    assert_eq!(body_text(m), "hello");
    assert_eq!(m.body_md5, sent.body_md5);
    assert_eq!(m.dequeue_count, 1);
    assert_eq!(m.priority, 8);
    assert_eq!(m.enqueue_time_ms, super::T0);
    assert_eq!(m.first_dequeue_time_ms, Some(super::T0));
    assert_eq!(m.next_visible_time_ms, super::T0 + 30_000);
    let handle = m.receipt_handle.clone().unwrap();
    assert!(handle
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    // Invisible now.
    assert!(env
        .store
        .receive("q", 16, NO_WAIT)
        .await
        .unwrap()
        .is_empty());
    let info = env.store.get_queue("q").await.unwrap();
    assert_eq!((info.active_messages, info.inactive_messages), (0, 1));
    env.store.delete("q", &handle).await.unwrap();
    let info = env.store.get_queue("q").await.unwrap();
    assert_eq!((info.active_messages, info.inactive_messages), (0, 0));
    env.clock.advance_ms(60_000);
    assert!(env
        .store
        .receive("q", 16, NO_WAIT)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn stale_receipt_after_visibility_expiry_is_refused_and_message_stays_with_new_holder() {
    // Proves: an expired handle is refused, changes nothing, the new holder keeps it.
    let env = Env::new();
    env.queue("q", |a| a.visibility_timeout = 10).await;
    env.store.send("q", text("m")).await.unwrap();
    let first = env.store.receive("q", 1, NO_WAIT).await.unwrap().remove(0);
    let old = first.receipt_handle.unwrap();
    env.clock.advance_ms(10_000);
    // Expired but not yet received again: refused as stale.
    let e = env.store.delete("q", &old).await.unwrap_err();
    assert_eq!(e.code(), "ReceiptHandleStale", "{e}");
    let second = env.store.receive("q", 1, NO_WAIT).await.unwrap().remove(0);
    assert_eq!(second.id, first.id);
    assert_eq!(second.dequeue_count, 2);
    assert_eq!(second.first_dequeue_time_ms, first.first_dequeue_time_ms);
    let e = env.store.delete("q", &old).await.unwrap_err();
    assert!(matches!(e, StoreError::ReceiptHandleStale { .. }), "{e}");
    assert_eq!(e.status(), 409);
    assert_eq!(e.field(), Some("receipt_handle"));
    let info = env.store.get_queue("q").await.unwrap();
    assert_eq!(
        info.inactive_messages, 1,
        "still held by the second receive"
    );
    // The new holder's handle still works.
    env.store
        .delete("q", second.receipt_handle.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(env.store.get_queue("q").await.unwrap().inactive_messages, 0);
}

#[tokio::test]
async fn deleting_twice_with_the_current_handle_succeeds_both_times() {
    // Proves: a second delete with the same current handle succeeds too.
    let env = Env::new();
    env.queue("q", |_| {}).await;
    env.store.send("q", text("m")).await.unwrap();
    let h = env.store.receive("q", 1, NO_WAIT).await.unwrap()[0]
        .receipt_handle
        .clone()
        .unwrap();
    env.store.delete("q", &h).await.unwrap();
    env.store.delete("q", &h).await.unwrap();
    // Both in one batch as well.
    env.store.send("q", text("n")).await.unwrap();
    let h = env.store.receive("q", 1, NO_WAIT).await.unwrap()[0]
        .receipt_handle
        .clone()
        .unwrap();
    let results = env
        .store
        .delete_batch("q", vec![h.clone(), h.clone()])
        .await
        .unwrap();
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
}

#[tokio::test]
async fn made_up_and_garbled_handles_are_refused() {
    // Proves: nothing but a real current handle deletes a message.
    let env = Env::new();
    env.queue("q", |_| {}).await;
    env.store.send("q", text("m")).await.unwrap();
    let real = env.store.receive("q", 1, NO_WAIT).await.unwrap()[0]
        .receipt_handle
        .clone()
        .unwrap();
    for garbled in [
        "",
        "x",
        "not-a-handle",
        &real[..21],
        &format!("{real}x"),
        "a/b+c==",
    ] {
        let e = env.store.delete("q", garbled).await.unwrap_err();
        assert_eq!(e.code(), "ReceiptHandleError", "{garbled}: {e}");
        assert_eq!(e.status(), 400);
    }
    // Well-formed but forged: same seq, other generation -> stale; another seq -> not exist.
    let r = crate::store::sqlite::receipt::Receipt::decode(&real).unwrap();
    let forged = crate::store::sqlite::receipt::Receipt {
        seq: r.seq,
        gen: r.gen ^ 1,
    }
    .encode();
    let e = env.store.delete("q", &forged).await.unwrap_err();
    assert_eq!(e.code(), "ReceiptHandleStale");
    let elsewhere = crate::store::sqlite::receipt::Receipt {
        seq: r.seq + 1000,
        gen: r.gen,
    }
    .encode();
    let e = env.store.delete("q", &elsewhere).await.unwrap_err();
    assert_eq!(e.code(), "MessageNotExist");
    assert_eq!(e.status(), 404);
    // The message is untouched and still leased.
    assert_eq!(env.store.get_queue("q").await.unwrap().inactive_messages, 1);
    env.store.delete("q", &real).await.unwrap();
}

#[tokio::test]
async fn change_visibility_gives_a_new_handle_and_invalidates_the_old() {
    // Proves: the old handle stops working, the new time counts from now.
    let env = Env::new();
    env.queue("q", |_| {}).await;
    env.store.send("q", text("m")).await.unwrap();
    let old = env.store.receive("q", 1, NO_WAIT).await.unwrap()[0]
        .receipt_handle
        .clone()
        .unwrap();
    env.clock.advance_ms(5_000);
    let changed = env.store.change_visibility("q", &old, 100).await.unwrap();
    assert_eq!(changed.next_visible_time_ms, super::T0 + 5_000 + 100_000);
    assert_ne!(changed.receipt_handle, old);
    let e = env.store.delete("q", &old).await.unwrap_err();
    assert_eq!(e.code(), "ReceiptHandleStale");
    let e = env
        .store
        .change_visibility("q", &old, 10)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "ReceiptHandleStale");
    // Past the original 30 s it is still invisible; after 100 s it is back.
    env.clock.advance_ms(60_000);
    assert!(env.store.receive("q", 1, NO_WAIT).await.unwrap().is_empty());
    env.clock.advance_ms(40_000);
    let again = env.store.receive("q", 1, NO_WAIT).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].dequeue_count, 2);
    // Range.
    let h = again[0].receipt_handle.clone().unwrap();
    for bad in [0, 43_201] {
        let e = env.store.change_visibility("q", &h, bad).await.unwrap_err();
        assert_eq!(e.field(), Some("visibility_timeout"));
    }
    env.store.change_visibility("q", &h, 43_200).await.unwrap();
}

#[tokio::test]
async fn priority_first_then_oldest_first() {
    // Proves: 1 is delivered before 16; equal priorities come out in send order.
    let env = Env::new();
    env.queue("q", |_| {}).await;
    let reqs = [
        ("a", None),
        ("b", Some(16)),
        ("c", Some(1)),
        ("d", None),
        ("e", Some(1)),
        ("f", Some(3)),
    ];
    for (body, priority) in reqs {
        let mut r = text(body);
        r.priority = priority;
        env.store.send("q", r).await.unwrap();
    }
    let peeked: Vec<String> = env
        .store
        .peek("q", 16)
        .await
        .unwrap()
        .iter()
        .map(body_text)
        .collect();
    assert_eq!(peeked, ["c", "e", "f", "a", "d", "b"]);
    let mut got = Vec::new();
    for _ in 0..6 {
        let m = env.store.receive("q", 1, NO_WAIT).await.unwrap().remove(0);
        got.push(body_text(&m));
    }
    assert_eq!(got, peeked);
    let mut bad = text("x");
    for p in [0, 17] {
        bad.priority = Some(p);
        let e = env.store.send("q", bad.clone()).await.unwrap_err();
        assert_eq!(e.field(), Some("priority"));
    }
}

#[tokio::test]
async fn peek_changes_nothing() {
    // Proves: peek returns no handle and leaves counts and dequeue counts alone.
    let env = Env::new();
    env.queue("q", |_| {}).await;
    env.store.send("q", text("m")).await.unwrap();
    let p = env.store.peek("q", 1).await.unwrap();
    assert_eq!(p.len(), 1);
    assert!(p[0].receipt_handle.is_none());
    assert_eq!(p[0].dequeue_count, 0);
    let r = env.store.receive("q", 1, NO_WAIT).await.unwrap();
    assert_eq!(r[0].dequeue_count, 1);
    assert!(env.store.peek("q", 1).await.unwrap().is_empty());
}

#[tokio::test]
async fn delayed_messages_appear_on_time() {
    // Proves: per-message delay and the queue default, counted as delayed until due.
    let env = Env::new();
    env.queue("q", |a| a.delay_seconds = 5).await;
    let sent = env.store.send("q", text("queue-default")).await.unwrap();
    assert_eq!(sent.next_visible_time_ms, super::T0 + 5_000);
    let mut r = text("own-delay");
    r.delay_seconds = Some(20);
    env.store.send("q", r).await.unwrap();
    let mut r = text("no-delay");
    r.delay_seconds = Some(0);
    env.store.send("q", r).await.unwrap();
    let info = env.store.get_queue("q").await.unwrap();
    assert_eq!((info.active_messages, info.delayed_messages), (1, 2));
    let got = env.store.receive("q", 16, NO_WAIT).await.unwrap();
    assert_eq!(got.iter().map(body_text).collect::<Vec<_>>(), ["no-delay"]);
    env.clock.advance_ms(4_999);
    assert!(env
        .store
        .receive("q", 16, NO_WAIT)
        .await
        .unwrap()
        .is_empty());
    env.clock.advance_ms(1);
    let got = env.store.receive("q", 16, NO_WAIT).await.unwrap();
    assert_eq!(
        got.iter().map(body_text).collect::<Vec<_>>(),
        ["queue-default"]
    );
    env.clock.advance_ms(15_000);
    let got = env.store.receive("q", 16, NO_WAIT).await.unwrap();
    assert_eq!(got.iter().map(body_text).collect::<Vec<_>>(), ["own-delay"]);
    let mut r = text("too-late");
    r.delay_seconds = Some(604_801);
    let e = env.store.send("q", r).await.unwrap_err();
    assert_eq!(e.field(), Some("delay_seconds"));
}

#[tokio::test]
async fn dead_letter_after_max_receive_count_moves_atomically_on_the_next_receive() {
    // Proves: delivered exactly 3 times, moved on the 4th receive, in one commit.
    let env = Env::new();
    env.queue("dlq", |_| {}).await;
    env.queue("q", |a| {
        a.visibility_timeout = 1;
        a.dead_letter_queue = Some("dlq".into());
        a.max_receive_count = Some(3);
    })
    .await;
    let sent = env.store.send("q", text("poison")).await.unwrap();
    env.store.send("q", text("fine")).await.unwrap();
    for round in 1..=3 {
        let got = env.store.receive("q", 1, NO_WAIT).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, sent.id);
        assert_eq!(got[0].dequeue_count, round);
        env.clock.advance_ms(1_000);
    }
    // 4th receive: the poison message moves; the receive goes on to the next message.
    let got = env.store.receive("q", 16, NO_WAIT).await.unwrap();
    assert_eq!(got.iter().map(body_text).collect::<Vec<_>>(), ["fine"]);
    let q = env.store.get_queue("q").await.unwrap();
    assert_eq!(q.dead_lettered_total, 1);
    assert_eq!(
        q.active_messages + q.inactive_messages + q.delayed_messages,
        1
    );
    let dead = env.store.receive("dlq", 16, NO_WAIT).await.unwrap();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.id, sent.id);
    assert_eq!(body_text(d), "poison");
    assert_eq!(d.dequeue_count, 1);
    let origin = d.dead_letter.as_ref().expect("origin");
    assert_eq!(origin.source_queue, "q");
    assert_eq!(origin.original_id, sent.id.to_string());
    assert_eq!(origin.dequeue_count, 3);
    assert_eq!(origin.original_enqueue_time_ms, super::T0);
    let json = serde_json::to_value(d).unwrap();
    assert_eq!(json["dead_letter"]["source_queue"], "q");
}

#[tokio::test]
async fn dead_letter_queue_must_exist_and_differ() {
    // Proves: the dead-letter settings are checked when set.
    let env = Env::new();
    let mut a = crate::store::QueueAttributes {
        dead_letter_queue: Some("nope".into()),
        max_receive_count: Some(3),
        ..Default::default()
    };
    let e = env.store.create_queue("q", a.clone()).await.unwrap_err();
    assert_eq!(e.field(), Some("dead_letter_queue"));
    a.dead_letter_queue = Some("q".into());
    let e = env.store.create_queue("q", a.clone()).await.unwrap_err();
    assert_eq!(e.field(), Some("dead_letter_queue"));
    a.max_receive_count = None;
    let e = env.store.create_queue("q", a).await.unwrap_err();
    assert_eq!(e.field(), Some("max_receive_count"));
}

#[tokio::test]
async fn retention_removes_old_messages_and_counts_them() {
    // Proves: messages past message_retention_period are removed (in flight too) and counted.
    let env = Env::new();
    env.queue("q", |a| a.message_retention_period = 60).await;
    env.store.send("q", text("old-1")).await.unwrap();
    env.store.send("q", text("old-2")).await.unwrap();
    let leased = env.store.receive("q", 1, NO_WAIT).await.unwrap().remove(0);
    env.clock.advance_ms(30_000);
    env.store.send("q", text("young")).await.unwrap();
    let info = env.store.get_queue("q").await.unwrap();
    assert_eq!(info.oldest_message_age_ms, Some(30_000));
    env.clock.advance_ms(30_000);
    // Any batch runs due sweeps; this get_queue is one.
    let info = env.store.get_queue("q").await.unwrap();
    assert_eq!(info.expired_total, 2);
    assert_eq!(info.active_messages + info.inactive_messages, 1);
    assert_eq!(info.oldest_message_age_ms, Some(30_000));
    let got = env.store.receive("q", 16, NO_WAIT).await.unwrap();
    assert_eq!(got.iter().map(body_text).collect::<Vec<_>>(), ["young"]);
    // The expired message's handle finds nothing.
    let e = env
        .store
        .delete("q", leased.receipt_handle.as_deref().unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "MessageNotExist");
    env.clock.advance_ms(30_000);
    let info = env.store.get_queue("q").await.unwrap();
    assert_eq!(info.expired_total, 3);
    assert_eq!(info.oldest_message_age_ms, None);
}

#[tokio::test]
async fn batches_over_16_and_bad_waits_are_refused() {
    // Proves: batch sizes and waits one past their range are refused.
    let env = Env::new();
    env.queue("q", |_| {}).await;
    let seventeen: Vec<SendRequest> = (0..MAX_BATCH + 1).map(|i| text(&i.to_string())).collect();
    let e = env
        .store
        .send_batch("q", seventeen.clone())
        .await
        .unwrap_err();
    assert_eq!((e.code(), e.field()), ("InvalidArgument", Some("messages")));
    assert!(env.store.peek("q", 16).await.unwrap().is_empty());
    let sent = env
        .store
        .send_batch("q", seventeen[..16].to_vec())
        .await
        .unwrap();
    assert_eq!(sent.len(), 16);
    for max in [0, 17] {
        let e = env.store.receive("q", max, NO_WAIT).await.unwrap_err();
        assert_eq!(e.field(), Some("max"));
        let e = env.store.peek("q", max).await.unwrap_err();
        assert_eq!(e.field(), Some("max"));
    }
    let e = env
        .store
        .receive("q", 1, Some(Duration::from_secs(31)))
        .await
        .unwrap_err();
    assert_eq!(e.field(), Some("wait_seconds"));
    let e = env
        .store
        .delete_batch("q", vec!["x".into(); 17])
        .await
        .unwrap_err();
    assert_eq!(e.field(), Some("receipt_handles"));
    let got = env.store.receive("q", 16, NO_WAIT).await.unwrap();
    assert_eq!(got.len(), 16);
    let handles = got
        .iter()
        .map(|m| m.receipt_handle.clone().unwrap())
        .collect();
    let results = env.store.delete_batch("q", handles).await.unwrap();
    assert_eq!(results.len(), 16);
    assert!(results.iter().all(|r| r.is_ok()));
}

#[tokio::test]
async fn body_at_the_limit_is_accepted_one_byte_more_is_refused() {
    // Proves: the limit is maximum_message_size, inclusive; a refused batch
    // stores nothing.
    let env = Env::new();
    env.queue("q", |a| a.maximum_message_size = 1024).await;
    let at = SendRequest {
        body: Bytes::from(vec![b'a'; 1024]),
        ..Default::default()
    };
    let over = SendRequest {
        body: Bytes::from(vec![b'a'; 1025]),
        ..Default::default()
    };
    env.store.send("q", at.clone()).await.unwrap();
    let e = env.store.send("q", over.clone()).await.unwrap_err();
    assert!(matches!(
        e,
        StoreError::MessageTooLarge {
            size: 1025,
            limit: 1024
        }
    ));
    assert_eq!(e.field(), Some("body"));
    assert!(e.to_string().contains("1024"));
    let e = env.store.send_batch("q", vec![at, over]).await.unwrap_err();
    assert_eq!(e.field(), Some("body"));
    assert_eq!(env.store.get_queue("q").await.unwrap().active_messages, 1);
}

#[tokio::test]
async fn operations_on_missing_queues_say_so() {
    // Proves: every queue operation names a missing queue with QueueNotExist (404).
    let env = Env::new();
    let e = env.store.send("nope", text("m")).await.unwrap_err();
    assert_eq!((e.code(), e.status()), ("QueueNotExist", 404));
    let e = env.store.receive("nope", 1, NO_WAIT).await.unwrap_err();
    assert_eq!(e.code(), "QueueNotExist");
    let e = env.store.peek("nope", 1).await.unwrap_err();
    assert_eq!(e.code(), "QueueNotExist");
    let e = env.store.get_queue("nope").await.unwrap_err();
    assert_eq!(e.code(), "QueueNotExist");
    let h = crate::store::sqlite::receipt::Receipt { seq: 1, gen: 5 }.encode();
    let e = env.store.delete("nope", &h).await.unwrap_err();
    assert_eq!(e.code(), "QueueNotExist");
    assert!(!env.store.delete_queue("nope").await.unwrap());
}

#[tokio::test]
async fn deleting_a_queue_with_messages_in_flight_leaves_no_rows() {
    // Proves: clear errors afterwards, no orphan rows or bodies.
    let env = Env::new();
    env.queue("a", |_| {}).await;
    env.queue("b", |_| {}).await;
    env.store.create_topic("t").await.unwrap();
    for q in ["a", "b"] {
        env.store
            .create_subscription(
                "t",
                &format!("t-to-{q}"),
                crate::store::SubscriptionSpec::queue(q),
            )
            .await
            .unwrap();
    }
    env.store
        .publish(
            "t",
            crate::store::PublishRequest {
                body: Bytes::from_static(b"shared"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let h = env.store.receive("a", 1, NO_WAIT).await.unwrap()[0]
        .receipt_handle
        .clone()
        .unwrap();
    assert!(env.store.delete_queue("a").await.unwrap());
    let e = env.store.delete("a", &h).await.unwrap_err();
    assert_eq!(e.code(), "QueueNotExist");
    assert_eq!(env.store.list_subscriptions("t").await.unwrap().len(), 1);
    // b still has the shared body; deleting its copy frees the body row.
    let m = env.store.receive("b", 1, NO_WAIT).await.unwrap().remove(0);
    assert_eq!(body_text(&m), "shared");
    env.store
        .delete("b", m.receipt_handle.as_deref().unwrap())
        .await
        .unwrap();
    env.store.close().await.unwrap();
    let conn = rusqlite::Connection::open(env.dir.path().join("sluice.db")).unwrap();
    let bodies: i64 = conn
        .query_row("SELECT COUNT(*) FROM bodies", [], |r| r.get(0))
        .unwrap();
    assert_eq!(bodies, 0);
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table' AND name LIKE 'q\\_%' ESCAPE '\\'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 1, "only b's table is left");
}

#[tokio::test]
async fn message_serialises_with_design_field_names() {
    // Proves: the JSON shape of docs/message-service.md, body_base64 for non-UTF-8 bodies.
    let env = Env::new();
    env.queue("q", |_| {}).await;
    let mut r = SendRequest {
        body: Bytes::from_static(&[0xff, 0x00, 0x01]),
        tag: Some("t1".into()),
        ..Default::default()
    };
    r.attributes.insert("device".into(), "d1".into());
    env.store.send("q", r).await.unwrap();
    env.store.send("q", text("plain")).await.unwrap();
    let got = env.store.receive("q", 2, NO_WAIT).await.unwrap();
    let bin = serde_json::to_value(&got[0]).unwrap();
    assert_eq!(bin["body_base64"], "/wAB");
    assert!(bin.get("body").is_none());
    assert_eq!(bin["tag"], "t1");
    assert_eq!(bin["attributes"]["device"], "d1");
    for f in [
        "id",
        "body_md5",
        "priority",
        "enqueue_time_ms",
        "first_dequeue_time_ms",
        "next_visible_time_ms",
        "dequeue_count",
        "receipt_handle",
    ] {
        assert!(bin.get(f).is_some(), "missing {f}");
    }
    assert_eq!(bin["id"].as_str().unwrap().len(), 32);
    let plain = serde_json::to_value(&got[1]).unwrap();
    assert_eq!(plain["body"], "plain");
}

#[tokio::test]
async fn tags_and_attributes_with_line_breaks_are_refused() {
    // Proves: CR/LF in tag or attributes is refused before anything is stored.
    let env = Env::new();
    env.queue("q", |_| {}).await;
    let mut r = text("m");
    r.tag = Some("a\r\nb".into());
    assert_eq!(
        env.store.send("q", r).await.unwrap_err().field(),
        Some("tag")
    );
    let mut r = text("m");
    r.tag = Some("seventeen-chars-x".into());
    assert_eq!(
        env.store.send("q", r).await.unwrap_err().field(),
        Some("tag")
    );
    let mut r = text("m");
    r.attributes.insert("k".into(), "v\nX-Evil: 1".into());
    assert_eq!(
        env.store.send("q", r).await.unwrap_err().field(),
        Some("attributes")
    );
    assert!(env.store.peek("q", 1).await.unwrap().is_empty());
}

/// Requests the writer has served since the store opened.
fn requests_served(env: &Env) -> u64 {
    env.store.counters().batch_requests.cumulative(&[]).sum_ns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_new_message_wakes_one_long_poll_not_every_one() {
    // Proves: with 8 consumers long-polling an empty queue, one send sends one of them to the
    // writer to claim it, not all 8 (no thundering herd); the rest still get later messages.
    let env = Env::new();
    env.queue("q", |_| {}).await;
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..8 {
        let (store, done_tx) = (env.store.clone(), done_tx.clone());
        tokio::spawn(async move {
            let got = store
                .receive("q", 1, Some(Duration::from_secs(10)))
                .await
                .unwrap();
            let _ = done_tx.send(got.len());
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = requests_served(&env);
    env.store.send("q", text("one")).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), done.recv()).await;
    assert_eq!(first.unwrap(), Some(1), "one poll returns the message");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served = requests_served(&env) - before;
    println!("one send with 8 long polls waiting: the writer served {served} requests");
    assert!(
        served <= 3,
        "the send and one claim, not a claim per poll: {served}"
    );
    for i in 0..7 {
        env.store.send("q", text(&format!("m{i}"))).await.unwrap();
    }
    for _ in 0..7 {
        let next = tokio::time::timeout(Duration::from_secs(5), done.recv()).await;
        assert_eq!(
            next.unwrap(),
            Some(1),
            "every waiting poll gets a later message"
        );
    }
}
