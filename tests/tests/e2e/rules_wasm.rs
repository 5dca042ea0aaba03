//! Uploaded Wasm rules against the running server: each sandbox failure (one `.wat` fixture per
//! kind) is counted by kind and reported to the error action while the overheat rule beside it
//! keeps delivering every message; bad modules and grants are refused with a 400 that changes
//! nothing; rules are created stopped; and `PUT` swaps a running rule's version under QoS 1 load
//! with nothing lost, nothing repeated and per-device order kept; the `sluice rule` CLI manages a
//! module whose grant is checked at create and at run time; an error action of kind republish
//! sends the failure report to the device's MQTT topic. Host calls pay fuel and a rule's log
//! is capped; a deleted rule's or a trapped instance's memory goes back to the system at once.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::mqtt::publish_qos1;
use crate::common::{overheat_output, sluice_bin, Api, Sluice};

/// A CPU bound short enough that the infinite-loop fixture costs little per message (it is a
/// fuel budget, so honest rules are not cut short when the test machine is busy).
const CALL_TIMEOUT_MS: u64 = 25;

/// Starts sluice with a short rule CPU bound (the rest as in the quickstart).
fn start(dir: &tempfile::TempDir) -> Sluice {
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!("rule_call_timeout_ms = {CALL_TIMEOUT_MS}\n"),
    )
    .expect("write config");
    Sluice::start(
        &dir.path().join("data"),
        &["--config", &config.display().to_string()],
    )
}

/// The path of a `.wat` fixture of the host's sandbox tests (wasmtime takes the text format as
/// a module).
fn fixture_path(name: &str) -> String {
    format!(
        "{}/../host/src/rules/fixtures/{name}.wat",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A fixture's bytes.
fn fixture(name: &str) -> Vec<u8> {
    let path = fixture_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// An example rule as the host's build script built it (`target/wasm-rules/...`).
fn example(file: &str) -> Vec<u8> {
    let bin = sluice_bin(); // building the binary builds the example rules
    let target = bin
        .parent()
        .and_then(|profile| profile.parent())
        .expect("target/<profile>/sluice");
    let path: PathBuf = target
        .join("wasm-rules/wasm32-unknown-unknown/wasm-rules")
        .join(format!("{file}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Standard base64 (the tests crate has no base64 dependency).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let mut out = Vec::new();
    for chunk in text.trim_end_matches('=').as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(value(*c)) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// `PUT path` with JSON (the shared `Api` has no PUT).
async fn put(sluice: &Sluice, path: &str, body: &Value) -> (u16, Value) {
    let r = sluice
        .client()
        .put(format!("{}{path}", sluice.http))
        .json(body)
        .send()
        .await
        .expect("PUT");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Creates topic `topic`, queue `{topic}-q` and the subscription `{topic}-to-q` joining them.
async fn topic_with_queue(sluice: &Sluice, topic: &str) {
    let (s, v) = put(sluice, &format!("/v1/topics/{topic}"), &json!({})).await;
    assert!(s == 200 || s == 201, "create topic {topic}: {s} {v}");
    let (s, v) = put(sluice, &format!("/v1/queues/{topic}-q"), &json!({})).await;
    assert!(s == 200 || s == 201, "create queue {topic}-q: {s} {v}");
    let (s, v) = put(
        sluice,
        &format!("/v1/topics/{topic}/subscriptions/{topic}-to-q"),
        &json!({"queue": format!("{topic}-q")}),
    )
    .await;
    assert!(s == 200 || s == 201, "subscribe {topic}-q: {s} {v}");
}

/// The JSON body of `POST`/`PUT /v1/rules/{name}` for a module.
fn rule_body(module: &[u8], from: &str, actions: &[&str], error_action: Option<&str>) -> Value {
    let mut body = json!({
        "module_base64": base64(module),
        "from": from,
        "actions": actions,
    });
    if let Some(e) = error_action {
        body["error_action"] = json!(e);
    }
    body
}

async fn create_and_start(api: &Api, name: &str, body: &Value) {
    let (s, v) = api.post(&format!("/v1/rules/{name}"), body).await;
    assert_eq!(s, 201, "create {name}: {v}");
    assert_eq!(v["state"], "stopped", "a rule is created stopped: {v}");
    let (s, v) = api
        .post(&format!("/v1/rules/{name}/start"), &json!({}))
        .await;
    assert_eq!(s, 200, "start {name}: {v}");
    assert_eq!(v["state"], "running");
}

/// Publishes readings from `devices` devices, `per_device` each, at QoS 1 and returns the
/// overheat alerts that must arrive. Temperatures cycle 30.5..49.5 (11 of 20 are hot).
async fn publish_readings(port: u16, devices: usize, per_device: usize) -> Vec<Value> {
    let mut tasks = Vec::new();
    let mut expected = Vec::new();
    for d in 0..devices {
        let dn = format!("dev{d}");
        let mut messages = Vec::new();
        for j in 0..per_device {
            let seq = (d * 100_000 + j) as u64;
            let t = 30.5 + (j % 20) as f64;
            let payload = json!({"temperature": t, "location": format!("seq-{seq}")});
            messages.push((seq, payload.to_string().into_bytes()));
            if t > 38.0 {
                expected.push(overheat_output(t, &dn, seq));
            }
        }
        let topic = format!("/pk/{dn}/user/update");
        tasks.push(tokio::spawn(async move {
            publish_qos1(port, &dn, &topic, messages, Duration::from_secs(120)).await
        }));
    }
    for t in tasks {
        let report = t.await.expect("publisher");
        assert_eq!(
            report.acked.len(),
            per_device,
            "every publish is acknowledged ({:?})",
            report.error
        );
    }
    expected
}

fn assert_once_each(got: &[Value], expected: &[Value], what: &str) {
    let got_keys: Vec<String> = got.iter().map(Value::to_string).collect();
    let unique: HashSet<&String> = got_keys.iter().collect();
    assert_eq!(
        unique.len(),
        got_keys.len(),
        "{what}: no message arrives twice"
    );
    let want: HashSet<String> = expected.iter().map(Value::to_string).collect();
    let got_set: HashSet<String> = got_keys.into_iter().collect();
    let missing: Vec<_> = want.difference(&got_set).take(5).collect();
    let extra: Vec<_> = got_set.difference(&want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:?}, unexpected {extra:?}"
    );
}

/// Runs the fixture `fixture` as rule `bad` beside the default overheat rule on the same filter
/// and checks: every message fails for `bad` with `kind`, is counted under it and reaches
/// `bad`'s error action; overheat delivers every alert; and overheat counts no failure.
async fn bad_rule_beside_overheat(
    fixture_name: &str,
    kind: &str,
    devices: usize,
    per_device: usize,
) {
    let dir = tempfile::tempdir().unwrap();
    let sluice = start(&dir);
    let api = sluice.api();
    topic_with_queue(&sluice, "errors").await;
    topic_with_queue(&sluice, "bad-out").await;
    let body = rule_body(
        &fixture(fixture_name),
        "/+/+/user/update",
        &["forward:bad-out"],
        Some("forward:errors"),
    );
    create_and_start(&api, "bad", &body).await;

    let total = devices * per_device;
    let started = Instant::now();
    let expected = publish_readings(sluice.mqtt_port, devices, per_device).await;
    let published = started.elapsed();
    let alerts = api
        .drain("alerts-q", expected.len(), Duration::from_secs(20))
        .await;
    let delivered = started.elapsed();
    let errors = api.drain("errors-q", total, Duration::from_secs(20)).await;
    println!(
        "{fixture_name}: {total} messages published in {published:?} ({:.0}/s); {} of {} overheat alerts delivered in {delivered:?} ({:.0} msg/s end to end); {} error reports",
        total as f64 / published.as_secs_f64(),
        alerts.len(),
        expected.len(),
        total as f64 / delivered.as_secs_f64(),
        errors.len()
    );
    assert_once_each(&alerts, &expected, "overheat beside a failing rule");

    assert_eq!(
        errors.len(),
        total,
        "every failed message reaches the error action"
    );
    let mut sources = HashSet::new();
    for e in &errors {
        assert_eq!(e["ruleName"], "bad", "{e}");
        let reason = e["failures"][0]["errorMessage"]
            .as_str()
            .unwrap_or_default();
        assert!(
            reason.starts_with(&format!("{kind}:")),
            "error report names the kind {kind}: {e}"
        );
        let original = decode_base64(
            e["base64OriginalPayload"]
                .as_str()
                .expect("original payload"),
        );
        let original: Value = serde_json::from_slice(&original).expect("original JSON");
        sources.insert(original["location"].as_str().expect("location").to_string());
    }
    assert_eq!(sources.len(), total, "one error report per message");
    let stray = api.drain("bad-out-q", 1, Duration::from_millis(500)).await;
    assert!(
        stray.is_empty(),
        "a failed message emits nothing: {stray:?}"
    );

    let (_, bad) = api.get("/v1/rules/bad").await;
    let c = &bad["counters"];
    println!("{fixture_name}: counters of the bad rule: {c}");
    assert_eq!(c["messages_in"], total as u64, "{c}");
    assert_eq!(
        c["failed"],
        json!({ kind: total as u64 }),
        "counted under its kind only: {c}"
    );
    assert_eq!(c["latency_ns"]["samples"], total as u64, "{c}");
    assert!(
        c["latency_ns"]["p99"].as_u64() >= c["latency_ns"]["p50"].as_u64(),
        "{c}"
    );
    let (_, overheat) = api.get("/v1/rules/overheat").await;
    let c = &overheat["counters"];
    assert_eq!(c["messages_in"], total as u64, "{c}");
    assert_eq!(
        c["failed"],
        json!({}),
        "the other rule never sees the failure: {c}"
    );
    sluice.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trapping_rule_fails_alone_and_reports_trap() {
    // Proves an `unreachable` trap fails each message for that rule only, as kind `trap`.
    bad_rule_beside_overheat("trap", "trap", 4, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_infinite_loop_is_cut_at_the_cpu_bound_and_reports_timeout() {
    // Proves the epoch deadline stops a rule that never returns, as kind `timeout` (few
    // messages: each one costs the whole CPU bound).
    bad_rule_beside_overheat("infinite_loop", "timeout", 2, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_memory_bomb_hits_the_cap_and_reports_out_of_memory() {
    // Proves the per-instance memory cap refuses growth and the failure is `out_of_memory`.
    bad_rule_beside_overheat("memory_bomb", "out_of_memory", 2, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unbounded_recursion_reports_stack_overflow() {
    // Proves a stack overflow in the guest fails the message as `stack_overflow`.
    bad_rule_beside_overheat("stack_overflow", "stack_overflow", 2, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pointer_outside_guest_memory_reports_bad_pointer() {
    // Proves an import given an out-of-range pointer fails the message as `bad_pointer`.
    bad_rule_beside_overheat("bad_pointer", "bad_pointer", 4, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forward_outside_the_grant_reports_malformed_decision() {
    // Proves the grant is checked on every decision at run time: a forward to a topic outside
    // it is a `malformed_decision`, not a write.
    bad_rule_beside_overheat("forward_outside_grant", "malformed_decision", 4, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_undefined_status_reports_bad_status() {
    // Proves a return value that is not OK/DROP/FAILED fails the message as `bad_status`.
    bad_rule_beside_overheat("bad_status", "bad_status", 4, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_republish_error_action_publishes_the_failure_report_to_the_devices_mqtt_topic() {
    // Proves an error action of kind republish is carried out: the device subscribed to the
    // action's MQTT topic receives the failure report of the message it sent, with the rule,
    // the device, the kind of failure and the original payload.
    let dir = tempfile::tempdir().unwrap();
    let sluice = start(&dir);
    let api = sluice.api();
    let body = rule_body(
        &fixture("trap"),
        "/pk/+/user/update",
        &["forward:alerts"],
        Some("republish-qos1:/pk/dev1/user/get"),
    );
    create_and_start(&api, "trapper", &body).await;
    let (_, shown) = api.get("/v1/rules/trapper").await;
    assert_eq!(
        shown["error_action"], "republish-qos1:/pk/dev1/user/get",
        "{shown}"
    );

    let port = sluice.mqtt_port;
    let payload = br#"{"temperature":20.5,"location":"attic"}"#;
    let report = next_on(port, "/pk/dev1/user/get", Duration::from_secs(10), async {
        let r = publish_qos1(
            port,
            "dev1",
            "/pk/dev1/user/update",
            vec![(0, payload.to_vec())],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(r.acked.len(), 1, "{:?}", r.error);
    })
    .await
    .expect("the failure report reaches the device subscribed to the error action's topic");
    let report: Value = serde_json::from_slice(&report).expect("the report is JSON");
    println!("error report over MQTT: {report}");
    assert_eq!(report["ruleName"], "trapper", "{report}");
    assert_eq!(report["topic"], "/pk/dev1/user/update", "{report}");
    assert_eq!(
        (&report["productKey"], &report["deviceName"]),
        (&json!("pk"), &json!("dev1")),
        "{report}"
    );
    let failure = &report["failures"][0];
    assert_eq!(failure["actionType"], "RULE", "{report}");
    assert_eq!(failure["actionResource"], "trapper", "{report}");
    assert!(
        failure["errorMessage"]
            .as_str()
            .is_some_and(|m| m.starts_with("trap:")),
        "{report}"
    );
    assert_eq!(
        decode_base64(report["base64OriginalPayload"].as_str().unwrap_or_default()),
        payload.to_vec(),
        "{report}"
    );
    let (_, rule) = api.get("/v1/rules/trapper").await;
    assert_eq!(rule["counters"]["failed"], json!({"trap": 1}), "{rule}");
    sluice.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn modules_off_the_abi_are_refused_with_a_400_that_names_the_problem_and_change_nothing() {
    // Proves upload-time validation: a missing export, a WASI import and ABI version 2 are each
    // refused naming the problem, for create and for update, and leave every rule as it was.
    let dir = tempfile::tempdir().unwrap();
    let sluice = start(&dir);
    let api = sluice.api();
    let (_, before) = api.get("/v1/rules").await;
    let (_, overheat_before) = api.get("/v1/rules/overheat").await;
    for (name, fixture_name, needle) in [
        (
            "missing-export",
            "missing_export",
            "does not export `sluice_on_message`",
        ),
        (
            "foreign-import",
            "foreign_import",
            "wasi_snapshot_preview1::fd_write",
        ),
        ("wrong-version", "wrong_version", "ABI version 2"),
        (
            "multi-memory",
            "multi_memory_bomb",
            "defines 8 linear memories",
        ),
    ] {
        let body = rule_body(
            &fixture(fixture_name),
            "/+/+/user/update",
            &["forward:alerts"],
            None,
        );
        let (s, v) = api.post(&format!("/v1/rules/{name}"), &body).await;
        println!("create {name} -> {s} {v}");
        assert_eq!(s, 400, "{v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "the error names the problem ({needle}): {message}"
        );
        assert_eq!(v["error"]["field"], "module", "{v}");
        let (s, _) = api.get(&format!("/v1/rules/{name}")).await;
        assert_eq!(s, 404, "a refused rule does not exist");

        let (s, v) = put(&sluice, "/v1/rules/overheat", &body).await;
        assert_eq!(s, 400, "an update to a bad module is refused too: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(needle),
            "{v}"
        );
    }
    let (_, after) = api.get("/v1/rules").await;
    let names = |v: &Value| -> Vec<String> {
        v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&after), names(&before), "no rule was added");
    let (_, overheat_after) = api.get("/v1/rules/overheat").await;
    assert_eq!(
        overheat_after["version"], overheat_before["version"],
        "overheat was not updated"
    );
    assert_eq!(overheat_after["state"], "running");
    // And overheat still works.
    let expected = publish_readings(sluice.mqtt_port, 1, 20).await;
    let got = api
        .drain("alerts-q", expected.len(), Duration::from_secs(10))
        .await;
    assert_once_each(&got, &expected, "overheat after refused updates");
    sluice.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_created_rule_does_nothing_until_started_and_nothing_after_stop() {
    // Proves rules are created stopped: no message reaches it (nothing forwarded, nothing
    // counted) until `start`, and `stop` ends it again.
    let dir = tempfile::tempdir().unwrap();
    let sluice = start(&dir);
    let api = sluice.api();
    topic_with_queue(&sluice, "stamped").await;
    let body = rule_body(
        &example("sluice_rule_stamp"),
        "/+/+/user/seq",
        &["forward:stamped"],
        None,
    );
    let (s, v) = api.post("/v1/rules/stamp", &body).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["state"], "stopped");

    let batch = |from: u64| -> Vec<(u64, Vec<u8>)> {
        (from..from + 20)
            .map(|seq| (seq, json!({"seq": seq}).to_string().into_bytes()))
            .collect()
    };
    let port = sluice.mqtt_port;
    let r = publish_qos1(
        port,
        "d1",
        "/pk/d1/user/seq",
        batch(0),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(r.acked.len(), 20, "{:?}", r.error);
    let got = api.drain("stamped-q", 1, Duration::from_secs(2)).await;
    assert!(got.is_empty(), "a stopped rule forwards nothing: {got:?}");
    let (_, v) = api.get("/v1/rules/stamp").await;
    assert_eq!(
        v["counters"]["messages_in"], 0,
        "a stopped rule sees nothing: {v}"
    );

    let (s, v) = api.post("/v1/rules/stamp/start", &json!({})).await;
    assert_eq!(s, 200, "{v}");
    let r = publish_qos1(
        port,
        "d1",
        "/pk/d1/user/seq",
        batch(100),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(r.acked.len(), 20, "{:?}", r.error);
    let got = api.drain("stamped-q", 20, Duration::from_secs(10)).await;
    let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (100..120).collect::<Vec<_>>(),
        "only messages after start, in order"
    );

    let (s, _) = api.post("/v1/rules/stamp/stop", &json!({})).await;
    assert_eq!(s, 200);
    let r = publish_qos1(
        port,
        "d1",
        "/pk/d1/user/seq",
        batch(200),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(r.acked.len(), 20, "{:?}", r.error);
    let got = api.drain("stamped-q", 1, Duration::from_secs(2)).await;
    assert!(got.is_empty(), "a stopped rule forwards nothing: {got:?}");
    sluice.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn actions_outside_the_grant_are_refused_at_create() {
    // Proves the grant is checked at create: a forward outside it, and a republish that would
    // loop into the rule's own FROM filter, are refused with a 400 on `grant` and create nothing.
    let dir = tempfile::tempdir().unwrap();
    let sluice = start(&dir);
    let api = sluice.api();
    let module = example("sluice_rule_stamp");
    let mut body = rule_body(&module, "/+/+/user/seq", &["forward:alerts"], None);
    body["grant"] = json!(["forward:audit"]);
    let (s, v) = api.post("/v1/rules/outside", &body).await;
    println!("forward outside the grant -> {s} {v}");
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["field"], "grant", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("alerts"),
        "{v}"
    );

    let mut body = rule_body(
        &module,
        "/+/+/user/seq",
        &["republish:/pk/dev1/user/seq"],
        None,
    );
    body["grant"] = json!(["republish:/pk/#"]);
    let (s, v) = api.post("/v1/rules/loop", &body).await;
    println!("republish into its own FROM filter -> {s} {v}");
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("loop"),
        "{v}"
    );

    for name in ["outside", "loop"] {
        let (s, _) = api.get(&format!("/v1/rules/{name}")).await;
        assert_eq!(s, 404, "a refused rule does not exist");
    }
    // Inside the grant it is accepted.
    let mut body = rule_body(&module, "/+/+/user/seq", &["forward:alerts"], None);
    body["grant"] = json!(["forward:alerts,audit"]);
    let (s, v) = api.post("/v1/rules/inside", &body).await;
    assert_eq!(s, 201, "{v}");
    sluice.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn updating_a_running_rule_under_qos1_load_loses_nothing_repeats_nothing_and_keeps_order() {
    // Proves the version swap: while 5 devices publish at QoS 1, the rule is swapped between
    // two modules that stamp their version on each output (v1 -> v2 -> v1 ...); every acknowledged message arrives
    // exactly once, each device's sequence numbers arrive in order, each device sees at most
    // one version change per update, and messages after the last update carry its version.
    let dir = tempfile::tempdir().unwrap();
    let sluice = start(&dir);
    let api = sluice.api();
    topic_with_queue(&sluice, "stamped").await;
    let v1 = example("sluice_rule_stamp");
    let v2 = example("sluice_rule_stamp_v2");
    let from = "/+/+/user/seq";
    create_and_start(
        &api,
        "stamp",
        &rule_body(&v1, from, &["forward:stamped"], None),
    )
    .await;

    // Upload v2 once before the load (a stopped rule, then deleted), as an operator would
    // stage it: sluice keeps recently compiled modules, so each swap below costs a check and a
    // trial instance, not a compile, and lands while the devices are still publishing.
    let (s, v) = api
        .post(
            "/v1/rules/stamp-staged",
            &rule_body(&v2, from, &["forward:stamped"], None),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = api.delete("/v1/rules/stamp-staged").await;
    assert_eq!(s, 200, "{v}");

    let devices = 5usize;
    let per_device = 4000u64;
    let port = sluice.mqtt_port;
    let started = Instant::now();
    let publishers: Vec<_> = (0..devices)
        .map(|d| {
            let messages: Vec<(u64, Vec<u8>)> = (0..per_device)
                .map(|seq| (seq, json!({"seq": seq}).to_string().into_bytes()))
                .collect();
            tokio::spawn(async move {
                publish_qos1(
                    port,
                    &format!("u{d}"),
                    &format!("/pk/u{d}/user/seq"),
                    messages,
                    Duration::from_secs(180),
                )
                .await
            })
        })
        .collect();
    // Swap versions while they publish (v2, v1, v2, ...), each time the rule has handled
    // another 1,000 messages, so every swap lands in the middle of the load.
    let mut updates = 0;
    let mut updates_under_load = 0;
    let mut tags = vec![1u64];
    let messages_in = |v: &Value| v["counters"]["messages_in"].as_u64().unwrap_or(0);
    let mut last_seen = 0;
    while updates < 5 && !publishers.iter().all(|p| p.is_finished()) {
        let (_, v) = api.get("/v1/rules/stamp").await;
        if messages_in(&v) < last_seen + 1000 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let (module, tag) = if updates % 2 == 0 { (&v2, 2) } else { (&v1, 1) };
        let (s, v) = put(
            &sluice,
            "/v1/rules/stamp",
            &rule_body(module, from, &["forward:stamped"], None),
        )
        .await;
        assert_eq!(s, 200, "update: {v}");
        assert_eq!(v["state"], "running", "an update keeps the state: {v}");
        updates += 1;
        if !publishers.iter().all(|p| p.is_finished()) {
            updates_under_load += 1;
        }
        tags.push(tag);
        last_seen = messages_in(&v);
    }
    for p in publishers {
        let report = p.await.expect("publisher");
        assert_eq!(
            report.acked.len() as u64,
            per_device,
            "every publish is acknowledged ({:?})",
            report.error
        );
    }
    let published = started.elapsed();
    let last_tag = *tags.last().expect("tags");
    // A tail published after the last update must run on the last version only.
    let tail: Vec<(u64, Vec<u8>)> = (per_device..per_device + 10)
        .map(|seq| (seq, json!({"seq": seq}).to_string().into_bytes()))
        .collect();
    let r = publish_qos1(port, "u0", "/pk/u0/user/seq", tail, Duration::from_secs(30)).await;
    assert_eq!(r.acked.len(), 10, "{:?}", r.error);

    let total = devices as u64 * per_device + 10;
    let got = api
        .drain("stamped-q", total as usize, Duration::from_secs(30))
        .await;
    println!(
        "{} messages from {devices} devices published in {published:?} ({:.0}/s) across {updates} updates ({updates_under_load} while publishing); {} outputs received",
        devices as u64 * per_device,
        (devices as u64 * per_device) as f64 / published.as_secs_f64(),
        got.len()
    );
    let mut per_device_seen: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for m in &got {
        per_device_seen
            .entry(m["device"].as_str().expect("device").to_string())
            .or_default()
            .push((
                m["seq"].as_u64().expect("seq"),
                m["version"].as_u64().expect("version"),
            ));
    }
    assert_eq!(per_device_seen.len(), devices);
    for (device, seen) in &per_device_seen {
        let want = if device == "u0" {
            per_device + 10
        } else {
            per_device
        };
        let seqs: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs.len() as u64,
            want,
            "{device}: nothing lost, nothing twice"
        );
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{device}: sequence numbers arrive in order"
        );
        assert_eq!(
            seqs,
            (0..want).collect::<Vec<_>>(),
            "{device}: exactly 0..{want}"
        );
        let changes = seen.windows(2).filter(|w| w[0].1 != w[1].1).count();
        assert!(
            changes <= updates,
            "{device}: {changes} version changes for {updates} updates"
        );
        assert_eq!(
            seen[0].1, 1,
            "{device}: the first messages ran on the first version"
        );
        let versions: Vec<u64> = seen.iter().map(|(_, v)| *v).collect();
        println!(
            "{device}: {changes} version changes, v1 x{}, v2 x{}",
            versions.iter().filter(|v| **v == 1).count(),
            versions.iter().filter(|v| **v == 2).count()
        );
    }
    let total_changes: usize = per_device_seen
        .values()
        .map(|seen| seen.windows(2).filter(|w| w[0].1 != w[1].1).count())
        .sum();
    assert!(updates_under_load > 0 && total_changes > 0, "at least one swap landed under load ({updates_under_load} updates while publishing, {total_changes} version changes seen)");
    let tail_versions: Vec<u64> = per_device_seen["u0"][per_device as usize..]
        .iter()
        .map(|(_, v)| *v)
        .collect();
    assert!(
        tail_versions.iter().all(|v| *v == last_tag),
        "after the last update only it runs: {tail_versions:?}"
    );
    let (_, rule) = api.get("/v1/rules/stamp").await;
    assert_eq!(rule["version"], 1 + updates as u64, "{rule}");
    assert_eq!(
        rule["counters"]["messages_in"], total,
        "counters carry over updates: {rule}"
    );
    assert_eq!(rule["counters"]["outputs"], total, "{rule}");
    sluice.stop();
}

/// Waits up to `wait` for one message on `topic` through a QoS 0 subscription on sluice's
/// listener; returns its payload.
async fn next_on(
    port: u16,
    topic: &str,
    wait: Duration,
    published: impl std::future::Future<Output = ()>,
) -> Option<Vec<u8>> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut opts = MqttOptions::new("relay-watcher", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    client
        .subscribe(topic, QoS::AtMostOnce)
        .await
        .expect("subscribe");
    // Subscribed first, then the publish that should reach it.
    let subscribed = async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await.expect("poll") {
                return;
            }
        }
    };
    tokio::time::timeout(wait, subscribed).await.ok()?;
    published.await;
    let got = async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = eventloop.poll().await.expect("poll") {
                return p.payload.to_vec();
            }
        }
    };
    tokio::time::timeout(wait, got).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rule_cli_manages_a_wasm_rule_whose_grant_is_checked_at_create_and_at_run_time() {
    // Proves the `sluice rule` CLI end to end on an uploaded module (create with --wasm, --from,
    // --action, --error-action and --grant; list; start; show; update; stop; delete), that an
    // explicit grant must cover the error action, that a config file's `grant` is stored as
    // given, and that at run time a republish into the rule's own FROM filter or a device
    // status topic is a malformed decision reported to the error action while an allowed one
    // reaches its MQTT subscriber.
    let dir = tempfile::tempdir().unwrap();
    let module = fixture_path("republish_to_payload");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[[rule]]\nname = \"cfg-relay\"\nwasm_file = \"{module}\"\nfrom = \"/cfg/+/user/update\"\nactions = [\"republish:/cfg/dev1/user/get\"]\ngrant = [\"republish:/cfg/#\", \"forward:audit\"]\n"
        ),
    )
    .expect("write config");
    let sluice = Sluice::start(
        &dir.path().join("data"),
        &["--config", &config.display().to_string()],
    );
    let api = sluice.api();
    topic_with_queue(&sluice, "errors").await;
    let shown: Value =
        serde_json::from_str(&sluice.cli_ok(&["rule", "show", "cfg-relay", "--json"])).unwrap();
    assert_eq!(
        shown["grant"],
        json!({"forward": ["audit"], "republish": ["/cfg/#"]}),
        "the config's grant is stored as given: {shown}"
    );
    assert_eq!(shown["state"], "running", "{shown}");

    let create = |grants: &[&str]| {
        let mut args = vec![
            "rule",
            "create",
            "relay",
            "--wasm",
            module.as_str(),
            "--from",
            "/pk/+/user/update",
            "--action",
            "republish:/pk/dev1/user/get",
            "--error-action",
            "forward:errors",
        ];
        for g in grants {
            args.extend(["--grant", g]);
        }
        sluice.run_cli(&args)
    };
    let (ok, _, err) = create(&["republish:#"]);
    assert!(!ok, "an explicit grant without the error action is refused");
    assert!(
        err.contains("forward:errors"),
        "the error names the fix: {err}"
    );
    let (s, _) = api.get("/v1/rules/relay").await;
    assert_eq!(s, 404, "a refused rule does not exist");

    let (ok, out, err) = create(&["republish:#", "forward:errors"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("created (stopped)"), "{out}");
    let list = sluice.cli_ok(&["rule", "list"]);
    let row = list
        .lines()
        .find(|l| l.contains("relay") && !l.contains("cfg-relay"))
        .unwrap_or_default();
    assert!(row.contains("wasm") && row.contains("stopped"), "{list}");
    assert!(sluice
        .cli_ok(&["rule", "start", "relay"])
        .contains("running"));

    // Allowed: the payload names /pk/dev1/user/get, inside the grant and outside FROM.
    let port = sluice.mqtt_port;
    let relayed = next_on(port, "/pk/dev1/user/get", Duration::from_secs(10), async {
        let r = publish_qos1(
            port,
            "dev1",
            "/pk/dev1/user/update",
            vec![(0, b"/pk/dev1/user/get".to_vec())],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(r.acked.len(), 1, "{:?}", r.error);
    })
    .await;
    assert_eq!(relayed.as_deref(), Some(&b"/pk/dev1/user/get"[..]));

    // Refused at run time: into its own FROM filter (a loop) and into a device status topic.
    let r = publish_qos1(
        port,
        "dev1",
        "/pk/dev1/user/update",
        vec![
            (1, b"/pk/dev1/user/update".to_vec()),
            (2, b"/as/mqtt/status/pk/dev1".to_vec()),
        ],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(r.acked.len(), 2, "{:?}", r.error);
    let reports = api.drain("errors-q", 2, Duration::from_secs(10)).await;
    assert_eq!(reports.len(), 2, "{reports:?}");
    let reasons: Vec<&str> = reports
        .iter()
        .map(|e| {
            e["failures"][0]["errorMessage"]
                .as_str()
                .unwrap_or_default()
        })
        .collect();
    println!("run-time refusals: {reasons:?}");
    assert!(
        reasons.iter().all(|r| r.starts_with("malformed_decision:")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("loop")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("status")), "{reasons:?}");

    let show = sluice.cli_ok(&["rule", "show", "relay"]);
    let field = |name: &str| {
        show.lines()
            .find(|l| l.trim_start().starts_with(name))
            .map(|l| l.trim_start()[name.len()..].trim().to_string())
            .unwrap_or_default()
    };
    assert_eq!(field("messages_in"), "3", "{show}");
    assert_eq!(field("failed"), "malformed_decision 2", "{show}");
    assert_eq!(field("grant forward"), "errors", "{show}");
    assert_eq!(field("error_action"), "forward:errors", "{show}");

    let out = sluice.cli_ok(&[
        "rule",
        "update",
        "relay",
        "--wasm",
        &module,
        "--from",
        "/pk/+/user/update",
        "--action",
        "republish:/pk/dev2/user/get",
        "--error-action",
        "forward:errors",
        "--grant",
        "republish:#",
        "--grant",
        "forward:errors",
    ]);
    assert!(out.contains("version 2"), "{out}");
    assert!(sluice
        .cli_ok(&["rule", "stop", "relay"])
        .contains("stopped"));
    assert!(sluice
        .cli_ok(&["rule", "delete", "relay"])
        .contains("deleted"));
    let (ok, _, err) = sluice.run_cli(&["rule", "show", "relay"]);
    assert!(
        !ok && err.contains("relay"),
        "a deleted rule is gone: {err}"
    );
    sluice.stop();
}

/// The value of one series in a `/metrics` scrape (`name` with its labels, as written).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Polls `GET /v1/rules/{name}` until `done` holds for its counters (10 s at most).
async fn wait_for_counters(api: &Api, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = api.get(&format!("/v1/rules/{name}")).await;
        if done(&v["counters"]) {
            return v["counters"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "rule {name} counters never got there: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_call_loops_stop_near_the_cpu_bound_and_a_rules_log_stays_within_its_caps() {
    // Proves host calls pay fuel: loops of random_fill over 4 MiB, of now_ms and of log each
    // stop as `timeout` when their fuel runs out (unmetered, random_fill ran to the 500 ms
    // wall-clock backstop with fuel to spare); and the log loop writes at most the per-message
    // line cap to the server log, with the rest counted in sluice_rule_log_dropped_total and
    // summarized.
    let dir = tempfile::tempdir().unwrap();
    let sluice = start(&dir);
    let api = sluice.api();
    topic_with_queue(&sluice, "loop-out").await;
    let body = rule_body(
        &fixture("host_call_loop"),
        "/pk/+/loop",
        &["forward:loop-out"],
        None,
    );
    create_and_start(&api, "hostloop", &body).await;

    let mut messages = Vec::new();
    for i in 0..5u64 {
        messages.push((i, b"random".to_vec()));
        messages.push((100 + i, b"now".to_vec()));
    }
    let logged = 10u64;
    for i in 0..logged {
        messages.push((
            200 + i,
            format!("hostloop log line of message {i}").into_bytes(),
        ));
    }
    let total = messages.len() as u64;
    let report = publish_qos1(
        sluice.mqtt_port,
        "loop-dev",
        "/pk/loop-dev/loop",
        messages,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(report.acked.len() as u64, total, "{:?}", report.error);
    let c = wait_for_counters(&api, "hostloop", |c| c["messages_in"] == total).await;
    println!("hostloop counters: {c}");
    assert_eq!(c["failed"], json!({"timeout": total}), "{c}");
    // Each message stopped because its fuel ran out (500,000 a ms of budget), not at the
    // wall-clock backstop, which unmetered host calls used to reach with fuel to spare.
    let fuel_budget = CALL_TIMEOUT_MS * 500_000;
    assert_eq!(
        c["fuel_used"].as_u64().unwrap(),
        total * fuel_budget,
        "every message used exactly its fuel budget: {c}"
    );
    println!(
        "p99 {:.1} ms for a {CALL_TIMEOUT_MS} ms budget ({} ms backstop)",
        c["latency_ns"]["p99"].as_u64().unwrap() as f64 / 1e6,
        20 * CALL_TIMEOUT_MS
    );
    assert!(
        c["log_dropped"].as_u64().unwrap() > 1000 * logged,
        "calls past the cap are counted: {c}"
    );

    let (_, metrics) = api.get_text("/metrics").await;
    let dropped = metric(&metrics, "sluice_rule_log_dropped_total{rule=\"hostloop\"}")
        .expect("sluice_rule_log_dropped_total for the rule");
    assert_eq!(dropped as u64, c["log_dropped"].as_u64().unwrap());

    let log = sluice.log();
    let lines = log.matches("hostloop log line of message").count() as u64;
    let summaries = log
        .lines()
        .filter(|l| l.contains("rule=hostloop") && l.contains("past the rule log caps"))
        .count();
    println!("server log: {lines} rule lines, {summaries} summaries, {dropped} dropped");
    assert!(
        (logged..=32 * logged).contains(&lines),
        "at most 32 lines per message reach the server log: {lines}"
    );
    assert!(summaries >= 1, "drops are summarized");
    sluice.stop();
}
