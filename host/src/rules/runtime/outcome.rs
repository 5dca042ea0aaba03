//! What one call of a rule produces: decisions (where each payload goes), a deliberate drop, or
//! a failure classified by kind.

/// Why one message failed for one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// A trap: unreachable, integer overflow, bad memory access inside the guest, ...
    Trap,
    /// The CPU bound of the call was reached.
    Timeout,
    /// The memory cap was reached.
    OutOfMemory,
    /// The guest's stack overflowed.
    StackOverflow,
    /// An import was given a pointer range outside the guest's memory.
    BadPointer,
    /// A decision broke the rules: unknown action, outside the grant, too many, too large.
    MalformedDecision,
    /// `sluice_on_message` returned a value that is not a status.
    BadStatus,
    /// The rule itself failed the message (`fail`).
    RuleError,
}

impl FailureKind {
    /// Every kind, for counters and tables.
    pub const ALL: [FailureKind; 8] = [
        FailureKind::Trap,
        FailureKind::Timeout,
        FailureKind::OutOfMemory,
        FailureKind::StackOverflow,
        FailureKind::BadPointer,
        FailureKind::MalformedDecision,
        FailureKind::BadStatus,
        FailureKind::RuleError,
    ];

    /// The label used in counters, logs and the error action (bounded cardinality).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::OutOfMemory => "out_of_memory",
            FailureKind::StackOverflow => "stack_overflow",
            FailureKind::BadPointer => "bad_pointer",
            FailureKind::MalformedDecision => "malformed_decision",
            FailureKind::BadStatus => "bad_status",
            FailureKind::RuleError => "rule_error",
        }
    }
}

/// One failed message for one rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct RuleFailure {
    /// The classification.
    pub kind: FailureKind,
    /// A human-readable reason.
    pub message: String,
}

/// Where a decision goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A sluice topic.
    Forward(String),
    /// An MQTT topic.
    Republish {
        /// The MQTT topic.
        topic: String,
        /// 0 or 1.
        qos: u8,
    },
    /// `emit_output` from a rule that has no actions (`sluice rule eval` without `--action`).
    Output,
}

/// One decision of a rule for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Where the payload goes.
    pub target: Target,
    /// The bytes to deliver.
    pub payload: Vec<u8>,
}

/// What a rule made of a message that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The decisions to carry out (none: the rule did not fire).
    Emitted(Vec<Decision>),
    /// The rule dropped the message on purpose.
    Dropped,
}
