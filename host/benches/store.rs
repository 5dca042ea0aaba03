//! Store benchmark (a program, not a timed test): each figure of the store beside a raw SQLite
//! loop over the same schema and sync level, measured in the same run.
//!
//! - acknowledged publishes/s with 1 and 64 concurrent publishers (topic with one queue
//!   subscription, 250-byte bodies), beside raw one-row commits and the raw batched-insert
//!   ceiling (1024 rows per commit);
//! - receive + delete messages/s with batch 16 (4 and 16 consumers), beside a raw claim 16 +
//!   delete 16 loop (two commits per 16 messages, rowid order);
//! - publish -> visible latency p50/p99 (a long-polling receiver), beside a raw insert + commit
//!   + read from another connection.
//!
//! Run: `cargo bench -p sluice --bench store` (both sync levels), or with arguments
//! `-- full|normal [--quick]`. Prints one table per sync level and a JSON line per figure.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};
use sluice::store::{
    PublishRequest, QueueAttributes, Store, StoreOptions, SubscriptionSpec, Synchronous,
};

#[path = "common/mod.rs"]
mod common;

use common::{body, BODY_BYTES};

struct Sizes {
    single_publishes: usize,
    concurrent_publishes: usize,
    drain_messages: usize,
    latency_samples: usize,
}

fn level_name(s: Synchronous) -> &'static str {
    match s {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    }
}

fn open_store(dir: &Path, sync: Synchronous) -> Store {
    Store::open(
        dir,
        StoreOptions {
            synchronous: sync,
            ..StoreOptions::default()
        },
    )
    .expect("open store")
}

async fn setup_topic(store: &Store, topic: &str, queue: &str) {
    store
        .create_queue(queue, QueueAttributes::default())
        .await
        .expect("queue");
    store.create_topic(topic).await.expect("topic");
    store
        .create_subscription(
            topic,
            &format!("{topic}-to-q"),
            SubscriptionSpec::queue(queue),
        )
        .await
        .expect("subscription");
}

// ----- raw SQLite over the same schema -----

/// The queue table of the store's schema v1 (`store::schema::queue_table_ddl`).
const RAW_DDL: &str = "CREATE TABLE q_1 (
    seq INTEGER PRIMARY KEY,
    next_visible_ms INTEGER NOT NULL,
    receipt_gen INTEGER NOT NULL,
    dequeue_count INTEGER NOT NULL,
    first_dequeue_ms INTEGER,
    priority INTEGER NOT NULL,
    enqueue_ms INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    body_md5 BLOB NOT NULL,
    tag TEXT,
    attributes TEXT,
    origin TEXT,
    body_ref INTEGER,
    body BLOB
)";

fn raw_open(dir: &Path, sync: Synchronous) -> Connection {
    let c = Connection::open(dir.join("raw.db")).expect("raw db");
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.pragma_update(None, "synchronous", level_name(sync))
        .unwrap();
    c.pragma_update(None, "cache_size", -8_000).unwrap();
    c.execute_batch(RAW_DDL).unwrap();
    c
}

fn raw_insert(c: &Connection, i: usize, b: &[u8]) {
    c.prepare_cached(
        "INSERT INTO q_1 (next_visible_ms, receipt_gen, dequeue_count, priority, enqueue_ms, \
         message_id, body_md5, attributes, body) VALUES (?1, 0, 0, 8, ?1, ?2, ?3, ?4, ?5)",
    )
    .unwrap()
    .execute(params![
        1_700_000_000_000i64 + i as i64,
        format!("{i:032x}"),
        &[0u8; 16][..],
        "{}",
        b
    ])
    .unwrap();
}

/// Rows/s with one row per commit.
fn raw_single_commits(dir: &Path, sync: Synchronous, n: usize) -> f64 {
    let c = raw_open(dir, sync);
    let b = body(0);
    let t = Instant::now();
    for i in 0..n {
        c.execute_batch("BEGIN").unwrap();
        raw_insert(&c, i, &b);
        c.execute_batch("COMMIT").unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// Rows/s with 1024 rows per commit: the ceiling.
fn raw_batched(dir: &Path, sync: Synchronous, n: usize) -> f64 {
    let c = raw_open(dir, sync);
    let b = body(0);
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1024) {
        c.execute_batch("BEGIN").unwrap();
        for &i in chunk {
            raw_insert(&c, i, &b);
        }
        c.execute_batch("COMMIT").unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// Messages/s of claim 16 (one commit) + delete 16 (one commit), in rowid order.
fn raw_claim_delete(dir: &Path, sync: Synchronous, n: usize) -> f64 {
    let c = raw_open(dir, sync);
    let b = body(0);
    for chunk in (0..n).collect::<Vec<_>>().chunks(1024) {
        c.execute_batch("BEGIN").unwrap();
        for &i in chunk {
            raw_insert(&c, i, &b);
        }
        c.execute_batch("COMMIT").unwrap();
    }
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    let t = Instant::now();
    let mut cursor = 0i64;
    let mut done = 0;
    loop {
        let seqs: Vec<i64> = c
            .prepare_cached("SELECT seq FROM q_1 WHERE seq > ?1 ORDER BY seq LIMIT 16")
            .unwrap()
            .query_map([cursor], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        if seqs.is_empty() {
            break;
        }
        cursor = *seqs.last().unwrap();
        c.execute_batch("BEGIN").unwrap();
        let mut got = 0usize;
        for &s in &seqs {
            let mut st = c
                .prepare_cached(
                    "UPDATE q_1 SET next_visible_ms = ?1, receipt_gen = ?2, \
                     dequeue_count = dequeue_count + 1, \
                     first_dequeue_ms = coalesce(first_dequeue_ms, ?1) WHERE seq = ?3 \
                     RETURNING message_id, body_md5, tag, attributes, body",
                )
                .unwrap();
            let mut rows = st.query(params![1i64, 7i64, s]).unwrap();
            while let Some(r) = rows.next().unwrap() {
                let body: Vec<u8> = r.get(4).unwrap();
                got += body.len().min(1);
            }
        }
        c.execute_batch("COMMIT").unwrap();
        c.execute_batch("BEGIN").unwrap();
        for &s in &seqs {
            c.prepare_cached("DELETE FROM q_1 WHERE seq = ?1")
                .unwrap()
                .execute([s])
                .unwrap();
        }
        c.execute_batch("COMMIT").unwrap();
        done += got;
    }
    done as f64 / t.elapsed().as_secs_f64()
}

/// Latency of insert + commit, then a read of the row from another connection (p50, p99 ms).
fn raw_latency(dir: &Path, sync: Synchronous, n: usize) -> (f64, f64) {
    let c = raw_open(dir, sync);
    let reader = Connection::open(dir.join("raw.db")).unwrap();
    let b = body(0);
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        c.execute_batch("BEGIN").unwrap();
        raw_insert(&c, i, &b);
        c.execute_batch("COMMIT").unwrap();
        let seq = c.last_insert_rowid();
        let _: Vec<u8> = reader
            .prepare_cached("SELECT body FROM q_1 WHERE seq = ?1")
            .unwrap()
            .query_row([seq], |r| r.get(0))
            .unwrap();
        lat.push(t.elapsed());
    }
    percentiles(&mut lat)
}

fn percentiles(lat: &mut [Duration]) -> (f64, f64) {
    lat.sort();
    let at = |p: f64| {
        let i = ((lat.len() as f64 * p).ceil() as usize)
            .saturating_sub(1)
            .min(lat.len() - 1);
        lat[i].as_secs_f64() * 1000.0
    };
    (at(0.50), at(0.99))
}

// ----- the store -----

async fn store_publish(dir: &Path, sync: Synchronous, publishers: usize, n: usize) -> f64 {
    let store = open_store(dir, sync);
    setup_topic(&store, "bench", "bench-q").await;
    let per = n / publishers;
    let commits_before = *store.commits().borrow();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                store
                    .publish(
                        "bench",
                        PublishRequest {
                            body: body(p * per + i),
                            ..PublishRequest::default()
                        },
                    )
                    .await
                    .expect("publish");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let rate = (per * publishers) as f64 / secs;
    // Timing breakdown: how many messages each commit carried, and how long a commit took.
    let commits = (*store.commits().borrow() - commits_before).max(1);
    eprintln!(
        "  publish x{publishers}: {commits} commits, {:.1} messages per commit, {:.2} ms per commit",
        (per * publishers) as f64 / commits as f64,
        secs * 1000.0 / commits as f64
    );
    store.close().await.unwrap();
    rate
}

async fn store_receive_delete(dir: &Path, sync: Synchronous, consumers: usize, n: usize) -> f64 {
    let store = open_store(dir, sync);
    setup_topic(&store, "bench", "bench-q").await;
    let mut i = 0;
    while i < n {
        let unit: Vec<(String, PublishRequest)> = (i..(i + 1024).min(n))
            .map(|j| {
                (
                    "bench".to_string(),
                    PublishRequest {
                        body: body(j),
                        ..PublishRequest::default()
                    },
                )
            })
            .collect();
        i += unit.len();
        store.publish_batch(unit).await.expect("preload");
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..consumers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = 0usize;
            loop {
                let msgs = store
                    .receive("bench-q", 16, Some(Duration::ZERO))
                    .await
                    .expect("receive");
                if msgs.is_empty() {
                    return got;
                }
                got += msgs.len();
                let handles = msgs.into_iter().filter_map(|m| m.receipt_handle).collect();
                for r in store
                    .delete_batch("bench-q", handles)
                    .await
                    .expect("delete")
                {
                    r.expect("delete one");
                }
            }
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    let rate = total as f64 / t.elapsed().as_secs_f64();
    assert_eq!(total, n, "every preloaded message drained once");
    store.close().await.unwrap();
    rate
}

/// Publish -> visible latency: a publisher paced a little apart, one long-polling receiver.
async fn store_latency(dir: &Path, sync: Synchronous, n: usize) -> (f64, f64) {
    let store = open_store(dir, sync);
    setup_topic(&store, "bench", "bench-q").await;
    let sent: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let receiver = {
        let (store, sent) = (store.clone(), sent.clone());
        tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            while lat.len() < n {
                let msgs = store
                    .receive("bench-q", 16, Some(Duration::from_secs(5)))
                    .await
                    .expect("receive");
                let now = Instant::now();
                let mut handles = Vec::new();
                for m in msgs {
                    let text = std::str::from_utf8(&m.body).unwrap_or_default();
                    let seq: usize = text
                        .trim_start_matches("{\"seq\":")
                        .split(',')
                        .next()
                        .and_then(|s| s.parse().ok())
                        .expect("seq in body");
                    if let Some(t0) = sent.lock().unwrap().remove(&seq) {
                        lat.push(now - t0);
                    }
                    handles.extend(m.receipt_handle);
                }
                if !handles.is_empty() {
                    store
                        .delete_batch("bench-q", handles)
                        .await
                        .expect("delete");
                }
            }
            lat
        })
    };
    for i in 0..n {
        sent.lock().unwrap().insert(i, Instant::now());
        store
            .publish(
                "bench",
                PublishRequest {
                    body: body(i),
                    ..PublishRequest::default()
                },
            )
            .await
            .expect("publish");
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let mut lat = receiver.await.unwrap();
    store.close().await.unwrap();
    percentiles(&mut lat)
}

struct Row {
    what: &'static str,
    store: String,
    raw: String,
    ratio: String,
}

fn fresh() -> tempfile::TempDir {
    // Beside the build (a real disk), not in a tmpfs /tmp, so fsync costs what it costs.
    let base = std::env::var_os("SLUICE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::current_dir().unwrap().join("target"));
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn json_line(sync: Synchronous, what: &str, store: f64, raw: f64) {
    println!(
        "{{\"bench\":\"store\",\"synchronous\":\"{}\",\"what\":\"{what}\",\"store\":{store:.1},\"raw\":{raw:.1},\"ratio\":{:.3}}}",
        level_name(sync).to_lowercase(),
        store / raw
    );
}

fn run_level(rt: &tokio::runtime::Runtime, sync: Synchronous, s: &Sizes) -> Vec<Row> {
    let name = level_name(sync);
    eprintln!("[{name}] raw loops ...");
    let raw_single = raw_single_commits(fresh().path(), sync, s.single_publishes);
    let raw_ceiling = raw_batched(fresh().path(), sync, s.concurrent_publishes);
    let raw_drain = raw_claim_delete(fresh().path(), sync, s.drain_messages);
    let (raw_p50, raw_p99) = raw_latency(fresh().path(), sync, s.latency_samples);
    eprintln!("[{name}] store ...");
    let one = rt.block_on(store_publish(fresh().path(), sync, 1, s.single_publishes));
    let many = rt.block_on(store_publish(
        fresh().path(),
        sync,
        64,
        s.concurrent_publishes,
    ));
    let drain4 = rt.block_on(store_receive_delete(
        fresh().path(),
        sync,
        4,
        s.drain_messages,
    ));
    let drain16 = rt.block_on(store_receive_delete(
        fresh().path(),
        sync,
        16,
        s.drain_messages,
    ));
    let (p50, p99) = rt.block_on(store_latency(fresh().path(), sync, s.latency_samples));
    json_line(sync, "publish_1_per_sec", one, raw_single);
    json_line(sync, "publish_64_per_sec", many, raw_ceiling);
    json_line(sync, "receive_delete_16x4_per_sec", drain4, raw_drain);
    json_line(sync, "receive_delete_16x16_per_sec", drain16, raw_drain);
    json_line(sync, "latency_p50_ms", p50, raw_p50);
    json_line(sync, "latency_p99_ms", p99, raw_p99);
    let f = |v: f64| format!("{v:>10.0}");
    let ms = |v: f64| format!("{v:>8.2} ms");
    let ratio = |a: f64, b: f64| format!("{:.2}x", a / b);
    vec![
        Row {
            what: "publish, 1 publisher (msg/s) | raw: 1 row per commit",
            store: f(one),
            raw: f(raw_single),
            ratio: ratio(one, raw_single),
        },
        Row {
            what: "publish, 64 publishers (msg/s) | raw: 1024 rows per commit (ceiling)",
            store: f(many),
            raw: f(raw_ceiling),
            ratio: format!("{} (target >= 0.25x)", ratio(many, raw_ceiling)),
        },
        Row {
            what: "receive 16 + delete 16, 4 consumers (msg/s) | raw: claim 16 + delete 16",
            store: f(drain4),
            raw: f(raw_drain),
            ratio: format!("{} (target >= 0.8x)", ratio(drain4, raw_drain)),
        },
        Row {
            what: "receive 16 + delete 16, 16 consumers (msg/s) | raw: claim 16 + delete 16",
            store: f(drain16),
            raw: f(raw_drain),
            ratio: format!("{} (target >= 0.8x)", ratio(drain16, raw_drain)),
        },
        Row {
            what: "publish -> visible p50 | raw: commit 1 row + read it",
            store: ms(p50),
            raw: ms(raw_p50),
            ratio: ratio(p50, raw_p50),
        },
        Row {
            what: "publish -> visible p99 | raw: commit 1 row + read it",
            store: ms(p99),
            raw: ms(raw_p99),
            ratio: ratio(p99, raw_p99),
        },
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing runnable.
    let quick = args.iter().any(|a| a == "--quick");
    let mut levels = Vec::new();
    if args.iter().any(|a| a == "full") {
        levels.push(Synchronous::Full);
    }
    if args.iter().any(|a| a == "normal") {
        levels.push(Synchronous::Normal);
    }
    if levels.is_empty() {
        levels = vec![Synchronous::Full, Synchronous::Normal];
    }
    let sizes = if quick {
        Sizes {
            single_publishes: 500,
            concurrent_publishes: 20_000,
            drain_messages: 20_000,
            latency_samples: 300,
        }
    } else {
        Sizes {
            single_publishes: 3_000,
            concurrent_publishes: 200_000,
            drain_messages: 100_000,
            latency_samples: 2_000,
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "store benchmark: {BODY_BYTES}-byte bodies, {cores} cores, topic -> 1 queue subscription{}",
        if quick { " (quick)" } else { "" }
    );
    for sync in levels {
        let rows = run_level(&rt, sync, &sizes);
        println!("\nsynchronous = {}", level_name(sync));
        println!("{:<78} {:>12} {:>12}  store/raw", "figure", "store", "raw");
        for r in rows {
            println!("{:<78} {:>12} {:>12}  {}", r.what, r.store, r.raw, r.ratio);
        }
    }
}
