//! Crash test (docs/faults.md, "Crash and restart"): SIGKILL the real `sluice` 30 times at random
//! moments while publishers (topic publish and queue send, single and batch, over `/v1/`) and
//! consumers (receive + batch delete) run; restart on the same data each time; every operation is
//! recorded as ok / failed / unknown and the whole history is checked at the end: every
//! acknowledged message is received (lost = 0), nothing appears that was not published or whose
//! publish was refused (unexpected = 0); duplicates are counted and printed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rand::Rng as _;
use serde_json::{json, Value};

use crate::common::Sluice;

/// Kills (each followed by a restart on the same data).
const KILLS: usize = 30;
/// Publisher and consumer tasks.
const PUBLISHERS: usize = 3;
const CONSUMERS: usize = 4;
/// Both queues give a lost receive answer back after this long.
const VISIBILITY_S: u64 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 2xx: committed.
    Ok,
    /// An error answer, or no connection at all: not committed.
    Failed,
    /// Sent, but no answer (killed mid-request): may or may not be committed.
    Unknown,
}

#[derive(Default)]
struct History {
    /// Every message body ever attempted, with the outcome of its publish or send.
    published: Mutex<HashMap<String, Outcome>>,
    /// How often each body was received.
    received: Mutex<HashMap<String, u32>>,
    receives_ok: AtomicU64,
    receives_failed: AtomicU64,
    deletes_ok: AtomicU64,
    deletes_failed: AtomicU64,
}

impl History {
    fn record(&self, bodies: &[String], outcome: Outcome) {
        let mut p = self.published.lock().unwrap();
        for b in bodies {
            p.insert(b.clone(), outcome);
        }
    }

    fn count(&self, outcome: Outcome) -> usize {
        let p = self.published.lock().unwrap();
        p.values().filter(|o| **o == outcome).count()
    }
}

/// The current server URL; empty while it is down.
type Base = Arc<RwLock<String>>;

fn base(b: &Base) -> String {
    b.read().unwrap().clone()
}

fn classify(r: &Result<reqwest::Response, reqwest::Error>) -> Option<Outcome> {
    match r {
        Ok(resp) if resp.status().is_success() => None, // decided after reading the body
        Ok(_) => Some(Outcome::Failed),
        // Never connected: the request did not reach the server.
        Err(e) if e.is_connect() => Some(Outcome::Failed),
        Err(_) => Some(Outcome::Unknown),
    }
}

async fn publisher(id: usize, base_url: Base, history: Arc<History>, stop: Arc<AtomicBool>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let b = base(&base_url);
        if b.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let kind = rand::rng().random_range(0..4);
        let batch = if kind % 2 == 1 {
            rand::rng().random_range(2..=16)
        } else {
            1
        };
        let prefix = ["t", "tb", "q", "qb"][kind];
        let bodies: Vec<String> = (0..batch)
            .map(|_| {
                n += 1;
                format!("{prefix}-{id}-{n}")
            })
            .collect();
        let path = if kind < 2 {
            "/v1/topics/crash-t/messages"
        } else {
            "/v1/queues/crash-q/messages"
        };
        let body = if batch == 1 {
            json!({"body": bodies[0]})
        } else {
            json!({"messages": bodies.iter().map(|b| json!({"body": b})).collect::<Vec<_>>()})
        };
        // Recorded as unknown before it is sent, so a message seen by a consumer before this
        // task reads the answer is never "unexpected".
        history.record(&bodies, Outcome::Unknown);
        let r = http
            .post(format!("{b}{path}"))
            .headers(crate::common::auth_for(&b))
            .json(&body)
            .send()
            .await;
        let outcome = match classify(&r) {
            Some(o) => o,
            None => match r.unwrap().bytes().await {
                Ok(_) => Outcome::Ok,
                Err(_) => Outcome::Unknown,
            },
        };
        history.record(&bodies, outcome);
        // Paced so the consumers keep up and the final drain stays short (this is a crash
        // test, not a load test).
        let pause = if outcome == Outcome::Ok { 5 } else { 20 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// One receive + batch delete round; returns how many messages it got.
async fn consume_once(http: &reqwest::Client, b: &str, queue: &str, history: &History) -> usize {
    let r = http
        .get(format!(
            "{b}/v1/queues/{queue}/messages?max=16&wait_seconds=1"
        ))
        .headers(crate::common::auth_for(b))
        .send()
        .await;
    let v: Value = match r {
        Ok(resp) if resp.status().is_success() => match resp.json().await {
            Ok(v) => v,
            Err(_) => {
                history.receives_failed.fetch_add(1, Ordering::Relaxed);
                return 0;
            }
        },
        _ => {
            history.receives_failed.fetch_add(1, Ordering::Relaxed);
            return 0;
        }
    };
    history.receives_ok.fetch_add(1, Ordering::Relaxed);
    let msgs = v["messages"].as_array().cloned().unwrap_or_default();
    if msgs.is_empty() {
        return 0;
    }
    let mut handles = Vec::new();
    {
        let mut rec = history.received.lock().unwrap();
        for m in &msgs {
            let body = m["body"].as_str().unwrap_or("<not text>").to_string();
            *rec.entry(body).or_default() += 1;
            handles.push(m["receipt_handle"].as_str().unwrap_or("").to_string());
        }
    }
    let r = http
        .post(format!("{b}/v1/queues/{queue}/messages/delete"))
        .headers(crate::common::auth_for(b))
        .json(&json!({ "receipt_handles": handles }))
        .send()
        .await;
    match r {
        Ok(resp) if resp.status().is_success() => {
            history.deletes_ok.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            history.deletes_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    msgs.len()
}

async fn consumer(
    queue: &'static str,
    base_url: Base,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    while !stop.load(Ordering::Relaxed) {
        let b = base(&base_url);
        if b.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        consume_once(&http, &b, queue, &history).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_30_times_under_publish_and_consume_loses_nothing_acknowledged() {
    // Proves: lost = 0 and unexpected = 0 over the whole history of 30 SIGKILLs and restarts.
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut sluice = Sluice::start(&data, &[]);
    {
        let h = crate::store_util::Http::new(&sluice.http);
        let attrs = json!({"visibility_timeout": VISIBILITY_S});
        for q in ["crash-q", "crash-tq"] {
            assert_eq!(
                h.json("PUT", &format!("/v1/queues/{q}"), &attrs)
                    .await
                    .status,
                201
            );
        }
        assert_eq!(
            h.json("PUT", "/v1/topics/crash-t", &json!({})).await.status,
            201
        );
        let a = h
            .json(
                "PUT",
                "/v1/topics/crash-t/subscriptions/crash-t-to-q",
                &json!({"queue": "crash-tq"}),
            )
            .await;
        assert_eq!(a.status, 201, "{}", a.json);
        // No rules: restarts then skip compiling the example rule (seconds in a debug build),
        // so the kills, not the start-ups, fill the test's time.
        let a = h.raw("DELETE", "/v1/rules/overheat", None).await;
        println!("removing the example rule: {} {}", a.status, a.json);
    }
    let base_url: Base = Arc::new(RwLock::new(sluice.http.clone()));
    let history = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for id in 0..PUBLISHERS {
        tasks.push(tokio::spawn(publisher(
            id,
            base_url.clone(),
            history.clone(),
            stop.clone(),
        )));
    }
    for i in 0..CONSUMERS {
        let q = if i % 2 == 0 { "crash-q" } else { "crash-tq" };
        tasks.push(tokio::spawn(consumer(
            q,
            base_url.clone(),
            history.clone(),
            stop.clone(),
        )));
    }

    for kill in 1..=KILLS {
        let run_ms = rand::rng().random_range(150..2500);
        tokio::time::sleep(Duration::from_millis(run_ms)).await;
        let pid = sluice.pid();
        sluice.kill();
        *base_url.write().unwrap() = String::new();
        // Keep clients hammering the dead port for a moment: those are failed (refused).
        sluice = tokio::task::spawn_blocking({
            let data = data.clone();
            move || Sluice::start(&data, &[])
        })
        .await
        .unwrap();
        *base_url.write().unwrap() = sluice.http.clone();
        println!(
            "kill {kill:>2}/{KILLS}: pid {pid} after {run_ms} ms; acked so far {}",
            history.count(Outcome::Ok)
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kills_s = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    // Final drain: everything still in the queues, including leases lost in the kills (they
    // come back after VISIBILITY_S).
    let http = reqwest::Client::new();
    let b = sluice.http.clone();
    let want: Vec<String> = {
        let p = history.published.lock().unwrap();
        p.iter()
            .filter(|(_, o)| **o == Outcome::Ok)
            .map(|(b, _)| b.clone())
            .collect()
    };
    let mut last_progress = Instant::now();
    loop {
        let missing = {
            let rec = history.received.lock().unwrap();
            want.iter().filter(|b| !rec.contains_key(*b)).count()
        };
        let mut got = 0;
        for q in ["crash-q", "crash-tq"] {
            got += consume_once(&http, &b, q, &history).await;
        }
        if got > 0 {
            last_progress = Instant::now();
        }
        // Done when nothing is missing and the queues are empty, or nothing came for a while.
        if (missing == 0 && got == 0)
            || last_progress.elapsed() > Duration::from_secs(VISIBILITY_S * 4)
        {
            break;
        }
    }

    let published = history.published.lock().unwrap().clone();
    let received = history.received.lock().unwrap().clone();
    let lost: Vec<&String> = published
        .iter()
        .filter(|(b, o)| **o == Outcome::Ok && !received.contains_key(*b))
        .map(|(b, _)| b)
        .collect();
    let unexpected: Vec<(&String, Option<&Outcome>)> = received
        .keys()
        .filter(|b| {
            !matches!(
                published.get(*b),
                Some(Outcome::Ok) | Some(Outcome::Unknown)
            )
        })
        .map(|b| (b, published.get(b)))
        .collect();
    let duplicates: u32 = received.values().map(|n| n - 1).sum();
    let unknown_received = published
        .iter()
        .filter(|(b, o)| **o == Outcome::Unknown && received.contains_key(*b))
        .count();
    println!(
        "history after {KILLS} kills in {kills_s:.1} s (+ drain, {:.1} s in all): messages ok {} failed {} unknown {} \
         (unknown later received {unknown_received}); receives ok {} failed {}; batch deletes ok \
         {} failed {}",
        started.elapsed().as_secs_f64(),
        history.count(Outcome::Ok),
        history.count(Outcome::Failed),
        history.count(Outcome::Unknown),
        history.receives_ok.load(Ordering::Relaxed),
        history.receives_failed.load(Ordering::Relaxed),
        history.deletes_ok.load(Ordering::Relaxed),
        history.deletes_failed.load(Ordering::Relaxed),
    );
    println!(
        "lost = {}, unexpected = {}, duplicates = {duplicates} (distinct received {})",
        lost.len(),
        unexpected.len(),
        received.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged but never received: {:?}",
        &lost[..lost.len().min(10)]
    );
    assert!(
        unexpected.is_empty(),
        "received but never acknowledged or attempted: {:?}",
        &unexpected[..unexpected.len().min(10)]
    );
    assert!(
        history.count(Outcome::Ok) >= 500,
        "too few acknowledged publishes for the test to mean anything"
    );
    sluice.stop();
}
