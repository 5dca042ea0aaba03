//! Read connections: catalog reads and backups run here, off the writer thread and off the async
//! reactor (`spawn_blocking`). WAL lets them read a committed snapshot while the writer goes on.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};

use crate::store::error::StoreError;
use crate::store::types::{SubscriptionInfo, SubscriptionSpec, TopicInfo};

/// Idle read connections kept for reuse.
const MAX_IDLE_READERS: usize = 4;

/// A small pool of read connections, opened on demand.
#[derive(Debug)]
pub(crate) struct ReadPool {
    db: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    pub fn new(db: PathBuf, busy_timeout: Duration) -> ReadPool {
        ReadPool {
            db,
            busy_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on a read connection in the blocking pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.idle.lock().ok().and_then(|mut v| v.pop());
        let db = self.db.clone();
        let busy = self.busy_timeout;
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let conn = match conn {
                Some(c) => c,
                None => match open_reader(&db, busy) {
                    Ok(c) => c,
                    Err(e) => return (None, Err(e)),
                },
            };
            let result = f(&conn).map_err(|e| match e {
                StoreError::Sqlite(e) => StoreError::from_sqlite(e, &db),
                e => e,
            });
            (Some(conn), result)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("read task failed: {e}")))?;
        if let Some(conn) = conn {
            if let Ok(mut idle) = self.idle.lock() {
                if idle.len() < MAX_IDLE_READERS {
                    idle.push(conn);
                }
            }
        }
        result
    }
}

fn open_reader(db: &Path, busy: Duration) -> Result<Connection, StoreError> {
    let sq = |e| StoreError::from_sqlite(e, db);
    let conn = Connection::open(db).map_err(sq)?;
    conn.busy_timeout(busy).map_err(sq)?;
    conn.pragma_update(None, "query_only", true).map_err(sq)?;
    Ok(conn)
}

const TOPIC_SQL: &str = "SELECT t.name, t.create_time_ms, \
    (SELECT COUNT(*) FROM subscriptions s WHERE s.topic_id = t.id) FROM topics t";

fn topic_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TopicInfo> {
    Ok(TopicInfo {
        name: r.get(0)?,
        create_time_ms: r.get::<_, i64>(1)? as u64,
        subscriptions: r.get::<_, i64>(2)? as u32,
    })
}

pub(crate) fn get_topic(c: &Connection, name: &str) -> Result<TopicInfo, StoreError> {
    c.prepare_cached(&format!("{TOPIC_SQL} WHERE t.name = ?1"))?
        .query_row([name], topic_row)
        .optional()?
        .ok_or_else(|| StoreError::TopicNotExist {
            name: name.to_owned(),
        })
}

pub(crate) fn list_topics(c: &Connection) -> Result<Vec<TopicInfo>, StoreError> {
    let mut stmt = c.prepare_cached(&format!("{TOPIC_SQL} ORDER BY t.name"))?;
    let rows = stmt.query_map([], topic_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn sub_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn to_sub_info(
    (topic, name, spec, created): (String, String, String, i64),
) -> Result<SubscriptionInfo, StoreError> {
    let spec: SubscriptionSpec = serde_json::from_str(&spec)
        .map_err(|e| StoreError::Internal(format!("subscription `{name}` spec: {e}")))?;
    Ok(SubscriptionInfo {
        topic,
        name,
        spec,
        create_time_ms: created as u64,
    })
}

const SUB_SQL: &str = "SELECT t.name, s.name, s.spec, s.create_time_ms FROM subscriptions s \
    JOIN topics t ON t.id = s.topic_id WHERE t.name = ?1";

pub(crate) fn get_subscription(
    c: &Connection,
    topic: &str,
    name: &str,
) -> Result<SubscriptionInfo, StoreError> {
    let row = c
        .prepare_cached(&format!("{SUB_SQL} AND s.name = ?2"))?
        .query_row([topic, name], sub_row)
        .optional()?;
    match row {
        Some(row) => to_sub_info(row),
        None => {
            get_topic(c, topic)?;
            Err(StoreError::SubscriptionNotExist {
                topic: topic.to_owned(),
                name: name.to_owned(),
            })
        }
    }
}

pub(crate) fn list_subscriptions(
    c: &Connection,
    topic: &str,
) -> Result<Vec<SubscriptionInfo>, StoreError> {
    get_topic(c, topic)?;
    let mut stmt = c.prepare_cached(&format!("{SUB_SQL} ORDER BY s.name"))?;
    let rows = stmt.query_map([topic], sub_row)?;
    rows.map(|r| to_sub_info(r?)).collect()
}

/// Copies the database with the online backup API in a single step (one consistent snapshot; a
/// stepwise copy would restart whenever the writer commits), into `dest.partial` created 0600,
/// then renames it to `dest`.
pub(crate) fn backup(c: &Connection, dest: &Path) -> Result<(), StoreError> {
    use rusqlite::backup::{Backup, StepResult};
    let mut partial = dest.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io {
            action,
            path,
            source,
        }
    };
    {
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        o.open(&partial)
            .map_err(io("cannot create backup file", &partial))?;
    }
    let mut dst = Connection::open(&partial).map_err(|e| StoreError::from_sqlite(e, &partial))?;
    {
        let backup = Backup::new(c, &mut dst)?;
        let mut tries = 0;
        loop {
            match backup.step(-1)? {
                StepResult::Done => break,
                StepResult::More => continue,
                StepResult::Busy | StepResult::Locked if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    return Err(StoreError::Busy {
                        path: dest.to_path_buf(),
                    })
                }
            }
        }
    }
    dst.close()
        .map_err(|(_, e)| StoreError::from_sqlite(e, &partial))?;
    std::fs::rename(&partial, dest).map_err(io("cannot rename backup to", dest))?;
    Ok(())
}
