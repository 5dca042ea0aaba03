//! The credentials file, `$SLUICE_CONFIG_DIR/credentials.toml` (default
//! `~/.config/sluice/credentials.toml`): one access key per server URL.
//!
//! `serve` writes its admin key under its own URL on every start, so the CLI on the same machine
//! works without copying secrets around; the CLI reads the entry of its `--server`. The file
//! holds secrets: it is written 0600 in a 0700 directory, under an exclusive lock
//! (`credentials.toml.lock`, so two servers starting at once do not drop each other's entry),
//! through a temporary file and an atomic rename (a reader never sees half a file).
//!
//! ```toml
//! [servers."http://127.0.0.1:8080"]
//! key_id = "SK..."
//! secret = "..."
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The environment variable naming the configuration directory.
pub const CONFIG_DIR_ENV: &str = "SLUICE_CONFIG_DIR";
/// The file name inside the configuration directory.
pub const FILE_NAME: &str = "credentials.toml";

/// Why the credentials file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// A file operation failed.
    #[error("credentials file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not the TOML this module writes.
    #[error("credentials file {path} is not valid: {detail}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
    /// Neither `SLUICE_CONFIG_DIR` nor `HOME` is set.
    #[error("no configuration directory: set SLUICE_CONFIG_DIR (or HOME)")]
    NoConfigDir,
}

/// One server's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The AccessKeyId.
    pub key_id: String,
    /// Its secret.
    pub secret: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    servers: BTreeMap<String, Entry>,
}

/// The configuration directory: `$SLUICE_CONFIG_DIR`, else `$HOME/.config/sluice`.
pub fn config_dir() -> Result<PathBuf, CredentialsError> {
    if let Some(dir) = std::env::var_os(CONFIG_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".config").join("sluice"))
        .ok_or(CredentialsError::NoConfigDir)
}

/// The credentials file path in `dir`.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// The form a server URL is filed under: no trailing slash.
pub fn normalize_url(url: &str) -> String {
    url.trim_end_matches('/').to_string()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CredentialsError + '_ {
    move |source| CredentialsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_file(path: &Path) -> Result<File, CredentialsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| CredentialsError::Invalid {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(File::default()),
        Err(e) => Err(io(path)(e)),
    }
}

/// The entry for `server` in the file in `dir`, if any.
pub fn lookup(dir: &Path, server: &str) -> Result<Option<Entry>, CredentialsError> {
    let file = read_file(&path_in(dir))?;
    Ok(file.servers.get(&normalize_url(server)).cloned())
}

/// Files `entry` under `server` in `dir`, keeping every other server's entry: creates the
/// directory 0700 if needed, takes the lock, writes a 0600 temporary file and renames it over
/// the old one.
pub fn store(dir: &Path, server: &str, entry: &Entry) -> Result<(), CredentialsError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let lock_path = dir.join(format!("{FILE_NAME}.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    // SAFETY: flock on a file descriptor this function owns; released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io(&lock_path)(std::io::Error::last_os_error()));
    }
    let path = path_in(dir);
    let mut file = read_file(&path)?;
    file.servers.insert(normalize_url(server), entry.clone());
    let text = toml::to_string(&file).map_err(|e| CredentialsError::Invalid {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    let tmp = dir.join(format!("{FILE_NAME}.tmp-{}", std::process::id()));
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    out.write_all(text.as_bytes()).map_err(io(&tmp))?;
    out.sync_all().map_err(io(&tmp))?;
    drop(out);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    drop(lock);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// Entries of several servers live side by side; the file is 0600 and the directory 0700.
    #[test]
    fn store_keeps_other_servers_and_is_owner_only() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("cfg");
        let a = Entry {
            key_id: "SKa".into(),
            secret: "sa".into(),
        };
        let b = Entry {
            key_id: "SKb".into(),
            secret: "sb".into(),
        };
        store(&dir, "http://127.0.0.1:1/", &a).unwrap();
        store(&dir, "http://127.0.0.1:2", &b).unwrap();
        assert_eq!(lookup(&dir, "http://127.0.0.1:1").unwrap(), Some(a));
        assert_eq!(lookup(&dir, "http://127.0.0.1:2/").unwrap(), Some(b));
        assert_eq!(lookup(&dir, "http://127.0.0.1:3").unwrap(), None);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path_in(&dir)), 0o600);
        assert_eq!(mode(&dir), 0o700);
        std::fs::write(path_in(&dir), "nonsense = [").unwrap();
        assert!(matches!(
            lookup(&dir, "x"),
            Err(CredentialsError::Invalid { .. })
        ));
    }
}
