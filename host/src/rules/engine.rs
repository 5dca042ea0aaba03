//! The running rule set. Rules are compiled once into [`RuleModule`]s and swapped in as immutable
//! snapshots; each pipeline worker holds a [`RuleWorker`] with its own live instances, so Wasm
//! calls never share a store across threads.
//!
//! A snapshot swap is how `update` works without losing or repeating a message: the new version
//! replaces the old one in a single new snapshot (never a moment with both or neither), and a
//! worker takes a new snapshot only between two messages. So a message already handed to a
//! worker finishes on the version it started with, every later message on that worker sees the
//! new one, and since the pipeline sends all of one device's messages to one worker, per-device
//! order holds across the swap.
//!
//! Counters are per rule and shared by every worker: plain relaxed atomics, including a
//! log-bucketed latency histogram ([`LatencyHistogram`]), so recording costs a few uncontended
//! atomic adds and reading never stops a worker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::Serialize;

pub use crate::histogram::{LatencyHistogram, LatencySnapshot};

use super::actions::Action;
use super::rule_log::RuleLog;
use super::runtime::{
    Binding, Environment, FailureKind, LoadError, Outcome, RuleFailure, RuleInput, RuleInstance,
    RuleModule, RuleRuntime, TagSource,
};
use super::spec::{DataType, RuleSource, RuleSpec, RuleState, MAX_ACTIONS};
use super::view;

/// Why a rule could not be created, updated or started.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The module failed ABI checks or could not start.
    #[error("rule `{name}`: module {source}")]
    Load {
        /// The rule.
        name: String,
        /// Why.
        #[source]
        source: LoadError,
    },
    /// A field of the rule is invalid.
    #[error("rule `{name}`: {message}")]
    Invalid {
        /// The rule.
        name: String,
        /// The offending field.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The SQL did not compile.
    #[error("rule `{name}`: {message}")]
    Sql {
        /// The rule.
        name: String,
        /// The compiler's message, with line and column.
        message: String,
    },
}

impl RuleError {
    /// The field the error is about, for API error bodies.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            RuleError::Load { .. } => Some("module"),
            RuleError::Invalid { field, .. } => Some(field),
            RuleError::Sql { .. } => Some("sql"),
        }
    }
}

/// Per-rule counters, shared by every worker; read by `rule show` and `/metrics`.
#[derive(Debug, Default)]
pub struct RuleCounters {
    /// Messages the rule was run on.
    pub messages_in: AtomicU64,
    /// Decisions carried out.
    pub outputs: AtomicU64,
    /// Messages the rule chose not to forward (no decision, or DROP).
    pub dropped: AtomicU64,
    /// Messages whose payload was not what the rule's data type promises (a json rule given
    /// bytes that are not a JSON object); also counted in `dropped`.
    pub invalid_payloads: AtomicU64,
    /// Failures, by [`FailureKind`] (indexed like `FailureKind::ALL`).
    pub failed: [AtomicU64; FailureKind::ALL.len()],
    /// Time spent inside the sandbox, in nanoseconds.
    pub busy_ns: AtomicU64,
    /// Fuel the rule used (about one unit per Wasm instruction, host calls included): its CPU
    /// cost, independent of load on the machine.
    pub fuel_used: AtomicU64,
    /// Log lines the rule wrote past the log caps, dropped instead of written.
    pub log_dropped: AtomicU64,
    /// How long one message took in this rule (instantiation after an update or a trap
    /// included): what a slow rule costs every message behind it on the same worker.
    pub latency: LatencyHistogram,
}

/// A point-in-time copy of [`RuleCounters`] for JSON and tables.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Messages the rule was run on.
    pub messages_in: u64,
    /// Decisions carried out.
    pub outputs: u64,
    /// Messages the rule chose not to forward.
    pub dropped: u64,
    /// Of those, messages whose payload was invalid for the rule's data type.
    pub invalid_payloads: u64,
    /// Failures by kind (only kinds that happened).
    pub failed: std::collections::BTreeMap<&'static str, u64>,
    /// Time spent inside the sandbox, in microseconds.
    pub busy_us: u64,
    /// Fuel used, about one unit per Wasm instruction.
    pub fuel_used: u64,
    /// Log lines dropped past the log caps.
    pub log_dropped: u64,
    /// Per-message latency in this rule.
    pub latency_ns: LatencySnapshot,
}

impl RuleCounters {
    /// Copies the counters.
    pub fn snapshot(&self) -> CounterSnapshot {
        let mut failed = std::collections::BTreeMap::new();
        for (i, kind) in FailureKind::ALL.iter().enumerate() {
            let n = self.failed[i].load(Ordering::Relaxed);
            if n > 0 {
                failed.insert(kind.as_str(), n);
            }
        }
        CounterSnapshot {
            messages_in: self.messages_in.load(Ordering::Relaxed),
            outputs: self.outputs.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            invalid_payloads: self.invalid_payloads.load(Ordering::Relaxed),
            failed,
            busy_us: self.busy_ns.load(Ordering::Relaxed) / 1000,
            fuel_used: self.fuel_used.load(Ordering::Relaxed),
            log_dropped: self.log_dropped.load(Ordering::Relaxed),
            latency_ns: self.latency.snapshot(),
        }
    }

    /// Total failures of every kind.
    pub fn failed_total(&self) -> u64 {
        self.failed.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    fn record_failure(&self, kind: FailureKind) {
        let i = FailureKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_default();
        self.failed[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// A rule compiled and ready to instantiate.
#[derive(Debug)]
struct LoadedRule {
    name: Arc<str>,
    /// Unique per install: a worker's instance belongs to exactly one install, so a rule deleted
    /// and created again under the same name and version never runs on a stale instance.
    load_id: u64,
    version: u64,
    from_filter: String,
    data_type: DataType,
    error_action: Option<Action>,
    module: RuleModule,
    binding: Binding,
    env: Environment,
    counters: Arc<RuleCounters>,
}

/// An immutable set of running rules.
#[derive(Debug, Default)]
struct RuleSet {
    generation: u64,
    rules: Vec<Arc<LoadedRule>>,
}

/// Compiles rules and publishes snapshots of the running set to workers.
pub struct RuleEngine {
    runtime: Arc<RuleRuntime>,
    current: RwLock<Arc<RuleSet>>,
    generation: AtomicU64,
    /// The generation, for workers waiting for messages: a change wakes them so they drop the
    /// instances (and memory) of replaced, stopped and deleted rules at once.
    changes: tokio::sync::watch::Sender<u64>,
    next_load_id: AtomicU64,
    counters: Mutex<HashMap<String, Arc<RuleCounters>>>,
    tags: Option<Arc<dyn TagSource>>,
}

impl std::fmt::Debug for RuleEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleEngine")
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish()
    }
}

/// Compiles a rule's source to a Wasm module: SQL through the SQL compiler, Wasm as is.
pub fn module_bytes(spec: &RuleSpec) -> Result<std::borrow::Cow<'_, [u8]>, RuleError> {
    match &spec.source {
        RuleSource::Wasm { module } => Ok(std::borrow::Cow::Borrowed(module)),
        RuleSource::Sql { sql } => super::compile_sql(sql, spec.data_type)
            .map(|c| std::borrow::Cow::Owned(c.wasm))
            .map_err(|e| RuleError::Sql {
                name: spec.name.clone(),
                message: e.to_string(),
            }),
    }
}

impl RuleEngine {
    /// An engine with no rules.
    pub fn new(runtime: Arc<RuleRuntime>, tags: Option<Arc<dyn TagSource>>) -> RuleEngine {
        RuleEngine {
            runtime,
            current: RwLock::new(Arc::new(RuleSet::default())),
            generation: AtomicU64::new(0),
            changes: tokio::sync::watch::Sender::new(0),
            next_load_id: AtomicU64::new(1),
            counters: Mutex::new(HashMap::new()),
            tags,
        }
    }

    /// The sandbox.
    pub fn runtime(&self) -> &Arc<RuleRuntime> {
        &self.runtime
    }

    /// Checks everything about a rule that can be checked before it runs: name, filter,
    /// actions inside the grant, and the module (compiled, ABI-checked, trial-instantiated).
    pub fn validate(&self, spec: &RuleSpec) -> Result<RuleModule, RuleError> {
        let invalid = |field, message: String| RuleError::Invalid {
            name: spec.name.clone(),
            field,
            message,
        };
        crate::names::validate_name(&spec.name).map_err(|e| invalid("name", e))?;
        crate::topic::validate_filter(&spec.from_filter)
            .map_err(|e| invalid("from", e.to_string()))?;
        if spec.actions.len() > MAX_ACTIONS {
            return Err(invalid(
                "actions",
                format!(
                    "has {} actions; a rule may have at most {MAX_ACTIONS}",
                    spec.actions.len()
                ),
            ));
        }
        spec.grant
            .check_actions(
                spec.actions.iter().chain(&spec.error_action),
                &spec.from_filter,
            )
            .map_err(|e| invalid("grant", e))?;
        let bytes = module_bytes(spec)?;
        self.runtime.load(&bytes).map_err(|source| RuleError::Load {
            name: spec.name.clone(),
            source,
        })
    }

    /// Validates and installs `spec` (replacing any rule of the same name) and publishes a new
    /// snapshot. A stopped rule is validated but runs on nothing.
    pub fn install(&self, spec: &RuleSpec) -> Result<(), RuleError> {
        let module = self.validate(spec)?;
        self.install_module(spec, module);
        Ok(())
    }

    /// Installs `spec` with the module [`RuleEngine::validate`] returned for it, so a lifecycle
    /// change compiles the module once. Running: the rule replaces its previous version in one
    /// snapshot swap (see the module docs); stopped: it leaves the running set.
    pub fn install_module(&self, spec: &RuleSpec, module: RuleModule) {
        if spec.state != RuleState::Running {
            self.replace(&spec.name, None);
            return;
        }
        let counters = self.counters_for(&spec.name);
        let loaded = Arc::new(LoadedRule {
            name: spec.name.as_str().into(),
            load_id: self.next_load_id.fetch_add(1, Ordering::Relaxed),
            version: spec.version,
            from_filter: spec.from_filter.clone(),
            data_type: spec.data_type,
            error_action: spec.error_action.clone(),
            module,
            binding: Binding {
                actions: spec.actions.clone(),
                grant: spec.grant.clone(),
                from_filter: spec.from_filter.clone(),
                log: Arc::new(RuleLog::new(&spec.name)),
            },
            env: Environment {
                utc_offset_seconds: spec.utc_offset_seconds,
                ..Environment::default()
            },
            counters,
        });
        self.replace(&spec.name, Some(loaded));
    }

    /// Takes a rule out of the running set (stop); its counters stay.
    pub fn stop(&self, name: &str) {
        self.replace(name, None);
    }

    /// Removes a rule from the running set and forgets its counters (delete), so a rule created
    /// later under the same name starts from zero.
    pub fn remove(&self, name: &str) {
        self.replace(name, None);
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// The version of `name` in the running set, if it is running.
    pub fn running_version(&self, name: &str) -> Option<u64> {
        self.snapshot()
            .rules
            .iter()
            .find(|r| &*r.name == name)
            .map(|r| r.version)
    }

    fn replace(&self, name: &str, rule: Option<Arc<LoadedRule>>) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let mut rules: Vec<Arc<LoadedRule>> = current
            .rules
            .iter()
            .filter(|r| &*r.name != name)
            .cloned()
            .collect();
        rules.extend(rule);
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        *current = Arc::new(RuleSet { generation, rules });
        drop(current);
        self.changes.send_replace(generation);
    }

    fn snapshot(&self) -> Arc<RuleSet> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The FROM filters of the running rules (what an external broker must deliver).
    pub fn running_filters(&self) -> Vec<String> {
        let mut filters: Vec<String> = self
            .snapshot()
            .rules
            .iter()
            .map(|r| r.from_filter.clone())
            .collect();
        filters.sort();
        filters.dedup();
        filters
    }

    /// The counters of rule `name` (created on first use, kept across updates).
    pub fn counters_for(&self, name: &str) -> Arc<RuleCounters> {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// A worker's view of the rules, with its own instances.
    pub fn worker(self: &Arc<Self>) -> RuleWorker {
        RuleWorker {
            engine: self.clone(),
            set: Arc::new(RuleSet::default()),
            instances: HashMap::new(),
            changes: self.changes.subscribe(),
        }
    }
}

/// One message, as the rules stage needs it.
#[derive(Debug, Clone, Copy)]
pub struct MessageContext<'a> {
    /// The MQTT topic.
    pub topic: &'a str,
    /// The payload as published.
    pub payload: &'a [u8],
    /// The message id.
    pub message_id: &'a str,
    /// The device's product key.
    pub product_key: &'a str,
    /// The device's name.
    pub device_name: &'a str,
    /// Ingest time, ms since the epoch.
    pub timestamp_ms: i64,
}

/// What one rule made of one message.
#[derive(Debug)]
pub struct Evaluation {
    /// The rule's name.
    pub rule: Arc<str>,
    /// Its decisions, or why it failed.
    pub result: Result<Outcome, RuleFailure>,
    /// Where a failure is reported.
    pub error_action: Option<Action>,
    /// The rule's counters (the caller adds outputs once they are committed).
    pub counters: Arc<RuleCounters>,
}

/// A worker's rules: the snapshot it runs and one live instance per rule.
pub struct RuleWorker {
    engine: Arc<RuleEngine>,
    set: Arc<RuleSet>,
    /// One instance per running rule, tagged with the install it belongs to.
    instances: HashMap<Arc<str>, (u64, RuleInstance)>,
    changes: tokio::sync::watch::Receiver<u64>,
}

impl std::fmt::Debug for RuleWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleWorker")
            .field("generation", &self.set.generation)
            .field("instances", &self.instances.len())
            .finish()
    }
}

impl RuleWorker {
    /// Takes the newest snapshot if it changed; keeps instances of unchanged rules and drops
    /// those of replaced, stopped or deleted ones. Called only between messages, which is what
    /// makes an update atomic per message.
    pub fn refresh(&mut self) {
        if self.engine.generation.load(Ordering::SeqCst) == self.set.generation {
            return;
        }
        self.changes.mark_unchanged();
        self.set = self.engine.snapshot();
        let live: std::collections::HashSet<(Arc<str>, u64)> = self
            .set
            .rules
            .iter()
            .map(|r| (r.name.clone(), r.load_id))
            .collect();
        self.instances
            .retain(|name, (load_id, _)| live.contains(&(name.clone(), *load_id)));
    }

    /// Resolves when the running set changed since this worker last looked: a worker waiting
    /// for messages then calls [`RuleWorker::refresh`], so a deleted rule's memory goes back
    /// at once, not at the worker's next message (which may never come).
    pub async fn changed(&mut self) {
        if self.changes.changed().await.is_err() {
            // The engine is gone (it cannot be while this worker holds it): nothing will change.
            std::future::pending::<()>().await;
        }
    }

    /// How many instances this worker holds.
    pub fn instances(&self) -> usize {
        self.instances.len()
    }

    /// How many rules this worker's current snapshot runs.
    pub fn running_rules(&self) -> usize {
        self.set.rules.len()
    }

    /// Runs every running rule whose FROM filter matches the message.
    pub fn evaluate(&mut self, msg: &MessageContext<'_>) -> Vec<Evaluation> {
        self.refresh();
        let set = self.set.clone();
        let tags = self.engine.tags.clone();
        let mut out = Vec::new();
        let mut json_view: Option<Option<Vec<u8>>> = None;
        for rule in set.rules.iter() {
            if !crate::topic::topic_matches(&rule.from_filter, msg.topic) {
                continue;
            }
            let payload: &[u8] = match rule.data_type {
                DataType::Binary => msg.payload,
                DataType::Json => json_view
                    .get_or_insert_with(|| {
                        view::platform_view(
                            msg.topic,
                            msg.payload,
                            msg.product_key,
                            msg.device_name,
                            msg.timestamp_ms,
                        )
                    })
                    .as_deref()
                    .unwrap_or(msg.payload),
            };
            let input = RuleInput {
                topic: msg.topic,
                payload,
                raw_payload: msg.payload,
                message_id: msg.message_id,
                product_key: msg.product_key,
                device_name: msg.device_name,
                timestamp_ms: msg.timestamp_ms,
                tags: tags.as_ref(),
            };
            let started = Instant::now();
            let result = self.call(rule, &input);
            let elapsed = started.elapsed();
            let counters = &rule.counters;
            counters.latency.record_duration(elapsed);
            counters.messages_in.fetch_add(1, Ordering::Relaxed);
            match &result {
                Ok(Outcome::Dropped) => {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Outcome::Emitted(d)) if d.is_empty() => {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Outcome::Emitted(_)) => {}
                Err(failure) => {
                    counters.record_failure(failure.kind);
                    tracing::debug!(rule = %rule.name, topic = msg.topic, kind = failure.kind.as_str(), "rule failed a message: {}", failure.message);
                }
            }
            out.push(Evaluation {
                rule: rule.name.clone(),
                result,
                error_action: rule.error_action.clone(),
                counters: rule.counters.clone(),
            });
        }
        out
    }

    fn call(&mut self, rule: &LoadedRule, input: &RuleInput<'_>) -> Result<Outcome, RuleFailure> {
        let stale = match self.instances.get(&rule.name) {
            Some((load_id, instance)) => *load_id != rule.load_id || instance.is_poisoned(),
            None => true,
        };
        if stale {
            let instance = self
                .engine
                .runtime
                .instantiate(&rule.module, rule.binding.clone(), rule.env.clone())
                .map_err(|e| RuleFailure {
                    kind: e.failure_kind(),
                    message: format!("could not instantiate the module: {e}"),
                })?;
            self.instances
                .insert(rule.name.clone(), (rule.load_id, instance));
        }
        let Some((_, instance)) = self.instances.get_mut(&rule.name) else {
            return Err(RuleFailure {
                kind: FailureKind::Trap,
                message: "the rule's instance vanished".into(),
            });
        };
        let started = Instant::now();
        let result = instance.call(input);
        rule.counters
            .fuel_used
            .fetch_add(instance.last_fuel_used(), Ordering::Relaxed);
        if instance.last_payload_invalid() {
            rule.counters
                .invalid_payloads
                .fetch_add(1, Ordering::Relaxed);
        }
        let dropped = instance.last_log_dropped();
        if dropped > 0 {
            rule.counters
                .log_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
        if instance.is_poisoned() {
            // Replaced at the rule's next message; its memory goes back now.
            self.instances.remove(&rule.name);
        }
        rule.counters.busy_ns.fetch_add(
            u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::actions::{Action, Grant};
    use crate::rules::runtime::{SandboxConfig, Target};

    fn engine(tags: Option<Arc<dyn TagSource>>) -> Arc<RuleEngine> {
        let runtime = RuleRuntime::new(SandboxConfig::default()).expect("runtime");
        Arc::new(RuleEngine::new(Arc::new(runtime), tags))
    }

    fn wasm(path: &str) -> Vec<u8> {
        std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn spec(name: &str, module: Vec<u8>, actions: &[&str], data_type: DataType) -> RuleSpec {
        let actions: Vec<Action> = actions.iter().map(|a| Action::parse(a).unwrap()).collect();
        RuleSpec {
            name: name.into(),
            source: RuleSource::Wasm { module },
            from_filter: "/pk/+/user/update".into(),
            data_type,
            grant: Grant::from_actions(&actions),
            actions,
            error_action: None,
            state: RuleState::Running,
            version: 1,
            utc_offset_seconds: 0,
        }
    }

    fn msg<'a>(device: &'a str, topic: &'a str, payload: &'a [u8]) -> MessageContext<'a> {
        MessageContext {
            topic,
            payload,
            message_id: "0123456789abcdef0123456789abcdef",
            product_key: "pk",
            device_name: device,
            timestamp_ms: 1_700_000_000_000,
        }
    }

    fn forwards(evals: &[Evaluation]) -> Vec<(String, serde_json::Value)> {
        let mut out = Vec::new();
        for e in evals {
            if let Ok(Outcome::Emitted(decisions)) = &e.result {
                for d in decisions {
                    if let Target::Forward(t) = &d.target {
                        let body = serde_json::from_slice(&d.payload)
                            .unwrap_or_else(|_| serde_json::Value::String(hex::encode(&d.payload)));
                        out.push((t.clone(), body));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn a_json_rule_given_a_payload_that_is_not_json_counts_an_invalid_payload() {
        let engine = engine(None);
        let mut worker = engine.worker();
        let mut rule = spec("hot", Vec::new(), &["forward:out"], DataType::Json);
        rule.source = RuleSource::Sql {
            sql: r#"SELECT t FROM "/pk/+/user/update" WHERE t > 1"#.into(),
        };
        engine.install(&rule).unwrap();
        let topic = "/pk/d1/user/update";
        for payload in [&b"not json"[..], br#"{"t": 5}"#, br#"{"t": 0}"#, b"[1,2]"] {
            worker.evaluate(&msg("d1", topic, payload));
        }
        let c = engine.counters_for("hot").snapshot();
        assert_eq!(c.messages_in, 4);
        assert_eq!(c.invalid_payloads, 2, "{c:?}");
        assert_eq!(
            c.dropped, 3,
            "two invalid payloads and one false WHERE: {c:?}"
        );
        assert!(c.failed.is_empty(), "{c:?}");
    }

    #[test]
    fn an_update_swaps_versions_between_messages_and_counters_carry_over() {
        let engine = engine(None);
        let mut worker = engine.worker();
        engine
            .install(&spec(
                "stamp",
                wasm(env!("SLUICE_STAMP_WASM")),
                &["forward:out"],
                DataType::Json,
            ))
            .unwrap();
        let topic = "/pk/d1/user/update";
        let out = forwards(&worker.evaluate(&msg("d1", topic, br#"{"seq":1}"#)));
        assert_eq!(
            out,
            [(
                "out".to_string(),
                serde_json::json!({"device":"d1","seq":1,"version":1})
            )]
        );

        let mut v2 = spec(
            "stamp",
            wasm(env!("SLUICE_STAMP_V2_WASM")),
            &["forward:out"],
            DataType::Json,
        );
        v2.version = 2;
        let module = engine.validate(&v2).unwrap();
        engine.install_module(&v2, module);
        let out = forwards(&worker.evaluate(&msg("d1", topic, br#"{"seq":2}"#)));
        assert_eq!(
            out[0].1["version"], 2,
            "the next message runs on the new version"
        );
        let counters = engine.counters_for("stamp").snapshot();
        assert_eq!(
            counters.messages_in, 2,
            "counters are kept across an update: {counters:?}"
        );
        assert_eq!(counters.latency_ns.samples, 2);
        assert!(counters.fuel_used > 0, "fuel is counted: {counters:?}");
        assert!(counters.latency_ns.p50 > 0 && counters.latency_ns.p99 >= counters.latency_ns.p50);
        assert_eq!(engine.running_version("stamp"), Some(2));

        // Delete and create again under the same name and version: the new module runs, not a
        // cached instance of the old one, and counters start from zero.
        engine.remove("stamp");
        assert!(worker
            .evaluate(&msg("d1", topic, br#"{"seq":3}"#))
            .is_empty());
        let mut again = spec(
            "stamp",
            wasm(env!("SLUICE_STAMP_WASM")),
            &["forward:out"],
            DataType::Json,
        );
        again.version = 2;
        engine.install(&again).unwrap();
        let out = forwards(&worker.evaluate(&msg("d1", topic, br#"{"seq":4}"#)));
        assert_eq!(out[0].1["version"], 1);
        assert_eq!(engine.counters_for("stamp").snapshot().messages_in, 1);
    }

    #[test]
    fn an_update_under_concurrent_load_runs_each_message_once_and_never_goes_back() {
        // Two workers evaluate 2,000 messages each while another thread swaps v1 for v2 midway:
        // every message is evaluated exactly once, and each worker's (hence each device's)
        // outputs read 1,1,...,1,2,...,2 — in order, and never back to the old version.
        let engine = engine(None);
        let v1 = spec(
            "stamp",
            wasm(env!("SLUICE_STAMP_WASM")),
            &["forward:out"],
            DataType::Json,
        );
        let mut v2 = spec(
            "stamp",
            wasm(env!("SLUICE_STAMP_V2_WASM")),
            &["forward:out"],
            DataType::Json,
        );
        v2.version = 2;
        engine.install(&v1).unwrap();
        let v2_module = engine.validate(&v2).unwrap();
        let done = Arc::new(AtomicU64::new(0));
        let updater = {
            let engine = engine.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                while done.load(Ordering::Relaxed) < 1000 {
                    std::thread::yield_now();
                }
                engine.install_module(&v2, v2_module);
            })
        };
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let engine = engine.clone();
                let done = done.clone();
                std::thread::spawn(move || {
                    let mut worker = engine.worker();
                    let device = format!("d{w}");
                    let topic = format!("/pk/{device}/user/update");
                    let mut versions = Vec::new();
                    for seq in 0..2000u64 {
                        let payload = format!("{{\"seq\":{seq}}}");
                        let evals = worker.evaluate(&msg(&device, &topic, payload.as_bytes()));
                        let out = forwards(&evals);
                        assert_eq!(out.len(), 1, "exactly one version handles message {seq}");
                        assert_eq!(out[0].1["seq"], seq);
                        versions.push(out[0].1["version"].as_u64().unwrap());
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    versions
                })
            })
            .collect();
        for (w, handle) in workers.into_iter().enumerate() {
            let versions = handle.join().unwrap();
            let switch = versions
                .iter()
                .position(|v| *v == 2)
                .unwrap_or(versions.len());
            assert!(
                versions[..switch].iter().all(|v| *v == 1),
                "worker {w} ran v2 before v1"
            );
            assert!(
                versions[switch..].iter().all(|v| *v == 2),
                "worker {w} went back to v1"
            );
            println!(
                "worker {w}: {switch} messages on v1, {} on v2",
                versions.len() - switch
            );
        }
        updater.join().unwrap();
        assert_eq!(engine.counters_for("stamp").snapshot().messages_in, 4000);
    }

    #[tokio::test]
    async fn a_trapped_instance_and_a_deleted_rules_instance_give_their_memory_back_at_once() {
        let engine = engine(None);
        let usage = || {
            let u = engine.runtime().usage();
            (u.instances(), u.memory_bytes())
        };
        let cap = engine.runtime().config().max_memory_bytes as u64;
        let hog = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/rules/fixtures/memory_hog.wat"
        ))
        .unwrap();
        let mut rule = spec("hog", hog, &["forward:out"], DataType::Binary);
        rule.from_filter = "/pk/+/hog".into();
        engine.install(&rule).unwrap();
        let mut worker = engine.worker();
        let topic = "/pk/d1/hog";

        let evals = worker.evaluate(&msg("d1", topic, b"keep"));
        assert!(matches!(evals[0].result, Ok(Outcome::Dropped)));
        let (instances, bytes) = usage();
        assert_eq!(instances, 1);
        assert!(
            bytes > cap - cap / 16,
            "filled to the cap: {bytes} of {cap}"
        );

        // A trap (after the cap refused a growth, so `out_of_memory`): the instance goes now,
        // not when the rule's next message replaces it.
        let evals = worker.evaluate(&msg("d1", topic, b"trap"));
        let failure = evals[0].result.as_ref().unwrap_err();
        assert_eq!(failure.kind, FailureKind::OutOfMemory, "{failure}");
        assert_eq!(worker.instances(), 0);
        assert_eq!(usage(), (0, 0));

        // A delete wakes a worker that waits for messages, which drops the instance.
        worker.evaluate(&msg("d1", topic, b"keep"));
        assert_eq!(usage().0, 1);
        engine.remove("hog");
        tokio::time::timeout(std::time::Duration::from_secs(1), worker.changed())
            .await
            .expect("a change wakes the worker");
        worker.refresh();
        assert_eq!(usage(), (0, 0));
    }

    #[derive(Debug)]
    struct Tags;

    impl TagSource for Tags {
        fn tag(&self, _pk: &str, device: &str, key: &str) -> Option<String> {
            match (device, key) {
                ("fdev", "temperature_unit") => Some("F".into()),
                ("fdev", "site") => Some("plant-7".into()),
                ("m1", "device_type") => Some("meter".into()),
                _ => None,
            }
        }
    }

    #[test]
    fn the_example_rules_run_in_the_sandbox_as_they_do_natively() {
        let engine = engine(Some(Arc::new(Tags)));
        let router_grant: Vec<String> = ["thermostats", "meters", "cameras", "alarms", "unrouted"]
            .map(String::from)
            .to_vec();
        let mut router = spec(
            "router",
            wasm(env!("SLUICE_DEVICE_ROUTER_WASM")),
            &[],
            DataType::Json,
        );
        router.from_filter = "/pk/+/router".into();
        router.grant = Grant {
            forward: router_grant,
            republish: Vec::new(),
        };
        let mut convert = spec(
            "convert",
            wasm(env!("SLUICE_UNIT_CONVERT_WASM")),
            &["forward:celsius"],
            DataType::Json,
        );
        convert.from_filter = "/pk/+/convert".into();
        let mut frames = spec(
            "frames",
            wasm(env!("SLUICE_FRAME_DECODER_WASM")),
            &["forward:decoded"],
            DataType::Binary,
        );
        frames.from_filter = "/pk/+/frame".into();
        let mut overheat = spec(
            "overheat",
            wasm(env!("SLUICE_OVERHEAT_WASM")),
            &["forward:alerts"],
            DataType::Json,
        );
        overheat.from_filter = "/pk/+/user/update".into();
        for s in [&router, &convert, &frames, &overheat] {
            engine.install(s).unwrap();
        }
        let mut worker = engine.worker();

        let out = forwards(&worker.evaluate(&msg("m1", "/pk/m1/router", br#"{"alarm":true}"#)));
        let topics: Vec<&str> = out.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(topics, ["meters", "alarms"]);

        let out =
            forwards(&worker.evaluate(&msg("fdev", "/pk/fdev/convert", br#"{"temperature":212}"#)));
        assert_eq!(out[0].0, "celsius");
        assert_eq!(out[0].1["temperature_c"], 100.0);
        assert_eq!(out[0].1["site"], "plant-7");

        let frame = [
            b'S', b'L', 1, 1, 7, 0, 0, 0, 0x2a, 0x09, 0x10, 0x27, 0xe4, 0x0c, 0,
        ];
        let mut frame = frame;
        frame[14] = frame[..14].iter().fold(0, |a, b| a ^ b);
        let out = forwards(&worker.evaluate(&msg("s1", "/pk/s1/frame", &frame)));
        assert_eq!(
            out[0].1,
            serde_json::json!({"device":"s1","seq":7,"temperature":23.46,"humidity":100.0,"battery_v":3.3,"low_battery":true,"tamper":false})
        );
        let evals = worker.evaluate(&msg("s1", "/pk/s1/frame", b"short"));
        let failure = evals[0].result.as_ref().unwrap_err();
        assert_eq!(failure.kind, FailureKind::RuleError);
        assert!(failure.message.contains("5 bytes"), "{failure}");

        let out = forwards(&worker.evaluate(&msg(
            "d9",
            "/pk/d9/user/update",
            br#"{"temperature":40,"location":"x"}"#,
        )));
        assert_eq!(
            out,
            [(
                "alerts".to_string(),
                serde_json::json!({"t":40.0,"device":"d9","location":"x"})
            )]
        );
    }

    #[test]
    fn a_stopped_rule_runs_on_nothing_and_a_started_one_does() {
        let engine = engine(None);
        let mut worker = engine.worker();
        let mut s = spec(
            "overheat",
            wasm(env!("SLUICE_OVERHEAT_WASM")),
            &["forward:alerts"],
            DataType::Json,
        );
        s.state = RuleState::Stopped;
        engine.install(&s).unwrap();
        let hot = br#"{"temperature":45}"#;
        assert!(worker
            .evaluate(&msg("d", "/pk/d/user/update", hot))
            .is_empty());
        s.state = RuleState::Running;
        engine.install(&s).unwrap();
        assert_eq!(
            worker.evaluate(&msg("d", "/pk/d/user/update", hot)).len(),
            1
        );
        engine.stop("overheat");
        assert!(worker
            .evaluate(&msg("d", "/pk/d/user/update", hot))
            .is_empty());
        assert_eq!(
            engine.counters_for("overheat").snapshot().messages_in,
            1,
            "stop keeps counters"
        );
    }
}
