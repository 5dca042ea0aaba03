//! Serving the API's connections: hyper's HTTP/1.1 server with the bounds `axum::serve` does
//! not set.
//!
//! - A header read timeout (hyper's own, which needs a timer): a client that sends nothing, half
//!   a request, or keeps a connection open without sending the next one, is closed after
//!   [`HttpServerConfig::header_read_timeout`]. `axum::serve` sets no timer and would hold
//!   such a connection for good. HTTP/1.1 only: `axum::serve`'s version detection (for
//!   HTTP/2 with prior knowledge, which no sluice client uses) waits for the first bytes with no
//!   deadline at all.
//! - Caps on open connections, in total and per source address ([`ConnLimiter`]), taken at TCP
//!   accept (before a TLS handshake): a connection over a cap is closed at once and counted.
//!
//! On shutdown it stops accepting, lets every connection finish the request it is serving
//! (hyper's graceful shutdown) and waits for them.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn_limit::{log_refused, ConnLimiter, ConnPermit};

/// How the API's connections are bounded.
#[derive(Debug, Clone, Copy)]
pub struct HttpServerConfig {
    /// Time a client has to send a request's headers, counted from the connection's start or
    /// the end of the previous response (so it is also the idle time of a kept-alive connection).
    pub header_read_timeout: Duration,
}

/// A connection's stream with its place under the connection caps; the place is freed when the
/// connection is dropped, however it ends.
#[derive(Debug)]
pub struct Admitted<T> {
    io: T,
    _permit: ConnPermit,
}

impl<T: AsyncRead + Unpin> AsyncRead for Admitted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Admitted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The API's TCP socket: accepts, and admits under the connection caps (closing and counting
/// what is over them).
#[derive(Debug)]
pub struct LimitedListener {
    tcp: TcpListener,
    limiter: ConnLimiter,
}

impl LimitedListener {
    /// Admits the connections of `tcp` under `limiter`'s caps.
    pub fn new(tcp: TcpListener, limiter: ConnLimiter) -> LimitedListener {
        LimitedListener { tcp, limiter }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = Admitted<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.tcp.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match self.limiter.try_admit(peer.ip()) {
                Ok(permit) => {
                    let _ = stream.set_nodelay(true);
                    return (
                        Admitted {
                            io: stream,
                            _permit: permit,
                        },
                        peer,
                    );
                }
                Err(why) => log_refused(
                    peer,
                    why,
                    self.limiter.limits(),
                    ["http_max_connections", "http_max_connections_per_ip"],
                ),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Serves `app` on `listener` until `stop`, then lets open connections finish their requests.
pub async fn serve<L>(
    mut listener: L,
    app: axum::Router,
    cfg: HttpServerConfig,
    stop: CancellationToken,
) where
    L: axum::serve::Listener,
{
    let connections = TaskTracker::new();
    loop {
        let (io, _peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let service = TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(cfg.header_read_timeout);
            let conn = builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(conn);
            let done = tokio::select! {
                done = conn.as_mut() => done,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = done {
                tracing::trace!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}
