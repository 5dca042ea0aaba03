//! The "stamp" test rule, version 2: the same logic as `sluice-rule-stamp` with `"version":2`.

#[path = "../../stamp/src/logic.rs"]
mod logic;

use sluice_guest::{Message, Outcome};

/// The version this crate stamps on its output.
pub const VERSION: u32 = 2;

/// The rule.
#[sluice_guest::rule]
pub fn rule(msg: &Message) -> Outcome {
    logic::stamp(msg, VERSION)
}
