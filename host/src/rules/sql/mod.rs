//! The rule SQL compiler: rule SQL (docs/rule-sql.md) in, a standalone ABI v1 Wasm module out.
//!
//! Pipeline: [`parser`] (hand-written lexer and recursive descent with line/column on every
//! node, explicit nesting limit) -> [`lower`] (typed IR: functions resolved, argument counts and
//! literal types checked, aliases in WHERE, topic filter checked) -> `codegen` (one Wasm function
//! per rule appended to a re-encoded copy of the SQL runtime module, `host/sql-runtime`, built
//! for wasm32 by the build script and embedded here).
//!
//! The module exports `memory`, `sluice_abi_version`, `sluice_alloc` and `sluice_on_message`
//! and imports only from `sluice_v1`. A firing rule calls `emit_output` once and returns OK; a
//! false WHERE returns OK without output; a json rule whose payload is not a JSON object logs
//! [`INVALID_PAYLOAD_LOG`] at debug level and returns [`STATUS_INVALID_PAYLOAD`] without output
//! (the host counts it and otherwise treats it as OK); a runtime error calls `fail` and returns
//! FAILED.

pub mod codegen;
mod error;
pub mod lower;
pub mod parser;

#[cfg(test)]
mod tests;

pub use error::SqlError;

/// Tags and codes shared with the runtime crate (`host/sql-runtime/src/shared.rs`).
#[allow(dead_code)]
pub(crate) mod shared {
    include!("../../../sql-runtime/src/shared.rs");
}

pub use shared::{INVALID_PAYLOAD_LOG, STATUS_INVALID_PAYLOAD};

/// The SQL runtime module (`host/sql-runtime` built for wasm32 by the build script, path in `SLUICE_SQL_RUNTIME_WASM`).
pub(crate) static RUNTIME_WASM: &[u8] = include_bytes!(env!("SLUICE_SQL_RUNTIME_WASM"));

/// A rule's data type, set where the rule is created (not in the SQL): the stored one.
pub use super::spec::DataType;

/// Options of one compilation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompileOptions {
    /// The rule's data type.
    pub data_type: DataType,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// The standalone ABI v1 module.
    pub wasm: Vec<u8>,
    /// The FROM topic filter.
    pub from_filter: String,
    /// The output names in SELECT order (`*` for the payload's members, `thingPropertyFlatMap`
    /// for the flattened properties).
    pub select_names: Vec<String>,
    /// The rule's data type.
    pub data_type: DataType,
    /// True when the output is the payload unchanged (`SELECT *` alone): a binary rule's output
    /// is then raw bytes, not JSON.
    pub raw_output: bool,
}

/// Compiles rule SQL to a Wasm module.
pub fn compile(sql: &str, opts: &CompileOptions) -> Result<CompiledRule, SqlError> {
    let query = parser::parse(sql)?;
    let prog = lower::lower(&query, opts.data_type)?;
    let wasm = codegen::generate(&prog)?;
    Ok(CompiledRule {
        wasm,
        from_filter: prog.from.clone(),
        select_names: prog.names.clone(),
        data_type: opts.data_type,
        raw_output: prog.items == [lower::OutItem::Star],
    })
}
