//! `sluice backup FILE`: a consistent copy of the store (SQLite's online backup API) written to
//! FILE with mode 0600.
//!
//! By default it asks the running server (`GET /v1/backup`, which snapshots the live store
//! while writers keep going) and streams the copy into FILE, so it works against a remote
//! server too. With `--data-dir DIR` it works offline on a stopped server's data directory
//! instead (it takes the directory's lock, so it refuses a directory a server is using).
//! Either way the copy lands in `FILE.partial` first and is renamed into place when complete.
//! The copy is a plain sluice database: start a server on a directory holding it as
//! `sluice.db` to restore.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::client::Client;
use super::output;
use crate::store::{Store, StoreOptions};

/// Arguments of `sluice backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where to write the copy (created 0600; replaced if it exists).
    pub file: PathBuf,
    /// Copy this data directory offline instead of asking the server (the server must be
    /// stopped).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Runs `sluice backup`.
pub async fn run(args: BackupArgs, client: &Client, as_json: bool) -> anyhow::Result<()> {
    let bytes = match &args.data_dir {
        Some(dir) => offline(dir, &args.file).await?,
        None => online(client, &args.file).await?,
    };
    if as_json {
        output::json(&json!({"file": args.file.display().to_string(), "bytes": bytes}));
    } else {
        println!("backup written to {} ({bytes} bytes)", args.file.display());
    }
    Ok(())
}

fn partial_path(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

async fn online(client: &Client, file: &Path) -> anyhow::Result<u64> {
    let mut response = client.get_raw("/v1/backup").await?;
    let partial = partial_path(file);
    let mut o = tokio::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut out = o
        .open(&partial)
        .await
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut written = 0u64;
    let result: anyhow::Result<()> = async {
        while let Some(chunk) = response
            .chunk()
            .await
            .context("the backup download broke off")?
        {
            out.write_all(&chunk)
                .await
                .with_context(|| format!("cannot write {}", partial.display()))?;
            written += chunk.len() as u64;
        }
        out.sync_all()
            .await
            .with_context(|| format!("cannot sync {}", partial.display()))?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    tokio::fs::rename(&partial, file)
        .await
        .with_context(|| format!("cannot rename {} to {}", partial.display(), file.display()))?;
    Ok(written)
}

async fn offline(dir: &Path, file: &Path) -> anyhow::Result<u64> {
    if !dir.join("sluice.db").exists() {
        anyhow::bail!("{} holds no sluice store (no sluice.db)", dir.display());
    }
    let dir_owned = dir.to_path_buf();
    let store =
        tokio::task::spawn_blocking(move || Store::open(&dir_owned, StoreOptions::default()))
            .await
            .context("store open task")?
            .with_context(|| format!("cannot open the store in {}", dir.display()))?;
    let result = store.backup(file).await;
    store.close().await.context("closing the store")?;
    result.with_context(|| format!("backup to {} failed", file.display()))?;
    Ok(tokio::fs::metadata(file)
        .await
        .map(|m| m.len())
        .unwrap_or(0))
}
