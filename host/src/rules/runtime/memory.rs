//! The memory cap of each instance (a [`wasmtime::ResourceLimiter`] over its linear memory and
//! table together) and the sandbox-wide record of what live instances hold.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sluice_guest::abi;
use wasmtime::ResourceLimiter;

use super::config::TABLE_ELEMENT_BYTES;

/// What the sandbox holds right now, over all rules and workers: read by `/metrics`, and the
/// way to see that a deleted rule's memory went back.
#[derive(Debug, Default)]
pub struct SandboxUsage {
    instances: AtomicU64,
    memory_bytes: AtomicU64,
}

impl SandboxUsage {
    /// Live instances (one per running rule per worker that ran it, plus a trial instance while
    /// a module is checked).
    pub fn instances(&self) -> u64 {
        self.instances.load(Ordering::Relaxed)
    }

    /// Linear memory and tables of every live instance, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes.load(Ordering::Relaxed)
    }
}

/// Caps what one instance holds — its linear memory and its table together — and keeps the
/// sandbox-wide [`SandboxUsage`] current. The instance has one memory and one table at most
/// (refused at load, and enforced here by [`ResourceLimiter::memories`] and
/// [`ResourceLimiter::tables`]), so the `current` size wasmtime passes on each growth is that
/// one's true size: it corrects the record after a growth this limiter allowed but wasmtime then
/// refused (past the module's declared maximum).
pub(super) struct InstanceLimits {
    max_bytes: usize,
    memory_bytes: usize,
    table_bytes: usize,
    /// A growth was refused by the cap (the failure is then `out_of_memory`).
    pub(super) exceeded: bool,
    usage: Arc<SandboxUsage>,
}

impl InstanceLimits {
    pub(super) fn new(max_bytes: usize, usage: Arc<SandboxUsage>) -> InstanceLimits {
        usage.instances.fetch_add(1, Ordering::Relaxed);
        InstanceLimits {
            max_bytes,
            memory_bytes: 0,
            table_bytes: 0,
            exceeded: false,
            usage,
        }
    }

    /// Sets one of the two records to `bytes`, and the sandbox-wide total with it.
    fn record(usage: &SandboxUsage, slot: &mut usize, bytes: usize) {
        let (old, new) = (*slot as u64, bytes as u64);
        if new >= old {
            usage.memory_bytes.fetch_add(new - old, Ordering::Relaxed);
        } else {
            usage.memory_bytes.fetch_sub(old - new, Ordering::Relaxed);
        }
        *slot = bytes;
    }

    /// Allows a growth to `desired` bytes when the other record plus it fits the cap.
    fn grow(&mut self, table: bool, current: usize, desired: usize) -> bool {
        let (slot, other) = if table {
            (&mut self.table_bytes, self.memory_bytes)
        } else {
            (&mut self.memory_bytes, self.table_bytes)
        };
        Self::record(&self.usage, slot, current);
        if other.saturating_add(desired) > self.max_bytes {
            self.exceeded = true;
            return false;
        }
        Self::record(&self.usage, slot, desired);
        true
    }
}

impl Drop for InstanceLimits {
    fn drop(&mut self) {
        let held = (self.memory_bytes + self.table_bytes) as u64;
        self.usage.memory_bytes.fetch_sub(held, Ordering::Relaxed);
        self.usage.instances.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ResourceLimiter for InstanceLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(false, current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(
            true,
            current.saturating_mul(TABLE_ELEMENT_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_BYTES),
        ))
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        abi::MAX_MEMORIES as usize
    }

    fn tables(&self) -> usize {
        abi::MAX_TABLES as usize
    }
}
