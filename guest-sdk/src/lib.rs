//! `sluice-guest`: write sluice rules in Rust and compile them to `wasm32-unknown-unknown`.
//!
//! A rule is a function from a [`Message`] to an [`Outcome`], exported with the [`rule`]
//! attribute:
//!
//! ```
//! use sluice_guest::{Message, Outcome};
//!
//! #[sluice_guest::rule]
//! fn rule(msg: &Message) -> Outcome {
//!     if msg.payload().is_empty() {
//!         return Outcome::Drop;
//!     }
//!     match sluice_guest::emit_output(msg.payload()) {
//!         Ok(()) => Outcome::Ok,
//!         Err(status) => Outcome::Fail(format!("emit refused: {}", status.name())),
//!     }
//! }
//! ```
//!
//! The attribute keeps the function as it is and adds the ABI exports only on `wasm32`, so the
//! same function is unit-tested natively: on every other target the functions below talk to
//! [`testing`], an in-process stand-in for the host, and plain `cargo test` exercises the logic.
//! The older `export_rule!(path)` macro does the same for a function defined elsewhere.
//!
//! With the `serde` feature, [`Message::json`] parses the payload into a typed struct (parse only
//! the fields a rule reads: it is several times cheaper than a `serde_json::Value`) and
//! [`forward_json`] encodes a decision.
//!
//! Layout: [`abi`] holds the ABI's names and codes (shared with the host); `raw` the `extern`
//! block (wasm32 only); this file the friendly API; the attribute lives in `sluice-guest-macros`.

pub mod abi;
#[cfg(target_arch = "wasm32")]
mod raw;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use abi::{LogLevel, Status};
/// Exports `fn(&Message) -> Outcome` as the module's rule (ABI v1); see the crate docs.
pub use sluice_guest_macros::rule;

#[cfg(target_arch = "wasm32")]
use raw::sys;
#[cfg(not(target_arch = "wasm32"))]
use testing::sys;

/// What a rule decides for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Keep every decision emitted during this call.
    Ok,
    /// Drop the message on purpose: decisions emitted during this call are discarded.
    Drop,
    /// Fail the message: it goes to the rule's error action with this text.
    Fail(String),
}

/// The message a rule is handling. Fields other than the payload are fetched from the host
/// only when read, so a rule pays only for what it uses.
#[derive(Debug)]
pub struct Message<'a> {
    payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// Wraps the payload the host passed in. Used by the generated exports and by tests.
    pub fn new(payload: &'a [u8]) -> Message<'a> {
        Message { payload }
    }

    /// The payload the rule sees (the platform view on thing-model topics).
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The payload as text, if it is UTF-8.
    pub fn payload_str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.payload).ok()
    }

    /// The MQTT topic the device published to.
    pub fn topic(&self) -> String {
        read_string(sys::msg_topic)
    }

    /// The message id (32 lowercase hex characters).
    pub fn id(&self) -> String {
        read_string(sys::msg_id)
    }

    /// The device's product key.
    pub fn product_key(&self) -> String {
        read_string(sys::msg_product_key)
    }

    /// The device's name.
    pub fn device_name(&self) -> String {
        read_string(sys::msg_device_name)
    }

    /// The ingest time, ms since the Unix epoch.
    pub fn timestamp_ms(&self) -> i64 {
        sys::msg_timestamp_ms()
    }

    /// The payload exactly as published.
    pub fn raw_payload(&self) -> Vec<u8> {
        read_bytes(sys::msg_raw_payload)
    }

    /// The payload parsed as JSON into `T`, borrowing strings from the payload where `T` does.
    /// A typed struct with only the fields the rule reads is the cheap way to read JSON.
    #[cfg(feature = "serde")]
    pub fn json<T: serde::Deserialize<'a>>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(self.payload)
    }
}

/// Why [`forward_json`] did not forward.
#[cfg(feature = "serde")]
#[derive(Debug)]
pub enum JsonEmitError {
    /// The value could not be encoded.
    Encode(serde_json::Error),
    /// The host refused the decision (outside the grant, too large, too many).
    Refused(Status),
}

#[cfg(feature = "serde")]
impl std::fmt::Display for JsonEmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsonEmitError::Encode(e) => write!(f, "cannot encode the payload as JSON: {e}"),
            JsonEmitError::Refused(s) => write!(f, "the host refused the decision: {}", s.name()),
        }
    }
}

#[cfg(feature = "serde")]
impl std::error::Error for JsonEmitError {}

/// Forwards `value`, encoded as JSON, to the sluice topic `topic` (must be in the grant).
#[cfg(feature = "serde")]
pub fn forward_json<T: serde::Serialize + ?Sized>(
    topic: &str,
    value: &T,
) -> Result<(), JsonEmitError> {
    let body = serde_json::to_vec(value).map_err(JsonEmitError::Encode)?;
    forward(topic, &body).map_err(JsonEmitError::Refused)
}

/// The host's clock, ms since the Unix epoch.
pub fn now_ms() -> i64 {
    sys::now_ms()
}

/// Formats `epoch_ms` with a Java-style pattern in the rule's timezone (or UTC).
pub fn format_time(epoch_ms: i64, utc: bool, pattern: &str) -> Result<String, Status> {
    let mut failed = None;
    let bytes = read_bytes(|buf| {
        let n = sys::format_time(epoch_ms, utc, pattern, buf);
        if n < 0 {
            failed = Some(Status::from_code(n).unwrap_or(Status::BadArgument));
        }
        n
    });
    match failed {
        Some(status) => Err(status),
        None => String::from_utf8(bytes).map_err(|_| Status::BadArgument),
    }
}

/// Fills `buf` with random bytes from the host.
pub fn random_fill(buf: &mut [u8]) {
    sys::random_fill(buf);
}

/// A device tag of the message's device, if it has one.
pub fn device_tag(key: &str) -> Option<String> {
    let mut absent = false;
    let bytes = read_bytes(|buf| {
        let n = sys::device_tag(key, buf);
        absent = n < 0;
        n
    });
    if absent {
        None
    } else {
        String::from_utf8(bytes).ok()
    }
}

/// How many actions the rule has.
pub fn action_count() -> usize {
    sys::action_count().max(0) as usize
}

/// Sends `payload` to every action of the rule.
pub fn emit_output(payload: &[u8]) -> Result<(), Status> {
    status(sys::emit_output(payload))
}

/// Sends `payload` to the rule's action `index` (0-based).
pub fn emit_action(index: usize, payload: &[u8]) -> Result<(), Status> {
    status(sys::emit_action(index as i32, payload))
}

/// Forwards `payload` to the sluice topic `topic` (must be in the rule's grant).
pub fn forward(topic: &str, payload: &[u8]) -> Result<(), Status> {
    status(sys::emit_forward(topic, payload))
}

/// Republishes `payload` to the MQTT topic `topic` at `qos` 0 or 1 (must be in the grant).
pub fn republish(topic: &str, payload: &[u8], qos: u8) -> Result<(), Status> {
    status(sys::emit_republish(topic, payload, qos as i32))
}

/// Writes a line to sluice's log, tagged with the rule's name.
pub fn log(level: LogLevel, text: &str) {
    sys::log(level as i32, text);
}

/// Records why the message fails. The generated export calls it for [`Outcome::Fail`].
pub fn set_failure(text: &str) {
    sys::fail(text);
}

fn status(code: i32) -> Result<(), Status> {
    match Status::from_code(code) {
        Some(Status::Ok) => Ok(()),
        Some(s) => Err(s),
        None => Err(Status::BadArgument),
    }
}

/// Calls a copy-out import until the buffer is large enough (the ABI's `(buf, cap) -> len`).
fn read_bytes(mut call: impl FnMut(&mut [u8]) -> i32) -> Vec<u8> {
    let mut buf = vec![0u8; 128];
    loop {
        let n = call(&mut buf).max(0) as usize;
        if n <= buf.len() {
            buf.truncate(n);
            return buf;
        }
        buf.resize(n, 0);
    }
}

fn read_string(call: impl FnMut(&mut [u8]) -> i32) -> String {
    String::from_utf8(read_bytes(call)).unwrap_or_default()
}

/// Support for [`rule`] and [`export_rule!`]; not part of the stable API.
#[doc(hidden)]
pub mod __export {
    use super::*;

    thread_local! {
        static INPUT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// The `sluice_alloc` export: one reusable input buffer.
    pub fn alloc(size: i32) -> i32 {
        INPUT.with(|b| {
            let mut b = b.borrow_mut();
            let size = size.max(0) as usize;
            if b.len() < size {
                b.resize(size, 0);
            }
            b.as_mut_ptr() as i32
        })
    }

    /// The `sluice_on_message` export: runs the rule and maps its outcome to a status.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be the buffer returned by [`alloc`], filled by the host.
    pub unsafe fn on_message(rule: fn(&Message) -> Outcome, ptr: i32, len: i32) -> i32 {
        let payload =
            unsafe { std::slice::from_raw_parts(ptr as usize as *const u8, len as usize) };
        match rule(&Message::new(payload)) {
            Outcome::Ok => Status::Ok.code(),
            Outcome::Drop => Status::Drop.code(),
            Outcome::Fail(text) => {
                set_failure(&text);
                Status::Failed.code()
            }
        }
    }
}

/// Exports `fn(&Message) -> Outcome` as a sluice rule (ABI v1), for a function defined
/// elsewhere (another crate, a module). Prefer [`rule`] on the function itself. Use it once per
/// crate.
#[macro_export]
macro_rules! export_rule {
    ($rule:path) => {
        const _: fn(&$crate::Message<'_>) -> $crate::Outcome = $rule;

        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn sluice_abi_version() -> i32 {
            $crate::abi::ABI_VERSION
        }

        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn sluice_alloc(size: i32) -> i32 {
            $crate::__export::alloc(size)
        }

        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn sluice_on_message(ptr: i32, len: i32) -> i32 {
            // SAFETY: the host passes the buffer it got from `sluice_alloc`.
            unsafe { $crate::__export::on_message($rule, ptr, len) }
        }
    };
}
