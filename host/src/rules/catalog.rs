//! Where rule definitions are kept. [`RuleCatalog`] is the seam: the registry loads, saves and
//! deletes rules through it without knowing where they live (sluice keeps them as records in
//! its store, on either backend). The stored form of a rule is owned here: [`encode`] and
//! [`decode`] turn a [`RuleSpec`] into the JSON document that is stored and back.

use super::spec::RuleSpec;

/// Why the catalog failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The storage behind the catalog could not be read or written.
    #[error("rule catalog: {what}: {source}")]
    Storage {
        /// What was being done (`saving rule \`x\``, `loading the rules`, ...).
        what: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stored rule could not be decoded.
    #[error("rule catalog: stored rule `{name}` is unreadable: {source}")]
    Corrupt {
        /// The rule.
        name: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Durable storage of rule definitions. Called from plain threads (rule changes compile
/// modules and run off the async workers), never from an async task.
pub trait RuleCatalog: Send + Sync + 'static {
    /// Every stored rule, by name.
    fn load_all(&self) -> Result<Vec<RuleSpec>, CatalogError>;
    /// Inserts or replaces a rule.
    fn save(&self, spec: &RuleSpec) -> Result<(), CatalogError>;
    /// Removes a rule; true when it existed.
    fn delete(&self, name: &str) -> Result<bool, CatalogError>;
}

/// A rule as stored: its spec as JSON.
pub fn encode(spec: &RuleSpec) -> Result<String, CatalogError> {
    serde_json::to_string(spec).map_err(|source| CatalogError::Corrupt {
        name: spec.name.clone(),
        source,
    })
}

/// A stored rule read back.
pub fn decode(name: &str, stored: &str) -> Result<RuleSpec, CatalogError> {
    serde_json::from_str(stored).map_err(|source| CatalogError::Corrupt {
        name: name.to_owned(),
        source,
    })
}
