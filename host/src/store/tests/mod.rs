//! Store tests on real SQLite files in temporary directories. Each test starts with one line
//! saying what it proves.

mod catalog;
mod concurrency;
mod durability;
mod publish;
mod push;
mod queue;

use std::sync::Arc;

use bytes::Bytes;

use super::{ManualClock, QueueAttributes, SendRequest, Store, StoreOptions};

/// A fixed starting time for manual clocks (2023-11-14).
pub(super) const T0: u64 = 1_700_000_000_000;

/// A temporary data directory with a store on a manual clock.
pub(super) struct Env {
    pub dir: tempfile::TempDir,
    pub clock: Arc<ManualClock>,
    pub store: Store,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(T0));
        let store = open_with(dir.path(), clock.clone());
        Env { dir, clock, store }
    }

    /// Closes the store and opens it again on the same directory and clock.
    pub async fn reopen(&mut self) {
        self.store.close().await.expect("close");
        self.store = open_with(self.dir.path(), self.clock.clone());
    }

    /// Creates a queue with default attributes changed by `f`.
    pub async fn queue(&self, name: &str, f: impl FnOnce(&mut QueueAttributes)) {
        create_queue(&self.store, name, f).await
    }
}

/// Creates a new queue with default attributes changed by `f`.
pub(super) async fn create_queue(store: &Store, name: &str, f: impl FnOnce(&mut QueueAttributes)) {
    let mut a = QueueAttributes::default();
    f(&mut a);
    assert!(store.create_queue(name, a).await.expect("create queue"));
}

pub(super) fn open_with(dir: &std::path::Path, clock: Arc<ManualClock>) -> Store {
    Store::open(
        dir,
        StoreOptions {
            clock,
            ..StoreOptions::default()
        },
    )
    .expect("open store")
}

pub(super) fn text(s: &str) -> SendRequest {
    SendRequest {
        body: Bytes::copy_from_slice(s.as_bytes()),
        ..SendRequest::default()
    }
}

pub(super) fn body_text(m: &super::Message) -> String {
    String::from_utf8(m.body.to_vec()).expect("utf-8 body")
}
