//! `sluice serve`: wires ingest -> pipeline (rules) -> store, the HTTP API, and an ordered
//! shutdown. Everything that can fail at start (ports, data directory, modules, config) fails
//! before anything is served, with one line that says what and where.
//!
//! Shutdown order: stop intake (the listener stops reading publishes and waits for pending
//! acks), drain the pipeline (every message handed over is committed and acked, or rejected),
//! stop the HTTP API, stop HTTP push (pushes in flight get a bounded grace period; the rest are
//! pushed again after a restart), then close the store (flush, checkpoint).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::api::policy;
use crate::config::{MqttMode, ServeConfig, StoreBackend, SyncLevel};
use crate::conn_limit::{ConnLimiter, ConnLimits};
use crate::devices::{DevicePolicy, DeviceRegistry, DeviceService, DownlinkPath};
use crate::ids::IdGenerator;
use crate::ingest::router::RouterLimits;
use crate::ingest::{ExternalBroker, ExternalConfig, ListenerConfig, MqttListener, SessionRouter};
use crate::pipeline::{
    CommitError, CommitSink, Output, Pipeline, PipelineConfig, Republisher, DEFAULT_QUEUE_DEPTH,
};
use crate::rules::registry::{RegistryError, RuleRegistry};
use crate::rules::runtime::TagSource;
use crate::rules::spec::{RuleDefinition, RuleState};
use crate::rules::{RuleEngine, RuleRuntime, RuleSpec, SandboxConfig};
use crate::store::jetstream::{durability, JetStream, JetStreamOptions};
use crate::store::{
    Attributes, PublishItem, QueueAttributes, Store, StoreError, StoreOptions, SubscriptionSpec,
    Synchronous,
};

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
    /// The MQTT listener failed to start.
    #[error("MQTT")]
    Ingest(#[from] crate::ingest::IngestError),
    /// The store could not be opened.
    #[error("store")]
    Store(#[from] StoreError),
    /// The rule catalog could not be opened.
    #[error(transparent)]
    Catalog(#[from] crate::rules::catalog::CatalogError),
    /// The rules of an earlier version's `rules.db` could not be brought into the store.
    #[error(transparent)]
    RuleImport(#[from] crate::rule_catalog::ImportError),
    /// The sandbox could not start.
    #[error("rule sandbox: {0}")]
    Sandbox(String),
    /// Something in the config file could not be created.
    #[error("config: {0}")]
    Config(String),
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

/// Republishes to the embedded listener's sessions.
struct LocalRepublisher(SessionRouter);

impl Republisher for LocalRepublisher {
    fn republish(&self, topic: &str, payload: Bytes, qos: u8) {
        self.0.publish(topic, payload, qos);
    }
}

/// Republishes through the external broker.
struct ExternalRepublisher {
    handle: crate::ingest::ExternalHandle,
    runtime: tokio::runtime::Handle,
}

impl Republisher for ExternalRepublisher {
    fn republish(&self, topic: &str, payload: Bytes, qos: u8) {
        let handle = self.handle.clone();
        let topic = topic.to_string();
        self.runtime.spawn(async move {
            if let Err(e) = handle.publish(&topic, payload, qos).await {
                tracing::warn!(topic = %topic, "republish through the external broker failed: {e}");
            }
        });
    }
}

/// The MQTT listener's settings from the resolved config (the policy is set once the device
/// registry is loaded).
fn listener_config(config: &ServeConfig) -> ListenerConfig {
    let l = config.mqtt_limits;
    let secs = std::time::Duration::from_secs;
    ListenerConfig {
        max_packet_size_bytes: l.max_packet_size_bytes,
        connect_timeout: secs(l.connect_timeout_secs),
        max_idle: secs(l.max_idle_secs),
        max_filters_per_packet: l.max_filters_per_packet,
        router: RouterLimits {
            max_subscriptions_per_session: l.max_subscriptions_per_session,
            max_saved_sessions: l.max_saved_sessions,
            saved_session_expiry: secs(l.saved_session_expiry_secs),
        },
        connections: ConnLimits {
            max_total: l.max_connections,
            max_per_ip: l.max_connections_per_ip,
        },
        ..ListenerConfig::default()
    }
}

/// Runs sluice until `shutdown` is cancelled.
pub async fn run(config: ServeConfig, shutdown: CancellationToken) -> Result<(), ServeError> {
    // Ports first: a port in use must fail before the data directory is touched.
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
        Some((cert, key)) => Some(
            crate::tls::load_acceptor(crate::tls::HTTP, cert, key)
                .map_err(|e| ServeError::Config(e.to_string()))?,
        ),
        None => None,
    };
    let scheme = if https.is_some() { "https" } else { "http" };
    let mut listener = match &config.mqtt {
        MqttMode::Listen(addr) => Some(MqttListener::bind(*addr, listener_config(&config)).await?),
        MqttMode::External { .. } => None,
    };
    if let Some(tls) = &config.mqtt_tls {
        let Some(listener) = listener.as_mut() else {
            return Err(ServeError::Config(
                "--mqtt-tls-listen serves sluice's own listener; with --mqtt-url configure TLS at \
                 the broker"
                    .into(),
            ));
        };
        let acceptor = crate::tls::load_acceptor(crate::tls::MQTT, &tls.cert, &tls.key)
            .map_err(|e| ServeError::Config(e.to_string()))?;
        listener.bind_tls(tls.listen, acceptor).await?;
    }

    // The sandbox and the config file's rules next: a module that fails to load must fail the
    // start before the data directory is touched.
    let runtime = Arc::new(
        RuleRuntime::new(SandboxConfig {
            max_memory_bytes: config.rule_max_memory_bytes,
            call_timeout: std::time::Duration::from_millis(config.rule_call_timeout_ms),
            log: config.rule_log,
            ..SandboxConfig::default()
        })
        .map_err(|e| ServeError::Sandbox(format!("{e:#}")))?,
    );
    let configured_rules = check_configured_rules(&config, &runtime)?;

    let store = open_store(&config).await?;
    // A store without an admin key has never served: only then is the example set up.
    let fresh = policy::key_by_name(&store, policy::ADMIN_KEY_NAME)
        .await?
        .is_none();
    if store.backend() == "sqlite" {
        crate::rule_catalog::import_legacy_rules(&store, &config.data_dir).await?;
    }
    let admin_key = policy::ensure_admin_key(&store).await?;
    let keys = Arc::new(crate::api::auth::KeyRing::new(
        policy::list_keys(&store).await?,
        config.console_sessions,
    ));
    let devices = Arc::new(DeviceRegistry::load(store.clone()).await?);
    create_configured_devices(&config, &devices).await?;
    if let Some(listener) = listener.as_mut() {
        if config.mqtt_allow_anonymous {
            tracing::warn!("--mqtt-allow-anonymous: anonymous MQTT clients are accepted from any address; they may publish to every topic of unregistered products");
        }
        listener.set_policy(Arc::new(DevicePolicy::new(
            devices.clone(),
            config.mqtt_allow_anonymous,
        )));
    }
    let tags: Arc<dyn TagSource> = devices.clone();
    let engine = Arc::new(RuleEngine::new(runtime, Some(tags)));
    let registry = {
        let engine = engine.clone();
        // On JetStream every process runs the rules of the cluster's catalog.
        let catalog = Box::new(crate::rule_catalog::StoredRules::new(store.clone()));
        tokio::task::spawn_blocking(move || RuleRegistry::open(engine, catalog))
            .await
            .map_err(|e| ServeError::Config(e.to_string()))??
    };
    let registry = Arc::new(registry);
    follow_shared_records(&store, &keys, &devices, &registry).await?;
    if fresh && config.example_setup {
        create_default_setup(&store, &registry).await?;
    }
    create_configured_objects(&config, configured_rules, &store, &registry).await?;

    let ids = Arc::new(IdGenerator::new(config.node_id));
    let downlink;
    let ingest_counters;
    let (republisher, mqtt_task, mqtt_desc): (Arc<dyn Republisher>, _, String) =
        match (listener, &config.mqtt) {
            (Some(listener), _) => {
                let mut addr = listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                if let Some(tls) = listener.tls_local_addr() {
                    addr.push_str(&format!(" mqtt_tls={tls}"));
                }
                ingest_counters = Some(listener.counters());
                downlink = DownlinkPath::Local(listener.router());
                (
                    Arc::new(LocalRepublisher(listener.router())),
                    Some(Intake::Listener(listener)),
                    format!("mqtt={addr}"),
                )
            }
            (
                None,
                MqttMode::External {
                    url,
                    client_id,
                    share_group,
                },
            ) => {
                let mut cfg = ExternalConfig::new(url.clone(), client_id.clone());
                cfg.filters = engine.running_filters();
                cfg.share_group = share_group.clone();
                let (broker, handle) = ExternalBroker::new(cfg)?;
                ingest_counters = Some(broker.counters());
                downlink = DownlinkPath::External(handle.clone());
                tokio::spawn(follow_rule_filters(
                    engine.clone(),
                    handle.clone(),
                    shutdown.clone(),
                ));
                (
                    Arc::new(ExternalRepublisher {
                        handle,
                        runtime: tokio::runtime::Handle::current(),
                    }),
                    Some(Intake::External(Box::new(broker))),
                    format!("mqtt_url={url} client_id={client_id}"),
                )
            }
            (None, MqttMode::Listen(_)) => unreachable!("a listen mode always binds a listener"),
        };

    let pipeline = Pipeline::start(
        PipelineConfig {
            workers: config.rule_workers,
            queue_depth: DEFAULT_QUEUE_DEPTH,
        },
        engine.clone(),
        Arc::new(StoreSink(store.clone())),
        republisher,
        ids,
    );

    let intake_stop = shutdown.child_token();
    let sink = if config.ingest_only {
        tracing::warn!(
            "--ingest-only: every publish is acknowledged at once and dropped (benchmark baseline)"
        );
        ack_everything()
    } else {
        pipeline.sink()
    };
    let intake = tokio::spawn(async move {
        match mqtt_task {
            Some(Intake::Listener(l)) => l.run(sink, intake_stop).await,
            Some(Intake::External(b)) => b.run(sink, intake_stop).await,
            None => {}
        }
    });

    // HTTP push runs beside everything else, woken by the store's commits.
    let deliver_stop = CancellationToken::new();
    let push_egress = crate::deliver::egress::EgressPolicy::new(config.push_deny_private_networks);
    let deliver = crate::deliver::start(
        store.clone(),
        crate::deliver::DeliverConfig {
            egress: push_egress.clone(),
            retry_scale: config.push_retry_scale,
            ..crate::deliver::DeliverConfig::default()
        },
        deliver_stop.clone(),
    );
    if config.push_retry_scale != 1.0 {
        tracing::warn!(
            push_retry_scale = config.push_retry_scale,
            "push retry waits are scaled (a test setting)"
        );
    }

    let http_limiter = ConnLimiter::new(ConnLimits {
        max_total: config.http_limits.max_connections,
        max_per_ip: config.http_limits.max_connections_per_ip,
    });
    let app = crate::api::router(crate::api::AppState::new(crate::api::Services {
        store: store.clone(),
        rules: registry.clone(),
        devices: DeviceService {
            registry: devices.clone(),
            downlink,
        },
        stages: crate::api::metrics::StageCounters {
            ingest: ingest_counters,
            pipeline: (!config.ingest_only).then(|| pipeline.counters()),
            http_connections: Some(http_limiter.clone()),
        },
        keys,
        tails: Arc::new(crate::api::console::tail::Tails::new(config.console_tails)),
        https: https.is_some(),
        push_egress,
    }));
    let http_stop = CancellationToken::new();
    let http_stop_wait = http_stop.clone();
    let http_server = crate::api::server::HttpServerConfig {
        header_read_timeout: std::time::Duration::from_secs(
            config.http_limits.header_read_timeout_secs,
        ),
    };
    let http = crate::api::server::LimitedListener::new(http, http_limiter);
    let http_task = match https {
        Some(acceptor) => {
            let listener = crate::api::tls::TlsListener::new(http, http_addr, acceptor);
            tokio::spawn(crate::api::server::serve(
                listener,
                app,
                http_server,
                http_stop_wait,
            ))
        }
        None => tokio::spawn(crate::api::server::serve(
            http,
            app,
            http_server,
            http_stop_wait,
        )),
    };

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
        running_rules_summary(&registry)
    );
    // The admin key under this server's URL, for the CLI on this machine (before the ready
    // line, so whoever waits for it finds the key).
    let own_url = {
        let mut a = http_addr;
        if a.ip().is_unspecified() {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("{scheme}://{a}")
    };
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

    shutdown.cancelled().await;
    let _ = intake.await;
    pipeline.finish().await;
    http_stop.cancel();
    let _ = http_task.await;
    // Pushes in flight get a bounded grace period; the rest are pushed again after a restart.
    deliver_stop.cancel();
    let _ = deliver.await;
    store.close().await?;
    tracing::info!("sluice stopped cleanly");
    Ok(())
}

/// Keeps the external broker subscribed to exactly the running rules' FROM filters as rules are
/// created, started, stopped and deleted. It compares in-memory sets once a second, which costs
/// nothing measurable and needs no hook in the rules stage.
async fn follow_rule_filters(
    engine: Arc<RuleEngine>,
    handle: crate::ingest::ExternalHandle,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let want = engine.running_filters();
        let have = handle.filters();
        for filter in want.iter().filter(|f| !have.contains(f)) {
            if let Err(e) = handle.add_filter(filter).await {
                tracing::warn!(filter = %filter, "cannot subscribe at the external broker: {e}");
            }
        }
        for filter in have.iter().filter(|f| !want.contains(f)) {
            if let Err(e) = handle.remove_filter(filter).await {
                tracing::warn!(filter = %filter, "cannot unsubscribe at the external broker: {e}");
            }
        }
    }
}

/// The bench baseline's sink: acknowledges every message at once, keeps nothing.
fn ack_everything() -> crate::ingest::IngestSink {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<crate::ingest::Ingested>(DEFAULT_QUEUE_DEPTH);
    tokio::spawn(async move {
        while let Some(item) = rx.recv().await {
            item.ack.commit();
        }
    });
    tx.into()
}

enum Intake {
    Listener(MqttListener),
    External(Box<ExternalBroker>),
}

async fn open_store(config: &ServeConfig) -> Result<Store, ServeError> {
    let opts = StoreOptions {
        node_id: config.node_id,
        synchronous: match config.synchronous {
            SyncLevel::Full => Synchronous::Full,
            SyncLevel::Normal => Synchronous::Normal,
        },
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
    .map_err(|e| ServeError::Config(e.to_string()))?
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
        return Err(ServeError::Config(format!(
            "the NATS servers fall short of the durability sluice promises (nothing acknowledged \
             is lost):\n  - {}\nfix the servers, or start with --accept-weaker-durability to \
             run anyway",
            report.problems.join("\n  - ")
        )));
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

/// The quickstart set-up on an empty data directory: topic `alerts`, queue `alerts-q`,
/// subscription `alerts-to-q`, and the running overheat rule.
async fn create_default_setup(
    store: &Store,
    registry: &Arc<RuleRegistry>,
) -> Result<(), ServeError> {
    store.create_topic("alerts").await?;
    store
        .create_queue("alerts-q", QueueAttributes::default())
        .await?;
    store
        .create_subscription("alerts", "alerts-to-q", SubscriptionSpec::queue("alerts-q"))
        .await?;
    let def = RuleDefinition {
        module: Some(OVERHEAT_WASM.to_vec()),
        from: Some("/+/+/user/update".into()),
        actions: vec!["forward:alerts".into()],
        ..RuleDefinition::default()
    };
    let spec = def
        .into_spec("overheat")
        .map_err(|e| ServeError::Config(e.to_string()))?;
    create_running_rule(registry, spec).await?;
    tracing::info!("new data directory: created topic alerts, queue alerts-q, subscription alerts-to-q and the running rule overheat");
    Ok(())
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

async fn create_running_rule(
    registry: &Arc<RuleRegistry>,
    spec: RuleSpec,
) -> Result<(), ServeError> {
    let registry = registry.clone();
    tokio::task::spawn_blocking(move || -> Result<(), RegistryError> {
        let name = spec.name.clone();
        if registry.contains(&name) {
            // Created on an earlier start, or (a shared catalog) by another process first.
            return Ok(());
        }
        registry.create(spec)?;
        registry.set_state(&name, RuleState::Running)?;
        Ok(())
    })
    .await
    .map_err(|e| ServeError::Config(e.to_string()))?
    .map_err(|e| ServeError::Config(e.to_string()))
}

/// Checks every `[[rule]]` of the config file as `rule create` would (definition, grant,
/// module compiled and trial-instantiated), so a bad one stops the start before anything is
/// written; the error names the rule and, for a module, its file. Returns the checked rules.
fn check_configured_rules(
    config: &ServeConfig,
    runtime: &Arc<RuleRuntime>,
) -> Result<Vec<RuleSpec>, ServeError> {
    let checker = RuleEngine::new(runtime.clone(), None);
    let mut specs = Vec::with_capacity(config.objects.rule.len());
    for r in &config.objects.rule {
        let source = match &r.wasm_file {
            Some(p) => format!(" ({})", config.config_dir.join(p).display()),
            None => String::new(),
        };
        let fail = |e: String| ServeError::Config(format!("[[rule]] `{}`{source}: {e}", r.name));
        let spec = rule_definition(r, &config.config_dir)
            .map_err(fail)?
            .into_spec(&r.name)
            .map_err(|e| fail(e.to_string()))?;
        checker.validate(&spec).map_err(|e| fail(e.to_string()))?;
        specs.push(spec);
    }
    Ok(specs)
}

/// Creates the config file's objects that do not exist yet (its rules as checked by
/// [`check_configured_rules`]); existing ones are left alone.
async fn create_configured_objects(
    config: &ServeConfig,
    rules: Vec<RuleSpec>,
    store: &Store,
    registry: &Arc<RuleRegistry>,
) -> Result<(), ServeError> {
    let objects = &config.objects;
    for t in &objects.topic {
        store
            .create_topic(&t.name)
            .await
            .map_err(|e| cfg_err("topic", &t.name, e))?;
    }
    for q in &objects.queue {
        let mut a = QueueAttributes::default();
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = q.$f { a.$f = v; } )* };
        }
        set!(
            delay_seconds,
            maximum_message_size,
            message_retention_period,
            visibility_timeout,
            polling_wait_seconds
        );
        a.dead_letter_queue = q.dead_letter_queue.clone();
        a.max_receive_count = q.max_receive_count;
        match store.get_queue(&q.name).await {
            Ok(_) => {}
            Err(StoreError::QueueNotExist { .. }) => {
                store
                    .create_queue(&q.name, a)
                    .await
                    .map_err(|e| cfg_err("queue", &q.name, e))?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    for s in &objects.subscription {
        match store.get_subscription(&s.topic, &s.name).await {
            Ok(_) => {}
            Err(StoreError::SubscriptionNotExist { .. }) => {
                let mut spec = SubscriptionSpec::queue(s.queue.clone());
                spec.filter_tag = s.filter_tag.clone();
                store
                    .create_subscription(&s.topic, &s.name, spec)
                    .await
                    .map_err(|e| cfg_err("subscription", &s.name, e))?;
            }
            Err(e) => return Err(cfg_err("subscription", &s.name, e)),
        }
    }
    for spec in rules {
        let name = spec.name.clone();
        create_running_rule(registry, spec)
            .await
            .map_err(|e| ServeError::Config(format!("[[rule]] `{name}`: {e}")))?;
    }
    Ok(())
}

/// Registers the config file's `[[device]]` entries that do not exist yet; a generated secret is
/// logged once, the only place it appears.
async fn create_configured_devices(
    config: &ServeConfig,
    devices: &DeviceRegistry,
) -> Result<(), ServeError> {
    for d in &config.objects.device {
        let name = format!("{}/{}", d.product_key, d.device_name);
        if devices.lookup(&d.product_key, &d.device_name).is_some() {
            continue;
        }
        let created = devices
            .create_with_secret(
                &d.product_key,
                &d.device_name,
                d.secret.clone(),
                d.tags.clone(),
            )
            .await
            .map_err(|e| ServeError::Config(format!("[[device]] `{name}`: {e}")))?;
        if d.secret.is_none() {
            tracing::info!(
                "[[device]] {name} registered; its secret (shown only now): {}",
                created.secret
            );
        } else {
            tracing::info!("[[device]] {name} registered with the configured secret");
        }
    }
    Ok(())
}

fn cfg_err(kind: &str, name: &str, e: StoreError) -> ServeError {
    ServeError::Config(format!("[[{kind}]] `{name}`: {e}"))
}

fn rule_definition(r: &crate::config::RuleConfig, dir: &Path) -> Result<RuleDefinition, String> {
    let read = |p: &Path| {
        let path = dir.join(p);
        std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let sql = match (&r.sql, &r.sql_file) {
        (Some(s), None) => Some(s.clone()),
        (None, Some(p)) => {
            Some(String::from_utf8(read(p)?).map_err(|_| "SQL file is not UTF-8".to_string())?)
        }
        (None, None) => None,
        (Some(_), Some(_)) => return Err("give sql or sql_file, not both".into()),
    };
    let module = r.wasm_file.as_deref().map(read).transpose()?;
    Ok(RuleDefinition {
        sql,
        module,
        from: r.from.clone(),
        data_type: r.data_type.clone(),
        actions: r.actions.clone(),
        error_action: r.error_action.clone(),
        grant: r.grant.clone(),
        timezone: r.timezone.clone(),
    })
}
