//! What a rule is, as stored and shown: its name, source, FROM filter, actions, error action,
//! grant, state and version. The running form lives in [`super::engine`].

use serde::{Deserialize, Serialize};

use super::actions::{Action, Grant};

/// How the rule reads payloads; set where the rule is created (not in its SQL), and what the
/// SQL compiler compiles for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    /// Payloads are JSON objects (the default); anything else never matches.
    #[default]
    Json,
    /// Payloads are raw bytes: a SQL rule's `SELECT *` forwards them, `to_base64(*)` encodes
    /// them.
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

/// The most actions a rule may have (docs/rule-sql.md, "Limits").
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

/// A rule as people write it — the API body, the `[[rule]]` table, the CLI flags — before it
/// is checked and turned into a [`RuleSpec`]. One conversion for all three, so they agree.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDefinition {
    /// Rule SQL.
    pub sql: Option<String>,
    /// A Wasm module, base64 in JSON.
    #[serde(default, with = "opt_base64_bytes", rename = "module_base64")]
    pub module: Option<Vec<u8>>,
    /// FROM filter of a Wasm rule.
    pub from: Option<String>,
    /// `json` or `binary`.
    pub data_type: Option<String>,
    /// Actions in CLI spelling.
    #[serde(default)]
    pub actions: Vec<String>,
    /// Error action in CLI spelling.
    pub error_action: Option<String>,
    /// Grants in CLI spelling; `None` = the actions.
    pub grant: Option<Vec<String>>,
    /// `UTC` or `+08:00`.
    pub timezone: Option<String>,
}

impl RuleDefinition {
    /// Checks the definition's fields and builds the stored form (state: stopped, version 0).
    /// The module itself is checked later, by the engine.
    pub fn into_spec(self, name: &str) -> Result<RuleSpec, super::engine::RuleError> {
        let invalid = |field: &'static str, message: String| super::engine::RuleError::Invalid {
            name: name.to_string(),
            field,
            message,
        };
        let data_type = match self.data_type.as_deref() {
            None | Some("json") => DataType::Json,
            Some("binary") => DataType::Binary,
            Some(other) => {
                return Err(invalid(
                    "data_type",
                    format!("data type `{other}`: use json or binary"),
                ))
            }
        };
        let (source, from_filter) = match (self.sql, self.module) {
            (Some(sql), None) => {
                let from = super::sql_from_filter(name, &sql, data_type)?;
                if let Some(given) = self.from.filter(|f| *f != from) {
                    return Err(invalid(
                        "from",
                        format!("a SQL rule takes its filter from FROM (`{from}`), not `{given}`"),
                    ));
                }
                (RuleSource::Sql { sql }, from)
            }
            (None, Some(module)) => {
                let from = self.from.ok_or_else(|| {
                    invalid(
                        "from",
                        "a Wasm rule needs the topic filter it listens on (--from \"/pk/+/user/update\")"
                            .into(),
                    )
                })?;
                (RuleSource::Wasm { module }, from)
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "sql",
                    "give either SQL or a Wasm module, not both".into(),
                ))
            }
            (None, None) => {
                return Err(invalid(
                    "sql",
                    "missing: give the rule's SQL or a Wasm module".into(),
                ))
            }
        };
        let actions = self
            .actions
            .iter()
            .map(|a| Action::parse(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("actions", e.0))?;
        let error_action = self
            .error_action
            .as_deref()
            .map(Action::parse)
            .transpose()
            .map_err(|e| invalid("error_action", e.0))?;
        // An omitted grant is exactly the declared actions, the error action included; an
        // explicit one must cover them all, which the engine checks before anything is stored.
        let grant = match &self.grant {
            None => Grant::from_actions(actions.iter().chain(&error_action)),
            Some(specs) => {
                let mut grant = Grant::default();
                for spec in specs {
                    grant.add_spec(spec).map_err(|e| invalid("grant", e.0))?;
                }
                grant
            }
        };
        let utc_offset_seconds = match &self.timezone {
            None => 0,
            Some(tz) => {
                super::time_format::parse_offset(tz).map_err(|e| invalid("timezone", e.0))?
            }
        };
        Ok(RuleSpec {
            name: name.to_string(),
            source,
            from_filter,
            data_type,
            actions,
            error_action,
            grant,
            state: RuleState::Stopped,
            version: 0,
            utc_offset_seconds,
        })
    }
}

mod opt_base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}
