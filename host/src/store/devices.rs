//! The device registry's rows: products and devices, each device with its secret and tags
//! (schema v3).
//!
//! Devices live in the store's database, so a backup carries them and one writer orders every
//! change; they change rarely, so they go through the writer like catalog changes. Readers (the
//! MQTT connect check, `attribute()` in rules) never touch SQLite: the `devices` module keeps an
//! in-memory copy, loaded at start and updated after each committed change.
//!
//! A product exists from its first device on and is never deleted implicitly: a product key
//! that was once registered stays protected from anonymous publishers.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

use super::error::StoreError;
use super::writer::{OpKind, Reply};
use super::{Result, Store};

/// Most tags one device may carry: tags are read per message by rules, keep them small.
pub const MAX_DEVICE_TAGS: usize = 100;
/// Longest tag value, in bytes (the IoT platforms' limit for tag values is 128 characters).
pub const MAX_TAG_VALUE_BYTES: usize = 128;

/// A registered device, secret included; the API and CLI leave the secret out of list/show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The product (device class) it belongs to.
    pub product_key: String,
    /// Its name, unique within the product.
    pub device_name: String,
    /// The key of its MQTT signature (one-device-one-secret).
    pub secret: String,
    /// Free key/value pairs rules read with `attribute('key')`.
    pub tags: BTreeMap<String, String>,
    /// When it was registered, ms since the epoch.
    pub create_time_ms: u64,
}

/// Schema v3: products and devices.
pub(crate) fn migrate_v3_devices(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE products (
            product_key TEXT PRIMARY KEY,
            create_time_ms INTEGER NOT NULL
        );
        CREATE TABLE devices (
            product_key TEXT NOT NULL REFERENCES products (product_key),
            device_name TEXT NOT NULL,
            secret TEXT NOT NULL,
            tags TEXT NOT NULL,
            create_time_ms INTEGER NOT NULL,
            PRIMARY KEY (product_key, device_name)
        );",
    )
}

/// First topic levels with a meaning of their own: `/sys/{pk}/{dn}/...` (thing model),
/// `/as/mqtt/status/...` (device status), `/ota/device/...` (firmware), and the platforms'
/// `/ext/...`, `/shadow/...` and `/broadcast/...` families. A product with one of these keys would
/// own `/{key}/{dn}/...`, the very levels of another product's topics (product `sys`, device
/// `a1pk` would reach `/sys/a1pk/...` of every device of product `a1pk`), so none is a product
/// key.
pub const RESERVED_PRODUCT_KEYS: [&str; 6] = ["sys", "as", "ota", "ext", "shadow", "broadcast"];

/// True when `pk` is one of [`RESERVED_PRODUCT_KEYS`].
pub fn is_reserved_product_key(pk: &str) -> bool {
    RESERVED_PRODUCT_KEYS.contains(&pk)
}

/// Checks a product key: 1-64 letters, digits, `_` or `-` (it is a topic level, so never `/`,
/// `+`, `#`, and never `&` or `|`, which separate fields of the MQTT client id), and not one of
/// the [`RESERVED_PRODUCT_KEYS`].
pub fn validate_product_key(pk: &str) -> Result<()> {
    if is_reserved_product_key(pk) {
        return Err(StoreError::invalid(
            "product_key",
            format!(
                "`{pk}` is reserved: a product key is the first level of its devices' topics, and \
                 `/{pk}/...` already means something (reserved: {}); choose another product key",
                RESERVED_PRODUCT_KEYS.join(", ")
            ),
        ));
    }
    let ok = (1..=64).contains(&pk.len())
        && pk
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::invalid(
            "product_key",
            format!(
                "`{}` is not a valid product key: 1-64 letters, digits, `_` or `-`",
                pk.escape_debug()
            ),
        ))
    }
}

/// Checks a device name: 1-64 letters, digits and `_ - @ . :` (the IoT platforms' set), so it
/// is a safe topic level and client-id field.
pub fn validate_device_name(dn: &str) -> Result<()> {
    let ok = (1..=64).contains(&dn.len())
        && dn
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-@.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::invalid(
            "device_name",
            format!(
                "`{}` is not a valid device name: 1-64 letters, digits, `_`, `-`, `@`, `.` or `:`",
                dn.escape_debug()
            ),
        ))
    }
}

/// Checks a device's tags: at most [`MAX_DEVICE_TAGS`], keys 1-64 letters, digits, `_ . -`,
/// values up to [`MAX_TAG_VALUE_BYTES`] bytes without control characters.
pub fn validate_tags(tags: &BTreeMap<String, String>) -> Result<()> {
    if tags.len() > MAX_DEVICE_TAGS {
        return Err(StoreError::invalid(
            "tags",
            format!("a device has at most {MAX_DEVICE_TAGS} tags"),
        ));
    }
    for (k, v) in tags {
        let key_ok = (1..=64).contains(&k.len())
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !key_ok {
            return Err(StoreError::invalid(
                "tags",
                format!(
                    "tag key `{}` is not valid: 1-64 letters, digits, `_`, `.` or `-`",
                    k.escape_debug()
                ),
            ));
        }
        if v.len() > MAX_TAG_VALUE_BYTES || v.chars().any(char::is_control) {
            return Err(StoreError::invalid(
                "tags",
                format!(
                    "the value of tag `{k}` is not valid: at most {MAX_TAG_VALUE_BYTES} bytes, no \
                     control characters"
                ),
            ));
        }
    }
    Ok(())
}

/// A device change for the writer.
#[derive(Debug)]
pub(crate) enum DeviceOp {
    Create(Device),
    Delete {
        product_key: String,
        device_name: String,
    },
}

/// The writer's answer to a [`DeviceOp`].
#[derive(Debug)]
pub(crate) enum DeviceReply {
    /// True when the row was inserted (create) or removed (delete).
    Changed(bool),
}

/// Runs a device change on the writer's connection (inside its savepoint).
pub(crate) fn apply(conn: &Connection, op: DeviceOp, now: u64) -> Result<DeviceReply> {
    match op {
        DeviceOp::Create(d) => {
            conn.prepare_cached(
                "INSERT INTO products (product_key, create_time_ms) VALUES (?1, ?2)
                 ON CONFLICT (product_key) DO NOTHING",
            )?
            .execute(params![d.product_key, now as i64])?;
            let tags = serde_json::to_string(&d.tags)
                .map_err(|e| StoreError::Internal(format!("device tags: {e}")))?;
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO devices (product_key, device_name, secret, tags, create_time_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                )?
                .execute(params![
                    d.product_key,
                    d.device_name,
                    d.secret,
                    tags,
                    d.create_time_ms as i64
                ])?;
            Ok(DeviceReply::Changed(inserted == 1))
        }
        DeviceOp::Delete {
            product_key,
            device_name,
        } => {
            let n = conn
                .prepare_cached("DELETE FROM devices WHERE product_key = ?1 AND device_name = ?2")?
                .execute(params![product_key, device_name])?;
            Ok(DeviceReply::Changed(n == 1))
        }
    }
}

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Device, String)> {
    Ok((
        Device {
            product_key: r.get(0)?,
            device_name: r.get(1)?,
            secret: r.get(2)?,
            tags: BTreeMap::new(),
            create_time_ms: r.get::<_, i64>(4)? as u64,
        },
        r.get(3)?,
    ))
}

fn with_tags((mut d, tags): (Device, String)) -> Result<Device> {
    d.tags = serde_json::from_str(&tags).map_err(|e| {
        StoreError::Internal(format!(
            "stored tags of device {}/{} are unreadable: {e}",
            d.product_key, d.device_name
        ))
    })?;
    Ok(d)
}

const DEVICE_SQL: &str =
    "SELECT product_key, device_name, secret, tags, create_time_ms FROM devices";

impl Store {
    /// Registers a device (and its product, on its first device). `Ok(false)` when a device of
    /// that name exists already in the product; it is left unchanged.
    pub async fn create_device(&self, device: Device) -> Result<bool> {
        validate_product_key(&device.product_key)?;
        validate_device_name(&device.device_name)?;
        validate_tags(&device.tags)?;
        if let Some(js) = self.nats() {
            return js.create_device(device).await;
        }
        match self
            .call(OpKind::Devices(Box::new(DeviceOp::Create(device))))
            .await?
        {
            Reply::Devices(r) => match *r {
                DeviceReply::Changed(b) => Ok(b),
            },
            other => Err(other.unexpected()),
        }
    }

    /// Removes a device; `Ok(false)` when it did not exist. Its product stays registered.
    pub async fn delete_device(&self, product_key: &str, device_name: &str) -> Result<bool> {
        if let Some(js) = self.nats() {
            return js.delete_device(product_key, device_name).await;
        }
        let op = DeviceOp::Delete {
            product_key: product_key.to_owned(),
            device_name: device_name.to_owned(),
        };
        match self.call(OpKind::Devices(Box::new(op))).await? {
            Reply::Devices(r) => match *r {
                DeviceReply::Changed(b) => Ok(b),
            },
            other => Err(other.unexpected()),
        }
    }

    /// One device, or `None`.
    pub async fn get_device(&self, product_key: &str, device_name: &str) -> Result<Option<Device>> {
        if let Some(js) = self.nats() {
            return js.get_device(product_key, device_name).await;
        }
        let (pk, dn) = (product_key.to_owned(), device_name.to_owned());
        self.inner
            .readers
            .run(move |c| {
                c.prepare_cached(&format!(
                    "{DEVICE_SQL} WHERE product_key = ?1 AND device_name = ?2"
                ))?
                .query_row(params![pk, dn], device_row)
                .optional()?
                .map(with_tags)
                .transpose()
            })
            .await
    }

    /// Every device, by product key then name.
    pub async fn list_devices(&self) -> Result<Vec<Device>> {
        if let Some(js) = self.nats() {
            return Ok(js.list_devices());
        }
        self.inner
            .readers
            .run(|c| {
                let mut stmt =
                    c.prepare_cached(&format!("{DEVICE_SQL} ORDER BY product_key, device_name"))?;
                let rows = stmt.query_map([], device_row)?;
                let mut out = Vec::new();
                for row in rows {
                    out.push(with_tags(row?)?);
                }
                Ok(out)
            })
            .await
    }

    /// Every registered product key (also those whose devices were all deleted).
    pub async fn list_products(&self) -> Result<Vec<String>> {
        if let Some(js) = self.nats() {
            return Ok(js.list_products());
        }
        self.inner
            .readers
            .run(|c| {
                let mut stmt =
                    c.prepare_cached("SELECT product_key FROM products ORDER BY product_key")?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(pk: &str, dn: &str) -> Device {
        Device {
            product_key: pk.into(),
            device_name: dn.into(),
            secret: "s3cret".into(),
            tags: BTreeMap::from([("site".into(), "north".into())]),
            create_time_ms: 1,
        }
    }

    #[tokio::test]
    async fn devices_are_created_once_listed_and_deleted() {
        // Proves the registry rows: create is idempotent (false on a second create), get and
        // list return the tags and secret, delete removes the device but keeps the product.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        assert!(store.create_device(device("pk1", "dev1")).await.unwrap());
        assert!(!store.create_device(device("pk1", "dev1")).await.unwrap());
        assert!(store.create_device(device("pk1", "dev2")).await.unwrap());
        let got = store.get_device("pk1", "dev1").await.unwrap().unwrap();
        assert_eq!(got, device("pk1", "dev1"));
        assert_eq!(store.list_devices().await.unwrap().len(), 2);
        assert!(store.delete_device("pk1", "dev1").await.unwrap());
        assert!(!store.delete_device("pk1", "dev1").await.unwrap());
        assert!(store.get_device("pk1", "dev1").await.unwrap().is_none());
        assert_eq!(
            store.list_products().await.unwrap(),
            vec!["pk1".to_string()]
        );
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn bad_names_and_tags_are_refused_naming_the_field() {
        // Proves input checks: a product key with `/`, a device name with `&`, a tag key with a
        // space each fail with InvalidArgument naming the field, and nothing is stored.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let field = |e: StoreError| e.field().map(str::to_string);
        let e = store.create_device(device("p/k", "d")).await.unwrap_err();
        assert_eq!(field(e).as_deref(), Some("product_key"));
        let e = store.create_device(device("pk", "a&b")).await.unwrap_err();
        assert_eq!(field(e).as_deref(), Some("device_name"));
        let mut d = device("pk", "d");
        d.tags.insert("bad key".into(), "v".into());
        let e = store.create_device(d).await.unwrap_err();
        assert_eq!(field(e).as_deref(), Some("tags"));
        assert!(store.list_devices().await.unwrap().is_empty());
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_v2_database_migrates_to_devices_and_keeps_its_catalog() {
        // Proves migration v2 -> v3: a v2 file with a topic opens, keeps the topic, and takes
        // devices.
        let dir = tempfile::tempdir().unwrap();
        {
            let mut conn = Connection::open(dir.path().join("sluice.db")).unwrap();
            super::super::schema::migrate_to(&mut conn, 2).unwrap();
            conn.execute_batch(
                "INSERT INTO topics (id, name, create_time_ms) VALUES (1, 'old', 1);",
            )
            .unwrap();
        }
        let store = Store::open(dir.path(), Default::default()).unwrap();
        assert_eq!(store.list_topics().await.unwrap()[0].name, "old");
        assert!(store.create_device(device("pk", "dev")).await.unwrap());
        store.close().await.unwrap();
        let conn = Connection::open(dir.path().join("sluice.db")).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert!(v >= 3, "schema version {v}");
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM devices", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }
}
