//! What a rule is, as stored and shown: its name, source, FROM filter, actions, error action,
//! grant, state and version. The running form lives in [`super::engine`].

use serde::{Deserialize, Serialize};

use super::actions::{Action, Grant};

/// How the rule reads payloads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    /// Payloads are JSON; invalid JSON never matches.
    #[default]
    Json,
    /// Payloads are raw bytes.
    Binary,
}

impl DataType {
    /// The spelling used by the CLI and API.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Json => "json",
            DataType::Binary => "binary",
        }
    }
}

/// Where the rule's logic comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RuleSource {
    /// An uploaded Wasm module (or one compiled elsewhere).
    Wasm {
        /// The module bytes.
        #[serde(with = "base64_bytes")]
        module: Vec<u8>,
    },
    /// Rule SQL, compiled to Wasm by sluice.
    Sql {
        /// The SQL text.
        sql: String,
    },
}

impl RuleSource {
    /// `wasm` or `sql`, for tables.
    pub fn kind(&self) -> &'static str {
        match self {
            RuleSource::Wasm { .. } => "wasm",
            RuleSource::Sql { .. } => "sql",
        }
    }
}

/// Whether the rule handles messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleState {
    /// Created or stopped: matches nothing.
    #[default]
    Stopped,
    /// Handles every message its FROM filter matches.
    Running,
}

impl RuleState {
    /// The spelling used by the CLI and API.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleState::Stopped => "stopped",
            RuleState::Running => "running",
        }
    }
}

/// A rule as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSpec {
    /// Unique name.
    pub name: String,
    /// SQL or Wasm.
    pub source: RuleSource,
    /// The MQTT topic filter the rule listens on.
    pub from_filter: String,
    /// JSON or binary payloads.
    #[serde(default)]
    pub data_type: DataType,
    /// Where output goes (at most 10).
    pub actions: Vec<Action>,
    /// Where failures go.
    #[serde(default)]
    pub error_action: Option<Action>,
    /// What the rule may write to.
    pub grant: Grant,
    /// Stopped or running.
    pub state: RuleState,
    /// Raised by every update.
    pub version: u64,
    /// The rule timezone offset in seconds (for `timestamp('pattern')`).
    #[serde(default)]
    pub utc_offset_seconds: i32,
}

/// The most actions a rule may have (rule-sql.md).
pub const MAX_ACTIONS: usize = 10;

mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}
