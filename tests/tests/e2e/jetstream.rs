//! sluice on a real 3-node NATS JetStream cluster on loopback ports (`--store nats://...`): two
//! sluice processes share it; a NATS node is killed with SIGKILL under load and nothing
//! acknowledged is lost; a killed sluice process's messages are taken over by another; the
//! durability check refuses servers that do not fsync every write; HTTP push runs through one
//! shared consumer per subscription.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use sluice_test_support::nats::LocalCluster;

use crate::common::{auth_for, free_port, sluice_bin, Sluice};
use crate::push::{self as hooks, Answer, Hook};

/// `--store` and `--nats-monitor` values for a cluster.
fn flags(cluster: &LocalCluster) -> (String, String) {
    (cluster.servers().join(","), cluster.monitors().join(","))
}

fn start_sluice(dir: &Path, cluster: &LocalCluster, node_id: &str) -> Sluice {
    let (store, monitors) = flags(cluster);
    Sluice::start(dir, &cluster_args(&store, &monitors, node_id))
}

fn cluster_args<'a>(store: &'a str, monitors: &'a str, node_id: &'a str) -> [&'a str; 6] {
    [
        "--store",
        store,
        "--nats-monitor",
        monitors,
        "--node-id",
        node_id,
    ]
}

async fn send(http: &reqwest::Client, base: &str, queue: &str, body: &str) -> bool {
    try_send(http, base, queue, body).await.is_ok()
}

/// One send; on failure, what the server (or the connection) answered.
async fn try_send(
    http: &reqwest::Client,
    base: &str,
    queue: &str,
    body: &str,
) -> Result<(), String> {
    let r = http
        .post(format!("{base}/v1/queues/{queue}/messages"))
        .headers(auth_for(base))
        .json(&json!({ "body": body }))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status().is_success() {
        return Ok(());
    }
    Err(format!(
        "{} {}",
        r.status(),
        r.text().await.unwrap_or_default()
    ))
}

/// One receive of up to 16 messages (waiting up to 1 s): (body, receipt) pairs; empty on error.
async fn receive(http: &reqwest::Client, base: &str, queue: &str) -> Vec<(String, String)> {
    let Ok(r) = http
        .get(format!(
            "{base}/v1/queues/{queue}/messages?max=16&wait_seconds=1"
        ))
        .headers(auth_for(base))
        .send()
        .await
    else {
        return Vec::new();
    };
    let Ok(v) = r.json::<Value>().await else {
        return Vec::new();
    };
    v["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|m| {
            Some((
                m["body"].as_str()?.to_owned(),
                m["receipt_handle"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

async fn delete(http: &reqwest::Client, base: &str, queue: &str, receipt: &str) -> bool {
    http.delete(format!("{base}/v1/queues/{queue}/messages/{receipt}"))
        .headers(auth_for(base))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Creates `queue` through `s` with the given visibility timeout.
async fn create_queue(s: &Sluice, queue: &str, visibility_timeout: u32) {
    let (status, v) = s
        .api()
        .put(
            &format!("/v1/queues/{queue}"),
            &json!({ "visibility_timeout": visibility_timeout }),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {v}");
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sluice_processes_share_one_cluster_and_each_message_is_received_once() {
    // Proves: a queue created through one process is used through the other; messages sent
    // through both and received through both arrive exactly once; the CLI works unchanged.
    let cluster = LocalCluster::start(3, true);
    let dir = tempfile::tempdir().unwrap();
    let a = start_sluice(&dir.path().join("a"), &cluster, "1");
    let b = start_sluice(&dir.path().join("b"), &cluster, "2");
    create_queue(&a, "shared-q", 30).await;
    // The default set-up (alerts, alerts-q, alerts-to-q) was created by both without conflict.
    let (status, v) = b.api().get("/v1/queues/alerts-q").await;
    assert_eq!(status, 200, "{v}");
    let http = client();
    const N: usize = 200;
    for i in 0..N {
        let base = if i % 2 == 0 { &a.http } else { &b.http };
        assert!(send(&http, base, "shared-q", &format!("m{i}")).await);
    }
    let out = b.cli_ok(&["queue", "send", "shared-q", "from-cli"]);
    println!("cli: {}", out.trim());
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let mut consumers = Vec::new();
    for base in [
        a.http.clone(),
        b.http.clone(),
        a.http.clone(),
        b.http.clone(),
    ] {
        let seen = seen.clone();
        let http = http.clone();
        consumers.push(tokio::spawn(async move {
            let started = Instant::now();
            while seen.lock().unwrap().len() < N + 1 && started.elapsed() < Duration::from_secs(60)
            {
                for (body, receipt) in receive(&http, &base, "shared-q").await {
                    *seen.lock().unwrap().entry(body).or_default() += 1;
                    assert!(delete(&http, &base, "shared-q", &receipt).await);
                }
            }
        }));
    }
    for c in consumers {
        c.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    let twice = seen.values().filter(|&&n| n > 1).count();
    println!(
        "received {} distinct of {}, {twice} more than once",
        seen.len(),
        N + 1
    );
    assert_eq!(seen.len(), N + 1);
    assert_eq!(twice, 0, "a message was handed out twice within its lease");
    let (_, info) = a.api().get("/v1/queues/shared-q").await;
    assert_eq!(info["active_messages"], 0, "{info}");
    assert_eq!(info["inactive_messages"], 0, "{info}");
    // Each process counts its own operations; together they saw every message.
    let mut received = 0.0;
    for s in [&a, &b] {
        let (status, text) = s.api().get_text("/metrics").await;
        assert_eq!(status, 200);
        let line = text
            .lines()
            .find(|l| l.starts_with("sluice_queue_received_total{queue=\"shared-q\"}"))
            .unwrap_or_else(|| panic!("no received counter for shared-q in:\n{text}"));
        println!("{}: {line}", s.http);
        received += line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    assert_eq!(received as usize, N + 1);
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nats_node_killed_under_load_loses_nothing_acknowledged() {
    // Proves: SIGKILL of the queue's stream leader while publishers run loses no acknowledged
    // message, and refuses no send: sends during the election wait for the new leader (the
    // store retries them within the request's 15 s deadline, with the same deduplicating ids)
    // and answer late instead of failing. Reports the longest send and the store's retries.
    let mut cluster = LocalCluster::start(3, true);
    let dir = tempfile::tempdir().unwrap();
    let s = start_sluice(&dir.path().join("s"), &cluster, "1");
    create_queue(&s, "load-q", 5).await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    // Failed sends: how many, and the last answer.
    let failed: Arc<Mutex<(usize, String)>> = Arc::default();
    // The longest a send took, and how many sends took over a second.
    let slowest: Arc<Mutex<(Duration, usize)>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::new();
    for p in 0..4 {
        let (acked, failed, stop) = (acked.clone(), failed.clone(), stop.clone());
        let slowest = slowest.clone();
        let base = s.http.clone();
        publishers.push(tokio::spawn(async move {
            let http = client();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let body = format!("p{p}-{n}");
                let started = Instant::now();
                let sent = try_send(&http, &base, "load-q", &body).await;
                let took = started.elapsed();
                {
                    let mut slowest = slowest.lock().unwrap();
                    slowest.0 = slowest.0.max(took);
                    slowest.1 += usize::from(took > Duration::from_secs(1));
                }
                match sent {
                    Ok(()) => acked.lock().unwrap().push(body),
                    Err(why) => {
                        let mut failed = failed.lock().unwrap();
                        *failed = (failed.0 + 1, why);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = cluster.stream_leader("sluice_q_load-q").unwrap_or(0);
    let before = acked.lock().unwrap().len();
    cluster.kill(victim);
    println!(
        "killed {} (stream leader) after {before} acknowledged sends",
        cluster.name(victim)
    );
    // A new stream leader is elected within the cluster's election timeout (randomised up to
    // about 9 s, longer on a loaded machine); sends resume after it. Publishing goes on until
    // a few hundred more sends are acknowledged, or 45 s pass.
    let killed_at = Instant::now();
    let resumed = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = acked.lock().unwrap().len();
        if now > before + 200 {
            break Some(killed_at.elapsed());
        }
        if killed_at.elapsed() > Duration::from_secs(45) {
            break None;
        }
    };
    println!("acknowledged sends resumed {resumed:?} after the kill");
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let (failed, last_failure) = failed.lock().unwrap().clone();
    let (longest, slow) = *slowest.lock().unwrap();
    if failed > 0 {
        println!("the last failed send was answered: {last_failure}");
    }
    // /metrics reads every queue's stream and consumer info, which answer 503 until the
    // consumer, too, has its new leader: read it once that is over.
    let read_at = Instant::now();
    let metrics = loop {
        let (status, text) = s.api().get_text("/metrics").await;
        if status == 200 {
            break text;
        }
        assert!(
            read_at.elapsed() < Duration::from_secs(30),
            "/metrics answered {status} for 30 s: {text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let retries = metrics
        .lines()
        .find(|l| l.starts_with("sluice_store_unavailable_retries_total "))
        .unwrap_or_else(|| panic!("no retry counter in:\n{metrics}"))
        .to_string();
    println!("sends refused: {failed}; longest send {longest:?}, {slow} sends over 1 s; {retries}");
    let http = client();
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut idle = Instant::now();
    while idle.elapsed() < Duration::from_secs(8) {
        let got = receive(&http, &s.http, "load-q").await;
        if !got.is_empty() {
            idle = Instant::now();
        }
        for (body, receipt) in got {
            *seen.entry(body).or_default() += 1;
            delete(&http, &s.http, "load-q", &receipt).await;
        }
    }
    let lost: Vec<&String> = acked.iter().filter(|b| !seen.contains_key(*b)).collect();
    let dups = seen.values().filter(|&&n| n > 1).count();
    println!(
        "acknowledged {}, failed {failed}, received {} distinct, lost {}, duplicates {dups}",
        acked.len(),
        seen.len(),
        lost.len()
    );
    assert!(
        resumed.is_some(),
        "no more sends were acknowledged within 45 s of the kill"
    );
    assert!(lost.is_empty(), "lost acknowledged messages: {lost:?}");
    assert_eq!(
        failed, 0,
        "sends were refused during the election; the last answer: {last_failure}"
    );
    cluster.restart(victim);
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_sluice_process_hands_its_messages_to_another() {
    // Proves: messages received (not deleted) through a process that is then SIGKILLed come
    // back through the other process after the visibility timeout; nothing is lost.
    let cluster = LocalCluster::start(3, true);
    let dir = tempfile::tempdir().unwrap();
    let a = start_sluice(&dir.path().join("a"), &cluster, "1");
    let b = start_sluice(&dir.path().join("b"), &cluster, "2");
    create_queue(&a, "handover-q", 2).await;
    let http = client();
    for i in 0..20 {
        assert!(send(&http, &a.http, "handover-q", &format!("h{i}")).await);
    }
    let held = receive(&http, &a.http, "handover-q").await;
    assert!(!held.is_empty());
    println!("process a holds {} messages when it is killed", held.len());
    a.kill();
    let mut seen: HashMap<String, u32> = HashMap::new();
    let started = Instant::now();
    while seen.len() < 20 && started.elapsed() < Duration::from_secs(30) {
        for (body, receipt) in receive(&http, &b.http, "handover-q").await {
            *seen.entry(body).or_default() += 1;
            assert!(delete(&http, &b.http, "handover-q", &receipt).await);
        }
    }
    println!(
        "process b received {} distinct after {:?}",
        seen.len(),
        started.elapsed()
    );
    assert_eq!(seen.len(), 20);
    for (body, _) in &held {
        assert!(seen.contains_key(body), "{body} was not handed over");
    }
    // The handles of the dead process expired with their lease.
    let (stale_body, stale_receipt) = &held[0];
    let r = http
        .delete(format!(
            "{}/v1/queues/handover-q/messages/{stale_receipt}",
            b.http
        ))
        .headers(auth_for(&b.http))
        .send()
        .await
        .unwrap();
    println!("old handle of {stale_body}: {}", r.status());
    assert_eq!(r.status().as_u16(), 409);
    b.stop();
}

#[test]
fn servers_without_fsync_per_write_are_refused_unless_weaker_durability_is_accepted() {
    // Proves: a single server without `sync_interval: always` makes `serve` exit with the fix
    // named; with --accept-weaker-durability it starts and warns.
    let cluster = LocalCluster::start(1, false);
    let dir = tempfile::tempdir().unwrap();
    let (store, monitors) = flags(&cluster);
    let out = Command::new(sluice_bin())
        .args([
            "serve",
            "--data-dir",
            &dir.path().join("refused").display().to_string(),
            "--http-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--store",
            &store,
            "--nats-monitor",
            &monitors,
        ])
        .env("SLUICE_CONFIG_DIR", dir.path().join("cfg"))
        .output()
        .expect("run sluice");
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert!(!out.status.success());
    assert!(stderr.contains("sync_interval: always"), "{stderr}");
    assert!(stderr.contains("fewer than the 3 replicas"), "{stderr}");
    assert!(stderr.contains("--accept-weaker-durability"), "{stderr}");
    let s = Sluice::start(
        &dir.path().join("weaker"),
        &[
            "--store",
            &store,
            "--nats-monitor",
            &monitors,
            "--accept-weaker-durability",
        ],
    );
    assert!(
        s.log().contains("--accept-weaker-durability"),
        "{}",
        s.log()
    );
    let out = s.cli_ok(&["queue", "send", "alerts-q", "still works"]);
    println!("{}", out.trim());
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_push_is_shared_by_two_processes_and_410_and_dead_letters_reach_both() {
    // Proves: an HTTP subscription created through one process is pushed through one shared
    // consumer: messages published through both processes arrive once each (no process pushes
    // what another pushed), with valid signatures; a 500 is retried with the same webhook-id;
    // a 410 seen by one process disables the subscription for both, and enabling it through
    // the other delivers the kept message; an exhausted schedule lands in the dead-letter
    // queue and is redriven; `show` adds up the counters of both processes.
    let begun = Instant::now();
    let cluster = LocalCluster::start(3, true);
    let dir = tempfile::tempdir().unwrap();
    let (store, monitors) = flags(&cluster);
    println!("cluster ready after {:?}", begun.elapsed());
    for d in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let a = hooks::start_sluice(
        &dir.path().join("a"),
        0.01,
        &cluster_args(&store, &monitors, "1"),
    );
    let b = hooks::start_sluice(
        &dir.path().join("b"),
        0.01,
        &cluster_args(&store, &monitors, "2"),
    );
    let flaky_failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failures = flaky_failures.clone();
    let hook = Hook::start(move |_, req| {
        if req.body == br#"{"flaky":true}"# && failures.fetch_add(1, Ordering::SeqCst) < 2 {
            Answer::Status(500, vec![])
        } else {
            hooks::ok()
        }
    })
    .await;
    println!("two processes ready after {:?}", begun.elapsed());
    let secret = hooks::subscribe(
        &a,
        "pt",
        "hook",
        json!({"http": hook.url, "format": "simplified"}),
    )
    .await;
    const N: usize = 100;
    let mut ids = Vec::new();
    for i in 0..N {
        let through = if i % 2 == 0 { &a } else { &b };
        ids.push(hooks::publish(through, "pt", &format!("{{\"n\":{i}}}")).await);
    }
    let flaky = hooks::publish(&b, "pt", r#"{"flaky":true}"#).await;
    println!("published {} through two processes", N + 1);
    let started = Instant::now();
    let all = hooks::wait_for(Duration::from_secs(30), async || hook.count() >= N + 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reqs = hook.requests();
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for r in &reqs {
        *per_id.entry(r.h("webhook-id").to_owned()).or_default() += 1;
    }
    let dups = per_id
        .iter()
        .filter(|(id, &n)| n > 1 && **id != flaky)
        .count();
    println!(
        "pushed {} requests for {} messages in {:?}; duplicates {dups}; flaky attempts {:?}",
        reqs.len(),
        per_id.len(),
        started.elapsed(),
        per_id.get(&flaky)
    );
    assert!(all, "not every message was pushed within 30 s");
    for id in &ids {
        assert_eq!(per_id.get(id), Some(&1), "message {id} pushed once");
    }
    assert_eq!(per_id.get(&flaky), Some(&3), "two 500s then a 200");
    hooks::verify_with_python(&secret, &reqs[..20]);
    let counted = hooks::wait_for(Duration::from_secs(10), async || {
        hooks::status(&b, "pt", "hook").await["delivered_total"].as_u64() == Some(N as u64 + 1)
    })
    .await;
    let shown = hooks::status(&b, "pt", "hook").await;
    println!("show through b: {shown}");
    assert!(counted, "delivered_total adds up both processes: {shown}");
    assert_eq!(shown["failed_attempts_total"], 2, "{shown}");

    // 410 through whichever process pushes it: both stop; enabling through b delivers it.
    let gone = Hook::start(|n, _| {
        if n == 0 {
            Answer::Status(410, vec![])
        } else {
            hooks::ok()
        }
    })
    .await;
    hooks::subscribe(&b, "pt", "gone", json!({"http": gone.url})).await;
    let kept = hooks::publish(&a, "pt", "kept").await;
    let disabled = hooks::wait_for(Duration::from_secs(10), async || {
        hooks::status(&a, "pt", "gone").await["enabled"] == false
            && hooks::status(&b, "pt", "gone").await["enabled"] == false
    })
    .await;
    assert!(disabled, "{}", hooks::status(&a, "pt", "gone").await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let while_disabled = gone.count();
    println!("410 endpoint while disabled saw {while_disabled} request(s)");
    assert_eq!(while_disabled, 1, "no process pushes after the 410");
    let (st, v) = b
        .api()
        .post("/v1/topics/pt/subscriptions/gone/enable", &json!({}))
        .await;
    assert_eq!(st, 200, "enable: {v}");
    let redelivered = hooks::wait_for(Duration::from_secs(10), async || {
        gone.requests()
            .iter()
            .skip(while_disabled)
            .any(|r| r.h("webhook-id") == kept)
    })
    .await;
    assert!(redelivered, "the kept message is pushed after enable");

    // An endpoint that refuses connections: three fast retries, then the dead-letter queue.
    let (st, v) = hooks::put(&a, "/v1/queues/pdlq", &json!({})).await;
    assert!(st == 200 || st == 201, "{v}");
    let refused = format!("http://127.0.0.1:{}/nobody", free_port());
    hooks::subscribe(
        &a,
        "pt",
        "dead",
        json!({"http": refused, "dead_letter_queue": "pdlq"}),
    )
    .await;
    let doomed = hooks::publish(&b, "pt", "doomed").await;
    let mut listed = Value::Null;
    let dead_lettered = hooks::wait_for(Duration::from_secs(20), async || {
        listed = b
            .api()
            .get("/v1/topics/pt/subscriptions/dead/dead-letters?max=10")
            .await
            .1;
        listed.to_string().contains(&doomed)
    })
    .await;
    println!("dead letters: {listed}");
    assert!(
        dead_lettered,
        "the exhausted push is in the dead-letter queue"
    );
    let (st, v) = a
        .api()
        .post(
            "/v1/topics/pt/subscriptions/dead/dead-letters/redrive",
            &json!({"max": 10}),
        )
        .await;
    println!("redrive: {st} {v}");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["redriven"], 1, "{v}");
    // Redriven, it runs out again and is a dead letter again (not deduplicated away). Each
    // process writes its attempt counters to the cluster at most once a second, so the sum can
    // trail the dead-letter count for a moment: wait for both.
    let again = hooks::wait_for(Duration::from_secs(20), async || {
        let shown = hooks::status(&a, "pt", "dead").await;
        shown["dead_lettered_total"].as_u64() >= Some(2)
            && shown["failed_attempts_total"].as_u64() >= Some(8)
    })
    .await;
    let shown = hooks::status(&a, "pt", "dead").await;
    println!("show dead: {shown}");
    assert!(again, "{shown}");
    assert_eq!(
        shown["failed_attempts_total"], 8,
        "two schedules of four attempts: {shown}"
    );
    a.stop();
    b.stop();
}

/// `GET path` on `base` with `Authorization: Bearer {key}`; the status.
async fn status_with_key(http: &reqwest::Client, base: &str, path: &str, key: &str) -> u16 {
    http.get(format!("{base}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn devices_keys_and_rules_are_shared_by_every_process() {
    // Proves: the rest of the catalog lives in the cluster too. A key created through one
    // process works on the other, and deleting it through that one revokes it on the first; a
    // product registered through one closes its topics to anonymous clients on the other; a
    // rule created through one is started through the other and runs there, and deleting it
    // through the first removes it everywhere.
    let cluster = LocalCluster::start(3, true);
    let dir = tempfile::tempdir().unwrap();
    let a = start_sluice(&dir.path().join("a"), &cluster, "1");
    let b = start_sluice(&dir.path().join("b"), &cluster, "2");
    assert_eq!(a.key, b.key, "one admin key for the cluster");
    let http = client();
    let within = Duration::from_secs(10);

    let (st, v) = a
        .api()
        .post(
            "/v1/keys",
            &json!({"name": "reader", "allow": ["queues/alerts-q:read"]}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let key = format!("{id}:{}", v["secret"].as_str().unwrap());
    let works_on_b = hooks::wait_for(within, async || {
        status_with_key(&http, &b.http, "/v1/queues/alerts-q", &key).await == 200
    })
    .await;
    assert!(works_on_b, "a key created through a works on b");
    let (st, v) = b.api().delete(&format!("/v1/keys/{id}")).await;
    assert_eq!(st, 200, "{v}");
    let revoked_on_a = hooks::wait_for(within, async || {
        matches!(
            status_with_key(&http, &a.http, "/v1/queues/alerts-q", &key).await,
            401 | 403
        )
    })
    .await;
    println!(
        "deleted through b, the key on a: {}",
        status_with_key(&http, &a.http, "/v1/queues/alerts-q", &key).await
    );
    assert!(revoked_on_a, "a key deleted through b is refused by a");

    let anonymous = |port: u16, topic: &'static str| async move {
        let report = crate::common::mqtt::publish_qos1(
            port,
            "anon",
            topic,
            vec![(0, br#"{"temperature": 20}"#.to_vec())],
            Duration::from_secs(5),
        )
        .await;
        report.acked.len() == 1
    };
    assert!(anonymous(b.mqtt_port, "/pk-shared/d1/user/update").await);
    let (st, v) = a.api().put("/v1/devices/pk-shared/d1", &json!({})).await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = b.api().get("/v1/devices/pk-shared/d1").await;
    assert_eq!(st, 200, "b shows the device at once: {v}");
    let closed = hooks::wait_for(Duration::from_secs(20), async || {
        !anonymous(b.mqtt_port, "/pk-shared/d1/user/update").await
    })
    .await;
    assert!(
        closed,
        "the product registered through a is closed to anonymous clients on b"
    );

    let sql = r#"SELECT temperature AS t, 'shared' AS via FROM "/+/+/user/hot""#;
    let (st, v) = a
        .api()
        .post(
            "/v1/rules/hot",
            &json!({"sql": sql, "actions": ["forward:alerts"]}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let started = hooks::wait_for(within, async || {
        b.api().post("/v1/rules/hot/start", &json!({})).await.0 == 200
    })
    .await;
    assert!(started, "b knows the rule created through a");
    let running_on_a = hooks::wait_for(within, async || {
        a.api().get("/v1/rules/hot").await.1["state"] == "running"
    })
    .await;
    assert!(running_on_a, "started through b, running on a");
    let report = crate::common::mqtt::publish_qos1(
        b.mqtt_port,
        "hot-dev",
        "/pk-other/d2/user/hot",
        vec![(0, br#"{"temperature": 99}"#.to_vec())],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(report.acked.len(), 1, "{report:?}");
    let got = b.api().drain("alerts-q", 1, Duration::from_secs(10)).await;
    println!("the rule on b forwarded: {got:?}");
    assert!(
        got.iter().any(|m| m.to_string().contains("shared")),
        "{got:?}"
    );
    let (st, v) = a.api().delete("/v1/rules/hot").await;
    assert!(st == 200 || st == 204, "{st} {v}");
    let gone = hooks::wait_for(within, async || b.api().get("/v1/rules/hot").await.0 == 404).await;
    assert!(gone, "deleted through a, gone on b");
    // Everything is in the cluster: a backup of the local file is refused with the fix.
    let (st, v) = a.api().get("/v1/backup").await;
    println!("backup on JetStream: {st} {v}");
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (501, Some("NotSupported"))
    );
    a.stop();
    b.stop();
}
