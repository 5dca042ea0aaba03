//! `sluice serve`: flags, then hand over to [`crate::serve`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::config::{FlagOverrides, ServeConfig, SyncLevel};

/// Flags of `sluice serve`; each overrides the same key of the config file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A sluice.toml with settings and the topics, queues, subscriptions and rules to create.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where the store lives [default: ./sluice-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// HTTP API address [default: 127.0.0.1:8080].
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,
    /// sluice's own MQTT listener address [default: 127.0.0.1:1883].
    #[arg(long)]
    pub mqtt_listen: Option<SocketAddr>,
    /// Use an existing broker instead of the own listener: mqtt://HOST:PORT.
    #[arg(long)]
    pub mqtt_url: Option<String>,
    /// Client id toward the external broker: stable across restarts, distinct per process
    /// [default: derived from the data directory].
    #[arg(long)]
    pub mqtt_client_id: Option<String>,
    /// With --mqtt-url: subscribe as the MQTT 5 shared subscription $share/GROUP/..., so the
    /// sluice processes of one group split the broker's traffic (each message handled once).
    #[arg(long, value_name = "GROUP")]
    pub mqtt_share_group: Option<String>,
    /// Store durability: full (survives power loss) or normal (survives a process crash).
    #[arg(long, value_parser = parse_sync)]
    pub synchronous: Option<SyncLevel>,
    /// Node id stamped into message ids; distinct per process sharing a store.
    #[arg(long)]
    pub node_id: Option<u16>,
    /// Refuse HTTP pushes to loopback, private, CGNAT, unique-local, documentation and reserved
    /// addresses too (metadata, link-local, multicast addresses are always refused).
    #[arg(long)]
    pub push_deny_private_networks: bool,
    /// Accept anonymous MQTT clients from any address (default: loopback only). Anyone who can
    /// reach the port may then publish to unregistered products' topics.
    #[arg(long)]
    pub mqtt_allow_anonymous: bool,
    /// Start a new data directory empty, without the example set-up (topic alerts, queue
    /// alerts-q, subscription alerts-to-q and the running rule overheat).
    #[arg(long)]
    pub no_example_setup: bool,
    /// MQTT over TLS listener address, beside the plain one (device SDKs use 8883).
    #[arg(long, requires_all = ["mqtt_tls_cert", "mqtt_tls_key"])]
    pub mqtt_tls_listen: Option<SocketAddr>,
    /// PEM certificate chain of the TLS listener.
    #[arg(long)]
    pub mqtt_tls_cert: Option<PathBuf>,
    /// PEM private key of the TLS listener.
    #[arg(long)]
    pub mqtt_tls_key: Option<PathBuf>,
    /// Serve the HTTP API over HTTPS with this PEM certificate chain (MNS signatures over plain
    /// HTTP can be replayed by anyone on the path).
    #[arg(long, requires = "http_tls_key")]
    pub http_tls_cert: Option<PathBuf>,
    /// PEM private key for --http-tls-cert.
    #[arg(long, requires = "http_tls_cert")]
    pub http_tls_key: Option<PathBuf>,
    /// Where topics and queues live: sqlite (default, in the data directory) or a NATS
    /// JetStream cluster shared with other sluice processes: nats://HOST:PORT[,HOST:PORT...].
    #[arg(long, value_name = "sqlite|nats://HOST:PORT,...")]
    pub store: Option<String>,
    /// Monitoring endpoints of the NATS servers, checked at start for `sync_interval: always`
    /// and enough servers for 3 replicas [default: http://HOST:8222 of each --store server].
    #[arg(long, value_name = "URL[,URL...]")]
    pub nats_monitor: Option<String>,
    /// Start even when the NATS servers do not fsync every write, are fewer than 3, or their
    /// monitoring endpoints cannot be read (sluice warns; acknowledged messages may then be lost
    /// with a server).
    #[arg(long)]
    pub accept_weaker_durability: bool,
    /// Prefix of sluice's streams, subjects and key-value buckets on the NATS cluster, so
    /// several deployments can share one [default: sluice].
    #[arg(long)]
    pub nats_prefix: Option<String>,
    /// Benchmark baseline only: acknowledge every publish at once, with rules and storage off.
    #[arg(long, hide = true)]
    pub ingest_only: bool,
}

fn parse_sync(s: &str) -> Result<SyncLevel, String> {
    match s {
        "full" => Ok(SyncLevel::Full),
        "normal" => Ok(SyncLevel::Normal),
        other => Err(format!("`{other}`: use full or normal")),
    }
}

/// Loads the configuration and runs the daemon until Ctrl-C or SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServeConfig::load(
        args.config.as_deref(),
        FlagOverrides {
            data_dir: args.data_dir,
            http_listen: args.http_listen,
            mqtt_listen: args.mqtt_listen,
            mqtt_url: args.mqtt_url,
            mqtt_client_id: args.mqtt_client_id,
            mqtt_share_group: args.mqtt_share_group,
            synchronous: args.synchronous,
            node_id: args.node_id,
            push_deny_private_networks: args.push_deny_private_networks.then_some(true),
            ingest_only: args.ingest_only,
            mqtt_allow_anonymous: args.mqtt_allow_anonymous,
            no_example_setup: args.no_example_setup,
            mqtt_tls_listen: args.mqtt_tls_listen,
            mqtt_tls_cert: args.mqtt_tls_cert,
            mqtt_tls_key: args.mqtt_tls_key,
            http_tls_cert: args.http_tls_cert,
            http_tls_key: args.http_tls_key,
            store: args.store,
            nats_monitor: args.nats_monitor,
            accept_weaker_durability: args.accept_weaker_durability,
            nats_prefix: args.nats_prefix,
        },
    )?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: stopping intake, finishing in-flight messages");
        signal.cancel();
    });
    crate::serve::run(config, shutdown).await?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
