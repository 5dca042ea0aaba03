//! Checkpoints off the writer thread.
//!
//! SQLite's automatic checkpoint runs inside the COMMIT that takes the write-ahead log past
//! 1,000 pages: the writer copies those pages into the database file and fsyncs it while every
//! request waits (and a single commit takes as long as the disk stalls). Here the write connection's automatic checkpoint
//! is off. A thread with a connection of its own copies the log into the database every
//! [`CHECKPOINT_FRAMES`] new frames, in PASSIVE mode, which never blocks the writer.
//!
//! A passive checkpoint beside a busy writer never quite reaches the end of the log, and the log
//! only starts over from its beginning once everything in it was copied. So when the log holds
//! [`RESTART_FRAMES`], the writer itself copies, between two of its transactions, the few frames
//! the thread has not copied yet, and its next transaction starts the log over. That keeps the
//! log (and the disk it takes) bounded at a fraction of the old cost on the writer. When the
//! thread is still copying then, the writer tries again after its next commits; should the thread
//! stay busy until the log holds [`LIMIT_FRAMES`] (a slow disk under a steady load, where it runs
//! back to back), the writer waits for it and copies the rest, so the bound holds whatever the
//! load.

use std::cell::Cell;
use std::os::raw::c_int;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use rusqlite::hooks::Wal;
use rusqlite::Connection;

use crate::store::metrics::StoreCounters;
use crate::store::sqlite::schema::configure;
use crate::store::types::Synchronous;

/// New log frames (pages) between two background checkpoints: SQLite's own default.
pub(super) const CHECKPOINT_FRAMES: i32 = 1_000;
/// Log frames at which the writer copies the rest itself, so the log can start over (16 MiB of
/// 4 KiB pages).
pub(super) const RESTART_FRAMES: i32 = 4 * CHECKPOINT_FRAMES;
/// Log frames at which the writer waits for a busy checkpoint thread rather than let the log grow.
pub(super) const LIMIT_FRAMES: i32 = RESTART_FRAMES + CHECKPOINT_FRAMES;

thread_local! {
    /// Frames in the log after the last commit on this thread's connection (the writer's).
    static WAL_FRAMES: Cell<i32> = const { Cell::new(0) };
}

/// SQLite's commit hook for the log: notes its length (replaces the automatic checkpoint).
fn note_frames(_: &Wal, frames: c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.set(frames);
    Ok(())
}

/// Owned by the writer: decides when to checkpoint and where.
pub(super) struct Checkpoints {
    tx: Option<mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Held by whoever is checkpointing (the thread, or the writer copying the rest).
    running: Arc<Mutex<()>>,
    counters: Arc<StoreCounters>,
    /// Log length when the thread was last asked to run.
    requested_at: i32,
    /// Log length when the writer last copied the rest itself.
    inline_at: i32,
}

impl Checkpoints {
    /// Turns off `conn`'s automatic checkpoint and starts the checkpoint thread on `db`.
    pub(super) fn start(
        conn: &Connection,
        db: &Path,
        sync: Synchronous,
        counters: Arc<StoreCounters>,
    ) -> std::io::Result<Checkpoints> {
        conn.wal_hook(Some(note_frames));
        WAL_FRAMES.set(0);
        // Capacity 1: requests made while a checkpoint runs become one more run, not a queue.
        let (tx, rx) = mpsc::sync_channel(1);
        let running = Arc::new(Mutex::new(()));
        let thread = {
            let (db, running, counters) = (db.to_path_buf(), running.clone(), counters.clone());
            std::thread::Builder::new()
                .name("sluice-store-ckpt".into())
                .spawn(move || run(rx, &db, sync, &running, &counters))?
        };
        Ok(Checkpoints {
            tx: Some(tx),
            thread: Some(thread),
            running,
            counters,
            requested_at: 0,
            inline_at: 0,
        })
    }

    /// Called by the writer after each commit on `conn`.
    pub(super) fn after_commit(&mut self, conn: &Connection) {
        let frames = WAL_FRAMES.get();
        if frames < self.requested_at.max(self.inline_at) {
            // The log started over.
            self.requested_at = 0;
            self.inline_at = 0;
        }
        let inline = if frames >= RESTART_FRAMES && frames >= self.inline_at + CHECKPOINT_FRAMES {
            match self.running.try_lock() {
                Ok(guard) => Some(guard),
                // The thread is copying: try again after the next commit, unless the log is at
                // its limit, where waiting for the thread is cheaper than a log without bound.
                Err(_) if frames >= LIMIT_FRAMES => {
                    Some(self.running.lock().unwrap_or_else(|e| e.into_inner()))
                }
                Err(_) => None,
            }
        } else {
            None
        };
        if let Some(_running) = inline {
            self.inline_at = frames;
            self.requested_at = frames;
            checkpoint(conn, "the writer", &self.counters);
        } else if frames >= self.requested_at + CHECKPOINT_FRAMES {
            self.requested_at = frames;
            if let Some(tx) = &self.tx {
                // Full: a run is already pending and will copy these frames too.
                let _ = tx.try_send(());
            }
        }
    }

    /// Stops the thread after the checkpoint it is running, if any.
    pub(super) fn finish(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        self.finish();
    }
}

fn run(
    rx: mpsc::Receiver<()>,
    db: &PathBuf,
    sync: Synchronous,
    running: &Mutex<()>,
    counters: &StoreCounters,
) {
    let conn = match Connection::open(db).and_then(|c| configure(&c, sync).map(|()| c)) {
        Ok(c) => c,
        Err(e) => {
            // The writer still copies the log itself at RESTART_FRAMES, so nothing grows
            // without bound; it only pays for the whole copy.
            tracing::error!(path = %db.display(), error = %e, "the store's checkpoint thread cannot open the database; the writer checkpoints alone");
            return;
        }
    };
    while rx.recv().is_ok() {
        let _running = running.lock().unwrap_or_else(|e| e.into_inner());
        checkpoint(&conn, "the checkpoint thread", counters);
    }
}

/// One PASSIVE checkpoint on `conn` (copies what no reader still needs; never waits for locks).
fn checkpoint(conn: &Connection, by: &'static str, counters: &StoreCounters) {
    let started = Instant::now();
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        Ok(()) => counters.checkpoint_time.record_duration(started.elapsed()),
        Err(e) => tracing::warn!(by, error = %e, "store checkpoint failed; the next one retries"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames_of(wal: &Path) -> u64 {
        // 32-byte header, then frames of 24 bytes + a 4 KiB page.
        std::fs::metadata(wal)
            .map(|m| m.len().saturating_sub(32) / (24 + 4096))
            .unwrap_or(0)
    }

    #[test]
    fn the_log_is_copied_off_the_writer_and_starts_over_at_the_restart_length() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        let conn = Connection::open(&db).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        configure(&conn, Synchronous::Normal).unwrap();
        conn.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        let counters = Arc::new(StoreCounters::default());
        let mut c = Checkpoints::start(&conn, &db, Synchronous::Normal, counters.clone()).unwrap();
        let page = vec![7u8; 4000];
        // Each commit adds at least one page: three restart lengths' worth of commits.
        let mut longest = 0;
        for _ in 0..(3 * RESTART_FRAMES) {
            conn.execute("INSERT INTO t VALUES (?1)", [&page]).unwrap();
            c.after_commit(&conn);
            longest = longest.max(WAL_FRAMES.get());
        }
        c.finish();
        let checkpoints = counters.checkpoint_time.snapshot().samples;
        println!(
            "longest log {longest} frames, {checkpoints} checkpoints, file {} frames",
            frames_of(&dir.path().join("c.db-wal"))
        );
        assert!(
            checkpoints >= 3,
            "the log was copied as it grew ({checkpoints} checkpoints)"
        );
        // At its limit the writer waits for a busy thread (seen when the machine is loaded: the
        // thread then runs back to back, and before this bound the log reached 24,621 frames).
        assert!(
            longest < LIMIT_FRAMES + 16,
            "the log started over instead of growing ({longest} frames)"
        );
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, i64::from(3 * RESTART_FRAMES));
    }
}
