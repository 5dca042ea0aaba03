//! MQTT 3.1.1 and MQTT 5 packets behind one type.
//!
//! The session state machine is the same for both protocol versions; only the bytes and a few
//! answers differ. This module picks the codec from the CONNECT's protocol level (rumqttc's
//! `mqttbytes::v4` or `v5::mqttbytes::v5`) and translates between their packets and the small
//! [`Inbound`] / [`Outbound`] vocabulary the session speaks.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes as m4;
use rumqttc::v5::mqttbytes as m5;

use super::ProtocolVersion;

mod v4;
mod v5;

/// A packet from a device, reduced to what the session acts on.
#[derive(Debug)]
pub(crate) enum Inbound {
    Connect(ConnectPacket),
    Publish(InPublish),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        pkid: u16,
        filters: Vec<(String, u8)>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect,
    /// A packet a client may not send to a server (CONNACK, SUBACK, AUTH, ...).
    Unexpected(&'static str),
}

/// A PUBLISH from a device.
#[derive(Debug)]
pub(crate) struct InPublish {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub pkid: u16,
}

/// The CONNECT fields the session and the policy use.
#[derive(Debug)]
pub(crate) struct ConnectPacket {
    pub client_id: String,
    pub clean_session: bool,
    pub keep_alive_secs: u16,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    /// MQTT 5: how many unacked QoS>0 publishes the client accepts from us.
    pub receive_maximum: Option<u16>,
    /// MQTT 5: the largest packet the client accepts from us.
    pub max_packet_size: Option<u32>,
    /// MQTT 5: how long the client wants its session kept after disconnecting (0 = not at all).
    pub session_expiry_secs: Option<u32>,
}

/// CONNACK answers, in protocol-neutral terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnAckCode {
    Accepted,
    UnsupportedVersion,
    BadClientId,
    ServerUnavailable,
    BadCredentials,
    NotAuthorized,
}

/// Reason of a PUBACK / PUBREC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckReason {
    Success,
    UnspecifiedError,
    NotAuthorized,
}

/// One entry of a SUBACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubCode {
    Granted(u8),
    Refused,
    InvalidFilter,
    SharedNotSupported,
    /// The session holds its maximum of subscriptions (MQTT 5: 0x97; 3.1.1: 0x80).
    QuotaExceeded,
}

/// Why the server closes a session (sent as DISCONNECT to MQTT 5 clients only; MQTT 3.1.1 has
/// no server DISCONNECT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    SessionTakenOver,
    KeepAliveTimeout,
    ServerShuttingDown,
    ProtocolError,
    TopicNameInvalid,
    NotAuthorized,
    UnspecifiedError,
    /// A packet went past a limit of the server (too many filters in one packet).
    QuotaExceeded,
}

impl CloseReason {
    /// The human-readable reason sent with the MQTT 5 DISCONNECT.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CloseReason::SessionTakenOver => "session taken over by a new connection",
            CloseReason::KeepAliveTimeout => "keep-alive expired",
            CloseReason::ServerShuttingDown => "server shutting down",
            CloseReason::ProtocolError => "protocol error",
            CloseReason::TopicNameInvalid => "invalid topic name",
            CloseReason::NotAuthorized => "not authorized",
            CloseReason::UnspecifiedError => "message not committed, send it again",
            CloseReason::QuotaExceeded => "too many topic filters in one packet",
        }
    }
}

/// A packet to a device.
#[derive(Debug)]
pub(crate) enum Outbound<'a> {
    ConnAck {
        session_present: bool,
        code: ConnAckCode,
        assigned_client_id: Option<&'a str>,
        receive_maximum: u16,
        max_packet_size: u32,
    },
    PubAck {
        pkid: u16,
        reason: AckReason,
    },
    PubRec {
        pkid: u16,
        reason: AckReason,
    },
    PubComp {
        pkid: u16,
        found: bool,
    },
    SubAck {
        pkid: u16,
        codes: &'a [SubCode],
    },
    UnsubAck {
        pkid: u16,
        count: usize,
    },
    PingResp,
    Publish {
        topic: &'a str,
        payload: Bytes,
        qos: u8,
        pkid: u16,
        retain: bool,
        /// Resent: the device may have it already.
        dup: bool,
    },
    Disconnect(CloseReason),
}

/// Why bytes could not be decoded; the session closes the connection and logs this.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    #[error("malformed MQTT 3.1.1 packet: {0}")]
    V4(#[from] m4::Error),
    #[error("malformed MQTT 5 packet: {0}")]
    V5(#[from] m5::Error),
    #[error("packet too large: {size} bytes, limit {max}")]
    TooLarge { size: usize, max: usize },
    #[error("topic is not valid UTF-8")]
    TopicNotUtf8,
    #[error("MQTT 5 topic aliases are not supported")]
    TopicAlias,
    #[error("malformed MQTT 5 packet: a field runs past the end of the packet")]
    Truncated,
}

/// What the first bytes of a connection say, before a codec is chosen.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sniff {
    /// Not enough bytes yet.
    Incomplete,
    /// A CONNECT of a protocol level we speak.
    Version(ProtocolVersion),
    /// A CONNECT of another level (3 = MQTT 3.1): answered with "unsupported version".
    UnsupportedLevel(u8),
    /// The first packet is not a CONNECT.
    NotConnect(u8),
    /// The fixed header is broken or announces more than the size limit.
    Malformed,
}

/// Reads the fixed header and protocol level of a CONNECT without consuming anything.
pub(crate) fn sniff_connect(buf: &[u8], max_packet_size: usize) -> Sniff {
    let Some(&byte1) = buf.first() else {
        return Sniff::Incomplete;
    };
    if byte1 >> 4 != 1 {
        return Sniff::NotConnect(byte1 >> 4);
    }
    if byte1 & 0x0f != 0 {
        return Sniff::Malformed;
    }
    let mut remaining: usize = 0;
    let mut header_len = 1;
    loop {
        let Some(&b) = buf.get(header_len) else {
            return Sniff::Incomplete;
        };
        remaining |= usize::from(b & 0x7f) << (7 * (header_len - 1));
        header_len += 1;
        if b & 0x80 == 0 {
            break;
        }
        if header_len > 4 {
            return Sniff::Malformed;
        }
    }
    if remaining > max_packet_size {
        return Sniff::Malformed;
    }
    let rest = &buf[header_len..];
    if rest.len() < 2 {
        return Sniff::Incomplete;
    }
    let name_len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
    if name_len + 3 > remaining {
        return Sniff::Malformed;
    }
    let Some(&level) = rest.get(2 + name_len) else {
        return Sniff::Incomplete;
    };
    let name = &rest[2..2 + name_len];
    match (name, level) {
        (b"MQTT", 4) => Sniff::Version(ProtocolVersion::V311),
        (b"MQTT", 5) => Sniff::Version(ProtocolVersion::V5),
        (b"MQTT" | b"MQIsdp", other) => Sniff::UnsupportedLevel(other),
        _ => Sniff::Malformed,
    }
}

/// Encodes and decodes one connection's packets for its protocol version.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Codec {
    pub protocol: ProtocolVersion,
    /// Largest remaining length accepted from the device.
    pub max_incoming: usize,
    /// Largest packet the device accepts (MQTT 5 `maximum packet size`), if it said.
    pub max_outgoing: Option<u32>,
}

impl Codec {
    /// Decodes one packet from the front of `buf`; `Ok(None)` when more bytes are needed.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        match self.protocol {
            ProtocolVersion::V311 => v4::decode(buf, self.max_incoming),
            ProtocolVersion::V5 => v5::decode(buf, self.max_incoming),
        }
    }

    /// Appends one packet to `out`. A packet the device cannot take (too large) is skipped
    /// with an error and nothing is written.
    pub fn encode(&self, packet: Outbound<'_>, out: &mut BytesMut) -> Result<(), CodecError> {
        match self.protocol {
            ProtocolVersion::V311 => v4::encode(packet, out),
            ProtocolVersion::V5 => v5::encode(packet, out, self.max_outgoing),
        }
    }
}

#[cfg(test)]
mod tests;
