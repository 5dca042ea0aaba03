//! Loading a module: compiling it (or taking it from the cache), checking it against ABI v1
//! (imports, exports, memories and tables, version) and proving it starts.

use sluice_guest::abi::{self, imports};
use wasmtime::{ExternType, FuncType, InstancePre, Module, Trap, ValType};

use super::cache::CompiledCache;
use super::host_fns::HostState;
use super::input::{Binding, Environment};
use super::outcome::FailureKind;
use super::RuleRuntime;

/// Why a module was refused at load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not valid WebAssembly (or not compilable).
    #[error("not a valid WebAssembly module: {0:#}")]
    Invalid(#[source] wasmtime::Error),
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
        "imports `{}::{name}` with the wrong signature: expected {expected}, found {found} (see guest-sdk/ABI.md)",
        abi::IMPORT_MODULE
    )]
    ImportSignature {
        /// Import name.
        name: String,
        /// The signature sluice provides, as `(i32, i32) -> i32`.
        expected: String,
        /// What the module imports it as.
        found: String,
    },
    /// The module's imports passed the checks above but could not be linked.
    #[error("cannot be linked to the `{module}` imports: {0:#}", module = abi::IMPORT_MODULE)]
    Link(#[source] wasmtime::Error),
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
    /// Instantiation failed (a start function trapped, a data segment is out of bounds, ...).
    #[error("failed to start: {0:#}")]
    Instantiate(#[source] wasmtime::Error),
    /// The module's initial memory or table does not fit the sandbox's memory cap.
    #[error("failed to start: its initial memory exceeds the sandbox cap of {max_bytes} bytes")]
    MemoryCap {
        /// The cap.
        max_bytes: usize,
        /// Instantiation's own error.
        #[source]
        source: wasmtime::Error,
    },
    /// `sluice_abi_version` or `sluice_init` trapped.
    #[error("failed to start: {export} trapped: {source:#}")]
    Trapped {
        /// The export called.
        export: &'static str,
        /// The trap.
        #[source]
        source: wasmtime::Error,
    },
    /// `sluice_init` returned a status other than OK.
    #[error("failed to start: sluice_init returned {0} (expected 0)")]
    InitStatus(i32),
    /// The call's CPU budget could not be set.
    #[error("failed to start: cannot set the CPU budget: {0:#}")]
    Budget(#[source] wasmtime::Error),
}

impl LoadError {
    /// How a message fails when its rule's instance cannot be made for it (an instance is made
    /// again after a trap): by the trap that stopped `sluice_init` or the start, read from its
    /// code, or at the memory cap.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            LoadError::MemoryCap { .. } => FailureKind::OutOfMemory,
            LoadError::Instantiate(source) | LoadError::Trapped { source, .. } => {
                match source.downcast_ref::<Trap>() {
                    Some(Trap::Interrupt | Trap::OutOfFuel) => FailureKind::Timeout,
                    Some(Trap::StackOverflow) => FailureKind::StackOverflow,
                    _ => FailureKind::Trap,
                }
            }
            _ => FailureKind::Trap,
        }
    }
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
            if let Some(provided) = self.import_types.get(import.name()) {
                let found = import.ty();
                // As wasmtime links: what sluice provides must be a subtype of the import.
                if !matches!(&found, ExternType::Func(f) if provided.matches(f)) {
                    return Err(LoadError::ImportSignature {
                        name: import.name().to_string(),
                        expected: signature(provided),
                        found: describe(&found),
                    });
                }
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
            .map_err(LoadError::Link)?;
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
        let module = Module::new(&self.engine, wasm).map_err(LoadError::Invalid)?;
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

/// A function type as guest-sdk/ABI.md writes it: `(i32, i32) -> i32`.
fn signature(f: &FuncType) -> String {
    let params: Vec<String> = f.params().map(|t| t.to_string()).collect();
    let results: Vec<String> = f.results().map(|t| t.to_string()).collect();
    let results = match &results[..] {
        [one] => one.clone(),
        more => format!("({})", more.join(", ")),
    };
    format!("({}) -> {results}", params.join(", "))
}

/// What a module imports a name as.
fn describe(ty: &ExternType) -> String {
    match ty {
        ExternType::Func(f) => signature(f),
        ExternType::Global(_) => "a global".into(),
        ExternType::Table(_) => "a table".into(),
        ExternType::Memory(_) => "a memory".into(),
        ExternType::Tag(_) => "a tag".into(),
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
    use std::error::Error as _;
    use std::time::Duration;

    use super::super::{RuleRuntime, SandboxConfig};
    use super::*;

    /// A module of ABI v1 with `extra` in it (imports first).
    fn module(extra: &str) -> Vec<u8> {
        format!(
            "(module {extra} (memory (export \"memory\") 1) \
             (func (export \"sluice_abi_version\") (result i32) i32.const 1) \
             (func (export \"sluice_alloc\") (param i32) (result i32) i32.const 0) \
             (func (export \"sluice_on_message\") (param i32 i32) (result i32) i32.const 0))"
        )
        .into_bytes()
    }

    fn runtime() -> RuleRuntime {
        RuleRuntime::new(SandboxConfig {
            call_timeout: Duration::from_millis(20),
            ..SandboxConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn an_import_of_the_wrong_type_is_named_with_both_signatures() {
        let rt = runtime();
        let e = rt
            .load(&module(
                "(import \"sluice_v1\" \"emit_output\" (func (param i64)))",
            ))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "imports `sluice_v1::emit_output` with the wrong signature: expected (i32, i32) -> i32, \
             found (i64) -> () (see guest-sdk/ABI.md)"
        );
        let e = rt
            .load(&module(
                "(import \"sluice_v1\" \"now_ms\" (func (result i32)))",
            ))
            .unwrap_err();
        assert!(
            e.to_string()
                .ends_with("expected () -> i64, found () -> i32 (see guest-sdk/ABI.md)"),
            "{e}"
        );
        let e = rt
            .load(&module("(import \"sluice_v1\" \"log\" (global i32))"))
            .unwrap_err();
        assert!(e.to_string().contains("found a global"), "{e}");
        // Every import with its own signature links.
        rt.load(&module(
            "(import \"sluice_v1\" \"log\" (func (param i32 i32 i32) (result i32))) \
             (import \"sluice_v1\" \"msg_timestamp_ms\" (func (result i64)))",
        ))
        .unwrap();
    }

    #[test]
    fn start_failures_keep_wasmtime_s_error_as_their_source() {
        let rt = runtime();
        let e = rt.load(b"not wasm").unwrap_err();
        assert!(matches!(e, LoadError::Invalid(_)), "{e:?}");
        assert!(e
            .to_string()
            .starts_with("not a valid WebAssembly module: "));
        assert!(e.source().is_some());

        let trap = module("(func (export \"sluice_init\") (result i32) unreachable)");
        let e = rt.load(&trap).unwrap_err();
        let LoadError::Trapped { export, source } = &e else {
            panic!("{e:?}");
        };
        assert_eq!(*export, abi::EXPORT_INIT);
        assert_eq!(
            source.downcast_ref::<Trap>(),
            Some(&Trap::UnreachableCodeReached)
        );
        assert!(
            e.to_string()
                .starts_with("failed to start: sluice_init trapped: "),
            "{e}"
        );
        assert!(e.source().is_some());
        assert_eq!(e.failure_kind(), FailureKind::Trap);

        let endless =
            module("(func (export \"sluice_init\") (result i32) (loop $l (br $l)) i32.const 0)");
        let e = rt.load(&endless).unwrap_err();
        assert_eq!(e.failure_kind(), FailureKind::Timeout, "{e}");

        let failing = module("(func (export \"sluice_init\") (result i32) i32.const -1)");
        let e = rt.load(&failing).unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed to start: sluice_init returned -1 (expected 0)"
        );

        let huge = String::from_utf8(module("")).unwrap().replace(
            "(memory (export \"memory\") 1)",
            "(memory (export \"memory\") 1000)",
        );
        let e = rt.load(huge.as_bytes()).unwrap_err();
        assert!(matches!(e, LoadError::MemoryCap { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "failed to start: its initial memory exceeds the sandbox cap of {} bytes",
                rt.config().max_memory_bytes
            )
        );
        assert!(e.source().is_some());
        assert_eq!(e.failure_kind(), FailureKind::OutOfMemory);
    }

    #[test]
    fn loading_the_same_module_twice_gives_the_same_checks() {
        let rt = RuleRuntime::new(SandboxConfig::default()).unwrap();
        let missing = b"(module (memory (export \"memory\") 1))";
        for _ in 0..2 {
            assert!(matches!(rt.load(missing), Err(LoadError::MissingExport(_))));
        }
    }
}
