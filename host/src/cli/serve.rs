//! `sluice serve`: flags, then hand over to [`crate::serve`].

use std::path::PathBuf;

use clap::Args;

use crate::config::{ServeConfig, Settings};

/// Flags of `sluice serve`: the config file, then every setting (each overrides the same key of
/// the file; see [`Settings`]).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A sluice.toml with settings and the topics, queues, subscriptions and rules to create.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The settings.
    #[command(flatten)]
    pub settings: Settings,
    /// Benchmark baseline only: acknowledge every publish at once, with rules and storage off.
    #[arg(long, hide = true)]
    pub ingest_only: bool,
}

/// Loads the configuration and runs the daemon until Ctrl-C or SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = ServeConfig::load(args.config.as_deref(), args.settings)?;
    config.ingest_only = args.ingest_only;
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
