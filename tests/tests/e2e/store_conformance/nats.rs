//! A real single-node NATS server with JetStream (`sync_interval: always`) for the conformance
//! suite: one per test binary, on free loopback ports. Each test takes its own name prefix, so
//! tests share the server without seeing each other.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use sluice::store::jetstream::{JetStream, JetStreamOptions};
use sluice_test_support::nats::LocalCluster;

static SERVER: OnceLock<LocalCluster> = OnceLock::new();
static NEXT_PREFIX: AtomicU32 = AtomicU32::new(0);

/// A prefix no other test uses.
pub(super) fn fresh_prefix() -> String {
    format!("t{}", NEXT_PREFIX.fetch_add(1, Ordering::Relaxed))
}

/// A backend under `prefix` as process `label` with `node_id`: several handles on one prefix
/// behave as several sluice processes sharing a cluster.
pub(super) async fn connect(
    prefix: &str,
    node_id: u16,
    label: &str,
) -> sluice::store::Result<JetStream> {
    let servers = SERVER
        .get_or_init(|| LocalCluster::start(1, true))
        .servers();
    JetStream::connect(JetStreamOptions {
        servers,
        prefix: prefix.to_owned(),
        replicas: 1,
        node_id,
        node_label: label.to_owned(),
        size_cap: 65_536,
    })
    .await
}
