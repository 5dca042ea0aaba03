//! Loading a module: compiling it (or taking it from the cache), checking it against ABI v1
//! (imports, exports, memories and tables, version) and proving it starts.

use sluice_guest::abi::{self, imports};
use wasmtime::{ExternType, InstancePre, Module, ValType};

use super::cache::CompiledCache;
use super::host_fns::HostState;
use super::input::{Binding, Environment};
use super::RuleRuntime;

/// Why a module was refused at load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not valid WebAssembly (or not compilable).
    #[error("not a valid WebAssembly module: {0}")]
    Invalid(String),
    /// An import outside the ABI.
    #[error("imports `{module}::{name}`, which sluice does not provide (rules may import only functions of `{}`; see guest-sdk/ABI.md)", abi::IMPORT_MODULE)]
    ForeignImport {
        /// Import module.
        module: String,
        /// Import name.
        name: String,
    },
    /// An ABI import with the wrong signature.
    #[error(
        "imports `{}::{name}` with the wrong signature: {detail}",
        abi::IMPORT_MODULE
    )]
    ImportSignature {
        /// Import name.
        name: String,
        /// What wasmtime said.
        detail: String,
    },
    /// A required export is missing.
    #[error("does not export `{0}` (required by ABI v1; see guest-sdk/ABI.md)")]
    MissingExport(&'static str),
    /// A required export has the wrong type.
    #[error("exports `{name}` with the wrong type: expected {expected}")]
    ExportSignature {
        /// Export name.
        name: &'static str,
        /// The type ABI v1 requires.
        expected: &'static str,
    },
    /// More memories or tables than ABI v1 allows: the memory cap covers one of each.
    #[error(
        "defines {found} {what}, but ABI v1 allows at most {max}; build the module with a single \
         linear memory (the exported `memory`) and at most one table (see guest-sdk/ABI.md)"
    )]
    TooMany {
        /// `linear memories` or `tables`.
        what: &'static str,
        /// How many the module defines.
        found: u32,
        /// How many ABI v1 allows.
        max: u32,
    },
    /// `sluice_abi_version` returned another version.
    #[error("speaks ABI version {0}, but this sluice runs version {ver} modules", ver = abi::ABI_VERSION)]
    AbiVersion(i32),
    /// Instantiation or `sluice_init` failed.
    #[error("failed to start: {0}")]
    Start(String),
}

impl RuleRuntime {
    /// Compiles and checks a module against ABI v1: imports, exports, version, and a trial
    /// instantiation (so a module that cannot start is refused now, not at its first message).
    pub fn load(&self, wasm: &[u8]) -> Result<RuleModule, LoadError> {
        let module = self.compile(wasm)?;
        let needs = module.resources_required();
        for (what, found, max) in [
            ("linear memories", needs.num_memories, abi::MAX_MEMORIES),
            ("tables", needs.num_tables, abi::MAX_TABLES),
        ] {
            if found > max {
                return Err(LoadError::TooMany { what, found, max });
            }
        }
        for import in module.imports() {
            if import.module() != abi::IMPORT_MODULE || !imports::ALL.contains(&import.name()) {
                return Err(LoadError::ForeignImport {
                    module: import.module().to_string(),
                    name: import.name().to_string(),
                });
            }
        }
        check_export(&module, abi::EXPORT_MEMORY, None)?;
        check_export(&module, abi::EXPORT_ABI_VERSION, Some((&[], "() -> i32")))?;
        check_export(
            &module,
            abi::EXPORT_ALLOC,
            Some((&[ValType::I32], "(i32) -> i32")),
        )?;
        check_export(
            &module,
            abi::EXPORT_ON_MESSAGE,
            Some((&[ValType::I32, ValType::I32], "(i32, i32) -> i32")),
        )?;
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| LoadError::ImportSignature {
                name: module
                    .imports()
                    .map(|i| i.name().to_string())
                    .find(|n| format!("{e:#}").contains(n.as_str()))
                    .unwrap_or_default(),
                detail: format!("{e:#}"),
            })?;
        let loaded = RuleModule {
            pre,
            module_bytes: wasm.len(),
        };
        // A trial instance proves the version, the memory cap and `sluice_init`.
        self.instantiate(&loaded, Binding::default(), Environment::default())?;
        Ok(loaded)
    }

    /// Compiles `wasm`, or takes the module compiled from the same bytes before. Only modules
    /// that compiled are cached; every other check of [`RuleRuntime::load`] runs every time.
    fn compile(&self, wasm: &[u8]) -> Result<Module, LoadError> {
        let key = CompiledCache::key(wasm);
        let cached = self
            .compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key, wasm);
        if let Some(module) = cached {
            return Ok(module);
        }
        // Compile outside the lock: two different modules compile in parallel.
        let module =
            Module::new(&self.engine, wasm).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        self.compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(key, wasm, module.clone());
        Ok(module)
    }
}

fn check_export(
    module: &Module,
    name: &'static str,
    func: Option<(&[ValType], &'static str)>,
) -> Result<(), LoadError> {
    let ty = module
        .get_export(name)
        .ok_or(LoadError::MissingExport(name))?;
    match (func, ty) {
        (None, ExternType::Memory(_)) => Ok(()),
        (None, _) => Err(LoadError::ExportSignature {
            name,
            expected: "a memory",
        }),
        (Some((params, expected)), ExternType::Func(f)) => {
            let params_ok = f.params().len() == params.len()
                && f.params().zip(params).all(|(a, b)| a.matches(b));
            let results: Vec<ValType> = f.results().collect();
            let results_ok = results.len() == 1 && results[0].matches(&ValType::I32);
            if params_ok && results_ok {
                Ok(())
            } else {
                Err(LoadError::ExportSignature { name, expected })
            }
        }
        (Some((_, expected)), _) => Err(LoadError::ExportSignature { name, expected }),
    }
}

/// A compiled, linked module: instantiating it is cheap.
#[derive(Clone)]
pub struct RuleModule {
    pub(super) pre: InstancePre<HostState>,
    pub(super) module_bytes: usize,
}

impl RuleModule {
    /// Size of the module as uploaded.
    pub fn size_bytes(&self) -> usize {
        self.module_bytes
    }
}

impl std::fmt::Debug for RuleModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleModule")
            .field("size_bytes", &self.module_bytes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{RuleRuntime, SandboxConfig};
    use super::*;

    #[test]
    fn loading_the_same_module_twice_gives_the_same_checks() {
        let rt = RuleRuntime::new(SandboxConfig::default()).unwrap();
        let missing = b"(module (memory (export \"memory\") 1))";
        for _ in 0..2 {
            assert!(matches!(rt.load(missing), Err(LoadError::MissingExport(_))));
        }
    }
}
