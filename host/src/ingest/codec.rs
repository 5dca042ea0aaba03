//! MQTT 3.1.1 and MQTT 5 packets behind one type.
//!
//! The session state machine is the same for both protocol versions; only the bytes and a few
//! answers differ. This module picks the codec from the CONNECT's protocol level (rumqttc's
//! `mqttbytes::v4` or `v5::mqttbytes::v5`) and translates between their packets and the small
//! [`Inbound`] / [`Outbound`] vocabulary the session speaks.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes as m4;
use rumqttc::mqttbytes::v4 as p4;
use rumqttc::v5::mqttbytes as m5;
use rumqttc::v5::mqttbytes::v5 as p5;

use super::ProtocolVersion;

/// A packet from a device, reduced to what the session acts on.
#[derive(Debug)]
pub(crate) enum Inbound {
    Connect(ConnectPacket),
    Publish(InPublish),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe { pkid: u16, filters: Vec<(String, u8)> },
    Unsubscribe { pkid: u16, filters: Vec<String> },
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
            ProtocolVersion::V311 => decode_v4(buf, self.max_incoming),
            ProtocolVersion::V5 => decode_v5(buf, self.max_incoming),
        }
    }

    /// Appends one packet to `out`. A packet the device cannot take (too large) is skipped
    /// with an error and nothing is written.
    pub fn encode(&self, packet: Outbound<'_>, out: &mut BytesMut) -> Result<(), CodecError> {
        match self.protocol {
            ProtocolVersion::V311 => encode_v4(packet, out),
            ProtocolVersion::V5 => encode_v5(packet, out, self.max_outgoing),
        }
    }
}

fn decode_v4(buf: &mut BytesMut, max: usize) -> Result<Option<Inbound>, CodecError> {
    let packet = match p4::Packet::read(buf, max) {
        Ok(p) => p,
        Err(m4::Error::InsufficientBytes(_)) => return Ok(None),
        Err(m4::Error::PayloadSizeLimitExceeded(size)) => {
            return Err(CodecError::TooLarge { size, max })
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Some(match packet {
        p4::Packet::Connect(c) => {
            let (username, password) = match c.login {
                Some(l) => (Some(l.username), Some(Bytes::from(l.password.into_bytes()))),
                None => (None, None),
            };
            Inbound::Connect(ConnectPacket {
                client_id: c.client_id,
                clean_session: c.clean_session,
                keep_alive_secs: c.keep_alive,
                username,
                password,
                receive_maximum: None,
                max_packet_size: None,
            })
        }
        p4::Packet::Publish(p) => Inbound::Publish(InPublish {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos as u8,
            retain: p.retain,
            pkid: p.pkid,
        }),
        p4::Packet::PubAck(a) => Inbound::PubAck(a.pkid),
        p4::Packet::PubRec(a) => Inbound::PubRec(a.pkid),
        p4::Packet::PubRel(a) => Inbound::PubRel(a.pkid),
        p4::Packet::PubComp(a) => Inbound::PubComp(a.pkid),
        p4::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, f.qos as u8))
                .collect(),
        },
        p4::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        },
        p4::Packet::PingReq => Inbound::PingReq,
        p4::Packet::Disconnect => Inbound::Disconnect,
        p4::Packet::ConnAck(_) => Inbound::Unexpected("CONNACK"),
        p4::Packet::SubAck(_) => Inbound::Unexpected("SUBACK"),
        p4::Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
        p4::Packet::PingResp => Inbound::Unexpected("PINGRESP"),
    }))
}

fn decode_v5(buf: &mut BytesMut, max: usize) -> Result<Option<Inbound>, CodecError> {
    // rumqttc 0.25 refuses a DISCONNECT with remaining length 0, which MQTT 5 allows (it means
    // "normal disconnection"); accept it here.
    if buf.len() >= 2 && buf[0] == 0xE0 && buf[1] == 0 {
        let _ = buf.split_to(2);
        return Ok(Some(Inbound::Disconnect));
    }
    let limit = u32::try_from(max).unwrap_or(u32::MAX);
    let packet = match p5::Packet::read(buf, Some(limit)) {
        Ok(p) => p,
        Err(m5::Error::InsufficientBytes(_)) => return Ok(None),
        Err(m5::Error::PayloadSizeLimitExceeded { pkt_size, .. }) => {
            return Err(CodecError::TooLarge {
                size: pkt_size,
                max,
            })
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Some(match packet {
        p5::Packet::Connect(c, _will, login) => {
            let (username, password) = match login {
                Some(l) => (Some(l.username), Some(Bytes::from(l.password.into_bytes()))),
                None => (None, None),
            };
            let (receive_maximum, max_packet_size) = c
                .properties
                .as_ref()
                .map_or((None, None), |p| (p.receive_maximum, p.max_packet_size));
            Inbound::Connect(ConnectPacket {
                client_id: c.client_id,
                clean_session: c.clean_start,
                keep_alive_secs: c.keep_alive,
                username,
                password,
                receive_maximum,
                max_packet_size,
            })
        }
        p5::Packet::Publish(p) => {
            if p.topic.is_empty()
                || p.properties
                    .as_ref()
                    .is_some_and(|props| props.topic_alias.is_some())
            {
                return Err(CodecError::TopicAlias);
            }
            let topic = String::from_utf8(p.topic.to_vec()).map_err(|_| CodecError::TopicNotUtf8)?;
            Inbound::Publish(InPublish {
                topic,
                payload: p.payload,
                qos: p.qos as u8,
                retain: p.retain,
                pkid: p.pkid,
            })
        }
        p5::Packet::PubAck(a) => Inbound::PubAck(a.pkid),
        p5::Packet::PubRec(a) => Inbound::PubRec(a.pkid),
        p5::Packet::PubRel(a) => Inbound::PubRel(a.pkid),
        p5::Packet::PubComp(a) => Inbound::PubComp(a.pkid),
        p5::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, f.qos as u8))
                .collect(),
        },
        p5::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters,
        },
        p5::Packet::PingReq(_) => Inbound::PingReq,
        p5::Packet::Disconnect(_) => Inbound::Disconnect,
        p5::Packet::Auth(_) => Inbound::Unexpected("AUTH"),
        p5::Packet::ConnAck(_) => Inbound::Unexpected("CONNACK"),
        p5::Packet::SubAck(_) => Inbound::Unexpected("SUBACK"),
        p5::Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
        p5::Packet::PingResp(_) => Inbound::Unexpected("PINGRESP"),
    }))
}

fn qos4(q: u8) -> m4::QoS {
    match q {
        0 => m4::QoS::AtMostOnce,
        1 => m4::QoS::AtLeastOnce,
        _ => m4::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> m5::QoS {
    match q {
        0 => m5::QoS::AtMostOnce,
        1 => m5::QoS::AtLeastOnce,
        _ => m5::QoS::ExactlyOnce,
    }
}

fn encode_v4(packet: Outbound<'_>, out: &mut BytesMut) -> Result<(), CodecError> {
    let packet = match packet {
        Outbound::ConnAck {
            session_present,
            code,
            ..
        } => {
            let code = match code {
                ConnAckCode::Accepted => p4::ConnectReturnCode::Success,
                ConnAckCode::UnsupportedVersion => p4::ConnectReturnCode::RefusedProtocolVersion,
                ConnAckCode::BadClientId => p4::ConnectReturnCode::BadClientId,
                ConnAckCode::ServerUnavailable => p4::ConnectReturnCode::ServiceUnavailable,
                ConnAckCode::BadCredentials => p4::ConnectReturnCode::BadUserNamePassword,
                ConnAckCode::NotAuthorized => p4::ConnectReturnCode::NotAuthorized,
            };
            p4::Packet::ConnAck(p4::ConnAck::new(code, session_present))
        }
        // MQTT 3.1.1 has no negative PUBACK: the session closes instead of sending one.
        Outbound::PubAck { pkid, .. } => p4::Packet::PubAck(p4::PubAck::new(pkid)),
        Outbound::PubRec { pkid, .. } => p4::Packet::PubRec(p4::PubRec::new(pkid)),
        Outbound::PubComp { pkid, .. } => p4::Packet::PubComp(p4::PubComp::new(pkid)),
        Outbound::SubAck { pkid, codes } => p4::Packet::SubAck(p4::SubAck::new(
            pkid,
            codes
                .iter()
                .map(|c| match c {
                    SubCode::Granted(q) => p4::SubscribeReasonCode::Success(qos4(*q)),
                    _ => p4::SubscribeReasonCode::Failure,
                })
                .collect(),
        )),
        Outbound::UnsubAck { pkid, .. } => p4::Packet::UnsubAck(p4::UnsubAck::new(pkid)),
        Outbound::PingResp => p4::Packet::PingResp,
        Outbound::Publish {
            topic,
            payload,
            qos,
            pkid,
            retain,
        } => {
            let mut p = p4::Publish::from_bytes(topic, qos4(qos), payload);
            p.pkid = pkid;
            p.retain = retain;
            p4::Packet::Publish(p)
        }
        Outbound::Disconnect(_) => return Ok(()),
    };
    packet.write(out, usize::MAX)?;
    Ok(())
}

fn encode_v5(
    packet: Outbound<'_>,
    out: &mut BytesMut,
    max_outgoing: Option<u32>,
) -> Result<(), CodecError> {
    let ack_reason = |r: AckReason| match r {
        AckReason::Success => p5::PubAckReason::Success,
        AckReason::UnspecifiedError => p5::PubAckReason::UnspecifiedError,
        AckReason::NotAuthorized => p5::PubAckReason::NotAuthorized,
    };
    let packet = match packet {
        Outbound::ConnAck {
            session_present,
            code,
            assigned_client_id,
            receive_maximum,
            max_packet_size,
        } => {
            let code = match code {
                ConnAckCode::Accepted => p5::ConnectReturnCode::Success,
                ConnAckCode::UnsupportedVersion => p5::ConnectReturnCode::UnsupportedProtocolVersion,
                ConnAckCode::BadClientId => p5::ConnectReturnCode::ClientIdentifierNotValid,
                ConnAckCode::ServerUnavailable => p5::ConnectReturnCode::ServerUnavailable,
                ConnAckCode::BadCredentials => p5::ConnectReturnCode::BadUserNamePassword,
                ConnAckCode::NotAuthorized => p5::ConnectReturnCode::NotAuthorized,
            };
            let properties = (code == p5::ConnectReturnCode::Success).then(|| p5::ConnAckProperties {
                session_expiry_interval: None,
                receive_max: Some(receive_maximum),
                max_qos: None,
                retain_available: None,
                max_packet_size: Some(max_packet_size),
                assigned_client_identifier: assigned_client_id.map(str::to_owned),
                topic_alias_max: None,
                reason_string: None,
                user_properties: Vec::new(),
                wildcard_subscription_available: None,
                subscription_identifiers_available: Some(0),
                shared_subscription_available: Some(0),
                server_keep_alive: None,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            });
            p5::Packet::ConnAck(p5::ConnAck {
                session_present,
                code,
                properties,
            })
        }
        Outbound::PubAck { pkid, reason } => p5::Packet::PubAck(p5::PubAck {
            pkid,
            reason: ack_reason(reason),
            properties: None,
        }),
        Outbound::PubRec { pkid, reason } => p5::Packet::PubRec(p5::PubRec {
            pkid,
            reason: match reason {
                AckReason::Success => p5::PubRecReason::Success,
                AckReason::UnspecifiedError => p5::PubRecReason::UnspecifiedError,
                AckReason::NotAuthorized => p5::PubRecReason::NotAuthorized,
            },
            properties: None,
        }),
        Outbound::PubComp { pkid, found } => p5::Packet::PubComp(p5::PubComp {
            pkid,
            reason: if found {
                p5::PubCompReason::Success
            } else {
                p5::PubCompReason::PacketIdentifierNotFound
            },
            properties: None,
        }),
        Outbound::SubAck { pkid, codes } => p5::Packet::SubAck(p5::SubAck {
            pkid,
            return_codes: codes
                .iter()
                .map(|c| match c {
                    SubCode::Granted(q) => p5::SubscribeReasonCode::Success(qos5(*q)),
                    SubCode::Refused => p5::SubscribeReasonCode::Unspecified,
                    SubCode::InvalidFilter => p5::SubscribeReasonCode::TopicFilterInvalid,
                    SubCode::SharedNotSupported => {
                        p5::SubscribeReasonCode::SharedSubscriptionsNotSupported
                    }
                })
                .collect(),
            properties: None,
        }),
        Outbound::UnsubAck { pkid, count } => p5::Packet::UnsubAck(p5::UnsubAck {
            pkid,
            reasons: vec![p5::UnsubAckReason::Success; count],
            properties: None,
        }),
        Outbound::PingResp => p5::Packet::PingResp(p5::PingResp),
        Outbound::Publish {
            topic,
            payload,
            qos,
            pkid,
            retain,
        } => {
            let mut p = p5::Publish::new(topic, qos5(qos), payload, None);
            p.pkid = pkid;
            p.retain = retain;
            p5::Packet::Publish(p)
        }
        Outbound::Disconnect(reason) => {
            let code = match reason {
                CloseReason::SessionTakenOver => p5::DisconnectReasonCode::SessionTakenOver,
                CloseReason::KeepAliveTimeout => p5::DisconnectReasonCode::KeepAliveTimeout,
                CloseReason::ServerShuttingDown => p5::DisconnectReasonCode::ServerShuttingDown,
                CloseReason::ProtocolError => p5::DisconnectReasonCode::ProtocolError,
                CloseReason::TopicNameInvalid => p5::DisconnectReasonCode::TopicNameInvalid,
                CloseReason::NotAuthorized => p5::DisconnectReasonCode::NotAuthorized,
                CloseReason::UnspecifiedError => p5::DisconnectReasonCode::UnspecifiedError,
            };
            p5::Packet::Disconnect(p5::Disconnect::new(code))
        }
    };
    packet.write(out, max_outgoing)?;
    Ok(())
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
        assert_eq!(sniff_connect(&connect_bytes(4, "XXXX"), max), Sniff::Malformed);
        assert_eq!(sniff_connect(&[], max), Sniff::Incomplete);
        assert_eq!(sniff_connect(&[0x10], max), Sniff::Incomplete);
        assert_eq!(sniff_connect(&[0x10, 0x80], max), Sniff::Incomplete);
        assert_eq!(sniff_connect(&[0x30, 0x00], max), Sniff::NotConnect(3));
        assert_eq!(sniff_connect(&[0xff, 0xff, 0xff], max), Sniff::NotConnect(15));
        assert_eq!(sniff_connect(&[0x10, 0xff, 0xff, 0xff, 0xff], max), Sniff::Malformed);
        assert_eq!(sniff_connect(&[0x10, 0xff, 0xff, 0x7f], max), Sniff::Malformed);
        assert_eq!(sniff_connect(&[0x10, 0x02, 0x00, 0x09], max), Sniff::Malformed);
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
        assert!(matches!(codec.decode(&mut buf), Ok(Some(Inbound::Disconnect))));
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
            .encode(Outbound::Disconnect(CloseReason::KeepAliveTimeout), &mut out)
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
}
