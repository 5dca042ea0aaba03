//! HTTPS for the API: a listener that hands axum connections whose TLS handshake is done.
//!
//! Handshakes run in their own tasks with a deadline, so one slow or silent client never holds
//! up the accept loop for everyone else; a failed handshake is logged at debug level and
//! forgotten (it is the client's problem, not the server's). Connections are admitted under the
//! connection caps at TCP accept, before their handshake.

use std::net::SocketAddr;
use std::time::Duration;

use axum::serve::Listener;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::server::{Admitted, LimitedListener};

/// A TLS connection admitted under the connection caps.
type AdmittedTls = TlsStream<Admitted<TcpStream>>;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for axum to take them.
const READY_QUEUE_LEN: usize = 64;

/// A TLS listener for `axum::serve`. Dropping it stops its accept task.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(AdmittedTls, SocketAddr)>,
    local_addr: SocketAddr,
}

impl TlsListener {
    /// Serves TLS with `acceptor` on the already bound `tcp`, whose address is `local_addr`.
    pub fn new(tcp: LimitedListener, local_addr: SocketAddr, acceptor: TlsAcceptor) -> TlsListener {
        let (tx, ready) = mpsc::channel(READY_QUEUE_LEN);
        tokio::spawn(accept_loop(tcp, acceptor, tx));
        TlsListener { ready, local_addr }
    }
}

async fn accept_loop(
    mut tcp: LimitedListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(AdmittedTls, SocketAddr)>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = ready.closed() => return,
            accepted = tcp.accept() => accepted,
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTPS handshake failed"),
                Err(_) => tracing::debug!(%peer, "HTTPS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = AdmittedTls;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(pair) => pair,
            // The accept task only ends once this receiver is gone, so this cannot happen;
            // never returning is what a listener without connections does anyway.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
