//! Receipt handles on JetStream: the delivery's ack subject and the end of its lease, signed.
//!
//! JetStream identifies a delivery by its ack subject (`$JS.ACK.<stream>.<consumer>.<delivered>.
//! <stream seq>.<consumer seq>.<time>.<pending>`) and acts on any ack sent there, even after the
//! lease ended and the message went to someone else. So the handle carries the lease end too,
//! and an HMAC over the queue name, the lease end and the subject with a key shared by every
//! sluice process of the cluster: clients can neither forge a handle, move one to another queue,
//! nor stretch its lease. Layout (base64url, no padding):
//! `1 ‖ lease_end_ms (u64 BE) ‖ ack subject ‖ HMAC-SHA256(key, queue ‖ 0 ‖ first three)[..16]`.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::store::StoreError;

const VERSION: u8 = 1;
const MAC_LEN: usize = 16;
const ENGINE: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Issues and checks handles with the cluster's receipt key.
pub(super) struct Signer {
    key: [u8; 32],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

/// What a valid handle says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Lease {
    /// Where acks and naks for this delivery go.
    pub ack_subject: String,
    /// When the lease this handle was issued for ends, ms.
    pub lease_end_ms: u64,
}

impl Signer {
    pub(super) fn new(key: [u8; 32]) -> Signer {
        Signer { key }
    }

    /// A handle for the delivery at `ack_subject`, valid until `lease_end_ms`.
    pub(super) fn issue(&self, queue: &str, ack_subject: &str, lease_end_ms: u64) -> String {
        let mut raw = Vec::with_capacity(1 + 8 + ack_subject.len() + MAC_LEN);
        raw.push(VERSION);
        raw.extend_from_slice(&lease_end_ms.to_be_bytes());
        raw.extend_from_slice(ack_subject.as_bytes());
        let mac = self.mac(queue, &raw);
        raw.extend_from_slice(&mac[..MAC_LEN]);
        ENGINE.encode(raw)
    }

    /// Checks a handle for `queue` and `stream` (the queue's stream name); a malformed, forged or
    /// foreign handle is a [`StoreError::ReceiptHandleError`].
    pub(super) fn open(
        &self,
        queue: &str,
        stream: &str,
        handle: &str,
    ) -> Result<Lease, StoreError> {
        let bad = |reason| StoreError::ReceiptHandleError { reason };
        let raw = ENGINE
            .decode(handle.as_bytes())
            .map_err(|_| bad("not base64url"))?;
        if raw.len() < 1 + 8 + MAC_LEN + 1 || raw[0] != VERSION {
            return Err(bad("wrong length or version"));
        }
        let (body, mac) = raw.split_at(raw.len() - MAC_LEN);
        let mut check = self.keyed();
        check.update(queue.as_bytes());
        check.update(&[0]);
        check.update(body);
        check
            .verify_truncated_left(mac)
            .map_err(|_| bad("not issued for this queue"))?;
        let lease_end_ms = u64::from_be_bytes(body[1..9].try_into().map_err(|_| bad("length"))?);
        let ack_subject =
            String::from_utf8(body[9..].to_vec()).map_err(|_| bad("subject is not UTF-8"))?;
        // Signed by us, so this only fails if the stream naming changed under a live handle.
        let mut tokens = ack_subject.split('.');
        let stream_token = match (tokens.next(), tokens.next()) {
            (Some("$JS"), Some("ACK")) => {
                let rest: Vec<&str> = tokens.collect();
                // v1: stream.consumer.5 numbers; v2: domain.acchash.stream.consumer.6+ tokens.
                if rest.len() >= 9 {
                    rest[2]
                } else {
                    rest.first().copied().unwrap_or("")
                }
            }
            _ => "",
        };
        if stream_token != stream {
            return Err(bad("not issued for this queue"));
        }
        Ok(Lease {
            ack_subject,
            lease_end_ms,
        })
    }

    fn keyed(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length; 32 bytes cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC accepts any key length")
    }

    fn mac(&self, queue: &str, body: &[u8]) -> [u8; 32] {
        let mut m = self.keyed();
        m.update(queue.as_bytes());
        m.update(&[0]);
        m.update(body);
        m.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBJECT: &str = "$JS.ACK.sluice_q_jobs.q.1.7.7.1795756420310491425.0";

    #[test]
    fn a_handle_opens_for_its_queue_only_and_cannot_be_altered() {
        // Proves: the lease and subject come back; another queue, another key, a flipped byte
        // and garbage are all refused as malformed, never as stale.
        let s = Signer::new([7; 32]);
        let h = s.issue("jobs", SUBJECT, 1234);
        assert!(h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let lease = s.open("jobs", "sluice_q_jobs", &h).unwrap();
        assert_eq!(lease.ack_subject, SUBJECT);
        assert_eq!(lease.lease_end_ms, 1234);
        for (queue, stream, handle, signer) in [
            ("other", "sluice_q_other", h.clone(), &s),
            ("jobs", "sluice_q_jobs", h.clone(), &Signer::new([8; 32])),
            ("jobs", "sluice_q_jobs", "not a handle".to_owned(), &s),
            ("jobs", "sluice_q_jobs", String::new(), &s),
        ] {
            let e = signer.open(queue, stream, &handle).unwrap_err();
            assert_eq!(e.code(), "ReceiptHandleError", "{queue} {handle}: {e}");
        }
        let mut raw = ENGINE.decode(&h).unwrap();
        raw[3] ^= 1;
        let e = s
            .open("jobs", "sluice_q_jobs", &ENGINE.encode(raw))
            .unwrap_err();
        assert_eq!(e.code(), "ReceiptHandleError");
    }
}
