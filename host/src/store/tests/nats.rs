//! A real single-node NATS server with JetStream (`sync_interval: always`) for the conformance
//! suite: one per test binary, on free loopback ports. Each test takes its own name prefix, so
//! tests share the server without seeing each other.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use crate::store::jetstream::local::LocalCluster;
use crate::store::jetstream::{JetStream, JetStreamOptions};

static SERVER: OnceLock<LocalCluster> = OnceLock::new();
static NEXT_PREFIX: AtomicU32 = AtomicU32::new(0);

/// A JetStream backend on the shared server with a fresh prefix (one replica: one server).
pub(super) async fn jetstream() -> JetStream {
    let servers = SERVER
        .get_or_init(|| LocalCluster::start(1, true))
        .servers();
    let n = NEXT_PREFIX.fetch_add(1, Ordering::Relaxed);
    JetStream::connect(JetStreamOptions {
        servers,
        prefix: format!("t{n}"),
        replicas: 1,
        node_id: 1,
        node_label: "conformance".into(),
        size_cap: 65_536,
    })
    .await
    .expect("connect to the test NATS server")
}
