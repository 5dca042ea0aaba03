//! Message ids that are unique across processes sharing one store.
//!
//! An id is 16 bytes shown as 32 lowercase hex characters: 6 bytes of wall-clock milliseconds
//! (so ids sort roughly by creation time), 2 bytes of node id (so two sluice processes on one
//! shared store never collide), and 8 bytes from a per-process counter that starts at a random
//! value (so a restart within the same millisecond does not repeat an id).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A 128-bit message id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId([u8; 16]);

impl MessageId {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses the 32-hex-character form.
    pub fn parse(text: &str) -> Option<MessageId> {
        if text.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(MessageId(out))
    }

    /// The node id embedded in this id.
    pub fn node(&self) -> u16 {
        u16::from_be_bytes([self.0[6], self.0[7]])
    }

    /// The creation time embedded in this id, ms since the Unix epoch.
    pub fn time_ms(&self) -> u64 {
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(&self.0[..6]);
        u64::from_be_bytes(b)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 32];
        hex::encode_to_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
        // hex output is ASCII.
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// Hands out [`MessageId`]s for one node. Cheap to share: one atomic increment per id.
#[derive(Debug)]
pub struct IdGenerator {
    node: u16,
    counter: AtomicU64,
}

impl IdGenerator {
    /// A generator for `node`, with a counter starting at a random point.
    pub fn new(node: u16) -> IdGenerator {
        IdGenerator {
            node,
            counter: AtomicU64::new(rand::random::<u64>() >> 1),
        }
    }

    /// The node id this generator stamps into every id.
    pub fn node(&self) -> u16 {
        self.node
    }

    /// A fresh id stamped with the current wall-clock time.
    pub fn next(&self) -> MessageId {
        self.next_at(now_ms())
    }

    /// A fresh id stamped with `time_ms` (tests fix the clock).
    pub fn next_at(&self, time_ms: u64) -> MessageId {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&time_ms.to_be_bytes()[2..]);
        b[6..8].copy_from_slice(&self.node.to_be_bytes());
        b[8..].copy_from_slice(&n.to_be_bytes());
        MessageId(b)
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_carry_node_and_time() {
        let g = IdGenerator::new(7);
        let a = g.next_at(1_700_000_000_123);
        let b = g.next_at(1_700_000_000_123);
        assert_ne!(a, b);
        assert_eq!(a.node(), 7);
        assert_eq!(a.time_ms(), 1_700_000_000_123);
        let text = a.to_string();
        assert_eq!(text.len(), 32);
        assert!(text
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(MessageId::parse(&text), Some(a));
        assert_eq!(MessageId::parse("xyz"), None);
    }

    #[test]
    fn two_nodes_never_collide_even_with_equal_counters() {
        let a = IdGenerator::new(1);
        let b = IdGenerator::new(2);
        b.counter
            .store(a.counter.load(Ordering::Relaxed), Ordering::Relaxed);
        assert_ne!(a.next_at(5), b.next_at(5));
    }
}
