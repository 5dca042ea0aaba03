//! The rule ABI v1 as constants: the one place both the host and guests take names and codes
//! from, so the two sides cannot drift. `ABI.md` beside this crate is the prose version.

/// The ABI version a module must return from [`EXPORT_ABI_VERSION`].
pub const ABI_VERSION: i32 = 1;

/// The only import module a rule may use.
pub const IMPORT_MODULE: &str = "sluice_v1";

/// Export: the guest's linear memory.
pub const EXPORT_MEMORY: &str = "memory";
/// Export: `() -> i32`, must return [`ABI_VERSION`].
pub const EXPORT_ABI_VERSION: &str = "sluice_abi_version";
/// Export: `(size) -> ptr`, a buffer the host writes the payload into.
pub const EXPORT_ALLOC: &str = "sluice_alloc";
/// Export: `(payload_ptr, payload_len) -> status`, handles one message.
pub const EXPORT_ON_MESSAGE: &str = "sluice_on_message";
/// Optional export: `() -> i32`, called once after instantiation.
pub const EXPORT_INIT: &str = "sluice_init";

/// Largest payload one decision may carry.
pub const MAX_DECISION_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Most decisions one message may produce.
pub const MAX_DECISIONS_PER_MESSAGE: usize = 64;

/// Most linear memories a module may define: the exported [`EXPORT_MEMORY`] is the only one the
/// host reads or writes, and the host's memory cap counts every byte of it.
pub const MAX_MEMORIES: u32 = 1;
/// Most tables a module may define (a Rust or C guest has one, for indirect calls).
pub const MAX_TABLES: u32 = 1;

/// Names of the imports in module [`IMPORT_MODULE`].
pub mod imports {
    /// `(buf_ptr, buf_cap) -> len`
    pub const MSG_TOPIC: &str = "msg_topic";
    /// `(buf_ptr, buf_cap) -> len`
    pub const MSG_ID: &str = "msg_id";
    /// `(buf_ptr, buf_cap) -> len`
    pub const MSG_PRODUCT_KEY: &str = "msg_product_key";
    /// `(buf_ptr, buf_cap) -> len`
    pub const MSG_DEVICE_NAME: &str = "msg_device_name";
    /// `() -> i64`
    pub const MSG_TIMESTAMP_MS: &str = "msg_timestamp_ms";
    /// `(buf_ptr, buf_cap) -> len`
    pub const MSG_RAW_PAYLOAD: &str = "msg_raw_payload";
    /// `() -> i64`
    pub const NOW_MS: &str = "now_ms";
    /// `(epoch_ms: i64, utc, pattern_ptr, pattern_len, buf_ptr, buf_cap) -> len`
    pub const FORMAT_TIME: &str = "format_time";
    /// `(buf_ptr, buf_len) -> status`
    pub const RANDOM_FILL: &str = "random_fill";
    /// `(key_ptr, key_len, buf_ptr, buf_cap) -> len | NOT_FOUND`
    pub const DEVICE_TAG: &str = "device_tag";
    /// `() -> i32`
    pub const ACTION_COUNT: &str = "action_count";
    /// `(payload_ptr, payload_len) -> status`
    pub const EMIT_OUTPUT: &str = "emit_output";
    /// `(index, payload_ptr, payload_len) -> status`
    pub const EMIT_ACTION: &str = "emit_action";
    /// `(topic_ptr, topic_len, payload_ptr, payload_len) -> status`
    pub const EMIT_FORWARD: &str = "emit_forward";
    /// `(topic_ptr, topic_len, payload_ptr, payload_len, qos) -> status`
    pub const EMIT_REPUBLISH: &str = "emit_republish";
    /// `(msg_ptr, msg_len) -> status`
    pub const FAIL: &str = "fail";
    /// `(level, msg_ptr, msg_len) -> status`
    pub const LOG: &str = "log";

    /// Every import of ABI v1, for hosts that check a module's import list.
    pub const ALL: &[&str] = &[
        MSG_TOPIC,
        MSG_ID,
        MSG_PRODUCT_KEY,
        MSG_DEVICE_NAME,
        MSG_TIMESTAMP_MS,
        MSG_RAW_PAYLOAD,
        NOW_MS,
        FORMAT_TIME,
        RANDOM_FILL,
        DEVICE_TAG,
        ACTION_COUNT,
        EMIT_OUTPUT,
        EMIT_ACTION,
        EMIT_FORWARD,
        EMIT_REPUBLISH,
        FAIL,
        LOG,
    ];
}

/// Status codes shared by imports and `sluice_on_message`. Negative values are errors.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Success; from `sluice_on_message`: keep the decisions emitted.
    Ok = 0,
    /// From `sluice_on_message`: drop the message on purpose.
    Drop = 1,
    /// From `sluice_on_message`: the rule failed the message (see `fail`).
    Failed = -1,
    /// A malformed argument: bad UTF-8, bad pattern, qos not 0 or 1.
    BadArgument = -2,
    /// `emit_action` with an index past `action_count()`.
    NoSuchAction = -3,
    /// A forward or republish outside the rule's grant.
    NotGranted = -4,
    /// More than [`MAX_DECISIONS_PER_MESSAGE`] decisions for one message.
    TooManyDecisions = -5,
    /// A payload over [`MAX_DECISION_PAYLOAD_BYTES`].
    TooLarge = -6,
    /// `device_tag` for a tag the device does not have.
    NotFound = -7,
}

impl Status {
    /// Every status, for exhaustive tests and tables.
    pub const ALL: [Status; 9] = [
        Status::Ok,
        Status::Drop,
        Status::Failed,
        Status::BadArgument,
        Status::NoSuchAction,
        Status::NotGranted,
        Status::TooManyDecisions,
        Status::TooLarge,
        Status::NotFound,
    ];

    /// The wire value.
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// The status for a wire value, if it is one.
    pub fn from_code(code: i32) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The name used in `ABI.md` and in error messages.
    pub const fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Drop => "DROP",
            Status::Failed => "FAILED",
            Status::BadArgument => "BAD_ARGUMENT",
            Status::NoSuchAction => "NO_SUCH_ACTION",
            Status::NotGranted => "NOT_GRANTED",
            Status::TooManyDecisions => "TOO_MANY_DECISIONS",
            Status::TooLarge => "TOO_LARGE",
            Status::NotFound => "NOT_FOUND",
        }
    }
}

/// Log levels for the `log` import.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Something failed.
    Error = 0,
    /// Something looks wrong.
    Warn = 1,
    /// Normal operation.
    Info = 2,
    /// Detail for debugging a rule.
    Debug = 3,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips_and_has_a_distinct_code() {
        let mut seen = std::collections::HashSet::new();
        for s in Status::ALL {
            assert_eq!(Status::from_code(s.code()), Some(s));
            assert!(seen.insert(s.code()), "duplicate code {}", s.code());
            assert!(s.code() <= 1, "only OK and DROP are non-negative");
        }
        assert_eq!(Status::from_code(42), None);
        assert_eq!(Status::Ok.name(), "OK");
    }

    #[test]
    fn import_list_has_no_duplicates() {
        let set: std::collections::HashSet<_> = imports::ALL.iter().collect();
        assert_eq!(set.len(), imports::ALL.len());
    }
}
