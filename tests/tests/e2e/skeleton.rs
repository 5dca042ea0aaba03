//! The walking skeleton: device -> MQTT -> overheat rule (Wasm) -> topic `alerts` -> queue
//! `alerts-q` -> HTTP receive/delete, on the embedded listener and through Mosquitto, across a
//! clean restart and a SIGKILL.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::mqtt::publish_qos1;
use crate::common::{overheat_output, sluice_bin, Mosquitto, Sluice};

/// Payloads for device `dn`: temperatures cycle 30.5 .. 49.5, so 11 of every 20 pass `> 38`.
fn readings(device: usize, count: usize) -> (Vec<(u64, Vec<u8>)>, Vec<Value>) {
    let dn = format!("dev{device}");
    let mut messages = Vec::new();
    let mut expected = Vec::new();
    for j in 0..count {
        let seq = (device * 100_000 + j) as u64;
        let t = 30.5 + (j % 20) as f64;
        let payload = json!({"temperature": t, "location": format!("seq-{seq}"), "humidity": 40});
        messages.push((seq, payload.to_string().into_bytes()));
        if t > 38.0 {
            expected.push(overheat_output(t, &dn, seq));
        }
    }
    (messages, expected)
}

/// Publishes from `devices` devices, `per_device` each, to `port`; returns what must arrive.
async fn publish_fleet(port: u16, devices: usize, per_device: usize) -> Vec<Value> {
    let mut tasks = Vec::new();
    let mut expected = Vec::new();
    for d in 0..devices {
        let (messages, exp) = readings(d, per_device);
        expected.extend(exp);
        let topic = format!("/a1hRrzD/dev{d}/user/update");
        tasks.push(tokio::spawn(async move {
            publish_qos1(
                port,
                &format!("dev{d}"),
                &topic,
                messages,
                Duration::from_secs(60),
            )
            .await
        }));
    }
    for t in tasks {
        let report = t.await.expect("publisher task");
        assert_eq!(
            report.acked.len(),
            per_device,
            "every QoS 1 publish is acknowledged ({:?})",
            report.error
        );
    }
    expected
}

fn assert_same_once_each(got: &[Value], expected: &[Value]) {
    let keys = |v: &[Value]| -> Vec<String> { v.iter().map(|m| m.to_string()).collect() };
    let got_keys = keys(got);
    let unique: HashSet<&String> = got_keys.iter().collect();
    assert_eq!(unique.len(), got_keys.len(), "no message arrives twice");
    let want: HashSet<String> = keys(expected).into_iter().collect();
    let got_set: HashSet<String> = got_keys.into_iter().collect();
    let missing: Vec<_> = want.difference(&got_set).take(5).collect();
    let extra: Vec<_> = got_set.difference(&want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_qos1_messages_from_ten_devices_arrive_in_the_queue_once_each() {
    // Proves the whole path on the embedded listener: exactly the matching messages, once each.
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let started = Instant::now();
    let expected = publish_fleet(sluice.mqtt_port, 10, 100).await;
    let published = started.elapsed();
    let got = sluice
        .api()
        .drain("alerts-q", expected.len(), Duration::from_secs(10))
        .await;
    println!(
        "published 1000 QoS 1 messages in {published:?} ({:.0}/s); {} of {} expected alerts received",
        1000.0 / published.as_secs_f64(),
        got.len(),
        expected.len()
    );
    assert_same_once_each(&got, &expected);
    let leftover = sluice
        .api()
        .drain("alerts-q", 1, Duration::from_secs(1))
        .await;
    assert!(
        leftover.is_empty(),
        "nothing else is in the queue: {leftover:?}"
    );
    sluice.stop();
}

/// Publishes overheat probes to the broker until every one of `servers` has received one (each
/// probe alert drained from its `alerts-q`): then their subscriptions are in place.
async fn wait_until_subscribed(broker_port: u16, servers: &[&Sluice]) {
    let mut seen = vec![false; servers.len()];
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.contains(&false) {
        let probe = json!({"temperature": 99.0, "location": "probe"}).to_string();
        let report = publish_qos1(
            broker_port,
            "probe",
            "/probe/probe/user/update",
            vec![(0, probe.into_bytes())],
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(report.acked.len(), 1, "mosquitto acks the probe");
        for (server, seen) in servers.iter().zip(seen.iter_mut()) {
            let got = server
                .api()
                .drain("alerts-q", 1, Duration::from_millis(300))
                .await;
            *seen |= !got.is_empty();
        }
        assert!(
            Instant::now() < deadline,
            "not every sluice subscribed to mosquitto; logs:\n{}",
            servers
                .iter()
                .map(|s| s.log())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
    }
}

/// Drains `alerts-q`, leaving out late probe alerts of [`wait_until_subscribed`].
async fn drain_alerts(sluice: &Sluice, want: usize, timeout: Duration) -> Vec<Value> {
    let got = sluice.api().drain("alerts-q", want, timeout).await;
    got.into_iter()
        .filter(|m| m["location"] != "probe")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sluice_processes_in_one_share_group_split_mosquittos_traffic_once_each() {
    // Scaling ingest out: two processes subscribe as $share/fleet/..., so each message is
    // handled by exactly one of them, and both take a share.
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let args = ["--mqtt-url", &url, "--mqtt-share-group", "fleet"];
    let started = Instant::now();
    let a = Sluice::start(&dir.path().join("a"), &args);
    let b = Sluice::start(&dir.path().join("b"), &args);
    println!("both started in {:?}", started.elapsed());
    wait_until_subscribed(broker.port, &[&a, &b]).await;
    println!("both subscribed after {:?}", started.elapsed());

    let expected = publish_fleet(broker.port, 10, 100).await;
    println!("fleet published after {:?}", started.elapsed());
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got_a.len() + got_b.len() < expected.len() && Instant::now() < deadline {
        got_a.extend(drain_alerts(&a, expected.len(), Duration::from_millis(500)).await);
        got_b.extend(drain_alerts(&b, expected.len(), Duration::from_millis(500)).await);
    }
    println!(
        "share group of two after {:?}: process a handled {}, process b {}, {} expected in all",
        started.elapsed(),
        got_a.len(),
        got_b.len(),
        expected.len()
    );
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "both processes take a share ({} and {})",
        got_a.len(),
        got_b.len()
    );
    let mut all = got_a;
    all.extend(got_b);
    assert_same_once_each(&all, &expected);
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_mosquitto_as_external_broker_messages_arrive_once_each() {
    // Proves external-broker mode: sluice subscribes to Mosquitto with manual acks.
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let sluice = Sluice::start(&dir.path().join("data"), &["--mqtt-url", &url]);
    let api = sluice.api();
    wait_until_subscribed(broker.port, &[&sluice]).await;
    let expected = publish_fleet(broker.port, 10, 100).await;
    let got = drain_alerts(&sluice, expected.len(), Duration::from_secs(15)).await;
    println!(
        "through mosquitto: {} of {} expected alerts received",
        got.len(),
        expected.len()
    );
    assert_same_once_each(&got, &expected);

    // A SQL rule created and started while running: sluice subscribes to its filter too.
    let sql = "SELECT level, deviceName() AS device FROM \"/late/+/user/alarm\" WHERE level >= 3";
    let (status, v) = api
        .post(
            "/v1/rules/late",
            &json!({"sql": sql, "actions": ["forward:alerts"]}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = api.post("/v1/rules/late/start", &json!({})).await;
    assert_eq!(status, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let arrived = loop {
        let report = publish_qos1(
            broker.port,
            "late-dev",
            "/late/dev9/user/alarm",
            vec![(0, json!({"level": 4}).to_string().into_bytes())],
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(report.acked.len(), 1);
        let got = api.drain("alerts-q", 1, Duration::from_millis(500)).await;
        if !got.is_empty() {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "the new rule's filter was never subscribed"
        );
    };
    assert_eq!(arrived[0], json!({"level": 4, "device": "dev9"}));
    sluice.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rule_output_says_where_it_came_from_and_a_line_break_in_its_topic_refuses_it_alone() {
    // Proves: a rule output carries its origin as attributes (device, rule, source topic and
    // message, ingest time); an output whose attributes would carry a line break (a topic
    // level from the device) is refused and counted, the device is still acked, and the next
    // message goes through.
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let hot = |seq: u64| {
        (
            seq,
            json!({"temperature": 45.0, "location": format!("seq-{seq}")}),
        )
    };
    let bad_topic = "/a1hRrzD/dev\nX-Evil: 1/user/update";
    for (topic, (seq, payload)) in [
        ("/a1hRrzD/devA/user/update", hot(1)),
        (bad_topic, hot(2)),
        ("/a1hRrzD/devB/user/update", hot(3)),
    ] {
        let report = publish_qos1(
            sluice.mqtt_port,
            "attrs",
            topic,
            vec![(seq, payload.to_string().into_bytes())],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(report.acked, vec![seq], "acked ({:?})", report.error);
    }
    let api = sluice.api();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 2 && Instant::now() < deadline {
        let (status, v) = api
            .get("/v1/queues/alerts-q/messages?max=16&wait_seconds=1")
            .await;
        assert_eq!(status, 200, "{v}");
        got.extend(v["messages"].as_array().cloned().unwrap_or_default());
    }
    // Nothing else comes: the refused output is not merely late (those received stay
    // invisible for 30 s, so only a third message would show here).
    let (_, more) = api
        .get("/v1/queues/alerts-q/messages?max=16&wait_seconds=1")
        .await;
    got.extend(more["messages"].as_array().cloned().unwrap_or_default());
    println!("received: {got:#?}");
    assert_eq!(
        got.len(),
        2,
        "devA's and devB's alerts, not the refused one"
    );
    let a = &got[0]["attributes"];
    assert_eq!(a["device_name"], "devA");
    assert_eq!(a["product_key"], "a1hRrzD");
    assert_eq!(a["rule"], "overheat");
    assert_eq!(a["source_topic"], "/a1hRrzD/devA/user/update");
    assert_eq!(
        a["source_message_id"].as_str().map(str::len),
        Some(32),
        "{a}"
    );
    let ingest: u64 = a["ingest_time_ms"].as_str().unwrap().parse().unwrap();
    let sent: u64 = got[0]["enqueue_time_ms"].as_u64().unwrap();
    assert!(
        ingest <= sent && sent - ingest < 10_000,
        "ingest {ingest}, enqueue {sent}"
    );
    assert_eq!(got[1]["attributes"]["device_name"], "devB");
    let (_, metrics) = api.get_text("/metrics").await;
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("sluice_pipeline_outputs_refused_total"))
        .unwrap_or_default()
        .to_string();
    assert!(refused.ends_with(" 1"), "one refused output: {refused}");
    sluice.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clean_restart_keeps_everything_not_deleted_and_recreates_nothing() {
    // Proves durability across SIGTERM and that the default set-up is created only once.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sluice = Sluice::start(&data, &[]);
    let expected = publish_fleet(sluice.mqtt_port, 2, 100).await; // 110 alerts
    let api = sluice.api();
    let first = api.drain("alerts-q", 30, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 30);
    // A user change that a restart must not overwrite: stop the default rule.
    let (status, v) = api.post("/v1/rules/overheat/stop", &json!({})).await;
    assert_eq!(status, 200, "{v}");
    sluice.stop();

    let sluice = Sluice::start(&data, &[]);
    let api = sluice.api();
    let (_, rule) = api.get("/v1/rules/overheat").await;
    assert_eq!(
        rule["state"], "stopped",
        "the restart did not recreate the rule: {rule}"
    );
    let rest = api
        .drain("alerts-q", expected.len() - 30, Duration::from_secs(10))
        .await;
    let mut all = first;
    all.extend(rest);
    assert_same_once_each(&all, &expected);
    sluice.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_while_devices_publish_loses_no_acknowledged_message() {
    // Proves ack-after-commit: every PUBACKed message that passes the rule survives SIGKILL.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sluice = Sluice::start(&data, &[]);
    let port = sluice.mqtt_port;
    let mut tasks = Vec::new();
    for d in 0..5 {
        // All hot: every message passes the rule.
        let messages: Vec<(u64, Vec<u8>)> = (0..5000u64)
            .map(|j| {
                let seq = d * 100_000 + j;
                (
                    seq,
                    json!({"temperature": 45.0, "location": format!("seq-{seq}")})
                        .to_string()
                        .into_bytes(),
                )
            })
            .collect();
        let topic = format!("/pk/dev{d}/user/update");
        tasks.push(tokio::spawn(async move {
            publish_qos1(
                port,
                &format!("dev{d}"),
                &topic,
                messages,
                Duration::from_secs(60),
            )
            .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sluice.kill();
    let mut acked: HashMap<String, u64> = HashMap::new();
    for (d, t) in tasks.into_iter().enumerate() {
        let report = t.await.unwrap();
        for seq in report.acked {
            acked.insert(format!("seq-{seq}"), d as u64);
        }
    }
    assert!(
        !acked.is_empty(),
        "some messages were acknowledged before the kill"
    );

    let sluice = Sluice::start(&data, &[]);
    let got = sluice
        .api()
        .drain("alerts-q", usize::MAX, Duration::from_secs(3))
        .await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in &got {
        *seen
            .entry(m["location"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let lost: Vec<&String> = acked.keys().filter(|k| !seen.contains_key(*k)).collect();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    println!(
        "SIGKILL test: {} acknowledged, {} in the queue after restart, {} lost, {} duplicates",
        acked.len(),
        got.len(),
        lost.len(),
        duplicates
    );
    assert!(
        lost.is_empty(),
        "acknowledged but lost: {:?}",
        &lost[..lost.len().min(5)]
    );
    sluice.stop();
}

/// Runs `sluice` with `args` and expects it to exit non-zero within 30 s; returns its stderr.
fn expect_failure(args: &[&str]) -> String {
    let out = std::process::Command::new(sluice_bin())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run sluice");
    assert!(!out.status.success(), "sluice {args:?} should fail");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    println!("sluice {args:?} -> {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one clear line, nothing else: {stderr}");
    stderr
}

#[test]
fn bad_start_conditions_exit_non_zero_with_one_clear_line() {
    // Proves a port in use, a malformed config, an unwritable data directory and a module that
    // does not load each stop the process with a message naming what and where.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.display().to_string();

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = expect_failure(&[
        "serve",
        "--data-dir",
        &data_s,
        "--http-listen",
        &addr,
        "--mqtt-listen",
        "127.0.0.1:0",
    ]);
    assert!(
        err.contains(&format!("cannot listen for HTTP on {addr}")),
        "{err}"
    );
    assert!(
        !data.exists(),
        "a failed start leaves no data directory behind"
    );

    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "http_listen = \"127.0.0.1:0\"\ndata_dri = \"x\"\n").unwrap();
    let err = expect_failure(&["serve", "--config", &cfg.display().to_string()]);
    assert!(
        err.contains("bad.toml") && err.contains("data_dri") && err.contains("line 2"),
        "{err}"
    );

    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let under_file = file.join("data").display().to_string();
    let err = expect_failure(&[
        "serve",
        "--data-dir",
        &under_file,
        "--http-listen",
        "127.0.0.1:0",
        "--mqtt-listen",
        "127.0.0.1:0",
    ]);
    assert!(
        err.contains(&under_file) || err.contains(&file.display().to_string()),
        "{err}"
    );

    let wasm = dir.path().join("no-exports.wasm");
    std::fs::write(&wasm, "(module (memory (export \"memory\") 1))").unwrap();
    let cfg = dir.path().join("rule.toml");
    std::fs::write(
        &cfg,
        format!(
            "http_listen = \"127.0.0.1:0\"\nmqtt_listen = \"127.0.0.1:0\"\ndata_dir = \"{data_s}\"\n[[rule]]\nname = \"broken\"\nwasm_file = \"{}\"\nfrom = \"/+/+/user/update\"\nactions = [\"forward:alerts\"]\n",
            wasm.display()
        ),
    )
    .unwrap();
    let err = expect_failure(&["serve", "--config", &cfg.display().to_string()]);
    assert!(
        err.contains("broken")
            && err.contains(&wasm.display().to_string())
            && err.contains("does not export `sluice_abi_version`"),
        "{err}"
    );
    assert!(
        !data.exists(),
        "a module that fails to load stops the start before the data directory is made"
    );

    // On an existing data directory the same failure changes nothing stored.
    let sluice = Sluice::start(&data, &[]);
    sluice.stop();
    let before = snapshot(&data);
    let err = expect_failure(&["serve", "--config", &cfg.display().to_string()]);
    assert!(err.contains("broken"), "{err}");
    assert_eq!(
        snapshot(&data),
        before,
        "a failed start leaves the stored data as it was"
    );

    // A directory without write permission (meaningless for root, who may write anywhere).
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    let mut perms = std::fs::metadata(&locked).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o500);
    std::fs::set_permissions(&locked, perms).unwrap();
    if std::fs::write(locked.join("probe"), "x").is_ok() {
        println!("running as root: permission bits do not apply, the not-a-directory case above stands for it");
    } else {
        let inside = locked.join("data").display().to_string();
        let err = expect_failure(&[
            "serve",
            "--data-dir",
            &inside,
            "--http-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
        ]);
        assert!(
            err.contains(&inside) && err.to_lowercase().contains("permission denied"),
            "{err}"
        );
    }
}

/// Every file under `dir` with its contents, to compare a directory before and after.
fn snapshot(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read the data directory")
        .map(|e| {
            let path = e.expect("entry").path();
            let bytes = std::fs::read(&path).unwrap_or_default();
            (path.display().to_string(), bytes)
        })
        .collect();
    files.sort();
    files
}
