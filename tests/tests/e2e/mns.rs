//! The MNS-compatible API and access keys, driven with the official MNS Python SDK
//! (`aliyun-mns-sdk`, `tests/python/mns_sdk.py`) and its `mnscmd` tool against the real binary.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::mqtt::publish_qos1;
use crate::common::Sluice;

/// The SDK scenarios.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/mns_sdk.py");

/// Runs one scenario of `mns_sdk.py` and expects `ALL OK`.
pub(crate) fn sdk(scenario: &str, sluice: &Sluice, key: &str, extra: &[&str]) {
    let (id, secret) = key.split_once(':').expect("ID:SECRET");
    let out = Command::new("python3")
        .args([SCRIPT, scenario, &sluice.http, id, secret])
        .args(extra)
        .output()
        .expect("run python3 (pip install aliyun-mns-sdk)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "mns_sdk.py {scenario} failed:\n{stdout}\n{stderr}\nsluice log:\n{}",
        sluice.log()
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mns_operation_works_with_the_official_sdk_including_error_paths() {
    // Proves: queues, messages, topics, publish and subscriptions through the SDK,
    // with receive on an empty queue, stale and bad handles, unknown queue/topic, bad attribute
    // values, bad signature, unknown key and an old Date answered with the MNS error codes.
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    sdk("ops", &sluice, &sluice.key, &[]);
    sluice.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mns_error_code_reaches_the_sdk_with_the_status_mns_answers() {
    // Proves the error table of docs/message-service.md through the SDK: for every code sluice
    // answers on the MNS face (queue, topic, subscription and message errors, name errors,
    // missing parameters, malformed XML, authentication), the SDK raises MNSServerException
    // with that code and the answer has MNS's HTTP status. A receipt handle that is no longer
    // current is MNS's `404 MessageNotExist` here (on /v1/ it stays `409 ReceiptHandleStale`).
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    sdk("codes", &sluice, &sluice.key, &[]);
    sluice.stop();
}

/// Runs `mnscmd` against `sluice` with its admin key and expects it to succeed; returns its
/// output. For an HTTPS server the SDK trusts the server's certificate through OpenSSL's
/// `SSL_CERT_FILE`, as an operator with a private CA would set it.
fn mnscmd(sluice: &Sluice, args: &[&str]) -> String {
    let (id, secret) = sluice.key.split_once(':').unwrap();
    let mut cmd = Command::new("mnscmd");
    cmd.args(args)
        .args(["-e", &sluice.http, "-a", id, "-A", secret]);
    if let Some(ca) = &sluice.ca_cert {
        cmd.env("SSL_CERT_FILE", ca);
    }
    let out = cmd
        .output()
        .expect("run mnscmd (pip install aliyun-mns-sdk)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && text.contains("succeed!"),
        "mnscmd {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_https_to_the_sdk_the_cli_and_clients_that_trust_its_certificate() {
    // Proves the optional HTTPS: with --http-tls-cert/--http-tls-key the API port speaks
    // only TLS; the MNS SDK (mnscmd), the CLI (--ca-cert) and an HTTP client that trust the
    // certificate work; a client that does not trust it, or speaks plain HTTP, gets nowhere.
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = crate::common::self_signed_cert(dir.path(), "http");
    let sluice = Sluice::start(
        &dir.path().join("data"),
        &["--http-tls-cert", &cert, "--http-tls-key", &key],
    );
    assert!(sluice.http.starts_with("https://"), "{}", sluice.http);

    // A client that connects and never starts its handshake does not hold up the others
    // (handshakes have their own tasks; the deadline of a stuck one is 10 s).
    let addr = sluice.http.trim_start_matches("https://").to_string();
    let _silent = std::net::TcpStream::connect(&addr).expect("connect");
    let started = std::time::Instant::now();
    let (status, v) = sluice.api().get("/v1/queues").await;
    let took = started.elapsed();
    println!("HTTPS request beside a silent client answered in {took:?}");
    assert_eq!(status, 200, "{v}");
    assert!(
        took < Duration::from_secs(5),
        "blocked behind the silent client: {took:?}"
    );

    mnscmd(&sluice, &["createqueue", "--queuename=tls-q"]);
    mnscmd(
        &sluice,
        &["sendmessage", "--queuename=tls-q", "--body=over tls"],
    );
    let (status, v) = sluice.api().get("/v1/queues/tls-q").await;
    assert_eq!(status, 200, "{v}");
    println!("over HTTPS: {v}");
    assert_eq!(v["active_messages"], 1, "{v}");

    let out = sluice.cli().args(["queue", "list"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("tls-q"), "{text}");

    // The CLI without the certificate: one clear line naming the TLS failure.
    let out = Command::new(crate::common::sluice_bin())
        .args([
            "--server",
            &sluice.http,
            "--key",
            &sluice.key,
            "queue",
            "list",
        ])
        .env("SLUICE_CONFIG_DIR", &sluice.config_dir)
        .env_remove("SLUICE_CA_CERT")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    println!("CLI without --ca-cert: {err}");
    assert!(
        !out.status.success() && err.contains("cannot reach sluice"),
        "{err}"
    );
    let out = Command::new(crate::common::sluice_bin())
        .args(["--server", &sluice.http, "--ca-cert", &key, "queue", "list"])
        .env("SLUICE_CONFIG_DIR", &sluice.config_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("CA certificate"),
        "{err}"
    );

    // Untrusted certificate, and plain HTTP to the TLS port.
    let untrusting = reqwest::Client::new();
    assert!(untrusting
        .get(format!("{}/healthz", sluice.http))
        .send()
        .await
        .is_err());
    let plain = sluice.http.replace("https://", "http://");
    let r = untrusting.get(format!("{plain}/healthz")).send().await;
    assert!(
        r.as_ref().map(|r| r.status() != 200).unwrap_or(true),
        "plain HTTP is not served on the TLS port: {r:?}"
    );
    sluice.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mnscmd_creates_sends_receives_and_deletes() {
    // Proves the SDK's command-line tool works unchanged against sluice (smoke test).
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let mnscmd = |args: &[&str]| mnscmd(&sluice, args);
    mnscmd(&["createqueue", "--queuename=cmd-q"]);
    mnscmd(&[
        "sendmessage",
        "--queuename=cmd-q",
        "--body=hello from mnscmd",
    ]);
    let got = mnscmd(&["receivemessage", "--queuename=cmd-q", "--waitsec=1"]);
    assert!(got.contains("hello from mnscmd"), "{got}");
    let handle = got
        .lines()
        .find_map(|l| l.trim().strip_prefix("ReceiptHandle"))
        .map(|h| h.trim_start_matches([' ', ':']).trim().to_string())
        .unwrap_or_else(|| panic!("no ReceiptHandle in {got}"));
    mnscmd(&[
        "deletemessage",
        "--queuename=cmd-q",
        &format!("--handle={handle}"),
    ]);
    let listed = mnscmd(&["listqueue"]);
    assert!(listed.contains("/queues/cmd-q"), "{listed}");
    mnscmd(&["deletequeue", "--queuename=cmd-q"]);
    sluice.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_keys_guard_both_faces_by_policy() {
    // Proves: nothing but /healthz is open without a key; Bearer and MNS signatures use
    // the same keys; a key's policy limits queues and actions on both faces; `key create/list/
    // delete` (secret shown once, never listed); the admin key in an owner-only credentials file;
    // data directory 0700 and database 0600.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sluice = Sluice::start(&data, &[]);
    let anon = reqwest::Client::new();
    let get = |path: &str| anon.get(format!("{}{path}", sluice.http)).send();

    let r = get("/healthz").await.unwrap();
    assert_eq!(r.status(), 200);
    let r = get("/v1/queues").await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "MissingAuthorizationHeader", "{v}");
    // MNS answers a request without credentials with 400 (/v1/ with 401).
    let r = get("/queues").await.unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("<Code>MissingAuthorizationHeader</Code>"),
        "{text}"
    );
    let (id, _) = sluice.key.split_once(':').unwrap();
    let r = anon
        .get(format!("{}/v1/queues", sluice.http))
        .bearer_auth(format!("{id}:wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "SignatureDoesNotMatch", "{v}");

    // A limited key, made with the CLI.
    let cli = |args: &[&str]| sluice.cli_ok(args);
    let created: Value = serde_json::from_str(&cli(&[
        "key",
        "create",
        "limited",
        "--allow",
        "queues/allowed-q:send,consume",
        "--json",
    ]))
    .unwrap();
    let (lid, lsecret) = (
        created["id"].as_str().unwrap().to_string(),
        created["secret"].as_str().unwrap().to_string(),
    );
    let listed = cli(&["key", "list", "--json"]);
    assert!(
        listed.contains(&lid) && !listed.contains(&lsecret),
        "{listed}"
    );
    let admin_secret = sluice.key.split_once(':').unwrap().1;
    assert!(!listed.contains(admin_secret), "{listed}");
    let table = cli(&["key", "list"]);
    assert!(
        table.contains("limited") && !table.contains(&lsecret),
        "{table}"
    );

    let admin = sluice.client();
    let r = admin
        .put(format!("{}/v1/queues/allowed-q", sluice.http))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    sdk("deny", &sluice, &format!("{lid}:{lsecret}"), &[]);

    let limited = |method: reqwest::Method, path: &str| {
        anon.request(method, format!("{}{path}", sluice.http))
            .bearer_auth(format!("{lid}:{lsecret}"))
    };
    let r = limited(reqwest::Method::POST, "/v1/queues/allowed-q/messages")
        .json(&json!({"body": "bearer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for (method, path) in [
        (reqwest::Method::GET, "/v1/queues/allowed-q"),
        (reqwest::Method::GET, "/v1/rules"),
        (reqwest::Method::GET, "/v1/keys"),
        (reqwest::Method::POST, "/v1/queues/other-q/messages"),
    ] {
        let r = limited(method.clone(), path).send().await.unwrap();
        assert_eq!(r.status(), 403, "{method} {path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "AccessDenied", "{method} {path}: {v}");
    }
    // Subscribing a topic to a queue needs `send` on the queue as well.
    for (name, allow, want) in [
        ("topics-only", json!(["topics/*"]), 403),
        (
            "topics-and-q",
            json!(["topics/*", "queues/alerts-q:send"]),
            201,
        ),
    ] {
        let r = admin
            .post(format!("{}/v1/keys", sluice.http))
            .json(&json!({"name": name, "allow": allow}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let k: Value = r.json().await.unwrap();
        let r = anon
            .put(format!(
                "{}/v1/topics/alerts/subscriptions/{name}",
                sluice.http
            ))
            .bearer_auth(format!(
                "{}:{}",
                k["id"].as_str().unwrap(),
                k["secret"].as_str().unwrap()
            ))
            .json(&json!({"queue": "alerts-q"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{name}: {}", r.text().await.unwrap());
    }

    cli(&["key", "delete", &lid]);
    let r = limited(reqwest::Method::POST, "/v1/queues/allowed-q/messages")
        .json(&json!({"body": "after delete"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "SignatureDoesNotMatch", "{v}");

    // The CLI without any key says what to do.
    let empty = dir.path().join("empty-config");
    let out = Command::new(crate::common::sluice_bin())
        .args(["--server", &sluice.http, "queue", "list"])
        .env("SLUICE_CONFIG_DIR", &empty)
        .env_remove("SLUICE_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--key"),
        "{stderr}"
    );
    // --key and SLUICE_KEY work without the file.
    let out = Command::new(crate::common::sluice_bin())
        .args([
            "--server",
            &sluice.http,
            "queue",
            "list",
            "--key",
            &sluice.key,
        ])
        .env("SLUICE_CONFIG_DIR", &empty)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(crate::common::sluice_bin())
        .args(["--server", &sluice.http, "queue", "list"])
        .env("SLUICE_CONFIG_DIR", &empty)
        .env("SLUICE_KEY", &sluice.key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Secrets at rest.
    assert_eq!(mode(&sluice.config_dir.join("credentials.toml")), 0o600);
    assert_eq!(mode(&sluice.config_dir), 0o700);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("sluice.db")), 0o600);

    // A restart keeps the admin key and writes it again.
    let key = sluice.key.clone();
    sluice.stop();
    let again = Sluice::start(&data, &[]);
    assert_eq!(again.key, key);
    again.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_data_reaches_sdk_consumers_through_a_sql_rule_and_queue_subscriptions() {
    // Proves: devices publish over MQTT, a SQL rule forwards to a topic, and the topic's
    // queue subscriptions are read with the SDK's receive_message/delete_message — bodies as
    // published (set_encoding(False)) and, with base64_body, in the SDK's default encoding —
    // each carrying source topic, device, rule and message id as user properties.
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let http = sluice.client();
    let put = |path: String, body: Value| {
        let req = http.put(format!("{}{path}", sluice.http)).json(&body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            assert!(status == 200 || status == 201, "{path}: {status} {v}");
        }
    };
    put("/v1/topics/flow".into(), json!({})).await;
    put("/v1/queues/raw-q".into(), json!({})).await;
    put("/v1/queues/b64-q".into(), json!({})).await;
    put(
        "/v1/topics/flow/subscriptions/flow-raw".into(),
        json!({"queue": "raw-q"}),
    )
    .await;
    put(
        "/v1/topics/flow/subscriptions/flow-b64".into(),
        json!({"queue": "b64-q", "base64_body": true}),
    )
    .await;
    let api = sluice.api();
    let sql = "SELECT seq, deviceName() AS device FROM \"/flowpk/+/user/telemetry\"";
    let (status, v) = api
        .post(
            "/v1/rules/to-flow",
            &json!({"sql": sql, "actions": ["forward:flow"]}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = api.post("/v1/rules/to-flow/start", &json!({})).await;
    assert_eq!(status, 200, "{v}");

    const N: u64 = 20;
    for dev in 0..2u64 {
        let messages = (0..N)
            .filter(|s| s % 2 == dev)
            .map(|s| (s, json!({"seq": s}).to_string().into_bytes()))
            .collect();
        let report = publish_qos1(
            sluice.mqtt_port,
            &format!("flow-dev{dev}"),
            &format!("/flowpk/dev{dev}/user/telemetry"),
            messages,
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(report.acked.len() as u64, N / 2, "{report:?}");
    }
    sdk("flow", &sluice, &sluice.key, &[&N.to_string()]);
    sluice.stop();
}
