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
//!
//! - [`config`]: the limits and the fuel prices of host work.
//! - [`load`]: compiling and checking a module against ABI v1 ([`cache`] keeps compiled ones).
//! - [`instance`]: one live instance per rule per worker, called once per message.
//! - [`host_fns`]: the `sluice_v1` imports.
//! - [`memory`]: the memory cap and what live instances hold.
//! - [`input`] and [`outcome`]: what a call is given and what it produces.

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::{Config, Engine, FuncType, Linker, Store};

mod cache;
mod config;
mod host_fns;
mod input;
mod instance;
mod load;
mod memory;
mod outcome;

pub use config::{
    SandboxConfig, DEFAULT_CALL_TIMEOUT, DEFAULT_EPOCH_TICK, DEFAULT_MAX_MEMORY_BYTES, FUEL_PER_MS,
    HOST_CALL_FUEL, HOST_FUEL_PER_BYTE, RANDOM_FUEL_PER_BYTE, TABLE_ELEMENT_BYTES,
    WALL_CLOCK_BACKSTOP_FACTOR,
};
pub use input::{Binding, Environment, RuleInput, TagSource};
pub use instance::RuleInstance;
pub use load::{LoadError, RuleModule};
pub use memory::SandboxUsage;
pub use outcome::{Decision, FailureKind, Outcome, RuleFailure, Target};

use cache::CompiledCache;
use host_fns::{define_imports, import_types, HostState};

/// The per-process Wasm engine: compiles modules and bounds every call.
pub struct RuleRuntime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    /// The type of each import in `linker`, by name: what [`RuleRuntime::load`] checks a
    /// module's imports against.
    import_types: HashMap<String, FuncType>,
    config: SandboxConfig,
    compiled: std::sync::Mutex<CompiledCache>,
    usage: Arc<SandboxUsage>,
    _ticker: Arc<EpochTicker>,
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
        let import_types = import_types(&engine, &linker);
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
            import_types,
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

    /// Gives `store` a fresh CPU budget and backstop deadline before a guest call.
    fn arm(&self, store: &mut Store<HostState>) -> Result<(), LoadError> {
        store.set_epoch_deadline(self.deadline_ticks());
        store
            .set_fuel(self.fuel_budget())
            .map_err(LoadError::Budget)
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
