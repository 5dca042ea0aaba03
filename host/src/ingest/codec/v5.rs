//! MQTT 5 through rumqttc's `v5::mqttbytes::v5`.

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes as m5;
use rumqttc::v5::mqttbytes::v5 as p5;

use super::{
    AckReason, CloseReason, CodecError, ConnAckCode, ConnectPacket, InPublish, Inbound, Outbound,
    SubCode,
};

/// Decodes one packet; `Ok(None)` when more bytes are needed.
pub(super) fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Inbound>, CodecError> {
    // rumqttc 0.25 refuses a DISCONNECT with remaining length 0, which MQTT 5 allows (it means
    // "normal disconnection"); accept it here.
    if buf.len() >= 2 && buf[0] == 0xE0 && buf[1] == 0 {
        let _ = buf.split_to(2);
        return Ok(Some(Inbound::Disconnect));
    }
    let limit = u32::try_from(max).unwrap_or(u32::MAX);
    let before = buf.len();
    let packet = match p5::Packet::read(buf, Some(limit)) {
        Ok(p) => p,
        Err(m5::Error::InsufficientBytes(_)) if buf.len() == before => return Ok(None),
        // The whole packet was taken off the buffer and a field inside it (a property length)
        // runs past its end: malformed, not "wait for more bytes".
        Err(m5::Error::InsufficientBytes(_)) => return Err(CodecError::Truncated),
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
            let props = c.properties.as_ref();
            let receive_maximum = props.and_then(|p| p.receive_maximum);
            let max_packet_size = props.and_then(|p| p.max_packet_size);
            let session_expiry_secs = props.and_then(|p| p.session_expiry_interval);
            Inbound::Connect(ConnectPacket {
                client_id: c.client_id,
                clean_session: c.clean_start,
                keep_alive_secs: c.keep_alive,
                username,
                password,
                receive_maximum,
                max_packet_size,
                session_expiry_secs,
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
            let topic =
                String::from_utf8(p.topic.to_vec()).map_err(|_| CodecError::TopicNotUtf8)?;
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

fn qos5(q: u8) -> m5::QoS {
    match q {
        0 => m5::QoS::AtMostOnce,
        1 => m5::QoS::AtLeastOnce,
        _ => m5::QoS::ExactlyOnce,
    }
}

/// Appends one packet; fails (writing nothing) when it exceeds the client's maximum size.
pub(super) fn encode(
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
                ConnAckCode::UnsupportedVersion => {
                    p5::ConnectReturnCode::UnsupportedProtocolVersion
                }
                ConnAckCode::BadClientId => p5::ConnectReturnCode::ClientIdentifierNotValid,
                ConnAckCode::ServerUnavailable => p5::ConnectReturnCode::ServerUnavailable,
                ConnAckCode::BadCredentials => p5::ConnectReturnCode::BadUserNamePassword,
                ConnAckCode::NotAuthorized => p5::ConnectReturnCode::NotAuthorized,
            };
            let properties =
                (code == p5::ConnectReturnCode::Success).then(|| p5::ConnAckProperties {
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
                    SubCode::QuotaExceeded => p5::SubscribeReasonCode::QuotaExceeded,
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
            dup,
        } => {
            let mut p = p5::Publish::new(topic, qos5(qos), payload, None);
            p.pkid = pkid;
            p.retain = retain;
            p.dup = dup;
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
                CloseReason::QuotaExceeded => p5::DisconnectReasonCode::QuotaExceeded,
            };
            // Always with a reason string: rumqttc 0.25 mis-frames a DISCONNECT whose reason is
            // not "normal" when it has no properties (a byte the remaining length does not
            // count) or empty ones (written as a bare normal DISCONNECT).
            p5::Packet::Disconnect(p5::Disconnect {
                reason_code: code,
                properties: Some(p5::DisconnectProperties {
                    session_expiry_interval: None,
                    reason_string: Some(reason.as_str().to_owned()),
                    user_properties: Vec::new(),
                    server_reference: None,
                }),
            })
        }
    };
    packet.write(out, max_outgoing)?;
    Ok(())
}
