//! One live instance of a rule: made from a loaded module for one worker, then called once per
//! message, with each failure classified from typed state.

use sluice_guest::abi::{self, Status};
use wasmtime::{Memory, Store, Trap, TypedFunc};

use rand::SeedableRng;

use super::host_fns::{CallState, HostState};
use super::input::{Binding, Environment, RuleInput};
use super::load::{LoadError, RuleModule};
use super::memory::InstanceLimits;
use super::outcome::{FailureKind, Outcome, RuleFailure};
use super::RuleRuntime;

impl RuleRuntime {
    /// A fresh instance of `module` for one worker, bound to a rule's actions and grant.
    pub fn instantiate(
        &self,
        module: &RuleModule,
        binding: Binding,
        env: Environment,
    ) -> Result<RuleInstance, LoadError> {
        let rng = match env.seed {
            Some(seed) => rand::rngs::StdRng::seed_from_u64(seed),
            None => rand::rngs::StdRng::from_os_rng(),
        };
        let state = HostState {
            limits: InstanceLimits::new(self.config.max_memory_bytes, self.usage.clone()),
            log_limits: self.config.log,
            binding,
            env,
            rng,
            memory: None,
            call: CallState::default(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        self.arm(&mut store)?;
        let instance = module.pre.instantiate(&mut store).map_err(|source| {
            if store.data().limits.exceeded {
                LoadError::MemoryCap {
                    max_bytes: self.config.max_memory_bytes,
                    source,
                }
            } else {
                LoadError::Instantiate(source)
            }
        })?;
        let memory = instance
            .get_memory(&mut store, abi::EXPORT_MEMORY)
            .ok_or(LoadError::MissingExport(abi::EXPORT_MEMORY))?;
        store.data_mut().memory = Some(memory);
        let version: TypedFunc<(), i32> = instance
            .get_typed_func(&mut store, abi::EXPORT_ABI_VERSION)
            .map_err(|_| LoadError::MissingExport(abi::EXPORT_ABI_VERSION))?;
        self.arm(&mut store)?;
        let v = version
            .call(&mut store, ())
            .map_err(|source| LoadError::Trapped {
                export: abi::EXPORT_ABI_VERSION,
                source,
            })?;
        if v != abi::ABI_VERSION {
            return Err(LoadError::AbiVersion(v));
        }
        if let Ok(init) = instance.get_typed_func::<(), i32>(&mut store, abi::EXPORT_INIT) {
            self.arm(&mut store)?;
            let status = init
                .call(&mut store, ())
                .map_err(|source| LoadError::Trapped {
                    export: abi::EXPORT_INIT,
                    source,
                })?;
            if status != 0 {
                return Err(LoadError::InitStatus(status));
            }
        }
        let alloc = instance
            .get_typed_func(&mut store, abi::EXPORT_ALLOC)
            .map_err(|_| LoadError::MissingExport(abi::EXPORT_ALLOC))?;
        let on_message = instance
            .get_typed_func(&mut store, abi::EXPORT_ON_MESSAGE)
            .map_err(|_| LoadError::MissingExport(abi::EXPORT_ON_MESSAGE))?;
        Ok(RuleInstance {
            store,
            memory,
            alloc,
            on_message,
            input_ptr: 0,
            input_cap: 0,
            deadline_ticks: self.deadline_ticks(),
            fuel_budget: self.fuel_budget(),
            last_fuel_used: 0,
            poisoned: false,
        })
    }
}

/// One live instance of a rule, reused for every message a worker hands it.
pub struct RuleInstance {
    store: Store<HostState>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    on_message: TypedFunc<(i32, i32), i32>,
    input_ptr: u32,
    input_cap: u32,
    deadline_ticks: u64,
    fuel_budget: u64,
    last_fuel_used: u64,
    poisoned: bool,
}

impl std::fmt::Debug for RuleInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleInstance")
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl RuleInstance {
    /// Runs the rule on one message.
    pub fn call(&mut self, input: &RuleInput<'_>) -> Result<Outcome, RuleFailure> {
        let len = u32::try_from(input.payload.len()).map_err(|_| RuleFailure {
            kind: FailureKind::Trap,
            message: "payload larger than 4 GiB".into(),
        })?;
        self.store.data_mut().call.begin(input);
        self.store.set_epoch_deadline(self.deadline_ticks);
        let result = match self.store.set_fuel(self.fuel_budget) {
            Ok(()) => self.call_inner(input.payload, len),
            Err(e) => Err(e),
        };
        self.last_fuel_used = self
            .fuel_budget
            .saturating_sub(self.store.get_fuel().unwrap_or(0));
        let state = self.store.data_mut();
        let exceeded = std::mem::replace(&mut state.limits.exceeded, false);
        state
            .call
            .log
            .summarize(&state.log_limits, &state.binding.log, &state.call.topic);
        // The call state stays in place (its buffers are reused by the next call); only what
        // the outcome carries is taken out of it.
        let call = &mut state.call;
        match result {
            Err(err) => {
                // A trapped instance may hold broken state; the caller replaces it.
                self.poisoned = true;
                Err(classify(err, call, exceeded))
            }
            Ok(status) => {
                if let Some(violation) = call.violation.take() {
                    return Err(RuleFailure {
                        kind: FailureKind::MalformedDecision,
                        message: violation,
                    });
                }
                // A SQL rule's payload that its data type refuses: OK, counted apart.
                call.invalid_payload = status == crate::rules::sql::STATUS_INVALID_PAYLOAD;
                match Status::from_code(status) {
                    Some(Status::Ok) => Ok(Outcome::Emitted(std::mem::take(&mut call.decisions))),
                    None if call.invalid_payload => Ok(Outcome::Emitted(Vec::new())),
                    Some(Status::Drop) => Ok(Outcome::Dropped),
                    Some(Status::Failed) => Err(RuleFailure {
                        kind: FailureKind::RuleError,
                        message: call
                            .failure
                            .take()
                            .unwrap_or_else(|| "the rule failed the message".into()),
                    }),
                    _ => Err(RuleFailure {
                        kind: FailureKind::BadStatus,
                        message: format!(
                            "sluice_on_message returned {status}; expected OK (0), DROP (1) or FAILED (-1)"
                        ),
                    }),
                }
            }
        }
    }

    /// Fuel the last [`RuleInstance::call`] used: about how many Wasm instructions the rule ran,
    /// a CPU cost that does not depend on what else the machine was doing.
    pub fn last_fuel_used(&self) -> u64 {
        self.last_fuel_used
    }

    /// True when the last [`RuleInstance::call`] found the payload invalid for the rule's data
    /// type (a json rule given bytes that are not a JSON object).
    pub fn last_payload_invalid(&self) -> bool {
        self.store.data().call.invalid_payload
    }

    /// Log lines the last [`RuleInstance::call`] dropped past the log caps.
    pub fn last_log_dropped(&self) -> u64 {
        self.store.data().call.log.dropped_lines()
    }

    /// True after a trap: the instance should be replaced before the next message.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    fn call_inner(&mut self, payload: &[u8], len: u32) -> wasmtime::Result<i32> {
        if len > self.input_cap || self.input_ptr == 0 {
            let want = len.max(1024).next_power_of_two();
            let ptr = self.alloc.call(&mut self.store, want as i32)? as u32;
            if ptr == 0 {
                return Err(wasmtime::Error::msg(format!(
                    "sluice_alloc could not allocate {want} bytes"
                )));
            }
            self.input_ptr = ptr;
            self.input_cap = want;
        }
        let start = self.input_ptr as usize;
        let Some(dst) = self
            .memory
            .data_mut(&mut self.store)
            .get_mut(start..start + payload.len())
        else {
            self.store.data_mut().call.bad_pointer = true;
            return Err(wasmtime::Error::msg(
                "sluice_alloc returned a buffer outside memory",
            ));
        };
        dst.copy_from_slice(payload);
        self.on_message
            .call(&mut self.store, (self.input_ptr as i32, len as i32))
    }
}

fn classify(err: wasmtime::Error, call: &CallState, memory_exceeded: bool) -> RuleFailure {
    let message = format!("{err:#}");
    let kind = if call.bad_pointer {
        FailureKind::BadPointer
    } else if memory_exceeded {
        FailureKind::OutOfMemory
    } else if call.out_of_fuel {
        FailureKind::Timeout
    } else {
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) | Some(Trap::OutOfFuel) => FailureKind::Timeout,
            Some(Trap::StackOverflow) => FailureKind::StackOverflow,
            _ => FailureKind::Trap,
        }
    };
    let message = match kind {
        FailureKind::Timeout => "the call exceeded its CPU bound".to_string(),
        FailureKind::OutOfMemory => "the instance reached its memory cap".to_string(),
        FailureKind::StackOverflow => "the guest's stack overflowed".to_string(),
        _ => message,
    };
    RuleFailure { kind, message }
}
