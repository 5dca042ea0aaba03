//! Where rule definitions are kept: a small SQLite file (`rules.db`) in the data directory,
//! written with `synchronous=FULL` (rules change rarely; losing one would be a surprise).
//! [`RuleCatalog`] is the seam the replicated catalog of the JetStream store implements
//! (`store::jetstream::shared`).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use super::spec::RuleSpec;

/// Why the catalog failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// SQLite failed.
    #[error("rule catalog {path}: {source}")]
    Sqlite {
        /// The file.
        path: String,
        /// Why.
        source: rusqlite::Error,
    },
    /// The cluster's rule bucket (JetStream store) could not be read or written.
    #[error("rule catalog: rule `{name}` in the cluster: {message}")]
    Cluster {
        /// The rule.
        name: String,
        /// Why.
        message: String,
    },
    /// A stored rule could not be decoded.
    #[error("rule catalog: stored rule `{name}` is unreadable: {message}")]
    Corrupt {
        /// The rule.
        name: String,
        /// Why.
        message: String,
    },
}

/// Durable storage of rule definitions.
pub trait RuleCatalog: Send + Sync + 'static {
    /// Every stored rule.
    fn load_all(&self) -> Result<Vec<RuleSpec>, CatalogError>;
    /// Inserts or replaces a rule.
    fn save(&self, spec: &RuleSpec) -> Result<(), CatalogError>;
    /// Removes a rule; true when it existed.
    fn delete(&self, name: &str) -> Result<bool, CatalogError>;
}

/// The SQLite rule catalog.
#[derive(Debug)]
pub struct SqliteRuleCatalog {
    path: String,
    conn: Mutex<Connection>,
}

impl SqliteRuleCatalog {
    /// Opens (or creates, 0600) `rules.db` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<SqliteRuleCatalog, CatalogError> {
        let file = data_dir.join("rules.db");
        let path = file.display().to_string();
        let err = |source| CatalogError::Sqlite {
            path: path.clone(),
            source,
        };
        let existed = file.exists();
        let conn = Connection::open(&file).map_err(err)?;
        if !existed {
            restrict_permissions(&file);
        }
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS rules (
                 name TEXT PRIMARY KEY,
                 spec TEXT NOT NULL,
                 updated_ms INTEGER NOT NULL
             );",
        )
        .map_err(err)?;
        Ok(SqliteRuleCatalog {
            path,
            conn: Mutex::new(conn),
        })
    }

    fn err(&self, source: rusqlite::Error) -> CatalogError {
        CatalogError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(unix)]
fn restrict_permissions(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600));
}

#[cfg(not(unix))]
fn restrict_permissions(_file: &Path) {}

impl RuleCatalog for SqliteRuleCatalog {
    fn load_all(&self) -> Result<Vec<RuleSpec>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT name, spec FROM rules ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, text) = row.map_err(|e| self.err(e))?;
            let spec = serde_json::from_str(&text).map_err(|e| CatalogError::Corrupt {
                name,
                message: e.to_string(),
            })?;
            out.push(spec);
        }
        Ok(out)
    }

    fn save(&self, spec: &RuleSpec) -> Result<(), CatalogError> {
        let text = serde_json::to_string(spec).map_err(|e| CatalogError::Corrupt {
            name: spec.name.clone(),
            message: e.to_string(),
        })?;
        self.conn()
            .execute(
                "INSERT INTO rules (name, spec, updated_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, updated_ms = excluded.updated_ms",
                params![spec.name, text, crate::ids::now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn delete(&self, name: &str) -> Result<bool, CatalogError> {
        let conn = self.conn();
        let existed = conn
            .query_row("SELECT 1 FROM rules WHERE name = ?1", [name], |_| Ok(()))
            .optional()
            .map_err(|e| self.err(e))?
            .is_some();
        conn.execute("DELETE FROM rules WHERE name = ?1", [name])
            .map_err(|e| self.err(e))?;
        Ok(existed)
    }
}
