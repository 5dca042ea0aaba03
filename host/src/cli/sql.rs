//! `sluice sql compile`: rule SQL to a standalone Wasm module, offline. The module loads like an
//! uploaded one (`rule create --wasm`, `rule eval --wasm`).

use std::path::PathBuf;

use clap::Subcommand;

use crate::rules::spec::DataType;

/// `sluice sql VERB`
#[derive(Debug, Subcommand)]
pub enum SqlCommand {
    /// Compile a rule SQL file to a Wasm module (ABI v1).
    Compile {
        /// The rule SQL file.
        sql: PathBuf,
        /// Where to write the module.
        #[arg(short, long)]
        output: PathBuf,
        /// `json` (default) or `binary`.
        #[arg(long, default_value = "json")]
        data_type: String,
    },
}

/// Runs one `sql` command.
pub fn run(cmd: SqlCommand, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        SqlCommand::Compile {
            sql,
            output,
            data_type,
        } => {
            let data_type = match data_type.as_str() {
                "json" => DataType::Json,
                "binary" => DataType::Binary,
                other => anyhow::bail!("--data-type {other}: use json or binary"),
            };
            let text = std::fs::read_to_string(&sql)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", sql.display()))?;
            let started = std::time::Instant::now();
            let compiled = crate::rules::compile_sql(&text, data_type)
                .map_err(|e| anyhow::anyhow!("{}: {e}", sql.display()))?;
            let took = started.elapsed();
            std::fs::write(&output, &compiled.wasm)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", output.display()))?;
            if as_json {
                super::output::json(&serde_json::json!({
                    "output": output.display().to_string(),
                    "bytes": compiled.wasm.len(),
                    "from": compiled.from_filter,
                    "compile_ms": took.as_secs_f64() * 1000.0,
                }));
            } else {
                println!(
                    "compiled {} -> {} ({} bytes, FROM \"{}\", {:.1} ms)",
                    sql.display(),
                    output.display(),
                    compiled.wasm.len(),
                    compiled.from_filter,
                    took.as_secs_f64() * 1000.0
                );
            }
            Ok(())
        }
    }
}
