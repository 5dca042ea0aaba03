//! What an instance is given: its binding (actions, grant, FROM filter, log) and environment
//! (clock, randomness, timezone) when it is made, and one message per call.

use std::sync::Arc;

use crate::rules::actions::{Action, Grant};
use crate::rules::rule_log::RuleLog;

/// The message as a rule sees it. Borrowed: the host copies only what a call needs.
#[derive(Debug, Clone, Copy)]
pub struct RuleInput<'a> {
    /// The MQTT topic.
    pub topic: &'a str,
    /// The payload passed to the rule (the platform view on thing-model topics).
    pub payload: &'a [u8],
    /// The payload as published.
    pub raw_payload: &'a [u8],
    /// The message id.
    pub message_id: &'a str,
    /// The device's product key.
    pub product_key: &'a str,
    /// The device's name.
    pub device_name: &'a str,
    /// Ingest time, ms since the epoch.
    pub timestamp_ms: i64,
    /// The device's tags (`attribute()`, `device_tag`).
    pub tags: Option<&'a Arc<dyn TagSource>>,
}

/// Device tags, looked up per call (the device registry implements it).
pub trait TagSource: Send + Sync + std::fmt::Debug {
    /// The value of `key` for the device, if any.
    fn tag(&self, product_key: &str, device_name: &str, key: &str) -> Option<String>;
}

/// Where `now_ms` and randomness come from: the system, or fixed values for `rule eval` and tests.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// A fixed clock in ms; `None` = the system clock.
    pub fixed_now_ms: Option<i64>,
    /// A seed for `random_fill`; `None` = from the OS.
    pub seed: Option<u64>,
    /// The rule's timezone offset from UTC, in seconds (for `format_time`).
    pub utc_offset_seconds: i32,
}

/// How a rule is bound: its actions, grant and FROM filter — checked on every decision — and
/// its log, shared by its instances on every worker.
#[derive(Debug, Clone, Default)]
pub struct Binding {
    /// The rule's actions, in order (`emit_action` indexes them).
    pub actions: Vec<Action>,
    /// What the rule may write to.
    pub grant: Grant,
    /// The rule's FROM filter (a republish may never target it).
    pub from_filter: String,
    /// Where the rule's log lines go and the rate they share.
    pub log: Arc<RuleLog>,
}
