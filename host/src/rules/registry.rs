//! Rule lifecycle: create (stopped), start, stop, update, delete — validated, persisted in the
//! [`RuleCatalog`], then installed in the [`RuleEngine`]. Every change is checked in full before
//! anything is written, so a rejected rule or module changes nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::actions::{Action, Grant};
use super::catalog::{CatalogError, RuleCatalog};
use super::engine::{CounterSnapshot, RuleEngine, RuleError};
use super::spec::{RuleSource, RuleSpec, RuleState};

/// Why a lifecycle operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No rule of that name.
    #[error("rule `{0}` does not exist")]
    NotFound(String),
    /// A rule of that name exists.
    #[error("rule `{0}` already exists; use `rule update` to change it")]
    Exists(String),
    /// The rule is invalid.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// A rule as `rule list` and `rule show` present it: no module bytes, counters included.
#[derive(Debug, Clone, Serialize)]
pub struct RuleView {
    /// Name.
    pub name: String,
    /// `sql` or `wasm`.
    pub kind: &'static str,
    /// FROM filter.
    pub from: String,
    /// `json` or `binary`.
    pub data_type: &'static str,
    /// Actions in CLI spelling.
    pub actions: Vec<String>,
    /// Error action in CLI spelling.
    pub error_action: Option<String>,
    /// The grant.
    pub grant: Grant,
    /// `stopped` or `running`.
    pub state: &'static str,
    /// Raised by every update.
    pub version: u64,
    /// The SQL text of a SQL rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// Size of an uploaded module.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module_bytes: Option<usize>,
    /// Why the rule could not be loaded at start, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_error: Option<String>,
    /// Counters since start.
    pub counters: CounterSnapshot,
}

/// The rule registry.
pub struct RuleRegistry {
    engine: Arc<RuleEngine>,
    catalog: Box<dyn RuleCatalog>,
    rules: Mutex<BTreeMap<String, (RuleSpec, Option<String>)>>,
}

impl std::fmt::Debug for RuleRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleRegistry").finish_non_exhaustive()
    }
}

impl RuleRegistry {
    /// Loads every stored rule; a rule that fails to load stays in the list with its error and
    /// does not run, and the others start as stored.
    pub fn open(
        engine: Arc<RuleEngine>,
        catalog: Box<dyn RuleCatalog>,
    ) -> Result<RuleRegistry, CatalogError> {
        let mut rules = BTreeMap::new();
        for spec in catalog.load_all()? {
            let error = match engine.install(&spec) {
                Ok(()) => None,
                Err(e) => {
                    tracing::error!("{e}; the rule stays stopped until it is fixed");
                    Some(e.to_string())
                }
            };
            rules.insert(spec.name.clone(), (spec, error));
        }
        Ok(RuleRegistry {
            engine,
            catalog,
            rules: Mutex::new(rules),
        })
    }

    /// The engine the rules run in.
    /// Makes the running rules match the catalog again (on a shared catalog, after another
    /// process changed it): rules added or changed there are installed (a failing one is kept
    /// stopped with its error, as at start), rules gone from it are removed. Nothing is
    /// written. Returns how many rules changed.
    pub fn follow_catalog(&self) -> Result<usize, CatalogError> {
        let stored: BTreeMap<String, RuleSpec> = self
            .catalog
            .load_all()?
            .into_iter()
            .map(|spec| (spec.name.clone(), spec))
            .collect();
        let mut rules = self.lock();
        let gone: Vec<String> = rules
            .keys()
            .filter(|name| !stored.contains_key(*name))
            .cloned()
            .collect();
        let mut changed = gone.len();
        for name in gone {
            self.engine.remove(&name);
            rules.remove(&name);
            tracing::info!(rule = %name, "rule deleted through another process");
        }
        for (name, spec) in stored {
            if rules.get(&name).is_some_and(|(held, _)| *held == spec) {
                continue;
            }
            let error = match self.engine.install(&spec) {
                Ok(()) => None,
                Err(e) => {
                    tracing::error!("{e}; the rule stays stopped until it is fixed");
                    self.engine.stop(&name);
                    Some(e.to_string())
                }
            };
            tracing::info!(rule = %name, version = spec.version, state = spec.state.as_str(),
                "rule changed through another process");
            rules.insert(name, (spec, error));
            changed += 1;
        }
        Ok(changed)
    }

    pub fn engine(&self) -> &Arc<RuleEngine> {
        &self.engine
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (RuleSpec, Option<String>)>> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Does a rule of that name exist?
    pub fn contains(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    /// Creates a rule. `spec.version` is set to 1. The module is compiled and checked before
    /// the registry is locked (compiling takes milliseconds; `list` and `show` should not wait
    /// for it), and nothing is written unless every check passed.
    pub fn create(&self, mut spec: RuleSpec) -> Result<RuleView, RegistryError> {
        if self.contains(&spec.name) {
            return Err(RegistryError::Exists(spec.name));
        }
        spec.version = 1;
        let module = self.engine.validate(&spec)?;
        let mut rules = self.lock();
        if rules.contains_key(&spec.name) {
            return Err(RegistryError::Exists(spec.name));
        }
        self.catalog.save(&spec)?;
        self.engine.install_module(&spec, module);
        let view = self.view(&spec, None);
        rules.insert(spec.name.clone(), (spec, None));
        Ok(view)
    }

    /// Replaces a rule's definition, keeping its state; the version goes up by one. A running
    /// rule switches in one snapshot swap: messages a worker already holds finish on the old
    /// version, every later one runs on the new (see [`super::engine`]).
    pub fn update(&self, mut spec: RuleSpec) -> Result<RuleView, RegistryError> {
        if !self.contains(&spec.name) {
            return Err(RegistryError::NotFound(spec.name));
        }
        // The version and state do not affect validation; they are settled under the lock.
        let module = self.engine.validate(&spec)?;
        let mut rules = self.lock();
        let (old, _) = rules
            .get(&spec.name)
            .ok_or_else(|| RegistryError::NotFound(spec.name.clone()))?;
        spec.version = old.version + 1;
        spec.state = old.state;
        self.catalog.save(&spec)?;
        self.engine.install_module(&spec, module);
        let view = self.view(&spec, None);
        rules.insert(spec.name.clone(), (spec, None));
        Ok(view)
    }

    /// Starts or stops a rule. Starting checks everything again (grant, module), since the
    /// rule may have been stored by an older sluice or failed to load at start.
    pub fn set_state(&self, name: &str, state: RuleState) -> Result<RuleView, RegistryError> {
        let mut rules = self.lock();
        let (spec, _) = rules
            .get(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        let mut spec = spec.clone();
        spec.state = state;
        let module = match state {
            RuleState::Running => Some(self.engine.validate(&spec)?),
            RuleState::Stopped => None,
        };
        self.catalog.save(&spec)?;
        match module {
            Some(module) => self.engine.install_module(&spec, module),
            None => self.engine.stop(name),
        }
        let view = self.view(&spec, None);
        rules.insert(spec.name.clone(), (spec, None));
        Ok(view)
    }

    /// Deletes a rule.
    pub fn delete(&self, name: &str) -> Result<(), RegistryError> {
        let mut rules = self.lock();
        if !rules.contains_key(name) {
            return Err(RegistryError::NotFound(name.to_string()));
        }
        self.catalog.delete(name)?;
        self.engine.remove(name);
        rules.remove(name);
        Ok(())
    }

    /// One rule.
    pub fn get(&self, name: &str) -> Result<RuleView, RegistryError> {
        let rules = self.lock();
        let (spec, error) = rules
            .get(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        Ok(self.view(spec, error.clone()))
    }

    /// Every rule, by name.
    pub fn list(&self) -> Vec<RuleView> {
        self.lock()
            .values()
            .map(|(spec, error)| self.view(spec, error.clone()))
            .collect()
    }

    fn view(&self, spec: &RuleSpec, load_error: Option<String>) -> RuleView {
        RuleView {
            name: spec.name.clone(),
            kind: spec.source.kind(),
            from: spec.from_filter.clone(),
            data_type: spec.data_type.as_str(),
            actions: spec.actions.iter().map(Action::spec).collect(),
            error_action: spec.error_action.as_ref().map(Action::spec),
            grant: spec.grant.clone(),
            state: spec.state.as_str(),
            version: spec.version,
            sql: match &spec.source {
                RuleSource::Sql { sql } => Some(sql.clone()),
                RuleSource::Wasm { .. } => None,
            },
            module_bytes: match &spec.source {
                RuleSource::Wasm { module } => Some(module.len()),
                RuleSource::Sql { .. } => None,
            },
            load_error,
            counters: self.engine.counters_for(&spec.name).snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::rules::catalog::{CatalogError, RuleCatalog};
    use crate::rules::runtime::{RuleRuntime, SandboxConfig};
    use crate::rules::spec::RuleDefinition;

    /// A catalog in memory, holding whatever a test stored (as an older sluice might have).
    #[derive(Default)]
    struct Memory(Mutex<Vec<RuleSpec>>);

    impl RuleCatalog for Memory {
        fn load_all(&self) -> Result<Vec<RuleSpec>, CatalogError> {
            Ok(self.0.lock().unwrap().clone())
        }
        fn save(&self, spec: &RuleSpec) -> Result<(), CatalogError> {
            let mut rules = self.0.lock().unwrap();
            rules.retain(|r| r.name != spec.name);
            rules.push(spec.clone());
            Ok(())
        }
        fn delete(&self, name: &str) -> Result<bool, CatalogError> {
            let mut rules = self.0.lock().unwrap();
            let before = rules.len();
            rules.retain(|r| r.name != name);
            Ok(rules.len() != before)
        }
    }

    #[test]
    fn starting_a_stored_rule_outside_its_grant_is_refused_and_it_stays_stopped() {
        let spec = RuleDefinition {
            sql: Some(r#"SELECT t FROM "/pk/+/user/update" WHERE t > 1"#.into()),
            actions: vec!["forward:alerts".into()],
            grant: Some(vec!["forward:audit".into()]),
            ..RuleDefinition::default()
        }
        .into_spec("stored")
        .expect("the definition itself is well formed");
        let catalog = Memory::default();
        catalog.save(&spec).unwrap();
        let runtime = Arc::new(RuleRuntime::new(SandboxConfig::default()).unwrap());
        let registry =
            RuleRegistry::open(Arc::new(RuleEngine::new(runtime, None)), Box::new(catalog))
                .unwrap();

        let err = registry
            .set_state("stored", RuleState::Running)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("grant") && err.contains("alerts"),
            "the refusal names the grant and the action: {err}"
        );
        let view = registry.get("stored").unwrap();
        assert_eq!(view.state, "stopped");
        assert!(registry.engine().running_filters().is_empty());
    }
}
