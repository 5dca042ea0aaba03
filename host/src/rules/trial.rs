//! One rule run on one sample message, outside the pipeline: what `sluice rule eval` prints and
//! what the console's live test panel shows (`POST /v1/rules/{name}/test`). Both go through this
//! one function, so the panel shows exactly what the CLI would, and both use the same SQL
//! compiler, sandbox and ABI as `serve`.

use std::sync::Arc;

use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;

use super::rule_log::RuleLog;
use super::runtime::{Binding, Environment, LoadError};
use super::spec::DataType;
use super::{Action, Grant, Outcome, RuleInput, RuleRuntime, Target};

/// The rule under test.
#[derive(Debug, Clone)]
pub enum TrialSource {
    /// Rule SQL text (compiled here, so compile errors come back with line and column).
    Sql(String),
    /// A Wasm module (ABI v1).
    Wasm(Vec<u8>),
}

/// Everything one trial run needs; the clock, randomness and message id are fixed so a run is
/// repeatable.
#[derive(Debug, Clone)]
pub struct Trial {
    /// The rule.
    pub source: TrialSource,
    /// `json` or `binary` payloads.
    pub data_type: DataType,
    /// The MQTT topic the sample message arrived on.
    pub topic: String,
    /// A Wasm rule's topic filter (`--from`); a SQL rule's comes from its FROM clause. `None`
    /// runs a Wasm rule on any topic.
    pub from: Option<String>,
    /// The sample payload.
    pub payload: Vec<u8>,
    /// The clock, ms since the epoch.
    pub timestamp_ms: i64,
    /// The message id the rule sees.
    pub message_id: String,
    /// Seed for `rand()` and `newuuid()`.
    pub seed: u64,
    /// The rule's timezone offset, seconds east of UTC.
    pub utc_offset_seconds: i32,
    /// The rule's actions (none: decisions go to "output").
    pub actions: Vec<Action>,
    /// What the rule may write to.
    pub grant: Grant,
}

/// One decision, shaped as `rule eval` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrialDecision {
    /// `forward` or `republish`.
    pub kind: &'static str,
    /// The topic (sluice topic or MQTT topic; "output" for a rule without actions).
    pub target: String,
    /// The payload as JSON text: the rule's JSON verbatim (its key order is the SELECT order),
    /// or a JSON string (base64 for bytes of a binary rule).
    pub payload_json: String,
}

/// What the rule did with the sample message.
#[derive(Debug, Clone, PartialEq)]
pub enum TrialOutcome {
    /// The decisions, in order.
    Emitted(Vec<TrialDecision>),
    /// The rule forwarded nothing (WHERE was false, or it dropped the message).
    Dropped,
    /// The sample's topic does not match the rule's filter: the running rule would never see
    /// this message, so the rule is not run and there are no decisions to show.
    TopicNotMatched {
        /// The rule's topic filter.
        filter: String,
    },
    /// The rule failed the message (trap, timeout, malformed decision).
    Failed {
        /// The failure kind's stable name.
        kind: &'static str,
        /// What happened.
        message: String,
    },
}

/// Why the rule could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum TrialError {
    /// The SQL does not compile; carries line and column for the editor.
    #[error(transparent)]
    Sql(#[from] super::sql::SqlError),
    /// The module does not load or link (not a rule module, foreign imports, ...).
    #[error("module {0}")]
    Module(#[source] LoadError),
}

/// Compiles (for SQL), loads and runs the rule on the sample message.
pub fn run(runtime: &RuleRuntime, trial: &Trial) -> Result<TrialOutcome, TrialError> {
    let (wasm, from_filter, raw_output) = match &trial.source {
        TrialSource::Sql(sql) => {
            let opts = super::sql::CompileOptions {
                data_type: trial.data_type,
            };
            let compiled = super::sql::compile(sql, &opts)?;
            (compiled.wasm, compiled.from_filter, compiled.raw_output)
        }
        TrialSource::Wasm(bytes) => (bytes.clone(), trial.from.clone().unwrap_or_default(), false),
    };
    if !from_filter.is_empty() && !crate::topic::topic_matches(&from_filter, &trial.topic) {
        return Ok(TrialOutcome::TopicNotMatched {
            filter: from_filter,
        });
    }
    let module = runtime.load(&wasm).map_err(TrialError::Module)?;
    let mut instance = runtime
        .instantiate(
            &module,
            Binding {
                actions: trial.actions.clone(),
                grant: trial.grant.clone(),
                from_filter,
                log: Arc::new(RuleLog::new("(trial)")),
            },
            Environment {
                fixed_now_ms: Some(trial.timestamp_ms),
                seed: Some(trial.seed),
                utc_offset_seconds: trial.utc_offset_seconds,
            },
        )
        .map_err(TrialError::Module)?;
    let (pk, dn) = crate::topic::device_from_topic(&trial.topic);
    let view = match trial.data_type {
        DataType::Json => {
            super::view::platform_view(&trial.topic, &trial.payload, pk, dn, trial.timestamp_ms)
        }
        DataType::Binary => None,
    };
    let input = RuleInput {
        topic: &trial.topic,
        payload: view.as_deref().unwrap_or(&trial.payload),
        raw_payload: &trial.payload,
        message_id: &trial.message_id,
        product_key: pk,
        device_name: dn,
        timestamp_ms: trial.timestamp_ms,
        tags: None::<&Arc<dyn super::runtime::TagSource>>,
    };
    Ok(match instance.call(&input) {
        // A WHERE that is false emits nothing: for the person testing, that is a drop.
        Ok(Outcome::Emitted(decisions)) if decisions.is_empty() => TrialOutcome::Dropped,
        Ok(Outcome::Emitted(decisions)) => TrialOutcome::Emitted(
            decisions
                .into_iter()
                .map(|d| {
                    let (kind, target) = match d.target {
                        Target::Forward(t) => ("forward", t),
                        Target::Republish { topic, .. } => ("republish", topic),
                        Target::Output => ("forward", "output".to_string()),
                    };
                    TrialDecision {
                        kind,
                        target,
                        payload_json: payload_json(&d.payload, raw_output, trial.data_type),
                    }
                })
                .collect(),
        ),
        Ok(Outcome::Dropped) => TrialOutcome::Dropped,
        Err(failure) => TrialOutcome::Failed {
            kind: failure.kind.as_str(),
            message: failure.to_string(),
        },
    })
}

/// JSON output verbatim on one line; raw bytes (a binary rule's `SELECT *`, or anything that is
/// not JSON from a binary rule) as a base64 string; other text as a JSON string.
fn payload_json(payload: &[u8], raw_output: bool, data_type: DataType) -> String {
    let is_json = !(raw_output && data_type == DataType::Binary)
        && serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok();
    let text = if is_json && !payload.contains(&b'\n') {
        String::from_utf8_lossy(payload).into_owned()
    } else if is_json {
        serde_json::from_slice::<Value>(payload)
            .map(|v| v.to_string())
            .unwrap_or_default()
    } else if data_type == DataType::Binary {
        Value::String(base64::engine::general_purpose::STANDARD.encode(payload)).to_string()
    } else {
        Value::String(String::from_utf8_lossy(payload).into_owned()).to_string()
    };
    text.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(sql: &str, payload: &str) -> Trial {
        Trial {
            source: TrialSource::Sql(sql.into()),
            data_type: DataType::Json,
            topic: "/pk/dev/user/update".into(),
            from: None,
            payload: payload.as_bytes().to_vec(),
            timestamp_ms: 0,
            message_id: "0".repeat(32),
            seed: 0,
            utc_offset_seconds: 0,
            actions: vec![],
            grant: Grant::default(),
        }
    }

    /// The panel's three answers: decisions, a drop, and a compile error with its position.
    #[test]
    fn a_trial_emits_drops_or_points_at_the_sql_error() {
        let rt = RuleRuntime::new(crate::rules::SandboxConfig::default()).unwrap();
        let sql = "SELECT t FROM \"/pk/+/user/update\" WHERE t > 30";
        match run(&rt, &trial(sql, r#"{"t":40}"#)).unwrap() {
            TrialOutcome::Emitted(d) => {
                assert_eq!(d.len(), 1);
                assert_eq!(d[0].target, "output");
                assert_eq!(d[0].payload_json, r#"{"t":40}"#);
            }
            other => panic!("expected a decision, got {other:?}"),
        }
        assert_eq!(
            run(&rt, &trial(sql, r#"{"t":20}"#)).unwrap(),
            TrialOutcome::Dropped
        );
        // A sample the rule's FROM filter does not match: the rule is not run.
        let mut elsewhere = trial(sql, r#"{"t":40}"#);
        elsewhere.topic = "/pk/dev/user/other".into();
        assert_eq!(
            run(&rt, &elsewhere).unwrap(),
            TrialOutcome::TopicNotMatched {
                filter: "/pk/+/user/update".into()
            }
        );
        let err = run(&rt, &trial("SELECT t\nFRM x", "{}")).unwrap_err();
        match err {
            TrialError::Sql(e) => assert_eq!(e.position().map(|p| p.0), Some(2)),
            other => panic!("expected a SQL error, got {other}"),
        }
    }
}
