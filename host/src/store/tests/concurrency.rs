//! Concurrency, long polling and throughput (printed for information, never asserted).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::store::{QueueAttributes, SendRequest, Store, StoreOptions};

fn real_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    (dir, store)
}

fn numbered(i: usize) -> SendRequest {
    SendRequest {
        body: Bytes::from(i.to_string()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_senders_four_consumers_every_message_delivered_once() {
    // Proves: under concurrent sends, receives and deletes no message is held by two leases and
    // the totals add up (sent = received = deleted, nothing left).
    let (_dir, store) = real_store();
    store
        .create_queue("q", QueueAttributes::default())
        .await
        .unwrap();
    const SENDERS: usize = 8;
    const PER_SENDER: usize = 400;
    let total = SENDERS * PER_SENDER;
    let started = Instant::now();
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let store = store.clone();
        senders.push(tokio::spawn(async move {
            for chunk in (0..PER_SENDER).collect::<Vec<_>>().chunks(8) {
                let reqs = chunk.iter().map(|i| numbered(s * PER_SENDER + i)).collect();
                store.send_batch("q", reqs).await.unwrap();
            }
        }));
    }
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        let seen = seen.clone();
        consumers.push(tokio::spawn(async move {
            let mut deleted = 0;
            loop {
                let got = store
                    .receive("q", 16, Some(Duration::from_millis(500)))
                    .await
                    .unwrap();
                if got.is_empty() {
                    return deleted;
                }
                {
                    let mut seen = seen.lock().unwrap();
                    for m in &got {
                        assert_eq!(m.dequeue_count, 1, "delivered twice");
                        assert!(seen.insert(m.id), "message {} held by two leases", m.id);
                    }
                }
                let handles = got
                    .iter()
                    .map(|m| m.receipt_handle.clone().unwrap())
                    .collect();
                let results = store.delete_batch("q", handles).await.unwrap();
                assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
                deleted += got.len();
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let mut deleted = 0;
    for c in consumers {
        deleted += c.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(seen.lock().unwrap().len(), total);
    assert_eq!(deleted, total);
    let info = store.get_queue("q").await.unwrap();
    assert_eq!(
        (
            info.active_messages,
            info.inactive_messages,
            info.delayed_messages
        ),
        (0, 0, 0)
    );
    println!(
        "info: {total} messages sent by 8 tasks and consumed by 4 in {secs:.2}s ({:.0} msg/s end to end, debug build)",
        total as f64 / secs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_consumers_with_expiries_and_visibility_changes_lose_nothing() {
    // Proves: with random skipped deletes (lease expiry), visibility changes and
    // stale deletes, each message is leased by one holder at a time (dequeue counts of a
    // message are distinct) and every message is finally deleted exactly once.
    let (_dir, store) = real_store();
    store
        .create_queue(
            "q",
            QueueAttributes {
                visibility_timeout: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    const TOTAL: usize = 300;
    for chunk in (0..TOTAL).collect::<Vec<_>>().chunks(16) {
        store
            .send_batch("q", chunk.iter().map(|&i| numbered(i)).collect())
            .await
            .unwrap();
    }
    let deliveries = Arc::new(Mutex::new(HashMap::<String, Vec<u32>>::new()));
    let deleted = Arc::new(Mutex::new(HashSet::new()));
    let mut consumers = Vec::new();
    for c in 0..4u64 {
        let store = store.clone();
        let deliveries = deliveries.clone();
        let deleted = deleted.clone();
        consumers.push(tokio::spawn(async move {
            let mut stale = Vec::new();
            let mut n = c;
            let deadline = Instant::now() + Duration::from_secs(60);
            while deleted.lock().unwrap().len() < TOTAL && Instant::now() < deadline {
                let got = store
                    .receive("q", 4, Some(Duration::from_millis(300)))
                    .await
                    .unwrap();
                for m in got {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    deliveries
                        .lock()
                        .unwrap()
                        .entry(m.id.to_string())
                        .or_default()
                        .push(m.dequeue_count);
                    let h = m.receipt_handle.clone().unwrap();
                    match (n >> 33) % 10 {
                        0 => stale.push((h, m.id)), // let the lease expire
                        1 => {
                            let changed = store.change_visibility("q", &h, 1).await.unwrap();
                            stale.push((h, m.id));
                            store.delete("q", &changed.receipt_handle).await.unwrap();
                            assert!(deleted.lock().unwrap().insert(m.id));
                        }
                        _ => {
                            store.delete("q", &h).await.unwrap();
                            assert!(deleted.lock().unwrap().insert(m.id), "deleted twice");
                        }
                    }
                }
                // A kept handle deletes only while it is the message's current, unexpired one;
                // a superseded or expired one is refused.
                if let Some((h, id)) = stale.pop() {
                    if store.delete("q", &h).await.is_ok() {
                        assert!(deleted.lock().unwrap().insert(id), "deleted twice");
                    }
                }
            }
        }));
    }
    for c in consumers {
        c.await.unwrap();
    }
    assert_eq!(deleted.lock().unwrap().len(), TOTAL);
    for (id, counts) in deliveries.lock().unwrap().iter() {
        let distinct: HashSet<_> = counts.iter().collect();
        assert_eq!(
            distinct.len(),
            counts.len(),
            "{id} had two leases: {counts:?}"
        );
    }
    let info = store.get_queue("q").await.unwrap();
    assert_eq!(info.active_messages + info.inactive_messages, 0);
}

#[tokio::test]
async fn long_poll_returns_promptly_on_publish_and_empty_at_the_wait_time() {
    // Proves: a waiting receive returns within milliseconds of a send from another
    // task; an empty poll returns, empty, at its wait time.
    let (_dir, store) = real_store();
    store.create_topic("t").await.unwrap();
    store
        .create_queue("q", QueueAttributes::default())
        .await
        .unwrap();
    store
        .create_subscription("t", "t-to-q", crate::store::SubscriptionSpec::queue("q"))
        .await
        .unwrap();

    let started = Instant::now();
    let empty = store
        .receive("q", 1, Some(Duration::from_millis(700)))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(empty.is_empty());
    assert!(waited >= Duration::from_millis(700), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");

    let publisher = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let at = Instant::now();
            store
                .publish("t", crate::store::PublishRequest::default())
                .await
                .unwrap();
            at
        })
    };
    let started = Instant::now();
    let got = store
        .receive("q", 1, Some(Duration::from_secs(20)))
        .await
        .unwrap();
    let returned = Instant::now();
    let published = publisher.await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(returned.duration_since(started) < Duration::from_secs(10));
    println!(
        "info: long poll returned {:?} after the publish was acknowledged",
        returned.saturating_duration_since(published)
    );
}

#[tokio::test]
async fn long_poll_wakes_when_a_delay_or_visibility_timeout_ends() {
    // Proves: waiters are woken by the queue's next-visible time, not only by commits.
    let (_dir, store) = real_store();
    store
        .create_queue(
            "q",
            QueueAttributes {
                visibility_timeout: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut delayed = numbered(1);
    delayed.delay_seconds = Some(1);
    store.send("q", delayed).await.unwrap();
    let started = Instant::now();
    let got = store
        .receive("q", 1, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "delayed message arrives during the wait");
    let t1 = started.elapsed();
    assert!(
        t1 >= Duration::from_millis(900) && t1 < Duration::from_secs(5),
        "{t1:?}"
    );
    // Not deleted: its 1 s lease ends while the next receive waits.
    let started = Instant::now();
    let again = store
        .receive("q", 1, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].dequeue_count, 2);
    let t2 = started.elapsed();
    assert!(t2 < Duration::from_secs(5), "{t2:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_for_information() {
    // Proves nothing by itself (no timing assert): prints publish and claim+delete rates so
    // regressions are visible in the test log.
    let (_dir, store) = real_store();
    store.create_topic("t").await.unwrap();
    store
        .create_queue("q", QueueAttributes::default())
        .await
        .unwrap();
    store
        .create_subscription("t", "s", crate::store::SubscriptionSpec::queue("q"))
        .await
        .unwrap();
    const TASKS: usize = 64;
    const PER_TASK: usize = 300;
    let body = Bytes::from(vec![b'x'; 250]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..PER_TASK {
                store
                    .publish(
                        "t",
                        crate::store::PublishRequest {
                            body: body.clone(),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = TASKS * PER_TASK;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "info: {n} single publishes from {TASKS} tasks: {:.0} msg/s (group commit)",
        n as f64 / secs
    );
    let started = Instant::now();
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        consumers.push(tokio::spawn(async move {
            let mut done = 0;
            loop {
                let got = store.receive("q", 16, Some(Duration::ZERO)).await.unwrap();
                if got.is_empty() {
                    return done;
                }
                done += got.len();
                let handles = got.into_iter().map(|m| m.receipt_handle.unwrap()).collect();
                store.delete_batch("q", handles).await.unwrap();
            }
        }));
    }
    let mut consumed = 0;
    for c in consumers {
        consumed += c.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(consumed, n);
    println!(
        "info: receive 16 + delete 16 by 4 consumers: {:.0} msg/s",
        consumed as f64 / secs
    );
}

#[tokio::test]
async fn long_poll_uses_the_queue_default_and_ends_on_queue_delete_and_close() {
    // Proves: `wait: None` waits the queue's polling_wait_seconds; deleting the queue or closing
    // the store ends a waiting poll at once with a clear error.
    let (_dir, store) = real_store();
    store
        .create_queue(
            "q",
            QueueAttributes {
                polling_wait_seconds: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let started = Instant::now();
    assert!(store.receive("q", 1, None).await.unwrap().is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(5),
        "{waited:?}"
    );

    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = store.receive("q", 1, Some(Duration::from_secs(30))).await;
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(store.delete_queue("q").await.unwrap());
    let (r, took) = waiter.await.unwrap();
    assert_eq!(r.unwrap_err().code(), "QueueNotExist");
    assert!(took < Duration::from_secs(10), "{took:?}");

    store
        .create_queue("q", QueueAttributes::default())
        .await
        .unwrap();
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = store.receive("q", 1, Some(Duration::from_secs(30))).await;
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    store.close().await.unwrap();
    let (r, took) = waiter.await.unwrap();
    assert_eq!(r.unwrap_err().code(), "ServiceUnavailable");
    assert!(took < Duration::from_secs(10), "{took:?}");
}
