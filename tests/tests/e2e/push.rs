//! HTTP push subscriptions against real HTTP servers on 127.0.0.1 (a small raw HTTP/1.1 server
//! in this file, so every misbehaviour — never answering, one byte per second, an endless body —
//! is under the test's control). Signatures are verified with the independent
//! `standardwebhooks` package from PyPI (`.ci/run` installs it).
//!
//! Most tests run sluice with `push_retry_scale = 0.01` (a documented test knob) so the
//! BACKOFF_RETRY waits of 10–20 s take 100–200 ms.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{free_port, Sluice};

// ----- a controllable HTTP endpoint -----

/// One request as the endpoint saw it.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub(crate) at: Instant,
    pub(crate) headers: HashMap<String, String>,
    pub(crate) body: Vec<u8>,
}

impl Req {
    pub(crate) fn h(&self, k: &str) -> &str {
        self.headers.get(k).map(String::as_str).unwrap_or("")
    }
}

/// How the endpoint answers request number `n` (0-based).
pub(crate) enum Answer {
    Status(u16, Vec<(&'static str, String)>),
    /// Accept, read, never answer.
    Hang,
    /// Answer 200 one byte per second.
    Trickle,
    /// Answer 200 with an endless chunked body.
    Endless,
}

type Behave = Arc<dyn Fn(usize, &Req) -> Answer + Send + Sync>;
type After = Arc<dyn Fn(usize) + Send + Sync>;

#[derive(Clone)]
pub(crate) struct Hook {
    pub(crate) url: String,
    reqs: Arc<Mutex<Vec<Req>>>,
}

impl Hook {
    pub(crate) async fn start(
        behave: impl Fn(usize, &Req) -> Answer + Send + Sync + 'static,
    ) -> Hook {
        Hook::start_with(Arc::new(behave), None).await
    }

    /// `after(n)` runs right after the answer to request `n` was written.
    async fn start_with(behave: Behave, after: Option<After>) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let reqs: Arc<Mutex<Vec<Req>>> = Arc::default();
        let r = reqs.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_conn(stream, r.clone(), behave.clone(), after.clone()));
            }
        });
        Hook {
            url: format!("http://{addr}/hook"),
            reqs,
        }
    }

    pub(crate) fn requests(&self) -> Vec<Req> {
        self.reqs.lock().unwrap().clone()
    }

    pub(crate) fn count(&self) -> usize {
        self.reqs.lock().unwrap().len()
    }
}

pub(crate) fn ok() -> Answer {
    Answer::Status(200, vec![])
}

async fn serve_conn(
    mut s: TcpStream,
    reqs: Arc<Mutex<Vec<Req>>>,
    behave: Behave,
    after: Option<After>,
) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut headers = HashMap::new();
        for line in head.lines().skip(1) {
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + 4 + len {
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[head_end + 4..head_end + 4 + len].to_vec();
        buf.drain(..head_end + 4 + len);
        let req = Req {
            at: Instant::now(),
            headers,
            body,
        };
        let n = {
            let mut g = reqs.lock().unwrap();
            g.push(req.clone());
            g.len() - 1
        };
        match behave(n, &req) {
            Answer::Status(code, extra) => {
                let mut out = format!("HTTP/1.1 {code} X\r\ncontent-length: 2\r\n");
                for (k, v) in extra {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\nok");
                if s.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
                let _ = s.flush().await;
                if let Some(after) = &after {
                    after(n);
                }
            }
            Answer::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Answer::Trickle => {
                for b in b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok" {
                    if s.write_all(&[*b]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                return;
            }
            Answer::Endless => {
                if s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                let chunk = format!("2000\r\n{}\r\n", "x".repeat(0x2000));
                loop {
                    if s.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                    // Endless, but not a CPU hog of the test machine (8 MB/s per connection).
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
}

// ----- sluice helpers -----

pub(crate) fn start_sluice(dir: &Path, scale: f64, extra: &[&str]) -> Sluice {
    let cfg = dir.join("sluice.toml");
    std::fs::write(&cfg, format!("push_retry_scale = {scale}\n")).unwrap();
    let cfg = cfg.display().to_string();
    let mut args = vec!["--config", cfg.as_str()];
    args.extend_from_slice(extra);
    Sluice::start(&dir.join("data"), &args)
}

pub(crate) async fn put(s: &Sluice, path: &str, body: &Value) -> (u16, Value) {
    let r = s
        .client()
        .put(format!("{}{path}", s.http))
        .json(body)
        .send()
        .await
        .expect("PUT");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Creates topic `topic` (if needed) and HTTP subscription `name`; returns its secret.
pub(crate) async fn subscribe(s: &Sluice, topic: &str, name: &str, body: Value) -> String {
    let (st, v) = put(s, &format!("/v1/topics/{topic}"), &json!({})).await;
    assert!(st == 200 || st == 201, "topic: {st} {v}");
    let (st, v) = put(
        s,
        &format!("/v1/topics/{topic}/subscriptions/{name}"),
        &body,
    )
    .await;
    assert_eq!(st, 201, "subscribe {name}: {v}");
    v["secret"]
        .as_str()
        .expect("secret in the create answer")
        .to_string()
}

pub(crate) async fn publish(s: &Sluice, topic: &str, body: &str) -> String {
    let (st, v) = s
        .api()
        .post(
            &format!("/v1/topics/{topic}/messages"),
            &json!({"body": body}),
        )
        .await;
    assert_eq!(st, 201, "publish: {v}");
    v["id"].as_str().expect("id").to_string()
}

pub(crate) async fn status(s: &Sluice, topic: &str, name: &str) -> Value {
    let (st, v) = s
        .api()
        .get(&format!("/v1/topics/{topic}/subscriptions/{name}"))
        .await;
    assert_eq!(st, 200, "show: {v}");
    v["push"].clone()
}

/// Polls `f` until it is true or `timeout` passes; returns whether it became true.
pub(crate) async fn wait_for(timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f().await
}

/// Verifies every request's Standard Webhooks signature with the `standardwebhooks` package.
pub(crate) fn verify_with_python(secret: &str, reqs: &[Req]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reqs.json");
    let list: Vec<Value> = reqs
        .iter()
        .map(|r| {
            json!({
                "id": r.h("webhook-id"),
                "timestamp": r.h("webhook-timestamp"),
                "signature": r.h("webhook-signature"),
                "body": String::from_utf8(r.body.clone()).expect("UTF-8 body"),
            })
        })
        .collect();
    std::fs::write(&file, serde_json::to_string(&list).unwrap()).unwrap();
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
wh = Webhook(sys.argv[2])
reqs = json.load(open(sys.argv[1]))
for r in reqs:
    wh.verify(r["body"], {"webhook-id": r["id"], "webhook-timestamp": r["timestamp"],
                          "webhook-signature": r["signature"]})
print("verified", len(reqs))
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&file)
        .arg(secret)
        .output()
        .expect("python3 (with `pip install standardwebhooks`, see .ci/run)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!(
        "standardwebhooks: {}{}",
        stdout.trim(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "signature verification failed");
    assert_eq!(stdout.trim(), format!("verified {}", reqs.len()));
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// ----- tests -----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_twice_then_200_same_id_fresh_timestamps_valid_signatures_nothing_after() {
    // Proves: attempts follow the schedule, one webhook-id, a fresh timestamp
    // and a signature that an independent Standard Webhooks library accepts on every attempt,
    // and nothing after the 200; plus the three content formats.
    let dir = tempfile::tempdir().unwrap();
    let s = start_sluice(dir.path(), 0.01, &[]);
    let hook = Hook::start(|n, _| {
        if n < 2 {
            Answer::Status(500, vec![])
        } else {
            ok()
        }
    })
    .await;
    let secret = subscribe(&s, "t", "h", json!({"http": hook.url, "format": "JSON"})).await;
    assert!(secret.starts_with("whsec_"));
    let id = publish(&s, "t", r#"{"temperature":40}"#).await;
    assert!(
        wait_for(Duration::from_secs(30), async || status(&s, "t", "h").await
            ["delivered_total"]
            == 1)
        .await,
        "delivered; status {}",
        status(&s, "t", "h").await
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reqs = hook.requests();
    let gaps: Vec<_> = reqs.windows(2).map(|w| w[1].at - w[0].at).collect();
    println!("attempts: {}, gaps {gaps:?}", reqs.len());
    assert_eq!(reqs.len(), 3, "two failures, one success, nothing after");
    for r in &reqs {
        assert_eq!(r.h("webhook-id"), id);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["MessageId"], id.as_str());
        assert_eq!(v["Message"], r#"{"temperature":40}"#);
        assert_eq!(
            (v["TopicName"].as_str(), v["SubscriptionName"].as_str()),
            (Some("t"), Some("h"))
        );
    }
    // BACKOFF_RETRY scaled by 0.01: 100-200 ms between attempts.
    for g in &gaps {
        assert!(
            *g >= Duration::from_millis(90),
            "waited per the schedule: {gaps:?}"
        );
    }
    let ts: Vec<u64> = reqs
        .iter()
        .map(|r| r.h("webhook-timestamp").parse().unwrap())
        .collect();
    let now_s = epoch_ms() / 1000;
    assert!(
        ts.iter().all(|&t| t + 60 > now_s && t <= now_s + 1),
        "fresh timestamps {ts:?}"
    );
    verify_with_python(&secret, &reqs);
    let st = status(&s, "t", "h").await;
    println!("status {st}");
    assert_eq!(
        (st["failed_attempts_total"].as_u64(), st["backlog"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(st["last_error"], "HTTP 500");

    // Formats: SIMPLIFIED (body as is + headers) and XML; the secret never shows again.
    let plain = Hook::start(|_, _| ok()).await;
    let xml = Hook::start(|_, _| ok()).await;
    subscribe(
        &s,
        "f",
        "plain",
        json!({"http": plain.url, "format": "simplified"}),
    )
    .await;
    subscribe(&s, "f", "xml", json!({"http": xml.url})).await;
    let (_, v) = s
        .api()
        .post(
            "/v1/topics/f/messages",
            &json!({"body": "a<b&c", "tag": "hot"}),
        )
        .await;
    let fid = v["id"].as_str().unwrap().to_string();
    assert!(
        wait_for(Duration::from_secs(20), async || plain.count() == 1
            && xml.count() == 1)
        .await
    );
    let p = &plain.requests()[0];
    assert_eq!(
        (
            &p.body[..],
            p.h("x-mns-message-id"),
            p.h("x-mns-message-tag")
        ),
        (&b"a<b&c"[..], fid.as_str(), "hot")
    );
    let x = String::from_utf8(xml.requests()[0].body.clone()).unwrap();
    println!("XML: {x}");
    assert!(x.contains(r#"<Notification xmlns="http://mns.aliyuncs.com/doc/v1/">"#));
    assert!(
        x.contains("<Message>a&lt;b&amp;c</Message>") && x.contains("<MessageTag>hot</MessageTag>")
    );
    let (_, list) = s.api().get("/v1/topics/f/subscriptions").await;
    let (_, show) = s.api().get("/v1/topics/f/subscriptions/xml").await;
    assert!(!list.to_string().contains("whsec_") && !show.to_string().contains("whsec_"));
    assert_eq!(show["endpoint"]["http"]["format"], "XML");
    assert_eq!(show["endpoint"]["http"]["strategy"], "BACKOFF_RETRY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_xx_retried_410_disables_429_waits_redirects_not_followed_refused_fails() {
    // Proves against real servers: 400/404/422 are retried (not
    // dropped), 410 disables the subscription and keeps the message, 429 with Retry-After
    // waits that long, 301/302 are failures whose Location is never visited, a refused
    // connection is a failure and, after the last retry, goes to the dead-letter queue.
    let dir = tempfile::tempdir().unwrap();
    let s = start_sluice(dir.path(), 0.01, &[]);
    let target = Hook::start(|_, _| ok()).await;
    let mut hooks = Vec::new();
    for code in [400u16, 404, 422, 301, 302] {
        let loc = target.url.clone();
        let h = Hook::start(move |n, _| {
            if n == 0 {
                Answer::Status(code, vec![("location", loc.clone())])
            } else {
                ok()
            }
        })
        .await;
        subscribe(&s, "t", &format!("s{code}"), json!({"http": h.url})).await;
        hooks.push((code, h));
    }
    let gone = Hook::start(|_, _| Answer::Status(410, vec![])).await;
    subscribe(&s, "t", "s410", json!({"http": gone.url})).await;
    let busy = Hook::start(|n, _| {
        if n == 0 {
            Answer::Status(429, vec![("retry-after", "2".into())])
        } else {
            ok()
        }
    })
    .await;
    subscribe(&s, "t", "s429", json!({"http": busy.url})).await;
    let (st, v) = put(&s, "/v1/queues/dead", &json!({})).await;
    assert!(st == 201 || st == 200, "{v}");
    let refused = format!("http://127.0.0.1:{}/nobody", free_port());
    subscribe(
        &s,
        "t",
        "refused",
        json!({"http": refused, "dead_letter_queue": "dead"}),
    )
    .await;
    let id = publish(&s, "t", "m1").await;

    for (code, h) in &hooks {
        assert!(
            wait_for(Duration::from_secs(20), async || status(
                &s,
                "t",
                &format!("s{code}")
            )
            .await["delivered_total"]
                == 1)
            .await,
            "{code} retried then delivered: {}",
            status(&s, "t", &format!("s{code}")).await
        );
        let st = status(&s, "t", &format!("s{code}")).await;
        println!(
            "{code}: {} attempts, last error {}",
            h.count(),
            st["last_error"]
        );
        assert_eq!(h.count(), 2, "{code}: one failure, one success");
        assert_eq!(st["failed_attempts_total"], 1);
    }
    assert_eq!(target.count(), 0, "redirects are not followed");

    assert!(
        wait_for(Duration::from_secs(20), async || status(&s, "t", "s410")
            .await["enabled"]
            == false)
        .await
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let st = status(&s, "t", "s410").await;
    println!("410: {st}");
    assert_eq!(gone.count(), 1, "nothing pushed to a disabled subscription");
    assert_eq!(
        (st["backlog"].as_u64(), st["delivered_total"].as_u64()),
        (Some(1), Some(0)),
        "message kept"
    );
    assert!(st["disabled_reason"].as_str().unwrap().contains("410"));

    assert!(wait_for(Duration::from_secs(20), async || busy.count() == 2).await);
    let r = busy.requests();
    let waited = r[1].at - r[0].at;
    println!("429 with Retry-After: 2 -> next attempt after {waited:?}");
    assert!(
        waited >= Duration::from_millis(1900),
        "Retry-After honoured: {waited:?}"
    );

    assert!(
        wait_for(Duration::from_secs(30), async || status(&s, "t", "refused")
            .await["dead_lettered_total"]
            == 1)
        .await,
        "refused: {}",
        status(&s, "t", "refused").await
    );
    let st = status(&s, "t", "refused").await;
    println!("refused: {st}");
    assert_eq!(st["failed_attempts_total"], 4, "first attempt + 3 retries");
    assert_eq!(st["delivered_total"], 0);
    assert!(
        st["last_error"]
            .as_str()
            .unwrap()
            .contains("connection failed"),
        "{st}"
    );
    let (_, dl) = s
        .api()
        .get("/v1/topics/t/subscriptions/refused/dead-letters")
        .await;
    println!("dead letters: {dl}");
    assert_eq!(dl["messages"][0]["id"], id.as_str());
    assert_eq!(dl["messages"][0]["dead_letter"]["dequeue_count"], 4);
    // Redrive: back to pending with the same id (and failing again, since nobody listens).
    let (st, v) = s
        .api()
        .post(
            "/v1/topics/t/subscriptions/refused/dead-letters/redrive",
            &json!({}),
        )
        .await;
    assert_eq!((st, v["redriven"].as_u64()), (200, Some(1)), "{v}");
    assert!(
        wait_for(Duration::from_secs(30), async || status(&s, "t", "refused")
            .await["dead_lettered_total"]
            == 2)
        .await
    );

    // Enable the 410 subscription with an endpoint that now answers: the kept message arrives.
    let (st, _) = s
        .api()
        .post("/v1/topics/t/subscriptions/s410/enable", &json!({}))
        .await;
    assert_eq!(st, 200);
    assert!(
        wait_for(Duration::from_secs(10), async || gone.count() == 2).await,
        "resumed after enable"
    );
}

/// Metadata endpoints in the spellings a URL parser accepts, with the address (or name) the
/// refusal must name.
const METADATA_URLS: &[(&str, &str)] = &[
    (
        "http://169.254.169.254/latest/meta-data/",
        "169.254.169.254",
    ),
    ("http://2852039166/", "169.254.169.254"),
    ("http://0xA9FEA9FE/", "169.254.169.254"),
    ("http://0251.0376.0251.0376/", "169.254.169.254"),
    ("http://169.254.43518/", "169.254.169.254"),
    ("http://169.254.169.254./", "169.254.169.254"),
    (
        "http://100.100.100.200/latest/meta-data/",
        "100.100.100.200",
    ),
    ("http://168.63.129.16/", "168.63.129.16"),
    ("http://[fd00:ec2::254]/", "fd00:ec2::254"),
    ("http://[::a9fe:a9fe]/", "169.254.169.254"),
    ("http://[::ffff:169.254.169.254]/", "169.254.169.254"),
    ("http://[64:ff9b::a9fe:a9fe]/", "169.254.169.254"),
    ("http://[2002:a9fe:a9fe::]/", "169.254.169.254"),
    (
        "http://metadata.google.internal./computeMetadata/v1/",
        "metadata.google.internal",
    ),
];

async fn egress_refused(s: &Sluice, at: &str) -> u64 {
    let (st, text) = s.api().get_text("/metrics").await;
    assert_eq!(st, 200);
    let line = format!("sluice_push_egress_refused_total{{at=\"{at}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .unwrap_or_else(|| panic!("no {line} in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriptions_to_metadata_addresses_are_refused_at_creation_in_every_spelling() {
    // Proves the creation check on both faces: a push URL whose host is a metadata address in
    // any spelling (decimal, hex, octal, short, trailing dot, IPv6-embedded, a metadata name)
    // is a 400 naming the address, and nothing is created; with --push-deny-private-networks a
    // loopback literal is refused the same way.
    let dir = tempfile::tempdir().unwrap();
    let s = start_sluice(dir.path(), 0.01, &["--push-deny-private-networks"]);
    let (st, v) = put(&s, "/v1/topics/t", &json!({})).await;
    assert_eq!(st, 201, "{v}");
    let hook = Hook::start(|_, _| ok()).await;
    let mut cases: Vec<(String, &str)> = METADATA_URLS
        .iter()
        .map(|(u, a)| (u.to_string(), *a))
        .collect();
    cases.push((hook.url.clone(), "127.0.0.1"));
    for (i, (url, addr)) in cases.iter().enumerate() {
        let (st, v) = put(
            &s,
            &format!("/v1/topics/t/subscriptions/s{i}"),
            &json!({"http": url}),
        )
        .await;
        assert_eq!(st, 400, "{url}: {v}");
        assert_eq!(v["error"]["field"], "http", "{url}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        println!("{message}");
        assert!(message.contains(addr), "{url}: {message}");
        let why = if *addr == "127.0.0.1" {
            "refused by push_deny_private_networks"
        } else {
            "always refused"
        };
        assert!(message.contains(why), "{url}: {message}");
    }
    let (st, v) = s.api().get("/v1/topics/t/subscriptions").await;
    assert_eq!(st, 200);
    assert_eq!(v["subscriptions"], json!([]), "nothing was created");
    assert_eq!(egress_refused(&s, "create").await, cases.len() as u64);

    // The MNS face, through the official SDK.
    let args: Vec<String> = cases.iter().map(|(u, a)| format!("{u}={a}")).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    crate::mns::sdk("egress", &s, &s.key, &args);
    assert_eq!(egress_refused(&s, "create").await, 2 * cases.len() as u64);
    assert_eq!(hook.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_to_names_resolving_to_refused_addresses_and_to_older_literals_never_connect() {
    // Proves the check at connect time: with --push-deny-private-networks a name that resolves
    // to loopback (localhost) is refused on the resolved address although a server listens
    // there, and a loopback literal subscribed before the setting was turned on is refused
    // before connecting; nothing reaches the server.
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::start(|_, _| ok()).await;
    let s = start_sluice(dir.path(), 0.01, &[]);
    subscribe(&s, "t", "literal", json!({"http": hook.url})).await;
    s.stop();
    let s = start_sluice(dir.path(), 0.01, &["--push-deny-private-networks"]);
    for (name, host) in [("local", "localhost"), ("upper", "LOCALHOST")] {
        let url = hook.url.replace("127.0.0.1", host);
        subscribe(&s, "t", name, json!({"http": url})).await;
    }
    publish(&s, "t", "x").await;
    for name in ["local", "upper", "literal"] {
        assert!(
            wait_for(Duration::from_secs(20), async || status(&s, "t", name)
                .await["failed_attempts_total"]
                .as_u64()
                >= Some(2))
            .await,
            "{name}: {}",
            status(&s, "t", name).await
        );
        let st = status(&s, "t", name).await;
        println!("{name}: {}", st["last_error"]);
        let e = st["last_error"].as_str().unwrap();
        assert!(e.contains("egress policy"), "{name}: {e}");
        assert!(e.contains("127.0.0.1 is loopback"), "{name}: {e}");
        assert_eq!(st["delivered_total"], 0);
    }
    assert!(egress_refused(&s, "connect").await >= 6);
    assert_eq!(hook.count(), 0, "nothing reached the loopback server");
}

/// Pushes `n` messages to the healthy hooks and returns, per hook, (throughput/s, p50, p99, max
/// latency in ms) from publish to receipt.
async fn run_load(
    s: &Sluice,
    topic: &str,
    healthy: &[Hook],
    n: usize,
) -> Vec<(f64, u64, u64, u64)> {
    let base: Vec<usize> = healthy.iter().map(Hook::count).collect();
    let start = Instant::now();
    let api = s.api();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let api = api.clone();
        let topic = topic.to_string();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(8) {
                let body = json!({"i": i, "t_ms": epoch_ms()}).to_string();
                let (st, v) = api
                    .post(
                        &format!("/v1/topics/{topic}/messages"),
                        &json!({"body": body}),
                    )
                    .await;
                assert_eq!(st, 201, "{v}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = wait_for(Duration::from_secs(120), async || {
        healthy.iter().zip(&base).all(|(h, b)| h.count() >= b + n)
    })
    .await;
    let counts: Vec<usize> = healthy
        .iter()
        .zip(&base)
        .map(|(h, b)| h.count() - b)
        .collect();
    assert!(
        all,
        "every healthy endpoint got every message: {counts:?} of {n}"
    );
    healthy
        .iter()
        .zip(&base)
        .map(|(h, &b)| {
            let reqs = &h.requests()[b..];
            let ids: HashSet<u64> = reqs
                .iter()
                .map(|r| {
                    serde_json::from_slice::<Value>(&r.body).unwrap()["i"]
                        .as_u64()
                        .unwrap()
                })
                .collect();
            assert_eq!(ids.len(), n, "each message once");
            let mut lat: Vec<u64> = reqs
                .iter()
                .map(|r| {
                    let v: Value = serde_json::from_slice(&r.body).unwrap();
                    let sent = v["t_ms"].as_u64().unwrap();
                    let recv = epoch_ms() - r.at.elapsed().as_millis() as u64;
                    recv.saturating_sub(sent)
                })
                .collect();
            lat.sort_unstable();
            let last = reqs.iter().map(|r| r.at).max().unwrap();
            let secs = (last - start).as_secs_f64().max(0.001);
            let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
            (n as f64 / secs, p(0.5), p(0.99), *lat.last().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_a_slow_and_an_endless_endpoint_do_not_hold_back_the_healthy_ones() {
    // Proves: beside an endpoint that never answers, one that answers a
    // byte per second and one that streams forever, the healthy endpoints get every message;
    // their throughput and latency are printed beside a run without the bad endpoints.
    let dir = tempfile::tempdir().unwrap();
    let s = start_sluice(dir.path(), 0.01, &[]);
    let mut healthy = Vec::new();
    for i in 0..4 {
        let h = Hook::start(|_, _| ok()).await;
        subscribe(
            &s,
            "load",
            &format!("ok{i}"),
            json!({"http": h.url, "format": "SIMPLIFIED"}),
        )
        .await;
        healthy.push(h);
    }
    let n = 400;
    let alone = run_load(&s, "load", &healthy, n).await;

    let hang = Hook::start(|_, _| Answer::Hang).await;
    let slow = Hook::start(|_, _| Answer::Trickle).await;
    let endless = Hook::start(|_, _| Answer::Endless).await;
    for (name, h) in [("hang", &hang), ("slow", &slow), ("endless", &endless)] {
        subscribe(
            &s,
            "load",
            name,
            json!({"http": h.url, "format": "SIMPLIFIED", "push_timeout_seconds": 2}),
        )
        .await;
    }
    let beside = run_load(&s, "load", &healthy, n).await;
    println!("healthy endpoints, {n} messages each: throughput msg/s, latency p50/p99/max ms");
    for (i, (a, b)) in alone.iter().zip(&beside).enumerate() {
        println!(
            "  ok{i}: alone {:.0}/s {}/{}/{} ms | beside bad ones {:.0}/s {}/{}/{} ms",
            a.0, a.1, a.2, a.3, b.0, b.1, b.2, b.3
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for name in ["hang", "slow", "endless"] {
        let st = status(&s, "load", name).await;
        println!("{name}: {st}");
        assert!(
            st["backlog"].as_u64().unwrap() > 0 || st["delivered_total"].as_u64().unwrap() > 0,
            "{name} was tried"
        );
    }
    let hang_st = status(&s, "load", "hang").await;
    assert!(
        hang_st["failed_attempts_total"].as_u64().unwrap() > 0,
        "a hanging endpoint times out"
    );
    assert!(hang_st["last_error"].as_str().unwrap().contains("timeout"));
    assert!(
        status(&s, "load", "slow").await["failed_attempts_total"]
            .as_u64()
            .unwrap()
            > 0
    );
    // The endless body was cut at the cap: those pushes succeeded with bounded reads.
    assert!(
        status(&s, "load", "endless").await["delivered_total"]
            .as_u64()
            .unwrap()
            > 0
    );
    // Bounded memory in sluice: its resident set stays small after all that.
    let rss_kb = std::fs::read_to_string(format!("/proc/{}/status", s.pid()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:").map(|v| {
                v.trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    println!("sluice RSS after the run: {rss_kb} kB");
    assert!(rss_kb < 1_000_000, "memory bounded: {rss_kb} kB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_mid_schedule_resumes_at_stored_times_and_spreads_overdue_retries() {
    // Proves on the real binary with SIGKILL: after a restart, a retry happens at
    // its stored time (not reset, not immediately); retries that became due while sluice was
    // down are spread out, not fired together.
    let dir = tempfile::tempdir().unwrap();
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let hook = Hook::start(move |_, _| {
        if f.load(Ordering::SeqCst) {
            Answer::Status(500, vec![])
        } else {
            ok()
        }
    })
    .await;
    // Real time (scale 1): EXPONENTIAL_DECAY_RETRY waits 1 s, 2 s, 4 s, 8 s, ...
    let s = start_sluice(dir.path(), 1.0, &[]);
    subscribe(
        &s,
        "t",
        "h",
        json!({"http": hook.url, "strategy": "exponential", "format": "SIMPLIFIED"}),
    )
    .await;
    let m = 20;
    let mut ids = Vec::new();
    for i in 0..m {
        ids.push(publish(&s, "t", &format!("m{i}")).await);
    }
    let per_id = |hook: &Hook| {
        let mut map: HashMap<String, Vec<Instant>> = HashMap::new();
        for r in hook.requests() {
            map.entry(r.h("webhook-id").to_string())
                .or_default()
                .push(r.at);
        }
        map
    };
    let all_have = |n: usize| {
        let hook = hook.clone();
        async move || per_id(&hook).values().filter(|v| v.len() >= n).count() == m
    };
    assert!(wait_for(Duration::from_secs(30), all_have(3)).await);
    // Give the third attempts' outcomes a moment to commit, then kill: the fourth attempts are
    // due 4 s after the third.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.kill();
    let s = start_sluice(dir.path(), 1.0, &[]);
    let ready = Instant::now();
    assert!(wait_for(Duration::from_secs(30), all_have(4)).await);
    let attempts = per_id(&hook);
    let mut report = Vec::new();
    for v in attempts.values() {
        let (third, fourth) = (v[2], v[3]);
        let due = third + Duration::from_secs(4);
        report.push((
            (fourth - third).as_millis(),
            ready.saturating_duration_since(third).as_millis(),
        ));
        assert!(
            fourth - third >= Duration::from_millis(3900),
            "not before its stored time: {:?}",
            fourth - third
        );
        let bound = due.max(ready) + Duration::from_secs(3);
        assert!(
            fourth <= bound,
            "at its stored time (or right after a late restart): {:?}",
            fourth - third
        );
    }
    report.sort();
    println!("third -> fourth attempt across the restart (ms), restart ready after third (ms): {:?} .. {:?}", report[0], report[m - 1]);

    // Down again, long enough that every fifth attempt (due 8 s after the fourth) is overdue.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.kill();
    tokio::time::sleep(Duration::from_secs(9)).await;
    failing.store(false, Ordering::SeqCst);
    let before = hook.count();
    let s = start_sluice(dir.path(), 1.0, &[]);
    assert!(
        wait_for(Duration::from_secs(30), async || status(&s, "t", "h").await
            ["delivered_total"]
            == m as u64)
        .await
    );
    let reqs = hook.requests();
    let mut after: Vec<Instant> = reqs[before..].iter().map(|r| r.at).collect();
    after.sort();
    let span = after[after.len() - 1] - after[0];
    let ids_after: HashSet<&str> = reqs[before..].iter().map(|r| r.h("webhook-id")).collect();
    println!(
        "{} overdue retries delivered over {span:?} after the restart",
        after.len()
    );
    assert_eq!(ids_after.len(), m, "every message, same ids");
    assert!(ids.iter().all(|i| ids_after.contains(i.as_str())));
    assert!(
        span >= Duration::from_millis(1000),
        "overdue retries spread out, not fired together: {span:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_after_2xx_before_it_is_recorded_redelivers_with_the_same_webhook_id() {
    // Proves: the endpoint answered 2xx and sluice was killed before recording
    // it; after the restart the push comes again with the same webhook-id and nothing is lost.
    let dir = tempfile::tempdir().unwrap();
    let s = start_sluice(dir.path(), 0.01, &[]);
    let pid = Arc::new(AtomicUsize::new(0));
    let p = pid.clone();
    let after: After = Arc::new(move |n| {
        if n == 100 {
            let pid = p.load(Ordering::SeqCst);
            if pid > 0 {
                // Right after the 101st answer was written, while answers are in flight.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        }
    });
    let hook = Hook::start_with(Arc::new(|_, _| ok()), Some(after)).await;
    subscribe(
        &s,
        "t",
        "h",
        json!({"http": hook.url, "format": "SIMPLIFIED"}),
    )
    .await;
    // Publish while the push subscription is disabled, then enable: a burst of pushes.
    let (st, _) = s
        .api()
        .post("/v1/topics/t/subscriptions/h/disable", &json!({}))
        .await;
    assert_eq!(st, 200);
    let n = 400;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(publish(&s, "t", &format!("m{i}")).await);
    }
    pid.store(s.pid() as usize, Ordering::SeqCst);
    s.api()
        .post("/v1/topics/t/subscriptions/h/enable", &json!({}))
        .await;
    assert!(wait_for(Duration::from_secs(20), async || hook.count() > 100).await);
    s.kill();
    let answered_before = hook.count();
    let s = start_sluice(dir.path(), 0.01, &[]);
    assert!(
        wait_for(Duration::from_secs(60), async || status(&s, "t", "h").await
            ["backlog"]
            == 0)
        .await,
        "{}",
        status(&s, "t", "h").await
    );
    let reqs = hook.requests();
    let mut seen: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for r in &reqs {
        seen.entry(r.h("webhook-id").to_string())
            .or_default()
            .push(r.body.clone());
    }
    let lost: Vec<_> = ids
        .iter()
        .filter(|i| !seen.contains_key(i.as_str()))
        .collect();
    let unexpected: Vec<_> = seen.keys().filter(|k| !ids.contains(k)).collect();
    let dups: Vec<_> = seen.iter().filter(|(_, b)| b.len() > 1).collect();
    println!(
        "answered before the kill: {answered_before}, requests in all: {}, redelivered ids: {}, lost: {}, unexpected: {}",
        reqs.len(),
        dups.len(),
        lost.len(),
        unexpected.len()
    );
    assert!(
        lost.is_empty() && unexpected.is_empty(),
        "lost {lost:?} unexpected {unexpected:?}"
    );
    assert!(
        !dups.is_empty(),
        "answered-but-unrecorded pushes came again"
    );
    for (id, bodies) in dups {
        assert!(
            bodies.iter().all(|b| b == &bodies[0]),
            "{id}: a redelivery is the same message"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_creates_an_http_subscription_shows_the_secret_once_and_rotates_it() {
    // Proves the CLI: `sub create --http` prints the secret once, `sub show` prints counters
    // and no secret, `sub rotate-secret` prints a new one, `--json` works.
    let dir = tempfile::tempdir().unwrap();
    let s = start_sluice(dir.path(), 0.01, &[]);
    let hook = Hook::start(|_, _| ok()).await;
    let cli = |args: &[&str]| s.cli_ok(args);
    cli(&["topic", "create", "t"]);
    let created = cli(&[
        "sub",
        "create",
        "t",
        "h",
        "--http",
        &hook.url,
        "--strategy",
        "exponential",
        "--format",
        "json",
    ]);
    println!("{created}");
    assert!(created.contains("whsec_"), "{created}");
    publish(&s, "t", "x").await;
    assert!(wait_for(Duration::from_secs(10), async || hook.count() == 1).await);
    let show = cli(&["sub", "show", "t", "h"]);
    println!("{show}");
    assert!(
        show.contains("delivered_total") && !show.contains("whsec_"),
        "{show}"
    );
    let list = cli(&["sub", "list", "t"]);
    assert!(
        list.contains(&hook.url) && list.contains("enabled"),
        "{list}"
    );
    let json_show: Value =
        serde_json::from_str(&cli(&["--json", "sub", "show", "t", "h"])).unwrap();
    assert_eq!(json_show["push"]["delivered_total"], 1);
    assert_eq!(
        json_show["endpoint"]["http"]["strategy"],
        "EXPONENTIAL_DECAY_RETRY"
    );
    let rotated = cli(&["sub", "rotate-secret", "t", "h", "--grace-seconds", "60"]);
    assert!(rotated.contains("whsec_"), "{rotated}");
    publish(&s, "t", "y").await;
    assert!(wait_for(Duration::from_secs(10), async || hook.count() == 2).await);
    let sig = hook.requests()[1].h("webhook-signature").to_string();
    assert_eq!(
        sig.split(' ').count(),
        2,
        "old and new signatures during the grace: {sig}"
    );
    cli(&["sub", "disable", "t", "h"]);
    assert_eq!(status(&s, "t", "h").await["enabled"], false);
    cli(&["sub", "enable", "t", "h"]);
    cli(&["sub", "delete", "t", "h"]);
}
