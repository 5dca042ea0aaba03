//! MNS-signed HTTP pushes against an endpoint that verifies them as MNS documents it
//! (`tests/python/mns_endpoint.py`, written with the `cryptography` package, independent of
//! sluice's signing code): it fetches the certificate named by `x-mns-signing-cert-url`,
//! rebuilds the string-to-sign from the request it received and answers 403 unless the
//! RSA-SHA1 `Authorization` verifies.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::push::{publish, start_sluice, status, subscribe, verify_with_python, wait_for, Req};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/mns_endpoint.py");
const B64: base64::engine::general_purpose::GeneralPurpose =
    base64::engine::general_purpose::STANDARD;

/// The verifying endpoint, a `python3` process killed on drop.
struct MnsEndpoint {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

/// One push the endpoint accepted.
#[derive(Debug, Clone)]
struct Accepted {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    cert_url: String,
}

impl MnsEndpoint {
    fn start(dir: &std::path::Path) -> MnsEndpoint {
        let log = dir.join(format!("accepted-{}.jsonl", rand::random::<u32>()));
        let mut child = Command::new("python3")
            .arg(SCRIPT)
            .arg(&log)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (with `pip install cryptography`, see README)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("endpoint did not start: {line:?}"));
        MnsEndpoint { child, port, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn accepted(&self) -> Vec<Accepted> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                Accepted {
                    path: v["path"].as_str().unwrap().to_string(),
                    headers: serde_json::from_value(v["headers"].clone()).unwrap(),
                    body: B64.decode(v["body"].as_str().unwrap()).unwrap(),
                    cert_url: v["cert_url"].as_str().unwrap().to_string(),
                }
            })
            .collect()
    }

    /// Sends `a` again (headers and body as given) and answers the endpoint's status.
    async fn replay(&self, a: &Accepted) -> u16 {
        let mut req = reqwest::Client::new().post(self.url(&a.path));
        for (k, v) in &a.headers {
            if !matches!(k.as_str(), "host" | "content-length" | "connection") {
                req = req.header(k, v);
            }
        }
        req.body(a.body.clone())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

impl Drop for MnsEndpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn delivered(s: &crate::common::Sluice, topic: &str, name: &str, n: u64) -> bool {
    wait_for(Duration::from_secs(30), async || {
        status(s, topic, name).await["delivered_total"] == n
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mns_signed_pushes_verify_at_an_mns_endpoint_and_a_tampered_one_is_refused() {
    // Proves: with `signing: mns` every push of every content format verifies at an endpoint
    // that checks MNS signatures as MNS documents them (delivered, never refused), with the
    // headers MNS sends; the same push with a changed body or x-mns- header is refused; a
    // subscription signing only Standard Webhooks is refused there and dead-lettered; the
    // mode is shown by the API and the CLI; an MNS-face Subscribe signs the MNS way.
    let dir = tempfile::tempdir().unwrap();
    let s = start_sluice(dir.path(), 0.01, &[]);
    let ep = MnsEndpoint::start(dir.path());
    for (name, format) in [("xml", "XML"), ("json", "JSON"), ("plain", "SIMPLIFIED")] {
        subscribe(
            &s,
            "t",
            name,
            json!({"http": ep.url(&format!("/notify/{name}?from=sluice")), "format": format,
                   "signing": "mns"}),
        )
        .await;
    }
    for i in 0..3 {
        let (st, v) = s
            .api()
            .post(
                "/v1/topics/t/messages",
                &json!({"body": format!("m{i} <&>"), "tag": "hot"}),
            )
            .await;
        assert_eq!(st, 201, "{v}");
    }
    for name in ["xml", "json", "plain"] {
        assert!(
            delivered(&s, "t", name, 3).await,
            "{name}: {}",
            status(&s, "t", name).await
        );
        let st = status(&s, "t", name).await;
        assert_eq!(st["failed_attempts_total"], 0, "{name} never refused: {st}");
    }
    let accepted = ep.accepted();
    assert_eq!(accepted.len(), 9);
    let (_, certs) = s.api().get("/v1/signing-certificates").await;
    let current_url = certs["certificates"][0]["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(current_url.starts_with(&format!("{}/v1/signing-certificates/", s.http)));
    for a in &accepted {
        assert_eq!(a.cert_url, current_url);
        assert_eq!(a.headers["x-mns-version"], "2015-06-06");
        assert_eq!(a.headers["x-mns-request-id"].len(), 24);
        assert!(a.headers["date"].ends_with(" GMT"), "{:?}", a.headers);
        assert!(!a.headers.contains_key("webhook-signature"), "mns only");
        assert!(a.path.ends_with("?from=sluice"));
    }
    let plain = accepted
        .iter()
        .find(|a| a.path.starts_with("/notify/plain"))
        .unwrap();
    assert_eq!(plain.headers["x-mns-message-tag"], "hot");

    // The same request again verifies; a changed body or a changed signed header does not.
    let xml = accepted
        .iter()
        .find(|a| a.path.starts_with("/notify/xml"))
        .unwrap();
    assert_eq!(ep.replay(xml).await, 201);
    let mut tampered = xml.clone();
    tampered.body = String::from_utf8(xml.body.clone())
        .unwrap()
        .replace("m", "M")
        .into_bytes();
    assert_eq!(ep.replay(&tampered).await, 403, "changed body");
    let mut tampered = plain.clone();
    tampered
        .headers
        .insert("x-mns-message-tag".into(), "cold".into());
    assert_eq!(ep.replay(&tampered).await, 403, "changed tag header");
    let mut tampered = plain.clone();
    tampered.path = plain.path.replace("plain", "other");
    assert_eq!(ep.replay(&tampered).await, 403, "another resource");

    // Standard Webhooks only: the MNS endpoint refuses it, and it ends in the dead-letter queue.
    let (st, _) = s.api().put("/v1/queues/dlq", &json!({})).await;
    assert_eq!(st, 201);
    subscribe(
        &s,
        "u",
        "sw",
        json!({"http": ep.url("/notify/sw"), "dead_letter_queue": "dlq"}),
    )
    .await;
    publish(&s, "u", "unsigned for MNS").await;
    assert!(
        wait_for(Duration::from_secs(30), async || status(&s, "u", "sw")
            .await["dead_lettered_total"]
            == 1)
        .await,
        "{}",
        status(&s, "u", "sw").await
    );
    let st = status(&s, "u", "sw").await;
    assert!(
        st["last_error"].as_str().unwrap().starts_with("HTTP 403"),
        "{st}"
    );

    // The mode is shown: API (default standard-webhooks), CLI table and show.
    let (_, show) = s.api().get("/v1/topics/u/subscriptions/sw").await;
    assert_eq!(show["endpoint"]["http"]["signing"], "standard-webhooks");
    let (_, show) = s.api().get("/v1/topics/t/subscriptions/xml").await;
    assert_eq!(show["endpoint"]["http"]["signing"], "mns");
    let list = s.cli_ok(&["sub", "list", "t"]);
    assert!(list.contains("signing") && list.contains("mns"), "{list}");
    let one = s.cli_ok(&["sub", "show", "u", "sw"]);
    assert!(one.contains("standard-webhooks"), "{one}");
    let (st, v) = s
        .api()
        .put(
            "/v1/topics/u/subscriptions/bad",
            &json!({"http": ep.url("/x"), "signing": "rsa"}),
        )
        .await;
    assert_eq!((st, v["error"]["field"].as_str()), (400, Some("signing")));
    let (st, v) = s
        .api()
        .put(
            "/v1/topics/u/subscriptions/badq",
            &json!({"queue": "dlq", "signing": "mns"}),
        )
        .await;
    assert_eq!((st, v["error"]["field"].as_str()), (400, Some("signing")));

    // The CLI takes --signing.
    s.cli_ok(&[
        "sub",
        "create",
        "u",
        "cli",
        "--http",
        &ep.url("/notify/cli"),
        "--signing",
        "mns",
    ]);
    let (_, show) = s.api().get("/v1/topics/u/subscriptions/cli").await;
    assert_eq!(show["endpoint"]["http"]["signing"], "mns");

    // A Subscribe on the MNS face signs the MNS way, and its pushes verify.
    let xml_doc = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Subscription xmlns="http://mns.aliyuncs.com/doc/v1/"><Endpoint>{}</Endpoint><NotifyContentFormat>SIMPLIFIED</NotifyContentFormat></Subscription>"#,
        ep.url("/notify/mnsface")
    );
    let (st, _) = s.api().put("/v1/topics/m", &json!({})).await;
    assert_eq!(st, 201);
    let r = s
        .client()
        .put(format!("{}/topics/m/subscriptions/face", s.http))
        .header("content-type", "text/xml")
        .body(xml_doc)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let (_, show) = s.api().get("/v1/topics/m/subscriptions/face").await;
    assert_eq!(show["endpoint"]["http"]["signing"], "mns");
    publish(&s, "m", "through the MNS face").await;
    assert!(delivered(&s, "m", "face", 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_mode_carries_both_signatures_and_each_verifies() {
    // Proves: with `signing: both` a push carries the MNS headers (verified by the MNS
    // endpoint) and the Standard Webhooks headers (verified by the `standardwebhooks` package).
    let dir = tempfile::tempdir().unwrap();
    let s = start_sluice(dir.path(), 0.01, &[]);
    let ep = MnsEndpoint::start(dir.path());
    let secret = subscribe(
        &s,
        "t",
        "both",
        json!({"http": ep.url("/both"), "format": "JSON", "signing": "both"}),
    )
    .await;
    for i in 0..3 {
        publish(&s, "t", &format!("{{\"i\":{i}}}")).await;
    }
    assert!(delivered(&s, "t", "both", 3).await);
    let accepted = ep.accepted();
    assert_eq!(accepted.len(), 3);
    let reqs: Vec<Req> = accepted
        .iter()
        .map(|a| {
            assert!(a.headers.contains_key("authorization"));
            assert!(a.headers.contains_key("webhook-signature"));
            Req {
                at: Instant::now(),
                headers: a.headers.clone(),
                body: a.body.clone(),
            }
        })
        .collect();
    verify_with_python(&secret, &reqs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_signs_with_the_new_key_and_serves_the_old_certificate_for_the_grace() {
    // Proves: after `signing-cert rotate` new pushes name (and verify with) the new
    // certificate; the old certificate URL is served without a key during the grace and not
    // after; the list shows both; a non-admin key may neither rotate nor list (403); the
    // certificate URLs are counted in /metrics.
    let dir = tempfile::tempdir().unwrap();
    let s = start_sluice(dir.path(), 0.01, &[]);
    let ep = MnsEndpoint::start(dir.path());
    subscribe(
        &s,
        "t",
        "h",
        json!({"http": ep.url("/n"), "format": "SIMPLIFIED", "signing": "mns"}),
    )
    .await;
    publish(&s, "t", "before").await;
    assert!(delivered(&s, "t", "h", 1).await);
    let old_url = ep.accepted()[0].cert_url.clone();

    // A non-admin key: refused, before anything changes.
    let (st, v) = s
        .api()
        .post(
            "/v1/keys",
            &json!({"name": "app", "allow": ["topics/t", "queues/*"]}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let app_key = format!(
        "{}:{}",
        v["id"].as_str().unwrap(),
        v["secret"].as_str().unwrap()
    );
    let http = reqwest::Client::new();
    for (method, path) in [
        (reqwest::Method::POST, "/v1/signing-certificates/rotate"),
        (reqwest::Method::GET, "/v1/signing-certificates"),
    ] {
        let r = http
            .request(method, format!("{}{path}", s.http))
            .bearer_auth(&app_key)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{path}");
    }
    let (ok, _, err) = s.run_cli(&["--key", &app_key, "signing-cert", "rotate"]);
    assert!(!ok && err.contains("AccessDenied"), "{err}");

    let rotated = s.cli_ok(&["signing-cert", "rotate", "--grace-seconds", "3"]);
    println!("{rotated}");
    let list: Value = serde_json::from_str(&s.cli_ok(&["--json", "signing-cert", "list"])).unwrap();
    let certs = list["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 2, "{list}");
    assert_eq!(certs[0]["current"], true);
    assert_eq!(certs[1]["url"], old_url.as_str());
    assert!(certs[1]["valid_until_ms"].as_u64().is_some());
    let new_url = certs[0]["url"].as_str().unwrap().to_string();
    assert_ne!(new_url, old_url);

    publish(&s, "t", "after").await;
    assert!(delivered(&s, "t", "h", 2).await);
    let after = &ep.accepted()[1];
    assert_eq!(
        after.cert_url, new_url,
        "new pushes name the new certificate"
    );
    assert_eq!(
        B64.decode(&after.headers["x-mns-signing-cert-url"])
            .unwrap(),
        new_url.as_bytes()
    );

    // No key needed for the certificates; the old one only during its grace.
    let get = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap() }
    };
    let r = get(old_url.clone()).await;
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await.unwrap().contains("BEGIN CERTIFICATE"));
    assert_eq!(get(new_url.clone()).await.status().as_u16(), 200);
    assert!(
        wait_for(Duration::from_secs(10), async || get(old_url.clone())
            .await
            .status()
            .as_u16()
            == 404)
        .await,
        "the old certificate goes after its grace"
    );
    assert_eq!(get(new_url.clone()).await.status().as_u16(), 200);
    let r = get(format!("{}/v1/signing-certificates/nope.pem", s.http)).await;
    assert_eq!(r.status().as_u16(), 404);
    let (_, metrics) = s.api().get_text("/metrics").await;
    let line = |result: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("sluice_signing_certificate_requests_total")
                    && l.contains(&format!("result=\"{result}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(line("served") >= 5, "{metrics}");
    assert!(line("not_found") >= 2, "{metrics}");
}
