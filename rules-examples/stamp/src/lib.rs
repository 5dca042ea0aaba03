//! The "stamp" test rule, version 1: forwards `{"device","seq","version":1}` for each reading
//! `{"seq":N}`. With `sluice-rule-stamp-v2` (the same logic, version 2) it lets a test swap a
//! running rule under load and see, per output, which version handled the message.

mod logic;

use sluice_guest::{Message, Outcome};

/// The version this crate stamps on its output.
pub const VERSION: u32 = 1;

/// The rule.
#[sluice_guest::rule]
pub fn rule(msg: &Message) -> Outcome {
    logic::stamp(msg, VERSION)
}
