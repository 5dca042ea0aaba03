//! The sandbox's bounds: the configured limits of memory, CPU and log output, their defaults,
//! and the fuel each kind of host work costs.

use std::time::Duration;

use crate::rules::rule_log::LogLimits;

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
/// Fuel per millisecond of `call_timeout`: one unit is about one Wasm instruction, and a core
/// runs about half a million to a million of them a millisecond, so a runaway stops after
/// roughly the configured time of its own CPU. An honest rule uses a small fraction of the
/// budget (`benches/rules_wasm.rs` prints the overheat rule's fuel per message and how long a
/// runaway runs).
pub const FUEL_PER_MS: u64 = 500_000;
/// The wall-clock backstop is this many times `call_timeout`: far enough above the fuel budget
/// that only a guest fuel cannot see (none is known) or a stalled machine reaches it.
pub const WALL_CLOCK_BACKSTOP_FACTOR: u32 = 20;
/// Fuel every import call costs before it does anything: the host's own CPU for the cheapest
/// call (into the host and back, a clock read) at [`FUEL_PER_MS`], as an unoptimised build
/// spends it, so an optimised build stops a loop of calls early rather than late. A loop of
/// host calls thus stops about when a loop of instructions of the same CPU cost would (the
/// sandbox tests run `fixtures/host_call_loop.wat` against the budget).
pub const HOST_CALL_FUEL: u64 = 100;
/// Fuel an import costs per byte it copies in or out, formats or writes to the log, on top of
/// [`HOST_CALL_FUEL`]. Copies cost far less CPU than that (~0.1 ns a byte), but no honest rule
/// moves enough bytes for it to matter: a 1 MiB payload costs 2 % of the default budget.
pub const HOST_FUEL_PER_BYTE: u64 = 1;
/// Fuel `random_fill` costs per byte it generates: ChaCha12 (`StdRng`) spends about 10 ns of CPU
/// a byte, i.e. 5 fuel at [`FUEL_PER_MS`].
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
