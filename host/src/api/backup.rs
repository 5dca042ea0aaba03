//! `GET /v1/backup`: a consistent copy of the live store (SQLite's online backup API), streamed
//! as the database file itself, so `sluice backup FILE` works against a remote server too.
//!
//! The snapshot is first written beside the database (`.backup-<random>.db`, 0600), opened,
//! and unlinked at once: the open descriptor keeps it readable while it streams, and nothing is
//! left behind if the client goes away or the process dies.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncReadExt;

use super::error::ApiError;
use super::AppState;
use crate::store::StoreError;

/// Read size of the stream.
const CHUNK_BYTES: usize = 64 * 1024;

/// `GET /v1/backup` -> `200 application/vnd.sqlite3`, the database file.
pub async fn snapshot(State(state): State<AppState>) -> Result<Response, ApiError> {
    let dir = state.store.data_dir().to_path_buf();
    let tmp = dir.join(format!(".backup-{:016x}.db", rand::random::<u64>()));
    if let Err(e) = state.store.backup(&tmp).await {
        // The store writes `<tmp>.partial` and renames it; remove whichever is left.
        let mut partial = tmp.clone().into_os_string();
        partial.push(".partial");
        let _ = tokio::fs::remove_file(&partial).await;
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e.into());
    }
    let opened = tokio::fs::File::open(&tmp).await;
    let _ = tokio::fs::remove_file(&tmp).await;
    let file = opened.map_err(|source| StoreError::Io {
        action: "cannot open backup",
        path: tmp.clone(),
        source,
    })?;
    let len = file.metadata().await.map(|m| m.len()).ok();
    // The state is `None` after a read error, so the stream ends after reporting it.
    let stream = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; CHUNK_BYTES];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut response = (
        [
            (header::CONTENT_TYPE, "application/vnd.sqlite3"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"sluice-backup.db\"",
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response();
    if let Some(len) = len {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, len.into());
    }
    Ok(response)
}
