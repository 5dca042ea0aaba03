//! The start of a connection: reading the CONNECT, choosing the protocol version, applying the
//! client-id rules and the policy, and answering with the CONNACK.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::codec::{sniff_connect, Codec, ConnAckCode, ConnectPacket, Inbound, Outbound, Sniff};
use super::counters::bump;
use super::router::{Downlink, Registration};
use super::session::{DeviceStream, SessionCtx, FINAL_FLUSH, READ_CHUNK_BYTES};
use super::{ConnectInfo, ConnectRefusal, ProtocolVersion, SessionInfo};

/// An accepted CONNECT: everything the session loop starts from.
pub(super) struct Connected {
    pub codec: Codec,
    pub info: SessionInfo,
    pub registration: Registration,
    /// Clean session off: the session outlives the connection.
    pub persistent: bool,
    pub downlink_rx: mpsc::Receiver<Downlink>,
    /// Holds the CONNACK, sent with the session's first flush.
    pub wbuf: BytesMut,
    pub out_window: usize,
    pub max_inflight: usize,
    /// 1.5 x the client's keep-alive, or the listener's maximum idle time when the client
    /// disabled it.
    pub keep_alive: Duration,
    /// True when the client disabled its keep-alive (so `keep_alive` is the idle bound).
    pub idle_bound: bool,
}

/// Reads until a complete CONNECT is buffered, choosing the codec from its protocol level.
pub(super) async fn read_connect(
    stream: &mut impl DeviceStream,
    peer: SocketAddr,
    ctx: &SessionCtx,
    rbuf: &mut BytesMut,
) -> Option<(Codec, ConnectPacket)> {
    let max = ctx.cfg.max_packet_size_bytes;
    let deadline = Instant::now() + ctx.cfg.connect_timeout;
    loop {
        match sniff_connect(rbuf, max) {
            Sniff::Incomplete => {}
            Sniff::Version(protocol) => {
                let codec = Codec {
                    protocol,
                    max_incoming: max,
                    max_outgoing: None,
                };
                match codec.decode(rbuf) {
                    Ok(Some(Inbound::Connect(c))) => return Some((codec, c)),
                    Ok(Some(other)) => {
                        return malformed(ctx, peer, &format!("expected CONNECT, got {other:?}"))
                    }
                    Ok(None) => {}
                    Err(e) => return malformed(ctx, peer, &e.to_string()),
                }
            }
            Sniff::UnsupportedLevel(level) => {
                // Answer in the 3.1.1 format every version understands, then close.
                let codec = Codec {
                    protocol: ProtocolVersion::V311,
                    max_incoming: max,
                    max_outgoing: None,
                };
                let mut out = BytesMut::new();
                let _ = codec.encode(connack(ConnAckCode::UnsupportedVersion), &mut out);
                let _ = tokio::time::timeout(FINAL_FLUSH, stream.write_all(&out)).await;
                bump(&ctx.counters.connects_refused_total);
                tracing::info!(%peer, level, "MQTT CONNECT refused: unsupported protocol level");
                return None;
            }
            Sniff::NotConnect(kind) => {
                return malformed(
                    ctx,
                    peer,
                    &format!("first packet is not CONNECT (packet type {kind})"),
                )
            }
            Sniff::Malformed => return malformed(ctx, peer, "malformed or oversized CONNECT"),
        }
        if rbuf.capacity() - rbuf.len() < 1024 {
            rbuf.reserve(READ_CHUNK_BYTES);
        }
        let read = tokio::select! {
            _ = ctx.shutdown.cancelled() => return None,
            read = tokio::time::timeout_at(deadline, stream.read_buf(rbuf)) => read,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(_)) => {}
            Err(_) => {
                bump(&ctx.counters.connect_timeouts_total);
                tracing::debug!(%peer, "MQTT connection sent no CONNECT in time");
                return None;
            }
        }
    }
}

fn malformed<T>(ctx: &SessionCtx, peer: SocketAddr, why: &str) -> Option<T> {
    bump(&ctx.counters.malformed_total);
    tracing::warn!(%peer, "closing MQTT connection: {why}");
    None
}

fn connack(code: ConnAckCode) -> Outbound<'static> {
    Outbound::ConnAck {
        session_present: false,
        code,
        assigned_client_id: None,
        receive_maximum: 0,
        max_packet_size: 0,
    }
}

/// Applies the client-id rules and the policy, answers with the CONNACK (queued in
/// `Connected::wbuf`) and registers the session with the router (taking over an older one with
/// the same client id). `None` when the CONNECT was refused (the answer was sent).
pub(super) async fn accept_connect(
    stream: &mut impl DeviceStream,
    peer: SocketAddr,
    ctx: &Arc<SessionCtx>,
    mut codec: Codec,
    c: ConnectPacket,
) -> Option<Connected> {
    let mut out = BytesMut::with_capacity(256);
    let generated = c.client_id.is_empty();
    let refusal = if generated && codec.protocol == ProtocolVersion::V311 && !c.clean_session {
        // 3.1.1 (MQTT-3.1.3-8): an empty client id needs clean session.
        Err(ConnectRefusal::BadClientId)
    } else {
        Ok(())
    };
    let client_id: Arc<str> = if generated {
        Arc::from(format!("sluice-{:016x}", rand::random::<u64>()))
    } else {
        Arc::from(c.client_id)
    };
    let info = ConnectInfo {
        client_id: client_id.clone(),
        client_id_generated: generated,
        username: c.username.clone(),
        password: c.password,
        peer,
        protocol: codec.protocol,
        clean_session: c.clean_session,
    };
    let decision = refusal.and_then(|()| ctx.cfg.policy.on_connect(&info));
    let identity = match decision {
        Ok(identity) => identity,
        Err(refusal) => {
            let code = match refusal {
                ConnectRefusal::BadCredentials => ConnAckCode::BadCredentials,
                ConnectRefusal::NotAuthorized => ConnAckCode::NotAuthorized,
                ConnectRefusal::BadClientId => ConnAckCode::BadClientId,
                ConnectRefusal::ServerUnavailable => ConnAckCode::ServerUnavailable,
            };
            let _ = codec.encode(connack(code), &mut out);
            let _ = tokio::time::timeout(FINAL_FLUSH, stream.write_all(&out)).await;
            let _ = tokio::time::timeout(FINAL_FLUSH, stream.shutdown()).await;
            bump(&ctx.counters.connects_refused_total);
            tracing::info!(%peer, %client_id, ?refusal, "MQTT CONNECT refused");
            return None;
        }
    };

    let (downlink_tx, downlink_rx) = mpsc::channel(ctx.cfg.downlink_queue_len.max(1));
    // Clean session off keeps the subscriptions for the next connection (MQTT 5: only when the
    // client asked for a session expiry), and QoS 1 downlink sent while it is away.
    let persistent = match (c.clean_session, codec.protocol, c.session_expiry_secs) {
        (true, _, _) => None,
        (false, ProtocolVersion::V311, _) => Some(Duration::MAX),
        (false, ProtocolVersion::V5, Some(secs)) if secs > 0 => {
            Some(Duration::from_secs(u64::from(secs)))
        }
        (false, ProtocolVersion::V5, _) => None,
    };
    let reg = ctx
        .router
        .register(client_id.clone(), identity.clone(), downlink_tx, persistent);
    if reg.took_over {
        tracing::info!(%peer, %client_id, "MQTT session taken over by a new connection");
    }
    let max_inflight = ctx.cfg.max_inflight.max(1);
    let announced_max =
        u32::try_from(ctx.cfg.max_packet_size_bytes.saturating_add(5)).unwrap_or(u32::MAX);
    let _ = codec.encode(
        Outbound::ConnAck {
            session_present: reg.session_present,
            code: ConnAckCode::Accepted,
            assigned_client_id: generated.then_some(&*client_id),
            receive_maximum: max_inflight,
            max_packet_size: announced_max,
        },
        &mut out,
    );
    codec.max_outgoing = c.max_packet_size;
    let out_window = usize::from(
        ctx.cfg
            .downlink_inflight
            .min(c.receive_maximum.unwrap_or(u16::MAX))
            .max(1),
    );
    // Keep-alive 0 turns the client's keep-alive off; its silence is still bounded.
    let keep_alive = if c.keep_alive_secs > 0 {
        Duration::from_millis(u64::from(c.keep_alive_secs) * 1500)
    } else {
        ctx.cfg.max_idle
    };
    tracing::debug!(%peer, %client_id, protocol = ?codec.protocol, "MQTT session connected");
    Some(Connected {
        codec,
        info: SessionInfo {
            client_id,
            identity,
            username: c.username,
            peer,
            protocol: info.protocol,
        },
        registration: reg,
        persistent: persistent.is_some(),
        downlink_rx,
        wbuf: out,
        out_window,
        max_inflight: usize::from(max_inflight),
        keep_alive,
        idle_bound: c.keep_alive_secs == 0,
    })
}
