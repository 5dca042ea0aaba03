//! `sluice serve`: wires ingest -> pipeline (rules) -> store, the HTTP API, and an ordered
//! shutdown. Everything that can fail at start (ports, data directory, modules, config) fails
//! before anything is served, with one line that says what and where.
//!
//! Start order ([`run`]): bind the ports, start the rule sandbox and check the config file's
//! rules, open the store ([`store::open_store`]), load keys and devices, open the rule registry,
//! create the example and configured objects, then start the stages: intake, pipeline, HTTP
//! push, the HTTP API, and announce readiness.
//!
//! Shutdown order ([`Running::drain`]): stop intake (the listener stops reading publishes and
//! waits for pending acks), drain the pipeline (every message handed over is committed and acked,
//! or rejected), stop the HTTP API, stop HTTP push (pushes in flight get a bounded grace period;
//! the rest are pushed again after a restart), then close the store (flush, checkpoint).

mod ingest;
mod objects;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::api::policy::{self, AccessKey};
use crate::config::{MqttMode, ServeConfig};
use crate::conn_limit::{ConnLimiter, ConnLimits};
use crate::devices::{DevicePolicy, DeviceRegistry, DeviceService};
use crate::ids::IdGenerator;
use crate::ingest::MqttListener;
use crate::pipeline::{
    CommitError, CommitSink, Output, Pipeline, PipelineConfig, Republisher, DEFAULT_QUEUE_DEPTH,
};
use crate::rules::registry::RuleRegistry;
use crate::rules::runtime::TagSource;
use crate::rules::{RuleEngine, RuleRuntime, SandboxConfig};
use crate::store::{Attributes, PublishItem, Store, StoreError};

pub use objects::RuleSetupError;

/// The example rule, built from `rules-examples/overheat` by the build script.
pub const OVERHEAT_WASM: &[u8] = include_bytes!(env!("SLUICE_OVERHEAT_WASM"));

/// Why `serve` could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not bind.
    #[error("cannot listen for {what} on {addr}: {source} (is another process using the port? pick another with {flag})")]
    Bind {
        /// HTTP or MQTT.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The flag that changes it.
        flag: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A TLS certificate or key could not be loaded (the error names the listener and file).
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The MQTT listener failed to start.
    #[error("MQTT")]
    Ingest(#[from] crate::ingest::IngestError),
    /// The store could not be opened.
    #[error("store")]
    Store(#[from] StoreError),
    /// The NATS servers cannot keep sluice's durability promise.
    #[error(
        "the NATS servers fall short of the durability sluice promises (nothing acknowledged is \
         lost):\n  - {}\nfix the servers, or start with --accept-weaker-durability to run anyway",
        .problems.join("\n  - ")
    )]
    WeakDurability {
        /// What each server lacks.
        problems: Vec<String>,
    },
    /// The rule catalog could not be opened.
    #[error(transparent)]
    Catalog(#[from] crate::rules::catalog::CatalogError),
    /// The rules of an earlier version's `rules.db` could not be brought into the store.
    #[error(transparent)]
    RuleImport(#[from] crate::rule_catalog::ImportError),
    /// The saved persistent MQTT sessions could not be read.
    #[error("persistent MQTT sessions: {0}")]
    Sessions(String),
    /// The sandbox could not start.
    #[error("rule sandbox: {0}")]
    Sandbox(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A `[[rule]]` of the config file is refused or could not be created.
    #[error(
        "{}: [[rule]] `{name}`{}: {source}",
        .file.display(),
        .module.as_ref().map(|m| format!(" ({})", m.display())).unwrap_or_default()
    )]
    ConfiguredRule {
        /// The config file.
        file: PathBuf,
        /// The rule's name.
        name: String,
        /// Its Wasm module file, for a Wasm rule.
        module: Option<PathBuf>,
        /// Why.
        #[source]
        source: Box<RuleSetupError>,
    },
    /// A `[[topic]]`, `[[queue]]` or `[[subscription]]` of the config file could not be created.
    #[error("{}: [[{kind}]] `{name}`: {source}", .file.display())]
    ConfiguredObject {
        /// The config file.
        file: PathBuf,
        /// `topic`, `queue` or `subscription`.
        kind: &'static str,
        /// The object's name.
        name: String,
        /// The store's reason.
        #[source]
        source: Box<StoreError>,
    },
    /// A `[[device]]` of the config file could not be registered.
    #[error("{}: [[device]] `{name}`: {source}", .file.display())]
    ConfiguredDevice {
        /// The config file.
        file: PathBuf,
        /// `PRODUCT_KEY/DEVICE_NAME`.
        name: String,
        /// Why.
        #[source]
        source: Box<crate::devices::DeviceError>,
    },
    /// The example rule of a new data directory could not be created.
    #[error("the example rule overheat: {0}")]
    ExampleRule(#[source] Box<RuleSetupError>),
    /// A start-up task stopped (it panicked or was cancelled).
    #[error("{what} stopped: {source}")]
    Task {
        /// What the task did.
        what: &'static str,
        /// Why it stopped.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The admin key could not be written to the credentials file.
    #[error("admin key: {0} (set SLUICE_CONFIG_DIR to a writable directory)")]
    Credentials(#[from] crate::credentials::CredentialsError),
}

/// Commits outputs through the store's group-committing writer.
struct StoreSink(Store);

impl CommitSink for StoreSink {
    fn submit(&self, units: &[Vec<Output>]) -> BoxFuture<'static, Vec<Result<(), CommitError>>> {
        let commit = self.0.submit_publish_units(units);
        Box::pin(async move {
            let results = commit.await;
            results
                .into_iter()
                .map(|r| r.map_err(commit_error))
                .collect()
        })
    }
}

/// The store publishes a rule output as it is, lent until the commit.
impl PublishItem for Output {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn body(&self) -> &Bytes {
        &self.body
    }

    fn attributes(&self) -> &Attributes {
        &self.attributes
    }
}

/// How the pipeline treats a unit the store did not commit.
fn commit_error(e: StoreError) -> CommitError {
    match e {
        StoreError::TopicNotExist { name } => CommitError::TopicMissing(name),
        // A rule output the store refuses for good (too large, bad attributes) would be refused
        // again on every resend: it fails that output, not the device message.
        e @ (StoreError::MessageTooLarge { .. } | StoreError::InvalidArgument { .. }) => {
            CommitError::Refused(e.to_string())
        }
        e => CommitError::Unavailable(e.to_string()),
    }
}

/// Runs sluice until `shutdown` is cancelled.
pub async fn run(config: ServeConfig, shutdown: CancellationToken) -> Result<(), ServeError> {
    // Ports first: a port in use must fail before the data directory is touched.
    let mut ports = bind_ports(&config).await?;

    // The sandbox and the config file's rules next: a module that fails to load must fail the
    // start before the data directory is touched.
    let runtime = rule_runtime(&config)?;
    let configured_rules = objects::check_configured_rules(&config, &runtime)?;

    let store = store::open_store(&config).await?;
    // A store without an admin key has never served: only then is the example set up.
    let fresh = policy::key_by_name(&store, policy::ADMIN_KEY_NAME)
        .await?
        .is_none();
    if store.backend() == "sqlite" {
        crate::rule_catalog::import_legacy_rules(&store, &config.data_dir).await?;
    }
    let access = load_access(&config, &store).await?;
    if let Some(listener) = ports.mqtt.as_mut() {
        set_device_policy(&config, listener, &access.devices);
    }
    let (engine, registry) = rule_registry(&store, runtime, &access.devices).await?;
    follow_shared_records(&store, &access.keys, &access.devices, &registry).await?;
    if fresh && config.example_setup {
        objects::create_default_setup(&store, &registry).await?;
    }
    objects::create_configured_objects(&config, configured_rules, &store, &registry).await?;

    let ingest = ingest::ingest_stage(&config, ports.mqtt.take(), &engine, &shutdown)?;
    let sessions = match &ingest.downlink {
        crate::devices::DownlinkPath::Local(router) => {
            Some(ingest::SessionKeeper::start(&config, &store, router).await?)
        }
        crate::devices::DownlinkPath::External(_) => None,
    };
    let pipeline = start_pipeline(&config, &engine, &store, ingest.republisher.clone());
    let intake = ingest::start_intake(&config, ingest.intake, &pipeline, shutdown.child_token());
    let signing_keys = Arc::new(crate::deliver::signing_keys::SigningKeys::new(
        store.clone(),
        &public_url(&config, ports.scheme(), ports.http_addr),
    ));
    let (deliver, deliver_stop, push_egress) = start_deliver(&config, &store, &signing_keys);
    let http_limiter = ConnLimiter::new(ConnLimits {
        max_total: config.http_limits.max_connections,
        max_per_ip: config.http_limits.max_connections_per_ip,
    });
    let services = crate::api::Services {
        store: store.clone(),
        rules: registry.clone(),
        devices: DeviceService {
            registry: access.devices.clone(),
            downlink: ingest.downlink,
        },
        stages: crate::api::metrics::StageCounters {
            ingest: Some(ingest.counters),
            pipeline: (!config.ingest_only).then(|| pipeline.counters()),
            http_connections: Some(http_limiter.clone()),
        },
        keys: access.keys,
        tails: Arc::new(crate::api::console::tail::Tails::new(config.console_tails)),
        https: ports.https.is_some(),
        push_egress,
        signing_keys,
    };
    let scheme = ports.scheme();
    let http_addr = ports.http_addr;
    let (http_task, http_stop) = start_http(&config, ports, http_limiter, services);

    announce_ready(
        &config,
        scheme,
        http_addr,
        &ingest.ready_desc,
        &registry,
        &access.admin_key,
    )?;

    shutdown.cancelled().await;
    Running {
        intake,
        sessions,
        pipeline,
        http_task,
        http_stop,
        deliver,
        deliver_stop,
        store,
    }
    .drain()
    .await
}

/// The listening sockets, bound before anything else starts.
struct Ports {
    /// The HTTP API's socket.
    http: tokio::net::TcpListener,
    /// Its address (the port chosen, for port 0).
    http_addr: SocketAddr,
    /// HTTPS for the API, when configured.
    https: Option<TlsAcceptor>,
    /// sluice's own MQTT listener (plain, and TLS when configured), unless an external broker
    /// is used.
    mqtt: Option<MqttListener>,
}

impl Ports {
    fn scheme(&self) -> &'static str {
        if self.https.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// Binds the HTTP port (and loads its TLS certificate), then the MQTT ports.
async fn bind_ports(config: &ServeConfig) -> Result<Ports, ServeError> {
    let http = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| ServeError::Bind {
            what: "HTTP",
            addr: config.http_listen,
            flag: "--http-listen",
            source,
        })?;
    let http_addr = http.local_addr().unwrap_or(config.http_listen);
    let https = match &config.http_tls {
        Some((cert, key)) => Some(crate::tls::load_acceptor(crate::tls::HTTP, cert, key)?),
        None => None,
    };
    let mut mqtt = match &config.mqtt {
        MqttMode::Listen(addr) => {
            Some(MqttListener::bind(*addr, ingest::listener_config(config)).await?)
        }
        MqttMode::External { .. } => None,
    };
    // The config allows the TLS listener only beside sluice's own listener.
    if let (Some(tls), Some(listener)) = (&config.mqtt_tls, mqtt.as_mut()) {
        let acceptor = crate::tls::load_acceptor(crate::tls::MQTT, &tls.cert, &tls.key)?;
        listener.bind_tls(tls.listen, acceptor).await?;
    }
    Ok(Ports {
        http,
        http_addr,
        https,
        mqtt,
    })
}

/// The Wasm sandbox that runs every rule.
fn rule_runtime(config: &ServeConfig) -> Result<Arc<RuleRuntime>, ServeError> {
    let runtime = RuleRuntime::new(SandboxConfig {
        max_memory_bytes: config.rule_max_memory_bytes,
        call_timeout: std::time::Duration::from_millis(config.rule_call_timeout_ms),
        log: config.rule_log,
        ..SandboxConfig::default()
    })
    .map_err(|e| ServeError::Sandbox(e.into()))?;
    Ok(Arc::new(runtime))
}

/// Who may call the API and which devices may connect.
struct Access {
    /// The admin key (created on the first start).
    admin_key: AccessKey,
    /// Every access key, checked on each API request.
    keys: Arc<crate::api::auth::KeyRing>,
    /// The registered devices, the config file's included.
    devices: Arc<DeviceRegistry>,
}

/// Loads the access keys (creating the admin key) and the devices, registering the config file's
/// devices that do not exist yet.
async fn load_access(config: &ServeConfig, store: &Store) -> Result<Access, ServeError> {
    let admin_key = policy::ensure_admin_key(store).await?;
    let keys = Arc::new(crate::api::auth::KeyRing::new(
        policy::list_keys(store).await?,
        config.console_sessions,
    ));
    let devices = Arc::new(DeviceRegistry::load(store.clone()).await?);
    objects::create_configured_devices(config, &devices).await?;
    Ok(Access {
        admin_key,
        keys,
        devices,
    })
}

/// Who the MQTT listener lets in: registered devices, and anonymous clients from loopback (or
/// from anywhere with `mqtt_allow_anonymous`).
fn set_device_policy(
    config: &ServeConfig,
    listener: &mut MqttListener,
    devices: &Arc<DeviceRegistry>,
) {
    if config.mqtt_allow_anonymous {
        tracing::warn!("--mqtt-allow-anonymous: anonymous MQTT clients are accepted from any address; they may publish to every topic of unregistered products");
    }
    listener.set_policy(Arc::new(DevicePolicy::new(
        devices.clone(),
        config.mqtt_allow_anonymous,
    )));
}

/// The rule engine (device tags from `devices`) and the registry of its rules, kept as records
/// in the store (on JetStream, the cluster's: every process runs the same rules).
async fn rule_registry(
    store: &Store,
    runtime: Arc<RuleRuntime>,
    devices: &Arc<DeviceRegistry>,
) -> Result<(Arc<RuleEngine>, Arc<RuleRegistry>), ServeError> {
    let tags: Arc<dyn TagSource> = devices.clone();
    let engine = Arc::new(RuleEngine::new(runtime, Some(tags)));
    let registry = {
        let engine = engine.clone();
        let catalog = Box::new(crate::rule_catalog::StoredRules::new(store.clone()));
        tokio::task::spawn_blocking(move || RuleRegistry::open(engine, catalog))
            .await
            .map_err(|source| ServeError::Task {
                what: "opening the rule catalog",
                source,
            })??
    };
    Ok((engine, Arc::new(registry)))
}

/// Starts the rule pipeline: its workers commit outputs to the store.
fn start_pipeline(
    config: &ServeConfig,
    engine: &Arc<RuleEngine>,
    store: &Store,
    republisher: Arc<dyn Republisher>,
) -> Pipeline {
    Pipeline::start(
        PipelineConfig {
            workers: config.rule_workers,
            queue_depth: DEFAULT_QUEUE_DEPTH,
        },
        engine.clone(),
        Arc::new(StoreSink(store.clone())),
        republisher,
        Arc::new(IdGenerator::new(config.node_id)),
    )
}

/// Starts HTTP push, which runs beside everything else, woken by the store's commits. Answers
/// its task, its stop token, and the egress policy (also checked when a push subscription is
/// created).
fn start_deliver(
    config: &ServeConfig,
    store: &Store,
    signing_keys: &Arc<crate::deliver::signing_keys::SigningKeys>,
) -> (
    JoinHandle<()>,
    CancellationToken,
    crate::deliver::egress::EgressPolicy,
) {
    let stop = CancellationToken::new();
    let egress = crate::deliver::egress::EgressPolicy::new(config.push_deny_private_networks);
    let task = crate::deliver::start(
        store.clone(),
        crate::deliver::DeliverConfig {
            egress: egress.clone(),
            retry_scale: config.push_retry_scale,
            signing_keys: Some(signing_keys.clone()),
            ..crate::deliver::DeliverConfig::default()
        },
        stop.clone(),
    );
    if config.push_retry_scale != 1.0 {
        tracing::warn!(
            push_retry_scale = config.push_retry_scale,
            "push retry waits are scaled (a test setting)"
        );
    }
    (task, stop, egress)
}

/// Starts serving the HTTP API (over HTTPS when configured) on the bound port; answers its task
/// and its stop token.
fn start_http(
    config: &ServeConfig,
    ports: Ports,
    limiter: ConnLimiter,
    services: crate::api::Services,
) -> (JoinHandle<()>, CancellationToken) {
    let app = crate::api::router(crate::api::AppState::new(services));
    let stop = CancellationToken::new();
    let server = crate::api::server::HttpServerConfig {
        header_read_timeout: std::time::Duration::from_secs(
            config.http_limits.header_read_timeout_secs,
        ),
    };
    let http = crate::api::server::LimitedListener::new(ports.http, limiter);
    let task = match ports.https {
        Some(acceptor) => {
            let listener = crate::api::tls::TlsListener::new(http, ports.http_addr, acceptor);
            tokio::spawn(crate::api::server::serve(
                listener,
                app,
                server,
                stop.clone(),
            ))
        }
        None => tokio::spawn(crate::api::server::serve(http, app, server, stop.clone())),
    };
    (task, stop)
}

/// Tells that sluice is ready: the log line for people, the admin key written for the CLI on
/// this machine, and one machine-readable line on stdout.
fn announce_ready(
    config: &ServeConfig,
    scheme: &str,
    http_addr: SocketAddr,
    mqtt_desc: &str,
    registry: &RuleRegistry,
    admin_key: &AccessKey,
) -> Result<(), ServeError> {
    let mqtt_human = match &config.mqtt {
        MqttMode::Listen(_) => {
            format!("MQTT listener on {}", mqtt_desc.trim_start_matches("mqtt="))
        }
        MqttMode::External {
            url,
            client_id,
            share_group,
        } => match share_group {
            Some(group) => format!(
                "MQTT through the broker at {url} as client {client_id} in share group {group}"
            ),
            None => format!("MQTT through the broker at {url} as client {client_id}"),
        },
    };
    tracing::info!(
        "sluice ready: HTTP API on {scheme}://{http_addr}, {mqtt_human}, data in {}; {}",
        config.data_dir.display(),
        running_rules_summary(registry)
    );
    // The admin key under this server's URL, for the CLI on this machine (before the ready
    // line on stdout, so whoever waits for it finds the key).
    let own_url = local_url(scheme, http_addr);
    let config_dir = crate::credentials::config_dir()?;
    crate::credentials::store(
        &config_dir,
        &own_url,
        &crate::credentials::Entry {
            key_id: admin_key.id.clone(),
            secret: admin_key.secret.clone(),
        },
    )?;
    tracing::info!(
        "admin key {} written for {own_url} to {}",
        admin_key.id,
        crate::credentials::path_in(&config_dir).display()
    );
    // One machine-readable line on stdout for scripts and tests that start on port 0.
    println!("sluice ready {scheme}={http_addr} {mqtt_desc}");
    Ok(())
}

/// The API's URL on this machine: the listen address, with 127.0.0.1 for an unspecified one.
fn local_url(scheme: &str, http_addr: SocketAddr) -> String {
    let mut a = http_addr;
    if a.ip().is_unspecified() {
        a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("{scheme}://{a}")
}

/// The API's base URL as push endpoints reach it: `public_url`, else [`local_url`] (which only
/// endpoints on this machine reach; the docs say to set `public_url` for others).
fn public_url(config: &ServeConfig, scheme: &str, http_addr: SocketAddr) -> String {
    config
        .public_url
        .clone()
        .unwrap_or_else(|| local_url(scheme, http_addr))
}

/// The running stages, stopped in order by [`Running::drain`].
struct Running {
    intake: JoinHandle<()>,
    sessions: Option<ingest::SessionKeeper>,
    pipeline: Pipeline,
    http_task: JoinHandle<()>,
    http_stop: CancellationToken,
    deliver: JoinHandle<()>,
    deliver_stop: CancellationToken,
    store: Store,
}

impl Running {
    /// The ordered shutdown, once `shutdown` is cancelled (which stops intake): intake drained,
    /// then the pipeline, the HTTP API, HTTP push, and the store closed last.
    async fn drain(self) -> Result<(), ServeError> {
        let _ = self.intake.await;
        if let Some(sessions) = self.sessions {
            sessions.finish().await;
        }
        self.pipeline.finish().await;
        self.http_stop.cancel();
        let _ = self.http_task.await;
        // Pushes in flight get a bounded grace period; the rest are pushed again after a
        // restart.
        self.deliver_stop.cancel();
        let _ = self.deliver.await;
        self.store.close().await?;
        tracing::info!("sluice stopped cleanly");
        Ok(())
    }
}

/// The ready line's account of the rules that run on every matching device message, so a user
/// sees at once that the example rule is live (and how to start without it).
fn running_rules_summary(registry: &RuleRegistry) -> String {
    let running: Vec<_> = registry
        .list()
        .into_iter()
        .filter(|r| r.state == "running")
        .map(|r| format!("{} on {}", r.name, r.from))
        .collect();
    let example = running.iter().any(|r| r.starts_with("overheat on "));
    match (running.len(), example) {
        (0, _) => "no rule running".into(),
        (_, true) => format!(
            "rules running: {} (overheat is the example rule; remove it with `sluice rule \
             delete overheat`, or start a new data directory with --no-example-setup)",
            running.join(", ")
        ),
        _ => format!("rules running: {}", running.join(", ")),
    }
}

/// On a shared (JetStream) store, keeps this process's views of the shared records current:
/// devices and products, access keys (a key deleted through another process is revoked here
/// within moments), and rules (created, changed, started, stopped or deleted elsewhere). On
/// SQLite this process makes every change itself, and there is nothing to follow.
async fn follow_shared_records(
    store: &Store,
    keys: &Arc<crate::api::auth::KeyRing>,
    devices: &Arc<DeviceRegistry>,
    registry: &Arc<RuleRegistry>,
) -> Result<(), ServeError> {
    use crate::devices::record::{DEVICES, PRODUCTS};
    let watch = |kind| store.record_changes(kind);
    let (Some(mut seen_devices), Some(mut seen_products), Some(seen_keys), Some(seen_rules)) = (
        watch(DEVICES).await?,
        watch(PRODUCTS).await?,
        watch(policy::KEYS).await?,
        watch(crate::rule_catalog::RULES).await?,
    ) else {
        return Ok(());
    };
    let devices = devices.clone();
    tokio::spawn(async move {
        loop {
            let changed = tokio::select! {
                c = seen_devices.changed() => c,
                c = seen_products.changed() => c,
            };
            if changed.is_err() {
                break;
            }
            if let Err(e) = devices.reload().await {
                tracing::warn!(error = %e, "cannot reload the shared devices");
            }
        }
    });
    let mut seen = seen_keys;
    let (keys, store) = (keys.clone(), store.clone());
    tokio::spawn(async move {
        while seen.changed().await.is_ok() {
            match policy::list_keys(&store).await {
                Ok(all) => keys.replace_all(all),
                Err(e) => tracing::warn!(error = %e, "cannot reload the shared access keys"),
            }
        }
    });
    let mut seen = seen_rules;
    let registry = registry.clone();
    tokio::spawn(async move {
        while seen.changed().await.is_ok() {
            let registry = registry.clone();
            // Installing a rule compiles its module: off the async workers.
            match tokio::task::spawn_blocking(move || registry.follow_catalog()).await {
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot follow the shared rules"),
                Err(e) => tracing::warn!(error = %e, "following the shared rules failed"),
                Ok(Ok(_)) => {}
            }
        }
    });
    Ok(())
}
