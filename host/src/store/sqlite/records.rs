//! Records on SQLite (schema v5): one `records` table keyed by (kind, key), written by the
//! writer like catalog changes, read on the read connections.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::store::records::Record;
use crate::store::Result;

/// Schema v5: the `records` table. Earlier schemas kept devices, products and access keys in
/// tables of their own (v3, v4); their rows move here as the JSON documents their owners read
/// (same field names as those columns), and the old tables go.
pub(crate) fn migrate_v5_records(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE records (
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            update_time_ms INTEGER NOT NULL,
            PRIMARY KEY (kind, key)
        ) WITHOUT ROWID;
        INSERT INTO records (kind, key, value, update_time_ms)
            SELECT 'products', product_key,
                   json_object('product_key', product_key, 'create_time_ms', create_time_ms),
                   create_time_ms
            FROM products;
        INSERT INTO records (kind, key, value, update_time_ms)
            SELECT 'devices', product_key || '/' || device_name,
                   json_object('product_key', product_key, 'device_name', device_name,
                               'secret', secret, 'tags', json(tags),
                               'create_time_ms', create_time_ms),
                   create_time_ms
            FROM devices;
        INSERT INTO records (kind, key, value, update_time_ms)
            SELECT 'keys', name,
                   json_object('id', id, 'name', name, 'secret', secret,
                               'grants', json(grants), 'create_time_ms', create_time_ms),
                   create_time_ms
            FROM access_keys;
        DROP TABLE devices;
        DROP TABLE products;
        DROP TABLE access_keys;",
    )
}

/// Inserts a record unless one with its key exists; true when inserted.
pub(crate) fn insert(conn: &Connection, kind: &str, r: &Record, now: u64) -> Result<bool> {
    let n = conn
        .prepare_cached(
            "INSERT INTO records (kind, key, value, update_time_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![kind, r.key, r.value, now as i64])?;
    Ok(n == 1)
}

/// Inserts or replaces a record.
pub(crate) fn put(conn: &Connection, kind: &str, r: &Record, now: u64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO records (kind, key, value, update_time_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value,
             update_time_ms = excluded.update_time_ms",
    )?
    .execute(params![kind, r.key, r.value, now as i64])?;
    Ok(())
}

/// Removes a record; true when it existed.
pub(crate) fn delete(conn: &Connection, kind: &str, key: &str) -> Result<bool> {
    let n = conn
        .prepare_cached("DELETE FROM records WHERE kind = ?1 AND key = ?2")?
        .execute(params![kind, key])?;
    Ok(n == 1)
}

/// One record's value.
pub(crate) fn get(conn: &Connection, kind: &str, key: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT value FROM records WHERE kind = ?1 AND key = ?2")?
        .query_row(params![kind, key], |r| r.get(0))
        .optional()?)
}

/// Every record of a kind, by key.
pub(crate) fn list(conn: &Connection, kind: &str) -> Result<Vec<Record>> {
    let mut stmt =
        conn.prepare_cached("SELECT key, value FROM records WHERE kind = ?1 ORDER BY key")?;
    let rows = stmt.query_map(params![kind], |r| {
        Ok(Record {
            key: r.get(0)?,
            value: r.get(1)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The key range of the records under `parent` (keys `parent/...`): `/` sorts just before `0`.
fn under(parent: &str) -> (String, String) {
    (format!("{parent}/"), format!("{parent}0"))
}

/// The records of a kind under `parent`, by key.
pub(crate) fn list_under(conn: &Connection, kind: &str, parent: &str) -> Result<Vec<Record>> {
    let (from, to) = under(parent);
    let mut stmt = conn.prepare_cached(
        "SELECT key, value FROM records WHERE kind = ?1 AND key >= ?2 AND key < ?3 ORDER BY key",
    )?;
    let rows = stmt.query_map(params![kind, from, to], |r| {
        Ok(Record {
            key: r.get(0)?,
            value: r.get(1)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// How many records of a kind are under `parent`.
pub(crate) fn count_under(conn: &Connection, kind: &str, parent: &str) -> Result<usize> {
    let (from, to) = under(parent);
    let n: i64 = conn
        .prepare_cached("SELECT count(*) FROM records WHERE kind = ?1 AND key >= ?2 AND key < ?3")?
        .query_row(params![kind, from, to], |r| r.get(0))?;
    Ok(n as usize)
}

/// Removes the records of a kind under `parent`; how many there were.
pub(crate) fn delete_under(conn: &Connection, kind: &str, parent: &str) -> Result<usize> {
    let (from, to) = under(parent);
    Ok(conn
        .prepare_cached("DELETE FROM records WHERE kind = ?1 AND key >= ?2 AND key < ?3")?
        .execute(params![kind, from, to])?)
}
