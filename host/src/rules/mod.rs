//! Rules: the stage between ingest and store. A message comes in, every running rule whose FROM
//! filter matches runs on it inside the Wasm sandbox, and decisions come out. This stage knows
//! neither ingest nor store.
//!
//! - [`spec`]: what a rule is (source, filter, actions, grant, state).
//! - [`actions`]: actions and grants, checked on every decision.
//! - [`runtime`]: the wasmtime sandbox and the ABI v1 host functions.
//! - [`engine`]: the running rule set, per-worker instances and per-rule counters.
//! - [`view`]: the thing-model platform view rules see.
//! - [`time_format`]: Java-style date patterns for `format_time`.

pub mod actions;
pub mod engine;
pub mod runtime;
pub mod spec;
pub mod time_format;
pub mod view;

#[cfg(test)]
mod sandbox_tests;

pub use actions::{Action, Grant};
pub use engine::{Evaluation, MessageContext, RuleCounters, RuleEngine, RuleError, RuleWorker};
pub use runtime::{
    Decision, FailureKind, Outcome, RuleFailure, RuleInput, RuleRuntime, SandboxConfig, Target,
};
pub use spec::{DataType, RuleSource, RuleSpec, RuleState};
