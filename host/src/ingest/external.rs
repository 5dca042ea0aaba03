//! External broker mode: sluice as a client of an existing MQTT broker (Mosquitto, EMQX, ...).
//!
//! Selected with `--mqtt-url mqtt://host:port`. The client uses manual acks and clean session
//! off with a stable client id, so whatever sluice received but never acknowledged is sent again
//! by the broker after a restart or reconnect: duplicates are possible, loss is not.
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
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS};
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

/// How to reach and use the external broker.
#[derive(Debug, Clone)]
pub struct ExternalConfig {
    /// `mqtt://host:port` (port defaults to 1883; `tcp://` is accepted too).
    pub url: String,
    /// Stable across restarts (so the broker keeps the session) and distinct per process.
    pub client_id: String,
    /// Topic filters to subscribe to at QoS 1 from the start (more can be added at run time).
    pub filters: Vec<String>,
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

/// The broker client before it runs. [`ExternalBroker::run`] polls it until shutdown.
pub struct ExternalBroker {
    client: AsyncClient,
    eventloop: EventLoop,
    cfg: ExternalConfig,
    client_id: Arc<str>,
    filters: Arc<Mutex<BTreeSet<String>>>,
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
    filters: Arc<Mutex<BTreeSet<String>>>,
}

impl std::fmt::Debug for ExternalHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalHandle")
            .field("filters", &self.filters())
            .finish()
    }
}

impl ExternalHandle {
    /// Subscribes to `filter` at QoS 1 (now and after every reconnect). Adding a filter twice
    /// is harmless.
    pub async fn add_filter(&self, filter: &str) -> Result<(), IngestError> {
        validate_filter(filter).map_err(|source| IngestError::Topic {
            topic: filter.to_owned(),
            source,
        })?;
        self.filters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(filter.to_owned());
        self.client.subscribe(filter, QoS::AtLeastOnce).await?;
        Ok(())
    }

    /// Unsubscribes from `filter` (a no-op for unknown filters).
    pub async fn remove_filter(&self, filter: &str) -> Result<(), IngestError> {
        let removed = self
            .filters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(filter);
        if removed {
            self.client.unsubscribe(filter).await?;
        }
        Ok(())
    }

    /// The filters currently subscribed (sorted).
    pub fn filters(&self) -> Vec<String> {
        self.filters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
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
        let mut filters = BTreeSet::new();
        for f in &cfg.filters {
            validate_filter(f).map_err(|source| IngestError::Topic {
                topic: f.clone(),
                source,
            })?;
            filters.insert(f.clone());
        }
        let mut opts = MqttOptions::new(cfg.client_id.clone(), host, port);
        opts.set_keep_alive(cfg.keep_alive.max(Duration::from_secs(1)))
            .set_manual_acks(true)
            .set_clean_session(false)
            .set_max_packet_size(cfg.max_packet_size_bytes, cfg.max_packet_size_bytes)
            .set_request_channel_capacity(cfg.request_capacity.max(16));
        if let Some((user, pass)) = &cfg.credentials {
            opts.set_credentials(user.clone(), pass.clone());
        }
        let (client, eventloop) = AsyncClient::new(opts, cfg.request_capacity.max(16));
        let filters = Arc::new(Mutex::new(filters));
        let handle = ExternalHandle {
            client: client.clone(),
            filters: filters.clone(),
        };
        Ok((
            ExternalBroker {
                client,
                eventloop,
                client_id: Arc::from(cfg.client_id.as_str()),
                cfg,
                filters,
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
            filters,
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
                    resubscribe(&client, &filters);
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let qos = publish.qos as u8;
                    let (ack, rx) = if qos == 0 {
                        (Ack::detached(), None)
                    } else {
                        let (ack, rx) = Ack::channel();
                        (ack, Some(rx))
                    };
                    let ingested = Ingested {
                        message: IngestMessage {
                            topic: publish.topic.clone(),
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

fn resubscribe(client: &AsyncClient, filters: &Mutex<BTreeSet<String>>) {
    let filters: Vec<String> = filters
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .cloned()
        .collect();
    if filters.is_empty() {
        return;
    }
    let client = client.clone();
    // Not awaited here: the request channel is drained by the very loop that calls this.
    tokio::spawn(async move {
        let topics = filters
            .into_iter()
            .map(|f| rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce));
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
                tracing::warn!(topic = %pending.publish.topic, %reason, "message not committed; reconnecting so the broker resends it");
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
}
