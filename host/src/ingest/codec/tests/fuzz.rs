//! A bounded fuzzing pass over the MQTT codec, with proptest (`cargo fuzz` needs nightly).
//!
//! Inputs are arbitrary bytes and, more usefully, valid client packets of both protocol
//! versions (written by rumqttc's own encoder) damaged by random edits. Properties:
//! - decoding never panics, and never allocates more than a fixed multiple of the packet-size
//!   bound, whatever lengths and counts the bytes claim;
//! - `Ok(None)` ("need more bytes") consumes nothing, and every decoded packet consumes bytes;
//! - bytes split at arbitrary points decode exactly as the same bytes in one piece;
//! - valid packets round-trip: a client's packet decodes to its fields, and every packet the
//!   server encodes decodes (with rumqttc) to what was encoded.
//!
//! Each property runs `PROPTEST_CASES` cases (proptest's own variable; 256 by default, a few
//! seconds in a debug build). A failure prints the minimal input; keep it below as a
//! regression case when fixing the bug.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use rumqttc::mqttbytes::v4 as p4;
use rumqttc::mqttbytes::QoS as Q4;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as Q5;

use crate::alloc_meter::peak_bytes;
use crate::ingest::codec::*;

/// Most bytes a decode may allocate per byte of the packet-size bound. Strings are copied
/// once, and the smallest SUBSCRIBE filter (4 bytes on the wire) becomes a `(String, u8)`
/// entry of 32 bytes, twice over while rumqttc's list is turned into ours.
const ALLOC_PER_BOUND_BYTE: usize = 24;
/// Fixed allowance per decode (buffer bookkeeping, an error value).
const ALLOC_SLACK: usize = 4096;

fn codec(protocol: ProtocolVersion, max_incoming: usize) -> Codec {
    Codec {
        protocol,
        max_incoming,
        max_outgoing: None,
    }
}

fn protocol() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(ProtocolVersion::V311), Just(ProtocolVersion::V5)]
}

/// One decode step as text, so outcomes can be compared (errors by their message).
fn outcome(r: &Result<Option<Inbound>, CodecError>) -> String {
    match r {
        Ok(Some(p)) => format!("{p:?}"),
        Ok(None) => "need more".into(),
        Err(e) => format!("error: {e}"),
    }
}

/// Decodes packets from `buf` until it needs more bytes or fails, checking the invariants of
/// each step; returns the outcomes (the last is "need more" or an error).
fn decode_all(c: &Codec, buf: &mut BytesMut) -> Result<Vec<String>, TestCaseError> {
    let mut out = Vec::new();
    loop {
        let before = buf.len();
        let bound = before.min(c.max_incoming + 5);
        let (r, peak) = peak_bytes(|| c.decode(buf));
        prop_assert!(
            peak <= ALLOC_PER_BOUND_BYTE * bound + ALLOC_SLACK,
            "{peak} bytes allocated decoding {bound} bytes: {}",
            outcome(&r)
        );
        out.push(outcome(&r));
        match r {
            Ok(Some(_)) => prop_assert!(buf.len() < before, "a packet consumed no bytes"),
            Ok(None) => {
                prop_assert_eq!(buf.len(), before, "\"need more\" consumed bytes");
                return Ok(out);
            }
            Err(_) => return Ok(out),
        }
    }
}

/// Valid client packets (as devices send them) of `protocol`, one encoding each.
fn client_packets(protocol: ProtocolVersion) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    match protocol {
        ProtocolVersion::V311 => {
            let mut connect = p4::Connect::new("device-1");
            connect.keep_alive = 30;
            connect.set_login("pk&dn", "sign");
            connect.last_will = Some(p4::LastWill::new("will/t", "gone", Q4::AtLeastOnce, true));
            let mut publish = p4::Publish::new("/pk/dn/user/update", Q4::AtLeastOnce, "{\"t\":1}");
            publish.pkid = 7;
            let mut subscribe = p4::Subscribe::new("a/+/c", Q4::AtLeastOnce);
            subscribe.pkid = 3;
            subscribe.add("#".into(), Q4::AtMostOnce);
            let mut unsubscribe = p4::Unsubscribe::new("a/+/c");
            unsubscribe.pkid = 4;
            for p in [
                p4::Packet::Connect(connect),
                p4::Packet::Publish(publish),
                p4::Packet::Publish(p4::Publish::new("t", Q4::AtMostOnce, "")),
                p4::Packet::Subscribe(subscribe),
                p4::Packet::Unsubscribe(unsubscribe),
                p4::Packet::PubAck(p4::PubAck::new(9)),
                p4::Packet::PubRec(p4::PubRec::new(10)),
                p4::Packet::PubRel(p4::PubRel::new(11)),
                p4::Packet::PubComp(p4::PubComp::new(12)),
                p4::Packet::PingReq,
                p4::Packet::Disconnect,
            ] {
                let mut b = BytesMut::new();
                p.write(&mut b, usize::MAX).expect("a valid packet encodes");
                out.push(b.to_vec());
            }
        }
        ProtocolVersion::V5 => {
            let props = p5::ConnectProperties {
                session_expiry_interval: Some(60),
                receive_maximum: Some(16),
                max_packet_size: Some(4096),
                topic_alias_max: Some(0),
                request_response_info: Some(1),
                request_problem_info: Some(1),
                user_properties: vec![("k".into(), "v".into())],
                authentication_method: None,
                authentication_data: None,
            };
            let connect = p5::Connect {
                keep_alive: 30,
                client_id: "device-1".into(),
                clean_start: true,
                properties: Some(props),
            };
            let will = p5::LastWill::new("will/t", "gone", Q5::AtLeastOnce, false, None);
            let login = p5::Login::new("pk&dn", "sign");
            let mut publish = p5::Publish::new(
                "/pk/dn/user/update",
                Q5::AtLeastOnce,
                "{\"t\":1}",
                Some(p5::PublishProperties {
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(10),
                    topic_alias: None,
                    response_topic: Some("r".into()),
                    correlation_data: Some(Bytes::from_static(b"c")),
                    user_properties: vec![("a".into(), "b".into())],
                    subscription_identifiers: vec![],
                    content_type: Some("application/json".into()),
                }),
            );
            publish.pkid = 7;
            let mut subscribe = p5::Subscribe::new_many(
                [
                    p5::Filter::new("a/+/c", Q5::AtLeastOnce),
                    p5::Filter::new("#", Q5::AtMostOnce),
                ],
                None,
            );
            subscribe.pkid = 3;
            let mut unsubscribe = p5::Unsubscribe::new("a/+/c", None);
            unsubscribe.pkid = 4;
            for p in [
                p5::Packet::Connect(connect, Some(will), Some(login)),
                p5::Packet::Publish(publish),
                p5::Packet::Publish(p5::Publish::new("t", Q5::AtMostOnce, "", None)),
                p5::Packet::Subscribe(subscribe),
                p5::Packet::Unsubscribe(unsubscribe),
                p5::Packet::PubAck(p5::PubAck::new(9, None)),
                p5::Packet::PingReq(p5::PingReq),
                p5::Packet::Disconnect(p5::Disconnect::new(
                    p5::DisconnectReasonCode::NormalDisconnection,
                )),
            ] {
                let mut b = BytesMut::new();
                p.write(&mut b, None).expect("a valid packet encodes");
                out.push(b.to_vec());
            }
        }
    }
    out
}

/// One random edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), 0u8..8).prop_map(|(i, bit)| Edit::Flip(i, 1 << bit)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Remove),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, edits: &[Edit]) {
    for e in edits {
        let n = bytes.len();
        match *e {
            Edit::Set(i, b) if n > 0 => bytes[i % n] = b,
            Edit::Flip(i, m) if n > 0 => bytes[i % n] ^= m,
            Edit::Insert(i, b) => bytes.insert(i % (n + 1), b),
            Edit::Remove(i) if n > 0 => {
                bytes.remove(i % n);
            }
            Edit::Truncate(i) => bytes.truncate(i % (n + 1)),
            _ => {}
        }
    }
}

/// A stream of valid client packets (picked by index, repeats allowed) with random edits.
fn damaged_stream() -> impl Strategy<Value = (ProtocolVersion, Vec<u8>)> {
    (
        protocol(),
        prop::collection::vec(any::<prop::sample::Index>(), 1..4),
        prop::collection::vec(edit(), 0..6),
    )
        .prop_map(|(protocol, picks, edits)| {
            let packets = client_packets(protocol);
            let mut bytes: Vec<u8> = picks
                .iter()
                .flat_map(|i| packets[i.index(packets.len())].clone())
                .collect();
            apply(&mut bytes, &edits);
            (protocol, bytes)
        })
}

/// Feeds `bytes` in pieces cut at `cuts` and decodes after each piece, as the session does.
fn decode_in_pieces(
    c: &Codec,
    bytes: &[u8],
    cuts: &[prop::sample::Index],
) -> Result<Vec<String>, TestCaseError> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut from = 0;
    for to in at {
        buf.extend_from_slice(&bytes[from..to]);
        from = to;
        let mut step = decode_all(c, &mut buf)?;
        let last = step.pop().expect("at least one outcome");
        out.extend(step);
        // "Need more" before the last piece is the normal wait for the next piece.
        if last != "need more" || to == bytes.len() {
            let failed = last.starts_with("error");
            out.push(last);
            if failed {
                break;
            }
        }
    }
    Ok(out)
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_stay_within_the_allocation_bound(
        protocol in protocol(),
        max in prop_oneof![Just(64usize), Just(1024), Just(1 << 20)],
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        decode_all(&codec(protocol, max), &mut BytesMut::from(&bytes[..]))?;
    }

    #[test]
    fn damaged_client_packets_never_panic_and_stay_within_the_allocation_bound(
        (protocol, bytes) in damaged_stream(),
        max in prop_oneof![Just(16usize), Just(64), Just(1 << 20)],
    ) {
        decode_all(&codec(protocol, max), &mut BytesMut::from(&bytes[..]))?;
    }

    #[test]
    fn bytes_split_anywhere_decode_as_in_one_piece(
        (protocol, bytes) in damaged_stream(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let c = codec(protocol, 1 << 20);
        let whole = decode_all(&c, &mut BytesMut::from(&bytes[..]))?;
        let pieces = decode_in_pieces(&c, &bytes, &cuts)?;
        prop_assert_eq!(whole, pieces);
    }

    #[test]
    fn a_device_publish_decodes_to_its_fields(
        protocol in protocol(),
        topic in "[a-zA-Z0-9/_+#$ \u{e9}\u{4e2d}-]{1,40}",
        payload in prop::collection::vec(any::<u8>(), 0..300),
        qos in 0u8..3,
        pkid in 1u16..,
        retain in any::<bool>(),
    ) {
        let pkid = if qos == 0 { 0 } else { pkid };
        let mut b = BytesMut::new();
        match protocol {
            ProtocolVersion::V311 => {
                let q = [Q4::AtMostOnce, Q4::AtLeastOnce, Q4::ExactlyOnce][usize::from(qos)];
                let mut p = p4::Publish::new(topic.as_str(), q, payload.clone());
                p.pkid = pkid;
                p.retain = retain;
                p4::Packet::Publish(p).write(&mut b, usize::MAX).unwrap();
            }
            ProtocolVersion::V5 => {
                let q = [Q5::AtMostOnce, Q5::AtLeastOnce, Q5::ExactlyOnce][usize::from(qos)];
                let mut p = p5::Publish::new(topic.as_str(), q, payload.clone(), None);
                p.pkid = pkid;
                p.retain = retain;
                p5::Packet::Publish(p).write(&mut b, None).unwrap();
            }
        }
        match codec(protocol, 1 << 20).decode(&mut b) {
            Ok(Some(Inbound::Publish(p))) => {
                prop_assert_eq!(p.topic, topic);
                prop_assert_eq!(&p.payload[..], &payload[..]);
                prop_assert_eq!((p.qos, p.pkid, p.retain), (qos, pkid, retain));
            }
            other => prop_assert!(false, "{:?}", other),
        }
        prop_assert!(b.is_empty());
    }

    #[test]
    fn a_device_connect_and_subscribe_decode_to_their_fields(
        protocol in protocol(),
        client_id in "[a-zA-Z0-9|=,&._-]{0,64}",
        login in prop::option::of(("[ -~]{1,40}", "[ -~]{1,40}")),
        keep_alive in any::<u16>(),
        clean in any::<bool>(),
        filters in prop::collection::vec(("[a-z0-9/+#]{1,20}", 0u8..3), 1..8),
        pkid in 1u16..,
    ) {
        let mut b = BytesMut::new();
        match protocol {
            ProtocolVersion::V311 => {
                let mut c = p4::Connect::new(client_id.as_str());
                c.keep_alive = keep_alive;
                c.clean_session = clean;
                c.login = login.clone().map(|(u, p)| p4::Login::new(u, p));
                p4::Packet::Connect(c).write(&mut b, usize::MAX).unwrap();
                let qos = [Q4::AtMostOnce, Q4::AtLeastOnce, Q4::ExactlyOnce];
                let mut s = p4::Subscribe::new_many(
                    filters.iter().map(|(f, q)| p4::SubscribeFilter::new(f.clone(), qos[usize::from(*q)])),
                );
                s.pkid = pkid;
                p4::Packet::Subscribe(s).write(&mut b, usize::MAX).unwrap();
            }
            ProtocolVersion::V5 => {
                let c = p5::Connect {
                    keep_alive,
                    client_id: client_id.clone(),
                    clean_start: clean,
                    properties: None,
                };
                let l = login.clone().map(|(u, p)| p5::Login::new(u, p));
                p5::Packet::Connect(c, None, l).write(&mut b, None).unwrap();
                let qos = [Q5::AtMostOnce, Q5::AtLeastOnce, Q5::ExactlyOnce];
                let mut s = p5::Subscribe::new_many(
                    filters.iter().map(|(f, q)| p5::Filter::new(f.clone(), qos[usize::from(*q)])),
                    None,
                );
                s.pkid = pkid;
                p5::Packet::Subscribe(s).write(&mut b, None).unwrap();
            }
        }
        let c = codec(protocol, 1 << 20);
        match c.decode(&mut b) {
            Ok(Some(Inbound::Connect(got))) => {
                prop_assert_eq!(got.client_id, client_id);
                prop_assert_eq!((got.keep_alive_secs, got.clean_session), (keep_alive, clean));
                let got_login = got.username.zip(got.password);
                let want = login.map(|(u, p)| (u, Bytes::from(p.into_bytes())));
                prop_assert_eq!(got_login, want);
            }
            other => prop_assert!(false, "{:?}", other),
        }
        match c.decode(&mut b) {
            Ok(Some(Inbound::Subscribe { pkid: got_pkid, filters: got })) => {
                prop_assert_eq!(got_pkid, pkid);
                prop_assert_eq!(got, filters);
            }
            other => prop_assert!(false, "{:?}", other),
        }
        prop_assert!(b.is_empty());
    }

    #[test]
    fn a_server_publish_and_acks_decode_to_what_was_encoded(
        protocol in protocol(),
        topic in "[a-zA-Z0-9/_ \u{e9}-]{1,40}",
        payload in prop::collection::vec(any::<u8>(), 0..300),
        qos in 0u8..3,
        pkid in 1u16..,
        retain in any::<bool>(),
        granted in prop::collection::vec(0u8..3, 1..6),
    ) {
        let pkid_p = if qos == 0 { 0 } else { pkid };
        let c = codec(protocol, 1 << 20);
        let codes: Vec<SubCode> = granted.iter().map(|q| SubCode::Granted(*q)).collect();
        let mut out = BytesMut::new();
        c.encode(
            Outbound::Publish { topic: &topic, payload: Bytes::from(payload.clone()), qos, pkid: pkid_p, retain, dup: false },
            &mut out,
        ).unwrap();
        c.encode(Outbound::SubAck { pkid, codes: &codes }, &mut out).unwrap();
        c.encode(Outbound::PubAck { pkid, reason: AckReason::Success }, &mut out).unwrap();
        match protocol {
            ProtocolVersion::V311 => {
                match p4::Packet::read(&mut out, 1 << 20) {
                    Ok(p4::Packet::Publish(p)) => {
                        prop_assert_eq!(&p.topic, &topic);
                        prop_assert_eq!(&p.payload[..], &payload[..]);
                        prop_assert_eq!((p.qos as u8, p.pkid, p.retain), (qos, pkid_p, retain));
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
                match p4::Packet::read(&mut out, 1 << 20) {
                    Ok(p4::Packet::SubAck(s)) => {
                        prop_assert_eq!(s.pkid, pkid);
                        let got: Vec<u8> = s.return_codes.iter().map(|c| match c {
                            p4::SubscribeReasonCode::Success(q) => *q as u8,
                            p4::SubscribeReasonCode::Failure => 0x80,
                        }).collect();
                        prop_assert_eq!(got, granted);
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
                prop_assert!(matches!(p4::Packet::read(&mut out, 1 << 20), Ok(p4::Packet::PubAck(a)) if a.pkid == pkid));
            }
            ProtocolVersion::V5 => {
                match p5::Packet::read(&mut out, None) {
                    Ok(p5::Packet::Publish(p)) => {
                        prop_assert_eq!(&p.topic[..], topic.as_bytes());
                        prop_assert_eq!(&p.payload[..], &payload[..]);
                        prop_assert_eq!((p.qos as u8, p.pkid, p.retain), (qos, pkid_p, retain));
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
                match p5::Packet::read(&mut out, None) {
                    Ok(p5::Packet::SubAck(s)) => {
                        prop_assert_eq!(s.pkid, pkid);
                        let got: Vec<u8> = s.return_codes.iter().map(|c| match c {
                            p5::SubscribeReasonCode::Success(q) => *q as u8,
                            _ => 0x80,
                        }).collect();
                        prop_assert_eq!(got, granted);
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
                prop_assert!(matches!(p5::Packet::read(&mut out, None), Ok(p5::Packet::PubAck(a)) if a.pkid == pkid));
            }
        }
        prop_assert!(out.is_empty());
    }
}

/// Found by `damaged_client_packets_never_panic_and_stay_within_the_allocation_bound`: a
/// complete MQTT 5 PUBLISH whose property length runs past the packet's end was taken off the
/// buffer and answered "need more bytes", so the packet vanished without closing the
/// connection (and without an answer to the device).
#[test]
fn a_v5_packet_whose_properties_run_past_its_end_is_malformed() {
    let c = codec(ProtocolVersion::V5, 1 << 20);
    // PUBLISH, remaining length 4: topic "t", then a property length with its continuation bit
    // set and nothing after it; a PINGREQ follows.
    let mut buf = BytesMut::from(&[0x30u8, 4, 0, 1, b't', 0x80, 0xC0, 0][..]);
    match c.decode(&mut buf) {
        Err(CodecError::Truncated) => {}
        other => panic!("{other:?}"),
    }
    // Still incomplete (the packet's own bytes have not all arrived): wait, consume nothing.
    let mut buf = BytesMut::from(&[0x30u8, 4, 0, 1, b't'][..]);
    assert!(matches!(c.decode(&mut buf), Ok(None)));
    assert_eq!(buf.len(), 5);
}
