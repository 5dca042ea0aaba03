//! `sluice rule eval`: runs a rule on one message offline, through the same sandbox and ABI as
//! `serve`, and prints each decision as one JSON object per line. The clock, randomness and
//! message id are fixed by flags, so `--sql` and its compiled `--wasm` give the same output.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use clap::Args;
use serde_json::{json, Value};

use crate::rules::runtime::{Binding, Environment};
use crate::rules::spec::DataType;
use crate::rules::{Action, Grant, Outcome, RuleInput, RuleRuntime, SandboxConfig, Target};

/// Flags of `rule eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A rule SQL file.
    #[arg(long, conflicts_with = "wasm", required_unless_present = "wasm")]
    pub sql: Option<PathBuf>,
    /// A Wasm rule module.
    #[arg(long)]
    pub wasm: Option<PathBuf>,
    /// The MQTT topic the message arrived on.
    #[arg(long)]
    pub topic: String,
    /// The payload (JSON text, or any text for binary rules).
    #[arg(
        long,
        conflicts_with = "payload_file",
        required_unless_present = "payload_file"
    )]
    pub payload: Option<String>,
    /// Read the payload from a file (any bytes).
    #[arg(long)]
    pub payload_file: Option<PathBuf>,
    /// `json` (default) or `binary`.
    #[arg(long, default_value = "json")]
    pub data_type: String,
    /// The clock, ms since the epoch [default: now].
    #[arg(long)]
    pub timestamp: Option<i64>,
    /// The message id [default: 32 zeros].
    #[arg(long)]
    pub message_id: Option<String>,
    /// Seed for randomness (`rand()`, `newuuid()`) [default: 0].
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Rule timezone: `UTC` or `+08:00`.
    #[arg(long, default_value = "UTC")]
    pub timezone: String,
    /// Actions (`forward:TOPIC`, `republish:MQTT_TOPIC`); none = decisions go to "output".
    #[arg(long = "action")]
    pub actions: Vec<String>,
    /// Grants beyond the actions (`forward:a,b`, `republish:FILTER`).
    #[arg(long = "grant")]
    pub grants: Vec<String>,
}

/// Exit code when the rule failed the message.
pub const EXIT_RULE_FAILED: u8 = 2;

/// Runs `rule eval`; returns the process exit code.
pub fn run(args: EvalArgs) -> anyhow::Result<u8> {
    let data_type = match args.data_type.as_str() {
        "json" => DataType::Json,
        "binary" => DataType::Binary,
        other => anyhow::bail!("--data-type {other}: use json or binary"),
    };
    let (wasm, from_filter, raw_output) = match (&args.sql, &args.wasm) {
        (Some(path), _) => {
            let sql = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let compiled = crate::rules::compile_sql(&sql, data_type)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            (compiled.wasm, compiled.from_filter, compiled.raw_output)
        }
        (None, Some(path)) => (
            std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
            String::new(),
            false,
        ),
        (None, None) => anyhow::bail!("give the rule with --sql FILE or --wasm FILE"),
    };
    let payload = match (&args.payload, &args.payload_file) {
        (Some(text), _) => text.clone().into_bytes(),
        (None, Some(path)) => std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
        (None, None) => {
            anyhow::bail!("give the message with --payload TEXT or --payload-file FILE")
        }
    };
    let actions = args
        .actions
        .iter()
        .map(|a| Action::parse(a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--action: {e}"))?;
    let mut grant = Grant::from_actions(&actions);
    for g in &args.grants {
        grant
            .add_spec(g)
            .map_err(|e| anyhow::anyhow!("--grant: {e}"))?;
    }
    let utc_offset_seconds = crate::rules::time_format::parse_offset(&args.timezone)
        .map_err(|e| anyhow::anyhow!("--timezone: {e}"))?;
    let now = args
        .timestamp
        .unwrap_or_else(|| crate::ids::now_ms() as i64);
    let message_id = args.message_id.clone().unwrap_or_else(|| "0".repeat(32));

    let runtime = RuleRuntime::new(SandboxConfig::default())
        .map_err(|e| anyhow::anyhow!("cannot start the sandbox: {e:#}"))?;
    let module = runtime
        .load(&wasm)
        .map_err(|e| anyhow::anyhow!("module {e}"))?;
    let mut instance = runtime
        .instantiate(
            &module,
            Binding {
                actions,
                grant,
                from_filter,
            },
            Environment {
                fixed_now_ms: Some(now),
                seed: Some(args.seed),
                utc_offset_seconds,
            },
        )
        .map_err(|e| anyhow::anyhow!("module {e}"))?;
    let (pk, dn) = crate::pipeline::device_from_topic(&args.topic);
    let view = match data_type {
        DataType::Json => crate::rules::view::platform_view(&args.topic, &payload, pk, dn, now),
        DataType::Binary => None,
    };
    let input = RuleInput {
        topic: &args.topic,
        payload: view.as_deref().unwrap_or(&payload),
        raw_payload: &payload,
        message_id: &message_id,
        product_key: pk,
        device_name: dn,
        timestamp_ms: now,
        tags: None::<&Arc<dyn crate::rules::runtime::TagSource>>,
    };
    match instance.call(&input) {
        Ok(Outcome::Emitted(decisions)) => {
            for d in decisions {
                let (kind, target) = match d.target {
                    Target::Forward(t) => ("forward", Value::String(t)),
                    Target::Republish { topic, .. } => ("republish", Value::String(topic)),
                    Target::Output => ("forward", Value::String("output".into())),
                };
                // JSON output verbatim (its key order is the SELECT order); raw bytes (a binary
                // rule's `SELECT *`, or anything that is not JSON from a binary rule) as base64.
                let is_json = !(raw_output && data_type == DataType::Binary)
                    && serde_json::from_slice::<serde::de::IgnoredAny>(&d.payload).is_ok();
                let payload = if is_json && !d.payload.contains(&b'\n') {
                    String::from_utf8_lossy(&d.payload).into_owned()
                } else if is_json {
                    serde_json::from_slice::<Value>(&d.payload)
                        .map(|v| v.to_string())
                        .unwrap_or_default()
                } else if data_type == DataType::Binary {
                    Value::String(base64::engine::general_purpose::STANDARD.encode(&d.payload))
                        .to_string()
                } else {
                    Value::String(String::from_utf8_lossy(&d.payload).into_owned()).to_string()
                };
                println!(
                    "{{\"kind\":{},\"target\":{},\"payload\":{}}}",
                    Value::String(kind.into()),
                    target,
                    payload.trim()
                );
            }
            Ok(0)
        }
        Ok(Outcome::Dropped) => Ok(0),
        Err(failure) => {
            println!(
                "{}",
                json!({"kind": "error", "target": null, "payload": {"error": failure.to_string(), "failure_kind": failure.kind.as_str()}})
            );
            Ok(EXIT_RULE_FAILED)
        }
    }
}
