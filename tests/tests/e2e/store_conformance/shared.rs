//! Several processes on one JetStream cluster: handles on the same prefix stand for sluice
//! processes sharing it (each with its own data directory and node id).

use std::time::Duration;

use super::nats::{connect, fresh_prefix};
use super::{body_text, create_queue, text};
use sluice::store::{Store, StoreOptions};

async fn process(prefix: &str, node_id: u16, dir: &tempfile::TempDir) -> Store {
    let js = connect(prefix, node_id, &format!("process-{node_id}"))
        .await
        .expect("connect");
    Store::open_with_jetstream(dir.path(), StoreOptions::default(), js).expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_the_catalog_and_follow_each_others_changes() {
    // Proves: a queue created by one process is served by the other; a queue deleted and
    // created again with other attributes by one process is used with the new attributes by the
    // other; message ids carry each process's node id; a second process claiming a taken node
    // id is refused with the fix named.
    let prefix = fresh_prefix();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = process(&prefix, 1, &da).await;
    let b = process(&prefix, 2, &db).await;
    create_queue(&a, "q", |q| q.visibility_timeout = 30).await;
    let sent = a.send("q", text("m1")).await.unwrap();
    assert_eq!(sent.id.node(), 1);
    let got = b
        .receive("q", 1, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(body_text(&got[0]), "m1");
    b.delete("q", got[0].receipt_handle.as_ref().unwrap())
        .await
        .unwrap();

    assert!(b.delete_queue("q").await.unwrap());
    create_queue(&b, "q", |q| q.visibility_timeout = 5).await;
    let sent = b.send("q", text("m2")).await.unwrap();
    assert_eq!(sent.id.node(), 2);
    // Process a's copy of the catalog follows within moments.
    let mut seen = 0;
    for _ in 0..50 {
        seen = a
            .get_queue("q")
            .await
            .unwrap()
            .attributes
            .visibility_timeout;
        if seen == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 5);
    let got = a
        .receive("q", 1, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(body_text(&got[0]), "m2");
    let lease = got[0].next_visible_time_ms - sluice::ids::now_ms();
    assert!(
        lease <= 5_000,
        "the new visibility timeout applies: {lease} ms"
    );

    let e = connect(&prefix, 1, "an-impostor").await.unwrap_err();
    assert_eq!(e.field(), Some("node_id"), "{e}");
    assert!(e.to_string().contains("--node-id"), "{e}");
    // The same process (same label) may claim its id again after a restart.
    connect(&prefix, 1, "process-1").await.unwrap();
}
