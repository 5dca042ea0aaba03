//! Opening the store: SQLite in the data directory, or JetStream after its durability check.

use crate::config::{ServeConfig, StoreBackend};
use crate::store::jetstream::{durability, JetStream, JetStreamOptions};
use crate::store::{Store, StoreOptions};

use super::ServeError;

/// Opens the store that `config` names (the one call that opens it).
pub(super) async fn open_store(config: &ServeConfig) -> Result<Store, ServeError> {
    let opts = StoreOptions {
        node_id: config.node_id,
        synchronous: config.synchronous,
        ..StoreOptions::default()
    };
    let jetstream = match &config.store {
        StoreBackend::Sqlite => None,
        StoreBackend::JetStream {
            servers,
            monitors,
            accept_weaker_durability,
            prefix,
        } => {
            let replicas = durable_replicas(monitors, *accept_weaker_durability).await?;
            let js = JetStream::connect(JetStreamOptions {
                servers: servers.clone(),
                prefix: prefix.clone(),
                replicas,
                node_id: config.node_id,
                node_label: node_label(&config.data_dir),
                size_cap: opts.message_size_cap,
            })
            .await?;
            tracing::info!(
                servers = %servers.join(","),
                replicas,
                prefix = %prefix,
                "topics and queues live on NATS JetStream"
            );
            Some(js)
        }
    };
    let dir = config.data_dir.clone();
    tokio::task::spawn_blocking(move || match jetstream {
        None => Store::open(&dir, opts),
        Some(js) => Store::open_with_jetstream(&dir, opts, js),
    })
    .await
    .map_err(|source| ServeError::Task {
        what: "opening the store",
        source,
    })?
    .map_err(ServeError::Store)
}

/// Replicas sluice keeps of every queue (3), after checking that the servers can keep that
/// promise; with `--accept-weaker-durability` a shortfall is a warning and a cluster of fewer
/// servers gets as many replicas as it has.
async fn durable_replicas(monitors: &[String], accept_weaker: bool) -> Result<usize, ServeError> {
    const REPLICAS: usize = 3;
    let report = durability::check(monitors, REPLICAS).await;
    if report.problems.is_empty() {
        return Ok(REPLICAS);
    }
    if !accept_weaker {
        return Err(ServeError::WeakDurability {
            problems: report.problems,
        });
    }
    for problem in &report.problems {
        tracing::warn!("--accept-weaker-durability: {problem}");
    }
    Ok(report.possible_replicas(REPLICAS))
}

/// Who this process is when it claims its node id in the cluster: host and data directory.
fn node_label(data_dir: &std::path::Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    let dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    format!("{host}:{}", dir.display())
}
