//! [`StoreError`]: every way a store operation can fail, with the MNS error code, the offending
//! field and the HTTP status the API layer should answer with, so no caller has to match on
//! message text.

use std::path::PathBuf;

/// A failed store operation.
///
/// `code()` follows the MNS error names where MNS has one (the API puts it in
/// `{"error":{"code":..}}`), `field()` names the request field at fault, `status()` is the HTTP
/// status to answer with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named queue does not exist.
    #[error("queue `{name}` does not exist")]
    QueueNotExist {
        /// The queue name asked for.
        name: String,
    },
    /// The named topic does not exist.
    #[error("topic `{name}` does not exist")]
    TopicNotExist {
        /// The topic name asked for.
        name: String,
    },
    /// The named subscription does not exist on that topic.
    #[error("subscription `{name}` of topic `{topic}` does not exist")]
    SubscriptionNotExist {
        /// The topic.
        topic: String,
        /// The subscription name asked for.
        name: String,
    },
    /// A queue of that name exists with different attributes (same attributes: create succeeds
    /// and reports `false`).
    #[error("queue `{name}` already exists with different attributes")]
    QueueAlreadyExist {
        /// The queue name.
        name: String,
    },
    /// A subscription of that name exists with a different specification.
    #[error(
        "subscription `{name}` of topic `{topic}` already exists with a different specification"
    )]
    SubscriptionAlreadyExist {
        /// The topic.
        topic: String,
        /// The subscription name.
        name: String,
    },
    /// A request value is out of range or malformed; `field` names it (queue attributes use the
    /// spelling of docs/message-service.md) and the message gives the allowed range.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        /// The offending field, e.g. `visibility_timeout`.
        field: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// A message body is larger than the queue's (or topic's) `maximum_message_size`; nothing was
    /// stored.
    #[error("message body is {size} bytes, over the limit of {limit} bytes")]
    MessageTooLarge {
        /// The body size.
        size: usize,
        /// The limit in force.
        limit: u32,
    },
    /// The receipt handle is malformed or was never issued by this store.
    #[error("receipt handle is not valid: {reason}")]
    ReceiptHandleError {
        /// Why it was refused.
        reason: &'static str,
    },
    /// The receipt handle was issued for the message but is no longer its latest handle (a later
    /// receive or visibility change replaced it) or its visibility timeout has passed. Nothing was
    /// changed; the message stays with its current holder.
    #[error("receipt handle is stale: {reason}")]
    ReceiptHandleStale {
        /// Which of the two cases.
        reason: &'static str,
    },
    /// The receipt handle refers to no message in the queue (deleted long ago, expired by
    /// retention, moved to the dead-letter queue, or made up).
    #[error("no message in queue `{queue}` for this receipt handle")]
    MessageNotExist {
        /// The queue.
        queue: String,
    },
    /// The disk (or `max_page_count`) is full; the operation wrote nothing and can be retried
    /// once space is freed.
    #[error("storage is full: {0}")]
    StorageFull(String),
    /// The database stayed locked by another connection past the busy timeout.
    #[error("database {path} is busy (locked by another connection)")]
    Busy {
        /// The database file.
        path: PathBuf,
    },
    /// Another process owns this data directory (its lock file is held).
    #[error("data directory is in use by another process: lock file {path} is held")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The database file fails `PRAGMA quick_check` or is not a database: the store refuses to
    /// serve it rather than invent or drop messages.
    #[error("database {path} is damaged: {detail}")]
    Damaged {
        /// The database file.
        path: PathBuf,
        /// What SQLite reported.
        detail: String,
    },
    /// The database was written by a newer sluice (higher `user_version` than this build knows).
    #[error("database {path} has schema version {found}, newer than this sluice ({supported})")]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// `user_version` found.
        found: i64,
        /// Highest version this build migrates to.
        supported: i64,
    },
    /// A file system operation on a store path failed (unwritable data directory, ...).
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The JetStream cluster could not be reached or did not answer in time (no quorum, a
    /// leader election, the network); nothing was acknowledged, the request can be retried.
    #[error("the message store is unavailable: {0}")]
    Unavailable(String),
    /// The operation exists but not on this store backend; the text says what to do instead.
    #[error("not supported by this store: {0}")]
    Unsupported(String),
    /// The store was closed (or its writer thread stopped).
    #[error("the store is closed")]
    Closed,
    /// An unexpected SQLite failure.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A broken internal invariant; a bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl StoreError {
    /// The error code for the API (`{"error":{"code":..}}`), an MNS name where MNS has one.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::QueueNotExist { .. } => "QueueNotExist",
            StoreError::TopicNotExist { .. } => "TopicNotExist",
            StoreError::SubscriptionNotExist { .. } => "SubscriptionNotExist",
            StoreError::QueueAlreadyExist { .. } => "QueueAlreadyExist",
            StoreError::SubscriptionAlreadyExist { .. } => "SubscriptionAlreadyExist",
            // MNS reports size limits as InvalidArgument ("value of .. should between ..").
            StoreError::InvalidArgument { .. } | StoreError::MessageTooLarge { .. } => {
                "InvalidArgument"
            }
            StoreError::ReceiptHandleError { .. } => "ReceiptHandleError",
            StoreError::ReceiptHandleStale { .. } => "ReceiptHandleStale",
            StoreError::MessageNotExist { .. } => "MessageNotExist",
            StoreError::StorageFull(_) => "StorageFull",
            StoreError::Busy { .. }
            | StoreError::Locked { .. }
            | StoreError::Closed
            | StoreError::Unavailable(_) => "ServiceUnavailable",
            StoreError::Unsupported(_) => "NotSupported",
            StoreError::Damaged { .. }
            | StoreError::SchemaTooNew { .. }
            | StoreError::Io { .. }
            | StoreError::Sqlite(_)
            | StoreError::Internal(_) => "InternalError",
        }
    }

    /// The request field at fault, when one is.
    pub fn field(&self) -> Option<&str> {
        match self {
            StoreError::InvalidArgument { field, .. } => Some(field),
            StoreError::MessageTooLarge { .. } => Some("body"),
            StoreError::ReceiptHandleError { .. }
            | StoreError::ReceiptHandleStale { .. }
            | StoreError::MessageNotExist { .. } => Some("receipt_handle"),
            _ => None,
        }
    }

    /// The HTTP status the API should answer with.
    pub fn status(&self) -> u16 {
        match self {
            StoreError::QueueNotExist { .. }
            | StoreError::TopicNotExist { .. }
            | StoreError::SubscriptionNotExist { .. }
            | StoreError::MessageNotExist { .. } => 404,
            StoreError::QueueAlreadyExist { .. }
            | StoreError::SubscriptionAlreadyExist { .. }
            | StoreError::ReceiptHandleStale { .. } => 409,
            StoreError::InvalidArgument { .. } | StoreError::ReceiptHandleError { .. } => 400,
            StoreError::MessageTooLarge { .. } => 413,
            StoreError::StorageFull(_) => 507,
            StoreError::Busy { .. }
            | StoreError::Locked { .. }
            | StoreError::Closed
            | StoreError::Unavailable(_) => 503,
            StoreError::Unsupported(_) => 501,
            _ => 500,
        }
    }

    /// Shorthand for [`StoreError::InvalidArgument`].
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> StoreError {
        StoreError::InvalidArgument {
            field,
            message: message.into(),
        }
    }

    /// Classifies a SQLite error: full disk and busy locks get their own variants so callers can
    /// tell "retry later" from a bug.
    pub(crate) fn from_sqlite(e: rusqlite::Error, db: &std::path::Path) -> StoreError {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => StoreError::StorageFull(e.to_string()),
            Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => StoreError::Busy {
                path: db.to_path_buf(),
            },
            Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => {
                StoreError::Damaged {
                    path: db.to_path_buf(),
                    detail: e.to_string(),
                }
            }
            _ => StoreError::Sqlite(e),
        }
    }

    /// A copy for answering several waiters with one failure (a failed commit fails every request
    /// of its batch). `rusqlite::Error` and `io::Error` are not `Clone`, so those become text.
    pub(crate) fn duplicate(&self) -> StoreError {
        match self {
            StoreError::StorageFull(m) => StoreError::StorageFull(m.clone()),
            StoreError::Busy { path } => StoreError::Busy { path: path.clone() },
            StoreError::Closed => StoreError::Closed,
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            StoreError::Damaged { path, detail } => StoreError::Damaged {
                path: path.clone(),
                detail: detail.clone(),
            },
            other => StoreError::Internal(other.to_string()),
        }
    }
}
