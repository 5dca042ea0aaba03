//! External broker mode against a real Mosquitto started on a free port, through the library's
//! ingest API (the bridge alone, without the rest of sluice).
//!
//! These tests need the `mosquitto` binary (`apt-get install -y mosquitto mosquitto-clients`);
//! without it they fail with a message saying so, they are never skipped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

use sluice::ingest::{ExternalBroker, ExternalConfig, ExternalHandle, Ingested};

const WAIT: Duration = Duration::from_secs(10);
const PROBE_TOPIC: &str = "/probe/probe/user/probe";

/// A Mosquitto process on 127.0.0.1:<free port>, killed on drop.
struct Mosquitto {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Mosquitto {
    fn start() -> Mosquitto {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("no free port")
            .port();
        let dir = std::env::temp_dir().join(format!(
            "sluice-ingest-mosquitto-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 10000\n"
            ),
        )
        .expect("write mosquitto.conf");
        let child = match Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "the external broker tests need Mosquitto, which is not installed: \
                 run `apt-get install -y mosquitto mosquitto-clients`"
            ),
            Err(e) => panic!("cannot start mosquitto: {e}"),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not start listening on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Mosquitto { child, port, dir }
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A plain client for publishing into (and subscribing on) the broker, like a device would.
async fn device(port: u16, id: &str) -> (AsyncClient, mpsc::Receiver<Event>) {
    let opts = MqttOptions::new(id, "127.0.0.1", port);
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(e) => {
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    (client, rx)
}

struct Running {
    handle: ExternalHandle,
    rx: mpsc::Receiver<Ingested>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

fn run_sluice(url: &str, client_id: &str, filters: &[&str]) -> Running {
    let mut cfg = ExternalConfig::new(url, client_id);
    cfg.filters = filters.iter().map(|f| f.to_string()).collect();
    cfg.shutdown_grace = Duration::from_millis(300);
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(500);
    let (broker, handle) = ExternalBroker::new(cfg).expect("valid config");
    let (sink, rx) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let task = tokio::spawn(broker.run(sink.into(), stop.clone()));
    Running {
        handle,
        rx,
        stop,
        task,
    }
}

impl Running {
    /// Publishes probes until one arrives, which proves the subscription is active.
    async fn wait_subscribed(&mut self, device: &AsyncClient) {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(
                Instant::now() < deadline,
                "subscription never became active"
            );
            device
                .publish(PROBE_TOPIC, QoS::AtMostOnce, false, "probe")
                .await
                .unwrap();
            if let Ok(Some(m)) = timeout(Duration::from_millis(100), self.rx.recv()).await {
                m.ack.commit();
                return;
            }
        }
    }

    /// The next message that is not a probe (probes are committed and skipped).
    async fn next_real(&mut self, within: Duration) -> Option<Ingested> {
        let deadline = Instant::now() + within;
        loop {
            let m = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()??;
            if m.message.topic == PROBE_TOPIC {
                m.ack.commit();
                continue;
            }
            return Some(m);
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        timeout(WAIT, self.task)
            .await
            .expect("external broker client did not stop")
            .unwrap();
    }
}

#[tokio::test]
async fn unacked_messages_are_redelivered_after_reconnect_and_acked_ones_are_not() {
    // Proves: a QoS 1 message reaches the sink; not committed, it is redelivered when sluice
    // reconnects with the same client id (clean session off); once committed, it is acked to
    // the broker and not delivered again.
    let mosq = Mosquitto::start();
    let (dev, _dev_ev) = device(mosq.port, "device-1").await;
    let filters = ["/+/+/user/#"];

    let mut first = run_sluice(&mosq.url(), "sluice-node-a", &filters);
    first.wait_subscribed(&dev).await;
    dev.publish("/pk/dev/user/update", QoS::AtLeastOnce, false, "m1")
        .await
        .unwrap();
    let held = first
        .next_real(WAIT)
        .await
        .expect("message reached the sink");
    assert_eq!(held.message.topic, "/pk/dev/user/update");
    assert_eq!(&held.message.payload[..], b"m1");
    assert_eq!(held.message.qos, 1);
    assert_eq!(&*held.message.client_id, "sluice-node-a");
    assert!(held.message.peer.is_none() && held.message.identity.is_none());
    // "Crash" before the commit: stop without resolving the ack.
    first.stop().await;
    drop(held);

    let mut second = run_sluice(&mosq.url(), "sluice-node-a", &filters);
    let again = second
        .next_real(WAIT)
        .await
        .expect("the unacked message was not redelivered");
    assert_eq!(&again.message.payload[..], b"m1");
    again.ack.commit();
    // Let the ack reach the broker before disconnecting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    second.stop().await;

    let mut third = run_sluice(&mosq.url(), "sluice-node-a", &filters);
    third.wait_subscribed(&dev).await;
    assert!(
        third.next_real(Duration::from_secs(1)).await.is_none(),
        "an acked message was delivered again"
    );
    third.stop().await;
}

#[tokio::test]
async fn a_rejected_message_comes_back() {
    // Proves: when the pipeline rejects, sluice does not ack and makes the broker resend.
    let mosq = Mosquitto::start();
    let (dev, _dev_ev) = device(mosq.port, "device-2").await;
    let mut node = run_sluice(&mosq.url(), "sluice-node-b", &["/+/+/user/#"]);
    node.wait_subscribed(&dev).await;
    dev.publish("/pk/dev/user/update", QoS::AtLeastOnce, false, "r1")
        .await
        .unwrap();
    let m = node.next_real(WAIT).await.expect("message");
    m.ack.reject("store unavailable");
    let again = node
        .next_real(WAIT)
        .await
        .expect("not redelivered after reject");
    assert_eq!(&again.message.payload[..], b"r1");
    again.ack.commit();
    node.stop().await;
}

#[tokio::test]
async fn filters_change_at_run_time_and_publish_goes_through_the_broker() {
    // Proves: add_filter / remove_filter change what reaches the sink while running, and
    // ExternalHandle::publish reaches a device subscribed at the broker.
    let mosq = Mosquitto::start();
    let (dev, mut dev_ev) = device(mosq.port, "device-3").await;
    let mut node = run_sluice(&mosq.url(), "sluice-node-c", &[]);
    assert!(node.handle.add_filter("a/#/b").await.is_err());
    node.handle.add_filter(PROBE_TOPIC).await.unwrap();
    node.handle.add_filter("rules/a/#").await.unwrap();
    assert_eq!(node.handle.filters(), [PROBE_TOPIC, "rules/a/#"]);
    node.wait_subscribed(&dev).await;

    dev.publish("rules/a/x", QoS::AtLeastOnce, false, "in")
        .await
        .unwrap();
    let m = node.next_real(WAIT).await.expect("message on added filter");
    assert_eq!(m.message.topic, "rules/a/x");
    m.ack.commit();

    node.handle.remove_filter("rules/a/#").await.unwrap();
    // The UNSUBACK is not observable through the handle; give the broker ample time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.wait_subscribed(&dev).await;
    dev.publish("rules/a/y", QoS::AtLeastOnce, false, "gone")
        .await
        .unwrap();
    assert!(
        node.next_real(Duration::from_millis(700)).await.is_none(),
        "a removed filter still delivers"
    );

    dev.subscribe("down/#", QoS::AtLeastOnce).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Ok(Some(Event::Incoming(Packet::SubAck(_)))) =
            timeout(Duration::from_millis(100), dev_ev.recv()).await
        {
            break;
        }
    }
    node.handle
        .publish("down/dev-3", Bytes::from_static(b"cmd"), 1)
        .await
        .unwrap();
    let got = loop {
        match timeout(WAIT, dev_ev.recv()).await {
            Ok(Some(Event::Incoming(Packet::Publish(p)))) => break p,
            Ok(Some(_)) => continue,
            other => panic!("device got no downlink: {other:?}"),
        }
    };
    assert_eq!(got.topic, "down/dev-3");
    assert_eq!(&got.payload[..], b"cmd");
    node.stop().await;
}
