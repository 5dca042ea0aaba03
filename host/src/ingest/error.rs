//! The ingest stage's error type.

use std::net::SocketAddr;

/// What can go wrong when starting or running an ingest source; each variant names what failed
/// so a start-up error tells the operator what to fix (a port in use names the address).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The listener could not bind its address (in use, no permission, bad address).
    #[error("cannot listen for MQTT on {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// Any other socket error of the listener itself (not of one connection).
    #[error("MQTT listener I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The `--mqtt-url` could not be used.
    #[error("invalid MQTT broker URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The external broker mode needs a client id that is stable across restarts (so the
    /// broker keeps the session and resends what was not acked).
    #[error("the external MQTT broker mode needs a stable, non-empty client id")]
    MissingClientId,
    /// A topic or filter broke MQTT's rules.
    #[error("invalid topic {topic:?}: {source}")]
    Topic {
        /// The topic or filter as given.
        topic: String,
        /// Which rule it broke.
        #[source]
        source: crate::topic::TopicError,
    },
    /// The external broker client is gone (its task stopped).
    #[error("the MQTT broker connection is closed")]
    Closed,
    /// The external broker client refused a request (boxed: it carries the whole request).
    #[error("MQTT client error: {0}")]
    Client(Box<rumqttc::v5::ClientError>),
    /// `--mqtt-share-group` is not a valid MQTT 5 share name.
    #[error("invalid MQTT share group {group:?}: {reason}")]
    BadShareGroup {
        /// The group as given.
        group: String,
        /// Why it was refused.
        reason: String,
    },
}

impl From<rumqttc::v5::ClientError> for IngestError {
    fn from(e: rumqttc::v5::ClientError) -> IngestError {
        IngestError::Client(Box::new(e))
    }
}
