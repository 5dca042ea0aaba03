//! HTTP push benchmark (a program, not a timed test): the real store and delivery stage pushing
//! to a fast local endpoint (axum on 127.0.0.1, answering 200 at once) over keep-alive
//! connections.
//!
//! - pushes/s: a backlog of messages published while the subscription is disabled, then
//!   enabled: time until the endpoint has every message;
//! - commit -> push latency p50/p99/max at 5,000 messages/s offered (publish acknowledged after
//!   its commit -> the endpoint has it).
//!
//! Run: `cargo bench -p sluice --bench push` (or `-- --quick` for a short run). Prints a table
//! and one JSON line.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::routing::post;
use bytes::Bytes;
use sluice::deliver::{self, DeliverConfig};
use sluice::store::{
    ContentFormat, Endpoint, HttpPush, PublishRequest, Store, StoreOptions, SubscriptionSpec,
};
use tokio_util::sync::CancellationToken;

#[path = "common/mod.rs"]
mod common;

use common::body;

type Seen = Arc<Mutex<HashMap<String, Instant>>>;

async fn endpoint(seen: Seen) -> String {
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, _body: Bytes| {
            let seen = seen.clone();
            async move {
                let at = Instant::now();
                if let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok()) {
                    seen.lock().unwrap().insert(id.to_owned(), at);
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hook")
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(quick));
}

async fn run(quick: bool) {
    let backlog = if quick { 20_000 } else { 100_000 };
    let offered_per_sec = 5_000usize;
    let offered_secs = if quick { 3 } else { 10 };
    let dir = tempfile::tempdir().unwrap();
    let store = tokio::task::spawn_blocking({
        let p = dir.path().to_path_buf();
        move || Store::open(&p, StoreOptions::default())
    })
    .await
    .unwrap()
    .unwrap();
    let seen: Seen = Arc::default();
    let url = endpoint(seen.clone()).await;
    store.create_topic("t").await.unwrap();
    let mut push = HttpPush::new(url);
    push.format = ContentFormat::Simplified;
    push.max_concurrency = 64;
    store
        .create_push_subscription(
            "t",
            "bench",
            SubscriptionSpec {
                endpoint: Endpoint::Http(push),
                filter_tag: None,
                base64_body: false,
            },
        )
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let deliver = deliver::start(store.clone(), DeliverConfig::default(), stop.clone());

    // 1. Throughput: a backlog, then enable.
    store.set_push_enabled("t", "bench", false).await.unwrap();
    let mut i = 0;
    while i < backlog {
        let items: Vec<_> = (i..(i + 512).min(backlog))
            .map(|j| {
                (
                    "t".to_string(),
                    PublishRequest {
                        body: body(j),
                        ..Default::default()
                    },
                )
            })
            .collect();
        i += items.len();
        store.publish_batch(items).await.unwrap();
    }
    let started = Instant::now();
    store.set_push_enabled("t", "bench", true).await.unwrap();
    loop {
        let n = seen.lock().unwrap().len();
        if n >= backlog {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            panic!("only {n} of {backlog} pushed in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain = started.elapsed();
    let pushes_per_sec = backlog as f64 / drain.as_secs_f64();
    // Let the last outcomes commit.
    loop {
        if store.push_status("t", "bench").await.unwrap().backlog == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen.lock().unwrap().clear();

    // 2. Latency at a steady offered rate: publish every millisecond-ish, ack time per id.
    let acks: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = offered_per_sec * offered_secs;
    let tick = Duration::from_millis(2);
    let per_tick = offered_per_sec * tick.as_millis() as usize / 1000;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0usize;
    let mut inflight = tokio::task::JoinSet::new();
    let offer_start = Instant::now();
    while sent < total {
        interval.tick().await;
        let items: Vec<_> = (sent..sent + per_tick)
            .map(|j| {
                (
                    "t".to_string(),
                    PublishRequest {
                        body: body(j),
                        ..Default::default()
                    },
                )
            })
            .collect();
        sent += items.len();
        let store = store.clone();
        let acks = acks.clone();
        inflight.spawn(async move {
            let published = store.publish_batch(items).await.unwrap();
            let at = Instant::now();
            let mut a = acks.lock().unwrap();
            for p in published {
                a.insert(p.id.to_string(), at);
            }
        });
    }
    while inflight.join_next().await.is_some() {}
    let offered_actual = total as f64 / offer_start.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.lock().unwrap().len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen_now = seen.lock().unwrap().clone();
    let acks = acks.lock().unwrap().clone();
    let mut lat: Vec<f64> = acks
        .iter()
        .filter_map(|(id, ack)| {
            seen_now
                .get(id)
                .map(|at| at.saturating_duration_since(*ack).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let lost = total - lat.len();
    stop.cancel();
    let _ = deliver.await;
    let (commit, sync) = (
        store.counters().commit_time.snapshot(),
        store.counters().sync_time.snapshot(),
    );
    store.close().await.unwrap();

    let (p50, p99, max) = (
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
    );
    println!("HTTP push to a local endpoint (keep-alive, SIMPLIFIED, 250-byte bodies, max_concurrency 64, synchronous=FULL)");
    println!("  backlog of {backlog}: {pushes_per_sec:>10.0} pushes/s ({drain:?})");
    let ms = |ns: u64| ns as f64 / 1e6;
    println!(
        "  store over the whole run: {} commits, p50/p99/max {:.2}/{:.2}/{:.1} ms; {} fsyncs, p50/p99/max {:.2}/{:.2}/{:.1} ms",
        commit.samples,
        ms(commit.p50),
        ms(commit.p99),
        ms(commit.max),
        sync.samples,
        ms(sync.p50),
        ms(sync.p99),
        ms(sync.max)
    );
    println!(
        "  at {offered_actual:.0}/s offered for {offered_secs} s: commit -> push latency p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms; not pushed: {lost}"
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "push",
            "pushes_per_sec": pushes_per_sec.round(),
            "offered_per_sec": offered_actual.round(),
            "latency_ms": {"p50": p50, "p99": p99, "max": max},
            "lost": lost,
        })
    );
}
