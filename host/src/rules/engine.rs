//! The running rule set. Rules are compiled once into [`RuleModule`]s and swapped in as immutable
//! snapshots; each pipeline worker holds a [`RuleWorker`] with its own live instances, so Wasm
//! calls never share a store across threads. A snapshot swap is how `update` works: messages
//! already handed to a worker finish on the version it held, later ones see the new version.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::Serialize;

use super::actions::Action;
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
    /// Failures, by [`FailureKind`] (indexed like `FailureKind::ALL`).
    pub failed: [AtomicU64; FailureKind::ALL.len()],
    /// Time spent inside the sandbox, in nanoseconds.
    pub busy_ns: AtomicU64,
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
    /// Failures by kind (only kinds that happened).
    pub failed: std::collections::BTreeMap<&'static str, u64>,
    /// Time spent inside the sandbox, in microseconds.
    pub busy_us: u64,
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
            failed,
            busy_us: self.busy_ns.load(Ordering::Relaxed) / 1000,
        }
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
        RuleSource::Sql { .. } => Err(RuleError::Sql {
            name: spec.name.clone(),
            message: "SQL rules need the SQL compiler, which this build does not include yet"
                .into(),
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
            .check_actions(spec.actions.iter(), &spec.from_filter)
            .map_err(|e| invalid("grant", e))?;
        let bytes = module_bytes(spec)?;
        self.runtime
            .load(&bytes)
            .map_err(|source| RuleError::Load {
                name: spec.name.clone(),
                source,
            })
    }

    /// Installs `spec` (replacing any rule of the same name) and publishes a new snapshot.
    /// A stopped rule is validated but runs on nothing.
    pub fn install(&self, spec: &RuleSpec) -> Result<(), RuleError> {
        let module = self.validate(spec)?;
        let counters = self.counters_for(&spec.name);
        let loaded = Arc::new(LoadedRule {
            name: spec.name.as_str().into(),
            version: spec.version,
            from_filter: spec.from_filter.clone(),
            data_type: spec.data_type,
            error_action: spec.error_action.clone(),
            module,
            binding: Binding {
                actions: spec.actions.clone(),
                grant: spec.grant.clone(),
                from_filter: spec.from_filter.clone(),
            },
            env: Environment {
                utc_offset_seconds: spec.utc_offset_seconds,
                ..Environment::default()
            },
            counters,
        });
        self.replace(&spec.name, (spec.state == RuleState::Running).then_some(loaded));
        Ok(())
    }

    /// Removes a rule from the running set (stop or delete).
    pub fn remove(&self, name: &str) {
        self.replace(name, None);
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
    instances: HashMap<Arc<str>, (u64, RuleInstance)>,
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
    /// Takes the newest snapshot if it changed; keeps instances of unchanged rules.
    pub fn refresh(&mut self) {
        if self.engine.generation.load(Ordering::SeqCst) == self.set.generation {
            return;
        }
        self.set = self.engine.snapshot();
        let live: std::collections::HashSet<(Arc<str>, u64)> = self
            .set
            .rules
            .iter()
            .map(|r| (r.name.clone(), r.version))
            .collect();
        self.instances
            .retain(|name, (version, _)| live.contains(&(name.clone(), *version)));
    }

    /// Runs every running rule whose FROM filter matches the message.
    pub fn evaluate(&mut self, msg: &MessageContext<'_>) -> Vec<Evaluation> {
        self.refresh();
        let set = self.set.clone();
        let tags = self.engine.tags.clone();
        let mut out = Vec::new();
        let mut json_view: Option<Option<Vec<u8>>> = None;
        for rule in set.rules.iter() {
            if !crate::topic::matches(&rule.from_filter, msg.topic) {
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
            let result = self.call(rule, &input);
            let counters = &rule.counters;
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

    fn call(
        &mut self,
        rule: &LoadedRule,
        input: &RuleInput<'_>,
    ) -> Result<Outcome, RuleFailure> {
        let runtime = self.engine.runtime.clone();
        let stale = match self.instances.get(&rule.name) {
            Some((version, instance)) => *version != rule.version || instance.is_poisoned(),
            None => true,
        };
        if stale {
            let instance = runtime
                .instantiate(&rule.module, rule.binding.clone(), rule.env.clone())
                .map_err(|e| RuleFailure {
                    kind: FailureKind::Trap,
                    message: format!("could not instantiate the module: {e}"),
                })?;
            self.instances
                .insert(rule.name.clone(), (rule.version, instance));
        }
        let (_, instance) = self
            .instances
            .get_mut(&rule.name)
            .expect("inserted above");
        let started = Instant::now();
        let result = instance.call(input);
        rule.counters
            .busy_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        result
    }
}
