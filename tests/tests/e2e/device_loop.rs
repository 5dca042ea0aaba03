//! The server-to-device loop: QoS 1 downlink kept for an offline device's persistent session
//! (across a SIGKILL of sluice), resent with DUP after a disconnect, refused for clean sessions;
//! and synchronous calls (RRPC) answered by the official device SDK (`rrpc_sdk.py`).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

use crate::common::{Api, Sluice};

const SECRET: &str = "dev1-secret-0123456789";
const RRPC_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/rrpc_sdk.py");

/// A config with the device `pk/dev1` and its secret.
fn write_config(dir: &Path) -> String {
    let path = dir.join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "[[device]]\nproduct_key = \"pk\"\ndevice_name = \"dev1\"\nsecret = \"{SECRET}\"\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// The client id, user name and password of `pk/dev1`, signed as the device SDKs sign.
fn sign_in() -> (String, String, String) {
    sluice::devices::auth::sign(
        "pk",
        "dev1",
        SECRET,
        sluice::devices::auth::SignMethod::HmacSha256,
        "1700000000000",
    )
}

/// MQTT options of `pk/dev1` signed in with its secret.
fn device_options(port: u16, clean_session: bool) -> MqttOptions {
    let (cid, user, pass) = sign_in();
    let mut o = MqttOptions::new(cid, "127.0.0.1", port);
    o.set_credentials(user, pass);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(clean_session);
    o
}

/// Connects and returns the client, its event loop and the CONNACK's session-present flag.
async fn connect(opts: MqttOptions) -> (AsyncClient, EventLoop, bool) {
    let (client, mut ev) = AsyncClient::new(opts, 64);
    let present = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => return a.session_present,
                Ok(_) => {}
                Err(e) => panic!("no CONNACK: {e}"),
            }
        }
    })
    .await
    .expect("a CONNACK in time");
    (client, ev, present)
}

/// Polls until `want` publishes arrived or `wait` passed; returns (topic, payload, dup) each.
async fn receive(ev: &mut EventLoop, want: usize, wait: Duration) -> Vec<(String, String, bool)> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        while got.len() < want {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => got.push((
                    p.topic.clone(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                    p.dup,
                )),
                Ok(_) => {}
                Err(e) => panic!("connection failed while receiving: {e}"),
            }
        }
    })
    .await;
    got
}

/// Subscribes and waits for the SUBACK.
async fn subscribe(client: &AsyncClient, ev: &mut EventLoop, filter: &str) {
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(Event::Incoming(Packet::SubAck(_))) = ev.poll().await {
                return;
            }
        }
    })
    .await
    .expect("a SUBACK in time");
}

/// Ends the connection with a DISCONNECT and drives the event loop until it is sent.
async fn disconnect(client: AsyncClient, mut ev: EventLoop) {
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while ev.poll().await.is_ok() {}
    })
    .await;
}

async fn wait_online(api: &Api, online: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = api.get("/v1/devices/pk/dev1").await;
        if v["online"] == online {
            return;
        }
        assert!(Instant::now() < deadline, "device online != {online}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn downlink(api: &Api, body: &str, qos: u8) -> (u16, Value) {
    api.post(
        "/v1/devices/pk/dev1/messages",
        &json!({"topic": "user/get", "body": body, "qos": qos}),
    )
    .await
}

/// A counter from `/metrics`.
async fn metric(api: &Api, name: &str) -> u64 {
    let (_, text) = api.get_text("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_downlink_is_kept_through_a_crash_and_delivered_when_the_device_returns() {
    // Proves the offline downlink promise with a real MQTT client and a SIGKILLed server: QoS 1
    // messages sent while a persistent-session device is away answer 202 `queued`, survive the
    // kill, arrive in order on reconnect (session present) and, once acked, are not sent again;
    // QoS 0 to the offline device and anything to a clean-session device answer 409.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let data = dir.path().join("data");
    let sluice = Sluice::start(&data, &["--config", &config]);
    let api = sluice.api();

    let (client, mut ev, present) = connect(device_options(sluice.mqtt_port, false)).await;
    assert!(!present, "a first connection has no session");
    subscribe(&client, &mut ev, "/pk/dev1/user/get").await;
    disconnect(client, ev).await;
    wait_online(&api, false).await;

    for i in 1..=3 {
        let (status, v) = downlink(&api, &format!("m{i}"), 1).await;
        assert_eq!(status, 202, "{v}");
        assert_eq!(v["queued"], 1, "{v}");
    }
    let (status, v) = downlink(&api, "qos0", 0).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("DeviceOffline")),
        "{v}"
    );
    let (ok, out, err) = sluice.run_cli(&["pub", "pk", "dev1", "user/get", "m4", "--qos", "1"]);
    assert!(ok && out.contains("queued"), "{out}{err}");

    sluice.kill();
    let sluice = Sluice::start(&data, &["--config", &config]);
    let api = sluice.api();
    let (client, mut ev, present) = connect(device_options(sluice.mqtt_port, false)).await;
    assert!(present, "the session outlived the crash");
    let got = receive(&mut ev, 4, Duration::from_secs(10)).await;
    let payloads: Vec<&str> = got.iter().map(|(_, p, _)| p.as_str()).collect();
    assert_eq!(
        payloads,
        ["m1", "m2", "m3", "m4"],
        "in the order they were sent"
    );
    assert!(got
        .iter()
        .all(|(t, _, dup)| t == "/pk/dev1/user/get" && !dup));
    // The acks reach the store in the background: wait for them before leaving.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&api, "sluice_mqtt_offline_delivered_total").await < 4 {
        assert!(
            Instant::now() < deadline,
            "acked messages were not forgotten"
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), ev.poll()).await;
    }
    disconnect(client, ev).await;

    let (client, mut ev, present) = connect(device_options(sluice.mqtt_port, false)).await;
    assert!(present);
    assert!(
        receive(&mut ev, 1, Duration::from_secs(1)).await.is_empty(),
        "acked messages are not sent again"
    );
    disconnect(client, ev).await;

    // A clean session ends the persistent one: nothing is kept any more.
    let (client, ev, present) = connect(device_options(sluice.mqtt_port, true)).await;
    assert!(!present);
    disconnect(client, ev).await;
    wait_online(&api, false).await;
    let (status, v) = downlink(&api, "lost", 1).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("DeviceOffline")),
        "{v}"
    );
    sluice.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_flight_at_a_disconnect_is_resent_with_dup_and_the_cap_holds() {
    // Proves the in-flight resend and the per-session bound: a QoS 1 downlink the device
    // received but did not ack before its connection dropped comes again on reconnect with
    // DUP set; past `mqtt_max_kept_per_session` a message for the offline device is refused
    // with 409 OfflineQueueFull and counted.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let sluice = Sluice::start(
        &dir.path().join("data"),
        &["--config", &config, "--mqtt-max-kept-per-session", "2"],
    );
    let api = sluice.api();

    let mut opts = device_options(sluice.mqtt_port, false);
    opts.set_manual_acks(true);
    let (client, mut ev, _) = connect(opts).await;
    subscribe(&client, &mut ev, "/pk/dev1/user/#").await;
    let (status, v) = downlink(&api, "unacked", 1).await;
    assert_eq!((status, v["delivered"].as_u64()), (200, Some(1)), "{v}");
    let got = receive(&mut ev, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "delivered while online");
    // Dropped without acking and without a DISCONNECT: the connection just ends.
    drop(client);
    drop(ev);
    wait_online(&api, false).await;

    let (status, v) = downlink(&api, "second", 1).await;
    assert_eq!(status, 202, "{v}");
    let (status, v) = downlink(&api, "third", 1).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("OfflineQueueFull")),
        "{v}"
    );
    assert_eq!(metric(&api, "sluice_mqtt_offline_refused_total").await, 1);

    let (_client, mut ev, present) = connect(device_options(sluice.mqtt_port, false)).await;
    assert!(present);
    let got = receive(&mut ev, 2, Duration::from_secs(10)).await;
    assert_eq!(
        got,
        vec![
            ("/pk/dev1/user/get".to_string(), "unacked".to_string(), true),
            ("/pk/dev1/user/get".to_string(), "second".to_string(), false),
        ]
    );
    sluice.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_keeps_what_a_connected_device_had_not_acked() {
    // Proves the clean-stop promise of docs/devices.md: a QoS 1 downlink a connected
    // persistent-session device received but had not acked when sluice stopped (SIGTERM) is
    // kept, and comes again, flagged DUP, when the device reconnects to the restarted server.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let data = dir.path().join("data");
    let sluice = Sluice::start(&data, &["--config", &config]);
    let mut opts = device_options(sluice.mqtt_port, false);
    opts.set_manual_acks(true);
    let (client, mut ev, _) = connect(opts).await;
    subscribe(&client, &mut ev, "/pk/dev1/user/get").await;
    let (status, v) = downlink(&sluice.api(), "held", 1).await;
    assert_eq!((status, v["delivered"].as_u64()), (200, Some(1)), "{v}");
    assert_eq!(receive(&mut ev, 1, Duration::from_secs(10)).await.len(), 1);
    sluice.stop();
    drop(client);
    drop(ev);

    let sluice = Sluice::start(&data, &["--config", &config]);
    let (_client, mut ev, present) = connect(device_options(sluice.mqtt_port, false)).await;
    assert!(present);
    let got = receive(&mut ev, 1, Duration::from_secs(10)).await;
    assert_eq!(
        got,
        vec![("/pk/dev1/user/get".to_string(), "held".to_string(), true)]
    );
    sluice.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_device_keeps_its_session_only_with_a_session_expiry() {
    // Proves the MQTT 5 rule: clean start off with a session expiry interval above 0 keeps the
    // session (downlink kept while away, delivered on return); clean start off with no expiry
    // does not (the session ends with the connection, so the device counts as gone: 409).
    use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Packet as P5};
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Opts5};

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let sluice = Sluice::start(&dir.path().join("data"), &["--config", &config]);
    let api = sluice.api();
    let port = sluice.mqtt_port;
    let options = |expiry: Option<u32>| {
        let (cid, user, pass) = sign_in();
        let mut o = Opts5::new(cid, "127.0.0.1", port);
        o.set_credentials(user, pass);
        o.set_clean_start(false);
        let mut props = ConnectProperties::new();
        props.session_expiry_interval = expiry;
        o.set_connect_properties(props);
        o
    };
    // Connects, optionally subscribes, collects publishes for `wait`, disconnects.
    let session = |expiry: Option<u32>, subscribe: bool, wait: Duration| async move {
        let (client, mut ev) = Client5::new(options(expiry), 16);
        if subscribe {
            client
                .subscribe("/pk/dev1/user/get", Q5::AtLeastOnce)
                .await
                .unwrap();
        }
        let mut got = Vec::new();
        let mut present = None;
        let _ = tokio::time::timeout(wait, async {
            loop {
                match ev.poll().await {
                    Ok(Event5::Incoming(P5::ConnAck(a))) => present = Some(a.session_present),
                    Ok(Event5::Incoming(P5::SubAck(_))) => return,
                    Ok(Event5::Incoming(P5::Publish(p))) => {
                        got.push(String::from_utf8_lossy(&p.payload).into_owned())
                    }
                    Ok(_) => {}
                    Err(e) => panic!("MQTT 5 connection failed: {e}"),
                }
            }
        })
        .await;
        client.disconnect().await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while ev.poll().await.is_ok() {}
        })
        .await;
        (present, got)
    };

    session(Some(600), true, Duration::from_secs(10)).await;
    wait_online(&api, false).await;
    let (status, v) = downlink(&api, "for-v5", 1).await;
    assert_eq!(status, 202, "{v}");
    let (present, got) = session(Some(600), false, Duration::from_secs(3)).await;
    assert_eq!(present, Some(true));
    assert_eq!(got, ["for-v5"]);

    // No expiry: the session ends with this connection.
    session(None, true, Duration::from_secs(10)).await;
    wait_online(&api, false).await;
    let (status, v) = downlink(&api, "nobody", 1).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("DeviceOffline")),
        "{v}"
    );
    sluice.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_jetstream_a_message_sent_through_one_process_waits_for_the_device_at_another() {
    // Proves the offline downlink on the JetStream store shared by two processes: a device's
    // persistent session saved through process a is seen by process b, so a downlink sent
    // through b while the device is away is kept (202) in the cluster, and the device finds it
    // when it reconnects to b, with its session present.
    use sluice_test_support::nats::LocalCluster;
    let cluster = LocalCluster::start(3, true);
    let (store, monitors) = (cluster.servers().join(","), cluster.monitors().join(","));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let start = |name: &str, node: &str| {
        Sluice::start(
            &dir.path().join(name),
            &[
                "--store",
                &store,
                "--nats-monitor",
                &monitors,
                "--node-id",
                node,
                "--config",
                &config,
            ],
        )
    };
    let a = start("a", "1");
    let b = start("b", "2");

    let (client, mut ev, _) = connect(device_options(a.mqtt_port, false)).await;
    subscribe(&client, &mut ev, "/pk/dev1/user/get").await;
    disconnect(client, ev).await;
    wait_online(&a.api(), false).await;

    let api_b = b.api();
    let kept = crate::push::wait_for(Duration::from_secs(15), async || {
        downlink(&api_b, "via-b", 1).await.0 == 202
    })
    .await;
    assert!(
        kept,
        "b learns of the session a saved and keeps the message"
    );

    let (_client, mut ev, present) = connect(device_options(b.mqtt_port, false)).await;
    assert!(present, "the session saved through a continues on b");
    let got = receive(&mut ev, 1, Duration::from_secs(10)).await;
    assert_eq!(got.first().map(|(_, p, _)| p.as_str()), Some("via-b"));
    a.stop();
    b.stop();
}

/// The SDK device: its stdin (a line stops it) and its events.
struct SdkDevice {
    child: std::process::Child,
    events: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

impl SdkDevice {
    async fn start(port: u16) -> SdkDevice {
        let plan = json!({"port": port, "product_key": "pk", "device_name": "dev1",
            "secret": SECRET, "timeout_s": 60});
        let mut child = Command::new("python3")
            .arg(RRPC_SCRIPT)
            .arg(plan.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run python3 (needs: pip install aliyun-iot-linkkit 'paho-mqtt<2')");
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let mut device = SdkDevice { child, events };
        device.wait_for("ready").await;
        device
    }

    async fn wait_for(&mut self, kind: &str) -> Value {
        loop {
            let event = tokio::time::timeout(Duration::from_secs(30), self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("no `{kind}` from the SDK device in time"))
                .unwrap_or_else(|| panic!("the SDK device ended before `{kind}`"));
            if event["event"] == kind {
                return event;
            }
        }
    }

    fn stop(mut self) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = writeln!(stdin, "stop");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_calls_are_answered_by_the_official_device_sdk() {
    // Proves RRPC end to end with aliyun-iot-linkkit: a system-topic call and a custom-topic
    // call (the SDK's own rrpc API) return the device's answers, through the API and the CLI;
    // an unanswered call ends in 504 Timeout; an offline device gets 409; a key without admin
    // rights gets 403; an out-of-range timeout is a 400 naming the field.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let sluice = Sluice::start(&dir.path().join("data"), &["--config", &config]);
    let api = sluice.api();
    let mut device = SdkDevice::start(sluice.mqtt_port).await;

    let (status, v) = api
        .post("/v1/devices/pk/dev1/rrpc", &json!({"body": "ping"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["body"], "pong:ping", "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["topic"], format!("/sys/pk/dev1/rrpc/request/{id}"));
    let seen = device.wait_for("request").await;
    assert_eq!(
        (seen["form"].as_str(), seen["id"].as_str()),
        (Some("sys"), Some(id.as_str()))
    );

    let (status, v) = api
        .post(
            "/v1/devices/pk/dev1/rrpc",
            &json!({"body": "hello", "topic": "user/get", "timeout_secs": 10}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["body"], "ext:hello", "{v}");
    assert!(
        v["topic"].as_str().unwrap().starts_with("/ext/rrpc/"),
        "{v}"
    );

    let out = sluice.cli_ok(&["device", "call", "pk", "dev1", "from-cli"]);
    assert_eq!(out.trim(), "pong:from-cli");

    let started = Instant::now();
    let (status, v) = api
        .post(
            "/v1/devices/pk/dev1/rrpc",
            &json!({"body": "anyone?", "topic": "user/silent", "timeout_secs": 1}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (504, Some("Timeout")),
        "{v}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    let (status, v) = api
        .post(
            "/v1/devices/pk/dev1/rrpc",
            &json!({"body": "x", "timeout_secs": 61}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["field"].as_str()),
        (400, Some("timeout_secs")),
        "{v}"
    );

    let (status, k) = api
        .post("/v1/keys", &json!({"name": "app", "allow": ["queues/q"]}))
        .await;
    assert_eq!(status, 201, "{k}");
    let key = format!(
        "{}:{}",
        k["id"].as_str().unwrap(),
        k["secret"].as_str().unwrap()
    );
    let r = reqwest::Client::new()
        .post(format!("{}/v1/devices/pk/dev1/rrpc", sluice.http))
        .bearer_auth(key)
        .json(&json!({"body": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    device.stop();
    wait_online(&api, false).await;
    let (status, v) = api
        .post("/v1/devices/pk/dev1/rrpc", &json!({"body": "ping"}))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("DeviceOffline")),
        "{v}"
    );
    assert_eq!(metric(&api, "sluice_mqtt_rrpc_answered_total").await, 3);
    assert_eq!(metric(&api, "sluice_mqtt_rrpc_timeouts_total").await, 1);
    sluice.stop();
}
