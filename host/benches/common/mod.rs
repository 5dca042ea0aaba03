//! What the store benchmarks share: the message body they all send.

use bytes::Bytes;

/// Body size of every benchmark message, bytes.
pub const BODY_BYTES: usize = 250;

/// Message `i`: a JSON object padded to [`BODY_BYTES`], distinct per `i`.
pub fn body(i: usize) -> Bytes {
    let mut s = format!("{{\"seq\":{i},\"pad\":\"");
    while s.len() < BODY_BYTES - 2 {
        s.push('x');
    }
    s.push_str("\"}");
    Bytes::from(s)
}
