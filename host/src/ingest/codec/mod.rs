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

#[cfg(test)]
mod fuzz_tests;
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
mod tests {
    use super::*;

    fn connect_bytes(level: u8, name: &str) -> Vec<u8> {
        let mut v = vec![0x10, 0];
        v.extend_from_slice(&(name.len() as u16).to_be_bytes());
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&[level, 0x02, 0, 60, 0, 1, b'c']);
        if level == 5 {
            // properties length goes before the client id in MQTT 5
            v.insert(2 + 2 + name.len() + 4, 0);
        }
        v[1] = (v.len() - 2) as u8;
        v
    }

    #[test]
    fn sniff_detects_versions_and_garbage() {
        let max = 1024;
        assert_eq!(
            sniff_connect(&connect_bytes(4, "MQTT"), max),
            Sniff::Version(ProtocolVersion::V311)
        );
        assert_eq!(
            sniff_connect(&connect_bytes(5, "MQTT"), max),
            Sniff::Version(ProtocolVersion::V5)
        );
        assert_eq!(
            sniff_connect(&connect_bytes(3, "MQIsdp"), max),
            Sniff::UnsupportedLevel(3)
        );
        assert_eq!(
            sniff_connect(&connect_bytes(4, "XXXX"), max),
            Sniff::Malformed
        );
        assert_eq!(sniff_connect(&[], max), Sniff::Incomplete);
        assert_eq!(sniff_connect(&[0x10], max), Sniff::Incomplete);
        assert_eq!(sniff_connect(&[0x10, 0x80], max), Sniff::Incomplete);
        assert_eq!(sniff_connect(&[0x30, 0x00], max), Sniff::NotConnect(3));
        assert_eq!(
            sniff_connect(&[0xff, 0xff, 0xff], max),
            Sniff::NotConnect(15)
        );
        assert_eq!(
            sniff_connect(&[0x10, 0xff, 0xff, 0xff, 0xff], max),
            Sniff::Malformed
        );
        assert_eq!(
            sniff_connect(&[0x10, 0xff, 0xff, 0x7f], max),
            Sniff::Malformed
        );
        assert_eq!(
            sniff_connect(&[0x10, 0x02, 0x00, 0x09], max),
            Sniff::Malformed
        );
    }

    #[test]
    fn both_codecs_decode_a_connect() {
        for (level, protocol) in [(4, ProtocolVersion::V311), (5, ProtocolVersion::V5)] {
            let codec = Codec {
                protocol,
                max_incoming: 1024,
                max_outgoing: None,
            };
            let mut buf = BytesMut::from(&connect_bytes(level, "MQTT")[..]);
            match codec.decode(&mut buf) {
                Ok(Some(Inbound::Connect(c))) => {
                    assert_eq!(c.client_id, "c");
                    assert!(c.clean_session);
                    assert_eq!(c.keep_alive_secs, 60);
                }
                other => panic!("level {level}: {other:?}"),
            }
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn v5_empty_disconnect_is_accepted_and_partial_packets_wait() {
        let codec = Codec {
            protocol: ProtocolVersion::V5,
            max_incoming: 1024,
            max_outgoing: None,
        };
        let mut buf = BytesMut::from(&[0xE0u8, 0x00][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Ok(Some(Inbound::Disconnect))
        ));
        let mut buf = BytesMut::from(&[0x30u8, 0x05, 0x00][..]);
        assert!(matches!(codec.decode(&mut buf), Ok(None)));
        assert_eq!(buf.len(), 3);
    }

    #[test]
    fn oversized_packets_are_refused_before_reading_them() {
        for protocol in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let codec = Codec {
                protocol,
                max_incoming: 100,
                max_outgoing: None,
            };
            // PUBLISH announcing 200 bytes, only the header present
            let mut buf = BytesMut::from(&[0x30u8, 0xC8, 0x01][..]);
            assert!(matches!(
                codec.decode(&mut buf),
                Err(CodecError::TooLarge { size: 200, .. })
            ));
        }
    }

    #[test]
    fn v4_negative_ack_and_disconnect_write_nothing_harmful() {
        let codec = Codec {
            protocol: ProtocolVersion::V311,
            max_incoming: 1024,
            max_outgoing: None,
        };
        let mut out = BytesMut::new();
        codec
            .encode(
                Outbound::Disconnect(CloseReason::KeepAliveTimeout),
                &mut out,
            )
            .unwrap();
        assert!(out.is_empty());
        codec
            .encode(
                Outbound::PubAck {
                    pkid: 7,
                    reason: AckReason::Success,
                },
                &mut out,
            )
            .unwrap();
        assert_eq!(&out[..], &[0x40, 0x02, 0x00, 0x07]);
    }

    #[test]
    fn v5_negative_puback_carries_reason_0x80() {
        let codec = Codec {
            protocol: ProtocolVersion::V5,
            max_incoming: 1024,
            max_outgoing: None,
        };
        let mut out = BytesMut::new();
        codec
            .encode(
                Outbound::PubAck {
                    pkid: 9,
                    reason: AckReason::UnspecifiedError,
                },
                &mut out,
            )
            .unwrap();
        assert_eq!(out[0], 0x40);
        assert_eq!(&out[2..5], &[0x00, 0x09, 0x80]);
    }

    #[test]
    fn v5_publish_larger_than_client_limit_is_refused() {
        let codec = Codec {
            protocol: ProtocolVersion::V5,
            max_incoming: 1024,
            max_outgoing: Some(16),
        };
        let mut out = BytesMut::new();
        let r = codec.encode(
            Outbound::Publish {
                topic: "t",
                payload: Bytes::from(vec![0u8; 64]),
                qos: 0,
                pkid: 0,
                retain: false,
            },
            &mut out,
        );
        assert!(r.is_err());
        assert!(out.is_empty());
    }

    /// Every packet the server sends, for the round-trip test.
    fn all_outbound() -> Vec<Outbound<'static>> {
        const CODES: &[SubCode] = &[
            SubCode::Granted(0),
            SubCode::Granted(1),
            SubCode::Refused,
            SubCode::InvalidFilter,
            SubCode::SharedNotSupported,
        ];
        let mut v = vec![
            Outbound::ConnAck {
                session_present: true,
                code: ConnAckCode::Accepted,
                assigned_client_id: Some("sluice-1"),
                receive_maximum: 256,
                max_packet_size: 1 << 20,
            },
            Outbound::SubAck {
                pkid: 3,
                codes: CODES,
            },
            Outbound::UnsubAck { pkid: 4, count: 2 },
            Outbound::PingResp,
            Outbound::PubComp {
                pkid: 5,
                found: true,
            },
            Outbound::PubComp {
                pkid: 6,
                found: false,
            },
            Outbound::Publish {
                topic: "/pk/dev/user/get",
                payload: Bytes::from_static(b"{}"),
                qos: 1,
                pkid: 7,
                retain: false,
            },
            Outbound::Publish {
                topic: "t",
                payload: Bytes::new(),
                qos: 0,
                pkid: 0,
                retain: true,
            },
        ];
        for code in [
            ConnAckCode::UnsupportedVersion,
            ConnAckCode::BadClientId,
            ConnAckCode::ServerUnavailable,
            ConnAckCode::BadCredentials,
            ConnAckCode::NotAuthorized,
        ] {
            v.push(Outbound::ConnAck {
                session_present: false,
                code,
                assigned_client_id: None,
                receive_maximum: 0,
                max_packet_size: 0,
            });
        }
        for reason in [
            AckReason::Success,
            AckReason::UnspecifiedError,
            AckReason::NotAuthorized,
        ] {
            v.push(Outbound::PubAck { pkid: 8, reason });
            v.push(Outbound::PubRec { pkid: 9, reason });
        }
        for reason in [
            CloseReason::SessionTakenOver,
            CloseReason::KeepAliveTimeout,
            CloseReason::ServerShuttingDown,
            CloseReason::ProtocolError,
            CloseReason::TopicNameInvalid,
            CloseReason::NotAuthorized,
            CloseReason::UnspecifiedError,
        ] {
            v.push(Outbound::Disconnect(reason));
        }
        v
    }

    #[test]
    fn every_outbound_packet_is_framed_exactly() {
        // A client-side decoder must consume each encoded packet completely: a length that does
        // not match the bytes would corrupt the stream for the device.
        for protocol in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let codec = Codec {
                protocol,
                max_incoming: 1 << 20,
                max_outgoing: None,
            };
            for packet in all_outbound() {
                let label = format!("{protocol:?} {packet:?}");
                let mut out = BytesMut::new();
                codec.encode(packet, &mut out).expect(&label);
                if out.is_empty() {
                    assert_eq!(protocol, ProtocolVersion::V311, "{label}");
                    continue;
                }
                let total = out.len();
                match protocol {
                    ProtocolVersion::V311 => {
                        let r = rumqttc::mqttbytes::v4::Packet::read(&mut out, 1 << 20);
                        assert!(r.is_ok(), "{label}: {r:?}");
                    }
                    ProtocolVersion::V5 => {
                        let r = rumqttc::v5::mqttbytes::v5::Packet::read(&mut out, None);
                        assert!(r.is_ok(), "{label}: {r:?}");
                    }
                }
                assert!(
                    out.is_empty(),
                    "{label}: {} of {total} bytes left over",
                    out.len()
                );
            }
        }
    }
}
