//! Unit tests of the MQTT codec; property tests against hostile bytes in `fuzz`.

mod fuzz;

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
            dup: false,
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
            dup: true,
        },
        Outbound::Publish {
            topic: "t",
            payload: Bytes::new(),
            qos: 0,
            pkid: 0,
            retain: true,
            dup: false,
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
