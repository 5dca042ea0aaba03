//! The data directory every backend keeps: created 0700, owned by one process at a time through
//! an exclusive lock on `sluice.lock`. On SQLite it also holds the database; on JetStream only
//! this process's own files (the lock, the credentials file).

use std::fs::{File, OpenOptions};
use std::path::Path;

use super::error::StoreError;

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

/// Creates `path` 0600 if it does not exist (SQLite would create it 0644; its `-wal` and `-shm`
/// files take the mode of the database file).
pub(crate) fn create_private_file(path: &Path) -> Result<File, StoreError> {
    let mut o = OpenOptions::new();
    o.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path).map_err(io_err("cannot create or open", path))
}

/// Creates `dir` (0700) if needed and takes the exclusive lock on `lock_file` in it. The lock is
/// held as long as the returned file is open; a second process gets [`StoreError::Locked`].
pub(crate) fn lock(dir: &Path, lock_file: &Path) -> Result<File, StoreError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .map_err(io_err("cannot create data directory", dir))?;

    let lock = create_private_file(lock_file)?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: lock_file.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err("cannot lock", lock_file)(e)),
    }
}
