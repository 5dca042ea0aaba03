//! The one-device-one-secret MQTT sign-in of the Alibaba Cloud IoT device SDKs, so devices in
//! the field connect to sluice unchanged.
//!
//! What a device sends (checked against `aliyun-iot-linkkit` 1.2.13, `linkkit.py`):
//! - client id `{pk}&{dn}|securemode=3,signmethod=hmacsha1,ext=1,_ss=1,lan=Python,_v=..,timestamp=..|`
//!   (the part after `|` is a comma-separated parameter list; only `signmethod` and `timestamp`
//!   matter for the signature);
//! - user name `{dn}&{pk}`;
//! - password: lowercase hex HMAC, keyed with the device secret, over
//!   `clientId{pk}&{dn}deviceName{dn}productKey{pk}timestamp{ts}` (the `timestamp` part only
//!   when the client id carries one). The signed `clientId` is the part before `|`, not the
//!   whole client id.
//!
//! The `timestamp` is signed but its value is not bounded, on purpose: `linkkit.py` signs the
//! current time in seconds (not milliseconds) once, when it is configured, and its MQTT client
//! reconnects with the same client id and password for as long as the process runs (weeks, for a
//! device), and the C device SDK signs a fixed `2524608000000` (2050) on every connect. A skew
//! check would lock both out, and would not stop a replay within its window anyway. A captured
//! password is kept from others by TLS (the MQTT TLS listener); see `docs/security.md`.

use hmac::{Hmac, Mac};

/// A device's sign-in as read from its CONNECT, before the secret is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignIn {
    /// Product key (from the user name, checked against the client id).
    pub product_key: String,
    /// Device name (from the user name, checked against the client id).
    pub device_name: String,
    /// The HMAC the device used.
    pub method: SignMethod,
    /// The client id's `timestamp` parameter, signed when present.
    pub timestamp: Option<String>,
    /// The password: the hex signature.
    pub signature: String,
}

/// The HMAC algorithms the SDKs offer (`signmethod=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignMethod {
    /// `hmacsha1` (the Python SDK's choice).
    HmacSha1,
    /// `hmacsha256`.
    HmacSha256,
    /// `hmacmd5`.
    HmacMd5,
}

/// Why a CONNECT is not a well-formed device sign-in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignInError {
    /// The user name is not `{dn}&{pk}`.
    #[error("user name is not `deviceName&productKey`")]
    BadUsername,
    /// The client id is not `{pk}&{dn}|params|` or names another device than the user name.
    #[error("client id is not `productKey&deviceName|params|` for the user name's device")]
    BadClientId,
    /// `signmethod` is missing or not one of hmacsha1, hmacsha256, hmacmd5.
    #[error("signmethod must be hmacsha1, hmacsha256 or hmacmd5")]
    BadSignMethod,
    /// No password, or a password that is not text.
    #[error("password is missing or not text")]
    BadPassword,
}

impl SignIn {
    /// Reads a sign-in from the CONNECT's client id, user name and password.
    pub fn parse(
        client_id: &str,
        username: &str,
        password: Option<&[u8]>,
    ) -> Result<SignIn, SignInError> {
        let (device_name, product_key) =
            username.split_once('&').ok_or(SignInError::BadUsername)?;
        if device_name.is_empty() || product_key.is_empty() {
            return Err(SignInError::BadUsername);
        }
        let (id, rest) = client_id.split_once('|').ok_or(SignInError::BadClientId)?;
        if id != format!("{product_key}&{device_name}") {
            return Err(SignInError::BadClientId);
        }
        let params = rest.strip_suffix('|').ok_or(SignInError::BadClientId)?;
        let mut method = None;
        let mut timestamp = None;
        for param in params.split(',') {
            match param.split_once('=') {
                Some(("signmethod", m)) => {
                    method = Some(match m.to_ascii_lowercase().as_str() {
                        "hmacsha1" => SignMethod::HmacSha1,
                        "hmacsha256" => SignMethod::HmacSha256,
                        "hmacmd5" => SignMethod::HmacMd5,
                        _ => return Err(SignInError::BadSignMethod),
                    })
                }
                Some(("timestamp", t)) => timestamp = Some(t.to_string()),
                _ => {}
            }
        }
        let signature = password
            .and_then(|p| std::str::from_utf8(p).ok())
            .filter(|p| !p.is_empty())
            .ok_or(SignInError::BadPassword)?
            .to_string();
        Ok(SignIn {
            product_key: product_key.to_string(),
            device_name: device_name.to_string(),
            method: method.ok_or(SignInError::BadSignMethod)?,
            timestamp,
            signature,
        })
    }

    /// True when the signature is the HMAC of the sign-in with `secret` (constant-time compare).
    pub fn verify(&self, secret: &str) -> bool {
        let Ok(given) = hex::decode(self.signature.trim()) else {
            return false;
        };
        let content = self.content();
        let key = secret.as_bytes();
        match self.method {
            SignMethod::HmacSha1 => check::<Hmac<sha1::Sha1>>(key, &content, &given),
            SignMethod::HmacSha256 => check::<Hmac<sha2::Sha256>>(key, &content, &given),
            SignMethod::HmacMd5 => check::<Hmac<md5::Md5>>(key, &content, &given),
        }
    }

    /// The signed text.
    fn content(&self) -> String {
        let (pk, dn) = (&self.product_key, &self.device_name);
        let mut s = format!("clientId{pk}&{dn}deviceName{dn}productKey{pk}");
        if let Some(ts) = &self.timestamp {
            s.push_str("timestamp");
            s.push_str(ts);
        }
        s
    }
}

fn check<M: Mac + hmac::digest::KeyInit>(key: &[u8], content: &str, given: &[u8]) -> bool {
    let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
        return false;
    };
    mac.update(content.as_bytes());
    mac.verify_slice(given).is_ok()
}

/// Signs like a device SDK does (for tests and the bench's simulated devices): the client id,
/// user name and password of `pk`/`dn` with `secret` at `timestamp`.
pub fn sign(
    pk: &str,
    dn: &str,
    secret: &str,
    method: SignMethod,
    timestamp: &str,
) -> (String, String, String) {
    let name = match method {
        SignMethod::HmacSha1 => "hmacsha1",
        SignMethod::HmacSha256 => "hmacsha256",
        SignMethod::HmacMd5 => "hmacmd5",
    };
    let client_id = format!("{pk}&{dn}|securemode=3,signmethod={name},timestamp={timestamp}|");
    let content = format!("clientId{pk}&{dn}deviceName{dn}productKey{pk}timestamp{timestamp}");
    let key = secret.as_bytes();
    let mac = match method {
        SignMethod::HmacSha1 => tag::<Hmac<sha1::Sha1>>(key, &content),
        SignMethod::HmacSha256 => tag::<Hmac<sha2::Sha256>>(key, &content),
        SignMethod::HmacMd5 => tag::<Hmac<md5::Md5>>(key, &content),
    };
    (client_id, format!("{dn}&{pk}"), hex::encode(mac))
}

fn tag<M: Mac + hmac::digest::KeyInit>(key: &[u8], content: &str) -> Vec<u8> {
    match <M as hmac::digest::KeyInit>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(content.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed with Python's hmac exactly as linkkit.py does.
    const SECRET: &str = "0123456789abcdef";
    const SHA1: &str = "694248bbf0133db21bbeb86b5b48b5a09e750507";
    const SHA256: &str = "43e3c5527a00fccc4cef6498342aaa14375bf1319db4f8f364d15dde15a97513";
    const MD5: &str = "e5edcff86e1263fea1d8fe93f935f56b";
    const SHA1_NO_TS: &str = "b59be278cc247e71b0fc59f262c1707f4addb15d";

    fn sdk_client_id(method: &str, ts: Option<&str>) -> String {
        let ts = ts.map(|t| format!("timestamp={t}")).unwrap_or_default();
        format!("a1pk&dev1|securemode=3,signmethod={method},ext=1,_ss=1,lan=Python,_v=1.2.13,{ts}|")
    }

    #[test]
    fn signatures_match_the_python_sdk_for_every_method() {
        // Proves the signed bytes equal linkkit.py's: each method's known-good password
        // verifies, a wrong secret or a changed timestamp does not.
        for (method, want) in [("hmacsha1", SHA1), ("hmacsha256", SHA256), ("hmacmd5", MD5)] {
            let s = SignIn::parse(
                &sdk_client_id(method, Some("1700000000")),
                "dev1&a1pk",
                Some(want.as_bytes()),
            )
            .unwrap();
            assert!(s.verify(SECRET), "{method}");
            assert!(!s.verify("other"), "{method}");
            let mut later = s.clone();
            later.timestamp = Some("1700000001".into());
            assert!(!later.verify(SECRET), "{method}");
        }
        let s = SignIn::parse(
            &sdk_client_id("hmacsha1", None),
            "dev1&a1pk",
            Some(SHA1_NO_TS.as_bytes()),
        )
        .unwrap();
        assert!(s.verify(SECRET));
        let upper = SignIn::parse(
            &sdk_client_id("hmacsha1", Some("1700000000")),
            "dev1&a1pk",
            Some(SHA1.to_uppercase().as_bytes()),
        )
        .unwrap();
        assert!(upper.verify(SECRET), "hex is case-insensitive");
        let (cid, user, pass) = sign("a1pk", "dev1", SECRET, SignMethod::HmacSha1, "1700000000");
        assert_eq!(pass, SHA1);
        assert!(SignIn::parse(&cid, &user, Some(pass.as_bytes()))
            .unwrap()
            .verify(SECRET));
    }

    #[test]
    fn malformed_sign_ins_are_refused_with_the_reason() {
        // Proves parse errors: user name without `&`, client id for another device, unknown
        // sign method, missing password.
        let cid = sdk_client_id("hmacsha1", Some("1"));
        let p = Some(b"ab".as_slice());
        assert_eq!(
            SignIn::parse(&cid, "dev1", p),
            Err(SignInError::BadUsername)
        );
        assert_eq!(
            SignIn::parse(&cid, "dev2&a1pk", p),
            Err(SignInError::BadClientId)
        );
        assert_eq!(
            SignIn::parse(&sdk_client_id("rsa", None), "dev1&a1pk", p),
            Err(SignInError::BadSignMethod)
        );
        assert_eq!(
            SignIn::parse(&cid, "dev1&a1pk", None),
            Err(SignInError::BadPassword)
        );
    }
}
