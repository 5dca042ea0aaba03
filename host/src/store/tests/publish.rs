//! Topic publish: fan-out, filter tags, atomic units, shared bodies.

use std::time::Duration;

use bytes::Bytes;

use super::{body_text, Env};
use crate::store::{PublishRequest, SubscriptionSpec};

const NO_WAIT: Option<Duration> = Some(Duration::ZERO);

fn msg(body: &str, tag: Option<&str>) -> PublishRequest {
    PublishRequest {
        body: Bytes::copy_from_slice(body.as_bytes()),
        tag: tag.map(str::to_owned),
        attributes: [("source_topic".to_owned(), "/pk/dev/event".to_owned())].into(),
    }
}

#[tokio::test]
async fn publish_fans_out_to_two_queues_and_filter_tags_select() {
    // Proves: every matching queue subscription gets the message in the same commit; a filter
    // tag matches exactly; one without a filter gets all.
    let env = Env::new();
    env.store.create_topic("alerts").await.unwrap();
    env.queue("all-q", |_| {}).await;
    env.queue("hot-q", |_| {}).await;
    env.store
        .create_subscription("alerts", "to-all", SubscriptionSpec::queue("all-q"))
        .await
        .unwrap();
    let mut hot = SubscriptionSpec::queue("hot-q");
    hot.filter_tag = Some("hot".into());
    env.store
        .create_subscription("alerts", "to-hot", hot)
        .await
        .unwrap();

    let p1 = env
        .store
        .publish("alerts", msg("a", Some("hot")))
        .await
        .unwrap();
    assert_eq!(p1.queues, 2);
    let p2 = env
        .store
        .publish("alerts", msg("b", Some("cold")))
        .await
        .unwrap();
    assert_eq!(p2.queues, 1);
    let p3 = env.store.publish("alerts", msg("c", None)).await.unwrap();
    assert_eq!(p3.queues, 1);

    let all = env.store.receive("all-q", 16, NO_WAIT).await.unwrap();
    assert_eq!(
        all.iter().map(body_text).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    let hot = env.store.receive("hot-q", 16, NO_WAIT).await.unwrap();
    assert_eq!(hot.iter().map(body_text).collect::<Vec<_>>(), ["a"]);
    // The same message: same id and md5 in both queues; attributes and tag kept.
    assert_eq!(all[0].id, p1.id);
    assert_eq!(hot[0].id, p1.id);
    assert_eq!(hot[0].body_md5, p1.body_md5);
    assert_eq!(hot[0].tag.as_deref(), Some("hot"));
    assert_eq!(
        hot[0].attributes.get("source_topic").as_deref(),
        Some("/pk/dev/event")
    );
    // Each queue has its own delivery state: deleting in one leaves the other.
    env.store
        .delete("hot-q", hot[0].receipt_handle.as_deref().unwrap())
        .await
        .unwrap();
    let info = env.store.get_queue("all-q").await.unwrap();
    assert_eq!(info.inactive_messages, 3);
}

#[tokio::test]
async fn publish_unit_with_an_unknown_topic_writes_nothing() {
    // Proves: a publish unit is atomic; one unknown topic fails all of it.
    let env = Env::new();
    env.store.create_topic("t").await.unwrap();
    env.queue("q", |_| {}).await;
    env.store
        .create_subscription("t", "t-to-q", SubscriptionSpec::queue("q"))
        .await
        .unwrap();
    let e = env
        .store
        .publish_batch(vec![
            ("t".into(), msg("1", None)),
            ("t".into(), msg("2", None)),
            ("missing".into(), msg("3", None)),
        ])
        .await
        .unwrap_err();
    assert_eq!((e.code(), e.status()), ("TopicNotExist", 404));
    assert!(env.store.peek("q", 16).await.unwrap().is_empty());
    // And the unit commits whole when valid, in order.
    let out = env
        .store
        .publish_batch(vec![
            ("t".into(), msg("1", None)),
            ("t".into(), msg("2", None)),
        ])
        .await
        .unwrap();
    assert_eq!(out.len(), 2);
    let got = env.store.receive("q", 16, NO_WAIT).await.unwrap();
    assert_eq!(got.iter().map(body_text).collect::<Vec<_>>(), ["1", "2"]);
}

#[tokio::test]
async fn a_failed_request_does_not_poison_its_batch() {
    // Proves: requests sharing one commit fail alone (savepoints), the rest commit.
    let env = Env::new();
    env.store.create_topic("t").await.unwrap();
    env.queue("q", |_| {}).await;
    env.store
        .create_subscription("t", "s", SubscriptionSpec::queue("q"))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let store = env.store.clone();
        let topic = if i % 5 == 0 { "missing" } else { "t" };
        tasks.push(tokio::spawn(async move {
            store.publish(topic, msg(&i.to_string(), None)).await
        }));
    }
    let mut ok = 0;
    let mut failed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.code(), "TopicNotExist");
                failed += 1
            }
        }
    }
    assert_eq!((ok, failed), (40, 10));
    assert_eq!(env.store.get_queue("q").await.unwrap().active_messages, 40);
}

#[tokio::test]
async fn base64_body_subscription_delivers_base64_text() {
    // Proves: the `base64_body = true` option for MNS SDK consumers.
    let env = Env::new();
    env.store.create_topic("t").await.unwrap();
    env.queue("raw", |_| {}).await;
    env.queue("b64", |_| {}).await;
    env.store
        .create_subscription("t", "raw", SubscriptionSpec::queue("raw"))
        .await
        .unwrap();
    let mut spec = SubscriptionSpec::queue("b64");
    spec.base64_body = true;
    env.store
        .create_subscription("t", "b64", spec)
        .await
        .unwrap();
    env.store.publish("t", msg("hi", None)).await.unwrap();
    let raw = env
        .store
        .receive("raw", 1, NO_WAIT)
        .await
        .unwrap()
        .remove(0);
    let b64 = env
        .store
        .receive("b64", 1, NO_WAIT)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(body_text(&raw), "hi");
    assert_eq!(body_text(&b64), "aGk=");
}

#[tokio::test]
async fn topic_without_subscriptions_accepts_publishes() {
    // Proves: publishing with nobody subscribed is fine and reaches zero queues.
    let env = Env::new();
    env.store.create_topic("t").await.unwrap();
    let p = env.store.publish("t", msg("x", None)).await.unwrap();
    assert_eq!(p.queues, 0);
    assert_eq!(p.id.to_string().len(), 32);
    let e = env
        .store
        .publish(
            "t",
            PublishRequest {
                body: Bytes::from(vec![0u8; 65_537]),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.field(), Some("body"));
}

#[tokio::test]
async fn submitted_units_commit_each_on_its_own_and_answer_in_submission_order() {
    // Proves: units submitted together (the rule pipeline's way: one unit per device message)
    // commit each atomically on its own. A unit naming an unknown topic or holding an oversized
    // body fails alone, with its own error in its own place, and none of its outputs is written;
    // an empty unit is answered at once; more units than one writer request holds are split
    // over several requests and still answered, and stored, in submission order.
    use crate::store::{Attributes, PublishRef, StoreError};
    let env = Env::new();
    env.store.create_topic("alerts").await.unwrap();
    env.queue("alerts-q", |_| {}).await;
    env.store
        .create_subscription("alerts", "alerts-to-q", SubscriptionSpec::queue("alerts-q"))
        .await
        .unwrap();
    let attributes = Attributes::from_pairs(&[("rule", "overheat")]).unwrap();
    let bodies: Vec<Bytes> = (0..75).map(|i| Bytes::from(format!("m{i}"))).collect();
    let second = Bytes::from_static(b"m40, second output");
    let too_big = Bytes::from(vec![b'x'; env.store.size_cap() as usize + 1]);
    let out = |topic, body| PublishRef {
        topic,
        body,
        attributes: &attributes,
    };
    let units: Vec<Vec<PublishRef<'_>>> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| match i {
            3 => vec![out("alerts", body), out("no-such-topic", body)],
            5 => vec![],
            7 => vec![out("alerts", body), out("alerts", &too_big)],
            40 => vec![out("alerts", body), out("alerts", &second)],
            _ => vec![out("alerts", body)],
        })
        .collect();
    let store = env.store.clone();
    let commit = std::thread::scope(|s| {
        s.spawn(|| store.submit_publish_units(&units))
            .join()
            .unwrap()
    });
    let results = commit.await;

    assert_eq!(results.len(), 75, "one answer per unit");
    for (i, r) in results.iter().enumerate() {
        match i {
            3 => assert!(
                matches!(r, Err(StoreError::TopicNotExist { name }) if name == "no-such-topic"),
                "unit 3: {r:?}"
            ),
            7 => assert!(
                matches!(r, Err(StoreError::MessageTooLarge { .. })),
                "unit 7: {r:?}"
            ),
            _ => assert!(r.is_ok(), "unit {i}: {r:?}"),
        }
    }
    let mut expected: Vec<String> = Vec::new();
    for i in 0..75 {
        match i {
            3 | 5 | 7 => {}
            40 => expected.extend(["m40".to_owned(), "m40, second output".to_owned()]),
            _ => expected.push(format!("m{i}")),
        }
    }
    let mut stored = Vec::new();
    loop {
        let got = env.store.receive("alerts-q", 16, NO_WAIT).await.unwrap();
        if got.is_empty() {
            break;
        }
        stored.extend(got.iter().map(body_text));
    }
    println!(
        "{} units submitted, {} messages stored",
        units.len(),
        stored.len()
    );
    assert_eq!(stored, expected);
}
