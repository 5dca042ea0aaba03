//! `sluice rule eval`: runs a rule on one message offline, through the same sandbox and ABI as
//! `serve`, and prints each decision as one JSON object per line. The clock, randomness and
//! message id are fixed by flags, so `--sql` and its compiled `--wasm` give the same output.

use clap::Args;
use serde_json::{json, Value};
use std::path::PathBuf;

use crate::rules::spec::DataType;
use crate::rules::trial::{self, Trial, TrialError, TrialOutcome, TrialSource};
use crate::rules::{Action, Grant, RuleRuntime, SandboxConfig};

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
    /// The topic filter of a Wasm rule (as `rule create --from`): a --topic it does not match is
    /// reported instead of run. A SQL rule's filter is its FROM clause.
    #[arg(long, requires = "wasm")]
    pub from: Option<String>,
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

/// Exit code when the topic does not match the rule's filter (the rule was not run).
pub const EXIT_TOPIC_NOT_MATCHED: u8 = 3;

/// Runs `rule eval`; returns the process exit code.
pub fn run(args: EvalArgs) -> anyhow::Result<u8> {
    let data_type = match args.data_type.as_str() {
        "json" => DataType::Json,
        "binary" => DataType::Binary,
        other => anyhow::bail!("--data-type {other}: use json or binary"),
    };
    let source = match (&args.sql, &args.wasm) {
        (Some(path), _) => TrialSource::Sql(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
        ),
        (None, Some(path)) => TrialSource::Wasm(
            std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
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
    let trial = Trial {
        source,
        data_type,
        topic: args.topic.clone(),
        from: args.from.clone(),
        payload,
        timestamp_ms: now,
        message_id,
        seed: args.seed,
        utc_offset_seconds,
        actions,
        grant,
    };
    let outcome = trial::run(&runtime, &trial).map_err(|e| match (e, &args.sql) {
        (TrialError::Sql(e), Some(path)) => anyhow::anyhow!("{}: {e}", path.display()),
        (e, _) => anyhow::anyhow!("{e}"),
    })?;
    match outcome {
        TrialOutcome::Emitted(decisions) => {
            for d in decisions {
                println!(
                    "{{\"kind\":{},\"target\":{},\"payload\":{}}}",
                    Value::String(d.kind.into()),
                    Value::String(d.target),
                    d.payload_json
                );
            }
            Ok(0)
        }
        TrialOutcome::Dropped => Ok(0),
        TrialOutcome::TopicNotMatched { filter } => {
            eprintln!(
                "the topic {} does not match the rule's filter {filter}: a running rule would \
                 never see this message, so it was not run (no decisions); give a --topic the \
                 filter matches",
                args.topic
            );
            Ok(EXIT_TOPIC_NOT_MATCHED)
        }
        TrialOutcome::Failed { kind, message } => {
            println!(
                "{}",
                json!({"kind": "error", "target": null, "payload": {"error": message, "failure_kind": kind}})
            );
            Ok(EXIT_RULE_FAILED)
        }
    }
}
