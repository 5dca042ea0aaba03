//! Access keys (schema v4): an AccessKeyId, its secret and its policy — which queues and topics
//! it may touch and with which actions.
//!
//! Keys live in the store's database so a backup carries them and one writer orders every
//! change. The secret is kept as is (not hashed): an MNS signature is an HMAC keyed by the secret,
//! so the server needs it to verify; the database file is 0600 in a 0700 directory for that
//! reason, and `list`/`show` answers never include it.
//!
//! # Policy
//! A key holds grants `RESOURCE[:ACTION,...]`: RESOURCE is `*` (everything, including rules,
//! devices, keys and backups: an admin key), `queues/NAME` or `topics/NAME`, where NAME may end
//! in `*` to match a prefix; actions are `read` (attributes, lists, peek), `send` (send to a
//! queue, publish to a topic), `consume` (receive, delete, change visibility) and `manage`
//! (create, delete, set attributes, subscribe); no actions means all four.

use std::fmt;

use rand::distr::{Alphanumeric, SampleString};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

use super::error::StoreError;
use super::writer::OpKind;
use super::{Result, Store};

/// The name of the key `serve` creates on first start and writes to the credentials file.
pub const ADMIN_KEY_NAME: &str = "admin";
/// Characters of a generated AccessKeyId after its `SK` prefix (about 119 bits).
const ID_CHARS: usize = 20;
/// Characters of a generated secret (about 178 bits).
const SECRET_CHARS: usize = 30;
/// Most grants on one key: a policy is read on every request, keep it small.
pub const MAX_GRANTS: usize = 64;

/// Schema v4: access keys.
pub(crate) fn migrate_v4_keys(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE access_keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            secret TEXT NOT NULL,
            grants TEXT NOT NULL,
            create_time_ms INTEGER NOT NULL
        );",
    )
}

/// What a request does to a queue or topic, for policy checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Attributes, lists, peek.
    Read,
    /// Send to a queue, publish to a topic.
    Send,
    /// Receive, delete, change visibility.
    Consume,
    /// Create, delete, set attributes, subscribe and unsubscribe.
    Manage,
}

impl Action {
    /// Every action, in the order of the docs.
    pub const ALL: [Action; 4] = [Action::Read, Action::Send, Action::Consume, Action::Manage];

    /// The action's name in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Send => "send",
            Action::Consume => "consume",
            Action::Manage => "manage",
        }
    }
}

/// What a request touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource<'a> {
    /// One queue, or every queue (`None`: listing).
    Queue(Option<&'a str>),
    /// One topic, or every topic (`None`: listing).
    Topic(Option<&'a str>),
    /// Anything else (rules, devices, keys, backups, metrics): admin keys only.
    Admin,
}

/// One entry of a key's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// `*`, `queues/NAME` or `topics/NAME`; NAME may end in `*` (a prefix).
    pub resource: String,
    /// The actions allowed on it (never empty once parsed).
    pub actions: Vec<Action>,
}

impl Grant {
    /// Parses `RESOURCE[:ACTION,...]` as typed after `--allow`, naming the field `allow` in
    /// errors.
    pub fn parse(text: &str) -> Result<Grant> {
        let (resource, actions) = match text.split_once(':') {
            Some((r, a)) => (r, Some(a)),
            None => (text, None),
        };
        let name_ok = |n: &str| match n.strip_suffix('*') {
            Some("") => true,
            Some(prefix) => super::validate_name("allow", prefix).is_ok(),
            None => super::validate_name("allow", n).is_ok(),
        };
        let valid = resource == "*"
            || resource
                .strip_prefix("queues/")
                .or_else(|| resource.strip_prefix("topics/"))
                .is_some_and(name_ok);
        if !valid {
            return Err(StoreError::invalid(
                "allow",
                format!(
                    "`{}` is not a resource: use `*`, `queues/NAME` or `topics/NAME` (NAME may end \
                     in `*`), optionally followed by `:ACTION,...`",
                    resource.escape_debug()
                ),
            ));
        }
        let actions = match actions {
            None => Action::ALL.to_vec(),
            Some(list) => list
                .split(',')
                .map(|a| {
                    Action::ALL
                        .into_iter()
                        .find(|x| x.as_str() == a.trim())
                        .ok_or_else(|| {
                            StoreError::invalid(
                                "allow",
                                format!(
                                    "`{}` is not an action: use read, send, consume or manage",
                                    a.escape_debug()
                                ),
                            )
                        })
                })
                .collect::<Result<Vec<_>>>()?,
        };
        if resource == "*" && actions.len() != Action::ALL.len() {
            return Err(StoreError::invalid(
                "allow",
                "`*` grants everything (an admin key); it takes no action list",
            ));
        }
        Ok(Grant {
            resource: resource.to_string(),
            actions,
        })
    }

    /// True when this grant covers `action` on `resource`.
    fn allows(&self, resource: &Resource<'_>, action: Action) -> bool {
        if self.resource == "*" {
            return true;
        }
        if !self.actions.contains(&action) {
            return false;
        }
        let (prefix, name) = match resource {
            Resource::Queue(n) => ("queues/", *n),
            Resource::Topic(n) => ("topics/", *n),
            Resource::Admin => return false,
        };
        let Some(pattern) = self.resource.strip_prefix(prefix) else {
            return false;
        };
        match (pattern.strip_suffix('*'), name) {
            // A listing needs the whole kind.
            (Some(""), _) => true,
            (_, None) => false,
            (Some(p), Some(n)) => n.starts_with(p),
            (None, Some(n)) => pattern == n,
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.resource)?;
        if self.resource != "*" && self.actions.len() != Action::ALL.len() {
            let names: Vec<&str> = self.actions.iter().map(|a| a.as_str()).collect();
            write!(f, ":{}", names.join(","))?;
        }
        Ok(())
    }
}

/// An access key with its secret; the API and CLI leave the secret out of list/show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKey {
    /// The AccessKeyId (`SK` + 20 letters and digits).
    pub id: String,
    /// A unique name people know it by.
    pub name: String,
    /// The secret (30 letters and digits): Bearer password and HMAC key of MNS signatures.
    pub secret: String,
    /// What it may do.
    pub grants: Vec<Grant>,
    /// When it was created, ms since the epoch.
    pub create_time_ms: u64,
}

impl AccessKey {
    /// A new key with a fresh random id and secret.
    pub fn generate(name: &str, grants: Vec<Grant>, create_time_ms: u64) -> AccessKey {
        let mut rng = rand::rng();
        AccessKey {
            id: format!("SK{}", Alphanumeric.sample_string(&mut rng, ID_CHARS)),
            name: name.to_string(),
            secret: Alphanumeric.sample_string(&mut rng, SECRET_CHARS),
            grants,
            create_time_ms,
        }
    }

    /// True when the policy allows `action` on `resource`.
    pub fn allows(&self, resource: &Resource<'_>, action: Action) -> bool {
        self.grants.iter().any(|g| g.allows(resource, action))
    }

    /// True for a key holding the `*` grant.
    pub fn is_admin(&self) -> bool {
        self.grants.iter().any(|g| g.resource == "*")
    }
}

/// A change to the key table, run by the writer.
#[derive(Debug)]
pub(crate) enum KeyOp {
    Create(AccessKey),
    Delete(String),
}

/// Runs a key change on the writer's connection (inside its savepoint); `true` when a row was
/// inserted or removed.
pub(crate) fn apply(conn: &Connection, op: KeyOp) -> Result<bool> {
    match op {
        KeyOp::Create(k) => {
            let grants = serde_json::to_string(&k.grants)
                .map_err(|e| StoreError::Internal(format!("key grants: {e}")))?;
            let n = conn
                .prepare_cached(
                    "INSERT INTO access_keys (id, name, secret, grants, create_time_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                )?
                .execute(params![
                    k.id,
                    k.name,
                    k.secret,
                    grants,
                    k.create_time_ms as i64
                ])?;
            Ok(n == 1)
        }
        KeyOp::Delete(id) => {
            let n = conn
                .prepare_cached("DELETE FROM access_keys WHERE id = ?1")?
                .execute(params![id])?;
            Ok(n == 1)
        }
    }
}

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(AccessKey, String)> {
    Ok((
        AccessKey {
            id: r.get(0)?,
            name: r.get(1)?,
            secret: r.get(2)?,
            grants: Vec::new(),
            create_time_ms: r.get::<_, i64>(4)? as u64,
        },
        r.get(3)?,
    ))
}

fn with_grants((mut k, grants): (AccessKey, String)) -> Result<AccessKey> {
    k.grants = serde_json::from_str(&grants).map_err(|e| {
        StoreError::Internal(format!("stored policy of key {} is unreadable: {e}", k.id))
    })?;
    Ok(k)
}

/// Checks a key name: the rules of topic and queue names.
pub fn validate_key_name(name: &str) -> Result<()> {
    super::validate_name("name", name)
}

impl Store {
    /// Stores a new key. `Ok(false)` when a key of that name (or id) exists already; nothing
    /// changes then.
    pub async fn create_key(&self, key: AccessKey) -> Result<bool> {
        validate_key_name(&key.name)?;
        if key.grants.is_empty() || key.grants.len() > MAX_GRANTS {
            return Err(StoreError::invalid(
                "allow",
                format!("a key has 1 to {MAX_GRANTS} grants"),
            ));
        }
        if let Some(js) = self.nats() {
            return js.create_key(key).await;
        }
        self.call(OpKind::Keys(Box::new(KeyOp::Create(key))))
            .await?
            .bool()
    }

    /// Removes a key by id; `Ok(false)` when there was none.
    pub async fn delete_key(&self, id: &str) -> Result<bool> {
        if let Some(js) = self.nats() {
            return js.delete_key(id).await;
        }
        self.call(OpKind::Keys(Box::new(KeyOp::Delete(id.to_owned()))))
            .await?
            .bool()
    }

    /// Every key, secrets included (callers hide them), by name.
    pub async fn list_keys(&self) -> Result<Vec<AccessKey>> {
        if let Some(js) = self.nats() {
            return Ok(js.list_keys());
        }
        self.inner
            .readers
            .run(|c| {
                let mut stmt = c.prepare_cached(
                    "SELECT id, name, secret, grants, create_time_ms FROM access_keys ORDER BY name",
                )?;
                let rows = stmt.query_map([], key_row)?;
                let mut out = Vec::new();
                for row in rows {
                    out.push(with_grants(row?)?);
                }
                Ok(out)
            })
            .await
    }

    /// The key named `name`, or `None`.
    pub async fn key_by_name(&self, name: &str) -> Result<Option<AccessKey>> {
        if let Some(js) = self.nats() {
            return js.key_by_name(name).await;
        }
        let name = name.to_owned();
        self.inner
            .readers
            .run(move |c| {
                c.prepare_cached(
                    "SELECT id, name, secret, grants, create_time_ms FROM access_keys WHERE name = ?1",
                )?
                .query_row(params![name], key_row)
                .optional()?
                .map(with_grants)
                .transpose()
            })
            .await
    }

    /// The admin key, created (with the `*` grant) when the store has none yet. `serve` calls it
    /// at every start and writes the answer to the credentials file.
    pub async fn ensure_admin_key(&self) -> Result<AccessKey> {
        if let Some(k) = self.key_by_name(ADMIN_KEY_NAME).await? {
            return Ok(k);
        }
        let grants = vec![Grant::parse("*")?];
        let key = AccessKey::generate(ADMIN_KEY_NAME, grants, self.clock().now_ms());
        self.create_key(key).await?;
        self.key_by_name(ADMIN_KEY_NAME)
            .await?
            .ok_or_else(|| StoreError::Internal("admin key missing right after creation".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(grants: &[&str]) -> AccessKey {
        let grants = grants.iter().map(|g| Grant::parse(g).unwrap()).collect();
        AccessKey::generate("k", grants, 0)
    }

    /// Grants match by kind, exact name or prefix, and action; `*` allows everything.
    #[test]
    fn policy_matches_resources_and_actions() {
        let k = key(&["queues/alerts-q:consume,read", "topics/dev-*:send"]);
        assert!(k.allows(&Resource::Queue(Some("alerts-q")), Action::Consume));
        assert!(!k.allows(&Resource::Queue(Some("alerts-q")), Action::Send));
        assert!(!k.allows(&Resource::Queue(Some("alerts-q2")), Action::Read));
        assert!(!k.allows(&Resource::Queue(None), Action::Read));
        assert!(k.allows(&Resource::Topic(Some("dev-1")), Action::Send));
        assert!(!k.allows(&Resource::Topic(Some("prod")), Action::Send));
        assert!(!k.allows(&Resource::Topic(None), Action::Send));
        assert!(!k.allows(&Resource::Admin, Action::Manage));
        assert!(!k.is_admin());
        let all = key(&["queues/*:read"]);
        assert!(all.allows(&Resource::Queue(None), Action::Read));
        let admin = key(&["*"]);
        assert!(admin.is_admin());
        assert!(admin.allows(&Resource::Admin, Action::Manage));
    }

    /// Bad grants are refused with the field `allow`; the text form round-trips.
    #[test]
    fn grant_parse_errors_and_display() {
        for bad in [
            "queue/x",
            "queues/",
            "queues/-x",
            "topics/a:eat",
            "*:read",
            "",
        ] {
            let e = Grant::parse(bad).unwrap_err();
            assert_eq!(e.field(), Some("allow"), "{bad}");
        }
        for good in ["*", "queues/a", "topics/b*:send,read", "queues/*:consume"] {
            assert_eq!(Grant::parse(good).unwrap().to_string(), good);
        }
    }

    /// Migration v3 -> v4: a v3 file with a topic opens, keeps the topic, gets an admin key
    /// once (the same key on the next start), stores and deletes keys.
    #[tokio::test]
    async fn a_v3_database_migrates_to_keys_and_keeps_its_catalog() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut conn = Connection::open(dir.path().join("sluice.db")).unwrap();
            super::super::schema::migrate_to(&mut conn, 3).unwrap();
            conn.execute_batch(
                "INSERT INTO topics (id, name, create_time_ms) VALUES (1, 'old', 1);",
            )
            .unwrap();
        }
        let store = Store::open(dir.path(), Default::default()).unwrap();
        assert_eq!(store.list_topics().await.unwrap()[0].name, "old");
        let admin = store.ensure_admin_key().await.unwrap();
        assert!(admin.is_admin());
        assert_eq!(store.ensure_admin_key().await.unwrap(), admin);
        let k = key(&["queues/q:read"]);
        assert!(store.create_key(k.clone()).await.unwrap());
        let mut same_name = key(&["queues/q:read"]);
        same_name.name = k.name.clone();
        assert!(!store.create_key(same_name).await.unwrap());
        let e = store.create_key(key(&[])).await.unwrap_err();
        assert_eq!(e.field(), Some("allow"));
        assert_eq!(store.list_keys().await.unwrap().len(), 2);
        assert!(store.delete_key(&k.id).await.unwrap());
        assert!(!store.delete_key(&k.id).await.unwrap());
        store.close().await.unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        assert_eq!(store.ensure_admin_key().await.unwrap(), admin);
        store.close().await.unwrap();
        let conn = Connection::open(dir.path().join("sluice.db")).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert!(v >= 4, "schema version {v}");
    }

    /// Generated ids and secrets have their documented shape and differ.
    #[test]
    fn generated_keys_are_random() {
        let a = key(&["*"]);
        let b = key(&["*"]);
        assert_ne!(a.id, b.id);
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.id.len(), 2 + ID_CHARS);
        assert_eq!(a.secret.len(), SECRET_CHARS);
        assert!(a.secret.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
