//! The store conformance suite: the same tests against both backends (SQLite, and JetStream on
//! a real NATS server), on the real clock with short timeouts. Where JetStream cannot give the
//! SQLite store's exact semantics, the test states both behaviours side by side, so the
//! differences are exactly the documented ones (README, "The message service on NATS
//! JetStream").

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{body_text, text};
use sluice::ids::now_ms;
use sluice::store::{
    Endpoint, HttpPush, PublishRequest, PushDelivery, PushOutcome, PushResult, QueueAttributes,
    Record, SendRequest, Store, StoreError, StoreOptions, SubscriptionSpec,
};

const NO_WAIT: Option<Duration> = Some(Duration::ZERO);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sqlite,
    JetStream,
}

/// A store on one backend and the directory behind its local part.
struct Subject {
    store: Store,
    kind: Kind,
    /// The JetStream name prefix (empty on SQLite).
    prefix: String,
    dir: tempfile::TempDir,
}

impl Subject {
    /// Creates topic `t` and HTTP subscription `name` on it; returns its id.
    async fn push_sub(&self, name: &str, dead_letter_queue: Option<&str>) -> i64 {
        let _ = self.store.create_topic("t").await.unwrap();
        let mut push = HttpPush::new("http://127.0.0.1:9/hook");
        push.dead_letter_queue = dead_letter_queue.map(str::to_owned);
        let spec = SubscriptionSpec {
            endpoint: Endpoint::Http(push),
            filter_tag: None,
            base64_body: false,
        };
        let created = self
            .store
            .create_push_subscription("t", name, spec.clone())
            .await
            .unwrap();
        assert!(created.created && created.secret.is_some());
        let again = self
            .store
            .create_push_subscription("t", name, spec)
            .await
            .unwrap();
        assert!(
            !again.created && again.secret.is_none(),
            "the secret is shown once"
        );
        let subs = self.store.push_subscriptions().await.unwrap();
        subs.iter().find(|p| p.name == name).expect("listed").id
    }

    /// Reports `outcomes` and claims pushes of `sub` until `want` are claimed or 10 s pass.
    async fn claim(&self, sub: i64, outcomes: Vec<PushOutcome>, want: usize) -> Vec<PushDelivery> {
        let end = Instant::now() + Duration::from_secs(10);
        let mut got = self
            .store
            .push_cycle(sub, outcomes, want)
            .await
            .unwrap()
            .deliveries;
        while got.len() < want && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let more = self
                .store
                .push_cycle(sub, Vec::new(), want - got.len())
                .await;
            got.extend(more.unwrap().deliveries);
        }
        got
    }

    async fn open(kind: Kind) -> Subject {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, prefix) = match kind {
            Kind::Sqlite => (
                Store::open(dir.path(), StoreOptions::default()).expect("open"),
                String::new(),
            ),
            Kind::JetStream => {
                let prefix = super::nats::fresh_prefix();
                let js = super::nats::connect(&prefix, 1, "conformance")
                    .await
                    .expect("connect to the test NATS server");
                let store = Store::open_with_jetstream(dir.path(), StoreOptions::default(), js)
                    .expect("open");
                (store, prefix)
            }
        };
        Subject {
            store,
            kind,
            prefix,
            dir,
        }
    }

    async fn queue(&self, name: &str, f: impl FnOnce(&mut QueueAttributes)) {
        super::create_queue(&self.store, name, f).await
    }

    /// Another handle on the same stored data: the SQLite store closed and opened again, or a
    /// second process on the JetStream prefix.
    async fn reopen(&mut self) {
        self.store.close().await.expect("close");
        self.store = match self.kind {
            Kind::Sqlite => Store::open(self.dir.path(), StoreOptions::default()).expect("reopen"),
            Kind::JetStream => {
                self.dir = tempfile::tempdir().expect("tempdir");
                let js = super::nats::connect(&self.prefix, 2, "second")
                    .await
                    .expect("connect");
                Store::open_with_jetstream(self.dir.path(), StoreOptions::default(), js)
                    .expect("open")
            }
        };
    }

    fn on_jetstream(&self) -> bool {
        self.kind == Kind::JetStream
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Subject::open(super::Kind::Sqlite).await).await
                }
            )*
        }
        mod jetstream {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Subject::open(super::Kind::JetStream).await).await
                }
            )*
        }
    };
}

conformance!(
    send_receive_delete_round_trip,
    long_poll_returns_on_the_first_message_and_ends_empty_on_time,
    visibility_timeout_redelivers_and_refuses_the_old_handle,
    handles_are_strict_and_a_second_delete_succeeds,
    change_visibility_gives_a_working_new_handle,
    delayed_messages_appear_on_time,
    priority_order,
    dead_letter_after_max_receive_count,
    topic_fans_out_to_matching_queue_subscriptions,
    catalog_create_is_idempotent_and_conflicts_are_named,
    peek_changes_nothing,
    limits_refuse_and_store_nothing,
    push_claims_retries_and_delivers,
    push_disable_keeps_the_message_and_give_up_dead_letters,
    records_are_kept_by_key_and_survive_a_reopen,
    records_under_a_parent_are_one_range,
);

async fn records_under_a_parent_are_one_range(s: Subject) {
    // Proves the range operations both backends keep for records: `parent/...` lists in key
    // order, counts, and deletes as one range, never touching a sibling whose name merely
    // starts the same (`a` vs `ab`, `a.b`, `a0`), a deeper key is in range, and a batch delete
    // by key says how many existed.
    let st = s.store.clone();
    let rec = |key: &str| Record {
        key: key.into(),
        value: format!(r#"{{"k":"{key}"}}"#),
    };
    for key in ["a/2", "a/1", "a/x/y", "ab/1", "a.b/1", "a0/1", "b/1"] {
        st.put_record("kept", rec(key)).await.unwrap();
    }
    let under = |parent: &'static str| {
        let st = st.clone();
        async move {
            st.list_records_under("kept", parent)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.key)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(under("a").await, vec!["a/1", "a/2", "a/x/y"]);
    assert_eq!(under("ab").await, vec!["ab/1"]);
    assert_eq!(under("zz").await, Vec::<String>::new());
    assert_eq!(st.count_records_under("kept", "a").await.unwrap(), 3);
    assert_eq!(
        st.delete_records("kept", &["a/1".into(), "a/nope".into()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(st.delete_records_under("kept", "a").await.unwrap(), 2);
    let left: Vec<String> = st
        .list_records("kept")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(left, vec!["a.b/1", "a0/1", "ab/1", "b/1"]);
}

async fn records_are_kept_by_key_and_survive_a_reopen(mut s: Subject) {
    // Proves the record contract both backends keep: insert does not replace, put does, keys
    // with `/` parts list in key order, get and delete answer by key, a bad kind, key or value
    // is refused naming the field, and the records are there for another handle on the same
    // store (a reopen on SQLite, another process on JetStream).
    let rec = |key: &str, value: &str| Record {
        key: key.into(),
        value: value.into(),
    };
    let st = s.store.clone();
    assert!(st
        .insert_record("things", rec("pk/b", r#"{"n":1}"#))
        .await
        .unwrap());
    assert!(!st
        .insert_record("things", rec("pk/b", r#"{"n":2}"#))
        .await
        .unwrap());
    assert_eq!(
        st.get_record("things", "pk/b").await.unwrap().as_deref(),
        Some(r#"{"n":1}"#)
    );
    st.put_record("things", rec("pk/b", r#"{"n":3}"#))
        .await
        .unwrap();
    st.put_record("things", rec("pk/a.1", r#"{"n":4}"#))
        .await
        .unwrap();
    st.put_record("other", rec("pk/a.1", r#"{"n":5}"#))
        .await
        .unwrap();
    let keys: Vec<String> = st
        .list_records("things")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(keys, vec!["pk/a.1", "pk/b"]);
    assert_eq!(
        st.get_record("things", "pk/b").await.unwrap().as_deref(),
        Some(r#"{"n":3}"#)
    );
    assert!(st.delete_record("things", "pk/a.1").await.unwrap());
    assert!(!st.delete_record("things", "pk/a.1").await.unwrap());
    assert_eq!(st.get_record("things", "pk/a.1").await.unwrap(), None);
    assert_eq!(
        st.get_record("other", "pk/a.1").await.unwrap().as_deref(),
        Some(r#"{"n":5}"#),
        "kinds are apart"
    );
    let field = |e: StoreError| e.field().map(str::to_owned);
    let e = st.put_record("Bad", rec("k", "{}")).await.unwrap_err();
    assert_eq!(field(e).as_deref(), Some("kind"));
    let e = st
        .put_record("things", rec("a//b", "{}"))
        .await
        .unwrap_err();
    assert_eq!(field(e).as_deref(), Some("key"));
    let e = st
        .put_record("things", rec("k", "{not json"))
        .await
        .unwrap_err();
    assert_eq!(field(e).as_deref(), Some("value"));

    s.reopen().await;
    let listed = s.store.list_records("things").await.unwrap();
    assert_eq!(listed, vec![rec("pk/b", r#"{"n":3}"#)]);
}

async fn send_receive_delete_round_trip(s: Subject) {
    // Proves: a received message carries its fields and a handle, and is gone after delete.
    s.queue("q", |_| {}).await;
    let mut req = text("hello");
    req.tag = Some("t1".into());
    req.attributes.insert("device".into(), "d1".into());
    let sent = s.store.send("q", req).await.unwrap();
    assert_eq!(sent.body_md5, "5D41402ABC4B2A76B9719D911017C592");
    let got = s
        .store
        .receive("q", 16, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    let m = &got[0];
    assert_eq!((m.id, body_text(m)), (sent.id, "hello".to_owned()));
    assert_eq!(m.body_md5, sent.body_md5);
    assert_eq!(m.tag.as_deref(), Some("t1"));
    assert_eq!(m.attributes.get("device").as_deref(), Some("d1"));
    assert_eq!((m.dequeue_count, m.priority), (1, 8));
    assert_eq!(m.enqueue_time_ms, sent.enqueue_time_ms);
    assert!(m.first_dequeue_time_ms.is_some());
    assert!(m.next_visible_time_ms >= m.enqueue_time_ms + 29_000);
    let handle = m.receipt_handle.clone().unwrap();
    assert!(s.store.receive("q", 16, NO_WAIT).await.unwrap().is_empty());
    let info = s.store.get_queue("q").await.unwrap();
    assert_eq!((info.active_messages, info.inactive_messages), (0, 1));
    s.store.delete("q", &handle).await.unwrap();
    let info = s.store.get_queue("q").await.unwrap();
    assert_eq!((info.active_messages, info.inactive_messages), (0, 0));
}

async fn long_poll_returns_on_the_first_message_and_ends_empty_on_time(s: Subject) {
    // Proves: a long poll ends empty after its wait, and returns soon after a message arrives.
    s.queue("q", |_| {}).await;
    let t = Instant::now();
    let got = s
        .store
        .receive("q", 16, Some(Duration::from_secs(1)))
        .await
        .unwrap();
    let waited = t.elapsed();
    println!("{:?}: empty poll of 1 s took {waited:?}", s.kind);
    assert!(got.is_empty());
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(5));
    let sender = s.store.clone();
    let send = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sender.send("q", text("late")).await.unwrap();
    });
    let t = Instant::now();
    let got = s
        .store
        .receive("q", 16, Some(Duration::from_secs(20)))
        .await
        .unwrap();
    let waited = t.elapsed();
    println!("{:?}: poll answered after {waited:?}", s.kind);
    send.await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(waited < Duration::from_secs(10), "took {waited:?}");
}

async fn visibility_timeout_redelivers_and_refuses_the_old_handle(s: Subject) {
    // Proves on both: an expired handle is refused (stale) and changes nothing;
    // the message comes back with dequeue count 2.
    s.queue("q", |a| a.visibility_timeout = 1).await;
    s.store.send("q", text("m")).await.unwrap();
    let first = s.store.receive("q", 1, NO_WAIT).await.unwrap().remove(0);
    let old = first.receipt_handle.clone().unwrap();
    let second = s
        .store
        .receive("q", 1, Some(Duration::from_secs(10)))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(second.id, first.id);
    assert_eq!(second.dequeue_count, 2);
    let e = s.store.delete("q", &old).await.unwrap_err();
    assert!(matches!(e, StoreError::ReceiptHandleStale { .. }), "{e}");
    assert_eq!(e.status(), 409);
    s.store
        .delete("q", second.receipt_handle.as_ref().unwrap())
        .await
        .unwrap();
    assert!(s.store.receive("q", 1, NO_WAIT).await.unwrap().is_empty());
}

async fn handles_are_strict_and_a_second_delete_succeeds(s: Subject) {
    // Proves: garbled, made-up and other-queue handles are refused as malformed; deleting twice
    // with the current handle succeeds both times.
    s.queue("a", |_| {}).await;
    s.queue("b", |_| {}).await;
    s.store.send("a", text("m")).await.unwrap();
    let m = s.store.receive("a", 1, NO_WAIT).await.unwrap().remove(0);
    let h = m.receipt_handle.unwrap();
    for bad in ["", "garbage!", "AAAAAAAAAAAAAAAAAAAAAA"] {
        let e = s.store.delete("a", bad).await.unwrap_err();
        assert_eq!(e.code(), "ReceiptHandleError", "{bad:?}: {e}");
    }
    let e = s.store.delete("b", &h).await.unwrap_err();
    assert!(
        matches!(e.code(), "ReceiptHandleError" | "MessageNotExist"),
        "another queue's handle: {e}"
    );
    s.store.delete("a", &h).await.unwrap();
    s.store.delete("a", &h).await.unwrap();
    assert_eq!(s.store.get_queue("a").await.unwrap().inactive_messages, 0);
}

async fn change_visibility_gives_a_working_new_handle(s: Subject) {
    // Proves: the new handle deletes the message; the message comes back when the new timeout
    // ends. The replaced handle is refused on SQLite; on JetStream it keeps working until its
    // own lease ends (documented difference).
    s.queue("q", |a| a.visibility_timeout = 30).await;
    s.store.send("q", text("m")).await.unwrap();
    let m = s.store.receive("q", 1, NO_WAIT).await.unwrap().remove(0);
    let old = m.receipt_handle.unwrap();
    let changed = s.store.change_visibility("q", &old, 1).await.unwrap();
    assert_ne!(changed.receipt_handle, old);
    let again = s
        .store
        .receive("q", 1, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "visible again after the new timeout");
    let current = again[0].receipt_handle.clone().unwrap();
    let old_result = s.store.delete("q", &old).await;
    if s.on_jetstream() {
        assert!(
            old_result.is_ok(),
            "JetStream: the replaced handle still acks"
        );
        assert!(s.store.receive("q", 1, NO_WAIT).await.unwrap().is_empty());
    } else {
        let e = old_result.unwrap_err();
        assert_eq!(e.code(), "ReceiptHandleStale", "{e}");
        s.store.delete("q", &current).await.unwrap();
    }
    assert_eq!(s.store.get_queue("q").await.unwrap().inactive_messages, 0);
}

async fn delayed_messages_appear_on_time(s: Subject) {
    // Proves: a per-message delay and a queue's delay_seconds hide a message until its time.
    s.queue("q", |_| {}).await;
    s.queue("slow", |a| a.delay_seconds = 1).await;
    let sent = s
        .store
        .send(
            "q",
            SendRequest {
                delay_seconds: Some(1),
                ..text("later")
            },
        )
        .await
        .unwrap();
    assert_eq!(sent.next_visible_time_ms, sent.enqueue_time_ms + 1000);
    s.store.send("slow", text("later too")).await.unwrap();
    for queue in ["q", "slow"] {
        assert!(s.store.receive(queue, 1, NO_WAIT).await.unwrap().is_empty());
        assert_eq!(s.store.get_queue(queue).await.unwrap().delayed_messages, 1);
    }
    let t = Instant::now();
    for queue in ["q", "slow"] {
        let got = s
            .store
            .receive(queue, 1, Some(Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "{queue}");
        assert!(got[0].enqueue_time_ms + 1000 <= now_ms());
    }
    println!(
        "{:?}: delayed messages came after {:?}",
        s.kind,
        t.elapsed()
    );
}

async fn priority_order(s: Subject) {
    // Proves: SQLite delivers priority 1 first; JetStream keeps the priority on the message but
    // delivers in sending order (documented difference).
    s.queue("q", |_| {}).await;
    for (body, p) in [("low", 16u8), ("mid", 8), ("high", 1)] {
        s.store
            .send(
                "q",
                SendRequest {
                    priority: Some(p),
                    ..text(body)
                },
            )
            .await
            .unwrap();
    }
    let got = s.store.receive("q", 16, NO_WAIT).await.unwrap();
    let order: Vec<(String, u8)> = got.iter().map(|m| (body_text(m), m.priority)).collect();
    let expected: Vec<(&str, u8)> = if s.on_jetstream() {
        vec![("low", 16), ("mid", 8), ("high", 1)]
    } else {
        vec![("high", 1), ("mid", 8), ("low", 16)]
    };
    let expected: Vec<(String, u8)> = expected.into_iter().map(|(b, p)| (b.into(), p)).collect();
    assert_eq!(order, expected);
}

async fn dead_letter_after_max_receive_count(s: Subject) {
    // Proves: a message received max_receive_count times moves to the dead-letter queue on the
    // next receive, with its origin, and is no longer in the source queue.
    s.queue("dlq", |_| {}).await;
    s.queue("q", |a| {
        a.visibility_timeout = 1;
        a.dead_letter_queue = Some("dlq".into());
        a.max_receive_count = Some(1);
    })
    .await;
    let sent = s.store.send("q", text("poison")).await.unwrap();
    let first = s.store.receive("q", 1, NO_WAIT).await.unwrap();
    assert_eq!(first.len(), 1);
    // After the lease ends the next receive moves it instead of returning it.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let again = s
        .store
        .receive("q", 1, Some(Duration::from_millis(500)))
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    let dead = s
        .store
        .receive("dlq", 1, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(body_text(&dead[0]), "poison");
    let origin = dead[0].dead_letter.as_ref().expect("origin");
    assert_eq!(origin.source_queue, "q");
    assert_eq!(origin.original_id, sent.id.to_string());
    assert_eq!(origin.dequeue_count, 1);
    let info = s.store.get_queue("q").await.unwrap();
    assert_eq!(
        info.dead_lettered_total, 1,
        "the move is counted on the source queue"
    );
}

async fn topic_fans_out_to_matching_queue_subscriptions(s: Subject) {
    // Proves: a publish reaches every queue subscription whose filter tag matches, and an
    // unknown topic fails the whole unit.
    s.store.create_topic("t").await.unwrap();
    s.queue("all", |_| {}).await;
    s.queue("tagged", |_| {}).await;
    s.store
        .create_subscription("t", "to-all", SubscriptionSpec::queue("all"))
        .await
        .unwrap();
    let mut spec = SubscriptionSpec::queue("tagged");
    spec.filter_tag = Some("hot".into());
    s.store
        .create_subscription("t", "to-tagged", spec)
        .await
        .unwrap();
    let publish = |tag: Option<&str>| PublishRequest {
        body: Bytes::from_static(b"x"),
        tag: tag.map(str::to_owned),
        ..PublishRequest::default()
    };
    let p = s.store.publish("t", publish(Some("hot"))).await.unwrap();
    assert_eq!(p.queues, 2);
    let p = s.store.publish("t", publish(None)).await.unwrap();
    assert_eq!(p.queues, 1);
    let e = s
        .store
        .publish_batch(vec![
            ("t".into(), publish(None)),
            ("nope".into(), publish(None)),
        ])
        .await
        .unwrap_err();
    assert_eq!(e.code(), "TopicNotExist");
    let all = s.store.receive("all", 16, NO_WAIT).await.unwrap();
    let tagged = s.store.receive("tagged", 16, NO_WAIT).await.unwrap();
    assert_eq!((all.len(), tagged.len()), (2, 1));
    assert_eq!(tagged[0].tag.as_deref(), Some("hot"));
    assert_eq!(s.store.get_topic("t").await.unwrap().subscriptions, 2);
    let subs = s.store.list_subscriptions("t").await.unwrap();
    assert_eq!(subs.len(), 2);
}

async fn catalog_create_is_idempotent_and_conflicts_are_named(s: Subject) {
    // Proves: same attributes -> Ok(false), different -> QueueAlreadyExist; operations on
    // missing things name them; deleting a queue removes its subscriptions.
    s.queue("q", |_| {}).await;
    assert!(!s
        .store
        .create_queue("q", QueueAttributes::default())
        .await
        .unwrap());
    let other = QueueAttributes {
        visibility_timeout: 99,
        ..QueueAttributes::default()
    };
    let e = s.store.create_queue("q", other).await.unwrap_err();
    assert_eq!(e.code(), "QueueAlreadyExist");
    assert!(s.store.create_topic("t").await.unwrap());
    assert!(!s.store.create_topic("t").await.unwrap());
    s.store
        .create_subscription("t", "s", SubscriptionSpec::queue("q"))
        .await
        .unwrap();
    let e = s
        .store
        .create_subscription("t", "s2", SubscriptionSpec::queue("missing"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "QueueNotExist");
    assert_eq!(
        s.store.send("missing", text("x")).await.unwrap_err().code(),
        "QueueNotExist"
    );
    assert_eq!(
        s.store
            .receive("missing", 1, NO_WAIT)
            .await
            .unwrap_err()
            .code(),
        "QueueNotExist"
    );
    assert_eq!(
        s.store.get_topic("missing").await.unwrap_err().code(),
        "TopicNotExist"
    );
    let names: Vec<String> = s
        .store
        .list_queues()
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.name)
        .collect();
    assert_eq!(names, vec!["q".to_owned()]);
    assert!(s.store.delete_queue("q").await.unwrap());
    assert!(!s.store.delete_queue("q").await.unwrap());
    assert!(s.store.list_subscriptions("t").await.unwrap().is_empty());
    assert!(s.store.delete_topic("t").await.unwrap());
    assert!(s.store.list_topics().await.unwrap().is_empty());
}

async fn peek_changes_nothing(s: Subject) {
    // Proves: peek returns messages without handles and changes nothing. SQLite shows only
    // visible messages; JetStream shows in-flight ones too (documented difference).
    s.queue("q", |_| {}).await;
    s.store.send("q", text("one")).await.unwrap();
    s.store.send("q", text("two")).await.unwrap();
    let peeked = s.store.peek("q", 16).await.unwrap();
    assert_eq!(peeked.len(), 2);
    assert!(peeked.iter().all(|m| m.receipt_handle.is_none()));
    let got = s.store.receive("q", 1, NO_WAIT).await.unwrap();
    assert_eq!(body_text(&got[0]), "one");
    let after = s.store.peek("q", 16).await.unwrap();
    let bodies: Vec<String> = after.iter().map(body_text).collect();
    if s.on_jetstream() {
        assert_eq!(bodies, vec!["one", "two"]);
    } else {
        assert_eq!(bodies, vec!["two"]);
    }
}

async fn limits_refuse_and_store_nothing(s: Subject) {
    // Proves: an oversized body and out-of-range values are refused with the field named, and
    // nothing is stored.
    s.queue("q", |a| a.maximum_message_size = 1024).await;
    let big = SendRequest {
        body: Bytes::from(vec![b'x'; 1025]),
        ..SendRequest::default()
    };
    let e = s.store.send("q", big).await.unwrap_err();
    assert_eq!((e.code(), e.status()), ("InvalidArgument", 413));
    let e = s
        .store
        .send(
            "q",
            SendRequest {
                priority: Some(17),
                ..text("x")
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.field(), Some("priority"));
    let e = s.store.receive("q", 17, NO_WAIT).await.unwrap_err();
    assert_eq!(e.field(), Some("max"));
    let info = s.store.get_queue("q").await.unwrap();
    assert_eq!(
        (
            info.active_messages,
            info.inactive_messages,
            info.delayed_messages
        ),
        (0, 0, 0)
    );
}

fn outcome(d: &PushDelivery, result: PushResult) -> PushOutcome {
    PushOutcome { seq: d.seq, result }
}

async fn push_claims_retries_and_delivers(s: Subject) {
    // Proves: a publish becomes one pending push per HTTP subscription; a claim hands it out
    // once; a failed attempt comes back when its retry is due with the attempt counted; a
    // delivered push is gone; `push_status` counts both.
    let sub = s.push_sub("h", None).await;
    for body in ["one", "two"] {
        let p = s
            .store
            .publish(
                "t",
                PublishRequest {
                    body: Bytes::from(body),
                    ..PublishRequest::default()
                },
            )
            .await
            .unwrap();
        assert_eq!((p.queues, p.pushes), (0, 1));
    }
    let got = s.claim(sub, Vec::new(), 2).await;
    let mut bodies: Vec<_> = got
        .iter()
        .map(|d| String::from_utf8_lossy(&d.body).into_owned())
        .collect();
    bodies.sort();
    assert_eq!(bodies, vec!["one", "two"]);
    assert!(got.iter().all(|d| d.attempts == 0));
    let (done, failed) = (&got[0], &got[1]);
    let retry = PushResult::Retry {
        due_ms: now_ms() + 300,
        error: "HTTP 500".into(),
    };
    let outcomes = vec![outcome(done, PushResult::Delivered), outcome(failed, retry)];
    let asked = Instant::now();
    let again = s.claim(sub, outcomes, 1).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message_id, failed.message_id, "same id on a retry");
    assert_eq!(again[0].attempts, 1);
    assert!(
        asked.elapsed() >= Duration::from_millis(250),
        "not before it is due"
    );
    let nothing = s
        .claim(sub, vec![outcome(&again[0], PushResult::Delivered)], 1)
        .await;
    assert!(nothing.is_empty());
    let status = s.store.push_status("t", "h").await.unwrap();
    assert_eq!(
        (
            status.delivered_total,
            status.failed_attempts_total,
            status.backlog
        ),
        (2, 1, 0)
    );
    assert_eq!(status.last_error.as_deref(), Some("HTTP 500"));
}

async fn push_disable_keeps_the_message_and_give_up_dead_letters(s: Subject) {
    // Proves: a 410 disables the subscription and keeps the message for a re-enable; a
    // schedule that ran out moves the message to the dead-letter queue, listed for its
    // subscription and redriven to pending pushes with its id.
    s.queue("dead", |_| {}).await;
    let sub = s.push_sub("h", Some("dead")).await;
    let id = s
        .store
        .publish("t", text_publish("m"))
        .await
        .unwrap()
        .id
        .to_string();
    let got = s.claim(sub, Vec::new(), 1).await;
    let gone = PushResult::Disable {
        error: "HTTP 410 Gone".into(),
    };
    let cycle = s
        .store
        .push_cycle(sub, vec![outcome(&got[0], gone)], 1)
        .await
        .unwrap();
    assert!(!cycle.enabled && cycle.deliveries.is_empty());
    let status = s.store.push_status("t", "h").await.unwrap();
    assert!(!status.enabled);
    assert_eq!(status.disabled_reason.as_deref(), Some("HTTP 410 Gone"));
    s.store.set_push_enabled("t", "h", true).await.unwrap();
    let kept = s.claim(sub, Vec::new(), 1).await;
    assert_eq!(kept.len(), 1, "kept for the re-enable");
    assert_eq!(kept[0].message_id, id);
    // SQLite counts attempts it made; JetStream counts deliveries, and the one answered with
    // 410 was a delivery.
    let expected_attempts = if s.on_jetstream() { 1 } else { 0 };
    assert_eq!(kept[0].attempts, expected_attempts);
    let exhausted = PushResult::GiveUp {
        error: "HTTP 500 (attempt 4, the last)".into(),
    };
    let none = s.claim(sub, vec![outcome(&kept[0], exhausted)], 0).await;
    assert!(none.is_empty());
    let dead = s.store.push_dead_letters("t", "h", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id.to_string(), id);
    let origin = dead[0].dead_letter.as_ref().expect("origin");
    assert_eq!(origin.source_subscription.as_deref(), Some("h"));
    assert_eq!(
        s.store
            .redrive_push_dead_letters("t", "h", 10)
            .await
            .unwrap(),
        1
    );
    let back = s.claim(sub, Vec::new(), 1).await;
    assert_eq!(back.len(), 1);
    assert_eq!(
        (back[0].message_id.as_str(), back[0].attempts),
        (id.as_str(), 0)
    );
    assert!(s
        .store
        .push_dead_letters("t", "h", 10)
        .await
        .unwrap()
        .is_empty());
    let status = s.store.push_status("t", "h").await.unwrap();
    assert_eq!(status.dead_lettered_total, 1);
}

fn text_publish(body: &'static str) -> PublishRequest {
    PublishRequest {
        body: Bytes::from_static(body.as_bytes()),
        ..PublishRequest::default()
    }
}
