//! `sluice rule ...`: create (SQL or Wasm), list, show, start, stop, update, delete.

use std::path::PathBuf;

use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::client::{segment, Client};
use super::output;

/// `sluice rule VERB`
#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Create a rule (created stopped; start it with `rule start`).
    Create(RuleArgs),
    /// Replace a rule's source or settings; a running rule switches without losing messages.
    Update(RuleArgs),
    /// List rules with state and counters.
    List,
    /// Show a rule, its actions, grant and counters.
    Show {
        /// Rule name.
        name: String,
    },
    /// Start a rule.
    Start {
        /// Rule name.
        name: String,
    },
    /// Stop a rule.
    Stop {
        /// Rule name.
        name: String,
    },
    /// Delete a rule.
    Delete {
        /// Rule name.
        name: String,
    },
    /// Run a rule on one message offline (no server) and print its decisions as JSON lines.
    Eval(super::eval::EvalArgs),
}

/// The definition of a rule, for `create` and `update`.
#[derive(Debug, Args)]
pub struct RuleArgs {
    /// Rule name.
    pub name: String,
    /// A Wasm module speaking ABI v1.
    #[arg(long, conflicts_with = "sql")]
    pub wasm: Option<PathBuf>,
    /// A rule SQL file.
    #[arg(long)]
    pub sql: Option<PathBuf>,
    /// The MQTT topic filter of a Wasm rule (SQL rules take it from FROM).
    #[arg(long)]
    pub from: Option<String>,
    /// `json` (default) or `binary`.
    #[arg(long)]
    pub data_type: Option<String>,
    /// An action: `forward:TOPIC` or `republish:MQTT_TOPIC` (repeatable).
    #[arg(long = "action")]
    pub actions: Vec<String>,
    /// Where failed messages are reported: `forward:TOPIC` or `republish:MQTT_TOPIC`.
    #[arg(long)]
    pub error_action: Option<String>,
    /// What the rule may write to: `forward:a,b` or `republish:FILTER` (repeatable; default:
    /// its actions).
    #[arg(long = "grant")]
    pub grants: Vec<String>,
    /// Rule timezone for `timestamp('pattern')`: `UTC` or `+08:00`.
    #[arg(long)]
    pub timezone: Option<String>,
}

impl RuleArgs {
    fn body(&self) -> anyhow::Result<Value> {
        let mut body = json!({
            "from": self.from,
            "data_type": self.data_type,
            "actions": self.actions,
            "error_action": self.error_action,
            "timezone": self.timezone,
        });
        if !self.grants.is_empty() {
            body["grant"] = json!(self.grants);
        }
        match (&self.wasm, &self.sql) {
            (Some(path), None) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                body["module_base64"] =
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes));
            }
            (None, Some(path)) => {
                let sql = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                body["sql"] = json!(sql);
            }
            _ => anyhow::bail!("give the rule's logic with --wasm FILE or --sql FILE"),
        }
        Ok(body)
    }
}

/// Runs one `rule` command.
pub async fn run(cmd: RuleCommand, client: &Client, as_json: bool) -> anyhow::Result<()> {
    let path = |name: &str| format!("/v1/rules/{}", segment(name));
    match cmd {
        RuleCommand::Create(args) => {
            let v: Value = client.post(&path(&args.name), &args.body()?).await?;
            done(as_json, &v, || {
                println!(
                    "rule {} created (stopped); start it with `sluice rule start {}`",
                    args.name, args.name
                )
            });
        }
        RuleCommand::Update(args) => {
            let v: Value = client.put(&path(&args.name), &args.body()?).await?;
            done(as_json, &v, || {
                println!(
                    "rule {} updated to version {}",
                    args.name,
                    output::cell(&v["version"])
                )
            });
        }
        RuleCommand::List => {
            let v: Value = client.get("/v1/rules").await?;
            if as_json {
                output::json(&v);
            } else {
                let rows = v["rules"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|r| {
                        let c = &r["counters"];
                        let failed: u64 = c["failed"]
                            .as_object()
                            .map(|m| m.values().filter_map(Value::as_u64).sum())
                            .unwrap_or(0);
                        vec![
                            output::cell(&r["name"]),
                            output::cell(&r["kind"]),
                            output::cell(&r["state"]),
                            output::cell(&r["from"]),
                            output::cell(&c["messages_in"]),
                            output::cell(&c["outputs"]),
                            failed.to_string(),
                        ]
                    })
                    .collect();
                output::table(
                    &["rule", "kind", "state", "from", "in", "out", "failed"],
                    rows,
                    "no rules yet — create one with `sluice rule create NAME --sql FILE --action forward:TOPIC`",
                );
            }
        }
        RuleCommand::Show { name } => {
            let v: Value = client.get(&path(&name)).await?;
            if as_json {
                output::json(&v);
            } else {
                print_rule(&v);
            }
        }
        RuleCommand::Start { name } => {
            let v: Value = client
                .post(&format!("{}/start", path(&name)), &json!({}))
                .await?;
            done(as_json, &v, || println!("rule {name} running"));
        }
        RuleCommand::Stop { name } => {
            let v: Value = client
                .post(&format!("{}/stop", path(&name)), &json!({}))
                .await?;
            done(as_json, &v, || println!("rule {name} stopped"));
        }
        RuleCommand::Delete { name } => {
            let v: Value = client.delete(&path(&name)).await?;
            done(as_json, &v, || println!("rule {name} deleted"));
        }
        RuleCommand::Eval(args) => {
            let code = tokio::task::spawn_blocking(move || super::eval::run(args)).await??;
            if code != 0 {
                std::process::exit(code.into());
            }
        }
    }
    Ok(())
}

/// `rule show` for people: definition, grant and counters as aligned `key  value` lines.
fn print_rule(v: &Value) {
    let list = |v: &Value| output::list(v, ", ");
    let c = &v["counters"];
    let failed = c["failed"]
        .as_object()
        .filter(|m| !m.is_empty())
        .map(|m| {
            m.iter()
                .map(|(kind, n)| format!("{kind} {}", output::cell(n)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|| "0".into());
    let latency = &c["latency_ns"];
    let us = |v: &Value| {
        v.as_u64()
            .map_or("-".into(), |ns| format!("{:.1} µs", ns as f64 / 1000.0))
    };
    let mut pairs = vec![
        ("name", output::cell(&v["name"])),
        ("kind", output::cell(&v["kind"])),
        ("state", output::cell(&v["state"])),
        ("version", output::cell(&v["version"])),
        ("from", output::cell(&v["from"])),
        ("data_type", output::cell(&v["data_type"])),
        ("actions", list(&v["actions"])),
        ("error_action", output::cell(&v["error_action"])),
        ("grant forward", list(&v["grant"]["forward"])),
        ("grant republish", list(&v["grant"]["republish"])),
    ];
    if let Some(bytes) = v["module_bytes"].as_u64() {
        pairs.push(("module", format!("{bytes} bytes")));
    }
    if !v["load_error"].is_null() {
        pairs.push(("load_error", output::cell(&v["load_error"])));
    }
    pairs.extend([
        ("messages_in", output::cell(&c["messages_in"])),
        ("outputs", output::cell(&c["outputs"])),
        ("dropped", output::cell(&c["dropped"])),
        ("failed", failed),
        (
            "latency p50 / p99",
            format!("{} / {}", us(&latency["p50"]), us(&latency["p99"])),
        ),
        ("busy", format!("{} µs", output::cell(&c["busy_us"]))),
        ("fuel_used", output::cell(&c["fuel_used"])),
    ]);
    output::fields(&pairs);
    if let Some(sql) = v["sql"].as_str() {
        println!("\n{sql}");
    }
}

fn done(as_json: bool, v: &Value, human: impl FnOnce()) {
    if as_json {
        output::json(v);
    } else {
        human();
    }
}
