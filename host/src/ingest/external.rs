//! External broker mode: sluice as a client of an existing MQTT broker (Mosquitto, EMQX, ...).
//!
//! Selected with `--mqtt-url mqtt://host:port`. The client speaks MQTT 5 with manual acks, clean
//! start off, a session that never expires and a stable client id, so whatever sluice received
//! but never acknowledged is sent again by the broker after a restart or reconnect: duplicates
//! are possible, loss is not.
//!
//! With a share group (`--mqtt-share-group G`) every filter is subscribed as the MQTT 5 shared
//! subscription `$share/G/filter`: several sluice processes, each with its own client id, then
//! split the broker's traffic so each message is handled by one of them.
//!
//! Shape (rumqttc's `async_manual_acks` pattern): one task polls the event loop and hands each
//! publish to the bounded sink (waiting there is the back-pressure that reaches the broker); a
//! second task waits for the acks in arrival order and acknowledges to the broker only after the
//! pipeline committed. Errors reconnect with exponential backoff and jitter.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::Outgoing;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::counters::{bump, IngestCounters};
use super::{now_ms, Ack, AckOutcome, IngestError, IngestMessage, IngestSink, Ingested};
use crate::topic::{validate_filter, validate_topic};

/// Default keep-alive with the broker; long enough that a briefly stalled pipeline (the poll
/// task waits on the sink) does not make the broker drop us.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(60);
/// Default capacity of rumqttc's request channel (acks, subscribes, publishes to the broker).
pub const DEFAULT_REQUEST_CAPACITY: usize = 4096;
/// Acks waiting for the pipeline. A broker cannot have more than 65,535 unacked QoS 1/2
/// messages out to one client (packet ids), so in practice the poll task never waits here.
const ACK_QUEUE_LEN: usize = 65_536;
/// How long the ack task retries a full request channel before giving the ack up (the broker
/// then resends the message after the next reconnect: a duplicate, not a loss).
const ACK_RETRY_BUDGET: Duration = Duration::from_secs(5);
/// MQTT 5's "the session never expires": what MQTT 3.1.1's clean session off meant, so the
/// broker keeps queueing QoS 1 messages for sluice while it is down.
const SESSION_NEVER_EXPIRES: u32 = u32::MAX;

/// How to reach and use the external broker.
#[derive(Debug, Clone)]
pub struct ExternalConfig {
    /// `mqtt://host:port` (port defaults to 1883; `tcp://` is accepted too).
    pub url: String,
    /// Stable across restarts (so the broker keeps the session) and distinct per process.
    pub client_id: String,
    /// Topic filters to subscribe to at QoS 1 from the start (more can be added at run time).
    pub filters: Vec<String>,
    /// The shared-subscription group: filters are subscribed as `$share/{group}/{filter}`, so
    /// the processes of one group split the traffic. `None`: every process gets every message.
    pub share_group: Option<String>,
    /// Keep-alive with the broker.
    pub keep_alive: Duration,
    /// Optional user name and password.
    pub credentials: Option<(String, String)>,
    /// First reconnect delay; doubles per failed attempt.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Largest packet accepted from the broker (remaining length).
    pub max_packet_size_bytes: usize,
    /// Capacity of the request channel to the event loop.
    pub request_capacity: usize,
    /// On shutdown, how long to keep the connection up so pending commits can still be acked.
    pub shutdown_grace: Duration,
}

impl ExternalConfig {
    /// A config with the defaults for everything but the URL and client id.
    pub fn new(url: impl Into<String>, client_id: impl Into<String>) -> ExternalConfig {
        ExternalConfig {
            url: url.into(),
            client_id: client_id.into(),
            filters: Vec::new(),
            share_group: None,
            keep_alive: DEFAULT_KEEP_ALIVE,
            credentials: None,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            max_packet_size_bytes: super::listener::DEFAULT_MAX_PACKET_SIZE_BYTES,
            request_capacity: DEFAULT_REQUEST_CAPACITY,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Splits `mqtt://host[:port]` into host and port.
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16), IngestError> {
    let bad = |reason: &str| IngestError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(|| {
            if url.starts_with("mqtts://") || url.starts_with("ssl://") {
                bad("TLS to the broker is not supported yet")
            } else {
                bad("expected mqtt://host:port")
            }
        })?;
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err(bad(
            "only mqtt://host:port is supported (no path, user or query)",
        ));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        (host, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let port = match port {
        None => 1883,
        Some(p) => p.parse::<u16>().map_err(|_| bad("invalid port"))?,
    };
    if port == 0 {
        return Err(bad("invalid port"));
    }
    Ok((host.to_owned(), port))
}

/// Checks a shared-subscription group name: MQTT 5 forbids `/`, `+` and `#` in it.
pub fn validate_share_group(group: &str) -> Result<(), IngestError> {
    let bad = |reason: &str| IngestError::BadShareGroup {
        group: group.to_owned(),
        reason: reason.to_owned(),
    };
    if group.is_empty() {
        return Err(bad("it is empty"));
    }
    if group.contains(['/', '+', '#']) {
        return Err(bad("it may not contain '/', '+' or '#'"));
    }
    if group.contains('\0') {
        return Err(bad("it may not contain a NUL character"));
    }
    Ok(())
}

/// The filters sluice wants and the form they take at the broker (shared or not).
#[derive(Debug)]
struct Subscriptions {
    filters: BTreeSet<String>,
    share_group: Option<String>,
}

impl Subscriptions {
    /// The filter as subscribed at the broker.
    fn at_broker(&self, filter: &str) -> String {
        match &self.share_group {
            Some(group) => format!("$share/{group}/{filter}"),
            None => filter.to_owned(),
        }
    }
}

/// The broker client before it runs. [`ExternalBroker::run`] polls it until shutdown.
pub struct ExternalBroker {
    client: AsyncClient,
    eventloop: EventLoop,
    cfg: ExternalConfig,
    client_id: Arc<str>,
    subscriptions: Arc<Mutex<Subscriptions>>,
    counters: Arc<IngestCounters>,
}

impl std::fmt::Debug for ExternalBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalBroker")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// Lets the rest of sluice change the subscriptions as rules start and stop, and publish
/// downlink / republish messages through the broker. Cheap to clone.
#[derive(Clone)]
pub struct ExternalHandle {
    client: AsyncClient,
    subscriptions: Arc<Mutex<Subscriptions>>,
}

impl std::fmt::Debug for ExternalHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalHandle")
            .field("filters", &self.filters())
            .finish()
    }
}

impl ExternalHandle {
    /// Subscribes to `filter` at QoS 1 (now and after every reconnect), shared within the
    /// share group if there is one. Adding a filter twice is harmless.
    pub async fn add_filter(&self, filter: &str) -> Result<(), IngestError> {
        validate_filter(filter).map_err(|source| IngestError::Topic {
            topic: filter.to_owned(),
            source,
        })?;
        let at_broker = {
            let mut subs = self.subscriptions();
            subs.filters.insert(filter.to_owned());
            subs.at_broker(filter)
        };
        self.client.subscribe(at_broker, QoS::AtLeastOnce).await?;
        Ok(())
    }

    /// Unsubscribes from `filter` (a no-op for unknown filters).
    pub async fn remove_filter(&self, filter: &str) -> Result<(), IngestError> {
        let at_broker = {
            let mut subs = self.subscriptions();
            subs.filters.remove(filter).then(|| subs.at_broker(filter))
        };
        if let Some(at_broker) = at_broker {
            self.client.unsubscribe(at_broker).await?;
        }
        Ok(())
    }

    /// The filters currently subscribed (sorted, without the `$share/{group}/` prefix).
    pub fn filters(&self) -> Vec<String> {
        self.subscriptions().filters.iter().cloned().collect()
    }

    fn subscriptions(&self) -> std::sync::MutexGuard<'_, Subscriptions> {
        self.subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes through the broker (downlink and republish). Returns once the request is
    /// queued to the connection; with QoS 1 the client resends until the broker acks, also
    /// across reconnects. Waits when the request queue is full.
    pub async fn publish(&self, topic: &str, payload: Bytes, qos: u8) -> Result<(), IngestError> {
        validate_topic(topic).map_err(|source| IngestError::Topic {
            topic: topic.to_owned(),
            source,
        })?;
        let qos = match qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        self.client
            .publish_bytes(topic, qos, false, payload)
            .await?;
        Ok(())
    }
}

/// One publish waiting for its commit, tagged with the connection it came on.
struct PendingAck {
    publish: Publish,
    rx: oneshot::Receiver<AckOutcome>,
    epoch: u64,
}

impl ExternalBroker {
    /// Builds the client (no network yet) and its handle. Fails on a bad URL or filter.
    pub fn new(cfg: ExternalConfig) -> Result<(ExternalBroker, ExternalHandle), IngestError> {
        let (host, port) = parse_mqtt_url(&cfg.url)?;
        if cfg.client_id.is_empty() {
            return Err(IngestError::MissingClientId);
        }
        if let Some(group) = &cfg.share_group {
            validate_share_group(group)?;
        }
        let mut filters = BTreeSet::new();
        for f in &cfg.filters {
            validate_filter(f).map_err(|source| IngestError::Topic {
                topic: f.clone(),
                source,
            })?;
            filters.insert(f.clone());
        }
        let mut opts = MqttOptions::new(cfg.client_id.clone(), host, port);
        let max_packet = u32::try_from(cfg.max_packet_size_bytes).unwrap_or(u32::MAX);
        opts.set_keep_alive(cfg.keep_alive.max(Duration::from_secs(1)))
            .set_manual_acks(true)
            .set_clean_start(false)
            .set_session_expiry_interval(Some(SESSION_NEVER_EXPIRES))
            .set_max_packet_size(Some(max_packet))
            .set_request_channel_capacity(cfg.request_capacity.max(16));
        if let Some((user, pass)) = &cfg.credentials {
            opts.set_credentials(user.clone(), pass.clone());
        }
        let (client, eventloop) = AsyncClient::new(opts, cfg.request_capacity.max(16));
        let subscriptions = Arc::new(Mutex::new(Subscriptions {
            filters,
            share_group: cfg.share_group.clone(),
        }));
        let handle = ExternalHandle {
            client: client.clone(),
            subscriptions: subscriptions.clone(),
        };
        Ok((
            ExternalBroker {
                client,
                eventloop,
                client_id: Arc::from(cfg.client_id.as_str()),
                cfg,
                subscriptions,
                counters: Arc::new(IngestCounters::default()),
            },
            handle,
        ))
    }

    /// Counters of this source (publishes in, acks, rejections).
    pub fn counters(&self) -> Arc<IngestCounters> {
        self.counters.clone()
    }

    /// Runs until `shutdown`: connects (and reconnects), hands publishes to `sink`, acks after
    /// commit. On shutdown it stops handing over new messages, keeps the connection up to
    /// `shutdown_grace` so pending commits are still acked, then disconnects.
    pub async fn run(self, sink: IngestSink, shutdown: CancellationToken) {
        let ExternalBroker {
            client,
            mut eventloop,
            cfg,
            client_id,
            subscriptions,
            counters,
        } = self;
        let epoch = Arc::new(AtomicU64::new(0));
        let (ack_tx, ack_rx) = mpsc::channel(ACK_QUEUE_LEN);
        let ack_task = tokio::spawn(ack_in_order(
            ack_rx,
            client.clone(),
            epoch.clone(),
            counters.clone(),
        ));
        let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);

        // Phase 1: serve.
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                    backoff.reset();
                    epoch.fetch_add(1, Ordering::SeqCst);
                    tracing::info!(url = %cfg.url, session_present = connack.session_present, "connected to MQTT broker");
                    // Always: the broker's stored session may predate filters added since.
                    resubscribe(&client, &subscriptions);
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let Ok(topic) = std::str::from_utf8(&publish.topic).map(str::to_owned) else {
                        // MQTT requires UTF-8 topics; a broker relaying anything else is broken,
                        // and resending it would not help: count it and let it go.
                        bump(&counters.rejected_total);
                        tracing::warn!("broker sent a publish whose topic is not UTF-8; dropped");
                        if publish.qos != QoS::AtMostOnce {
                            try_ack(&client, &publish).await;
                        }
                        continue;
                    };
                    let qos = publish.qos as u8;
                    let (ack, rx) = if qos == 0 {
                        (Ack::detached(), None)
                    } else {
                        let (ack, rx) = Ack::channel();
                        (ack, Some(rx))
                    };
                    let ingested = Ingested {
                        message: IngestMessage {
                            topic,
                            payload: publish.payload.clone(),
                            qos,
                            retain: publish.retain,
                            client_id: client_id.clone(),
                            identity: None,
                            peer: None,
                            received_at_ms: now_ms(),
                        },
                        ack,
                    };
                    // Waiting here is the back-pressure: the broker buffers, memory does not grow.
                    let sent = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        sent = sink.send(ingested) => sent,
                    };
                    if sent.is_err() {
                        tracing::warn!("ingest sink closed; stopping the MQTT broker client");
                        break;
                    }
                    bump(&counters.publishes_in_total);
                    if let Some(rx) = rx {
                        let pending = PendingAck {
                            publish,
                            rx,
                            epoch: epoch.load(Ordering::SeqCst),
                        };
                        if ack_tx.send(pending).await.is_err() {
                            break;
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let delay = backoff.next_delay(rand::random::<f64>());
                    tracing::warn!(url = %cfg.url, error = %e, delay_ms = delay.as_millis() as u64, "MQTT broker connection failed; reconnecting");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }

        // Phase 2: drain. Keep polling (acks only reach the broker through the event loop);
        // publishes arriving now are not handed over, so the broker keeps them for next time.
        drop(ack_tx);
        let deadline = tokio::time::Instant::now() + cfg.shutdown_grace;
        while !ack_task.is_finished() && tokio::time::Instant::now() < deadline {
            let polled = tokio::time::timeout(Duration::from_millis(50), eventloop.poll()).await;
            if let Ok(Err(_)) = polled {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        ack_task.abort();
        let _ = client.try_disconnect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, eventloop.poll()).await {
            if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    }
}

fn resubscribe(client: &AsyncClient, subscriptions: &Mutex<Subscriptions>) {
    let filters: Vec<String> = {
        let subs = subscriptions.lock().unwrap_or_else(PoisonError::into_inner);
        subs.filters.iter().map(|f| subs.at_broker(f)).collect()
    };
    if filters.is_empty() {
        return;
    }
    let client = client.clone();
    // Not awaited here: the request channel is drained by the very loop that calls this.
    tokio::spawn(async move {
        let topics = filters
            .into_iter()
            .map(|f| Filter::new(f, QoS::AtLeastOnce));
        if let Err(e) = client.subscribe_many(topics).await {
            tracing::warn!(error = %e, "MQTT resubscribe failed");
        }
    });
}

/// Acks to the broker in arrival order, each only after its commit. Acks of an older connection
/// are skipped: the broker resends those messages on the new connection, where their own acks
/// count. A rejection forces a reconnect so the broker resends the message.
async fn ack_in_order(
    mut rx: mpsc::Receiver<PendingAck>,
    client: AsyncClient,
    epoch: Arc<AtomicU64>,
    counters: Arc<IngestCounters>,
) {
    while let Some(pending) = rx.recv().await {
        match pending.rx.await {
            Ok(AckOutcome::Committed) => {
                if pending.epoch != epoch.load(Ordering::SeqCst) {
                    continue;
                }
                if try_ack(&client, &pending.publish).await {
                    bump(&counters.acks_total);
                }
            }
            outcome => {
                bump(&counters.rejected_total);
                let reason = match outcome {
                    Ok(AckOutcome::Rejected(reason)) => reason,
                    _ => "ack dropped without an outcome".to_owned(),
                };
                tracing::warn!(topic = %String::from_utf8_lossy(&pending.publish.topic), %reason, "message not committed; reconnecting so the broker resends it");
                let _ = client.try_disconnect();
            }
        }
    }
}

/// Queues one ack without ever waiting on the event loop indefinitely (that loop may itself be
/// waiting for this task's queue); an ack given up is a redelivery later, not a loss.
async fn try_ack(client: &AsyncClient, publish: &Publish) -> bool {
    let deadline = tokio::time::Instant::now() + ACK_RETRY_BUDGET;
    loop {
        match client.try_ack(publish) {
            Ok(()) => return true,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not queue an ack; the broker will resend");
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!(
            parse_mqtt_url("mqtt://localhost:1884").unwrap(),
            ("localhost".into(), 1884)
        );
        assert_eq!(
            parse_mqtt_url("mqtt://10.0.0.1").unwrap(),
            ("10.0.0.1".into(), 1883)
        );
        assert_eq!(parse_mqtt_url("tcp://b:1/").unwrap(), ("b".into(), 1));
        assert_eq!(
            parse_mqtt_url("mqtt://[::1]:1885").unwrap(),
            ("::1".into(), 1885)
        );
        for bad in [
            "localhost:1883",
            "mqtts://h:8883",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://h:x",
            "mqtt://u:p@h:1",
            "mqtt://h:1/path",
            "mqtt://[::1",
        ] {
            assert!(parse_mqtt_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_errors_are_clear() {
        let err = ExternalBroker::new(ExternalConfig::new("http://x", "id")).unwrap_err();
        assert!(err.to_string().contains("http://x"), "{err}");
        let mut cfg = ExternalConfig::new("mqtt://127.0.0.1:1", "id");
        cfg.filters = vec!["a/#/b".into()];
        assert!(matches!(
            ExternalBroker::new(cfg).unwrap_err(),
            IngestError::Topic { .. }
        ));
        assert!(matches!(
            ExternalBroker::new(ExternalConfig::new("mqtt://127.0.0.1:1", "")).unwrap_err(),
            IngestError::MissingClientId
        ));
    }

    #[test]
    fn share_groups_are_checked_and_prefix_filters() {
        validate_share_group("sluice").unwrap();
        for bad in ["", "a/b", "a+", "#", "a\0"] {
            let err = validate_share_group(bad).unwrap_err();
            assert!(err.to_string().contains("share group"), "{err}");
        }
        let mut cfg = ExternalConfig::new("mqtt://127.0.0.1:1", "id");
        cfg.share_group = Some("a/b".into());
        assert!(matches!(
            ExternalBroker::new(cfg).unwrap_err(),
            IngestError::BadShareGroup { .. }
        ));
        let subs = Subscriptions {
            filters: BTreeSet::new(),
            share_group: Some("g".into()),
        };
        assert_eq!(subs.at_broker("/pk/+/user/#"), "$share/g//pk/+/user/#");
        let plain = Subscriptions {
            filters: BTreeSet::new(),
            share_group: None,
        };
        assert_eq!(plain.at_broker("a/b"), "a/b");
    }
}
