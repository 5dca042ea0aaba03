//! Rules: the stage between ingest and store. A message comes in, every running rule whose FROM
//! filter matches runs on it inside the Wasm sandbox, and decisions come out. This stage knows
//! neither ingest nor store.
//!
//! - [`spec`]: what a rule is (source, filter, actions, grant, state).
//! - [`actions`]: actions and grants, checked on every decision.
//! - [`runtime`]: the wasmtime sandbox and the ABI v1 host functions.
//! - [`rule_log`]: the caps on what a rule writes with the `log` import.
//! - [`engine`]: the running rule set, per-worker instances and per-rule counters.
//! - [`registry`] and [`catalog`]: the lifecycle (create, start, stop, update, delete) and
//!   where definitions are kept.
//! - [`view`]: the thing-model platform view rules see.
//! - [`sql`]: rule SQL compiled to a standalone Wasm module.
//! - [`time_format`]: Java-style date patterns for `format_time`.
//! - [`trial`]: one rule run on one sample message (`rule eval`, the console's test panel).

pub mod actions;
pub mod catalog;
pub mod engine;
pub mod registry;
pub mod rule_log;
pub mod runtime;
pub mod spec;
pub mod sql;
pub mod time_format;
pub mod trial;
pub mod view;

#[cfg(test)]
mod tests;

pub use actions::{Action, Grant};
pub use engine::{Evaluation, MessageContext, RuleCounters, RuleEngine, RuleError, RuleWorker};
pub use runtime::{
    Decision, FailureKind, Outcome, RuleFailure, RuleInput, RuleRuntime, SandboxConfig, Target,
};
pub use spec::{DataType, RuleSource, RuleSpec, RuleState};

/// A SQL rule compiled to a standalone Wasm module.
#[derive(Debug, Clone)]
pub struct CompiledSql {
    /// The module (ABI v1).
    pub wasm: Vec<u8>,
    /// The FROM filter.
    pub from_filter: String,
    /// `SELECT *` alone: the output is the payload unchanged (raw bytes for binary rules).
    pub raw_output: bool,
}

/// Compiles rule SQL to Wasm; the error carries line and column.
pub fn compile_sql(sql_text: &str, data_type: DataType) -> Result<CompiledSql, sql::SqlError> {
    sql::compile(sql_text, &sql::CompileOptions { data_type }).map(|c| CompiledSql {
        raw_output: c.raw_output,
        wasm: c.wasm,
        from_filter: c.from_filter,
    })
}

/// The FROM filter of a SQL rule.
pub fn sql_from_filter(name: &str, sql: &str, data_type: DataType) -> Result<String, RuleError> {
    compile_sql(sql, data_type)
        .map(|c| c.from_filter)
        .map_err(|e| RuleError::Sql {
            name: name.to_string(),
            message: e.to_string(),
        })
}
