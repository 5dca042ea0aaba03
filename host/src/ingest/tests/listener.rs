//! Listener tests over real sockets on 127.0.0.1, with real `rumqttc` clients (3.1.1 and 5)
//! and raw byte streams for what a well-behaved client never sends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4 as p4;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

use crate::ingest::{
    ConnectInfo, ConnectPolicy, ConnectRefusal, DeviceIdentity, IngestCounters, Ingested,
    ListenerConfig, MqttListener, SessionInfo, SessionRouter,
};

const WAIT: Duration = Duration::from_secs(5);

struct Harness {
    addr: SocketAddr,
    sink_rx: mpsc::Receiver<Ingested>,
    router: SessionRouter,
    counters: Arc<IngestCounters>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

async fn start(cfg: ListenerConfig, sink_capacity: usize) -> Harness {
    let listener = MqttListener::bind("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let router = listener.router();
    let counters = listener.counters();
    let (sink, sink_rx) = mpsc::channel(sink_capacity);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(listener.run(sink.into(), shutdown.clone()));
    Harness {
        addr,
        sink_rx,
        router,
        counters,
        shutdown,
        task,
    }
}

async fn recv(h: &mut Harness) -> Ingested {
    timeout(WAIT, h.sink_rx.recv())
        .await
        .expect("no message reached the sink in time")
        .expect("sink closed")
}

/// What a client's event loop reported.
#[derive(Debug)]
enum Ev<E> {
    Event(E),
    Error(String),
}

/// A 3.1.1 client whose event loop runs in a task and reports into a channel; after an error
/// it reconnects (polling again) like a device would.
fn v4_client(addr: SocketAddr, id: &str, clean: bool) -> (AsyncClient, mpsc::Receiver<Ev<Event>>) {
    let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_clean_session(clean)
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        loop {
            let ev = match eventloop.poll().await {
                Ok(e) => Ev::Event(e),
                Err(e) => Ev::Error(e.to_string()),
            };
            let failed = matches!(ev, Ev::Error(_));
            if tx.send(ev).await.is_err() {
                return;
            }
            if failed {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    (client, rx)
}

/// Waits for the first event `f` maps to `Some`, skipping the others.
async fn wait_for<E: std::fmt::Debug, T>(
    rx: &mut mpsc::Receiver<Ev<E>>,
    within: Duration,
    mut f: impl FnMut(&Ev<E>) -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv()).await.ok()??;
        if let Some(t) = f(&ev) {
            return Some(t);
        }
    }
}

fn puback_v4(ev: &Ev<Event>) -> Option<u16> {
    match ev {
        Ev::Event(Event::Incoming(Packet::PubAck(a))) => Some(a.pkid),
        _ => None,
    }
}

async fn connected_v4(rx: &mut mpsc::Receiver<Ev<Event>>) {
    wait_for(rx, WAIT, |ev| match ev {
        Ev::Event(Event::Incoming(Packet::ConnAck(a))) => Some(a.code),
        _ => None,
    })
    .await
    .expect("no CONNACK");
}

/// Raw CONNECT (3.1.1) for tests that must control every byte.
async fn raw_connect(addr: SocketAddr, id: &str, clean: bool, keep_alive: u16) -> (TcpStream, u8) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut connect = p4::Connect::new(id);
    connect.clean_session = clean;
    connect.keep_alive = keep_alive;
    let mut buf = BytesMut::new();
    connect.write(&mut buf).unwrap();
    stream.write_all(&buf).await.unwrap();
    let mut connack = [0u8; 4];
    timeout(WAIT, stream.read_exact(&mut connack))
        .await
        .expect("no CONNACK")
        .unwrap();
    assert_eq!(connack[0], 0x20, "expected a CONNACK, got {connack:?}");
    (stream, connack[3])
}

/// True when the server closes the stream within `within` (reads until EOF or error).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn puback_waits_for_the_commit_and_keeps_arrival_order() {
    // Proves: no PUBACK before the sink's ack resolves, and PUBACKs leave in PUBLISH order even
    // when commits finish out of order.
    let mut h = start(ListenerConfig::default(), 64).await;
    let (client, mut ev) = v4_client(h.addr, "dev-order", true);
    connected_v4(&mut ev).await;
    for i in 0..3u8 {
        client
            .publish(
                format!("/pk/dev/user/{i}"),
                QoS::AtLeastOnce,
                false,
                vec![i],
            )
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(recv(&mut h).await);
    }
    let topics: Vec<&str> = got.iter().map(|g| g.message.topic.as_str()).collect();
    assert_eq!(
        topics,
        ["/pk/dev/user/0", "/pk/dev/user/1", "/pk/dev/user/2"]
    );
    assert_eq!(got[0].message.qos, 1);
    assert_eq!(&*got[0].message.client_id, "dev-order");
    assert!(got[0].message.peer.is_some());
    assert!(got[0].message.received_at_ms > 0);

    let early = Duration::from_millis(400);
    assert_eq!(
        wait_for(&mut ev, early, puback_v4).await,
        None,
        "PUBACK before commit"
    );
    let mut got = got.into_iter();
    let (first, second, third) = (
        got.next().unwrap(),
        got.next().unwrap(),
        got.next().unwrap(),
    );
    third.ack.commit();
    second.ack.commit();
    assert_eq!(
        wait_for(&mut ev, early, puback_v4).await,
        None,
        "later commits must wait behind the first"
    );
    first.ack.commit();
    let mut acks = Vec::new();
    for _ in 0..3 {
        acks.push(wait_for(&mut ev, WAIT, puback_v4).await.expect("PUBACK"));
    }
    assert_eq!(acks, [1, 2, 3]);
    assert_eq!(h.counters.snapshot().acks_total, 3);
    assert_eq!(h.counters.snapshot().publishes_in_total, 3);
    h.shutdown.cancel();
    timeout(WAIT, h.task).await.unwrap().unwrap();
}

#[tokio::test]
async fn v311_rejection_closes_without_ack_and_the_device_resends() {
    // Proves: a rejected QoS 1 publish is never acked to a 3.1.1 device; the connection closes
    // and the device (clean session off) resends it after reconnecting.
    let mut h = start(ListenerConfig::default(), 64).await;
    let (client, mut ev) = v4_client(h.addr, "dev-reject", false);
    connected_v4(&mut ev).await;
    client
        .publish("/pk/dev/user/update", QoS::AtLeastOnce, false, "t=1")
        .await
        .unwrap();
    let first = recv(&mut h).await;
    first.ack.reject("disk full");
    let saw = wait_for(&mut ev, WAIT, |e| match e {
        Ev::Error(_) => Some(false),
        Ev::Event(Event::Incoming(Packet::PubAck(_))) => Some(true),
        _ => None,
    })
    .await;
    assert_eq!(
        saw,
        Some(false),
        "expected the connection to close, not a PUBACK"
    );

    let again = recv(&mut h).await;
    assert_eq!(again.message.topic, "/pk/dev/user/update");
    assert_eq!(&again.message.payload[..], b"t=1");
    again.ack.commit();
    assert_eq!(wait_for(&mut ev, WAIT, puback_v4).await, Some(1));
    assert_eq!(h.counters.snapshot().rejected_total, 1);
}

#[tokio::test]
async fn dropping_the_ack_counts_as_rejection() {
    // Proves: an Ack dropped by the pipeline is never read as a commit.
    let mut h = start(ListenerConfig::default(), 64).await;
    let (client, mut ev) = v4_client(h.addr, "dev-drop", true);
    connected_v4(&mut ev).await;
    client
        .publish("a/b", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    drop(recv(&mut h).await);
    let saw = wait_for(&mut ev, WAIT, |e| match e {
        Ev::Error(_) => Some(false),
        Ev::Event(Event::Incoming(Packet::PubAck(_))) => Some(true),
        _ => None,
    })
    .await;
    assert_eq!(saw, Some(false));
}

#[tokio::test]
async fn v5_client_gets_positive_and_negative_pubacks() {
    // Proves: MQTT 5 works end to end, a rejection becomes PUBACK 0x80 and the session goes on,
    // and the CONNACK announces our receive maximum.
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason};
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Opts5};

    let mut h = start(ListenerConfig::default(), 64).await;
    let opts = Opts5::new("dev-v5", h.addr.ip().to_string(), h.addr.port());
    let (client, mut eventloop) = Client5::new(opts, 16);
    let (tx, mut ev) = mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            let e = match eventloop.poll().await {
                Ok(e) => Ev::Event(e),
                Err(e) => Ev::Error(e.to_string()),
            };
            let failed = matches!(e, Ev::Error(_));
            if tx.send(e).await.is_err() || failed {
                return;
            }
        }
    });
    let receive_max = wait_for(&mut ev, WAIT, |e| match e {
        Ev::Event(Event5::Incoming(P5::ConnAck(a))) => {
            Some(a.properties.as_ref().and_then(|p| p.receive_max))
        }
        _ => None,
    })
    .await
    .expect("CONNACK");
    assert_eq!(
        receive_max,
        Some(crate::ingest::listener::DEFAULT_MAX_INFLIGHT)
    );

    let puback5 = |e: &Ev<Event5>| match e {
        Ev::Event(Event5::Incoming(P5::PubAck(a))) => Some((a.pkid, a.reason)),
        Ev::Error(err) => panic!("v5 connection failed: {err}"),
        _ => None,
    };
    for i in 0..2u8 {
        client
            .publish(format!("/pk/dev/user/{i}"), Q5::AtLeastOnce, false, vec![i])
            .await
            .unwrap();
    }
    let a = recv(&mut h).await;
    let b = recv(&mut h).await;
    assert_eq!(
        wait_for(&mut ev, Duration::from_millis(300), puback5).await,
        None
    );
    b.ack.reject("store unavailable");
    a.ack.commit();
    assert_eq!(
        wait_for(&mut ev, WAIT, puback5).await,
        Some((1, PubAckReason::Success))
    );
    assert_eq!(
        wait_for(&mut ev, WAIT, puback5).await,
        Some((2, PubAckReason::UnspecifiedError))
    );
    client
        .publish("/pk/dev/user/2", Q5::AtLeastOnce, false, vec![2])
        .await
        .unwrap();
    recv(&mut h).await.ack.commit();
    assert_eq!(
        wait_for(&mut ev, WAIT, puback5).await,
        Some((3, PubAckReason::Success))
    );
}

#[tokio::test]
async fn v5_empty_client_id_is_assigned_and_takeover_says_why() {
    // Proves: an MQTT 5 client without a client id learns the generated one from the CONNACK,
    // and a session taken over by a second connection gets DISCONNECT 0x8E.
    use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet as P5};
    use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Opts5};

    let h = start(ListenerConfig::default(), 64).await;
    let (_anon, mut anon_loop) = Client5::new(Opts5::new("", "127.0.0.1", h.addr.port()), 4);
    match timeout(WAIT, anon_loop.poll()).await.unwrap() {
        Ok(Event5::Incoming(P5::ConnAck(a))) => {
            let assigned = a.properties.and_then(|p| p.assigned_client_identifier);
            assert!(assigned.is_some_and(|id| id.starts_with("sluice-")));
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }

    let (_a, mut first) = Client5::new(Opts5::new("dev-twice", "127.0.0.1", h.addr.port()), 4);
    assert!(matches!(
        timeout(WAIT, first.poll()).await.unwrap(),
        Ok(Event5::Incoming(P5::ConnAck(_)))
    ));
    let (_b, mut second) = Client5::new(Opts5::new("dev-twice", "127.0.0.1", h.addr.port()), 4);
    assert!(matches!(
        timeout(WAIT, second.poll()).await.unwrap(),
        Ok(Event5::Incoming(P5::ConnAck(_)))
    ));
    let reason = loop {
        match timeout(WAIT, first.poll()).await.unwrap() {
            Ok(Event5::Incoming(P5::Disconnect(d))) => break Some(d.reason_code),
            Ok(_) => continue,
            Err(rumqttc::v5::ConnectionError::MqttState(
                rumqttc::v5::StateError::ServerDisconnect { reason_code, .. },
            )) => break Some(reason_code),
            Err(e) => panic!("expected DISCONNECT, got {e}"),
        }
    };
    assert_eq!(reason, Some(DisconnectReasonCode::SessionTakenOver));
}

#[tokio::test]
async fn garbage_closes_only_that_connection() {
    // Proves: garbage bytes, a first packet that is not CONNECT and a malformed packet after
    // CONNECT each close their own connection, while another client keeps working.
    let mut h = start(ListenerConfig::default(), 64).await;
    let (client, mut ev) = v4_client(h.addr, "dev-good", true);
    connected_v4(&mut ev).await;

    let mut garbage = TcpStream::connect(h.addr).await.unwrap();
    garbage
        .write_all(b"\xff\xff\xff\xffGET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut garbage, WAIT).await);

    let mut ping_first = TcpStream::connect(h.addr).await.unwrap();
    ping_first.write_all(&[0xC0, 0x00]).await.unwrap();
    assert!(closed_within(&mut ping_first, WAIT).await);

    let (mut bad_after_connect, code) = raw_connect(h.addr, "dev-bad", true, 30).await;
    assert_eq!(code, 0);
    // PUBLISH QoS 1 whose topic length runs past the packet end.
    bad_after_connect
        .write_all(&[0x32, 0x04, 0x00, 0x40, b'a', b'b'])
        .await
        .unwrap();
    assert!(closed_within(&mut bad_after_connect, WAIT).await);

    let mut too_big = TcpStream::connect(h.addr).await.unwrap();
    too_big
        .write_all(&[0x10, 0xff, 0xff, 0xff, 0x7f])
        .await
        .unwrap();
    assert!(closed_within(&mut too_big, WAIT).await);

    client
        .publish("still/works", QoS::AtLeastOnce, false, "ok")
        .await
        .unwrap();
    recv(&mut h).await.ack.commit();
    assert_eq!(wait_for(&mut ev, WAIT, puback_v4).await, Some(1));
    assert!(h.counters.snapshot().malformed_total >= 4);
}

#[tokio::test]
async fn subscribed_sessions_receive_router_publishes() {
    // Proves: SUBSCRIBE + SessionRouter::publish delivers to the subscribed device, QoS 1
    // downlink is acked by the device (its in-flight window frees), and others get nothing.
    let h = start(ListenerConfig::default(), 64).await;
    let (client, mut ev) = v4_client(h.addr, "dev-sub", true);
    connected_v4(&mut ev).await;
    let (_other, mut other_ev) = v4_client(h.addr, "dev-other", true);
    connected_v4(&mut other_ev).await;
    client
        .subscribe("/pk/dev/user/get", QoS::AtLeastOnce)
        .await
        .unwrap();
    let codes = wait_for(&mut ev, WAIT, |e| match e {
        Ev::Event(Event::Incoming(Packet::SubAck(s))) => Some(s.return_codes.clone()),
        _ => None,
    })
    .await
    .expect("SUBACK");
    assert_eq!(
        codes,
        [rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    // More than the per-session downlink in-flight window, so acks must free it.
    let n = usize::from(crate::ingest::listener::DEFAULT_DOWNLINK_INFLIGHT) * 2 + 5;
    let mut received = 0;
    for i in 0..n {
        let delivered = h
            .router
            .publish("/pk/dev/user/get", Bytes::from(format!("cmd-{i}")), 1);
        assert_eq!(delivered, 1);
        let payload = wait_for(&mut ev, WAIT, |e| match e {
            Ev::Event(Event::Incoming(Packet::Publish(p))) => Some(p.payload.clone()),
            _ => None,
        })
        .await
        .expect("downlink publish");
        assert_eq!(payload, Bytes::from(format!("cmd-{i}")));
        received += 1;
    }
    assert_eq!(received, n);
    assert_eq!(h.router.publish("/pk/dev/user/other", Bytes::new(), 0), 0);
    let stray = wait_for(&mut other_ev, Duration::from_millis(200), |e| match e {
        Ev::Event(Event::Incoming(Packet::Publish(_))) => Some(()),
        _ => None,
    })
    .await;
    assert!(stray.is_none(), "an unsubscribed session got a message");
}

struct TestPolicy;

impl ConnectPolicy for TestPolicy {
    fn on_connect(&self, info: &ConnectInfo) -> Result<Option<DeviceIdentity>, ConnectRefusal> {
        match info.username.as_deref() {
            Some("bad") => Err(ConnectRefusal::BadCredentials),
            Some("dev") => Ok(Some(DeviceIdentity {
                product_key: "pk".into(),
                device_name: "dev".into(),
            })),
            _ => Ok(None),
        }
    }
    fn may_publish(&self, _session: &SessionInfo, topic: &str) -> bool {
        !topic.starts_with("forbidden")
    }
    fn may_subscribe(&self, _session: &SessionInfo, filter: &str) -> bool {
        !filter.starts_with("forbidden")
    }
}

#[tokio::test]
async fn policy_decides_connack_publish_and_subscribe() {
    // Proves: refused CONNECTs get the right CONNACK code, the identity reaches the message,
    // refused filters get 0x80 in the SUBACK, refused 3.1.1 publishes close the connection.
    let cfg = ListenerConfig {
        policy: Arc::new(TestPolicy),
        ..ListenerConfig::default()
    };
    let mut h = start(cfg, 64).await;

    let mut opts = MqttOptions::new("dev-bad", h.addr.ip().to_string(), h.addr.port());
    opts.set_credentials("bad", "pw");
    let (_c, mut bad_loop) = AsyncClient::new(opts, 4);
    match timeout(WAIT, bad_loop.poll()).await.unwrap() {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, p4::ConnectReturnCode::BadUserNamePassword)
        }
        other => panic!("expected a refused CONNACK, got {other:?}"),
    }
    assert_eq!(h.counters.snapshot().connects_refused_total, 1);

    let mut opts = MqttOptions::new("dev-ok", h.addr.ip().to_string(), h.addr.port());
    opts.set_credentials("dev", "pw");
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    let (tx, mut ev) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let e = match eventloop.poll().await {
                Ok(e) => Ev::Event(e),
                Err(e) => Ev::Error(e.to_string()),
            };
            let failed = matches!(e, Ev::Error(_));
            if tx.send(e).await.is_err() || failed {
                return;
            }
        }
    });
    connected_v4(&mut ev).await;
    client
        .subscribe_many([
            rumqttc::SubscribeFilter::new("/pk/dev/user/get".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("forbidden/#".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("/pk/dev/#".into(), QoS::ExactlyOnce),
        ])
        .await
        .unwrap();
    let codes = wait_for(&mut ev, WAIT, |e| match e {
        Ev::Event(Event::Incoming(Packet::SubAck(s))) => Some(s.return_codes.clone()),
        _ => None,
    })
    .await
    .expect("SUBACK");
    use rumqttc::SubscribeReasonCode as R;
    assert_eq!(
        codes,
        [
            R::Success(QoS::AtLeastOnce),
            R::Failure,
            R::Success(QoS::AtLeastOnce)
        ]
    );

    // A signed-in device's session starts with its online status message.
    let online = recv(&mut h).await;
    assert_eq!(online.message.topic, "/as/mqtt/status/pk/dev");
    assert!(!online.ack.is_awaited(), "status messages are QoS 0");
    client
        .publish("/pk/dev/user/update", QoS::AtLeastOnce, false, "{}")
        .await
        .unwrap();
    let m = recv(&mut h).await;
    assert_eq!(
        m.message.identity,
        Some(DeviceIdentity {
            product_key: "pk".into(),
            device_name: "dev".into()
        })
    );
    m.ack.commit();
    // (packet id 1 went to the SUBSCRIBE)
    assert!(wait_for(&mut ev, WAIT, puback_v4).await.is_some());

    client
        .publish("forbidden/x", QoS::AtLeastOnce, false, "{}")
        .await
        .unwrap();
    let closed = wait_for(&mut ev, WAIT, |e| match e {
        Ev::Error(_) => Some(true),
        Ev::Event(Event::Incoming(Packet::PubAck(_))) => Some(false),
        _ => None,
    })
    .await;
    assert_eq!(closed, Some(true));
    // Only the device's offline status message may follow, never the refused publish.
    while let Ok(m) = h.sink_rx.try_recv() {
        assert_eq!(
            m.message.topic, "/as/mqtt/status/pk/dev",
            "a refused publish reached the sink"
        );
    }
    assert!(h.counters.snapshot().refused_total >= 2);
}

#[tokio::test]
async fn keep_alive_expiry_closes_a_silent_connection() {
    // Proves: a device silent for 1.5 x its keep-alive is disconnected (and not much earlier).
    let h = start(ListenerConfig::default(), 64).await;
    let started = Instant::now();
    let (mut stream, code) = raw_connect(h.addr, "dev-silent", true, 1).await;
    assert_eq!(code, 0);
    assert!(closed_within(&mut stream, WAIT).await);
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(1400),
        "closed too early: {after:?}"
    );
    assert_eq!(h.counters.snapshot().keepalive_timeouts_total, 1);

    // A device that pings stays connected past the same deadline.
    let (mut pinging, _) = raw_connect(h.addr, "dev-ping", true, 1).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        pinging.write_all(&[0xC0, 0x00]).await.unwrap();
        let mut resp = [0u8; 2];
        timeout(WAIT, pinging.read_exact(&mut resp))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp, [0xD0, 0x00]);
    }
}

#[tokio::test]
async fn client_ids_empty_generated_and_taken_over() {
    // Proves: an empty client id with clean session gets a generated one, without clean
    // session it is refused (0x02), and a second connection with the same id closes the first.
    let mut h = start(ListenerConfig::default(), 64).await;
    let (mut anon, code) = raw_connect(h.addr, "", true, 30).await;
    assert_eq!(code, 0);
    anon.write_all(&[0x30, 0x05, 0x00, 0x01, b't', b'h', b'i'])
        .await
        .unwrap();
    let m = recv(&mut h).await;
    assert!(
        m.message.client_id.starts_with("sluice-"),
        "{}",
        m.message.client_id
    );
    assert_eq!(m.message.qos, 0);

    let (_refused, code) = raw_connect(h.addr, "", false, 30).await;
    assert_eq!(code, 0x02);

    let (mut first, _) = raw_connect(h.addr, "same-id", true, 30).await;
    let (mut second, code) = raw_connect(h.addr, "same-id", true, 30).await;
    assert_eq!(code, 0);
    assert!(
        closed_within(&mut first, WAIT).await,
        "old session not closed"
    );
    second.write_all(&[0xC0, 0x00]).await.unwrap();
    let mut resp = [0u8; 2];
    timeout(WAIT, second.read_exact(&mut resp))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp, [0xD0, 0x00], "new session works");
}

#[tokio::test]
async fn in_flight_bound_pauses_reading() {
    // Proves: with max_inflight = 4 only 4 unacked publishes reach the sink; commits let the
    // rest through (back-pressure reaches the device instead of memory).
    let cfg = ListenerConfig {
        max_inflight: 4,
        ..ListenerConfig::default()
    };
    let mut h = start(cfg, 64).await;
    let (client, mut ev) = v4_client(h.addr, "dev-burst", true);
    connected_v4(&mut ev).await;
    for i in 0..10u8 {
        client
            .publish("burst", QoS::AtLeastOnce, false, vec![i])
            .await
            .unwrap();
    }
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(recv(&mut h).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.sink_rx.try_recv().is_err(), "more than 4 in flight");
    for m in held.drain(..) {
        m.ack.commit();
    }
    let mut rest = 0;
    while rest < 6 {
        recv(&mut h).await.ack.commit();
        rest += 1;
    }
    let mut acks = Vec::new();
    for _ in 0..10 {
        acks.push(wait_for(&mut ev, WAIT, puback_v4).await.expect("PUBACK"));
    }
    assert_eq!(acks, (1..=10).collect::<Vec<u16>>());
}

#[tokio::test]
async fn full_sink_stalls_the_reader_without_losing_messages() {
    // Proves: with a sink of capacity 1, publishes wait for room and all arrive in order.
    let mut h = start(ListenerConfig::default(), 1).await;
    let (client, mut ev) = v4_client(h.addr, "dev-slow", true);
    connected_v4(&mut ev).await;
    for i in 0..20u8 {
        client
            .publish("slow", QoS::AtLeastOnce, false, vec![i])
            .await
            .unwrap();
    }
    for i in 0..20u8 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let m = recv(&mut h).await;
        assert_eq!(&m.message.payload[..], &[i]);
        m.ack.commit();
    }
    for pkid in 1..=20u16 {
        assert_eq!(wait_for(&mut ev, WAIT, puback_v4).await, Some(pkid));
    }
}

#[tokio::test]
async fn shutdown_waits_for_pending_acks_then_closes() {
    // Proves: on shutdown a commit that lands within the grace period is still acked, then the
    // session and the listener close and new connections are refused. (Raw bytes: a client
    // library may drop an event that arrives together with the close.)
    let mut h = start(ListenerConfig::default(), 64).await;
    let (mut stream, code) = raw_connect(h.addr, "dev-shutdown", true, 30).await;
    assert_eq!(code, 0);
    // PUBLISH QoS 1, topic "bye", packet id 7, payload "last"
    stream
        .write_all(&[
            0x32, 0x0b, 0x00, 0x03, b'b', b'y', b'e', 0x00, 0x07, b'l', b'a', b's', b't',
        ])
        .await
        .unwrap();
    let m = recv(&mut h).await;
    assert_eq!(&m.message.payload[..], b"last");
    h.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    m.ack.commit();
    let mut puback = [0u8; 4];
    timeout(WAIT, stream.read_exact(&mut puback))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(puback, [0x40, 0x02, 0x00, 0x07]);
    assert!(closed_within(&mut stream, WAIT).await);
    timeout(WAIT, h.task).await.unwrap().unwrap();
    assert!(TcpStream::connect(h.addr).await.is_err(), "still accepting");
}

#[tokio::test]
async fn shutdown_grace_bounds_the_wait_for_commits() {
    // Proves: a commit that never comes delays shutdown by at most the grace period, and the
    // message stays unacked (the device resends it to the next process).
    let cfg = ListenerConfig {
        shutdown_grace: Duration::from_millis(300),
        ..ListenerConfig::default()
    };
    let mut h = start(cfg, 64).await;
    let (mut stream, _) = raw_connect(h.addr, "dev-stuck", true, 30).await;
    stream
        .write_all(&[0x32, 0x06, 0x00, 0x01, b'x', 0x00, 0x01, b'p'])
        .await
        .unwrap();
    let held = recv(&mut h).await;
    let started = Instant::now();
    h.shutdown.cancel();
    timeout(WAIT, h.task).await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    let mut rest = Vec::new();
    let _ = timeout(WAIT, stream.read_to_end(&mut rest)).await;
    assert!(
        rest.is_empty(),
        "nothing may be acked without a commit: {rest:?}"
    );
    drop(held);
}

#[tokio::test]
async fn qos2_pubrec_after_commit_dedupes_until_pubrel() {
    // Proves: QoS 2 gets PUBREC only after the commit, a resent PUBLISH with the same packet id
    // is answered without reaching the sink twice, PUBREL gets PUBCOMP, and after the release
    // the packet id starts a new message.
    let mut h = start(ListenerConfig::default(), 64).await;
    let (mut stream, _) = raw_connect(h.addr, "dev-qos2", true, 30).await;
    // PUBLISH QoS 2, topic "q2", packet id 5, payload "a"; DUP variant has 0x3C
    let publish = [0x34, 0x07, 0x00, 0x02, b'q', b'2', 0x00, 0x05, b'a'];
    stream.write_all(&publish).await.unwrap();
    let m = recv(&mut h).await;
    assert_eq!(m.message.qos, 2);
    let mut buf = [0u8; 4];
    assert!(
        timeout(Duration::from_millis(300), stream.read_exact(&mut buf))
            .await
            .is_err(),
        "PUBREC before commit"
    );
    m.ack.commit();
    timeout(WAIT, stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(buf, [0x50, 0x02, 0x00, 0x05]);

    let mut dup = publish;
    dup[0] = 0x3C;
    stream.write_all(&dup).await.unwrap();
    timeout(WAIT, stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        buf,
        [0x50, 0x02, 0x00, 0x05],
        "duplicate answered with PUBREC"
    );
    assert!(h.sink_rx.try_recv().is_err(), "duplicate reached the sink");

    stream.write_all(&[0x62, 0x02, 0x00, 0x05]).await.unwrap();
    timeout(WAIT, stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(buf, [0x70, 0x02, 0x00, 0x05]);

    stream.write_all(&publish).await.unwrap();
    let again = recv(&mut h).await;
    assert_eq!(
        &again.message.payload[..],
        b"a",
        "a released id starts a new message"
    );
    again.ack.commit();
    timeout(WAIT, stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(buf, [0x50, 0x02, 0x00, 0x05]);
}

#[tokio::test]
async fn a_port_in_use_is_a_clear_error() {
    // Proves: binding a taken port fails at start with the address in the message.
    let h = start(ListenerConfig::default(), 1).await;
    let err = MqttListener::bind(h.addr, ListenerConfig::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&h.addr.to_string()), "{err}");
}
