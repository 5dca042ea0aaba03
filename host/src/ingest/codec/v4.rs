//! MQTT 3.1.1 through rumqttc's `mqttbytes::v4`.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes as m4;
use rumqttc::mqttbytes::v4 as p4;

use super::{CodecError, ConnAckCode, ConnectPacket, InPublish, Inbound, Outbound, SubCode};

/// Decodes one packet; `Ok(None)` when more bytes are needed.
pub(super) fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Inbound>, CodecError> {
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
                session_expiry_secs: None,
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

fn qos4(q: u8) -> m4::QoS {
    match q {
        0 => m4::QoS::AtMostOnce,
        1 => m4::QoS::AtLeastOnce,
        _ => m4::QoS::ExactlyOnce,
    }
}

/// Appends one packet; MQTT 3.1.1 has no server DISCONNECT, so that encodes to nothing.
pub(super) fn encode(packet: Outbound<'_>, out: &mut BytesMut) -> Result<(), CodecError> {
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
            dup,
        } => {
            let mut p = p4::Publish::from_bytes(topic, qos4(qos), payload);
            p.pkid = pkid;
            p.retain = retain;
            p.dup = dup;
            p4::Packet::Publish(p)
        }
        Outbound::Disconnect(_) => return Ok(()),
    };
    packet.write(out, usize::MAX)?;
    Ok(())
}
