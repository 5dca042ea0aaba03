//! Records: small JSON documents that other layers keep in the store (rules, devices, products,
//! access keys) without the store knowing their shape. The owning layer names the kind, picks
//! the key and encodes the value; the store keeps them durable, ordered by key, on both backends,
//! and a backup carries them with everything else.
//!
//! Records change rarely and are read at start (the owners keep their own in-memory views), so
//! they go through the same writer as catalog changes on SQLite and through one replicated
//! key-value bucket per kind on JetStream, where [`crate::store::Store::record_changes`] tells
//! an owner that another process changed its kind.

use super::error::StoreError;
use super::Result;

/// Longest record key, in bytes.
pub const MAX_RECORD_KEY: usize = 512;
/// Largest record value, in bytes: a rule record holds its Wasm module (base64 in JSON), and
/// modules are capped at 32 MiB at upload.
pub const MAX_RECORD_VALUE: usize = 48 << 20;

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its key within its kind: letters, digits and `-_.:@` with `/` between parts.
    pub key: String,
    /// Its value: a JSON document in the owner's format.
    pub value: String,
}

/// Checks a kind name: 1 to 32 lowercase letters, digits or `_`, starting with a letter (it
/// names a bucket on JetStream).
pub(crate) fn check_kind(kind: &str) -> Result<()> {
    let ok = (1..=32).contains(&kind.len())
        && kind.starts_with(|c: char| c.is_ascii_lowercase())
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::invalid(
            "kind",
            format!(
                "record kind `{}` is not valid: 1-32 lowercase letters, digits or `_`",
                kind.escape_debug()
            ),
        ))
    }
}

/// Checks a key: 1 to [`MAX_RECORD_KEY`] bytes, no control characters, and no empty part
/// between `/`s (each part is one token of a key on JetStream).
pub(crate) fn check_key(key: &str) -> Result<()> {
    let ok = (1..=MAX_RECORD_KEY).contains(&key.len())
        && !key.chars().any(char::is_control)
        && key.split('/').all(|part| !part.is_empty());
    if ok {
        Ok(())
    } else {
        Err(StoreError::invalid(
            "key",
            format!(
                "record key `{}` is not valid: 1-{MAX_RECORD_KEY} bytes, no control characters, \
                 no empty part between `/`",
                key.escape_debug()
            ),
        ))
    }
}

/// Checks a value: a JSON document of at most [`MAX_RECORD_VALUE`] bytes.
pub(crate) fn check_value(value: &str) -> Result<()> {
    if value.len() > MAX_RECORD_VALUE {
        return Err(StoreError::invalid(
            "value",
            format!(
                "a record holds at most {MAX_RECORD_VALUE} bytes; this one has {}",
                value.len()
            ),
        ));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(value)
        .map(drop)
        .map_err(|e| StoreError::invalid("value", format!("a record is a JSON document: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_keys_and_values_are_checked_naming_the_field() {
        check_kind("devices").unwrap();
        check_kind("rule_v2").unwrap();
        for bad in ["", "Devices", "1x", "a-b", &"a".repeat(33)] {
            assert_eq!(check_kind(bad).unwrap_err().field(), Some("kind"), "{bad}");
        }
        check_key("pk/dev-1").unwrap();
        check_key("überschall").unwrap();
        for bad in ["", "a//b", "/a", "a/", "a\nb", &"k".repeat(513)] {
            assert_eq!(check_key(bad).unwrap_err().field(), Some("key"), "{bad:?}");
        }
        check_value(r#"{"a":1}"#).unwrap();
        assert_eq!(check_value("{").unwrap_err().field(), Some("value"));
    }
}
