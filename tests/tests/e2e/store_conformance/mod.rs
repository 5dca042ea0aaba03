//! The store's conformance suite, run through the library against both backends: SQLite in a
//! temporary directory and JetStream on a real `nats-server`. It lives with the end-to-end
//! tests because it needs that server; the SQLite-only store tests stay beside the code.

mod nats;
mod shared;
mod suite;

use bytes::Bytes;
use sluice::store::{Message, QueueAttributes, SendRequest, Store};

/// Creates a new queue with default attributes changed by `f`.
async fn create_queue(store: &Store, name: &str, f: impl FnOnce(&mut QueueAttributes)) {
    let mut a = QueueAttributes::default();
    f(&mut a);
    assert!(store.create_queue(name, a).await.expect("create queue"));
}

fn text(s: &str) -> SendRequest {
    SendRequest {
        body: Bytes::copy_from_slice(s.as_bytes()),
        ..SendRequest::default()
    }
}

fn body_text(m: &Message) -> String {
    String::from_utf8(m.body.to_vec()).expect("utf-8 body")
}
