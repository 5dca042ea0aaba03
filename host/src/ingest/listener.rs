//! sluice's own MQTT listener: accepts TCP connections and runs one session task per device.
//!
//! It is sluice's, not a general broker, because the PUBACK must wait for the durable commit, the
//! CONNACK must carry the policy's answer, and every PUBLISH and SUBSCRIBE must pass the policy.
//! The per-connection protocol lives in `session.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::counters::{bump, IngestCounters};
use super::router::{RouterLimits, SessionRouter};
use super::session::{run_connection, SessionCtx};
use super::{AllowAll, ConnectPolicy, IngestError, IngestSink};
use crate::conn_limit::{log_refused, ConnLimiter, ConnLimits, ConnPermit};

/// Default largest packet body (remaining length) accepted: a 1 MiB payload plus 64 KiB for the
/// topic and properties; enough for any device message sluice is meant for while bounding what
/// one connection can make us buffer.
pub const DEFAULT_MAX_PACKET_SIZE_BYTES: usize = 1024 * 1024 + 64 * 1024;
/// Default unacked QoS 1/2 publishes per connection before reads pause (also the MQTT 5
/// receive maximum we announce): enough to keep a fast device busy across a group commit.
pub const DEFAULT_MAX_INFLIGHT: u16 = 256;
/// Default downlink queue length per session: absorbs bursts; beyond it messages are dropped.
pub const DEFAULT_DOWNLINK_QUEUE_LEN: usize = 128;
/// Default unacked QoS 1 downlink publishes per session.
pub const DEFAULT_DOWNLINK_INFLIGHT: u16 = 32;
/// Default most topic filters in one SUBSCRIBE or UNSUBSCRIBE: devices send a few at a time.
pub const DEFAULT_MAX_FILTERS_PER_PACKET: usize = 128;
/// Default time a new connection has to complete its TLS handshake and send its CONNECT.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default longest silence of a session without keep-alive (keep-alive 0) before it is closed:
/// such a client promised nothing, and a dead one would hold its socket for good.
pub const DEFAULT_MAX_IDLE: Duration = Duration::from_secs(3600);
/// Default most MQTT connections open at once (plain and TLS together).
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;
/// Default most MQTT connections open at once from one address: fleets behind one NAT address
/// stay well within it (the bench connects 100 devices from loopback).
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 5_000;

/// How the listener treats its connections; `Default` is what `sluice serve` uses.
#[derive(Clone)]
pub struct ListenerConfig {
    /// Largest remaining length (variable header + payload) accepted in one packet; larger
    /// packets close the connection before they are read.
    pub max_packet_size_bytes: usize,
    /// Unacked QoS 1/2 publishes per connection before reading pauses (back-pressure to the
    /// device). MQTT 5 clients are told this as the receive maximum.
    pub max_inflight: u16,
    /// Downlink messages queued per session before the router drops them.
    pub downlink_queue_len: usize,
    /// Unacked QoS 1 downlink publishes per session (capped by the client's receive maximum).
    pub downlink_inflight: u16,
    /// How long a new connection may take to send its CONNECT (and, on the TLS socket, to
    /// finish its handshake before that).
    pub connect_timeout: Duration,
    /// How long a session without keep-alive (keep-alive 0) may stay silent.
    pub max_idle: Duration,
    /// Most topic filters in one SUBSCRIBE or UNSUBSCRIBE; a packet with more closes the
    /// connection.
    pub max_filters_per_packet: usize,
    /// Subscriptions per session and saved persistent sessions.
    pub router: RouterLimits,
    /// Connections open at once, in total and per source address.
    pub connections: ConnLimits,
    /// How long one write to a device may block before the connection is dropped.
    pub write_timeout: Duration,
    /// On shutdown, how long sessions wait for pending commits so their acks still go out.
    pub shutdown_grace: Duration,
    /// Who may connect, publish and subscribe.
    pub policy: Arc<dyn ConnectPolicy>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            max_packet_size_bytes: DEFAULT_MAX_PACKET_SIZE_BYTES,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            downlink_queue_len: DEFAULT_DOWNLINK_QUEUE_LEN,
            downlink_inflight: DEFAULT_DOWNLINK_INFLIGHT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_idle: DEFAULT_MAX_IDLE,
            max_filters_per_packet: DEFAULT_MAX_FILTERS_PER_PACKET,
            router: RouterLimits::default(),
            connections: ConnLimits {
                max_total: DEFAULT_MAX_CONNECTIONS,
                max_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            },
            write_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            policy: Arc::new(AllowAll),
        }
    }
}

impl std::fmt::Debug for ListenerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerConfig")
            .field("max_packet_size_bytes", &self.max_packet_size_bytes)
            .field("max_inflight", &self.max_inflight)
            .field("downlink_queue_len", &self.downlink_queue_len)
            .field("downlink_inflight", &self.downlink_inflight)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_idle", &self.max_idle)
            .field("max_filters_per_packet", &self.max_filters_per_packet)
            .field("router", &self.router)
            .field("connections", &self.connections)
            .field("write_timeout", &self.write_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish_non_exhaustive()
    }
}

/// A bound (not yet serving) MQTT listener. Binding is separate from running so a port in use
/// is a start-up error naming the address, and tests can bind port 0 and read the real port.
pub struct MqttListener {
    listener: TcpListener,
    /// The MQTT over TLS socket, when configured: same sessions, router and counters.
    tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    cfg: Arc<ListenerConfig>,
    router: SessionRouter,
    counters: Arc<IngestCounters>,
}

impl std::fmt::Debug for MqttListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttListener")
            .field("local_addr", &self.listener.local_addr().ok())
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl MqttListener {
    /// Binds `addr`; fails with [`IngestError::Bind`] naming the address.
    pub async fn bind(addr: SocketAddr, cfg: ListenerConfig) -> Result<MqttListener, IngestError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| IngestError::Bind { addr, source })?;
        let counters = Arc::new(IngestCounters::default());
        Ok(MqttListener {
            listener,
            tls: None,
            router: SessionRouter::with_limits(counters.clone(), cfg.router),
            cfg: Arc::new(cfg),
            counters,
        })
    }

    /// Replaces the policy before serving (the device registry is loaded after the ports are
    /// bound, so a port in use fails before the data directory is touched).
    pub fn set_policy(&mut self, policy: Arc<dyn ConnectPolicy>) {
        Arc::make_mut(&mut self.cfg).policy = policy;
    }

    /// Also listens for MQTT over TLS on `addr`; its sessions share this listener's router,
    /// policy and counters. Fails with [`IngestError::Bind`] naming the address.
    pub async fn bind_tls(
        &mut self,
        addr: SocketAddr,
        acceptor: tokio_rustls::TlsAcceptor,
    ) -> Result<(), IngestError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| IngestError::Bind { addr, source })?;
        self.tls = Some((listener, acceptor));
        Ok(())
    }

    /// The TLS socket's address, when there is one.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The address actually bound (the real port when bound to port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, IngestError> {
        Ok(self.listener.local_addr()?)
    }

    /// The router that delivers downlink and republish messages to this listener's sessions;
    /// take it before [`MqttListener::run`] consumes the listener.
    pub fn router(&self) -> SessionRouter {
        self.router.clone()
    }

    /// The listener's counters, for metrics.
    pub fn counters(&self) -> Arc<IngestCounters> {
        self.counters.clone()
    }

    /// Serves connections until `shutdown` is cancelled, handing publishes to `sink`.
    ///
    /// On shutdown it stops accepting, sessions stop reading new packets, wait up to
    /// `shutdown_grace` for the acks of what they already handed over (so nothing acked is
    /// lost and nothing committed stays unacked if avoidable), then close.
    pub async fn run(self, sink: IngestSink, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let grace = self.cfg.shutdown_grace;
        let limits = self.cfg.connections;
        let limiter = ConnLimiter::new(limits);
        let ctx = Arc::new(SessionCtx {
            cfg: self.cfg,
            router: self.router,
            counters: self.counters,
            sink,
            shutdown: shutdown.clone(),
        });
        loop {
            let (accepted, acceptor) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => (accepted, None),
                accepted = accept_tls(&self.tls) => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    bump(&ctx.counters.connections_total);
                    let permit = match limiter.try_admit(peer.ip()) {
                        Ok(permit) => permit,
                        Err(why) => {
                            bump(&ctx.counters.connections_refused_total);
                            log_refused(
                                peer,
                                why,
                                limits,
                                ["mqtt_max_connections", "mqtt_max_connections_per_ip"],
                            );
                            drop(stream);
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    match acceptor {
                        None => {
                            tracker
                                .spawn(admitted(permit, run_connection(stream, peer, ctx.clone())));
                        }
                        Some(acceptor) => {
                            tracker.spawn(admitted(
                                permit,
                                run_tls_connection(acceptor, stream, peer, ctx.clone()),
                            ));
                        }
                    }
                }
                Err(e) => {
                    // Usually out of file descriptors: wait a little instead of spinning.
                    tracing::warn!(error = %e, "MQTT accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        drop(self.listener);
        drop(self.tls);
        tracker.close();
        // Sessions bound their own drain by `grace`; the margin covers the final writes.
        if tokio::time::timeout(grace + Duration::from_secs(2), tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("MQTT sessions did not finish within the shutdown grace period");
        }
    }
}

/// Runs a connection, holding its place under the connection caps until it ends.
async fn admitted(permit: ConnPermit, connection: impl std::future::Future<Output = ()>) {
    connection.await;
    drop(permit);
}

/// Accepts on the TLS socket, or never when there is none.
async fn accept_tls(
    tls: &Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
) -> (
    std::io::Result<(tokio::net::TcpStream, SocketAddr)>,
    Option<tokio_rustls::TlsAcceptor>,
) {
    match tls {
        Some((listener, acceptor)) => (listener.accept().await, Some(acceptor.clone())),
        None => std::future::pending().await,
    }
}

/// Runs the TLS handshake (bounded by the connect timeout, off the accept loop), then the
/// session as on the plain socket.
async fn run_tls_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    ctx: Arc<SessionCtx>,
) {
    let handshake = tokio::time::timeout(ctx.cfg.connect_timeout, acceptor.accept(stream));
    let stream = tokio::select! {
        _ = ctx.shutdown.cancelled() => return,
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "MQTT TLS handshake failed");
                return;
            }
            Err(_) => {
                bump(&ctx.counters.connect_timeouts_total);
                tracing::info!(%peer, "MQTT TLS handshake timed out");
                return;
            }
        },
    };
    run_connection(stream, peer, ctx).await;
}
