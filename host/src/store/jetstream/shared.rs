//! The rest of the catalog on JetStream: devices, products, access keys and rules, in
//! replicated key-value buckets, so every sluice process of a cluster signs in the same devices,
//! accepts the same keys and runs the same rules.
//!
//! # Buckets
//! `{prefix}_devices` (key `{product key}.{device name}`), `{prefix}_products`,
//! `{prefix}_keys` (by key name, so a name is claimed atomically) and `{prefix}_rules` (by rule
//! name). Names are written into keys with [`kv_key`]: characters a key may not hold become
//! `=XX`.
//!
//! # Changes made by other processes
//! Each bucket's local copy is kept current by its watcher ([`catalog`](super::catalog));
//! [`SharedChanges`] hands out its revision so the device registry, the key ring and the rule
//! registry rebuild their in-memory views whenever another process changed something.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::catalog::Bucket;
use super::JetStream;
use crate::ids::now_ms;
use crate::rules::catalog::{CatalogError, RuleCatalog};
use crate::rules::spec::RuleSpec;
use crate::store::devices::Device;
use crate::store::keys::AccessKey;
use crate::store::Result;

/// A registered product.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ProductRecord {
    pub product_key: String,
    pub create_time_ms: u64,
}

/// The shared buckets.
#[derive(Debug)]
pub(super) struct Shared {
    pub devices: Bucket<Device>,
    pub products: Bucket<ProductRecord>,
    pub keys: Bucket<AccessKey>,
    pub rules: Bucket<RuleSpec>,
}

impl Shared {
    pub(super) async fn open(
        js: &async_nats::jetstream::Context,
        prefix: &str,
        replicas: usize,
    ) -> Result<Shared> {
        Ok(Shared {
            devices: Bucket::open(js, format!("{prefix}_devices"), replicas).await?,
            products: Bucket::open(js, format!("{prefix}_products"), replicas).await?,
            keys: Bucket::open(js, format!("{prefix}_keys"), replicas).await?,
            rules: Bucket::open(js, format!("{prefix}_rules"), replicas).await?,
        })
    }
}

/// Revisions of the shared buckets, for the views that must follow other processes' changes.
#[derive(Debug, Clone)]
pub struct SharedChanges {
    /// Devices changed.
    pub devices: watch::Receiver<u64>,
    /// Products changed (a separate bucket: its change may reach this process after the
    /// device's).
    pub products: watch::Receiver<u64>,
    /// Access keys changed.
    pub keys: watch::Receiver<u64>,
    /// Rules changed.
    pub rules: watch::Receiver<u64>,
}

/// `text` as a key-value key: letters, digits, `-` and `_` stay, every other byte becomes
/// `=XX` (so `.` can separate the parts of a key).
pub(super) fn kv_key(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

fn device_key(product_key: &str, device_name: &str) -> String {
    format!("{}.{}", kv_key(product_key), kv_key(device_name))
}

impl JetStream {
    /// Revisions of the shared buckets.
    pub(in crate::store) fn shared_changes(&self) -> SharedChanges {
        let shared = &self.inner.shared;
        SharedChanges {
            devices: shared.devices.changes(),
            products: shared.products.changes(),
            keys: shared.keys.changes(),
            rules: shared.rules.changes(),
        }
    }

    pub(in crate::store) async fn create_device(&self, device: Device) -> Result<bool> {
        let shared = &self.inner.shared;
        let product = ProductRecord {
            product_key: device.product_key.clone(),
            create_time_ms: now_ms(),
        };
        shared
            .products
            .create(&kv_key(&device.product_key), &product)
            .await?;
        let key = device_key(&device.product_key, &device.device_name);
        Ok(shared.devices.create(&key, &device).await?.is_none())
    }

    pub(in crate::store) async fn delete_device(
        &self,
        product_key: &str,
        device_name: &str,
    ) -> Result<bool> {
        let key = device_key(product_key, device_name);
        let devices = &self.inner.shared.devices;
        if devices.fetch(&key).await?.is_none() {
            return Ok(false);
        }
        devices.delete(&key).await?;
        Ok(true)
    }

    pub(in crate::store) async fn get_device(
        &self,
        product_key: &str,
        device_name: &str,
    ) -> Result<Option<Device>> {
        self.inner
            .shared
            .devices
            .fetch(&device_key(product_key, device_name))
            .await
    }

    pub(in crate::store) fn list_devices(&self) -> Vec<Device> {
        let mut out: Vec<Device> = self
            .inner
            .shared
            .devices
            .all()
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        out.sort_by(|a, b| (&a.product_key, &a.device_name).cmp(&(&b.product_key, &b.device_name)));
        out
    }

    pub(in crate::store) fn list_products(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .inner
            .shared
            .products
            .all()
            .into_iter()
            .map(|(_, p)| p.product_key)
            .collect();
        out.sort();
        out
    }

    pub(in crate::store) async fn create_key(&self, key: AccessKey) -> Result<bool> {
        let keys = &self.inner.shared.keys;
        if keys.all().iter().any(|(_, k)| k.id == key.id) {
            return Ok(false);
        }
        Ok(keys.create(&kv_key(&key.name), &key).await?.is_none())
    }

    pub(in crate::store) async fn delete_key(&self, id: &str) -> Result<bool> {
        let keys = &self.inner.shared.keys;
        let Some((name, _)) = keys.all().into_iter().find(|(_, k)| k.id == id) else {
            return Ok(false);
        };
        keys.delete(&name).await?;
        Ok(true)
    }

    pub(in crate::store) fn list_keys(&self) -> Vec<AccessKey> {
        let mut out: Vec<AccessKey> = self
            .inner
            .shared
            .keys
            .all()
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub(in crate::store) async fn key_by_name(&self, name: &str) -> Result<Option<AccessKey>> {
        self.inner.shared.keys.fetch(&kv_key(name)).await
    }

    /// The rule catalog of the cluster, for a [`crate::rules::registry::RuleRegistry`].
    pub(in crate::store) fn rule_catalog(&self) -> ClusterRuleCatalog {
        ClusterRuleCatalog {
            js: self.clone(),
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

/// Rules in the cluster's `{prefix}_rules` bucket. The registry calls it from plain threads
/// (rule changes run off the async workers); each write runs on the runtime and waits.
#[derive(Debug)]
pub struct ClusterRuleCatalog {
    js: JetStream,
    runtime: tokio::runtime::Handle,
}

impl ClusterRuleCatalog {
    /// Runs `work` on the runtime from whatever thread the registry called on (a scoped
    /// thread, so this also works when called on an async worker).
    fn wait<T: Send>(
        &self,
        name: &str,
        work: impl std::future::Future<Output = Result<T>> + Send,
    ) -> std::result::Result<T, CatalogError> {
        let result = std::thread::scope(|s| {
            s.spawn(|| self.runtime.block_on(work))
                .join()
                .unwrap_or_else(|_| {
                    Err(crate::store::StoreError::Internal(
                        "rule catalog thread panicked".into(),
                    ))
                })
        });
        result.map_err(|e| CatalogError::Cluster {
            name: name.to_owned(),
            message: e.to_string(),
        })
    }
}

impl RuleCatalog for ClusterRuleCatalog {
    fn load_all(&self) -> std::result::Result<Vec<RuleSpec>, CatalogError> {
        let rules: BTreeMap<String, RuleSpec> = self
            .js
            .inner
            .shared
            .rules
            .all()
            .into_iter()
            .map(|(_, r)| (r.name.clone(), r))
            .collect();
        Ok(rules.into_values().collect())
    }

    fn save(&self, spec: &RuleSpec) -> std::result::Result<(), CatalogError> {
        let rules = &self.js.inner.shared.rules;
        self.wait(&spec.name, rules.put(&kv_key(&spec.name), spec))
    }

    fn delete(&self, name: &str) -> std::result::Result<bool, CatalogError> {
        let rules = &self.js.inner.shared.rules;
        let key = kv_key(name);
        self.wait(name, async {
            if rules.fetch(&key).await?.is_none() {
                return Ok(false);
            }
            rules.delete(&key).await?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_valid_unambiguous_keys() {
        assert_eq!(kv_key("a1B_c-d"), "a1B_c-d");
        assert_eq!(kv_key("dev.1"), "dev=2E1");
        assert_eq!(kv_key("x@y:z"), "x=40y=3Az");
        assert_eq!(device_key("pk", "a.b"), "pk.a=2Eb");
        assert_ne!(device_key("a.b", "c"), device_key("a", "b.c"));
    }
}
