//! The intake stage: sluice's own MQTT listener or a client of an external broker, the way rule
//! outputs are republished to MQTT, and the task that feeds intake into the pipeline.

use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{MqttMode, ServeConfig};
use crate::conn_limit::ConnLimits;
use crate::devices::DownlinkPath;
use crate::ingest::router::RouterLimits;
use crate::ingest::SessionStore as _;
use crate::ingest::{
    ExternalBroker, ExternalConfig, IngestCounters, ListenerConfig, MqttListener, SessionRouter,
};
use crate::pipeline::{Pipeline, Republisher, DEFAULT_QUEUE_DEPTH};
use crate::rules::RuleEngine;
use crate::session_store::{StoredSessions, SESSIONS};
use crate::store::Store;

use super::ServeError;

/// The MQTT listener's settings from the resolved config (the policy is set once the device
/// registry is loaded).
pub(super) fn listener_config(config: &ServeConfig) -> ListenerConfig {
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
            offline_retention: secs(l.offline_retention_secs),
            max_waiting_calls: l.max_waiting_calls,
        },
        connections: ConnLimits {
            max_total: l.max_connections,
            max_per_ip: l.max_connections_per_ip,
        },
        ..ListenerConfig::default()
    }
}

/// Where device messages come from, not yet running.
pub(super) enum Intake {
    Listener(MqttListener),
    External(Box<ExternalBroker>),
}

/// The intake stage, ready to run, and what the other stages need of it.
pub(super) struct IngestStage {
    /// The listener or broker client (started by [`start_intake`]).
    pub intake: Intake,
    /// How rules' `republish` actions reach MQTT.
    pub republisher: Arc<dyn Republisher>,
    /// How downlink messages reach devices.
    pub downlink: DownlinkPath,
    /// Intake counters for the metrics.
    pub counters: Arc<IngestCounters>,
    /// For the machine-readable ready line: `mqtt=ADDR[ mqtt_tls=ADDR]` or `mqtt_url=...`.
    pub ready_desc: String,
}

/// Sets up the intake stage: the bound listener when sluice has its own, else a client of the
/// external broker subscribed to the running rules' filters (followed as rules change until
/// `shutdown`).
pub(super) fn ingest_stage(
    config: &ServeConfig,
    listener: Option<MqttListener>,
    engine: &Arc<RuleEngine>,
    shutdown: &CancellationToken,
) -> Result<IngestStage, ServeError> {
    match (listener, &config.mqtt) {
        (Some(listener), _) => {
            let mut addr = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            if let Some(tls) = listener.tls_local_addr() {
                addr.push_str(&format!(" mqtt_tls={tls}"));
            }
            Ok(IngestStage {
                counters: listener.counters(),
                downlink: DownlinkPath::Local(listener.router()),
                republisher: Arc::new(LocalRepublisher(listener.router())),
                intake: Intake::Listener(listener),
                ready_desc: format!("mqtt={addr}"),
            })
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
            let counters = broker.counters();
            tokio::spawn(follow_rule_filters(
                engine.clone(),
                handle.clone(),
                shutdown.clone(),
            ));
            Ok(IngestStage {
                counters,
                downlink: DownlinkPath::External(handle.clone()),
                republisher: Arc::new(ExternalRepublisher {
                    handle,
                    runtime: tokio::runtime::Handle::current(),
                }),
                intake: Intake::External(Box::new(broker)),
                ready_desc: format!("mqtt_url={url} client_id={client_id}"),
            })
        }
        (None, MqttMode::Listen(_)) => unreachable!("a listen mode always binds a listener"),
    }
}

/// Runs intake into the pipeline (or, for the bench baseline, into a sink that acknowledges
/// everything at once) until `stop`.
pub(super) fn start_intake(
    config: &ServeConfig,
    intake: Intake,
    pipeline: &Pipeline,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let sink = if config.ingest_only {
        tracing::warn!(
            "--ingest-only: every publish is acknowledged at once and dropped (benchmark baseline)"
        );
        ack_everything()
    } else {
        pipeline.sink()
    };
    tokio::spawn(async move {
        match intake {
            Intake::Listener(l) => l.run(sink, stop).await,
            Intake::External(b) => b.run(sink, stop).await,
        }
    })
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

/// The task that keeps persistent MQTT sessions durable, and how to stop it.
pub(super) struct SessionKeeper {
    task: JoinHandle<()>,
    stop: CancellationToken,
}

impl SessionKeeper {
    /// Makes the listener's persistent sessions durable in `store`: the sessions saved there
    /// are taken back (before the listener accepts anyone), and changes are written as they
    /// happen until [`SessionKeeper::finish`].
    pub(super) async fn start(
        config: &ServeConfig,
        store: &Store,
        router: &SessionRouter,
    ) -> Result<SessionKeeper, ServeError> {
        let sessions = StoredSessions::new(
            store.clone(),
            config.mqtt_limits.max_kept_per_session,
            router.counters().clone(),
        );
        let failed = |e: crate::ingest::KeepError| ServeError::Sessions(e.to_string());
        sessions.drop_orphans().await.map_err(failed)?;
        let saved = sessions.sessions().await.map_err(failed)?;
        if !saved.is_empty() {
            tracing::info!(sessions = saved.len(), "persistent MQTT sessions restored");
        }
        router.attach_store(Arc::new(sessions.clone()));
        router.restore(saved);
        let stop = CancellationToken::new();
        let task = tokio::spawn(router.clone().persist(stop.clone()));
        if let Some(changes) = store.record_changes(SESSIONS).await? {
            tokio::spawn(follow_sessions(
                sessions,
                router.clone(),
                changes,
                stop.clone(),
            ));
        }
        Ok(SessionKeeper { task, stop })
    }

    /// Writes what the closing sessions changed, then stops (call once intake has ended).
    pub(super) async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// On a store shared by several processes (JetStream), keeps the router's view of the
/// persistent sessions other processes saved current, so downlink to a device that was last
/// connected elsewhere is kept for it here too.
async fn follow_sessions(
    sessions: StoredSessions,
    router: SessionRouter,
    mut changes: tokio::sync::watch::Receiver<u64>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
        // Every change (this process's own included) moves the revision: read at most once a
        // second, whatever the rate of changes.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        changes.borrow_and_update();
        match sessions.sessions().await {
            Ok(states) => router.follow_saved(states),
            Err(e) => tracing::warn!("cannot follow the shared MQTT sessions: {e}"),
        }
    }
}
