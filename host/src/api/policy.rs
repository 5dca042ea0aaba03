//! Access keys: an AccessKeyId, its secret and its policy — which queues and topics it may touch
//! and with which permissions — and the key records the store keeps for them.
//!
//! Keys are records in the store (kind [`KEYS`], by name, so a name is claimed atomically), so
//! a backup carries them and every change is durable before it is answered. The secret is kept
//! as is (not hashed): an MNS signature is an HMAC keyed by the secret, so the server needs it
//! to verify; the data directory is 0700 and its files 0600 for that reason, and `list`/`show`
//! answers never include it.
//!
//! # Policy
//! A key holds allow entries `RESOURCE[:PERMISSION,...]` (`--allow`): RESOURCE is `*` (everything, including rules,
//! devices, keys and backups: an admin key), `queues/NAME` or `topics/NAME`, where NAME may end
//! in `*` to match a prefix; permissions are `read` (attributes, lists, peek), `send` (send to a
//! queue, publish to a topic), `consume` (receive, delete, change visibility) and `manage`
//! (create, delete, set attributes, subscribe); no actions means all four.

use std::fmt;

use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};

use crate::store::{validate_name, Record, Store, StoreError};

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The record kind of access keys (key: the key's name).
pub const KEYS: &str = "keys";

/// The name of the key `serve` creates on first start and writes to the credentials file.
pub const ADMIN_KEY_NAME: &str = "admin";
/// Characters of a generated AccessKeyId after its `SK` prefix (about 119 bits).
const ID_CHARS: usize = 20;
/// Characters of a generated secret (about 178 bits).
const SECRET_CHARS: usize = 30;
/// Most grants on one key: a policy is read on every request, keep it small.
pub const MAX_GRANTS: usize = 64;

/// What a request does to a queue or topic, for policy checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Attributes, lists, peek.
    Read,
    /// Send to a queue, publish to a topic.
    Send,
    /// Receive, delete, change visibility.
    Consume,
    /// Create, delete, set attributes, subscribe and unsubscribe.
    Manage,
}

impl Permission {
    /// Every action, in the order of the docs.
    pub const ALL: [Permission; 4] = [
        Permission::Read,
        Permission::Send,
        Permission::Consume,
        Permission::Manage,
    ];

    /// The action's name in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Send => "send",
            Permission::Consume => "consume",
            Permission::Manage => "manage",
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

/// One entry of a key's policy, as typed after `--allow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allow {
    /// `*`, `queues/NAME` or `topics/NAME`; NAME may end in `*` (a prefix).
    pub resource: String,
    /// What it permits on it (never empty once parsed).
    #[serde(rename = "actions")]
    pub permissions: Vec<Permission>,
}

impl Allow {
    /// Parses `RESOURCE[:ACTION,...]` as typed after `--allow`, naming the field `allow` in
    /// errors.
    pub fn parse(text: &str) -> Result<Allow> {
        let (resource, actions) = match text.split_once(':') {
            Some((r, a)) => (r, Some(a)),
            None => (text, None),
        };
        let name_ok = |n: &str| match n.strip_suffix('*') {
            Some("") => true,
            Some(prefix) => validate_name("allow", prefix).is_ok(),
            None => validate_name("allow", n).is_ok(),
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
        let permissions = match actions {
            None => Permission::ALL.to_vec(),
            Some(list) => list
                .split(',')
                .map(|a| {
                    Permission::ALL
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
        if resource == "*" && permissions.len() != Permission::ALL.len() {
            return Err(StoreError::invalid(
                "allow",
                "`*` grants everything (an admin key); it takes no action list",
            ));
        }
        Ok(Allow {
            resource: resource.to_string(),
            permissions,
        })
    }

    /// True when this entry permits `permission` on `resource`.
    fn allows(&self, resource: &Resource<'_>, permission: Permission) -> bool {
        if self.resource == "*" {
            return true;
        }
        if !self.permissions.contains(&permission) {
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

impl fmt::Display for Allow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.resource)?;
        if self.resource != "*" && self.permissions.len() != Permission::ALL.len() {
            let names: Vec<&str> = self.permissions.iter().map(|a| a.as_str()).collect();
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
    #[serde(rename = "grants")]
    pub allow: Vec<Allow>,
    /// When it was created, ms since the epoch.
    pub create_time_ms: u64,
}

impl AccessKey {
    /// A new key with a fresh random id and secret.
    pub fn generate(name: &str, allow: Vec<Allow>, create_time_ms: u64) -> AccessKey {
        let mut rng = rand::rng();
        AccessKey {
            id: format!("SK{}", Alphanumeric.sample_string(&mut rng, ID_CHARS)),
            name: name.to_string(),
            secret: Alphanumeric.sample_string(&mut rng, SECRET_CHARS),
            allow,
            create_time_ms,
        }
    }

    /// True when the policy permits `permission` on `resource`.
    pub fn allows(&self, resource: &Resource<'_>, permission: Permission) -> bool {
        self.allow.iter().any(|g| g.allows(resource, permission))
    }

    /// True for a key holding the `*` grant.
    pub fn is_admin(&self) -> bool {
        self.allow.iter().any(|g| g.resource == "*")
    }
}

/// Checks a key name: the rules of topic and queue names.
pub fn validate_key_name(name: &str) -> Result<()> {
    validate_name("name", name)
}

fn encode(key: &AccessKey) -> Result<Record> {
    let value = serde_json::to_string(key)
        .map_err(|e| StoreError::Internal(format!("access key record: {e}")))?;
    Ok(Record {
        key: key.name.clone(),
        value,
    })
}

fn decode(record: &Record) -> Result<AccessKey> {
    serde_json::from_str(&record.value).map_err(|e| {
        StoreError::Internal(format!(
            "stored access key `{}` is unreadable: {e}",
            record.key
        ))
    })
}

/// Stores a new key. `Ok(false)` when a key of that name (or id) exists already; nothing
/// changes then.
pub async fn create_key(store: &Store, key: AccessKey) -> Result<bool> {
    validate_key_name(&key.name)?;
    if key.allow.is_empty() || key.allow.len() > MAX_GRANTS {
        return Err(StoreError::invalid(
            "allow",
            format!("a key has 1 to {MAX_GRANTS} grants"),
        ));
    }
    if list_keys(store).await?.iter().any(|k| k.id == key.id) {
        return Ok(false);
    }
    store.insert_record(KEYS, encode(&key)?).await
}

/// Removes a key by id; `Ok(false)` when there was none.
pub async fn delete_key(store: &Store, id: &str) -> Result<bool> {
    let Some(key) = list_keys(store).await?.into_iter().find(|k| k.id == id) else {
        return Ok(false);
    };
    store.delete_record(KEYS, &key.name).await
}

/// Every key, secrets included (callers hide them), by name.
pub async fn list_keys(store: &Store) -> Result<Vec<AccessKey>> {
    store.list_records(KEYS).await?.iter().map(decode).collect()
}

/// The key named `name`, or `None`.
pub async fn key_by_name(store: &Store, name: &str) -> Result<Option<AccessKey>> {
    if validate_key_name(name).is_err() {
        return Ok(None);
    }
    let Some(value) = store.get_record(KEYS, name).await? else {
        return Ok(None);
    };
    decode(&Record {
        key: name.to_owned(),
        value,
    })
    .map(Some)
}

/// The admin key, created (with the `*` grant) when the store has none yet. `serve` calls it
/// at every start and writes the answer to the credentials file.
pub async fn ensure_admin_key(store: &Store) -> Result<AccessKey> {
    if let Some(k) = key_by_name(store, ADMIN_KEY_NAME).await? {
        return Ok(k);
    }
    let allow = vec![Allow::parse("*")?];
    let key = AccessKey::generate(ADMIN_KEY_NAME, allow, store.clock().now_ms());
    create_key(store, key).await?;
    key_by_name(store, ADMIN_KEY_NAME)
        .await?
        .ok_or_else(|| StoreError::Internal("admin key missing right after creation".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(grants: &[&str]) -> AccessKey {
        let grants = grants.iter().map(|g| Allow::parse(g).unwrap()).collect();
        AccessKey::generate("k", grants, 0)
    }

    /// Grants match by kind, exact name or prefix, and action; `*` allows everything.
    #[test]
    fn policy_matches_resources_and_actions() {
        let k = key(&["queues/alerts-q:consume,read", "topics/dev-*:send"]);
        assert!(k.allows(&Resource::Queue(Some("alerts-q")), Permission::Consume));
        assert!(!k.allows(&Resource::Queue(Some("alerts-q")), Permission::Send));
        assert!(!k.allows(&Resource::Queue(Some("alerts-q2")), Permission::Read));
        assert!(!k.allows(&Resource::Queue(None), Permission::Read));
        assert!(k.allows(&Resource::Topic(Some("dev-1")), Permission::Send));
        assert!(!k.allows(&Resource::Topic(Some("prod")), Permission::Send));
        assert!(!k.allows(&Resource::Topic(None), Permission::Send));
        assert!(!k.allows(&Resource::Admin, Permission::Manage));
        assert!(!k.is_admin());
        let all = key(&["queues/*:read"]);
        assert!(all.allows(&Resource::Queue(None), Permission::Read));
        let admin = key(&["*"]);
        assert!(admin.is_admin());
        assert!(admin.allows(&Resource::Admin, Permission::Manage));
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
            let e = Allow::parse(bad).unwrap_err();
            assert_eq!(e.field(), Some("allow"), "{bad}");
        }
        for good in ["*", "queues/a", "topics/b*:send,read", "queues/*:consume"] {
            assert_eq!(Allow::parse(good).unwrap().to_string(), good);
        }
    }

    /// Migration v3 -> v4: a v3 file with a topic opens, keeps the topic, gets an admin key
    /// once (the same key on the next start), stores and deletes keys.
    #[tokio::test]
    async fn a_v4_database_moves_its_keys_into_records_and_keeps_its_catalog() {
        // Proves migration v4 -> v5: a key of the v4 table opens as the same key (id, secret,
        // policy), and key records then work as on a new store.
        let dir = tempfile::tempdir().unwrap();
        {
            let mut conn = rusqlite::Connection::open(dir.path().join("sluice.db")).unwrap();
            crate::store::sqlite::schema::migrate_to(&mut conn, 4).unwrap();
            conn.execute_batch(
                r#"INSERT INTO topics (id, name, create_time_ms) VALUES (1, 'old', 1);
                   INSERT INTO access_keys (id, name, secret, grants, create_time_ms)
                   VALUES ('SKold', 'admin', 'oldsecret',
                           '[{"resource":"*","actions":["read","send","consume","manage"]}]', 7);"#,
            )
            .unwrap();
        }
        let store = Store::open(dir.path(), Default::default()).unwrap();
        assert_eq!(store.list_topics().await.unwrap()[0].name, "old");
        let admin = ensure_admin_key(&store).await.unwrap();
        assert_eq!(
            (admin.id.as_str(), admin.secret.as_str()),
            ("SKold", "oldsecret")
        );
        assert!(admin.is_admin());
        assert_eq!(ensure_admin_key(&store).await.unwrap(), admin);
        let k = key(&["queues/q:read"]);
        assert!(create_key(&store, k.clone()).await.unwrap());
        let mut same_name = key(&["queues/q:read"]);
        same_name.name = k.name.clone();
        assert!(!create_key(&store, same_name).await.unwrap());
        let e = create_key(&store, key(&[])).await.unwrap_err();
        assert_eq!(e.field(), Some("allow"));
        assert_eq!(list_keys(&store).await.unwrap().len(), 2);
        assert!(delete_key(&store, &k.id).await.unwrap());
        assert!(!delete_key(&store, &k.id).await.unwrap());
        store.close().await.unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        assert_eq!(ensure_admin_key(&store).await.unwrap(), admin);
        store.close().await.unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("sluice.db")).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert!(v >= 5, "schema version {v}");
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
