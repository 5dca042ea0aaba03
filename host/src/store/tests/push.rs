//! Push state in the store on a manual clock: fan-out in the publish's commit, the day-long
//! schedule, restarts, dead letters, disable and rotation. Each test starts with one line
//! saying what it proves.

use std::time::Duration;

use bytes::Bytes;

use crate::store::push::{HttpPush, NotifyStrategy, PushOutcome, PushResult};
use crate::store::tests::{Env, T0};
use crate::store::{Clock, Endpoint, PublishRequest, StoreError, SubscriptionSpec};

fn http_spec(url: &str, f: impl FnOnce(&mut HttpPush)) -> SubscriptionSpec {
    let mut p = HttpPush::new(url);
    f(&mut p);
    SubscriptionSpec {
        endpoint: Endpoint::Http(p),
        filter_tag: None,
        base64_body: false,
    }
}

async fn publish(env: &Env, topic: &str, body: &str) -> String {
    let p = env
        .store
        .publish(
            topic,
            PublishRequest {
                body: Bytes::from(body.to_owned()),
                ..Default::default()
            },
        )
        .await
        .expect("publish");
    p.id.to_string()
}

async fn sub_id(env: &Env, topic: &str, name: &str) -> i64 {
    env.store
        .push_subscriptions()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.topic == topic && s.name == name)
        .expect("push subscription")
        .id
}

/// Topic `t` with the HTTP subscription `h` (defaults, an endpoint nobody listens on).
async fn topic_t_with_http_sub_h(env: &Env) {
    env.store.create_topic("t").await.unwrap();
    env.store
        .create_subscription("t", "h", http_spec("http://127.0.0.1:9/", |_| {}))
        .await
        .unwrap();
}

fn retry(seq: u64, due_ms: u64) -> PushOutcome {
    PushOutcome {
        seq,
        result: PushResult::Retry {
            due_ms,
            error: "HTTP 500".into(),
        },
    }
}

#[tokio::test]
async fn publish_fans_out_to_http_subscriptions_in_its_commit_with_the_body_stored_once() {
    // Proves: a publish creates one pending push per HTTP subscription in its own commit,
    // sharing one body row with the queue rows, and the secret is shown only at creation.
    let env = Env::new();
    env.store.create_topic("t").await.unwrap();
    env.queue("q", |_| {}).await;
    env.store
        .create_subscription("t", "to-q", SubscriptionSpec::queue("q"))
        .await
        .unwrap();
    let a = env
        .store
        .create_push_subscription("t", "a", http_spec("http://127.0.0.1:9/a", |_| {}))
        .await
        .unwrap();
    assert!(a.created && a.secret.as_deref().unwrap().starts_with("whsec_"));
    let again = env
        .store
        .create_push_subscription("t", "a", http_spec("http://127.0.0.1:9/a", |_| {}))
        .await
        .unwrap();
    assert_eq!(
        (again.created, again.secret),
        (false, None),
        "secret shown once"
    );
    let err = env
        .store
        .create_push_subscription("t", "a", http_spec("http://127.0.0.1:9/other", |_| {}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::SubscriptionAlreadyExist { .. }),
        "{err}"
    );
    env.store
        .create_subscription("t", "b", http_spec("http://127.0.0.1:9/b", |_| {}))
        .await
        .unwrap();
    let p = env
        .store
        .publish(
            "t",
            PublishRequest {
                body: Bytes::from_static(b"hello"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((p.queues, p.pushes), (1, 2));
    let db = rusqlite::Connection::open(env.store.data_dir().join("sluice.db")).unwrap();
    let (n, refs): (i64, i64) = db
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(refs), 0) FROM bodies",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((n, refs), (1, 3), "one body row referenced by three rows");
    for name in ["a", "b"] {
        let id = sub_id(&env, "t", name).await;
        let c = env.store.push_cycle(id, vec![], 8).await.unwrap();
        assert_eq!(c.deliveries.len(), 1, "{name}");
        let d = &c.deliveries[0];
        assert_eq!(
            (&d.body[..], d.message_id.as_str()),
            (&b"hello"[..], p.id.to_string().as_str())
        );
        let c = env
            .store
            .push_cycle(
                id,
                vec![PushOutcome {
                    seq: d.seq,
                    result: PushResult::Delivered,
                }],
                8,
            )
            .await
            .unwrap();
        assert!(c.deliveries.is_empty() && c.next_due_ms.is_none());
        let st = env.store.push_status("t", name).await.unwrap();
        assert_eq!((st.delivered_total, st.backlog), (1, 0));
    }
    let (n, refs): (i64, i64) = db
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(refs), 0) FROM bodies",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((n, refs), (1, 1), "the queue row still holds the body");
    // Show never includes the secret.
    let info = env.store.get_subscription("t", "a").await.unwrap();
    assert!(!serde_json::to_string(&info).unwrap().contains("whsec_"));
}

#[tokio::test]
async fn the_day_long_exponential_schedule_runs_on_a_manual_clock_into_the_dead_letter_queue() {
    // Proves: 1 + 176 attempts at the stored times (nothing claimable early), then the
    // dead-letter queue with the last error; redrive brings it back with the same id.
    let env = Env::new();
    env.store.create_topic("t").await.unwrap();
    env.queue("dlq", |_| {}).await;
    env.store
        .create_subscription(
            "t",
            "h",
            http_spec("http://127.0.0.1:9/", |p| {
                p.strategy = NotifyStrategy::ExponentialDecayRetry;
                p.dead_letter_queue = Some("dlq".into());
            }),
        )
        .await
        .unwrap();
    let id = sub_id(&env, "t", "h").await;
    let msg = publish(&env, "t", "payload").await;
    let mut outcomes = vec![];
    let mut attempts = 0u32;
    let start = env.clock.now_ms();
    loop {
        let c = env
            .store
            .push_cycle(id, std::mem::take(&mut outcomes), 4)
            .await
            .unwrap();
        let Some(d) = c.deliveries.first() else {
            // Nothing due yet: the store says when.
            let Some(next) = c.next_due_ms else { break };
            assert!(next > env.clock.now_ms());
            env.clock.set_ms(next - 1);
            let early = env.store.push_cycle(id, vec![], 4).await.unwrap();
            assert!(early.deliveries.is_empty(), "nothing before its time");
            env.clock.set_ms(next);
            continue;
        };
        assert_eq!(
            (d.message_id.as_str(), d.attempts),
            (msg.as_str(), attempts)
        );
        let verdict = crate::deliver::classify::Verdict::Retry {
            reason: format!("HTTP 500 #{attempts}"),
            retry_after: None,
        };
        let result = crate::deliver::next_result(
            verdict,
            NotifyStrategy::ExponentialDecayRetry,
            d.attempts,
            1.0,
            env.clock.now_ms(),
            0.5,
        );
        attempts += 1;
        outcomes.push(PushOutcome { seq: d.seq, result });
    }
    assert_eq!(attempts, 177, "the first attempt and 176 retries");
    let elapsed_s = (env.clock.now_ms() - start) / 1000;
    assert_eq!(elapsed_s, 86_015, "about a day");
    let st = env.store.push_status("t", "h").await.unwrap();
    assert_eq!(
        (
            st.failed_attempts_total,
            st.dead_lettered_total,
            st.dropped_total,
            st.backlog
        ),
        (177, 1, 0, 0)
    );
    assert!(st.last_error.unwrap().contains("HTTP 500 #176"));
    let dead = env.store.push_dead_letters("t", "h", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    let origin = dead[0].dead_letter.clone().unwrap();
    assert_eq!(dead[0].id.to_string(), msg);
    assert_eq!(&dead[0].body[..], b"payload");
    assert_eq!(
        (
            origin.source_queue.as_str(),
            origin.source_subscription.as_deref()
        ),
        ("t", Some("h"))
    );
    assert_eq!(origin.dequeue_count, 177);
    assert_eq!(
        env.store
            .redrive_push_dead_letters("t", "h", 10)
            .await
            .unwrap(),
        1
    );
    assert!(env.store.peek("dlq", 16).await.unwrap().is_empty());
    let c = env.store.push_cycle(id, vec![], 4).await.unwrap();
    assert_eq!(c.deliveries.len(), 1);
    assert_eq!(
        (
            c.deliveries[0].message_id.as_str(),
            c.deliveries[0].attempts
        ),
        (msg.as_str(), 0)
    );
    assert_eq!(&c.deliveries[0].body[..], b"payload");
}

#[tokio::test]
async fn a_restart_keeps_stored_times_spreads_overdue_retries_and_redelivers_unreported_pushes() {
    // Proves: after a reopen, future retries keep their time, overdue ones come one at a time
    // 100 ms apart, and a push leased but never reported is due again with the same id.
    let mut env = Env::new();
    topic_t_with_http_sub_h(&env).await;
    let id = sub_id(&env, "t", "h").await;
    let mut ids = vec![];
    for i in 0..6 {
        ids.push(publish(&env, "t", &format!("m{i}")).await);
    }
    let c = env.store.push_cycle(id, vec![], 16).await.unwrap();
    assert_eq!(c.deliveries.len(), 6);
    let seqs: Vec<u64> = c.deliveries.iter().map(|d| d.seq).collect();
    // Three fail with a retry at +10 s, two at +100 s, one is never reported (a crash after
    // the endpoint answered).
    let mut outcomes: Vec<_> = seqs[..3].iter().map(|&s| retry(s, T0 + 10_000)).collect();
    outcomes.extend(seqs[3..5].iter().map(|&s| retry(s, T0 + 100_000)));
    env.store.push_cycle(id, outcomes, 0).await.unwrap();
    env.clock.set_ms(T0 + 50_000);
    env.reopen().await;
    let id = sub_id(&env, "t", "h").await;
    let now = env.clock.now_ms();
    let c = env.store.push_cycle(id, vec![], 16).await.unwrap();
    // The unreported first attempt, and the first overdue retry; the others wait their turn.
    let mut got: Vec<(String, u32)> = c
        .deliveries
        .iter()
        .map(|d| (d.message_id.clone(), d.attempts))
        .collect();
    got.sort();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.contains(&(ids[5].clone(), 0)), "{got:?}");
    assert_eq!(c.next_due_ms, Some(now + 100));
    let mut claimed_at = vec![];
    for step in 1..=2u64 {
        env.clock.set_ms(now + step * 100 - 1);
        assert!(env
            .store
            .push_cycle(id, vec![], 16)
            .await
            .unwrap()
            .deliveries
            .is_empty());
        env.clock.set_ms(now + step * 100);
        let c = env.store.push_cycle(id, vec![], 16).await.unwrap();
        assert_eq!(c.deliveries.len(), 1, "overdue retries one at a time");
        assert_eq!(c.deliveries[0].attempts, 1);
        claimed_at.push(env.clock.now_ms() - now);
    }
    assert_eq!(claimed_at, vec![100, 200]);
    let c = env.store.push_cycle(id, vec![], 16).await.unwrap();
    assert_eq!(
        c.next_due_ms,
        Some(T0 + 100_000),
        "future retries keep their stored time"
    );
}

#[tokio::test]
async fn gone_disables_drop_is_counted_rotation_keeps_the_old_secret_for_the_grace() {
    // Proves: a 410 disables the subscription and keeps the message; enable resumes; a
    // schedule that runs out without a dead-letter queue is a counted drop; rotation keeps the
    // old secret for its grace period; deleting the subscription drops its pending rows.
    let env = Env::new();
    topic_t_with_http_sub_h(&env).await;
    let id = sub_id(&env, "t", "h").await;
    publish(&env, "t", "x").await;
    let d = env
        .store
        .push_cycle(id, vec![], 1)
        .await
        .unwrap()
        .deliveries[0]
        .clone();
    let c = env
        .store
        .push_cycle(
            id,
            vec![PushOutcome {
                seq: d.seq,
                result: PushResult::Disable {
                    error: "HTTP 410".into(),
                },
            }],
            1,
        )
        .await
        .unwrap();
    assert!(!c.enabled && c.deliveries.is_empty());
    let st = env.store.push_status("t", "h").await.unwrap();
    assert_eq!(
        (st.enabled, st.backlog, st.disabled_reason.as_deref()),
        (false, 1, Some("HTTP 410"))
    );
    env.store.set_push_enabled("t", "h", true).await.unwrap();
    let c = env.store.push_cycle(id, vec![], 1).await.unwrap();
    assert_eq!(c.deliveries.len(), 1);
    let c = env
        .store
        .push_cycle(
            id,
            vec![PushOutcome {
                seq: d.seq,
                result: PushResult::GiveUp {
                    error: "HTTP 500".into(),
                },
            }],
            1,
        )
        .await
        .unwrap();
    assert!(c.deliveries.is_empty());
    let st = env.store.push_status("t", "h").await.unwrap();
    assert_eq!(
        (st.dropped_total, st.backlog, st.failed_attempts_total),
        (1, 0, 2)
    );

    let before = env.store.push_subscriptions().await.unwrap()[0]
        .secret
        .clone();
    let new = env
        .store
        .rotate_push_secret("t", "h", Duration::from_secs(60))
        .await
        .unwrap();
    let s = env.store.push_subscriptions().await.unwrap().remove(0);
    assert_eq!(s.secret, new);
    assert_eq!(s.old_secret, Some((before, T0 + 60_000)));
    env.clock.advance_ms(60_000);
    assert_eq!(
        env.store.push_subscriptions().await.unwrap()[0].old_secret,
        None
    );

    publish(&env, "t", "y").await;
    assert!(env.store.delete_subscription("t", "h").await.unwrap());
    let db = rusqlite::Connection::open(env.store.data_dir().join("sluice.db")).unwrap();
    let left: i64 = db
        .query_row(
            "SELECT (SELECT COUNT(*) FROM push_pending) + (SELECT COUNT(*) FROM push_subs)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "no orphan rows");
    assert!(env.store.push_cycle(id, vec![], 1).await.unwrap().gone);
}

#[tokio::test]
async fn a_v1_database_migrates_to_push_state_and_keeps_its_catalog() {
    // Proves migration v1 -> v2 (push tables): a v1 file with a topic and a queue
    // subscription opens, keeps them, and takes HTTP subscriptions.
    let dir = tempfile::tempdir().unwrap();
    {
        let mut conn = rusqlite::Connection::open(dir.path().join("sluice.db")).unwrap();
        crate::store::sqlite::schema::migrate_to(&mut conn, 1).unwrap();
        conn.execute_batch("INSERT INTO topics (id, name, create_time_ms) VALUES (1, 'old', 1);")
            .unwrap();
    }
    let clock = std::sync::Arc::new(crate::store::ManualClock::new(T0));
    let store = crate::store::tests::open_with(dir.path(), clock);
    assert_eq!(store.list_topics().await.unwrap()[0].name, "old");
    store
        .create_subscription("old", "h", http_spec("http://127.0.0.1:9/", |_| {}))
        .await
        .unwrap();
    let p = store
        .publish(
            "old",
            PublishRequest {
                body: Bytes::from_static(b"x"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(p.pushes, 1);
    store.close().await.unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("sluice.db")).unwrap();
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, crate::store::sqlite::schema::SCHEMA_VERSION);
}

#[tokio::test]
async fn a_strategy_change_reaches_reads_the_worker_and_a_restart() {
    // Proves: set_push_strategy updates the stored spec (reads), the push state (the worker's
    // next retry) and survives a reopen; a queue subscription is refused with the field named.
    let mut env = Env::new();
    topic_t_with_http_sub_h(&env).await;
    let strategy = |info: crate::store::SubscriptionInfo| match info.spec.endpoint {
        Endpoint::Http(p) => p.strategy,
        other => panic!("not HTTP: {other:?}"),
    };
    let before = strategy(env.store.get_subscription("t", "h").await.unwrap());
    assert_eq!(before, NotifyStrategy::BackoffRetry);
    env.store
        .set_push_strategy("t", "h", NotifyStrategy::ExponentialDecayRetry)
        .await
        .unwrap();
    let worker_view = env.store.push_subscriptions().await.unwrap();
    assert_eq!(
        worker_view[0].push.strategy,
        NotifyStrategy::ExponentialDecayRetry
    );
    env.reopen().await;
    let after = strategy(env.store.get_subscription("t", "h").await.unwrap());
    assert_eq!(after, NotifyStrategy::ExponentialDecayRetry);
    assert_eq!(
        env.store.push_subscriptions().await.unwrap()[0]
            .push
            .strategy,
        NotifyStrategy::ExponentialDecayRetry
    );

    env.store
        .create_queue("q", Default::default())
        .await
        .unwrap();
    env.store
        .create_subscription(
            "t",
            "toq",
            SubscriptionSpec {
                endpoint: Endpoint::Queue("q".into()),
                filter_tag: None,
                base64_body: false,
            },
        )
        .await
        .unwrap();
    let err = env
        .store
        .set_push_strategy("t", "toq", NotifyStrategy::ExponentialDecayRetry)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument { .. }), "{err}");
}

#[tokio::test]
async fn a_signing_mode_is_kept_and_a_spec_stored_without_one_is_standard_webhooks() {
    // Proves: the signing mode round-trips through the stored spec (reads, the worker's view, a
    // reopen), and a spec written before modes existed reads as Standard Webhooks.
    use crate::store::SigningMode;
    let mut env = Env::new();
    env.store.create_topic("t").await.unwrap();
    env.store
        .create_subscription(
            "t",
            "m",
            http_spec("http://127.0.0.1:9/", |p| p.signing = SigningMode::Mns),
        )
        .await
        .unwrap();
    env.reopen().await;
    let Endpoint::Http(p) = env
        .store
        .get_subscription("t", "m")
        .await
        .unwrap()
        .spec
        .endpoint
    else {
        panic!("not HTTP")
    };
    assert_eq!(p.signing, SigningMode::Mns);
    assert_eq!(
        env.store.push_subscriptions().await.unwrap()[0]
            .push
            .signing,
        SigningMode::Mns
    );
    let old: SubscriptionSpec = serde_json::from_str(
        r#"{"endpoint":{"http":{"url":"http://h/","strategy":"BACKOFF_RETRY","format":"XML",
            "push_timeout_seconds":5,"dead_letter_queue":null,"max_concurrency":32}},
            "filter_tag":null,"base64_body":false}"#,
    )
    .unwrap();
    let Endpoint::Http(p) = old.endpoint else {
        panic!("not HTTP")
    };
    assert_eq!(p.signing, SigningMode::StandardWebhooks);
    assert_eq!(
        serde_json::to_value(SigningMode::StandardWebhooks).unwrap(),
        "standard-webhooks"
    );
    for m in [
        SigningMode::StandardWebhooks,
        SigningMode::Mns,
        SigningMode::Both,
    ] {
        assert_eq!(SigningMode::parse(m.as_str()), Some(m));
        assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
    }
    assert_eq!(
        SigningMode::parse("STANDARD_WEBHOOKS"),
        Some(SigningMode::StandardWebhooks)
    );
    assert_eq!(SigningMode::parse("rsa"), None);
}
