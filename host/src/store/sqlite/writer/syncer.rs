//! Durable acknowledgements off the writer thread.
//!
//! At `synchronous=FULL` SQLite fsyncs the write-ahead log inside every COMMIT, and the single
//! writer thread sits idle for the whole fsync (0.1–3 ms here) while requests queue behind it.
//! Instead the write connection runs at `synchronous=NORMAL` — WAL frames are written at COMMIT
//! but not synced; checkpoints still sync the WAL before copying it and the database after,
//! and the WAL header when the log restarts, so the file is never corrupted — and this thread
//! fsyncs the WAL after each commit and only then sends that commit's answers. One fsync covers
//! every commit made before it started, so commits that pile up during an fsync share the next
//! one, and the writer applies batch k+1 while batch k's fsync runs. Nothing is acknowledged
//! before it is on disk: the guarantee of FULL, pipelined.
//!
//! Effects a commit shows before its fsync (a message becomes visible to receives and pushes)
//! are safe: only a power loss can undo an unsynced commit, and then nobody was told it
//! happened; a consumer that saw such a message and deletes it waits for a later fsync, which
//! covers the earlier commit too.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use super::request::Held;
use crate::store::error::StoreError;
use crate::store::metrics::StoreCounters;

/// One request's answer, held until its commit is on disk.
pub(super) type Answer = Box<dyn Held>;

/// Makes everything written to the WAL so far durable.
pub(super) type MakeDurable = Box<dyn FnMut() -> std::io::Result<()> + Send>;

/// The sync thread's handle, owned by the writer.
pub(super) struct Syncer {
    tx: Option<mpsc::Sender<Vec<Answer>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    failed: Arc<AtomicBool>,
    progress: Arc<Progress>,
    path: PathBuf,
}

/// How far the sync thread has got. While it is busy the writer keeps its transaction open
/// and adds the requests that arrive, and it commits when the disk is free.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// Commits handed over whose answers are not sent yet.
    unsynced: AtomicUsize,
    /// Notified (all waiters) after every fsync.
    synced: tokio::sync::Notify,
}

impl Progress {
    /// Is an fsync running or waiting to run?
    pub(super) fn busy(&self) -> bool {
        self.unsynced.load(Ordering::Acquire) > 0
    }

    /// Completes after the next fsync; enable it before checking [`Progress::busy`] so a sync
    /// that ends in between is not missed.
    pub(super) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.synced.notified()
    }
}

impl Syncer {
    /// Starts the thread; `make_durable` is [`wal_fsync`] outside tests.
    pub(super) fn start(
        path: PathBuf,
        make_durable: MakeDurable,
        counters: Arc<StoreCounters>,
    ) -> std::io::Result<Syncer> {
        let (tx, rx) = mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress::default());
        let thread = {
            let (failed, progress, path) = (failed.clone(), progress.clone(), path.clone());
            std::thread::Builder::new()
                .name("sluice-store-sync".into())
                .spawn(move || {
                    run(rx, make_durable, &failed, &progress, &path, &counters);
                })?
        };
        Ok(Syncer {
            tx: Some(tx),
            thread: Some(thread),
            failed,
            progress,
            path,
        })
    }

    /// The thread's progress, for the writer to commit when the disk is free.
    pub(super) fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// Hands over the answers of a commit that just returned.
    pub(super) fn after_commit(&self, answers: Vec<Answer>) {
        if answers.is_empty() {
            return;
        }
        if let Some(tx) = &self.tx {
            self.progress.unsynced.fetch_add(1, Ordering::AcqRel);
            if let Err(mpsc::SendError(answers)) = tx.send(answers) {
                self.progress.unsynced.fetch_sub(1, Ordering::AcqRel);
                // The thread is gone (it never exits early; only a panic ends it).
                let stopped = StoreError::Internal("the store's sync thread has stopped".into());
                for held in answers {
                    held.send(Some(&stopped));
                }
            }
        }
    }

    /// Set once an fsync failed: what the disk holds is no longer known, so the writer refuses
    /// further work until a restart (which recovers from what is really on disk).
    pub(super) fn failed(&self) -> Option<StoreError> {
        self.failed
            .load(Ordering::Acquire)
            .then(|| sync_failed(&self.path))
    }

    /// Waits until every answer handed over has been sent.
    pub(super) fn finish(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.finish();
    }
}

fn sync_failed(path: &Path) -> StoreError {
    StoreError::Io {
        action: "an fsync failed for",
        path: path.to_path_buf(),
        source: std::io::Error::other(
            "writes are refused until sluice is restarted (check the disk and its free space)",
        ),
    }
}

fn run(
    rx: mpsc::Receiver<Vec<Answer>>,
    mut make_durable: MakeDurable,
    failed: &AtomicBool,
    progress: &Progress,
    path: &Path,
    counters: &StoreCounters,
) {
    while let Ok(mut answers) = rx.recv() {
        // Every commit handed over by now was written before this fsync starts: one covers all.
        let mut commits = 1;
        while let Ok(more) = rx.try_recv() {
            answers.extend(more);
            commits += 1;
        }
        let started = Instant::now();
        let synced = if failed.load(Ordering::Acquire) {
            Err(std::io::Error::other("an earlier fsync failed"))
        } else {
            make_durable()
        };
        counters.sync_time.record_duration(started.elapsed());
        // The disk is free before anyone hears back: a requester answered below that sends its
        // next request at once finds the writer ready to commit it.
        progress.unsynced.fetch_sub(commits, Ordering::AcqRel);
        progress.synced.notify_waiters();
        match synced {
            Ok(()) => {
                for held in answers {
                    held.send(None);
                }
            }
            Err(e) => {
                if !failed.swap(true, Ordering::AcqRel) {
                    tracing::error!(path = %path.display(), error = %e, "fsync of the write-ahead log failed; the store refuses writes until it is restarted");
                }
                let failed = sync_failed(path);
                for held in answers {
                    held.send(Some(&failed));
                }
            }
        }
    }
}

/// fsyncs the database's write-ahead log (`{db}-wal`). The file is reopened if SQLite ever
/// replaced it (a new inode), so the sync always reaches the file commits are written to.
pub(super) fn wal_fsync(db: &Path) -> MakeDurable {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    let mut open: Option<(File, u64)> = None;
    Box::new(move || current(&mut open, &wal)?.sync_data())
}

/// The open WAL file, reopened when the path names another inode than the one held.
fn current<'a>(open: &'a mut Option<(File, u64)>, wal: &Path) -> std::io::Result<&'a File> {
    let inode = std::fs::metadata(wal)?.ino();
    if open.as_ref().is_none_or(|(_, ino)| *ino != inode) {
        *open = Some((File::open(wal)?, inode));
    }
    Ok(&open.as_ref().expect("just set").0)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    fn answer() -> (
        Answer,
        tokio::sync::oneshot::Receiver<crate::store::Result<()>>,
    ) {
        let (answer, rx) = tokio::sync::oneshot::channel();
        let held = super::super::request::Pending {
            answer,
            result: Ok(()),
        };
        (Box::new(held), rx)
    }

    #[test]
    fn answers_wait_for_the_fsync_and_commits_that_pile_up_share_one() {
        let syncs = Arc::new(AtomicUsize::new(0));
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let make_durable: MakeDurable = {
            let syncs = syncs.clone();
            Box::new(move || {
                gate_rx.recv().expect("gate");
                syncs.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        };
        let mut s = Syncer::start("db".into(), make_durable, Arc::default()).unwrap();
        let (first, mut first_rx) = answer();
        s.after_commit(vec![first]);
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            first_rx.try_recv().is_err(),
            "nothing is answered before its fsync returns"
        );
        // Two more commits arrive while the first fsync is running.
        let (a, mut a_rx) = answer();
        let (b, mut b_rx) = answer();
        s.after_commit(vec![a]);
        s.after_commit(vec![b]);
        gate_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(first_rx.try_recv().unwrap().is_ok());
        assert!(a_rx.try_recv().is_err() && b_rx.try_recv().is_err());
        assert!(s.progress().busy(), "two commits wait for the disk");
        gate_tx.send(()).unwrap();
        s.finish();
        assert!(a_rx.try_recv().unwrap().is_ok() && b_rx.try_recv().unwrap().is_ok());
        assert!(!s.progress().busy());
        assert_eq!(
            syncs.load(Ordering::SeqCst),
            2,
            "the two later commits shared one"
        );
    }

    #[test]
    fn a_failed_fsync_fails_its_answers_and_every_later_one() {
        let make_durable: MakeDurable = Box::new(|| Err(std::io::Error::other("EIO")));
        let mut s = Syncer::start("db".into(), make_durable, Arc::default()).unwrap();
        let (a, a_rx) = answer();
        s.after_commit(vec![a]);
        let err = a_rx.blocking_recv().unwrap().unwrap_err().to_string();
        assert!(
            err.contains("fsync failed") && err.contains("restarted"),
            "{err}"
        );
        assert!(s.failed().is_some(), "the writer learns of it");
        s.finish();
    }

    #[test]
    fn the_wal_fsync_follows_a_replaced_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        assert!(
            wal_fsync(&db)().is_err(),
            "no WAL: an error, not a silent success"
        );
        let wal = dir.path().join("x.db-wal");
        std::fs::write(&wal, b"one").unwrap();
        let mut open = None;
        let first = current(&mut open, &wal).unwrap().metadata().unwrap().ino();
        std::fs::remove_file(&wal).unwrap();
        std::fs::write(&wal, b"two").unwrap();
        let now = std::fs::metadata(&wal).unwrap().ino();
        let second = current(&mut open, &wal).unwrap().metadata().unwrap().ino();
        assert_eq!(second, now, "the sync reaches the file commits now go to");
        assert_ne!(first, second);
    }
}
