//! The Wasm sandbox every rule runs in: one wasmtime `Engine` per process, each rule module
//! compiled and linked once ([`RuleModule`]), and one reusable [`RuleInstance`] per rule per worker.
//!
//! Bounds: a CPU budget per call (wasmtime fuel: counted instructions, so a rule is never cut
//! short because the machine was busy; a wall-clock epoch deadline far above it stays as a
//! backstop, driven by one ticker thread) that host calls draw from too, in proportion to their
//! work; a memory cap per instance on its linear memory and table together (a
//! [`wasmtime::ResourceLimiter`]), with one memory and one table at most; capped log output
//! ([`super::rule_log`]); no WASI — a module sees only the `sluice_v1` imports of
//! `guest-sdk/ABI.md`. A failure of any kind fails one message for one rule and is
//! classified into a [`FailureKind`] from typed state (the trap code, flags the host set), never
//! from error text.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use sluice_guest::abi::{self, imports, Status};
use wasmtime::{
    Caller, Config, Engine, ExternType, InstancePre, Linker, Memory, Module, ResourceLimiter,
    Store, Trap, TypedFunc, ValType,
};

use super::actions::{Action, Grant};
use super::rule_log::{self, LogLimits, MessageLog, RuleLog};
use super::time_format;

/// Limits of the sandbox. Defaults are generous for rules and tight for runaways.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Most memory one instance may have: its linear memory and its table together.
    pub max_memory_bytes: usize,
    /// CPU bound of one call (one message). Enforced as a fuel budget of [`FUEL_PER_MS`] per
    /// millisecond, which counts the guest's own instructions and so does not fire because
    /// other threads held the core; a wall-clock deadline of [`WALL_CLOCK_BACKSTOP_FACTOR`]
    /// times this stays as a backstop.
    pub call_timeout: Duration,
    /// How often the epoch advances: the backstop deadline's resolution.
    pub epoch_tick: Duration,
    /// How much a rule may write with the `log` import.
    pub log: LogLimits,
}

/// 16 MiB: ample for JSON rules, small enough that 100 rules x 2 workers stay bounded.
pub const DEFAULT_MAX_MEMORY_BYTES: usize = 16 * 1024 * 1024;
/// 100 ms: a rule costs microseconds; this only stops runaways without cutting slow honest ones.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(100);
/// 10 ms ticks: the epoch ticker costs nothing measurable at this rate.
pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(10);
/// Fuel per millisecond of `call_timeout`: one unit is about one Wasm instruction. Measured
/// here (`benches/rules_wasm.rs`), a 2-core machine burns 0.6-1.2 M fuel per ms (busy-idle), so a
/// runaway stops after roughly the configured time of its own CPU; the overheat rule needs
/// about 12 k fuel per message, 4,000 times less than the default budget.
pub const FUEL_PER_MS: u64 = 500_000;
/// The wall-clock backstop is this many times `call_timeout`: far enough above the fuel budget
/// that only a guest fuel cannot see (none is known) or a stalled machine reaches it.
pub const WALL_CLOCK_BACKSTOP_FACTOR: u32 = 20;
/// Fuel every import call costs before it does anything: the host's own cost of the cheapest
/// call (into the host and back, a clock read) at [`FUEL_PER_MS`]. Measured with
/// `fixtures/host_call_loop.wat` (`now_ms` in a loop, the sandbox tests): 250 ns of CPU per call
/// in a debug build, i.e. ~125 fuel; an optimised build is faster, so this errs on the side of
/// stopping a loop of calls early. A loop of host calls thus stops about when a loop of
/// instructions of the same CPU cost would.
pub const HOST_CALL_FUEL: u64 = 100;
/// Fuel an import costs per byte it copies in or out, formats or writes to the log, on top of
/// [`HOST_CALL_FUEL`]. Copies cost far less CPU than that (~0.1 ns a byte), but no honest rule
/// moves enough bytes for it to matter: a 1 MiB payload costs 2 % of the default budget.
pub const HOST_FUEL_PER_BYTE: u64 = 1;
/// Fuel `random_fill` costs per byte it generates: ChaCha12 (`StdRng`) took 10 ns of CPU a byte
/// here (`fixtures/host_call_loop.wat`, 24 MiB in 256 ms), i.e. 5 fuel at [`FUEL_PER_MS`].
pub const RANDOM_FUEL_PER_BYTE: u64 = 5;
/// What the memory cap counts per table element (a function reference is a pointer).
pub const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            max_memory_bytes: DEFAULT_MAX_MEMORY_BYTES,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            epoch_tick: DEFAULT_EPOCH_TICK,
            log: LogLimits::default(),
        }
    }
}

/// Why a module was refused at load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not valid WebAssembly (or not compilable).
    #[error("not a valid WebAssembly module: {0}")]
    Invalid(String),
    /// An import outside the ABI.
    #[error("imports `{module}::{name}`, which sluice does not provide (rules may import only functions of `{}`; see guest-sdk/ABI.md)", abi::IMPORT_MODULE)]
    ForeignImport {
        /// Import module.
        module: String,
        /// Import name.
        name: String,
    },
    /// An ABI import with the wrong signature.
    #[error(
        "imports `{}::{name}` with the wrong signature: {detail}",
        abi::IMPORT_MODULE
    )]
    ImportSignature {
        /// Import name.
        name: String,
        /// What wasmtime said.
        detail: String,
    },
    /// A required export is missing.
    #[error("does not export `{0}` (required by ABI v1; see guest-sdk/ABI.md)")]
    MissingExport(&'static str),
    /// A required export has the wrong type.
    #[error("exports `{name}` with the wrong type: expected {expected}")]
    ExportSignature {
        /// Export name.
        name: &'static str,
        /// The type ABI v1 requires.
        expected: &'static str,
    },
    /// More memories or tables than ABI v1 allows: the memory cap covers one of each.
    #[error(
        "defines {found} {what}, but ABI v1 allows at most {max}; build the module with a single \
         linear memory (the exported `memory`) and at most one table (see guest-sdk/ABI.md)"
    )]
    TooMany {
        /// `linear memories` or `tables`.
        what: &'static str,
        /// How many the module defines.
        found: u32,
        /// How many ABI v1 allows.
        max: u32,
    },
    /// `sluice_abi_version` returned another version.
    #[error("speaks ABI version {0}, but this sluice runs version {ver} modules", ver = abi::ABI_VERSION)]
    AbiVersion(i32),
    /// Instantiation or `sluice_init` failed.
    #[error("failed to start: {0}")]
    Start(String),
}

/// Why one message failed for one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// A trap: unreachable, integer overflow, bad memory access inside the guest, ...
    Trap,
    /// The CPU bound of the call was reached.
    Timeout,
    /// The memory cap was reached.
    OutOfMemory,
    /// The guest's stack overflowed.
    StackOverflow,
    /// An import was given a pointer range outside the guest's memory.
    BadPointer,
    /// A decision broke the rules: unknown action, outside the grant, too many, too large.
    MalformedDecision,
    /// `sluice_on_message` returned a value that is not a status.
    BadStatus,
    /// The rule itself failed the message (`fail`).
    RuleError,
}

impl FailureKind {
    /// Every kind, for counters and tables.
    pub const ALL: [FailureKind; 8] = [
        FailureKind::Trap,
        FailureKind::Timeout,
        FailureKind::OutOfMemory,
        FailureKind::StackOverflow,
        FailureKind::BadPointer,
        FailureKind::MalformedDecision,
        FailureKind::BadStatus,
        FailureKind::RuleError,
    ];

    /// The label used in counters, logs and the error action (bounded cardinality).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::OutOfMemory => "out_of_memory",
            FailureKind::StackOverflow => "stack_overflow",
            FailureKind::BadPointer => "bad_pointer",
            FailureKind::MalformedDecision => "malformed_decision",
            FailureKind::BadStatus => "bad_status",
            FailureKind::RuleError => "rule_error",
        }
    }
}

/// One failed message for one rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct RuleFailure {
    /// The classification.
    pub kind: FailureKind,
    /// A human-readable reason.
    pub message: String,
}

/// Where a decision goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A sluice topic.
    Forward(String),
    /// An MQTT topic.
    Republish {
        /// The MQTT topic.
        topic: String,
        /// 0 or 1.
        qos: u8,
    },
    /// `emit_output` from a rule that has no actions (`sluice rule eval` without `--action`).
    Output,
}

/// One decision of a rule for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Where the payload goes.
    pub target: Target,
    /// The bytes to deliver.
    pub payload: Vec<u8>,
}

/// What a rule made of a message that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The decisions to carry out (none: the rule did not fire).
    Emitted(Vec<Decision>),
    /// The rule dropped the message on purpose.
    Dropped,
}

/// The message as a rule sees it. Borrowed: the host copies only what a call needs.
#[derive(Debug, Clone, Copy)]
pub struct RuleInput<'a> {
    /// The MQTT topic.
    pub topic: &'a str,
    /// The payload passed to the rule (the platform view on thing-model topics).
    pub payload: &'a [u8],
    /// The payload as published.
    pub raw_payload: &'a [u8],
    /// The message id.
    pub message_id: &'a str,
    /// The device's product key.
    pub product_key: &'a str,
    /// The device's name.
    pub device_name: &'a str,
    /// Ingest time, ms since the epoch.
    pub timestamp_ms: i64,
    /// The device's tags (`attribute()`, `device_tag`).
    pub tags: Option<&'a Arc<dyn TagSource>>,
}

/// Device tags, looked up per call (the device registry implements it).
pub trait TagSource: Send + Sync + std::fmt::Debug {
    /// The value of `key` for the device, if any.
    fn tag(&self, product_key: &str, device_name: &str, key: &str) -> Option<String>;
}

/// Where `now_ms` and randomness come from: the system, or fixed values for `rule eval` and tests.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// A fixed clock in ms; `None` = the system clock.
    pub fixed_now_ms: Option<i64>,
    /// A seed for `random_fill`; `None` = from the OS.
    pub seed: Option<u64>,
    /// The rule's timezone offset from UTC, in seconds (for `format_time`).
    pub utc_offset_seconds: i32,
}

/// How a rule is bound: its actions, grant and FROM filter — checked on every decision — and
/// its log, shared by its instances on every worker.
#[derive(Debug, Clone, Default)]
pub struct Binding {
    /// The rule's actions, in order (`emit_action` indexes them).
    pub actions: Vec<Action>,
    /// What the rule may write to.
    pub grant: Grant,
    /// The rule's FROM filter (a republish may never target it).
    pub from_filter: String,
    /// Where the rule's log lines go and the rate they share.
    pub log: Arc<RuleLog>,
}

/// What the sandbox holds right now, over all rules and workers: read by `/metrics`, and the
/// way to see that a deleted rule's memory went back.
#[derive(Debug, Default)]
pub struct SandboxUsage {
    instances: AtomicU64,
    memory_bytes: AtomicU64,
}

impl SandboxUsage {
    /// Live instances (one per running rule per worker that ran it, plus a trial instance while
    /// a module is checked).
    pub fn instances(&self) -> u64 {
        self.instances.load(Ordering::Relaxed)
    }

    /// Linear memory and tables of every live instance, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes.load(Ordering::Relaxed)
    }
}

/// The per-process Wasm engine: compiles modules and bounds every call.
pub struct RuleRuntime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    config: SandboxConfig,
    compiled: std::sync::Mutex<CompiledCache>,
    usage: Arc<SandboxUsage>,
    _ticker: Arc<EpochTicker>,
}

/// The most recently compiled modules, by content. Compiling is the expensive step of every
/// lifecycle change (milliseconds in release, most of a second in a debug build), and the same
/// bytes come back often: `start` after `stop`, an update that changes only actions, a rollback
/// to the previous version. Small and bounded; the least recently used entry goes first.
#[derive(Default)]
struct CompiledCache {
    entries: Vec<(u64, Arc<[u8]>, Module)>,
}

/// Enough for the working set of a busy rule set's recent changes; compiled code is not small.
const COMPILED_CACHE_ENTRIES: usize = 16;

impl CompiledCache {
    fn key(wasm: &[u8]) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        wasm.hash(&mut h);
        h.finish()
    }

    fn get(&mut self, key: u64, wasm: &[u8]) -> Option<Module> {
        let i = self
            .entries
            .iter()
            .position(|(k, bytes, _)| *k == key && &bytes[..] == wasm)?;
        let entry = self.entries.remove(i);
        let module = entry.2.clone();
        self.entries.push(entry);
        Some(module)
    }

    fn put(&mut self, key: u64, wasm: &[u8], module: Module) {
        if self.entries.len() >= COMPILED_CACHE_ENTRIES {
            self.entries.remove(0);
        }
        self.entries.push((key, wasm.into(), module));
    }
}

impl std::fmt::Debug for RuleRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleRuntime")
            .field("config", &self.config)
            .finish()
    }
}

/// Advances the engine's epoch every tick until dropped.
struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl RuleRuntime {
    /// Creates the engine, the ABI linker and the epoch ticker thread.
    pub fn new(config: SandboxConfig) -> Result<RuleRuntime, wasmtime::Error> {
        let mut wasm_config = Config::new();
        wasm_config.epoch_interruption(true);
        wasm_config.consume_fuel(true);
        wasm_config.max_wasm_stack(512 * 1024);
        let engine = Engine::new(&wasm_config)?;
        let mut linker = Linker::new(&engine);
        define_imports(&mut linker)?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop.clone();
            let tick = config.epoch_tick;
            std::thread::Builder::new()
                .name("sluice-epoch".into())
                .spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(wasmtime::Error::from)?;
        }
        Ok(RuleRuntime {
            engine,
            linker: Arc::new(linker),
            config,
            compiled: std::sync::Mutex::new(CompiledCache::default()),
            usage: Arc::default(),
            _ticker: Arc::new(EpochTicker { stop }),
        })
    }

    /// The sandbox limits in force.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// What the live instances hold.
    pub fn usage(&self) -> &SandboxUsage {
        &self.usage
    }

    /// Compiles and checks a module against ABI v1: imports, exports, version, and a trial
    /// instantiation (so a module that cannot start is refused now, not at its first message).
    pub fn load(&self, wasm: &[u8]) -> Result<RuleModule, LoadError> {
        let module = self.compile(wasm)?;
        let needs = module.resources_required();
        for (what, found, max) in [
            ("linear memories", needs.num_memories, abi::MAX_MEMORIES),
            ("tables", needs.num_tables, abi::MAX_TABLES),
        ] {
            if found > max {
                return Err(LoadError::TooMany { what, found, max });
            }
        }
        for import in module.imports() {
            if import.module() != abi::IMPORT_MODULE || !imports::ALL.contains(&import.name()) {
                return Err(LoadError::ForeignImport {
                    module: import.module().to_string(),
                    name: import.name().to_string(),
                });
            }
        }
        check_export(&module, abi::EXPORT_MEMORY, None)?;
        check_export(&module, abi::EXPORT_ABI_VERSION, Some((&[], "() -> i32")))?;
        check_export(
            &module,
            abi::EXPORT_ALLOC,
            Some((&[ValType::I32], "(i32) -> i32")),
        )?;
        check_export(
            &module,
            abi::EXPORT_ON_MESSAGE,
            Some((&[ValType::I32, ValType::I32], "(i32, i32) -> i32")),
        )?;
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| LoadError::ImportSignature {
                name: module
                    .imports()
                    .map(|i| i.name().to_string())
                    .find(|n| format!("{e:#}").contains(n.as_str()))
                    .unwrap_or_default(),
                detail: format!("{e:#}"),
            })?;
        let loaded = RuleModule {
            pre,
            module_bytes: wasm.len(),
        };
        // A trial instance proves the version, the memory cap and `sluice_init`.
        self.instantiate(&loaded, Binding::default(), Environment::default())?;
        Ok(loaded)
    }

    /// Compiles `wasm`, or takes the module compiled from the same bytes before. Only modules
    /// that compiled are cached; every other check of [`RuleRuntime::load`] runs every time.
    fn compile(&self, wasm: &[u8]) -> Result<Module, LoadError> {
        let key = CompiledCache::key(wasm);
        let cached = self
            .compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key, wasm);
        if let Some(module) = cached {
            return Ok(module);
        }
        // Compile outside the lock: two different modules compile in parallel.
        let module =
            Module::new(&self.engine, wasm).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        self.compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(key, wasm, module.clone());
        Ok(module)
    }

    /// A fresh instance of `module` for one worker, bound to a rule's actions and grant.
    pub fn instantiate(
        &self,
        module: &RuleModule,
        binding: Binding,
        env: Environment,
    ) -> Result<RuleInstance, LoadError> {
        let rng = match env.seed {
            Some(seed) => rand::rngs::StdRng::seed_from_u64(seed),
            None => rand::rngs::StdRng::from_os_rng(),
        };
        let state = HostState {
            limits: InstanceLimits::new(self.config.max_memory_bytes, self.usage.clone()),
            log_limits: self.config.log,
            binding,
            env,
            rng,
            memory: None,
            call: CallState::default(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        self.arm(&mut store)?;
        let instance = module.pre.instantiate(&mut store).map_err(|e| {
            if store.data().limits.exceeded {
                LoadError::Start(format!(
                    "its initial memory exceeds the sandbox cap of {} bytes",
                    self.config.max_memory_bytes
                ))
            } else {
                LoadError::Start(format!("{e:#}"))
            }
        })?;
        let memory = instance
            .get_memory(&mut store, abi::EXPORT_MEMORY)
            .ok_or(LoadError::MissingExport(abi::EXPORT_MEMORY))?;
        store.data_mut().memory = Some(memory);
        let version: TypedFunc<(), i32> = instance
            .get_typed_func(&mut store, abi::EXPORT_ABI_VERSION)
            .map_err(|_| LoadError::MissingExport(abi::EXPORT_ABI_VERSION))?;
        self.arm(&mut store)?;
        let v = version
            .call(&mut store, ())
            .map_err(|e| LoadError::Start(format!("sluice_abi_version trapped: {e:#}")))?;
        if v != abi::ABI_VERSION {
            return Err(LoadError::AbiVersion(v));
        }
        if let Ok(init) = instance.get_typed_func::<(), i32>(&mut store, abi::EXPORT_INIT) {
            self.arm(&mut store)?;
            let status = init
                .call(&mut store, ())
                .map_err(|e| LoadError::Start(format!("sluice_init trapped: {e:#}")))?;
            if status != 0 {
                return Err(LoadError::Start(format!(
                    "sluice_init returned {status} (expected 0)"
                )));
            }
        }
        let alloc = instance
            .get_typed_func(&mut store, abi::EXPORT_ALLOC)
            .map_err(|_| LoadError::MissingExport(abi::EXPORT_ALLOC))?;
        let on_message = instance
            .get_typed_func(&mut store, abi::EXPORT_ON_MESSAGE)
            .map_err(|_| LoadError::MissingExport(abi::EXPORT_ON_MESSAGE))?;
        Ok(RuleInstance {
            store,
            memory,
            alloc,
            on_message,
            input_ptr: 0,
            input_cap: 0,
            deadline_ticks: self.deadline_ticks(),
            fuel_budget: self.fuel_budget(),
            last_fuel_used: 0,
            poisoned: false,
        })
    }

    /// Gives `store` a fresh CPU budget and backstop deadline before a guest call.
    fn arm(&self, store: &mut Store<HostState>) -> Result<(), LoadError> {
        store.set_epoch_deadline(self.deadline_ticks());
        store
            .set_fuel(self.fuel_budget())
            .map_err(|e| LoadError::Start(format!("cannot set the CPU budget: {e:#}")))
    }

    fn fuel_budget(&self) -> u64 {
        let ms = u64::try_from(self.config.call_timeout.as_millis()).unwrap_or(u64::MAX);
        ms.max(1).saturating_mul(FUEL_PER_MS)
    }

    fn deadline_ticks(&self) -> u64 {
        let tick = self.config.epoch_tick.as_micros().max(1);
        let backstop =
            self.config.call_timeout.as_micros() * u128::from(WALL_CLOCK_BACKSTOP_FACTOR);
        u64::try_from(backstop.div_ceil(tick))
            .unwrap_or(u64::MAX)
            .max(1)
            + 1
    }
}

fn check_export(
    module: &Module,
    name: &'static str,
    func: Option<(&[ValType], &'static str)>,
) -> Result<(), LoadError> {
    let ty = module
        .get_export(name)
        .ok_or(LoadError::MissingExport(name))?;
    match (func, ty) {
        (None, ExternType::Memory(_)) => Ok(()),
        (None, _) => Err(LoadError::ExportSignature {
            name,
            expected: "a memory",
        }),
        (Some((params, expected)), ExternType::Func(f)) => {
            let params_ok = f.params().len() == params.len()
                && f.params().zip(params).all(|(a, b)| a.matches(b));
            let results: Vec<ValType> = f.results().collect();
            let results_ok = results.len() == 1 && results[0].matches(&ValType::I32);
            if params_ok && results_ok {
                Ok(())
            } else {
                Err(LoadError::ExportSignature { name, expected })
            }
        }
        (Some((_, expected)), _) => Err(LoadError::ExportSignature { name, expected }),
    }
}

/// A compiled, linked module: instantiating it is cheap.
#[derive(Clone)]
pub struct RuleModule {
    pre: InstancePre<HostState>,
    module_bytes: usize,
}

impl RuleModule {
    /// Size of the module as uploaded.
    pub fn size_bytes(&self) -> usize {
        self.module_bytes
    }
}

impl std::fmt::Debug for RuleModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleModule")
            .field("size_bytes", &self.module_bytes)
            .finish()
    }
}

/// One live instance of a rule, reused for every message a worker hands it.
pub struct RuleInstance {
    store: Store<HostState>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    on_message: TypedFunc<(i32, i32), i32>,
    input_ptr: u32,
    input_cap: u32,
    deadline_ticks: u64,
    fuel_budget: u64,
    last_fuel_used: u64,
    poisoned: bool,
}

impl std::fmt::Debug for RuleInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleInstance")
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl RuleInstance {
    /// Runs the rule on one message.
    pub fn call(&mut self, input: &RuleInput<'_>) -> Result<Outcome, RuleFailure> {
        let len = u32::try_from(input.payload.len()).map_err(|_| RuleFailure {
            kind: FailureKind::Trap,
            message: "payload larger than 4 GiB".into(),
        })?;
        self.store.data_mut().call.begin(input);
        self.store.set_epoch_deadline(self.deadline_ticks);
        let result = match self.store.set_fuel(self.fuel_budget) {
            Ok(()) => self.call_inner(input.payload, len),
            Err(e) => Err(e),
        };
        self.last_fuel_used = self
            .fuel_budget
            .saturating_sub(self.store.get_fuel().unwrap_or(0));
        let state = self.store.data_mut();
        let exceeded = std::mem::replace(&mut state.limits.exceeded, false);
        state
            .call
            .log
            .summarize(&state.log_limits, &state.binding.log, &state.call.topic);
        // The call state stays in place (its buffers are reused by the next call); only what
        // the outcome carries is taken out of it.
        let call = &mut state.call;
        match result {
            Err(err) => {
                // A trapped instance may hold broken state; the caller replaces it.
                self.poisoned = true;
                Err(classify(err, call, exceeded))
            }
            Ok(status) => {
                if let Some(violation) = call.violation.take() {
                    return Err(RuleFailure {
                        kind: FailureKind::MalformedDecision,
                        message: violation,
                    });
                }
                // A SQL rule's payload that its data type refuses: OK, counted apart.
                call.invalid_payload = status == crate::rules::sql::STATUS_INVALID_PAYLOAD;
                match Status::from_code(status) {
                    Some(Status::Ok) => Ok(Outcome::Emitted(std::mem::take(&mut call.decisions))),
                    None if call.invalid_payload => Ok(Outcome::Emitted(Vec::new())),
                    Some(Status::Drop) => Ok(Outcome::Dropped),
                    Some(Status::Failed) => Err(RuleFailure {
                        kind: FailureKind::RuleError,
                        message: call
                            .failure
                            .take()
                            .unwrap_or_else(|| "the rule failed the message".into()),
                    }),
                    _ => Err(RuleFailure {
                        kind: FailureKind::BadStatus,
                        message: format!(
                            "sluice_on_message returned {status}; expected OK (0), DROP (1) or FAILED (-1)"
                        ),
                    }),
                }
            }
        }
    }

    /// Fuel the last [`RuleInstance::call`] used: about how many Wasm instructions the rule ran,
    /// a CPU cost that does not depend on what else the machine was doing.
    pub fn last_fuel_used(&self) -> u64 {
        self.last_fuel_used
    }

    /// True when the last [`RuleInstance::call`] found the payload invalid for the rule's data
    /// type (a json rule given bytes that are not a JSON object).
    pub fn last_payload_invalid(&self) -> bool {
        self.store.data().call.invalid_payload
    }

    /// Log lines the last [`RuleInstance::call`] dropped past the log caps.
    pub fn last_log_dropped(&self) -> u64 {
        self.store.data().call.log.dropped_lines()
    }

    /// True after a trap: the instance should be replaced before the next message.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    fn call_inner(&mut self, payload: &[u8], len: u32) -> wasmtime::Result<i32> {
        if len > self.input_cap || self.input_ptr == 0 {
            let want = len.max(1024).next_power_of_two();
            let ptr = self.alloc.call(&mut self.store, want as i32)? as u32;
            if ptr == 0 {
                return Err(wasmtime::Error::msg(format!(
                    "sluice_alloc could not allocate {want} bytes"
                )));
            }
            self.input_ptr = ptr;
            self.input_cap = want;
        }
        let start = self.input_ptr as usize;
        let Some(dst) = self
            .memory
            .data_mut(&mut self.store)
            .get_mut(start..start + payload.len())
        else {
            self.store.data_mut().call.bad_pointer = true;
            return Err(wasmtime::Error::msg(
                "sluice_alloc returned a buffer outside memory",
            ));
        };
        dst.copy_from_slice(payload);
        self.on_message
            .call(&mut self.store, (self.input_ptr as i32, len as i32))
    }
}

fn classify(err: wasmtime::Error, call: &CallState, memory_exceeded: bool) -> RuleFailure {
    let message = format!("{err:#}");
    let kind = if call.bad_pointer {
        FailureKind::BadPointer
    } else if memory_exceeded {
        FailureKind::OutOfMemory
    } else if call.out_of_fuel {
        FailureKind::Timeout
    } else {
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) | Some(Trap::OutOfFuel) => FailureKind::Timeout,
            Some(Trap::StackOverflow) => FailureKind::StackOverflow,
            _ => FailureKind::Trap,
        }
    };
    let message = match kind {
        FailureKind::Timeout => "the call exceeded its CPU bound".to_string(),
        FailureKind::OutOfMemory => "the instance reached its memory cap".to_string(),
        FailureKind::StackOverflow => "the guest's stack overflowed".to_string(),
        _ => message,
    };
    RuleFailure { kind, message }
}

/// Caps what one instance holds — its linear memory and its table together — and keeps the
/// sandbox-wide [`SandboxUsage`] current. The instance has one memory and one table at most
/// (refused at load, and enforced here by [`ResourceLimiter::memories`] and
/// [`ResourceLimiter::tables`]), so the `current` size wasmtime passes on each growth is that
/// one's true size: it corrects the record after a growth this limiter allowed but wasmtime then
/// refused (past the module's declared maximum).
struct InstanceLimits {
    max_bytes: usize,
    memory_bytes: usize,
    table_bytes: usize,
    /// A growth was refused by the cap (the failure is then `out_of_memory`).
    exceeded: bool,
    usage: Arc<SandboxUsage>,
}

impl InstanceLimits {
    fn new(max_bytes: usize, usage: Arc<SandboxUsage>) -> InstanceLimits {
        usage.instances.fetch_add(1, Ordering::Relaxed);
        InstanceLimits {
            max_bytes,
            memory_bytes: 0,
            table_bytes: 0,
            exceeded: false,
            usage,
        }
    }

    /// Sets one of the two records to `bytes`, and the sandbox-wide total with it.
    fn record(usage: &SandboxUsage, slot: &mut usize, bytes: usize) {
        let (old, new) = (*slot as u64, bytes as u64);
        if new >= old {
            usage.memory_bytes.fetch_add(new - old, Ordering::Relaxed);
        } else {
            usage.memory_bytes.fetch_sub(old - new, Ordering::Relaxed);
        }
        *slot = bytes;
    }

    /// Allows a growth to `desired` bytes when the other record plus it fits the cap.
    fn grow(&mut self, table: bool, current: usize, desired: usize) -> bool {
        let (slot, other) = if table {
            (&mut self.table_bytes, self.memory_bytes)
        } else {
            (&mut self.memory_bytes, self.table_bytes)
        };
        Self::record(&self.usage, slot, current);
        if other.saturating_add(desired) > self.max_bytes {
            self.exceeded = true;
            return false;
        }
        Self::record(&self.usage, slot, desired);
        true
    }
}

impl Drop for InstanceLimits {
    fn drop(&mut self) {
        let held = (self.memory_bytes + self.table_bytes) as u64;
        self.usage.memory_bytes.fetch_sub(held, Ordering::Relaxed);
        self.usage.instances.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ResourceLimiter for InstanceLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(false, current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(
            true,
            current.saturating_mul(TABLE_ELEMENT_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_BYTES),
        ))
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        abi::MAX_MEMORIES as usize
    }

    fn tables(&self) -> usize {
        abi::MAX_TABLES as usize
    }
}

/// What the imports see: the binding, the environment and the current call.
struct HostState {
    limits: InstanceLimits,
    log_limits: LogLimits,
    binding: Binding,
    env: Environment,
    rng: rand::rngs::StdRng,
    memory: Option<Memory>,
    call: CallState,
}

/// The message of the current call and what the rule did with it. Reused between calls.
#[derive(Default)]
struct CallState {
    topic: String,
    message_id: String,
    product_key: String,
    device_name: String,
    raw_payload: Vec<u8>,
    timestamp_ms: i64,
    tags: Option<Arc<dyn TagSource>>,
    decisions: Vec<Decision>,
    failure: Option<String>,
    violation: Option<String>,
    bad_pointer: bool,
    /// An import found the call's fuel spent (the failure is then `timeout`).
    out_of_fuel: bool,
    /// What this message logged.
    log: MessageLog,
    /// The module said the payload was not what its data type promises (a SQL rule's
    /// `STATUS_INVALID_PAYLOAD`): the message is dropped, and counted apart from drops.
    invalid_payload: bool,
}

impl CallState {
    fn begin(&mut self, input: &RuleInput<'_>) {
        self.topic.clear();
        self.topic.push_str(input.topic);
        self.message_id.clear();
        self.message_id.push_str(input.message_id);
        self.product_key.clear();
        self.product_key.push_str(input.product_key);
        self.device_name.clear();
        self.device_name.push_str(input.device_name);
        self.raw_payload.clear();
        self.raw_payload.extend_from_slice(input.raw_payload);
        self.timestamp_ms = input.timestamp_ms;
        self.tags = input.tags.cloned();
        self.decisions.clear();
        self.failure = None;
        self.violation = None;
        self.bad_pointer = false;
        self.out_of_fuel = false;
        self.log.begin();
        self.invalid_payload = false;
    }

    fn tag(&self, key: &str) -> Option<String> {
        self.tags
            .as_ref()?
            .tag(&self.product_key, &self.device_name, key)
    }
}

type Host<'a> = Caller<'a, HostState>;

/// Takes `fuel` from the call's budget for work an import is about to do, or ends the call as a
/// timeout when the budget cannot pay for it: the work is never done on credit, so a loop of
/// host calls stops where a loop of instructions of the same cost would.
fn charge(caller: &mut Host<'_>, fuel: u64) -> wasmtime::Result<()> {
    let left = caller.get_fuel()?;
    match left.checked_sub(fuel) {
        Some(rest) => caller.set_fuel(rest),
        None => {
            caller.set_fuel(0)?;
            caller.data_mut().call.out_of_fuel = true;
            Err(Trap::OutOfFuel.into())
        }
    }
}

/// The fuel of `bytes` bytes of host work.
fn byte_fuel(bytes: usize) -> u64 {
    (bytes as u64).saturating_mul(HOST_FUEL_PER_BYTE)
}

/// The guest's memory: known once instantiation is done, so an import that touches memory from
/// the module's start function fails the start instead of reaching into nothing.
fn guest_memory(caller: &Host<'_>) -> wasmtime::Result<Memory> {
    caller.data().memory.ok_or_else(|| {
        wasmtime::Error::msg(
            "an import that reads or writes guest memory was called before instantiation \
             finished (from a start function); call it from sluice_init or sluice_on_message",
        )
    })
}

/// Checks that `ptr..ptr+len` lies in the guest's memory, or marks the call as a bad pointer.
fn checked_range(
    caller: &mut Host<'_>,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<std::ops::Range<usize>> {
    let size = guest_memory(caller)?.data_size(&*caller);
    match guest_range(ptr, len) {
        Some(r) if r.end <= size => Ok(r),
        _ => bad_pointer(caller, ptr, len),
    }
}

/// Copies guest bytes `ptr..ptr+len` (paying for them), or marks the call as a bad pointer.
fn read_guest(caller: &mut Host<'_>, ptr: i32, len: i32) -> wasmtime::Result<Vec<u8>> {
    let range = checked_range(caller, ptr, len)?;
    charge(caller, byte_fuel(range.len()))?;
    Ok(guest_memory(caller)?.data(&*caller)[range].to_vec())
}

fn read_guest_str(caller: &mut Host<'_>, ptr: i32, len: i32) -> wasmtime::Result<Option<String>> {
    Ok(String::from_utf8(read_guest(caller, ptr, len)?).ok())
}

/// Copies `value` out to the guest's `(buf, cap)` (paying for the bytes copied) and returns its
/// full length.
fn copy_out(caller: &mut Host<'_>, value: &[u8], ptr: i32, cap: i32) -> wasmtime::Result<i32> {
    let n = value.len().min(cap.max(0) as usize);
    let range = checked_range(caller, ptr, n as i32)?;
    charge(caller, byte_fuel(n))?;
    guest_memory(caller)?.data_mut(&mut *caller)[range].copy_from_slice(&value[..n]);
    Ok(value.len() as i32)
}

/// Copies one of the message's strings out to the guest (the `msg_*` imports).
fn copy_out_field<V: AsRef<[u8]> + Default>(
    caller: &mut Host<'_>,
    field: fn(&mut CallState) -> &mut V,
    ptr: i32,
    cap: i32,
) -> wasmtime::Result<i32> {
    charge(caller, HOST_CALL_FUEL)?;
    let value = std::mem::take(field(&mut caller.data_mut().call));
    let r = copy_out(caller, value.as_ref(), ptr, cap);
    *field(&mut caller.data_mut().call) = value;
    r
}

fn guest_range(ptr: i32, len: i32) -> Option<std::ops::Range<usize>> {
    if ptr < 0 || len < 0 {
        return None;
    }
    let start = ptr as usize;
    Some(start..start.checked_add(len as usize)?)
}

fn bad_pointer<T>(caller: &mut Host<'_>, ptr: i32, len: i32) -> wasmtime::Result<T> {
    caller.data_mut().call.bad_pointer = true;
    Err(wasmtime::Error::msg(format!(
        "pointer range {ptr}+{len} is outside the guest's memory"
    )))
}

/// Records a decision after the limits every decision obeys.
fn push_decision(caller: &mut Host<'_>, decision: Decision) -> i32 {
    let call = &mut caller.data_mut().call;
    if decision.payload.len() > abi::MAX_DECISION_PAYLOAD_BYTES {
        return violate(
            call,
            Status::TooLarge,
            format!(
                "a decision payload of {} bytes exceeds the limit of {} bytes",
                decision.payload.len(),
                abi::MAX_DECISION_PAYLOAD_BYTES
            ),
        );
    }
    if call.decisions.len() >= abi::MAX_DECISIONS_PER_MESSAGE {
        return violate(
            call,
            Status::TooManyDecisions,
            format!(
                "more than {} decisions for one message",
                abi::MAX_DECISIONS_PER_MESSAGE
            ),
        );
    }
    call.decisions.push(decision);
    Status::Ok.code()
}

fn violate(call: &mut CallState, status: Status, why: String) -> i32 {
    call.violation.get_or_insert(why);
    status.code()
}

fn emit_to_action(caller: &mut Host<'_>, action: Action, payload: Vec<u8>) -> i32 {
    let target = match action {
        Action::Forward { topic } => Target::Forward(topic),
        Action::Republish { topic, qos } => Target::Republish { topic, qos },
    };
    push_decision(caller, Decision { target, payload })
}

/// Every import first pays [`HOST_CALL_FUEL`], then [`HOST_FUEL_PER_BYTE`] for each byte it
/// moves or makes, before doing the work (see [`charge`]).
fn define_imports(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let m = abi::IMPORT_MODULE;
    linker.func_wrap(
        m,
        imports::MSG_TOPIC,
        |mut c: Host<'_>, p: i32, cap: i32| copy_out_field(&mut c, |s| &mut s.topic, p, cap),
    )?;
    linker.func_wrap(m, imports::MSG_ID, |mut c: Host<'_>, p: i32, cap: i32| {
        copy_out_field(&mut c, |s| &mut s.message_id, p, cap)
    })?;
    linker.func_wrap(
        m,
        imports::MSG_PRODUCT_KEY,
        |mut c: Host<'_>, p: i32, cap: i32| copy_out_field(&mut c, |s| &mut s.product_key, p, cap),
    )?;
    linker.func_wrap(
        m,
        imports::MSG_DEVICE_NAME,
        |mut c: Host<'_>, p: i32, cap: i32| copy_out_field(&mut c, |s| &mut s.device_name, p, cap),
    )?;
    linker.func_wrap(m, imports::MSG_TIMESTAMP_MS, |mut c: Host<'_>| {
        charge(&mut c, HOST_CALL_FUEL)?;
        Ok(c.data().call.timestamp_ms)
    })?;
    linker.func_wrap(
        m,
        imports::MSG_RAW_PAYLOAD,
        |mut c: Host<'_>, p: i32, cap: i32| copy_out_field(&mut c, |s| &mut s.raw_payload, p, cap),
    )?;
    linker.func_wrap(m, imports::NOW_MS, |mut c: Host<'_>| {
        charge(&mut c, HOST_CALL_FUEL)?;
        Ok(c.data()
            .env
            .fixed_now_ms
            .unwrap_or_else(|| crate::ids::now_ms() as i64))
    })?;
    linker.func_wrap(
        m,
        imports::FORMAT_TIME,
        |mut c: Host<'_>, ms: i64, utc: i32, pp: i32, pl: i32, bp: i32, bc: i32| {
            charge(&mut c, HOST_CALL_FUEL)?;
            let Some(pattern) = read_guest_str(&mut c, pp, pl)? else {
                return Ok(Status::BadArgument.code());
            };
            let offset = if utc == 1 {
                0
            } else {
                c.data().env.utc_offset_seconds
            };
            match time_format::format(ms, offset, &pattern) {
                Ok(text) => copy_out(&mut c, text.as_bytes(), bp, bc),
                Err(_) => Ok(Status::BadArgument.code()),
            }
        },
    )?;
    linker.func_wrap(
        m,
        imports::RANDOM_FILL,
        |mut c: Host<'_>, p: i32, len: i32| {
            charge(&mut c, HOST_CALL_FUEL)?;
            let range = checked_range(&mut c, p, len)?;
            charge(
                &mut c,
                (range.len() as u64).saturating_mul(RANDOM_FUEL_PER_BYTE),
            )?;
            // Straight into guest memory: no host buffer the size of the request.
            let (memory, state) = guest_memory(&c)?.data_and_store_mut(&mut c);
            state.rng.fill_bytes(&mut memory[range]);
            Ok(Status::Ok.code())
        },
    )?;
    linker.func_wrap(
        m,
        imports::DEVICE_TAG,
        |mut c: Host<'_>, kp: i32, kl: i32, bp: i32, bc: i32| {
            charge(&mut c, HOST_CALL_FUEL)?;
            let Some(key) = read_guest_str(&mut c, kp, kl)? else {
                return Ok(Status::BadArgument.code());
            };
            match c.data().call.tag(&key) {
                Some(v) => copy_out(&mut c, v.as_bytes(), bp, bc),
                None => Ok(Status::NotFound.code()),
            }
        },
    )?;
    linker.func_wrap(m, imports::ACTION_COUNT, |mut c: Host<'_>| {
        charge(&mut c, HOST_CALL_FUEL)?;
        Ok(c.data().binding.actions.len() as i32)
    })?;
    linker.func_wrap(
        m,
        imports::EMIT_OUTPUT,
        |mut c: Host<'_>, pp: i32, pl: i32| {
            charge(&mut c, HOST_CALL_FUEL)?;
            let mut payload = read_guest(&mut c, pp, pl)?;
            let n = c.data().binding.actions.len();
            if n == 0 {
                return Ok(push_decision(
                    &mut c,
                    Decision {
                        target: Target::Output,
                        payload,
                    },
                ));
            }
            // One action at a time (not a clone of the whole list per message); the last one
            // takes the payload itself, every other one pays for its copy.
            for k in 0..n {
                let action = c.data().binding.actions[k].clone();
                let bytes = if k + 1 == n {
                    std::mem::take(&mut payload)
                } else {
                    charge(&mut c, byte_fuel(payload.len()))?;
                    payload.clone()
                };
                let status = emit_to_action(&mut c, action, bytes);
                if status != Status::Ok.code() {
                    return Ok(status);
                }
            }
            Ok(Status::Ok.code())
        },
    )?;
    linker.func_wrap(
        m,
        imports::EMIT_ACTION,
        |mut c: Host<'_>, index: i32, pp: i32, pl: i32| {
            charge(&mut c, HOST_CALL_FUEL)?;
            let payload = read_guest(&mut c, pp, pl)?;
            let action = usize::try_from(index)
                .ok()
                .and_then(|i| c.data().binding.actions.get(i).cloned());
            match action {
                Some(action) => Ok(emit_to_action(&mut c, action, payload)),
                None => {
                    let n = c.data().binding.actions.len();
                    Ok(violate(
                        &mut c.data_mut().call,
                        Status::NoSuchAction,
                        format!("emit_action({index}) but the rule has {n} action(s)"),
                    ))
                }
            }
        },
    )?;
    linker.func_wrap(
        m,
        imports::EMIT_FORWARD,
        |mut c: Host<'_>, tp: i32, tl: i32, pp: i32, pl: i32| {
            charge(&mut c, HOST_CALL_FUEL)?;
            let Some(topic) = read_guest_str(&mut c, tp, tl)? else {
                return Ok(violate(
                    &mut c.data_mut().call,
                    Status::BadArgument,
                    "emit_forward with a topic name that is not UTF-8".into(),
                ));
            };
            let payload = read_guest(&mut c, pp, pl)?;
            if let Err(why) = c.data().binding.grant.check_forward(&topic) {
                return Ok(violate(&mut c.data_mut().call, Status::NotGranted, why));
            }
            Ok(push_decision(
                &mut c,
                Decision {
                    target: Target::Forward(topic),
                    payload,
                },
            ))
        },
    )?;
    linker.func_wrap(
        m,
        imports::EMIT_REPUBLISH,
        |mut c: Host<'_>, tp: i32, tl: i32, pp: i32, pl: i32, qos: i32| {
            charge(&mut c, HOST_CALL_FUEL)?;
            let Some(topic) = read_guest_str(&mut c, tp, tl)? else {
                return Ok(violate(
                    &mut c.data_mut().call,
                    Status::BadArgument,
                    "emit_republish with a topic that is not UTF-8".into(),
                ));
            };
            let payload = read_guest(&mut c, pp, pl)?;
            if !(0..=1).contains(&qos) {
                return Ok(violate(
                    &mut c.data_mut().call,
                    Status::BadArgument,
                    format!("emit_republish with qos {qos}; expected 0 or 1"),
                ));
            }
            // A wildcard would match a grant filter level for level (`+` against `+`) and
            // reach every subscriber of the filter it spells.
            if let Err(e) = crate::topic::validate_topic(&topic) {
                return Ok(violate(
                    &mut c.data_mut().call,
                    Status::BadArgument,
                    format!("emit_republish to `{}`: {e}", topic.escape_debug()),
                ));
            }
            let binding = &c.data().binding;
            if let Err(why) = binding.grant.check_republish(&topic, &binding.from_filter) {
                return Ok(violate(&mut c.data_mut().call, Status::NotGranted, why));
            }
            Ok(push_decision(
                &mut c,
                Decision {
                    target: Target::Republish {
                        topic,
                        qos: qos as u8,
                    },
                    payload,
                },
            ))
        },
    )?;
    linker.func_wrap(m, imports::FAIL, |mut c: Host<'_>, p: i32, l: i32| {
        charge(&mut c, HOST_CALL_FUEL)?;
        let text = read_guest(&mut c, p, l)?;
        c.data_mut().call.failure = Some(String::from_utf8_lossy(&text).into_owned());
        Ok(Status::Ok.code())
    })?;
    linker.func_wrap(
        m,
        imports::LOG,
        |mut c: Host<'_>, level: i32, p: i32, l: i32| {
            charge(&mut c, HOST_CALL_FUEL)?;
            let range = checked_range(&mut c, p, l)?;
            log_line(&mut c, level, range)?;
            Ok(Status::Ok.code())
        },
    )?;
    Ok(())
}

/// Writes one `log` line within the rule log caps ([`super::rule_log`]): a level the server
/// does not write costs nothing more, a line past a cap is dropped and counted, and only the
/// bytes written are read and paid for.
fn log_line(c: &mut Host<'_>, level: i32, range: std::ops::Range<usize>) -> wasmtime::Result<()> {
    use tracing::Level;
    let level = match level {
        0 => Level::ERROR,
        1 => Level::WARN,
        2 => Level::INFO,
        _ => Level::DEBUG,
    };
    let enabled = match level {
        Level::ERROR => tracing::enabled!(target: "sluice::rule", Level::ERROR),
        Level::WARN => tracing::enabled!(target: "sluice::rule", Level::WARN),
        Level::INFO => tracing::enabled!(target: "sluice::rule", Level::INFO),
        _ => tracing::enabled!(target: "sluice::rule", Level::DEBUG),
    };
    if !enabled {
        return Ok(());
    }
    let state = c.data_mut();
    let len = range.len();
    let n = state
        .call
        .log
        .admit(len, &state.log_limits, &state.binding.log);
    if n == 0 && len > 0 {
        return Ok(());
    }
    charge(c, byte_fuel(n))?;
    let memory = guest_memory(c)?;
    let (data, state) = memory.data_and_store_mut(&mut *c);
    let text = rule_log::line_text(&data[range.start..range.start + n], len - n);
    let rule = state.binding.log.name();
    let topic = &state.call.topic;
    match level {
        Level::ERROR => tracing::error!(target: "sluice::rule", %rule, %topic, "{text}"),
        Level::WARN => tracing::warn!(target: "sluice::rule", %rule, %topic, "{text}"),
        Level::INFO => tracing::info!(target: "sluice::rule", %rule, %topic, "{text}"),
        _ => tracing::debug!(target: "sluice::rule", %rule, %topic, "{text}"),
    }
    Ok(())
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    #[test]
    fn the_compiled_cache_reuses_equal_bytes_and_evicts_the_least_recently_used() {
        let engine = Engine::default();
        let wat = |n: usize| format!("(module (func (export \"f{n}\")))").into_bytes();
        let mut cache = CompiledCache::default();
        for n in 0..COMPILED_CACHE_ENTRIES {
            let bytes = wat(n);
            let module = Module::new(&engine, &bytes).unwrap();
            cache.put(CompiledCache::key(&bytes), &bytes, module);
        }
        // Touch module 0 so module 1 is now the least recently used.
        let zero = wat(0);
        assert!(cache.get(CompiledCache::key(&zero), &zero).is_some());
        let extra = wat(999);
        cache.put(
            CompiledCache::key(&extra),
            &extra,
            Module::new(&engine, &extra).unwrap(),
        );
        assert_eq!(cache.entries.len(), COMPILED_CACHE_ENTRIES);
        let one = wat(1);
        assert!(
            cache.get(CompiledCache::key(&one), &one).is_none(),
            "LRU entry evicted"
        );
        assert!(cache.get(CompiledCache::key(&zero), &zero).is_some());
        // Same hash, different bytes never match.
        assert!(cache.get(CompiledCache::key(&zero), &one).is_none());
    }

    #[test]
    fn loading_the_same_module_twice_gives_the_same_checks() {
        let rt = RuleRuntime::new(SandboxConfig::default()).unwrap();
        let missing = b"(module (memory (export \"memory\") 1))";
        for _ in 0..2 {
            assert!(matches!(rt.load(missing), Err(LoadError::MissingExport(_))));
        }
    }
}
