//! The device registry: products and devices with their secrets and tags, and what is built on
//! it — MQTT sign-in ([`auth`]), per-device topic access ([`policy`]), device tags for rules
//! (`attribute()`), and downlink to a device ([`downlink`]).
//!
//! Devices and products are records in the store ([`record`]). This module keeps an in-memory
//! copy so the hot paths (every CONNECT, every PUBLISH check, every `attribute()` call) never
//! wait on the store: changes go to the store first and reach the copy only after their commit.

pub mod auth;
pub mod downlink;
pub mod policy;
pub mod record;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::rules::runtime::TagSource;
use crate::store::{Store, StoreError};
pub use record::Device;

pub use downlink::{DownlinkError, DownlinkOutcome, DownlinkPath};
pub use policy::DevicePolicy;

/// What the API needs of the device side: the registry and the way down to devices.
#[derive(Debug, Clone)]
pub struct DeviceService {
    /// Products, devices, secrets, tags, who is online.
    pub registry: Arc<DeviceRegistry>,
    /// Where downlink messages are published.
    pub downlink: DownlinkPath,
}

/// What the hot paths need of one device.
#[derive(Debug)]
pub struct DeviceEntry {
    /// The key of its MQTT signature.
    pub secret: String,
    /// Its tags, for `attribute()`.
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct Snapshot {
    devices: HashMap<(String, String), Arc<DeviceEntry>>,
    products: HashSet<String>,
}

/// Why a registry change failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A device of that name exists in the product.
    #[error("device `{device_name}` of product `{product_key}` already exists")]
    AlreadyExists {
        /// Product key.
        product_key: String,
        /// Device name.
        device_name: String,
    },
    /// No such device.
    #[error("device `{device_name}` of product `{product_key}` does not exist")]
    NotFound {
        /// Product key.
        product_key: String,
        /// Device name.
        device_name: String,
    },
    /// The store refused or failed (bad input names its field).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The registry: the store for durability, an in-memory copy for lookups, and which devices are
/// connected right now (for a clear "device offline" answer to downlink).
#[derive(Debug)]
pub struct DeviceRegistry {
    store: Store,
    snapshot: RwLock<Snapshot>,
    online: Mutex<HashMap<(String, String), u32>>,
}

impl DeviceRegistry {
    /// Loads every device and product from the store.
    pub async fn load(store: Store) -> Result<DeviceRegistry, StoreError> {
        let snapshot = read_snapshot(&store).await?;
        Ok(DeviceRegistry {
            store,
            snapshot: RwLock::new(snapshot),
            online: Mutex::new(HashMap::new()),
        })
    }

    /// Reads every device and product again (on a shared store, after another process
    /// changed them): a device registered elsewhere can sign in here, a deleted one cannot.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let snapshot = read_snapshot(&self.store).await?;
        *self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = snapshot;
        Ok(())
    }

    /// Registers a device with a new random secret and returns it (secret included: the only
    /// time it is shown).
    pub async fn create(
        &self,
        product_key: &str,
        device_name: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<Device, DeviceError> {
        self.create_with_secret(product_key, device_name, None, tags)
            .await
    }

    /// Registers a device with the given secret (a fleet provisioned elsewhere, `[[device]]`
    /// with `secret`), or a new random one when `None`.
    pub async fn create_with_secret(
        &self,
        product_key: &str,
        device_name: &str,
        secret: Option<String>,
        tags: BTreeMap<String, String>,
    ) -> Result<Device, DeviceError> {
        if let Some(s) = &secret {
            if s.is_empty() || s.len() > 128 || s.chars().any(|c| c.is_control()) {
                return Err(StoreError::InvalidArgument {
                    field: "secret",
                    message: "a device secret has 1-128 characters, no control characters".into(),
                }
                .into());
            }
        }
        let device = Device {
            product_key: product_key.to_string(),
            device_name: device_name.to_string(),
            secret: secret.unwrap_or_else(new_secret),
            tags,
            create_time_ms: crate::ids::now_ms(),
        };
        if !record::create(&self.store, &device).await? {
            return Err(DeviceError::AlreadyExists {
                product_key: product_key.to_string(),
                device_name: device_name.to_string(),
            });
        }
        let mut snap = self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        snap.products.insert(device.product_key.clone());
        snap.devices.insert(
            (device.product_key.clone(), device.device_name.clone()),
            Arc::new(DeviceEntry {
                secret: device.secret.clone(),
                tags: device.tags.clone(),
            }),
        );
        Ok(device)
    }

    /// Removes a device. Its open connection is not cut, but it cannot sign in again.
    pub async fn delete(&self, product_key: &str, device_name: &str) -> Result<(), DeviceError> {
        if !record::delete(&self.store, product_key, device_name).await? {
            return Err(DeviceError::NotFound {
                product_key: product_key.to_string(),
                device_name: device_name.to_string(),
            });
        }
        self.snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .devices
            .remove(&(product_key.to_string(), device_name.to_string()));
        Ok(())
    }

    /// One device from the store (secret included; callers showing it to people drop it).
    pub async fn get(&self, product_key: &str, device_name: &str) -> Result<Device, DeviceError> {
        record::get(&self.store, product_key, device_name)
            .await?
            .ok_or_else(|| DeviceError::NotFound {
                product_key: product_key.to_string(),
                device_name: device_name.to_string(),
            })
    }

    /// Every device from the store.
    pub async fn list(&self) -> Result<Vec<Device>, StoreError> {
        record::list(&self.store).await
    }

    /// The in-memory entry of a device (no I/O: used on every CONNECT).
    pub fn lookup(&self, product_key: &str, device_name: &str) -> Option<Arc<DeviceEntry>> {
        // Borrowed lookup without allocating: scan by key pair.
        let snap = self.snapshot.read().unwrap_or_else(PoisonError::into_inner);
        snap.devices
            .get(&(product_key.to_string(), device_name.to_string()))
            .cloned()
    }

    /// True when `product_key` was ever registered (its topics are then closed to anonymous
    /// clients).
    pub fn is_product(&self, product_key: &str) -> bool {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .products
            .contains(product_key)
    }

    /// True when at least one product is registered.
    pub fn has_products(&self) -> bool {
        !self
            .snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .products
            .is_empty()
    }

    /// Counts a signed-in session of the device (a takeover briefly counts two).
    pub(crate) fn session_opened(&self, product_key: &str, device_name: &str) {
        *self
            .online
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((product_key.to_string(), device_name.to_string()))
            .or_default() += 1;
    }

    /// Uncounts a signed-in session of the device.
    pub(crate) fn session_closed(&self, product_key: &str, device_name: &str) {
        let mut online = self.online.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (product_key.to_string(), device_name.to_string());
        if let Some(n) = online.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                online.remove(&key);
            }
        }
    }

    /// True while the device has a signed-in MQTT session on this process.
    pub fn is_online(&self, product_key: &str, device_name: &str) -> bool {
        self.online
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&(product_key.to_string(), device_name.to_string()))
    }
}

impl TagSource for DeviceRegistry {
    fn tag(&self, product_key: &str, device_name: &str, key: &str) -> Option<String> {
        self.lookup(product_key, device_name)?
            .tags
            .get(key)
            .cloned()
    }
}

async fn read_snapshot(store: &Store) -> Result<Snapshot, StoreError> {
    let mut snapshot = Snapshot::default();
    for pk in record::list_products(store).await? {
        snapshot.products.insert(pk);
    }
    for d in record::list(store).await? {
        snapshot.devices.insert(
            (d.product_key, d.device_name),
            Arc::new(DeviceEntry {
                secret: d.secret,
                tags: d.tags,
            }),
        );
    }
    Ok(snapshot)
}

/// 32 hex characters from the OS random generator, like the IoT platforms' device secrets.
fn new_secret() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Parses `k=v` (the CLI's `--tag` and the config file share this rule: the first `=` splits).
pub fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn registry_creates_once_serves_tags_and_survives_a_reload() {
        // Proves the registry: a created device gets a 32-hex secret, its tags are served to
        // rules through TagSource, a second create is AlreadyExists, and a new registry loaded
        // from the same store sees the device and its product.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let reg = DeviceRegistry::load(store.clone()).await.unwrap();
        let tags = BTreeMap::from([("site".to_string(), "north".to_string())]);
        let d = reg.create("pk", "dev", tags.clone()).await.unwrap();
        assert_eq!(d.secret.len(), 32);
        assert!(d.secret.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(reg.tag("pk", "dev", "site").as_deref(), Some("north"));
        assert_eq!(reg.tag("pk", "dev", "nope"), None);
        assert!(matches!(
            reg.create("pk", "dev", tags).await,
            Err(DeviceError::AlreadyExists { .. })
        ));
        let again = DeviceRegistry::load(store.clone()).await.unwrap();
        assert_eq!(again.lookup("pk", "dev").unwrap().secret, d.secret);
        assert!(again.is_product("pk") && !again.is_product("other"));
        again.delete("pk", "dev").await.unwrap();
        assert!(again.lookup("pk", "dev").is_none());
        assert!(matches!(
            again.delete("pk", "dev").await,
            Err(DeviceError::NotFound { .. })
        ));
        store.close().await.unwrap();
    }
}
