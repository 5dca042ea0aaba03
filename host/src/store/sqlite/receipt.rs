//! Receipt handles: `base64url(seq ‖ gen)` without padding, 22 characters of `[A-Za-z0-9_-]`.
//!
//! `seq` is the message's row in its queue table; `gen` is a random non-zero 64-bit value drawn
//! for each receive or visibility change and stored in the row. A handle is accepted only when
//! its `gen` is the row's current one and the lease has not ended, so it cannot be forged or
//! guessed into another message, and an earlier handle stops working as soon as a new one exists.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::store::error::StoreError;

/// Length of an encoded handle.
pub(crate) const HANDLE_LEN: usize = 22;

/// The decoded parts of a handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Receipt {
    pub seq: u64,
    pub gen: i64,
}

impl Receipt {
    /// A fresh generation value: random and never 0 (0 marks a row that was never leased).
    pub fn new_gen() -> i64 {
        loop {
            let g: i64 = rand::random();
            if g != 0 {
                return g;
            }
        }
    }

    pub fn encode(&self) -> String {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&self.seq.to_be_bytes());
        raw[8..].copy_from_slice(&self.gen.to_be_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Strict decoding: exact length, only the URL-safe alphabet, canonical trailing bits,
    /// non-zero parts.
    pub fn decode(handle: &str) -> Result<Receipt, StoreError> {
        if handle.len() != HANDLE_LEN {
            return Err(StoreError::ReceiptHandleError {
                reason: "wrong length",
            });
        }
        let mut raw = [0u8; 16];
        // The engine rejects non-canonical trailing bits, so one handle has one spelling.
        match URL_SAFE_NO_PAD.decode_slice(handle.as_bytes(), &mut raw) {
            Ok(16) => {}
            _ => {
                return Err(StoreError::ReceiptHandleError {
                    reason: "not a receipt handle",
                })
            }
        }
        let mut s = [0u8; 8];
        s.copy_from_slice(&raw[..8]);
        let mut g = [0u8; 8];
        g.copy_from_slice(&raw[8..]);
        let r = Receipt {
            seq: u64::from_be_bytes(s),
            gen: i64::from_be_bytes(g),
        };
        if r.seq == 0 || r.gen == 0 || r.seq >= 1 << 58 {
            return Err(StoreError::ReceiptHandleError {
                reason: "not a receipt handle",
            });
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_use_only_url_safe_characters() {
        for _ in 0..1000 {
            let r = Receipt {
                seq: rand::random::<u64>() >> 8 | 1,
                gen: Receipt::new_gen(),
            };
            let h = r.encode();
            assert_eq!(h.len(), HANDLE_LEN);
            assert!(h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(Receipt::decode(&h).unwrap(), r);
        }
    }

    #[test]
    fn garbled_handles_are_refused() {
        let h = Receipt { seq: 7, gen: 99 }.encode();
        for bad in [
            "",
            "abc",
            &h[..21],
            &format!("{h}A"),
            &h.replace(&h[0..1], "+"),
            "AAAAAAAAAAAAAAAAAAAAAA", // seq 0, gen 0
            "//////////////////////",
            "AAAAAAAAAAAAAAAAAAAAAB", // non-canonical trailing bits
        ] {
            let e = Receipt::decode(bad).unwrap_err();
            assert_eq!(e.code(), "ReceiptHandleError", "{bad}");
        }
    }
}
