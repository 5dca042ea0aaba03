//! The `sluice_v1` imports of `guest-sdk/ABI.md`: what each host function does, the state it
//! sees, and how it pays for its work in fuel and checks every guest pointer.

use std::collections::HashMap;
use std::sync::Arc;

use rand::{RngCore, SeedableRng};
use sluice_guest::abi::{self, imports, Status};
use wasmtime::{Caller, Engine, ExternType, FuncType, Linker, Memory, Store, Trap};

use super::config::{HOST_CALL_FUEL, HOST_FUEL_PER_BYTE, RANDOM_FUEL_PER_BYTE};
use super::input::{Binding, Environment, RuleInput, TagSource};
use super::memory::InstanceLimits;
use super::outcome::{Decision, Target};
use crate::rules::actions::Action;
use crate::rules::rule_log::{self, LogLimits, MessageLog};
use crate::rules::time_format;

/// What the imports see: the binding, the environment and the current call.
pub(super) struct HostState {
    pub(super) limits: InstanceLimits,
    pub(super) log_limits: LogLimits,
    pub(super) binding: Binding,
    pub(super) env: Environment,
    pub(super) rng: rand::rngs::StdRng,
    pub(super) memory: Option<Memory>,
    pub(super) call: CallState,
}

/// The message of the current call and what the rule did with it. Reused between calls.
#[derive(Default)]
pub(super) struct CallState {
    pub(super) topic: String,
    message_id: String,
    product_key: String,
    device_name: String,
    raw_payload: Vec<u8>,
    timestamp_ms: i64,
    tags: Option<Arc<dyn TagSource>>,
    pub(super) decisions: Vec<Decision>,
    pub(super) failure: Option<String>,
    pub(super) violation: Option<String>,
    pub(super) bad_pointer: bool,
    /// An import found the call's fuel spent (the failure is then `timeout`).
    pub(super) out_of_fuel: bool,
    /// What this message logged.
    pub(super) log: MessageLog,
    /// The module said the payload was not what its data type promises (a SQL rule's
    /// `STATUS_INVALID_PAYLOAD`): the message is dropped, and counted apart from drops.
    pub(super) invalid_payload: bool,
}

impl CallState {
    pub(super) fn begin(&mut self, input: &RuleInput<'_>) {
        self.topic.clear();
        self.topic.push_str(input.topic);
        self.message_id.clear();
        self.message_id.push_str(input.message_id);
        self.product_key.clear();
        self.product_key.push_str(input.product_key);
        self.device_name.clear();
        self.device_name.push_str(input.device_name);
        self.raw_payload.clear();
        self.raw_payload.extend_from_slice(input.raw_payload);
        self.timestamp_ms = input.timestamp_ms;
        self.tags = input.tags.cloned();
        self.decisions.clear();
        self.failure = None;
        self.violation = None;
        self.bad_pointer = false;
        self.out_of_fuel = false;
        self.log.begin();
        self.invalid_payload = false;
    }

    fn tag(&self, key: &str) -> Option<String> {
        self.tags
            .as_ref()?
            .tag(&self.product_key, &self.device_name, key)
    }
}

type Host<'a> = Caller<'a, HostState>;

/// Takes `fuel` from the call's budget for work an import is about to do, or ends the call as a
/// timeout when the budget cannot pay for it: the work is never done on credit, so a loop of
/// host calls stops where a loop of instructions of the same cost would.
fn charge(caller: &mut Host<'_>, fuel: u64) -> wasmtime::Result<()> {
    let left = caller.get_fuel()?;
    match left.checked_sub(fuel) {
        Some(rest) => caller.set_fuel(rest),
        None => {
            caller.set_fuel(0)?;
            caller.data_mut().call.out_of_fuel = true;
            Err(Trap::OutOfFuel.into())
        }
    }
}

/// The fuel of `bytes` bytes of host work.
fn byte_fuel(bytes: usize) -> u64 {
    (bytes as u64).saturating_mul(HOST_FUEL_PER_BYTE)
}

/// The guest's memory: known once instantiation is done, so an import that touches memory from
/// the module's start function fails the start instead of reaching into nothing.
fn guest_memory(caller: &Host<'_>) -> wasmtime::Result<Memory> {
    caller.data().memory.ok_or_else(|| {
        wasmtime::Error::msg(
            "an import that reads or writes guest memory was called before instantiation \
             finished (from a start function); call it from sluice_init or sluice_on_message",
        )
    })
}

/// Checks that `ptr..ptr+len` lies in the guest's memory, or marks the call as a bad pointer.
fn checked_range(
    caller: &mut Host<'_>,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<std::ops::Range<usize>> {
    let size = guest_memory(caller)?.data_size(&*caller);
    match guest_range(ptr, len) {
        Some(r) if r.end <= size => Ok(r),
        _ => bad_pointer(caller, ptr, len),
    }
}

/// Copies guest bytes `ptr..ptr+len` (paying for them), or marks the call as a bad pointer.
fn read_guest(caller: &mut Host<'_>, ptr: i32, len: i32) -> wasmtime::Result<Vec<u8>> {
    let range = checked_range(caller, ptr, len)?;
    charge(caller, byte_fuel(range.len()))?;
    Ok(guest_memory(caller)?.data(&*caller)[range].to_vec())
}

fn read_guest_str(caller: &mut Host<'_>, ptr: i32, len: i32) -> wasmtime::Result<Option<String>> {
    Ok(String::from_utf8(read_guest(caller, ptr, len)?).ok())
}

/// Copies `value` out to the guest's `(buf, cap)` (paying for the bytes copied) and returns its
/// full length.
fn copy_out(caller: &mut Host<'_>, value: &[u8], ptr: i32, cap: i32) -> wasmtime::Result<i32> {
    let n = value.len().min(cap.max(0) as usize);
    let range = checked_range(caller, ptr, n as i32)?;
    charge(caller, byte_fuel(n))?;
    guest_memory(caller)?.data_mut(&mut *caller)[range].copy_from_slice(&value[..n]);
    Ok(value.len() as i32)
}

/// Copies one of the message's strings out to the guest (the `msg_*` imports).
fn copy_out_field<V: AsRef<[u8]> + Default>(
    caller: &mut Host<'_>,
    field: fn(&mut CallState) -> &mut V,
    ptr: i32,
    cap: i32,
) -> wasmtime::Result<i32> {
    charge(caller, HOST_CALL_FUEL)?;
    let value = std::mem::take(field(&mut caller.data_mut().call));
    let r = copy_out(caller, value.as_ref(), ptr, cap);
    *field(&mut caller.data_mut().call) = value;
    r
}

fn guest_range(ptr: i32, len: i32) -> Option<std::ops::Range<usize>> {
    if ptr < 0 || len < 0 {
        return None;
    }
    let start = ptr as usize;
    Some(start..start.checked_add(len as usize)?)
}

fn bad_pointer<T>(caller: &mut Host<'_>, ptr: i32, len: i32) -> wasmtime::Result<T> {
    caller.data_mut().call.bad_pointer = true;
    Err(wasmtime::Error::msg(format!(
        "pointer range {ptr}+{len} is outside the guest's memory"
    )))
}

/// Records a decision after the limits every decision obeys.
fn push_decision(caller: &mut Host<'_>, decision: Decision) -> i32 {
    let call = &mut caller.data_mut().call;
    if decision.payload.len() > abi::MAX_DECISION_PAYLOAD_BYTES {
        return violate(
            call,
            Status::TooLarge,
            format!(
                "a decision payload of {} bytes exceeds the limit of {} bytes",
                decision.payload.len(),
                abi::MAX_DECISION_PAYLOAD_BYTES
            ),
        );
    }
    if call.decisions.len() >= abi::MAX_DECISIONS_PER_MESSAGE {
        return violate(
            call,
            Status::TooManyDecisions,
            format!(
                "more than {} decisions for one message",
                abi::MAX_DECISIONS_PER_MESSAGE
            ),
        );
    }
    call.decisions.push(decision);
    Status::Ok.code()
}

fn violate(call: &mut CallState, status: Status, why: String) -> i32 {
    call.violation.get_or_insert(why);
    status.code()
}

fn emit_to_action(caller: &mut Host<'_>, action: Action, payload: Vec<u8>) -> i32 {
    let target = match action {
        Action::Forward { topic } => Target::Forward(topic),
        Action::Republish { topic, qos } => Target::Republish { topic, qos },
    };
    push_decision(caller, Decision { target, payload })
}

/// Every import first pays [`HOST_CALL_FUEL`], then [`HOST_FUEL_PER_BYTE`] for each byte it
/// moves or makes, before doing the work (see [`charge`]).
pub(super) fn define_imports(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let m = abi::IMPORT_MODULE;
    linker.func_wrap(
        m,
        imports::MSG_TOPIC,
        |mut c: Host<'_>, p: i32, cap: i32| copy_out_field(&mut c, |s| &mut s.topic, p, cap),
    )?;
    linker.func_wrap(m, imports::MSG_ID, |mut c: Host<'_>, p: i32, cap: i32| {
        copy_out_field(&mut c, |s| &mut s.message_id, p, cap)
    })?;
    linker.func_wrap(
        m,
        imports::MSG_PRODUCT_KEY,
        |mut c: Host<'_>, p: i32, cap: i32| copy_out_field(&mut c, |s| &mut s.product_key, p, cap),
    )?;
    linker.func_wrap(
        m,
        imports::MSG_DEVICE_NAME,
        |mut c: Host<'_>, p: i32, cap: i32| copy_out_field(&mut c, |s| &mut s.device_name, p, cap),
    )?;
    linker.func_wrap(m, imports::MSG_TIMESTAMP_MS, |mut c: Host<'_>| {
        charge(&mut c, HOST_CALL_FUEL)?;
        Ok(c.data().call.timestamp_ms)
    })?;
    linker.func_wrap(
        m,
        imports::MSG_RAW_PAYLOAD,
        |mut c: Host<'_>, p: i32, cap: i32| copy_out_field(&mut c, |s| &mut s.raw_payload, p, cap),
    )?;
    linker.func_wrap(m, imports::NOW_MS, |mut c: Host<'_>| {
        charge(&mut c, HOST_CALL_FUEL)?;
        Ok(c.data()
            .env
            .fixed_now_ms
            .unwrap_or_else(|| crate::ids::now_ms() as i64))
    })?;
    linker.func_wrap(
        m,
        imports::FORMAT_TIME,
        |mut c: Host<'_>, ms: i64, utc: i32, pp: i32, pl: i32, bp: i32, bc: i32| {
            charge(&mut c, HOST_CALL_FUEL)?;
            let Some(pattern) = read_guest_str(&mut c, pp, pl)? else {
                return Ok(Status::BadArgument.code());
            };
            let offset = if utc == 1 {
                0
            } else {
                c.data().env.utc_offset_seconds
            };
            match time_format::format(ms, offset, &pattern) {
                Ok(text) => copy_out(&mut c, text.as_bytes(), bp, bc),
                Err(_) => Ok(Status::BadArgument.code()),
            }
        },
    )?;
    linker.func_wrap(
        m,
        imports::RANDOM_FILL,
        |mut c: Host<'_>, p: i32, len: i32| {
            charge(&mut c, HOST_CALL_FUEL)?;
            let range = checked_range(&mut c, p, len)?;
            charge(
                &mut c,
                (range.len() as u64).saturating_mul(RANDOM_FUEL_PER_BYTE),
            )?;
            // Straight into guest memory: no host buffer the size of the request.
            let (memory, state) = guest_memory(&c)?.data_and_store_mut(&mut c);
            state.rng.fill_bytes(&mut memory[range]);
            Ok(Status::Ok.code())
        },
    )?;
    linker.func_wrap(
        m,
        imports::DEVICE_TAG,
        |mut c: Host<'_>, kp: i32, kl: i32, bp: i32, bc: i32| {
            charge(&mut c, HOST_CALL_FUEL)?;
            let Some(key) = read_guest_str(&mut c, kp, kl)? else {
                return Ok(Status::BadArgument.code());
            };
            match c.data().call.tag(&key) {
                Some(v) => copy_out(&mut c, v.as_bytes(), bp, bc),
                None => Ok(Status::NotFound.code()),
            }
        },
    )?;
    linker.func_wrap(m, imports::ACTION_COUNT, |mut c: Host<'_>| {
        charge(&mut c, HOST_CALL_FUEL)?;
        Ok(c.data().binding.actions.len() as i32)
    })?;
    linker.func_wrap(
        m,
        imports::EMIT_OUTPUT,
        |mut c: Host<'_>, pp: i32, pl: i32| {
            charge(&mut c, HOST_CALL_FUEL)?;
            let mut payload = read_guest(&mut c, pp, pl)?;
            let n = c.data().binding.actions.len();
            if n == 0 {
                return Ok(push_decision(
                    &mut c,
                    Decision {
                        target: Target::Output,
                        payload,
                    },
                ));
            }
            // One action at a time (not a clone of the whole list per message); the last one
            // takes the payload itself, every other one pays for its copy.
            for k in 0..n {
                let action = c.data().binding.actions[k].clone();
                let bytes = if k + 1 == n {
                    std::mem::take(&mut payload)
                } else {
                    charge(&mut c, byte_fuel(payload.len()))?;
                    payload.clone()
                };
                let status = emit_to_action(&mut c, action, bytes);
                if status != Status::Ok.code() {
                    return Ok(status);
                }
            }
            Ok(Status::Ok.code())
        },
    )?;
    linker.func_wrap(
        m,
        imports::EMIT_ACTION,
        |mut c: Host<'_>, index: i32, pp: i32, pl: i32| {
            charge(&mut c, HOST_CALL_FUEL)?;
            let payload = read_guest(&mut c, pp, pl)?;
            let action = usize::try_from(index)
                .ok()
                .and_then(|i| c.data().binding.actions.get(i).cloned());
            match action {
                Some(action) => Ok(emit_to_action(&mut c, action, payload)),
                None => {
                    let n = c.data().binding.actions.len();
                    Ok(violate(
                        &mut c.data_mut().call,
                        Status::NoSuchAction,
                        format!("emit_action({index}) but the rule has {n} action(s)"),
                    ))
                }
            }
        },
    )?;
    linker.func_wrap(
        m,
        imports::EMIT_FORWARD,
        |mut c: Host<'_>, tp: i32, tl: i32, pp: i32, pl: i32| {
            charge(&mut c, HOST_CALL_FUEL)?;
            let Some(topic) = read_guest_str(&mut c, tp, tl)? else {
                return Ok(violate(
                    &mut c.data_mut().call,
                    Status::BadArgument,
                    "emit_forward with a topic name that is not UTF-8".into(),
                ));
            };
            let payload = read_guest(&mut c, pp, pl)?;
            if let Err(why) = c.data().binding.grant.check_forward(&topic) {
                return Ok(violate(&mut c.data_mut().call, Status::NotGranted, why));
            }
            Ok(push_decision(
                &mut c,
                Decision {
                    target: Target::Forward(topic),
                    payload,
                },
            ))
        },
    )?;
    linker.func_wrap(
        m,
        imports::EMIT_REPUBLISH,
        |mut c: Host<'_>, tp: i32, tl: i32, pp: i32, pl: i32, qos: i32| {
            charge(&mut c, HOST_CALL_FUEL)?;
            let Some(topic) = read_guest_str(&mut c, tp, tl)? else {
                return Ok(violate(
                    &mut c.data_mut().call,
                    Status::BadArgument,
                    "emit_republish with a topic that is not UTF-8".into(),
                ));
            };
            let payload = read_guest(&mut c, pp, pl)?;
            if !(0..=1).contains(&qos) {
                return Ok(violate(
                    &mut c.data_mut().call,
                    Status::BadArgument,
                    format!("emit_republish with qos {qos}; expected 0 or 1"),
                ));
            }
            // A wildcard would match a grant filter level for level (`+` against `+`) and
            // reach every subscriber of the filter it spells.
            if let Err(e) = crate::topic::validate_topic(&topic) {
                return Ok(violate(
                    &mut c.data_mut().call,
                    Status::BadArgument,
                    format!("emit_republish to `{}`: {e}", topic.escape_debug()),
                ));
            }
            let binding = &c.data().binding;
            if let Err(why) = binding.grant.check_republish(&topic, &binding.from_filter) {
                return Ok(violate(&mut c.data_mut().call, Status::NotGranted, why));
            }
            Ok(push_decision(
                &mut c,
                Decision {
                    target: Target::Republish {
                        topic,
                        qos: qos as u8,
                    },
                    payload,
                },
            ))
        },
    )?;
    linker.func_wrap(m, imports::FAIL, |mut c: Host<'_>, p: i32, l: i32| {
        charge(&mut c, HOST_CALL_FUEL)?;
        let text = read_guest(&mut c, p, l)?;
        c.data_mut().call.failure = Some(String::from_utf8_lossy(&text).into_owned());
        Ok(Status::Ok.code())
    })?;
    linker.func_wrap(
        m,
        imports::LOG,
        |mut c: Host<'_>, level: i32, p: i32, l: i32| {
            charge(&mut c, HOST_CALL_FUEL)?;
            let range = checked_range(&mut c, p, l)?;
            log_line(&mut c, level, range)?;
            Ok(Status::Ok.code())
        },
    )?;
    Ok(())
}

/// The type of each function in `linker`, by name. A linker tells the types of what it holds
/// only through a store: this one is never instantiated into, and counts in a usage record of
/// its own.
pub(super) fn import_types(
    engine: &Engine,
    linker: &Linker<HostState>,
) -> HashMap<String, FuncType> {
    let state = HostState {
        limits: InstanceLimits::new(0, Arc::default()),
        log_limits: LogLimits::default(),
        binding: Binding::default(),
        env: Environment::default(),
        rng: rand::rngs::StdRng::seed_from_u64(0),
        memory: None,
        call: CallState::default(),
    };
    let mut store = Store::new(engine, state);
    let defined: Vec<_> = linker
        .iter(&mut store)
        .map(|(_, name, item)| (name.to_string(), item))
        .collect();
    defined
        .into_iter()
        .filter_map(|(name, item)| match item.ty(&store) {
            ExternType::Func(f) => Some((name, f)),
            _ => None,
        })
        .collect()
}

/// Writes one `log` line within the rule log caps ([`super::rule_log`]): a level the server
/// does not write costs nothing more, a line past a cap is dropped and counted, and only the
/// bytes written are read and paid for.
fn log_line(c: &mut Host<'_>, level: i32, range: std::ops::Range<usize>) -> wasmtime::Result<()> {
    use tracing::Level;
    let level = match level {
        0 => Level::ERROR,
        1 => Level::WARN,
        2 => Level::INFO,
        _ => Level::DEBUG,
    };
    let enabled = match level {
        Level::ERROR => tracing::enabled!(target: "sluice::rule", Level::ERROR),
        Level::WARN => tracing::enabled!(target: "sluice::rule", Level::WARN),
        Level::INFO => tracing::enabled!(target: "sluice::rule", Level::INFO),
        _ => tracing::enabled!(target: "sluice::rule", Level::DEBUG),
    };
    if !enabled {
        return Ok(());
    }
    let state = c.data_mut();
    let len = range.len();
    let n = state
        .call
        .log
        .admit(len, &state.log_limits, &state.binding.log);
    if n == 0 && len > 0 {
        return Ok(());
    }
    charge(c, byte_fuel(n))?;
    let memory = guest_memory(c)?;
    let (data, state) = memory.data_and_store_mut(&mut *c);
    let text = rule_log::line_text(&data[range.start..range.start + n], len - n);
    let rule = state.binding.log.name();
    let topic = &state.call.topic;
    match level {
        Level::ERROR => tracing::error!(target: "sluice::rule", %rule, %topic, "{text}"),
        Level::WARN => tracing::warn!(target: "sluice::rule", %rule, %topic, "{text}"),
        Level::INFO => tracing::info!(target: "sluice::rule", %rule, %topic, "{text}"),
        _ => tracing::debug!(target: "sluice::rule", %rule, %topic, "{text}"),
    }
    Ok(())
}
