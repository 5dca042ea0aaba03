//! Back-pressure (a slow or dead subscriber never blocks ingest):
//! 100,000 messages published over `/v1/` far faster than a slow consumer drains keep the
//! server's memory bounded (peak RSS from `/proc/<pid>/status` printed and checked) and lose
//! nothing acknowledged (everything is drained and counted at the end).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::Sluice;
use crate::store_util::{memory_kib, Http};

const TOTAL: u64 = 100_000;
const BATCH: u64 = 16;
const PUBLISHERS: u64 = 32;
/// Padding that makes each body about 200 bytes.
const PAD: usize = 180;
/// Growth of peak RSS over the idle server that counts as "bounded": the backlog's bodies
/// (~20 MB) held in memory even once would show; the store keeps only ~16 bytes of index per
/// queued message.
const MAX_GROWTH_KIB: u64 = 96 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_messages_against_a_slow_consumer_keep_memory_bounded_and_arrive() {
    // Proves bounded server memory under a 100,000-message backlog and lost = 0 after a drain.
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let pid = sluice.pid();
    let h = Http::new(&sluice.http);
    assert_eq!(
        h.json("PUT", "/v1/queues/bp-q", &json!({"visibility_timeout": 60}))
            .await
            .status,
        201
    );
    assert_eq!(
        h.json("PUT", "/v1/topics/bp-t", &json!({})).await.status,
        201
    );
    let a = h
        .json(
            "PUT",
            "/v1/topics/bp-t/subscriptions/bp-t-to-q",
            &json!({"queue": "bp-q"}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.json);
    let (hwm_idle, rss_idle) = memory_kib(pid);
    println!("idle server: VmHWM {hwm_idle} KiB, VmRSS {rss_idle} KiB");

    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let publishing_done = Arc::new(AtomicBool::new(false));
    let peak_rss = Arc::new(AtomicU64::new(rss_idle));

    // Memory sampler.
    let sampler = {
        let done = publishing_done.clone();
        let peak = peak_rss.clone();
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let (_, rss) = memory_kib(pid);
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // The slow consumer: one message at a time, 20 ms apart (~50/s).
    let slow_received = Arc::new(Mutex::new(Vec::<String>::new()));
    let slow = {
        let h = h.clone();
        let done = publishing_done.clone();
        let got = slow_received.clone();
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let a = h.get("/v1/queues/bp-q/messages?max=1").await;
                for m in a.json["messages"].as_array().cloned().unwrap_or_default() {
                    let r = m["receipt_handle"].as_str().unwrap_or_default();
                    let d = h
                        .raw("DELETE", &format!("/v1/queues/bp-q/messages/{r}"), None)
                        .await;
                    assert_eq!(d.status, 200, "slow consumer delete: {}", d.json);
                    got.lock()
                        .unwrap()
                        .push(m["body"].as_str().unwrap_or_default().to_string());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let mut publishers = Vec::new();
    for _ in 0..PUBLISHERS {
        let (h, next, acked, failed) = (h.clone(), next.clone(), acked.clone(), failed.clone());
        publishers.push(tokio::spawn(async move {
            let pad = "p".repeat(PAD);
            loop {
                let first = next.fetch_add(BATCH, Ordering::Relaxed);
                if first >= TOTAL {
                    break;
                }
                let last = (first + BATCH).min(TOTAL);
                let messages: Vec<Value> = (first..last)
                    .map(|i| json!({"body": format!("m{i:06}-{pad}")}))
                    .collect();
                let a = h
                    .json(
                        "POST",
                        "/v1/topics/bp-t/messages",
                        &json!({ "messages": messages }),
                    )
                    .await;
                if a.status == 201 {
                    acked.fetch_add(last - first, Ordering::Relaxed);
                } else {
                    failed.fetch_add(last - first, Ordering::Relaxed);
                    eprintln!("publish refused: {} {}", a.status, a.json);
                }
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let publish_s = started.elapsed().as_secs_f64();
    publishing_done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    slow.await.unwrap();
    let (hwm, rss) = memory_kib(pid);
    let slow_count = slow_received.lock().unwrap().len();
    let backlog = h.queue("bp-q").await;
    println!(
        "published {} acked, {} refused in {publish_s:.1} s ({:.0} msg/s); slow consumer took {slow_count}; \
         backlog {} visible",
        acked.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        acked.load(Ordering::Relaxed) as f64 / publish_s,
        backlog["active_messages"],
    );
    println!(
        "server memory: VmHWM {hwm} KiB (idle {hwm_idle} KiB, growth {} KiB), VmRSS now {rss} KiB, \
         sampled peak RSS {} KiB",
        hwm.saturating_sub(rss_idle),
        peak_rss.load(Ordering::Relaxed)
    );
    assert_eq!(
        acked.load(Ordering::Relaxed),
        TOTAL,
        "every publish acknowledged"
    );
    assert!(
        (slow_count as u64) < TOTAL / 4,
        "the consumer must be far slower than the publishers for this test to mean anything"
    );

    // Drain everything and count.
    let mut seen: HashSet<String> = slow_received.lock().unwrap().iter().cloned().collect();
    let mut duplicates = 0u64;
    let drain_started = Instant::now();
    let drained = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut drainers = Vec::new();
    for _ in 0..4 {
        let (h, drained) = (h.clone(), drained.clone());
        drainers.push(tokio::spawn(async move {
            let mut idle_rounds = 0;
            while idle_rounds < 2 {
                let a = h
                    .get("/v1/queues/bp-q/messages?max=16&wait_seconds=1")
                    .await;
                assert_eq!(a.status, 200, "{}", a.json);
                let msgs = a.json["messages"].as_array().cloned().unwrap_or_default();
                if msgs.is_empty() {
                    idle_rounds += 1;
                    continue;
                }
                idle_rounds = 0;
                let handles: Vec<&str> = msgs
                    .iter()
                    .map(|m| m["receipt_handle"].as_str().unwrap_or_default())
                    .collect();
                let d = h
                    .json(
                        "POST",
                        "/v1/queues/bp-q/messages/delete",
                        &json!({ "receipt_handles": handles }),
                    )
                    .await;
                assert_eq!(d.status, 200, "{}", d.json);
                let mut out = drained.lock().unwrap();
                out.extend(
                    msgs.iter()
                        .map(|m| m["body"].as_str().unwrap_or_default().to_string()),
                );
            }
        }));
    }
    for d in drainers {
        d.await.unwrap();
    }
    for b in drained.lock().unwrap().iter() {
        if !seen.insert(b.clone()) {
            duplicates += 1;
        }
    }
    let lost = (0..TOTAL)
        .filter(|i| !seen.contains(&format!("m{i:06}-{}", "p".repeat(PAD))))
        .count();
    let after = h.queue("bp-q").await;
    println!(
        "drained in {:.1} s: distinct received {}, lost {lost}, duplicates {duplicates}; queue now {} visible {} in flight",
        drain_started.elapsed().as_secs_f64(),
        seen.len(),
        after["active_messages"],
        after["inactive_messages"]
    );
    assert_eq!(lost, 0, "every acknowledged message is received");
    assert_eq!(seen.len() as u64, TOTAL, "nothing unexpected");
    assert!(
        hwm.saturating_sub(rss_idle) < MAX_GROWTH_KIB,
        "server peak RSS grew by {} KiB under a {TOTAL}-message backlog (bound {MAX_GROWTH_KIB} KiB)",
        hwm.saturating_sub(rss_idle)
    );
    sluice.stop();
}
