//! One device connection, from CONNECT to close.
//!
//! A single task owns the socket and runs a `select!` over: reading packets, the ordered queue
//! of pending acks (`AckQueue`, so PUBACKs leave in the order the PUBLISHes came while many
//! commits are in flight), a message waiting for room in the sink, downlink messages from the
//! router, the keep-alive timer, takeover and shutdown. Nothing here holds a lock across an
//! await, and the reader only ever waits on the pipeline through the bounded sink (or the
//! per-connection in-flight bound): that is the back-pressure that reaches the device.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::acks::{AckQueue, AckWait, Done, Resolved};
use super::codec::{AckReason, CloseReason, Codec, InPublish, Inbound, Outbound, SubCode};
use super::connect::{accept_connect, read_connect, Connected};
use super::counters::{bump, IngestCounters};
use super::keep::{kept_id, KeepError, KeptMessage};
use super::listener::ListenerConfig;
use super::router::{Downlink, SessionRouter};
use super::status::status_message;
use super::thing_reply::thing_reply;
use super::{now_ms, Ack, IngestMessage, IngestSink, Ingested, ProtocolVersion, SessionInfo};
use crate::topic::{validate_filter, validate_topic, SHARED_PREFIX};

/// A device connection's byte stream: plain TCP or TLS over TCP; sessions do not care which.
pub(crate) trait DeviceStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> DeviceStream for T {}

/// What every session of one listener shares.
pub(crate) struct SessionCtx {
    pub cfg: Arc<ListenerConfig>,
    pub router: SessionRouter,
    pub counters: Arc<IngestCounters>,
    pub sink: IngestSink,
    pub shutdown: CancellationToken,
}

/// Free space kept in the read buffer before each read.
pub(super) const READ_CHUNK_BYTES: usize = 16 * 1024;
/// How long the last words (final acks, a DISCONNECT) may take to write before closing.
pub(super) const FINAL_FLUSH: Duration = Duration::from_secs(1);
/// Packets decoded and handled in one turn before the task yields to the runtime: a client that
/// keeps its read buffer full must not hold a worker thread (and every other connection and
/// HTTP request scheduled on it) for longer than one turn's work.
const PACKETS_PER_TURN: usize = 64;

/// Serves one accepted connection to the end; never panics on what the device sends.
pub(crate) async fn run_connection(
    mut stream: impl DeviceStream,
    peer: SocketAddr,
    ctx: Arc<SessionCtx>,
) {
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let Some((codec, connect)) = read_connect(&mut stream, peer, &ctx, &mut rbuf).await else {
        return;
    };
    let Some(connected) = accept_connect(&mut stream, peer, &ctx, codec, connect).await else {
        return;
    };
    let mut session = Session::new(ctx.clone(), connected, rbuf);
    bump(&ctx.counters.sessions_active);
    let connected_at_ms = now_ms();
    session.send_status(true, connected_at_ms).await;
    let exit = session.run(&mut stream).await;
    let taken_over = matches!(exit, Exit::TakenOver);
    session.close(&mut stream, exit).await;
    ctx.router
        .unregister(session.session_id, &session.info.client_id);
    session.keep_leftovers().await;
    ctx.cfg.policy.on_disconnect(&session.info);
    ctx.counters.sessions_active.fetch_sub(1, Ordering::Relaxed);
    // A session taken over by the same device's new connection: the device stays online.
    if !taken_over {
        let idle_ms = session.last_read.elapsed().as_millis() as u64;
        session
            .send_status(false, now_ms().saturating_sub(idle_ms).max(connected_at_ms))
            .await;
    }
}

/// Why a session ended; decides the log line, the counter and the MQTT 5 DISCONNECT reason.
#[derive(Debug)]
enum Exit {
    ClientClosed,
    ClientDisconnect,
    Io(std::io::Error),
    WriteTimeout,
    Malformed(String),
    Protocol(String),
    BadTopic(String),
    NotAuthorized(String),
    Rejected(String),
    KeepAlive,
    Idle,
    TooManyFilters(usize),
    TakenOver,
    Shutdown,
    SinkClosed,
}

/// A QoS 1 downlink sent and not yet acked: kept so a persistent session can resend it.
struct Outgoing {
    topic: Arc<str>,
    payload: Bytes,
    /// Set when it came from the store (acked: forget it there).
    kept_id: Option<String>,
    /// The order it was sent in (packet ids wrap, so they do not tell).
    sent: u64,
}

/// What a persistent session tracks of its kept messages.
struct Kept {
    store: Arc<dyn super::keep::SessionStore>,
    /// Kept messages loaded and not yet sent, oldest first.
    queue: VecDeque<KeptMessage>,
    /// Ids of kept messages this session has loaded (sent or queued).
    known: HashSet<String>,
    /// A read of the store in progress (on its own task).
    loading: Option<oneshot::Receiver<Result<Vec<KeptMessage>, KeepError>>>,
    /// Another read was asked for while one was in progress.
    reload: bool,
    /// Kept messages the device acked, to forget in the store.
    acked: Vec<String>,
}

impl Kept {
    fn load(&mut self, client_id: &Arc<str>) {
        if self.loading.is_some() {
            self.reload = true;
            return;
        }
        let (store, client_id) = (self.store.clone(), client_id.clone());
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(store.kept(&client_id).await);
        });
        self.loading = Some(rx);
    }
}

struct Session {
    ctx: Arc<SessionCtx>,
    codec: Codec,
    info: SessionInfo,
    session_id: u64,
    takeover: CancellationToken,
    downlink_rx: mpsc::Receiver<Downlink>,
    /// Persistent sessions only: the store of what is kept for it while it is away.
    kept: Option<Kept>,
    /// Persistent sessions only: woken when a message was kept for this client id after the
    /// session began (a field apart from `kept`, so the loop can wait on it while reading).
    nudge: Option<Arc<Notify>>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Acks of QoS 1/2 publishes handed to the sink, in arrival order.
    pending: AckQueue,
    /// A publish waiting for room in the sink (reads pause meanwhile).
    stalled: Option<(Ingested, Option<AckWait>)>,
    /// Packet ids of QoS 2 publishes received and not yet released by PUBREL.
    qos2_ids: HashSet<u16>,
    /// QoS 1 downlink publishes the device has not acked, by packet id.
    out_inflight: HashMap<u16, Outgoing>,
    out_window: usize,
    next_pkid: u16,
    /// Counts QoS 1 downlink sent, to order [`Outgoing`].
    sent: u64,
    max_inflight: usize,
    /// 1.5 x the client's keep-alive, or the maximum idle time when the client disabled it.
    keep_alive: Duration,
    /// True when `keep_alive` is the maximum idle time (keep-alive 0).
    idle_bound: bool,
    last_read: Instant,
}

impl Session {
    fn new(ctx: Arc<SessionCtx>, c: Connected, rbuf: BytesMut) -> Session {
        let kept = match (c.persistent, ctx.router.store()) {
            (true, Some(store)) => {
                let mut kept = Kept {
                    store: store.clone(),
                    queue: VecDeque::new(),
                    known: HashSet::new(),
                    loading: None,
                    reload: false,
                    acked: Vec::new(),
                };
                kept.load(&c.info.client_id);
                Some(kept)
            }
            _ => None,
        };
        Session {
            nudge: kept.is_some().then(|| c.registration.nudge.clone()),
            kept,
            ctx,
            codec: c.codec,
            info: c.info,
            session_id: c.registration.session_id,
            takeover: c.registration.takeover,
            downlink_rx: c.downlink_rx,
            rbuf,
            wbuf: c.wbuf,
            pending: AckQueue::default(),
            stalled: None,
            qos2_ids: HashSet::new(),
            out_inflight: HashMap::new(),
            out_window: c.out_window,
            next_pkid: 0,
            sent: 0,
            max_inflight: c.max_inflight,
            keep_alive: c.keep_alive,
            idle_bound: c.idle_bound,
            last_read: Instant::now(),
        }
    }

    async fn run(&mut self, stream: &mut impl DeviceStream) -> Exit {
        let ctx = self.ctx.clone();
        let ka_sleep = tokio::time::sleep(self.keep_alive);
        tokio::pin!(ka_sleep);
        let mut drain_deadline: Option<Instant> = None;
        loop {
            let mut more_buffered = false;
            if drain_deadline.is_none() {
                match self.process_input() {
                    Ok(more) => more_buffered = more,
                    Err(exit) => return exit,
                }
            } else if self.pending.is_empty() {
                return Exit::Shutdown;
            }
            if drain_deadline.is_none() {
                self.send_kept();
            }
            if let Err(exit) = self.flush(stream).await {
                return exit;
            }
            if more_buffered {
                // A turn's budget is spent: let other tasks run, then go on with what is
                // buffered before reading more.
                tokio::task::yield_now().await;
                if self.takeover.is_cancelled() {
                    return Exit::TakenOver;
                }
                continue;
            }
            let can_read = drain_deadline.is_none()
                && self.stalled.is_none()
                && self.pending.len() < self.max_inflight;
            if !can_read {
                // Paused by us, not silent: the keep-alive only counts the device's silence.
                self.last_read = Instant::now();
            }
            // What was kept while the device was away goes out before newer downlink.
            let kept_waiting = self.kept.as_ref().is_some_and(|k| !k.queue.is_empty());
            let downlink_ready = drain_deadline.is_none()
                && self.out_inflight.len() < self.out_window
                && !kept_waiting;
            let kept_loading = self.kept.as_ref().is_some_and(|k| k.loading.is_some());
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(READ_CHUNK_BYTES);
            }
            let stalled_queue = self.stalled.as_ref().map(|(i, _)| ctx.sink.queue_for(i));
            tokio::select! {
                biased;
                _ = self.takeover.cancelled() => return Exit::TakenOver,
                _ = ctx.shutdown.cancelled(), if drain_deadline.is_none() => {
                    drain_deadline = Some(Instant::now() + ctx.cfg.shutdown_grace);
                    // Not handed over yet, so not acked: the device sends it again.
                    self.stalled = None;
                }
                _ = sleep_until_opt(drain_deadline), if drain_deadline.is_some() => {
                    return Exit::Shutdown;
                }
                done = self.pending.next(), if !self.pending.is_empty() => {
                    if let Err(exit) = self.on_ack(done) {
                        return exit;
                    }
                    // Batch every ack that is ready into the same write.
                    while let Some(done) = self.pending.ready() {
                        if let Err(exit) = self.on_ack(done) {
                            return exit;
                        }
                    }
                }
                permit = reserve_on(stalled_queue), if self.stalled.is_some() => {
                    let Ok(permit) = permit else { return Exit::SinkClosed };
                    if let Some((ingested, wait)) = self.stalled.take() {
                        permit.send(ingested);
                        bump(&ctx.counters.publishes_in_total);
                        if let Some(wait) = wait {
                            self.pending.push_back(wait);
                        }
                    }
                }
                read = stream.read_buf(&mut self.rbuf), if can_read => match read {
                    Ok(0) => return Exit::ClientClosed,
                    Ok(_) => self.last_read = Instant::now(),
                    Err(e) => return Exit::Io(e),
                },
                loaded = load_of(&mut self.kept), if kept_loading => self.on_kept_loaded(loaded),
                () = nudged(self.nudge.as_deref()), if self.nudge.is_some() => {
                    let client_id = self.info.client_id.clone();
                    if let Some(kept) = &mut self.kept {
                        kept.load(&client_id);
                    }
                }
                Some(downlink) = self.downlink_rx.recv(), if downlink_ready => {
                    self.send_downlink(downlink);
                    while self.out_inflight.len() < self.out_window {
                        let Ok(downlink) = self.downlink_rx.try_recv() else { break };
                        self.send_downlink(downlink);
                    }
                }
                () = &mut ka_sleep => {
                    let due = self.last_read + self.keep_alive;
                    if due <= Instant::now() {
                        return if self.idle_bound { Exit::Idle } else { Exit::KeepAlive };
                    }
                    ka_sleep.as_mut().reset(due);
                }
            }
        }
    }

    /// Decodes and handles buffered packets while the in-flight bound and the sink allow, at
    /// most [`PACKETS_PER_TURN`]; `Ok(true)` when it stopped at that budget (more may be
    /// buffered).
    fn process_input(&mut self) -> Result<bool, Exit> {
        let mut now = None;
        let mut budget = PACKETS_PER_TURN;
        while self.stalled.is_none() && self.pending.len() < self.max_inflight {
            if budget == 0 {
                return Ok(true);
            }
            budget -= 1;
            let packet = match self.codec.decode(&mut self.rbuf) {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(e) => return Err(Exit::Malformed(e.to_string())),
            };
            match packet {
                Inbound::Publish(p) => {
                    let received_at_ms = *now.get_or_insert_with(now_ms);
                    self.on_publish(p, received_at_ms)?;
                }
                Inbound::PubAck(pkid) => {
                    let kept_id = self.out_inflight.remove(&pkid).and_then(|o| o.kept_id);
                    if let (Some(id), Some(kept)) = (kept_id, &mut self.kept) {
                        kept.acked.push(id);
                    }
                }
                Inbound::PubRel(pkid) => {
                    let found = self.qos2_ids.remove(&pkid);
                    self.encode(Outbound::PubComp { pkid, found });
                }
                // sluice never sends QoS 2 downlink, so these answer nothing of ours.
                Inbound::PubRec(pkid) | Inbound::PubComp(pkid) => {
                    tracing::debug!(client_id = %self.info.client_id, pkid, "ignoring PUBREC/PUBCOMP");
                }
                Inbound::Subscribe { pkid, filters } => {
                    self.check_filter_count(filters.len())?;
                    self.on_subscribe(pkid, filters);
                }
                Inbound::Unsubscribe { pkid, filters } => {
                    self.check_filter_count(filters.len())?;
                    self.ctx.router.unsubscribe(self.session_id, &filters);
                    self.encode(Outbound::UnsubAck {
                        pkid,
                        count: filters.len(),
                    });
                }
                Inbound::PingReq => self.encode(Outbound::PingResp),
                Inbound::Disconnect => return Err(Exit::ClientDisconnect),
                Inbound::Connect(_) => return Err(Exit::Protocol("second CONNECT".into())),
                Inbound::Unexpected(kind) => {
                    return Err(Exit::Protocol(format!("unexpected {kind} from a client")))
                }
            }
        }
        self.forget_acked();
        Ok(false)
    }

    /// Tells the store the device has the kept messages it acked (in the background: a
    /// message acked but not yet forgotten when the device reconnects is resent, flagged DUP).
    fn forget_acked(&mut self) {
        let Some(kept) = &mut self.kept else { return };
        if kept.acked.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut kept.acked);
        let store = kept.store.clone();
        let client_id = self.info.client_id.clone();
        let counters = self.ctx.counters.clone();
        tokio::spawn(async move { forget(&*store, &client_id, &ids, &counters).await });
    }

    /// Queues kept messages read from the store that this session has not seen yet.
    fn on_kept_loaded(&mut self, loaded: Result<Vec<KeptMessage>, KeepError>) {
        let client_id = self.info.client_id.clone();
        let Some(kept) = &mut self.kept else { return };
        kept.loading = None;
        match loaded {
            Ok(messages) => {
                for m in messages {
                    if kept.known.insert(m.id.clone()) {
                        kept.queue.push_back(m);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%client_id, "kept messages not read, trying again on the next nudge or reconnect: {e}");
            }
        }
        if std::mem::take(&mut kept.reload) {
            kept.load(&client_id);
        }
    }

    /// Sends queued kept messages while the device's in-flight window has room.
    fn send_kept(&mut self) {
        loop {
            if self.out_inflight.len() >= self.out_window {
                return;
            }
            let Some(m) = self.kept.as_mut().and_then(|k| k.queue.pop_front()) else {
                return;
            };
            let topic: Arc<str> = Arc::from(m.topic.as_str());
            self.send_publish(topic, m.payload, 1, m.dup, Some(m.id));
        }
    }

    /// After the connection closed (and the session left the router): a persistent session
    /// keeps what the device did not ack, and what was still queued for it, for its next
    /// connection. Messages already sent are flagged DUP.
    async fn keep_leftovers(&mut self) {
        let Some(kept) = &mut self.kept else { return };
        let store = kept.store.clone();
        let client_id = self.info.client_id.clone();
        let retention = self.ctx.router.limits().offline_retention;
        let expires_at_ms = now_ms() + retention.as_millis() as u64;
        let mut inflight: Vec<Outgoing> = self.out_inflight.drain().map(|(_, o)| o).collect();
        inflight.sort_by_key(|o| o.sent);
        // (message, new to the store): a message that came from the store keeps its id, and
        // so its place; the others get ids in the order they were sent or queued.
        let mut leftovers: Vec<(KeptMessage, bool)> = Vec::new();
        for out in inflight {
            let new = out.kept_id.is_none();
            let message = KeptMessage {
                id: out.kept_id.unwrap_or_else(|| kept_id(now_ms())),
                topic: out.topic.to_string(),
                payload: out.payload,
                dup: true,
                expires_at_ms,
            };
            leftovers.push((message, new));
        }
        self.downlink_rx.close();
        while let Ok(d) = self.downlink_rx.try_recv() {
            if d.qos == 1 {
                let message = KeptMessage {
                    id: kept_id(now_ms()),
                    topic: d.topic.to_string(),
                    payload: d.payload,
                    dup: false,
                    expires_at_ms,
                };
                leftovers.push((message, true));
            }
        }
        let acked = std::mem::take(&mut kept.acked);
        if !acked.is_empty() {
            forget(&*store, &client_id, &acked, &self.ctx.counters).await;
        }
        if leftovers.is_empty() {
            return;
        }
        let counters = &self.ctx.counters;
        for (m, new) in &leftovers {
            match store.keep(&client_id, m).await {
                Ok(()) if *new => bump(&counters.offline_stored_total),
                Ok(()) => {}
                Err(e) => {
                    if matches!(e, KeepError::Full { .. }) {
                        bump(&counters.offline_refused_total);
                    }
                    tracing::warn!(%client_id, topic = %m.topic, "downlink not kept for the next connection: {e}");
                }
            }
        }
        // A connection that took this one over may have read the store already.
        self.ctx.router.nudge(&client_id);
    }

    /// A SUBSCRIBE or UNSUBSCRIBE with more filters than any device sends is not answered
    /// filter by filter: the connection is closed (MQTT 5: DISCONNECT 0x97, quota exceeded),
    /// so one packet cannot buy a large amount of work.
    fn check_filter_count(&self, n: usize) -> Result<(), Exit> {
        if n > self.ctx.cfg.max_filters_per_packet {
            return Err(Exit::TooManyFilters(n));
        }
        Ok(())
    }

    /// Hands the device's status message (online or offline) to the rules, like a QoS 0
    /// publish; sessions without a signed-in device have none.
    async fn send_status(&self, online: bool, last_ms: u64) {
        let Some(identity) = &self.info.identity else {
            return;
        };
        let message = status_message(
            identity,
            self.info.client_id.clone(),
            self.info.peer,
            online,
            now_ms(),
            last_ms,
        );
        let ingested = Ingested {
            message,
            ack: Ack::detached(),
        };
        if self.ctx.sink.send(ingested).await.is_err() {
            tracing::debug!(client_id = %self.info.client_id, "status message not handed over: pipeline is gone");
        }
    }

    fn on_publish(&mut self, p: InPublish, received_at_ms: u64) -> Result<(), Exit> {
        if let Err(e) = validate_topic(&p.topic) {
            return Err(Exit::BadTopic(format!("{:?}: {e}", p.topic)));
        }
        let ctx = &self.ctx;
        if !ctx.cfg.policy.may_publish(&self.info, &p.topic) {
            bump(&ctx.counters.refused_total);
            if self.codec.protocol == ProtocolVersion::V311 {
                // 3.1.1 has no negative ack; closing is the visible answer (MQTT-3.3.5).
                return Err(Exit::NotAuthorized(p.topic));
            }
            if p.qos > 0 {
                self.pending
                    .push_back(AckWait::ready(p.pkid, p.qos, Resolved::NotAuthorized));
            }
            return Ok(());
        }
        if p.qos == 2 && !self.qos2_ids.insert(p.pkid) {
            self.pending
                .push_back(AckWait::ready(p.pkid, 2, Resolved::Duplicate));
            return Ok(());
        }
        if ctx.router.answer_call(&p.topic, &p.payload) {
            // The answer of a synchronous call goes to its caller, not to the rules.
            if p.qos > 0 {
                self.pending
                    .push_back(AckWait::ready(p.pkid, p.qos, Resolved::Committed));
            }
            return Ok(());
        }
        if let Some(identity) = &self.info.identity {
            if let Some((topic, body)) = thing_reply(identity, &p.topic, &p.payload) {
                ctx.router.publish(&topic, body, 0);
            }
        }
        let (ack, wait) = if p.qos == 0 {
            (Ack::detached(), None)
        } else {
            let (ack, rx) = Ack::channel();
            (ack, Some(AckWait::waiting(p.pkid, p.qos, rx)))
        };
        let ingested = Ingested {
            message: IngestMessage {
                topic: p.topic,
                payload: p.payload,
                qos: p.qos,
                retain: p.retain,
                client_id: self.info.client_id.clone(),
                identity: self.info.identity.clone(),
                peer: Some(self.info.peer),
                received_at_ms,
            },
            ack,
        };
        match ctx.sink.try_send(ingested) {
            Ok(()) => {
                bump(&ctx.counters.publishes_in_total);
                if let Some(wait) = wait {
                    self.pending.push_back(wait);
                }
            }
            Err(mpsc::error::TrySendError::Full(ingested)) => self.stalled = Some((ingested, wait)),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Exit::SinkClosed),
        }
        Ok(())
    }

    fn on_ack(&mut self, (pkid, qos, resolved): Done) -> Result<(), Exit> {
        let counters = &self.ctx.counters;
        let reason = match resolved {
            Resolved::Committed => {
                bump(&counters.acks_total);
                AckReason::Success
            }
            Resolved::Duplicate => AckReason::Success,
            Resolved::NotAuthorized => {
                self.qos2_ids.remove(&pkid);
                AckReason::NotAuthorized
            }
            Resolved::Rejected(_) | Resolved::Dropped => {
                bump(&counters.rejected_total);
                self.qos2_ids.remove(&pkid);
                let why = match resolved {
                    Resolved::Rejected(reason) => reason,
                    _ => "ack dropped without an outcome".to_owned(),
                };
                if self.codec.protocol == ProtocolVersion::V311 {
                    return Err(Exit::Rejected(why));
                }
                tracing::warn!(peer = %self.info.peer, client_id = %self.info.client_id, pkid, reason = %why, "publish not committed, negative ack sent");
                AckReason::UnspecifiedError
            }
        };
        if qos == 1 {
            self.encode(Outbound::PubAck { pkid, reason });
        } else {
            self.encode(Outbound::PubRec { pkid, reason });
        }
        Ok(())
    }

    fn on_subscribe(&mut self, pkid: u16, filters: Vec<(String, u8)>) {
        let ctx = self.ctx.clone();
        let mut codes: Vec<SubCode> = filters
            .iter()
            .map(|(filter, qos)| {
                if validate_filter(filter).is_err() {
                    SubCode::InvalidFilter
                } else if filter.starts_with(SHARED_PREFIX) {
                    SubCode::SharedNotSupported
                } else if !ctx.cfg.policy.may_subscribe(&self.info, filter) {
                    bump(&ctx.counters.refused_total);
                    SubCode::Refused
                } else {
                    SubCode::Granted((*qos).min(1))
                }
            })
            .collect();
        // Every grant under one lock; past the session's cap new filters fail one by one, so
        // the client learns which ones (MQTT-3.9.3: a SUBACK code per filter).
        let grants: Vec<(usize, (&str, u8))> = codes
            .iter()
            .zip(&filters)
            .enumerate()
            .filter_map(|(i, (code, (filter, _)))| match code {
                SubCode::Granted(q) => Some((i, (filter.as_str(), *q))),
                _ => None,
            })
            .collect();
        if !grants.is_empty() {
            let wanted: Vec<(&str, u8)> = grants.iter().map(|(_, g)| *g).collect();
            let accepted = ctx.router.subscribe(self.session_id, &wanted);
            for ((i, _), ok) in grants.iter().zip(accepted) {
                if !ok {
                    codes[*i] = SubCode::QuotaExceeded;
                    bump(&ctx.counters.subscriptions_over_limit_total);
                }
            }
        }
        self.encode(Outbound::SubAck {
            pkid,
            codes: &codes,
        });
    }

    fn send_downlink(&mut self, d: Downlink) {
        self.send_publish(d.topic, d.payload, d.qos, false, None);
    }

    fn send_publish(
        &mut self,
        topic: Arc<str>,
        payload: Bytes,
        qos: u8,
        dup: bool,
        kept_id: Option<String>,
    ) {
        let pkid = if qos > 0 { self.alloc_pkid() } else { 0 };
        let encoded = self.codec.encode(
            Outbound::Publish {
                topic: &topic,
                payload: payload.clone(),
                qos,
                pkid,
                retain: false,
                dup,
            },
            &mut self.wbuf,
        );
        match encoded {
            Ok(()) if pkid != 0 => {
                self.sent += 1;
                self.out_inflight.insert(
                    pkid,
                    Outgoing {
                        topic,
                        payload,
                        kept_id,
                        sent: self.sent,
                    },
                );
            }
            Ok(()) => {}
            Err(e) => {
                bump(&self.ctx.counters.downlink_dropped_total);
                tracing::debug!(client_id = %self.info.client_id, error = %e, "downlink not sent");
            }
        }
    }

    /// The next packet id not in use by an unacked downlink (never 0).
    fn alloc_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid != 0 && !self.out_inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    fn encode(&mut self, packet: Outbound<'_>) {
        if let Err(e) = self.codec.encode(packet, &mut self.wbuf) {
            tracing::debug!(client_id = %self.info.client_id, error = %e, "packet not encoded");
        }
    }

    async fn flush(&mut self, stream: &mut impl DeviceStream) -> Result<(), Exit> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(self.ctx.cfg.write_timeout, stream.write_all(&self.wbuf)).await {
            Ok(Ok(())) => {
                self.wbuf.clear();
                Ok(())
            }
            Ok(Err(e)) => Err(Exit::Io(e)),
            Err(_) => Err(Exit::WriteTimeout),
        }
    }

    /// Logs and counts the end, says goodbye to MQTT 5 clients, flushes what is left (acks of
    /// commits that already happened) and closes the socket.
    async fn close(&mut self, stream: &mut impl DeviceStream, exit: Exit) {
        let peer = self.info.peer;
        let client_id = self.info.client_id.clone();
        let counters = &self.ctx.counters;
        let reason = match &exit {
            Exit::ClientClosed | Exit::ClientDisconnect => {
                tracing::debug!(%peer, %client_id, "MQTT session closed by the client");
                None
            }
            Exit::Io(e) => {
                tracing::debug!(%peer, %client_id, error = %e, "MQTT connection error");
                None
            }
            Exit::WriteTimeout => {
                tracing::warn!(%peer, %client_id, "closing MQTT connection: device does not read");
                None
            }
            Exit::Malformed(why) => {
                bump(&counters.malformed_total);
                tracing::warn!(%peer, %client_id, "closing MQTT connection: malformed packet: {why}");
                None
            }
            Exit::Protocol(why) => {
                bump(&counters.malformed_total);
                tracing::warn!(%peer, %client_id, "closing MQTT connection: protocol error: {why}");
                Some(CloseReason::ProtocolError)
            }
            Exit::BadTopic(why) => {
                bump(&counters.malformed_total);
                tracing::warn!(%peer, %client_id, "closing MQTT connection: invalid topic {why}");
                Some(CloseReason::TopicNameInvalid)
            }
            Exit::NotAuthorized(topic) => {
                tracing::warn!(%peer, %client_id, %topic, "closing MQTT connection: publish not authorized");
                Some(CloseReason::NotAuthorized)
            }
            Exit::Rejected(why) => {
                tracing::warn!(%peer, %client_id, reason = %why, "closing MQTT connection: publish not committed, the device will resend");
                Some(CloseReason::UnspecifiedError)
            }
            Exit::KeepAlive => {
                bump(&counters.keepalive_timeouts_total);
                tracing::info!(%peer, %client_id, "closing MQTT connection: keep-alive expired");
                Some(CloseReason::KeepAliveTimeout)
            }
            Exit::Idle => {
                bump(&counters.idle_timeouts_total);
                tracing::info!(%peer, %client_id, idle = ?self.keep_alive, "closing MQTT connection: silent for the maximum idle time without keep-alive (mqtt_max_idle_secs)");
                Some(CloseReason::KeepAliveTimeout)
            }
            Exit::TooManyFilters(n) => {
                bump(&counters.too_many_filters_total);
                tracing::warn!(%peer, %client_id, filters = n, max = self.ctx.cfg.max_filters_per_packet, "closing MQTT connection: too many topic filters in one packet (mqtt_max_filters_per_packet)");
                Some(CloseReason::QuotaExceeded)
            }
            Exit::TakenOver => Some(CloseReason::SessionTakenOver),
            Exit::Shutdown => Some(CloseReason::ServerShuttingDown),
            Exit::SinkClosed => {
                tracing::warn!(%peer, %client_id, "closing MQTT connection: pipeline is gone");
                Some(CloseReason::ServerShuttingDown)
            }
        };
        if matches!(exit, Exit::Io(_) | Exit::WriteTimeout | Exit::ClientClosed) {
            return;
        }
        if let Some(reason) = reason {
            self.encode(Outbound::Disconnect(reason));
        }
        if !self.wbuf.is_empty() {
            let _ = tokio::time::timeout(FINAL_FLUSH, stream.write_all(&self.wbuf)).await;
        }
        let _ = tokio::time::timeout(FINAL_FLUSH, stream.shutdown()).await;
    }
}

/// Room in the queue of a stalled publish; never, when none is stalled.
async fn reserve_on(
    queue: Option<&mpsc::Sender<Ingested>>,
) -> Result<mpsc::Permit<'_, Ingested>, mpsc::error::SendError<()>> {
    match queue {
        Some(queue) => queue.reserve().await,
        None => std::future::pending().await,
    }
}

/// Tells the store the device acked these kept messages, counting them as delivered.
async fn forget(
    store: &dyn super::keep::SessionStore,
    client_id: &str,
    ids: &[String],
    counters: &IngestCounters,
) {
    match store.forget(client_id, ids).await {
        Ok(()) => {
            counters
                .offline_delivered_total
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::warn!(%client_id, "acked kept messages not forgotten, they will be resent: {e}");
        }
    }
}

/// The result of the kept-message read in progress; never, when none is.
async fn load_of(kept: &mut Option<Kept>) -> Result<Vec<KeptMessage>, KeepError> {
    match kept.as_mut().and_then(|k| k.loading.as_mut()) {
        Some(loading) => loading
            .await
            .unwrap_or_else(|_| Err(KeepError::Storage("the read was cut short".into()))),
        None => std::future::pending().await,
    }
}

/// A nudge of a persistent session; never, for a clean one.
async fn nudged(nudge: Option<&Notify>) {
    match nudge {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
