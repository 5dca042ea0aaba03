//! What a device is as stored: its record (product, name, secret, tags), the rules for product
//! keys, device names and tags, and the device and product records the store keeps for the
//! registry. Devices change rarely; readers (the MQTT connect check, `attribute()` in rules)
//! never touch the store: the registry keeps an in-memory copy, loaded at start and updated
//! after each committed change.
//!
//! A product exists from its first device on and is never deleted implicitly: a product key
//! that was once registered stays protected from anonymous publishers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::{Record, Store, StoreError};

type Result<T, E = StoreError> = std::result::Result<T, E>;

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

/// The record kind of devices (key `{product key}/{device name}`).
pub const DEVICES: &str = "devices";
/// The record kind of products (key: the product key).
pub const PRODUCTS: &str = "products";

/// A registered product.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProductRecord {
    product_key: String,
    create_time_ms: u64,
}

/// A name pair no device can have is simply not found.
fn is_valid(product_key: &str, device_name: &str) -> bool {
    validate_product_key(product_key).is_ok() && validate_device_name(device_name).is_ok()
}

fn device_key(product_key: &str, device_name: &str) -> String {
    format!("{product_key}/{device_name}")
}

fn encode<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Internal(format!("device record: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(kind: &str, key: &str, value: &str) -> Result<T> {
    serde_json::from_str(value).map_err(|e| {
        StoreError::Internal(format!("stored {kind} record `{key}` is unreadable: {e}"))
    })
}

/// Registers a device (and its product, on its first device). `Ok(false)` when a device of
/// that name exists already in the product; it is left unchanged.
pub async fn create(store: &Store, device: &Device) -> Result<bool> {
    validate_product_key(&device.product_key)?;
    validate_device_name(&device.device_name)?;
    validate_tags(&device.tags)?;
    let product = ProductRecord {
        product_key: device.product_key.clone(),
        create_time_ms: device.create_time_ms,
    };
    // The product first: a device is never stored without it (a product without devices is
    // the normal state after deletes).
    store
        .insert_record(
            PRODUCTS,
            Record {
                key: device.product_key.clone(),
                value: encode(&product)?,
            },
        )
        .await?;
    let record = Record {
        key: device_key(&device.product_key, &device.device_name),
        value: encode(device)?,
    };
    store.insert_record(DEVICES, record).await
}

/// Removes a device; `Ok(false)` when it did not exist. Its product stays registered.
pub async fn delete(store: &Store, product_key: &str, device_name: &str) -> Result<bool> {
    if !is_valid(product_key, device_name) {
        return Ok(false);
    }
    store
        .delete_record(DEVICES, &device_key(product_key, device_name))
        .await
}

/// One device, or `None`.
pub async fn get(store: &Store, product_key: &str, device_name: &str) -> Result<Option<Device>> {
    if !is_valid(product_key, device_name) {
        return Ok(None);
    }
    let key = device_key(product_key, device_name);
    store
        .get_record(DEVICES, &key)
        .await?
        .map(|v| decode(DEVICES, &key, &v))
        .transpose()
}

/// Every device, by product key then name.
pub async fn list(store: &Store) -> Result<Vec<Device>> {
    let mut out = store
        .list_records(DEVICES)
        .await?
        .into_iter()
        .map(|r| decode::<Device>(DEVICES, &r.key, &r.value))
        .collect::<Result<Vec<_>>>()?;
    out.sort_by(|a, b| (&a.product_key, &a.device_name).cmp(&(&b.product_key, &b.device_name)));
    Ok(out)
}

/// Every registered product key (also those whose devices were all deleted), sorted.
pub async fn list_products(store: &Store) -> Result<Vec<String>> {
    let mut out = store
        .list_records(PRODUCTS)
        .await?
        .into_iter()
        .map(|r| decode::<ProductRecord>(PRODUCTS, &r.key, &r.value).map(|p| p.product_key))
        .collect::<Result<Vec<_>>>()?;
    out.sort();
    Ok(out)
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
        assert!(create(&store, &device("pk1", "dev1")).await.unwrap());
        assert!(!create(&store, &device("pk1", "dev1")).await.unwrap());
        assert!(create(&store, &device("pk1", "dev2")).await.unwrap());
        let got = get(&store, "pk1", "dev1").await.unwrap().unwrap();
        assert_eq!(got, device("pk1", "dev1"));
        assert_eq!(list(&store).await.unwrap().len(), 2);
        assert!(delete(&store, "pk1", "dev1").await.unwrap());
        assert!(!delete(&store, "pk1", "dev1").await.unwrap());
        assert!(get(&store, "pk1", "dev1").await.unwrap().is_none());
        assert_eq!(
            list_products(&store).await.unwrap(),
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
        let e = create(&store, &device("p/k", "d")).await.unwrap_err();
        assert_eq!(field(e).as_deref(), Some("product_key"));
        let e = create(&store, &device("pk", "a&b")).await.unwrap_err();
        assert_eq!(field(e).as_deref(), Some("device_name"));
        let mut d = device("pk", "d");
        d.tags.insert("bad key".into(), "v".into());
        let e = create(&store, &d).await.unwrap_err();
        assert_eq!(field(e).as_deref(), Some("tags"));
        assert!(list(&store).await.unwrap().is_empty());
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_v4_database_moves_its_devices_and_products_into_records() {
        // Proves migration v4 -> v5: devices and products stored in the tables of schema v3
        // open as the same devices (tags and secret included), and the old tables are gone.
        let dir = tempfile::tempdir().unwrap();
        {
            let mut conn = rusqlite::Connection::open(dir.path().join("sluice.db")).unwrap();
            crate::store::sqlite::schema::migrate_to(&mut conn, 4).unwrap();
            conn.execute_batch(
                r#"INSERT INTO topics (id, name, create_time_ms) VALUES (1, 'old', 1);
                   INSERT INTO products (product_key, create_time_ms) VALUES ('pk1', 1), ('gone', 1);
                   INSERT INTO devices (product_key, device_name, secret, tags, create_time_ms)
                   VALUES ('pk1', 'dev1', 's3cret', '{"site":"north"}', 1);"#,
            )
            .unwrap();
        }
        let store = Store::open(dir.path(), Default::default()).unwrap();
        assert_eq!(store.list_topics().await.unwrap()[0].name, "old");
        assert_eq!(list(&store).await.unwrap(), vec![device("pk1", "dev1")]);
        assert_eq!(list_products(&store).await.unwrap(), vec!["gone", "pk1"]);
        assert!(create(&store, &device("pk1", "dev2")).await.unwrap());
        store.close().await.unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("sluice.db")).unwrap();
        let old: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('devices', 'products')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old, 0, "the v3 tables are gone");
    }
}
