//! Restart and shutdown: nothing committed is lost, leases survive and expire on time.

use std::time::Duration;

use super::{body_text, text, Env};
use crate::store::{PublishRequest, StoreError, SubscriptionSpec};

const NO_WAIT: Option<Duration> = Some(Duration::ZERO);

#[tokio::test]
async fn reopen_keeps_catalog_messages_and_leases() {
    // Proves: after close + open, visible, in-flight and delayed messages are all there, leases
    // end on time, handles issued before the restart still work, counters persist.
    let mut env = Env::new();
    env.store.create_topic("t").await.unwrap();
    env.queue("dlq", |_| {}).await;
    env.queue("q", |a| {
        a.visibility_timeout = 100;
        a.dead_letter_queue = Some("dlq".into());
        a.max_receive_count = Some(5);
        a.message_retention_period = 3600;
    })
    .await;
    env.store
        .create_subscription("t", "t-to-q", SubscriptionSpec::queue("q"))
        .await
        .unwrap();
    for i in 0..5 {
        env.store
            .publish(
                "t",
                PublishRequest {
                    body: bytes::Bytes::from(format!("p{i}")),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    let mut delayed = text("delayed");
    delayed.delay_seconds = Some(50);
    env.store.send("q", delayed).await.unwrap();
    let leased = env.store.receive("q", 2, NO_WAIT).await.unwrap();
    assert_eq!(leased.len(), 2);
    let keep = leased[0].receipt_handle.clone().unwrap();

    env.reopen().await;

    let info = env.store.get_queue("q").await.unwrap();
    assert_eq!(
        (
            info.active_messages,
            info.inactive_messages,
            info.delayed_messages
        ),
        (3, 2, 1)
    );
    assert_eq!(info.attributes.dead_letter_queue.as_deref(), Some("dlq"));
    assert_eq!(env.store.list_subscriptions("t").await.unwrap().len(), 1);
    // A handle from before the restart still deletes.
    env.store.delete("q", &keep).await.unwrap();
    // The other lease ends on time: not at 99.999 s, at 100 s.
    let rest = env.store.receive("q", 16, NO_WAIT).await.unwrap();
    assert_eq!(
        rest.iter().map(body_text).collect::<Vec<_>>(),
        ["p2", "p3", "p4"]
    );
    let handles = rest
        .iter()
        .map(|m| m.receipt_handle.clone().unwrap())
        .collect();
    env.store.delete_batch("q", handles).await.unwrap();
    env.clock.advance_ms(50_000);
    let got = env.store.receive("q", 16, NO_WAIT).await.unwrap();
    assert_eq!(got.iter().map(body_text).collect::<Vec<_>>(), ["delayed"]);
    env.store
        .delete("q", got[0].receipt_handle.as_deref().unwrap())
        .await
        .unwrap();
    env.clock.advance_ms(49_999);
    assert!(env
        .store
        .receive("q", 16, NO_WAIT)
        .await
        .unwrap()
        .is_empty());
    env.clock.advance_ms(1);
    let again = env.store.receive("q", 16, NO_WAIT).await.unwrap();
    assert_eq!(again.iter().map(body_text).collect::<Vec<_>>(), ["p1"]);
    assert_eq!(again[0].dequeue_count, 2);
    // Publishing still fans out after the restart (the subscription was reloaded).
    env.store
        .publish("t", PublishRequest::default())
        .await
        .unwrap();
    assert_eq!(env.store.peek("q", 16).await.unwrap().len(), 1);
}

#[tokio::test]
async fn dropping_the_store_without_close_loses_nothing() {
    // Proves: drop is safe: everything acknowledged is on disk and the directory can be reopened
    // at once.
    let dir = tempfile::tempdir().unwrap();
    let clock = std::sync::Arc::new(crate::store::ManualClock::new(super::T0));
    let store = super::open_with(dir.path(), clock.clone());
    store
        .create_queue("q", crate::store::QueueAttributes::default())
        .await
        .unwrap();
    for i in 0..20 {
        store.send("q", text(&i.to_string())).await.unwrap();
    }
    let clone = store.clone();
    drop(store);
    drop(clone);
    let store = super::open_with(dir.path(), clock);
    assert_eq!(store.get_queue("q").await.unwrap().active_messages, 20);
}

#[tokio::test]
async fn closed_store_refuses_requests() {
    // Proves: after close every call fails with Closed (503), from every clone.
    let env = Env::new();
    let other = env.store.clone();
    env.store.close().await.unwrap();
    let e = other.create_topic("t").await.unwrap_err();
    assert!(matches!(e, StoreError::Closed));
    assert_eq!(e.status(), 503);
    // Closing twice is fine.
    env.store.close().await.unwrap();
}

#[tokio::test]
async fn a_receive_whose_caller_went_away_is_released() {
    // Proves: a claim committed for a caller that disconnected is
    // given back at once, with its dequeue count restored, instead of staying leased.
    let env = Env::new();
    env.queue("q", |_| {}).await;
    env.store.send("q", text("m")).await.unwrap();
    // The caller is gone before the answer comes.
    env.store.sqlite().abandoned_receive("q", 1).await;
    // The release runs in the writer's next batch and wakes this long poll.
    let got = env
        .store
        .receive("q", 1, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "released and received again");
    assert_eq!(got[0].dequeue_count, 1);
}

#[tokio::test]
async fn a_full_database_fails_writes_cleanly_and_recovers_after_deletes() {
    // Proves: when space runs out (here `max_db_bytes`) sends fail with
    // StorageFull, every acknowledged message is still there, and once consumers free space,
    // sends succeed again without a restart.
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::Store::open(
        dir.path(),
        crate::store::StoreOptions {
            clock: std::sync::Arc::new(crate::store::ManualClock::new(super::T0)),
            max_db_bytes: Some(512 * 1024),
            ..Default::default()
        },
    )
    .unwrap();
    store
        .create_queue("q", crate::store::QueueAttributes::default())
        .await
        .unwrap();
    let big = || crate::store::SendRequest {
        body: bytes::Bytes::from(vec![b'x'; 8000]),
        ..Default::default()
    };
    let mut acked = 0;
    let err = loop {
        match store.send("q", big()).await {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 1000, "the limit never hit");
    };
    assert!(matches!(err, StoreError::StorageFull(_)), "{err}");
    assert_eq!((err.code(), err.status()), ("StorageFull", 507));
    // Other operations still work, and nothing acknowledged is missing.
    let info = store.get_queue("q").await.unwrap();
    assert_eq!(info.active_messages, acked);
    let mut received = 0;
    loop {
        let got = store.receive("q", 16, NO_WAIT).await.unwrap();
        if got.is_empty() {
            break;
        }
        received += got.len() as u64;
        let handles = got.into_iter().map(|m| m.receipt_handle.unwrap()).collect();
        for r in store.delete_batch("q", handles).await.unwrap() {
            r.unwrap();
        }
    }
    assert_eq!(received, acked);
    for _ in 0..acked / 2 {
        store.send("q", big()).await.unwrap();
    }
}

#[tokio::test]
async fn a_request_failing_midway_rolls_back_disk_and_memory_alike() {
    // Proves: a publish unit that runs out of space after writing part of its rows leaves
    // neither rows nor index entries behind (SQLite rolls the transaction back on SQLITE_FULL,
    // the writer its index with it), and the store goes on.
    let dir = tempfile::tempdir().unwrap();
    let store = capped_store(dir.path(), &["a", "b"]).await;
    let unit: Vec<_> = (0..200)
        .map(|_| {
            (
                "t".to_owned(),
                PublishRequest {
                    body: bytes::Bytes::from(vec![b'y'; 60_000]),
                    ..Default::default()
                },
            )
        })
        .collect();
    let e = store.publish_batch(unit).await.unwrap_err();
    assert!(matches!(e, StoreError::StorageFull(_)), "{e}");
    for q in ["a", "b"] {
        let info = store.get_queue(q).await.unwrap();
        assert_eq!(
            (info.active_messages, info.oldest_message_age_ms),
            (0, None),
            "{q}"
        );
    }
    store
        .publish(
            "t",
            PublishRequest {
                body: bytes::Bytes::from_static(b"after"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for q in ["a", "b"] {
        let got = store.receive(q, 16, NO_WAIT).await.unwrap();
        assert_eq!(got.iter().map(body_text).collect::<Vec<_>>(), ["after"]);
    }
}

/// A foreign connection to `env`'s database that makes SQLite refuse one kind of write to
/// queue `queue`'s rows matching `when` (a trigger raising an error), as a failing disk or a
/// damaged page would in the middle of a request.
fn refuse_writes(env: &Env, queue: &str, write: &str, when: &str) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(env.dir.path().join("sluice.db")).unwrap();
    let id: i64 = conn
        .query_row("SELECT id FROM queues WHERE name = ?1", [queue], |r| {
            r.get(0)
        })
        .unwrap();
    conn.execute_batch(&format!(
        "CREATE TRIGGER refuse BEFORE {write} ON q_{id} WHEN {when} \
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    ))
    .unwrap();
    conn
}

/// Rows of queue `queue` on disk, read past the writer.
fn rows_on_disk(env: &Env, queue: &str) -> i64 {
    let conn = rusqlite::Connection::open(env.dir.path().join("sluice.db")).unwrap();
    let id: i64 = conn
        .query_row("SELECT id FROM queues WHERE name = ?1", [queue], |r| {
            r.get(0)
        })
        .unwrap();
    conn.query_row(&format!("SELECT COUNT(*) FROM q_{id}"), [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn a_receive_failing_midway_gives_back_what_it_claimed_and_the_queue_goes_on() {
    // Proves: when SQLite refuses a claim in the middle of a receive, the receive fails, the
    // message claimed before it is given back at once (not left leased to nobody until its
    // visibility timeout), disk and index agree (before and after a restart), and every
    // message is received afterwards, each counted as received once.
    let mut env = Env::new();
    env.queue("q", |_| {}).await;
    for m in ["m1", "m2", "m3"] {
        env.store.send("q", text(m)).await.unwrap();
    }
    let foreign = refuse_writes(&env, "q", "UPDATE", "CAST(old.body AS TEXT) = 'm2'");
    let e = env.store.receive("q", 16, NO_WAIT).await.unwrap_err();
    println!("the receive failed: {e}");
    assert!(e.to_string().contains("injected failure"), "{e}");
    foreign.execute_batch("DROP TRIGGER refuse").unwrap();
    drop(foreign);
    let info = env.store.get_queue("q").await.unwrap();
    assert_eq!((info.active_messages, info.inactive_messages), (3, 0));
    env.reopen().await;
    let info = env.store.get_queue("q").await.unwrap();
    assert_eq!((info.active_messages, info.inactive_messages), (3, 0));
    let got = env.store.receive("q", 16, NO_WAIT).await.unwrap();
    let seen: Vec<(String, u32)> = got
        .iter()
        .map(|m| (body_text(m), m.dequeue_count))
        .collect();
    assert_eq!(
        seen,
        [("m1".into(), 1), ("m2".into(), 1), ("m3".into(), 1)],
        "every message, each counted once"
    );
}

#[tokio::test]
async fn a_damaged_message_fails_one_receive_not_every_one_after_it() {
    // Proves: a stored message that cannot be turned back into a message (here its id is
    // damaged on disk) fails the receive that meets it, but is claimed there, so the next
    // receive gets the messages behind it instead of failing on it again; the message before
    // it is handed back and received again.
    let env = Env::new();
    env.queue("q", |_| {}).await;
    for m in ["m1", "m2", "m3"] {
        env.store.send("q", text(m)).await.unwrap();
    }
    let conn = rusqlite::Connection::open(env.dir.path().join("sluice.db")).unwrap();
    let id: i64 = conn
        .query_row("SELECT id FROM queues WHERE name = 'q'", [], |r| r.get(0))
        .unwrap();
    let damaged = conn
        .execute(
            &format!("UPDATE q_{id} SET message_id = 'damaged' WHERE CAST(body AS TEXT) = 'm2'"),
            [],
        )
        .unwrap();
    assert_eq!(damaged, 1);
    drop(conn);
    let e = env.store.receive("q", 16, NO_WAIT).await.unwrap_err();
    println!("the receive that met it: {e}");
    let got = env.store.receive("q", 16, NO_WAIT).await.unwrap();
    let bodies: Vec<String> = got.iter().map(body_text).collect();
    assert_eq!(bodies, ["m1", "m3"], "the messages before and behind it");
}

#[tokio::test]
async fn a_delete_failing_midway_keeps_what_it_deleted_and_answers_the_retry() {
    // Proves: when SQLite refuses one row's delete in a batch of own-body rows, the deletes
    // before it stand on disk and in the index alike, and the same batch sent again deletes the
    // rest and answers "deleted" for every handle (tombstones). With rows sharing bodies the
    // batch is all or none: nothing is deleted and no body loses a reference.
    let env = Env::new();
    env.queue("q", |_| {}).await;
    for m in ["m1", "m2", "m3"] {
        env.store.send("q", text(m)).await.unwrap();
    }
    let handles: Vec<String> = env
        .store
        .receive("q", 16, NO_WAIT)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.receipt_handle.unwrap())
        .collect();
    let foreign = refuse_writes(&env, "q", "DELETE", "CAST(old.body AS TEXT) = 'm2'");
    let e = env
        .store
        .delete_batch("q", handles.clone())
        .await
        .unwrap_err();
    println!("the delete failed: {e}");
    foreign.execute_batch("DROP TRIGGER refuse").unwrap();
    drop(foreign);
    let info = env.store.get_queue("q").await.unwrap();
    assert_eq!((info.active_messages, info.inactive_messages), (0, 2));
    assert_eq!(rows_on_disk(&env, "q"), 2, "m1 deleted, m2 and m3 kept");
    for r in env.store.delete_batch("q", handles).await.unwrap() {
        r.unwrap();
    }
    assert_eq!(rows_on_disk(&env, "q"), 0);

    // Shared bodies: two queues subscribed to one topic share each message's body.
    env.queue("a", |_| {}).await;
    env.queue("b", |_| {}).await;
    env.store.create_topic("t").await.unwrap();
    for q in ["a", "b"] {
        env.store
            .create_subscription("t", &format!("t-{q}"), SubscriptionSpec::queue(q))
            .await
            .unwrap();
    }
    for m in ["s1", "s2", "s3"] {
        let body = bytes::Bytes::from(m);
        env.store
            .publish(
                "t",
                PublishRequest {
                    body,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    let mut held = Vec::new();
    for q in ["a", "b"] {
        let got = env.store.receive(q, 16, NO_WAIT).await.unwrap();
        held.push(
            got.into_iter()
                .map(|m| m.receipt_handle.unwrap())
                .collect::<Vec<_>>(),
        );
    }
    let foreign = refuse_writes(
        &env,
        "a",
        "DELETE",
        "old.body_ref IS NOT NULL AND old.seq = 2",
    );
    let e = env
        .store
        .delete_batch("a", held[0].clone())
        .await
        .unwrap_err();
    println!("the shared-body delete failed: {e}");
    foreign.execute_batch("DROP TRIGGER refuse").unwrap();
    drop(foreign);
    assert_eq!(rows_on_disk(&env, "a"), 3, "all or none");
    let info = env.store.get_queue("a").await.unwrap();
    assert_eq!((info.active_messages, info.inactive_messages), (0, 3));
    for (q, handles) in ["a", "b"].into_iter().zip(held) {
        for r in env.store.delete_batch(q, handles).await.unwrap() {
            r.unwrap();
        }
    }
    let conn = rusqlite::Connection::open(env.dir.path().join("sluice.db")).unwrap();
    let bodies: i64 = conn
        .query_row("SELECT COUNT(*) FROM bodies", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        bodies, 0,
        "every shared body freed once its last copy was deleted"
    );
}

#[tokio::test]
async fn publishes_failing_in_a_full_batch_leave_nothing_behind() {
    // Proves under a full disk that a refused publish never appears: when publishes sharing one
    // commit run out of space midway, SQLite rolls the whole transaction back; the batch then fails
    // as one (every publish in it answered StorageFull) and nothing answered with an error appears,
    // in the index or on disk after a restart; the acknowledged ones are all there.
    let dir = tempfile::tempdir().unwrap();
    let store = capped_store(dir.path(), &["q"]).await;
    // A foreign write lock holds the writer in BEGIN while the publishes queue up, so they
    // share one commit that runs into the hard cap (1 MiB + 8 MiB) in the middle.
    let foreign = rusqlite::Connection::open(dir.path().join("sluice.db")).unwrap();
    foreign.execute_batch("BEGIN IMMEDIATE").unwrap();
    let publishes = (0..400u32).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut body = i.to_string().into_bytes();
            body.resize(60_000, b' ');
            store
                .publish(
                    "t",
                    PublishRequest {
                        body: bytes::Bytes::from(body),
                        ..Default::default()
                    },
                )
                .await
                .map(|_| i)
        })
    });
    let publishes: Vec<_> = publishes.collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    foreign.execute_batch("COMMIT").unwrap();
    drop(foreign);
    let (mut ok, mut full) = (Vec::new(), 0);
    for p in publishes {
        match p.await.unwrap() {
            Ok(i) => ok.push(i),
            Err(StoreError::StorageFull(_)) => full += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    println!("{} publishes committed, {full} refused as full", ok.len());
    assert!(full > 0, "the store never filled up");
    let info = store.get_queue("q").await.unwrap();
    assert_eq!(info.active_messages, ok.len() as u64);
    let mut got = Vec::new();
    loop {
        let batch = store.receive("q", 16, NO_WAIT).await.unwrap();
        if batch.is_empty() {
            break;
        }
        got.extend(
            batch
                .iter()
                .map(|m| body_text(m).trim_end().parse::<u32>().unwrap()),
        );
    }
    got.sort_unstable();
    ok.sort_unstable();
    assert_eq!(got, ok, "exactly the acknowledged publishes are there");
    // And on disk: SQLite rolls the whole transaction back on SQLITE_FULL, so a request after
    // the failed one must not have run (it would have committed on its own, answered failed).
    store.close().await.unwrap();
    let store = crate::store::Store::open(
        dir.path(),
        crate::store::StoreOptions {
            clock: std::sync::Arc::new(crate::store::ManualClock::new(super::T0)),
            ..Default::default()
        },
    )
    .unwrap();
    let info = store.get_queue("q").await.unwrap();
    assert_eq!(
        info.active_messages + info.inactive_messages,
        ok.len() as u64,
        "after a restart"
    );
}

#[tokio::test]
async fn another_process_holding_the_lock_makes_requests_wait_then_fail_cleanly() {
    // Proves: a foreign write lock delays requests up to busy_timeout, then they
    // fail with Busy naming the file; once the lock is gone the store works again.
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::Store::open(
        dir.path(),
        crate::store::StoreOptions {
            clock: std::sync::Arc::new(crate::store::ManualClock::new(super::T0)),
            busy_timeout: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .unwrap();
    store
        .create_queue("q", crate::store::QueueAttributes::default())
        .await
        .unwrap();
    let foreign = rusqlite::Connection::open(dir.path().join("sluice.db")).unwrap();
    foreign.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = std::time::Instant::now();
    let e = store.send("q", text("m")).await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(matches!(e, StoreError::Busy { .. }), "{e}");
    assert_eq!(e.status(), 503);
    assert!(e.to_string().contains("sluice.db"), "{e}");
    foreign.execute_batch("COMMIT").unwrap();
    store.send("q", text("m")).await.unwrap();
    assert_eq!(store.get_queue("q").await.unwrap().active_messages, 1);
}

#[tokio::test]
async fn at_full_every_acknowledged_commit_goes_through_an_fsync_of_the_log() {
    // Proves the FULL store acknowledges through the sync thread (one fsync per commit or per
    // group of commits; that answers wait for it is the syncer's own unit test) and NORMAL never
    // fsyncs per commit; what is acknowledged is readable after a reopen either way.
    for (sync, expect_syncs) in [
        (crate::store::Synchronous::Full, true),
        (crate::store::Synchronous::Normal, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            crate::store::Store::open(
                dir.path(),
                crate::store::StoreOptions {
                    synchronous: sync,
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let store = open();
        super::create_queue(&store, "q", |_| {}).await;
        let before = store.counters().sync_time.snapshot().samples;
        for i in 0..5 {
            store.send("q", text(&format!("m{i}"))).await.unwrap();
        }
        let syncs = store.counters().sync_time.snapshot().samples - before;
        let commits = store
            .counters()
            .commits
            .load(std::sync::atomic::Ordering::Relaxed);
        println!("{sync:?}: 5 sends, {syncs} fsyncs, {commits} commits");
        if expect_syncs {
            assert!(
                (5..=commits).contains(&syncs),
                "one fsync per acknowledged commit"
            );
        } else {
            assert_eq!(syncs, 0);
        }
        store.close().await.unwrap();
        let store = open();
        let got = store.receive("q", 10, NO_WAIT).await.unwrap();
        assert_eq!(got.len(), 5, "{sync:?}: everything acknowledged is there");
        store.close().await.unwrap();
    }
}

/// A store capped at 1 MiB (hard cap 1 MiB + 8 MiB headroom) with topic `t` fanning out to
/// each of `queues`.
async fn capped_store(dir: &std::path::Path, queues: &[&str]) -> crate::store::Store {
    let store = crate::store::Store::open(
        dir,
        crate::store::StoreOptions {
            clock: std::sync::Arc::new(crate::store::ManualClock::new(super::T0)),
            max_db_bytes: Some(1 << 20),
            ..Default::default()
        },
    )
    .unwrap();
    store.create_topic("t").await.unwrap();
    for &q in queues {
        store
            .create_queue(q, crate::store::QueueAttributes::default())
            .await
            .unwrap();
        store
            .create_subscription("t", q, SubscriptionSpec::queue(q))
            .await
            .unwrap();
    }
    store
}
