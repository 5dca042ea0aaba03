//! Ingest: how device messages get into sluice, and how downlink messages get back out.
//!
//! Two sources feed the same seam:
//!
//! * [`MqttListener`] — sluice's own MQTT 3.1.1 / 5 listener. It exists (instead of an embedded
//!   broker) because sluice must send the PUBACK only after the message is durably committed,
//!   answer CONNECT with the right CONNACK code, and check every PUBLISH and SUBSCRIBE against
//!   the device's topics.
//! * [`ExternalBroker`] — sluice as a client of an existing broker (manual acks, clean session
//!   off), acking to the broker after the commit.
//!
//! Both hand each message to an [`IngestSink`] as an [`Ingested`] and wait for its [`Ack`]: ingest
//! knows neither rules nor store, it only hands a message over and awaits its ack.
//!
//! Layout (one job per file):
//! * `crate::topic` (outside this folder) — topic/filter validation and the matcher, shared by every stage;
//! * `codec` (`codec/v4.rs`, `codec/v5.rs`) — MQTT 3.1.1 / 5 packets behind one vocabulary;
//! * `listener` — bind and accept; `connect` — CONNECT, policy, CONNACK;
//!   `session` — one connection's loop; `acks` — the ordered acks it waits for;
//! * `router` — downlink delivery to subscribed sessions, client-id takeover, persistent
//!   sessions; `keep` — the store seam that makes them and their kept messages durable;
//!   `rrpc` — synchronous calls waiting for a device's answer;
//! * `external` — the broker client; `backoff` — its reconnect schedule;
//! * `counters`, `error`; unit tests in `tests/` (`tests/listener.rs` against real MQTT
//!   clients on real sockets; the external-broker tests, which need Mosquitto, are end-to-end
//!   tests).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

mod acks;
pub(crate) mod backoff;
mod codec;
mod connect;
mod counters;
mod error;
pub mod external;
pub mod keep;
pub mod listener;
pub mod router;
pub mod rrpc;
mod session;
pub mod status;
mod thing_reply;

pub use backoff::Backoff;
pub use counters::{IngestCounters, IngestCountersSnapshot};
pub use error::IngestError;
pub use external::{ExternalBroker, ExternalConfig, ExternalHandle};
pub use keep::{KeepError, KeptMessage, SavedState, SessionStore, StoreFuture};
pub use listener::{ListenerConfig, MqttListener};
pub use router::SessionRouter;

/// One message as it arrived from a device (or from the external broker), before any rule ran.
///
/// It carries everything later stages need to decide and to trace: the topic and payload, the
/// QoS the device asked for, who sent it (client id, authenticated identity, peer address) and
/// when sluice received it. The payload is `Bytes` so it is never copied between stages.
#[derive(Debug, Clone)]
pub struct IngestMessage {
    /// The topic name it was published to (validated: no wildcards).
    pub topic: String,
    /// The application payload, shared, never copied.
    pub payload: Bytes,
    /// The QoS of the PUBLISH (0, 1 or 2); a QoS 0 message has no ack to wait for.
    pub qos: u8,
    /// The retain flag as sent; sluice does not keep retained messages, rules may look at it.
    pub retain: bool,
    /// The MQTT client id of the sender (shared by all its messages).
    pub client_id: Arc<str>,
    /// The authenticated device, when the connect policy identified one; rules fall back to the
    /// topic levels when it is `None`.
    pub identity: Option<DeviceIdentity>,
    /// The device's socket address (`None` for messages from an external broker).
    pub peer: Option<SocketAddr>,
    /// Wall-clock time of reception, in ms since the Unix epoch (the ingest timestamp).
    pub received_at_ms: u64,
}

/// A device as the connect policy authenticated it; topics must match it
/// (`/{product_key}/{device_name}/...`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceIdentity {
    /// The product (device class) the device belongs to.
    pub product_key: String,
    /// The device's name, unique within its product.
    pub device_name: String,
}

/// A message handed to the pipeline together with the means to acknowledge it; the pipeline
/// resolves `ack` once the message's outputs are durably committed (or the rule dropped it).
#[derive(Debug)]
pub struct Ingested {
    /// The message itself.
    pub message: IngestMessage,
    /// Resolves the device's (or broker's) acknowledgement.
    pub ack: Ack,
}

/// How the pipeline finished with a message; decides between a positive and a negative (or no)
/// acknowledgement to the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    /// Durably committed (or deliberately dropped by the rule): acknowledge to the sender.
    Committed,
    /// Not committed (e.g. the store failed): the sender must send again. MQTT 5 devices get a
    /// PUBACK with reason 0x80; MQTT 3.1.1 devices are disconnected without an ack.
    Rejected(String),
}

/// The pipeline's handle for acknowledging one message.
///
/// It wraps a oneshot sender so the connection can wait for many acks at once without locks.
/// Dropping it without calling [`Ack::commit`] counts as a rejection: a message the pipeline lost
/// track of must be resent, never acknowledged.
#[derive(Debug)]
pub struct Ack {
    tx: Option<oneshot::Sender<AckOutcome>>,
}

impl Ack {
    /// Creates an ack and the receiver its sender waits on; used by the sources (listener,
    /// external broker) and by tests that play the pipeline's other side.
    pub fn channel() -> (Ack, oneshot::Receiver<AckOutcome>) {
        let (tx, rx) = oneshot::channel();
        (Ack { tx: Some(tx) }, rx)
    }

    /// An ack nobody waits for (QoS 0): resolving it does nothing.
    pub fn detached() -> Ack {
        Ack { tx: None }
    }

    /// True when the sender waits for this ack (QoS 1 and 2).
    pub fn is_awaited(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| !tx.is_closed())
    }

    /// The message is durably committed: the sender may be acknowledged.
    pub fn commit(self) {
        self.resolve(AckOutcome::Committed);
    }

    /// The message was not committed; `reason` is logged by the source.
    pub fn reject(self, reason: impl Into<String>) {
        self.resolve(AckOutcome::Rejected(reason.into()));
    }

    /// Resolves with an explicit outcome (for pipelines that compute it).
    pub fn resolve(mut self, outcome: AckOutcome) {
        if let Some(tx) = self.tx.take() {
            // The connection may be gone; then there is nobody to acknowledge.
            let _ = tx.send(outcome);
        }
    }
}

/// Where sources put what they receive: one bounded queue per rule worker, the queue chosen per
/// message by the pipeline's function (same device, same worker). Bounded, so a slow pipeline
/// slows the devices (TCP back-pressure) instead of growing memory. Sources hand each message
/// straight to its worker's queue: a dispatcher task in between cost a task wake-up per message.
#[derive(Clone)]
pub struct IngestSink {
    queues: Arc<[mpsc::Sender<Ingested>]>,
    pick: fn(&Ingested, usize) -> usize,
}

impl IngestSink {
    /// Several queues; `pick(message, queues)` says which one takes a message.
    pub fn sharded(
        queues: Vec<mpsc::Sender<Ingested>>,
        pick: fn(&Ingested, usize) -> usize,
    ) -> IngestSink {
        assert!(!queues.is_empty(), "an ingest sink needs a queue");
        IngestSink {
            queues: queues.into(),
            pick,
        }
    }

    /// The queue that takes `item`.
    pub fn queue_for(&self, item: &Ingested) -> &mpsc::Sender<Ingested> {
        match &*self.queues {
            [only] => only,
            queues => &queues[(self.pick)(item, queues.len()) % queues.len()],
        }
    }

    /// Hands `item` over if its queue has room. A full queue gives the item back, to be held
    /// until there is room (boxing it would cost an allocation per message).
    #[allow(clippy::result_large_err)]
    pub fn try_send(&self, item: Ingested) -> Result<(), mpsc::error::TrySendError<Ingested>> {
        self.queue_for(&item).try_send(item)
    }

    /// Hands `item` over, waiting for room in its queue.
    pub async fn send(&self, item: Ingested) -> Result<(), mpsc::error::SendError<Ingested>> {
        self.queue_for(&item).send(item).await
    }
}

impl From<mpsc::Sender<Ingested>> for IngestSink {
    /// One queue takes everything.
    fn from(queue: mpsc::Sender<Ingested>) -> IngestSink {
        IngestSink::sharded(vec![queue], |_, _| 0)
    }
}

/// The MQTT protocol version a device connected with; some answers differ (CONNACK codes,
/// negative acks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5 (protocol level 5).
    V5,
}

/// What a device presented in its CONNECT, for the policy to authenticate.
#[derive(Debug, Clone)]
pub struct ConnectInfo {
    /// The client id the session will use (generated when the device sent an empty one).
    pub client_id: Arc<str>,
    /// True when sluice generated `client_id` because the device sent none.
    pub client_id_generated: bool,
    /// The CONNECT's user name, if any.
    pub username: Option<String>,
    /// The CONNECT's password, if any (raw bytes: MQTT passwords are binary data).
    pub password: Option<Bytes>,
    /// The device's socket address.
    pub peer: SocketAddr,
    /// The protocol version of the CONNECT.
    pub protocol: ProtocolVersion,
    /// The clean session (3.1.1) / clean start (5) flag.
    pub clean_session: bool,
}

/// A connected session as the policy sees it when checking a PUBLISH or SUBSCRIBE.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The session's client id.
    pub client_id: Arc<str>,
    /// The authenticated device, if the policy returned one at connect.
    pub identity: Option<DeviceIdentity>,
    /// The CONNECT's user name, if any.
    pub username: Option<String>,
    /// The device's socket address.
    pub peer: SocketAddr,
    /// The protocol version of the session.
    pub protocol: ProtocolVersion,
}

/// Why the policy refused a CONNECT; each maps to a CONNACK code of both protocol versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// Unknown user or wrong password (3.1.1: 0x04, 5: 0x86).
    BadCredentials,
    /// Known but not allowed to connect (3.1.1: 0x05, 5: 0x87).
    NotAuthorized,
    /// The client id is not acceptable (3.1.1: 0x02, 5: 0x85).
    BadClientId,
    /// The service cannot take the connection now (3.1.1: 0x03, 5: 0x88).
    ServerUnavailable,
}

/// Decides who may connect, publish and subscribe. Checked on every CONNECT, PUBLISH and
/// SUBSCRIBE; `sluice serve` uses the device registry's policy (`devices::policy`). Called on
/// the connection's task, so it must be quick and must not block (no I/O).
pub trait ConnectPolicy: Send + Sync + 'static {
    /// Authenticates a CONNECT; `Ok(Some(identity))` binds the session to a device.
    fn on_connect(&self, info: &ConnectInfo) -> Result<Option<DeviceIdentity>, ConnectRefusal>;
    /// May this session publish to `topic`?
    fn may_publish(&self, session: &SessionInfo, topic: &str) -> bool;
    /// May this session subscribe to `filter`?
    fn may_subscribe(&self, session: &SessionInfo, filter: &str) -> bool;
    /// A session accepted by `on_connect` has ended, so a policy that counts sessions (to tell
    /// whether a device is online) can uncount it.
    fn on_disconnect(&self, _session: &SessionInfo) {}
}

/// Everyone may connect, publish and subscribe, anonymously: the policy of a listener given
/// none (`ListenerConfig::default`). Suitable for a loopback-only listener.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl ConnectPolicy for AllowAll {
    fn on_connect(&self, _info: &ConnectInfo) -> Result<Option<DeviceIdentity>, ConnectRefusal> {
        Ok(None)
    }
    fn may_publish(&self, _session: &SessionInfo, _topic: &str) -> bool {
        true
    }
    fn may_subscribe(&self, _session: &SessionInfo, _filter: &str) -> bool {
        true
    }
}

/// Milliseconds since the Unix epoch, the unit of `received_at_ms`.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
