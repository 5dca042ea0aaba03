//! A stand-in for the sluice host on native targets, so rule logic is unit-tested with plain
//! `cargo test`: set up a [`TestHost`], [`run`] the rule, then look at the decisions it made.
//!
//! ```
//! use sluice_guest::{testing::{self, Decision, TestHost}, Message, Outcome};
//!
//! fn rule(msg: &Message) -> Outcome {
//!     let _ = sluice_guest::forward("alerts", msg.device_name().as_bytes());
//!     Outcome::Ok
//! }
//!
//! let host = TestHost { device_name: "dev1".into(), ..TestHost::default() };
//! let (outcome, host) = testing::run(host, b"{}", rule);
//! assert_eq!(outcome, Outcome::Ok);
//! assert_eq!(host.decisions, vec![Decision::Forward("alerts".into(), b"dev1".to_vec())]);
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::{Message, Outcome, Status};

/// A decision recorded by the test host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `emit_output`: to every action.
    Output(Vec<u8>),
    /// `emit_action`: to one action.
    Action(usize, Vec<u8>),
    /// `emit_forward`: to a named topic.
    Forward(String, Vec<u8>),
    /// `emit_republish`: to an MQTT topic at a QoS.
    Republish(String, Vec<u8>, u8),
}

/// The message context and recorded effects of one rule call.
#[derive(Debug, Clone, Default)]
pub struct TestHost {
    /// What `Message::topic` returns.
    pub topic: String,
    /// What `Message::id` returns.
    pub message_id: String,
    /// What `Message::product_key` returns.
    pub product_key: String,
    /// What `Message::device_name` returns.
    pub device_name: String,
    /// What `Message::timestamp_ms` returns.
    pub timestamp_ms: i64,
    /// What `Message::raw_payload` returns.
    pub raw_payload: Vec<u8>,
    /// What `now_ms` returns.
    pub now_ms: i64,
    /// The device's tags.
    pub tags: BTreeMap<String, String>,
    /// What `action_count` returns.
    pub action_count: usize,
    /// Decisions made so far.
    pub decisions: Vec<Decision>,
    /// Text given to `fail`.
    pub failure: Option<String>,
    /// Log lines as `(level, text)`.
    pub logs: Vec<(i32, String)>,
    /// Bytes `random_fill` cycles through (zeros when empty).
    pub random: Vec<u8>,
}

thread_local! {
    static HOST: RefCell<TestHost> = RefCell::new(TestHost::default());
}

/// Runs `rule` on `payload` against `host` and returns the outcome and the host afterwards.
pub fn run(host: TestHost, payload: &[u8], rule: fn(&Message) -> Outcome) -> (Outcome, TestHost) {
    HOST.with(|h| *h.borrow_mut() = host);
    let outcome = rule(&Message::new(payload));
    let host = HOST.with(|h| std::mem::take(&mut *h.borrow_mut()));
    (outcome, host)
}

fn with<R>(f: impl FnOnce(&mut TestHost) -> R) -> R {
    HOST.with(|h| f(&mut h.borrow_mut()))
}

fn copy_out(value: &[u8], buf: &mut [u8]) -> i32 {
    let n = value.len().min(buf.len());
    buf[..n].copy_from_slice(&value[..n]);
    value.len() as i32
}

fn record(decision: Decision) -> i32 {
    with(|h| {
        if h.decisions.len() >= crate::abi::MAX_DECISIONS_PER_MESSAGE {
            return Status::TooManyDecisions.code();
        }
        h.decisions.push(decision);
        Status::Ok.code()
    })
}

/// The same slice-based functions as the wasm32 import wrappers, answered by [`TestHost`].
pub(crate) mod sys {
    use super::*;

    pub fn msg_topic(buf: &mut [u8]) -> i32 {
        with(|h| copy_out(h.topic.as_bytes(), buf))
    }
    pub fn msg_id(buf: &mut [u8]) -> i32 {
        with(|h| copy_out(h.message_id.as_bytes(), buf))
    }
    pub fn msg_product_key(buf: &mut [u8]) -> i32 {
        with(|h| copy_out(h.product_key.as_bytes(), buf))
    }
    pub fn msg_device_name(buf: &mut [u8]) -> i32 {
        with(|h| copy_out(h.device_name.as_bytes(), buf))
    }
    pub fn msg_timestamp_ms() -> i64 {
        with(|h| h.timestamp_ms)
    }
    pub fn msg_raw_payload(buf: &mut [u8]) -> i32 {
        with(|h| copy_out(&h.raw_payload, buf))
    }
    pub fn now_ms() -> i64 {
        with(|h| h.now_ms)
    }
    pub fn format_time(epoch_ms: i64, _utc: bool, _pattern: &str, buf: &mut [u8]) -> i32 {
        // The test host has no calendar: it formats the epoch milliseconds as a number.
        copy_out(epoch_ms.to_string().as_bytes(), buf)
    }
    pub fn random_fill(buf: &mut [u8]) -> i32 {
        with(|h| {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = if h.random.is_empty() {
                    0
                } else {
                    h.random[i % h.random.len()]
                };
            }
        });
        Status::Ok.code()
    }
    pub fn device_tag(key: &str, buf: &mut [u8]) -> i32 {
        with(|h| match h.tags.get(key) {
            Some(v) => copy_out(v.as_bytes(), buf),
            None => Status::NotFound.code(),
        })
    }
    pub fn action_count() -> i32 {
        with(|h| h.action_count as i32)
    }
    pub fn emit_output(payload: &[u8]) -> i32 {
        record(Decision::Output(payload.to_vec()))
    }
    pub fn emit_action(index: i32, payload: &[u8]) -> i32 {
        if index < 0 || index as usize >= with(|h| h.action_count) {
            return Status::NoSuchAction.code();
        }
        record(Decision::Action(index as usize, payload.to_vec()))
    }
    pub fn emit_forward(topic: &str, payload: &[u8]) -> i32 {
        record(Decision::Forward(topic.to_string(), payload.to_vec()))
    }
    pub fn emit_republish(topic: &str, payload: &[u8], qos: i32) -> i32 {
        // As the host: a republish goes to a topic name, never a filter.
        if !(0..=1).contains(&qos) || topic.is_empty() || topic.contains(['+', '#', '\0']) {
            return Status::BadArgument.code();
        }
        record(Decision::Republish(
            topic.to_string(),
            payload.to_vec(),
            qos as u8,
        ))
    }
    pub fn fail(text: &str) -> i32 {
        with(|h| h.failure = Some(text.to_string()));
        Status::Ok.code()
    }
    pub fn log(level: i32, text: &str) -> i32 {
        with(|h| h.logs.push((level, text.to_string())));
        Status::Ok.code()
    }
}
