//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "id.timestamp.body">` keyed with the base64 part of the subscription's `whsec_` secret. During
//! a rotation's grace period the old secret signs too, and both signatures are sent
//! space-separated, so a receiver configured with either verifies.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::DeliverError;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The signing keys of one subscription, current first.
#[derive(Clone)]
pub struct Signer {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} keys)", self.keys.len())
    }
}

/// The key bytes of a `whsec_<base64>` secret.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, DeliverError> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    B64.decode(b64)
        .map_err(|_| DeliverError::BadSecret("not whsec_ followed by base64"))
}

impl Signer {
    /// Keys from the current secret and the ones still in their grace period.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Result<Signer, DeliverError> {
        let keys = secrets
            .into_iter()
            .map(decode_secret)
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(DeliverError::BadSecret("no signing secret"));
        }
        Ok(Signer { keys })
    }

    /// The `webhook-signature` header value for one attempt.
    pub fn signature(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let ts = timestamp.to_string();
        let mut out = String::with_capacity(self.keys.len() * 48);
        for key in &self.keys {
            // HMAC accepts keys of any length.
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
                continue;
            };
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(ts.as_bytes());
            mac.update(b".");
            mac.update(body);
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str("v1,");
            out.push_str(&B64.encode(mac.finalize().into_bytes()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // The example of the Standard Webhooks specification.
        let s = Signer::new(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]).unwrap();
        assert_eq!(
            s.signature(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_rotation_sends_both_signatures_and_a_bad_secret_is_refused() {
        let new = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let old = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let both = Signer::new([new, old]).unwrap().signature("id", 1, b"x");
        let parts: Vec<_> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            parts[0],
            Signer::new([new]).unwrap().signature("id", 1, b"x")
        );
        assert_eq!(
            parts[1],
            Signer::new([old]).unwrap().signature("id", 1, b"x")
        );
        assert!(Signer::new(["whsec_!!!"]).is_err());
        assert!(Signer::new(std::iter::empty()).is_err());
    }
}
