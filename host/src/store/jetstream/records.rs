//! Records on JetStream: one replicated key-value bucket per kind, `{prefix}_{kind}`, so every
//! sluice process of a cluster signs in the same devices, accepts the same keys and runs the
//! same rules.
//!
//! A record key's `/`-separated parts become the bucket key's `.`-separated tokens, each part
//! written with [`kv_key`] (characters a key may not hold become `=XX`): `pk/dev.1` is stored
//! under `pk.dev=2E1`. A bucket is opened the first time its kind is used; its local copy is
//! kept current by a watcher ([`catalog`](super::catalog)), whose revision
//! [`JetStream::record_changes`] hands out so an owner can follow other processes' changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use tokio::sync::{watch, OnceCell};

use super::catalog::Bucket;
use super::{until_ready, JetStream, STARTUP_PATIENCE};
use crate::store::records::Record;
use crate::store::{Result, StoreError};

/// One kind's bucket.
type RecordBucket = Bucket<Box<RawValue>>;

/// The record buckets opened so far, by kind.
#[derive(Debug, Default)]
pub(super) struct Records {
    buckets: Mutex<HashMap<String, Arc<OnceCell<Arc<RecordBucket>>>>>,
}

/// `text` as one token of a key-value key: letters, digits, `-` and `_` stay, every other byte
/// becomes `=XX` (so `.` can separate the tokens).
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

/// A record key as a bucket key: each `/`-separated part one token.
fn record_key(key: &str) -> String {
    key.split('/').map(kv_key).collect::<Vec<_>>().join(".")
}

/// The record key a bucket key came from (the inverse of [`record_key`]).
fn from_kv_key(kv: &str) -> Option<String> {
    let mut parts = Vec::new();
    for token in kv.split('.') {
        let bytes = token.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'=' {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        parts.push(String::from_utf8(out).ok()?);
    }
    Some(parts.join("/"))
}

fn raw(value: String) -> Result<Box<RawValue>> {
    RawValue::from_string(value)
        .map_err(|e| StoreError::invalid("value", format!("a record is a JSON document: {e}")))
}

impl JetStream {
    /// The bucket of `kind`, opened (and created when missing) on first use.
    async fn bucket(&self, kind: &str) -> Result<Arc<RecordBucket>> {
        let cell = {
            let mut map = self
                .inner
                .records
                .buckets
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            map.entry(kind.to_owned()).or_default().clone()
        };
        let name = format!("{}_{kind}", self.inner.prefix);
        let (js, replicas) = (&self.inner.js, self.inner.replicas);
        cell.get_or_try_init(|| async {
            // A bucket created a moment ago may not answer reads yet: wait for it like at start.
            let bucket = until_ready(STARTUP_PATIENCE, || {
                RecordBucket::open(js, name.clone(), replicas)
            })
            .await?;
            Ok(Arc::new(bucket))
        })
        .await
        .cloned()
    }

    pub(in crate::store) async fn insert_record(&self, kind: &str, r: Record) -> Result<bool> {
        let bucket = self.bucket(kind).await?;
        Ok(bucket
            .create(&record_key(&r.key), &raw(r.value)?)
            .await?
            .is_none())
    }

    pub(in crate::store) async fn put_record(&self, kind: &str, r: Record) -> Result<()> {
        let bucket = self.bucket(kind).await?;
        bucket.put(&record_key(&r.key), &raw(r.value)?).await
    }

    pub(in crate::store) async fn delete_record(&self, kind: &str, key: &str) -> Result<bool> {
        let bucket = self.bucket(kind).await?;
        let key = record_key(key);
        if bucket.fetch(&key).await?.is_none() {
            return Ok(false);
        }
        bucket.delete(&key).await?;
        Ok(true)
    }

    pub(in crate::store) async fn get_record(
        &self,
        kind: &str,
        key: &str,
    ) -> Result<Option<String>> {
        let bucket = self.bucket(kind).await?;
        Ok(bucket
            .fetch(&record_key(key))
            .await?
            .map(|v| v.get().to_owned()))
    }

    /// Every record of the kind, from the local copy, by record key.
    pub(in crate::store) async fn list_records(&self, kind: &str) -> Result<Vec<Record>> {
        let bucket = self.bucket(kind).await?;
        self.records_of(kind, bucket.all())
    }

    /// The records of the kind under `parent`, from the local copy, by record key.
    pub(in crate::store) async fn list_records_under(
        &self,
        kind: &str,
        parent: &str,
    ) -> Result<Vec<Record>> {
        let bucket = self.bucket(kind).await?;
        self.records_of(
            kind,
            bucket.with_prefix(&format!("{}.", record_key(parent))),
        )
    }

    /// Bucket entries of `kind` as records, by record key.
    fn records_of(&self, kind: &str, entries: Vec<(String, Box<RawValue>)>) -> Result<Vec<Record>> {
        let mut out = Vec::with_capacity(entries.len());
        for (kv, value) in entries {
            let key = from_kv_key(&kv).ok_or_else(|| {
                StoreError::Internal(format!(
                    "bucket {}_{kind} holds key `{kv}`, which sluice did not write",
                    self.inner.prefix
                ))
            })?;
            out.push(Record {
                key,
                value: value.get().to_owned(),
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// How many records of the kind lie under `parent`, from the local copy.
    pub(in crate::store) async fn count_records_under(
        &self,
        kind: &str,
        parent: &str,
    ) -> Result<usize> {
        let bucket = self.bucket(kind).await?;
        Ok(bucket
            .with_prefix(&format!("{}.", record_key(parent)))
            .len())
    }

    /// Removes records by key (one key-value delete each: JetStream has no multi-key commit).
    pub(in crate::store) async fn delete_records(
        &self,
        kind: &str,
        keys: Vec<String>,
    ) -> Result<usize> {
        let mut n = 0;
        for key in keys {
            n += usize::from(self.delete_record(kind, &key).await?);
        }
        Ok(n)
    }

    /// Removes every record of the kind under `parent`.
    pub(in crate::store) async fn delete_records_under(
        &self,
        kind: &str,
        parent: &str,
    ) -> Result<usize> {
        let keys = self
            .list_records_under(kind, parent)
            .await?
            .into_iter()
            .map(|r| r.key)
            .collect();
        self.delete_records(kind, keys).await
    }

    /// The revision of the kind's local copy: it moves when any process changes a record.
    pub(in crate::store) async fn record_changes(
        &self,
        kind: &str,
    ) -> Result<watch::Receiver<u64>> {
        Ok(self.bucket(kind).await?.changes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_become_valid_unambiguous_bucket_keys_and_back() {
        assert_eq!(kv_key("a1B_c-d"), "a1B_c-d");
        assert_eq!(kv_key("dev.1"), "dev=2E1");
        assert_eq!(kv_key("x@y:z"), "x=40y=3Az");
        assert_eq!(record_key("pk/a.b"), "pk.a=2Eb");
        assert_ne!(record_key("a.b/c"), record_key("a/b.c"));
        for key in ["pk/dev-1", "a.b/c", "überschall", "x=y/z", "rule_1"] {
            assert_eq!(from_kv_key(&record_key(key)).as_deref(), Some(key));
        }
        assert_eq!(from_kv_key("bad=Z"), None);
    }
}
