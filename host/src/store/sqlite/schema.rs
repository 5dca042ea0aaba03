//! Opening the database: data directory and file permissions, the directory lock, pragmas,
//! `quick_check`, and migrations by `PRAGMA user_version`.
//!
//! A migration is a function in [`MIGRATIONS`]; version `n` is `MIGRATIONS[n - 1]`. A v2 is one
//! more function appended to the list plus a test that builds a v1 database with
//! [`migrate_to`]`(conn, 1)`, fills it, opens it with `Store::open` and checks the data (see
//! `tests::migrations`).

use std::fs::File;
use std::path::Path;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::store::data_dir::{self, create_private_file};
use crate::store::error::StoreError;
use crate::store::types::{StoreOptions, StorePaths, Synchronous};

/// One schema step, run inside the migration transaction.
pub(crate) type Migration = fn(&Transaction<'_>) -> rusqlite::Result<()>;

/// Every schema step, oldest first.
pub(crate) const MIGRATIONS: &[Migration] = &[
    migrate_v1,
    super::push_state::migrate_v2_push,
    migrate_v3_devices,
    migrate_v4_keys,
    super::records::migrate_v5_records,
];

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Version 1: the catalog, shared bodies. Queue tables (`q_<id>`, see [`queue_table_ddl`]) are
/// created with their queue.
fn migrate_v1(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE topics (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            create_time_ms INTEGER NOT NULL
        );
        CREATE TABLE queues (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            create_time_ms INTEGER NOT NULL,
            attributes TEXT NOT NULL,
            expired_total INTEGER NOT NULL DEFAULT 0,
            dead_lettered_total INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE subscriptions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            topic_id INTEGER NOT NULL,
            name TEXT NOT NULL,
            spec TEXT NOT NULL,
            create_time_ms INTEGER NOT NULL,
            UNIQUE (topic_id, name)
        );
        CREATE TABLE bodies (
            id INTEGER PRIMARY KEY,
            refs INTEGER NOT NULL,
            body BLOB NOT NULL
        );",
    )
}

/// Version 3: products and devices (moved into `records` by version 5).
fn migrate_v3_devices(tx: &Transaction<'_>) -> rusqlite::Result<()> {
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

/// Version 4: access keys (moved into `records` by version 5).
fn migrate_v4_keys(tx: &Transaction<'_>) -> rusqlite::Result<()> {
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

/// The table of queue `id` (ids come from AUTOINCREMENT, so a name is never reused).
pub(crate) fn queue_table(id: i64) -> String {
    format!("q_{id}")
}

/// DDL of a queue table: delivery state first (so claims and the index rebuild read only the
/// leading bytes of a row), the message after it.
pub(crate) fn queue_table_ddl(id: i64) -> String {
    format!(
        "CREATE TABLE {} (
            seq INTEGER PRIMARY KEY,
            next_visible_ms INTEGER NOT NULL,
            receipt_gen INTEGER NOT NULL,
            dequeue_count INTEGER NOT NULL,
            first_dequeue_ms INTEGER,
            priority INTEGER NOT NULL,
            enqueue_ms INTEGER NOT NULL,
            message_id TEXT NOT NULL,
            body_md5 BLOB NOT NULL,
            tag TEXT,
            attributes TEXT,
            origin TEXT,
            body_ref INTEGER,
            body BLOB
        )",
        queue_table(id)
    )
}

/// An open, checked, migrated write connection and the held directory lock.
#[derive(Debug)]
pub(crate) struct Opened {
    pub conn: Connection,
    pub lock: File,
}

/// Opens the store's files and write connection, the data directory locked first.
pub(crate) fn open(paths: &StorePaths, opts: &StoreOptions) -> Result<Opened, StoreError> {
    let lock = data_dir::lock(&paths.dir, &paths.lock)?;
    drop(create_private_file(&paths.db)?);

    let db = &paths.db;
    let sq = |e: rusqlite::Error| StoreError::from_sqlite(e, db);
    let mut conn = Connection::open(db).map_err(sq)?;
    conn.busy_timeout(opts.busy_timeout).map_err(sq)?;
    if opts.quick_check {
        quick_check(&conn, db)?;
    }
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(sq)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Internal(format!(
            "{}: journal_mode is {mode}, WAL could not be enabled",
            db.display()
        )));
    }
    configure(&conn, opts.synchronous).map_err(sq)?;
    // 8 MiB: the writer touches the tail (inserts) and the head (claims) of each queue table,
    // and a larger cache makes every commit slower (SQLite scans the page-cache hash table at
    // the end of each transaction).
    conn.pragma_update(None, "cache_size", -8_000).map_err(sq)?;
    if let Some(max) = opts.max_db_bytes {
        let page: i64 = conn
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .map_err(sq)?;
        // The limit itself is enforced by the writer on sends and publishes; this hard cap
        // leaves headroom so receives and deletes (which rewrite rows) keep working to drain a
        // full store.
        let headroom = (max / 4).max(8 << 20);
        let pages = ((max + headroom) / page.max(512) as u64).max(1);
        conn.pragma_update(None, "max_page_count", pages as i64)
            .map_err(sq)?;
    }
    migrate_to(&mut conn, SCHEMA_VERSION).map_err(|e| match e {
        StoreError::SchemaTooNew {
            found, supported, ..
        } => StoreError::SchemaTooNew {
            path: db.clone(),
            found,
            supported,
        },
        StoreError::Sqlite(e) => sq(e),
        e => e,
    })?;
    Ok(Opened { conn, lock })
}

/// Pragmas every connection of the store uses.
pub(crate) fn configure(conn: &Connection, sync: Synchronous) -> rusqlite::Result<()> {
    let level = match sync {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", level)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

/// `PRAGMA quick_check`: anything but a single `ok` row refuses the file.
fn quick_check(conn: &Connection, db: &Path) -> Result<(), StoreError> {
    let sq = |e: rusqlite::Error| match StoreError::from_sqlite(e, db) {
        StoreError::Sqlite(e) => StoreError::Damaged {
            path: db.to_path_buf(),
            detail: e.to_string(),
        },
        other => other,
    };
    let mut stmt = conn.prepare("PRAGMA quick_check").map_err(sq)?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(sq)?
        .collect::<Result<_, _>>()
        .map_err(sq)?;
    if rows.len() == 1 && rows[0] == "ok" {
        Ok(())
    } else {
        Err(StoreError::Damaged {
            path: db.to_path_buf(),
            detail: rows.join("; "),
        })
    }
}

/// Brings the database to schema version `target` (tests use a lower target to build an old
/// database). Refuses a database newer than this build.
pub(crate) fn migrate_to(conn: &mut Connection, target: i64) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: Default::default(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for version in found + 1..=target {
        let step = MIGRATIONS[(version - 1) as usize];
        step(&tx)?;
        tx.pragma_update(None, "user_version", version)?;
        tracing::info!(version, "store schema migrated");
    }
    tx.commit()?;
    Ok(())
}
