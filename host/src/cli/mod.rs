//! The `sluice` command line: `sluice NOUN VERB`. Server commands talk to the `/v1/` API
//! (`--server`, default `http://127.0.0.1:8080`, env `SLUICE_SERVER`); `serve` runs the daemon.
//! Tables for people by default, `--json` for scripts.

pub mod backup;
pub mod bench;
pub mod client;
pub mod device;
pub mod eval;
pub mod key;
pub mod output;
pub mod queue;
pub mod rule;
pub mod serve;
pub mod signing_cert;
pub mod sql;
pub mod sub;
pub mod topic;

use clap::{Parser, Subcommand};

/// sluice: an IoT rules engine and message service in one binary.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, propagate_version = true)]
pub struct Cli {
    /// The sluice server to talk to [default: http://127.0.0.1:8080].
    #[arg(long, global = true, env = "SLUICE_SERVER")]
    pub server: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// The access key, ID:SECRET [default: the --server entry of
    /// $SLUICE_CONFIG_DIR/credentials.toml, which `serve` writes].
    #[arg(long, global = true, env = "SLUICE_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Extra PEM certificates to trust for an https:// --server (its self-signed
    /// --http-tls-cert, or a private CA).
    #[arg(long, global = true, env = "SLUICE_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The nouns.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run sluice: MQTT listener, rules, store and HTTP API.
    Serve(Box<serve::ServeArgs>),
    /// Queues: create, send, receive, delete, ...
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// Topics: create, publish, ...
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// Subscriptions of topics.
    #[command(subcommand)]
    Sub(sub::SubCommand),
    /// Rules: create, start, stop, ...
    #[command(subcommand)]
    Rule(rule::RuleCommand),
    /// Devices: register (prints the secret once), list, show, delete.
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// Send a message down to one device through the broker in use.
    Pub(device::PubArgs),
    /// Rule SQL: compile to a Wasm module offline.
    #[command(subcommand)]
    Sql(sql::SqlCommand),
    /// Load-test a sluice: devices over MQTT -> rule -> queue -> consumers, with a report.
    Bench(bench::BenchArgs),
    /// Copy the store to FILE (0600) with SQLite's online backup, from the running server or
    /// offline with --data-dir.
    Backup(backup::BackupArgs),
    /// Access keys of the HTTP API: create (prints the secret once), list, delete.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Certificates of the key that signs MNS-signed pushes: list, rotate (admin).
    #[command(subcommand)]
    SigningCert(signing_cert::SigningCertCommand),
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let server = cli.server.as_deref().unwrap_or(client::DEFAULT_SERVER);
    let key = match &cli.command {
        // Offline commands and `serve` need no key; a bench finds its own server's key.
        Command::Serve(_) | Command::Sql(_) | Command::Bench(_) => None,
        _ => client::resolve_key(cli.key.clone(), server),
    };
    let client = client::Client::new(server, key.as_deref(), cli.ca_cert.as_deref())?;
    match cli.command {
        Command::Serve(args) => serve::run(*args).await,
        Command::Queue(cmd) => queue::run(cmd, &client, cli.json).await,
        Command::Topic(cmd) => topic::run_topic(cmd, &client, cli.json).await,
        Command::Sub(cmd) => sub::run(cmd, &client, cli.json).await,
        Command::Rule(cmd) => rule::run(cmd, &client, cli.json).await,
        Command::Device(cmd) => device::run(cmd, &client, cli.json).await,
        Command::Pub(args) => device::run_pub(args, &client, cli.json).await,
        Command::Sql(cmd) => sql::run(cmd, cli.json),
        Command::Bench(args) => bench::run(args, cli.server, cli.key, cli.ca_cert, cli.json).await,
        Command::Backup(args) => backup::run(args, &client, cli.json).await,
        Command::Key(cmd) => key::run(cmd, &client, cli.json).await,
        Command::SigningCert(cmd) => signing_cert::run(cmd, &client, cli.json).await,
    }
}
