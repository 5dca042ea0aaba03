//! The most recently compiled modules, kept by content so the same bytes compile once.

use std::sync::Arc;

use wasmtime::Module;

/// The most recently compiled modules, by content. Compiling is the expensive step of every
/// lifecycle change (milliseconds in release, most of a second in a debug build), and the same
/// bytes come back often: `start` after `stop`, an update that changes only actions, a rollback
/// to the previous version. Small and bounded; the least recently used entry goes first.
#[derive(Default)]
pub(super) struct CompiledCache {
    entries: Vec<(u64, Arc<[u8]>, Module)>,
}

/// Enough for the working set of a busy rule set's recent changes; compiled code is not small.
const COMPILED_CACHE_ENTRIES: usize = 16;

impl CompiledCache {
    pub(super) fn key(wasm: &[u8]) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        wasm.hash(&mut h);
        h.finish()
    }

    pub(super) fn get(&mut self, key: u64, wasm: &[u8]) -> Option<Module> {
        let i = self
            .entries
            .iter()
            .position(|(k, bytes, _)| *k == key && &bytes[..] == wasm)?;
        let entry = self.entries.remove(i);
        let module = entry.2.clone();
        self.entries.push(entry);
        Some(module)
    }

    pub(super) fn put(&mut self, key: u64, wasm: &[u8], module: Module) {
        if self.entries.len() >= COMPILED_CACHE_ENTRIES {
            self.entries.remove(0);
        }
        self.entries.push((key, wasm.into(), module));
    }
}

#[cfg(test)]
mod tests {
    use wasmtime::Engine;

    use super::*;

    #[test]
    fn the_compiled_cache_reuses_equal_bytes_and_evicts_the_least_recently_used() {
        let engine = Engine::default();
        let wat = |n: usize| format!("(module (func (export \"f{n}\")))").into_bytes();
        let mut cache = CompiledCache::default();
        for n in 0..COMPILED_CACHE_ENTRIES {
            let bytes = wat(n);
            let module = Module::new(&engine, &bytes).unwrap();
            cache.put(CompiledCache::key(&bytes), &bytes, module);
        }
        // Touch module 0 so module 1 is now the least recently used.
        let zero = wat(0);
        assert!(cache.get(CompiledCache::key(&zero), &zero).is_some());
        let extra = wat(999);
        cache.put(
            CompiledCache::key(&extra),
            &extra,
            Module::new(&engine, &extra).unwrap(),
        );
        assert_eq!(cache.entries.len(), COMPILED_CACHE_ENTRIES);
        let one = wat(1);
        assert!(
            cache.get(CompiledCache::key(&one), &one).is_none(),
            "LRU entry evicted"
        );
        assert!(cache.get(CompiledCache::key(&zero), &zero).is_some());
        // Same hash, different bytes never match.
        assert!(cache.get(CompiledCache::key(&zero), &one).is_none());
    }
}
