//! The rule catalog on the store: each rule is a record of kind [`RULES`] keyed by its name,
//! in the JSON form the rules layer defines ([`crate::rules::catalog::encode`]). This is where
//! the two layers meet; neither knows the other.
//!
//! Data directories of earlier versions kept rules in a file of their own, `rules.db`; at
//! start its rules are copied into the store once and the file is renamed
//! `rules.db.imported`, so nothing is read twice and nothing is lost.

use std::path::Path;

use tokio::runtime::Handle;

use crate::rules::catalog::{decode, encode, CatalogError, RuleCatalog};
use crate::rules::spec::RuleSpec;
use crate::store::{Record, Store, StoreError};

/// The record kind of rules.
pub const RULES: &str = "rules";

/// The file earlier versions kept rules in.
const LEGACY_FILE: &str = "rules.db";

/// Rules as store records. Its methods block on the store: call them from plain threads
/// (`spawn_blocking`), never from an async task.
#[derive(Debug, Clone)]
pub struct StoredRules {
    store: Store,
    runtime: Handle,
}

impl StoredRules {
    /// The catalog on `store`; call it on the runtime (the store's requests run there).
    pub fn new(store: Store) -> StoredRules {
        StoredRules {
            store,
            runtime: Handle::current(),
        }
    }

    fn wait<T>(
        &self,
        what: impl FnOnce() -> String,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, CatalogError> {
        self.runtime
            .block_on(work)
            .map_err(|e| CatalogError::Storage {
                what: what(),
                source: Box::new(e),
            })
    }
}

impl RuleCatalog for StoredRules {
    fn load_all(&self) -> Result<Vec<RuleSpec>, CatalogError> {
        let records = self.wait(
            || "loading the rules".into(),
            self.store.list_records(RULES),
        )?;
        records.iter().map(|r| decode(&r.key, &r.value)).collect()
    }

    fn save(&self, spec: &RuleSpec) -> Result<(), CatalogError> {
        let record = Record {
            key: spec.name.clone(),
            value: encode(spec)?,
        };
        self.wait(
            || format!("saving rule `{}`", spec.name),
            self.store.put_record(RULES, record),
        )
    }

    fn delete(&self, name: &str) -> Result<bool, CatalogError> {
        self.wait(
            || format!("deleting rule `{name}`"),
            self.store.delete_record(RULES, name),
        )
    }
}

/// Why the rules of an earlier version's `rules.db` could not be brought over.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("reading the rules of {path}: {source}; move the file away to start without them")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// The read was cut short (the process is shutting down).
    #[error("reading the rules of {path}: {source}")]
    Interrupted {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The store refused a rule.
    #[error("importing rule `{name}` from {path}: {source}")]
    Store {
        /// The file.
        path: String,
        /// The rule.
        name: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The file could not be renamed once imported.
    #[error("renaming {path} after importing its rules: {source}")]
    Rename {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Copies the rules of an earlier version's `rules.db` in `data_dir` into the store (a rule the
/// store has already is left as it is) and renames the file `rules.db.imported`. Returns how
/// many rules were copied; 0 when there is no such file.
pub async fn import_legacy_rules(store: &Store, data_dir: &Path) -> Result<usize, ImportError> {
    let file = data_dir.join(LEGACY_FILE);
    if !file.exists() {
        return Ok(0);
    }
    let path = file.display().to_string();
    let read = {
        let file = file.clone();
        tokio::task::spawn_blocking(move || -> rusqlite::Result<Vec<(String, String)>> {
            let conn = rusqlite::Connection::open_with_flags(
                &file,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?;
            let mut stmt = conn.prepare("SELECT name, spec FROM rules ORDER BY name")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
        .map_err(|source| ImportError::Interrupted {
            path: path.clone(),
            source,
        })?
    };
    let rules = read.map_err(|source| ImportError::Read {
        path: path.clone(),
        source,
    })?;
    let mut copied = 0;
    for (name, spec) in rules {
        let record = Record {
            key: name.clone(),
            value: spec,
        };
        let inserted =
            store
                .insert_record(RULES, record)
                .await
                .map_err(|source| ImportError::Store {
                    path: path.clone(),
                    name,
                    source,
                })?;
        copied += usize::from(inserted);
    }
    let imported = data_dir.join(format!("{LEGACY_FILE}.imported"));
    std::fs::rename(&file, &imported).map_err(|source| ImportError::Rename {
        path: path.clone(),
        source,
    })?;
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(data_dir.join(format!("{LEGACY_FILE}{suffix}")));
    }
    tracing::info!(file = %path, rules = copied, "rules of an earlier version imported into the store");
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn rules_of_an_old_rules_db_are_imported_once_and_saved_as_records() {
        // Proves the upgrade path and the catalog: a `rules.db` of an earlier version is copied
        // into the store and renamed, a second start imports nothing, and the catalog then
        // saves, lists and deletes rules as store records that survive a reopen.
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::rules::spec::RuleDefinition {
            sql: Some(r#"SELECT t FROM "/pk/+/user/update" WHERE t > 1"#.into()),
            actions: vec!["forward:alerts".into()],
            ..Default::default()
        }
        .into_spec("old")
        .unwrap();
        {
            let conn = rusqlite::Connection::open(dir.path().join(LEGACY_FILE)).unwrap();
            conn.execute_batch(
                "CREATE TABLE rules (name TEXT PRIMARY KEY, spec TEXT NOT NULL,
                                     updated_ms INTEGER NOT NULL);",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO rules VALUES ('old', ?1, 1)",
                [encode(&spec).unwrap()],
            )
            .unwrap();
        }
        let store = Store::open(dir.path(), Default::default()).unwrap();
        assert_eq!(import_legacy_rules(&store, dir.path()).await.unwrap(), 1);
        assert!(!dir.path().join(LEGACY_FILE).exists());
        assert!(dir.path().join("rules.db.imported").exists());
        assert_eq!(import_legacy_rules(&store, dir.path()).await.unwrap(), 0);

        let catalog = StoredRules::new(store.clone());
        let (loaded, saved) = tokio::task::spawn_blocking(move || {
            let loaded = catalog.load_all().unwrap();
            let mut second = loaded[0].clone();
            second.name = "second".into();
            catalog.save(&second).unwrap();
            assert!(catalog.delete("old").unwrap());
            assert!(!catalog.delete("old").unwrap());
            (loaded, catalog.load_all().unwrap())
        })
        .await
        .unwrap();
        assert_eq!(loaded, vec![spec]);
        assert_eq!(saved.len(), 1);
        assert_eq!(saved[0].name, "second");
        store.close().await.unwrap();

        let store = Store::open(dir.path(), Default::default()).unwrap();
        let names: Vec<String> = store
            .list_records(RULES)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.key)
            .collect();
        assert_eq!(names, vec!["second"]);
        store.close().await.unwrap();
    }
}
