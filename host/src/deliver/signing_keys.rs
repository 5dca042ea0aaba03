//! sluice's MNS signing keys: RSA-2048 key pairs, each with a self-signed X.509 certificate
//! that the HTTP API serves without authentication at
//! `{public_url}/v1/signing-certificates/{id}.pem`, the URL MNS-signed pushes name in
//! `x-mns-signing-cert-url`.
//!
//! Keys are store records of kind [`SIGNING_KEYS`] (key: the key id), so they live on both
//! backends, every process sharing a store signs with the same key, and a backup carries them.
//! The first key is generated on first need (the first MNS-signed push, or the first look at
//! the certificates). A rotation generates a new key, which signs from then on; the previous
//! ones are retired but their certificates stay served for a grace period, so an endpoint still
//! verifying a push signed just before the rotation can fetch its certificate. Retired keys
//! whose grace ended are no longer served and are deleted at the next rotation.
//!
//! The current key is read from memory; the view is re-read from the store every
//! [`REFRESH_INTERVAL`] (on a shared store another process may have rotated) and at once after
//! a rotation made here.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::signature::{RandomizedSigner, SignatureEncoding};
use rsa::RsaPrivateKey;
use serde::{Deserialize, Serialize};
use sha1::Sha1;

use crate::store::{Record, Store, StoreError};

/// The record kind of the signing keys.
pub const SIGNING_KEYS: &str = "signing_keys";
/// RSA modulus size of generated keys, bits.
pub const RSA_BITS: usize = 2048;
/// How long a retired certificate stays served when a rotation does not say: a day, so
/// endpoints that cache certificates by URL and pushes retried after the rotation verify.
pub const DEFAULT_GRACE_SECONDS: u32 = 86_400;
/// Longest grace a rotation may give, seconds (a week).
pub const MAX_GRACE_SECONDS: u32 = 604_800;
/// Most keys kept at once (the current one and retired ones in their grace): a rotation beyond
/// it is refused, so rotations cannot pile up records (and RSA key generations) without end.
pub const MAX_SIGNING_KEYS: usize = 8;
/// How often the in-memory view of the keys is re-read from the store.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// Path of the certificates under the API's base URL.
pub const CERT_PATH: &str = "/v1/signing-certificates";
/// Longest key id accepted in a certificate URL (generated ids have 16 characters).
const MAX_ID_LEN: usize = 64;
/// Validity of a generated certificate: ten years (verifiers of MNS pushes check the
/// signature, not the dates; a long validity keeps one that does from failing early).
const CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Why a signing key could not be had or rotated.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    /// The store refused or is closed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// RSA key generation failed.
    #[error("RSA key: {0}")]
    Rsa(#[from] rsa::Error),
    /// A key could not be encoded or a stored key decoded.
    #[error("PKCS#8 private key: {0}")]
    Pkcs8(#[from] rsa::pkcs8::Error),
    /// The certificate could not be made.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A stored key record is not a key record.
    #[error("stored signing key `{key}`: {source}")]
    Record {
        /// The record's key.
        key: String,
        /// Why it does not parse.
        source: serde_json::Error,
    },
    /// Key generation stopped (it runs off the async workers).
    #[error("key generation stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A rotation asked for a grace period out of range.
    #[error("{0} is out of range: grace_seconds must be between 0 and {MAX_GRACE_SECONDS}")]
    Grace(u32),
    /// A rotation would keep more than [`MAX_SIGNING_KEYS`] keys.
    #[error(
        "{MAX_SIGNING_KEYS} signing certificates are current or in their grace period already; \
         wait until one's grace ends, or rotate with a shorter grace_seconds"
    )]
    TooMany,
}

/// A key as stored (a JSON record).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKey {
    id: String,
    /// The private key, PKCS#8 PEM.
    private_key_pem: String,
    /// The self-signed certificate of its public key, PEM.
    certificate_pem: String,
    create_time_ms: u64,
    /// Set when a rotation retired the key: it no longer signs.
    #[serde(default)]
    retired_time_ms: Option<u64>,
    /// Set with `retired_time_ms`: its certificate is served until then.
    #[serde(default)]
    valid_until_ms: Option<u64>,
}

impl StoredKey {
    fn served_at(&self, now_ms: u64) -> bool {
        self.valid_until_ms.is_none_or(|until| now_ms < until)
    }
}

/// The key that signs pushes now.
pub struct ActiveKey {
    /// Its id.
    pub id: String,
    /// The absolute URL its certificate is served at.
    pub cert_url: String,
    signer: SigningKey<Sha1>,
}

impl std::fmt::Debug for ActiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveKey")
            .field("id", &self.id)
            .field("cert_url", &self.cert_url)
            .finish_non_exhaustive()
    }
}

impl ActiveKey {
    /// RSA-SHA1 (PKCS#1 v1.5) signature of `data`, blinded.
    pub fn sign(&self, data: &[u8]) -> Vec<u8> {
        self.signer
            .sign_with_rng(&mut rsa::rand_core::OsRng, data)
            .to_vec()
    }

    #[cfg(test)]
    pub(crate) fn verifying_key(&self) -> rsa::pkcs1v15::VerifyingKey<Sha1> {
        use rsa::signature::Keypair;
        self.signer.verifying_key()
    }
}

/// A certificate as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateInfo {
    /// The key id.
    pub id: String,
    /// Where the certificate is served (what `x-mns-signing-cert-url` carries, base64).
    pub url: String,
    /// Whether its key signs pushes now.
    pub current: bool,
    /// When the key was made, ms.
    pub create_time_ms: u64,
    /// For a retired key: its certificate is served until then, ms.
    pub valid_until_ms: Option<u64>,
}

/// Counters of the open certificate URL.
#[derive(Debug, Default)]
pub struct CertCounters {
    /// Certificates served.
    pub served: std::sync::atomic::AtomicU64,
    /// Requests for a certificate that is not served (unknown id, grace over, malformed).
    pub not_found: std::sync::atomic::AtomicU64,
}

/// The signing keys of this sluice (see the module doc).
pub struct SigningKeys {
    store: Store,
    /// `{public_url}/v1/signing-certificates/`.
    cert_base: String,
    /// The current key and when it was read (store clock, ms).
    cached: RwLock<Option<(Arc<ActiveKey>, u64)>>,
    /// One generation, load or rotation at a time in this process.
    writing: tokio::sync::Mutex<()>,
    /// Requests to the open certificate URL.
    pub counters: CertCounters,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys")
            .field("cert_base", &self.cert_base)
            .finish_non_exhaustive()
    }
}

impl SigningKeys {
    /// The keys kept in `store`, whose certificates are served under `public_url` (the HTTP
    /// API's base URL as push endpoints reach it, e.g. `https://sluice.example.com`).
    pub fn new(store: Store, public_url: &str) -> SigningKeys {
        SigningKeys {
            store,
            cert_base: format!("{}{CERT_PATH}/", public_url.trim_end_matches('/')),
            cached: RwLock::new(None),
            writing: tokio::sync::Mutex::new(()),
            counters: CertCounters::default(),
        }
    }

    /// The URL of key `id`'s certificate.
    pub fn cert_url(&self, id: &str) -> String {
        format!("{}{id}.pem", self.cert_base)
    }

    fn now_ms(&self) -> u64 {
        self.store.clock().now_ms()
    }

    fn fresh(&self, now: u64) -> Option<Arc<ActiveKey>> {
        let cached = self.cached.read().ok()?;
        let (key, at) = cached.as_ref()?;
        (now < at + REFRESH_INTERVAL.as_millis() as u64).then(|| key.clone())
    }

    /// The key that signs pushes now, generated (and stored) when there is none.
    pub async fn current(&self) -> Result<Arc<ActiveKey>, SigningKeyError> {
        if let Some(k) = self.fresh(self.now_ms()) {
            return Ok(k);
        }
        let _writing = self.writing.lock().await;
        let now = self.now_ms();
        if let Some(k) = self.fresh(now) {
            return Ok(k);
        }
        let mut keys = self.load().await?;
        if pick_current(&keys).is_none() {
            let key = generate(now).await?;
            // On a shared store another process may generate at the same moment: both are
            // stored, and every process signs with the same newest one.
            self.store
                .insert_record(SIGNING_KEYS, record(&key)?)
                .await?;
            keys = self.load().await?;
        }
        let stored = pick_current(&keys).ok_or(SigningKeyError::Store(StoreError::invalid(
            "signing_keys",
            "the generated signing key is not in the store",
        )))?;
        let active = match self.cached.read().ok().and_then(|c| c.clone()) {
            // The same key: no need to parse it again.
            Some((k, _)) if k.id == stored.id => k,
            _ => Arc::new(self.activate(stored)?),
        };
        if let Ok(mut c) = self.cached.write() {
            *c = Some((active.clone(), now));
        }
        Ok(active)
    }

    fn activate(&self, stored: &StoredKey) -> Result<ActiveKey, SigningKeyError> {
        let key = RsaPrivateKey::from_pkcs8_pem(&stored.private_key_pem)?;
        Ok(ActiveKey {
            id: stored.id.clone(),
            cert_url: self.cert_url(&stored.id),
            signer: SigningKey::<Sha1>::new(key),
        })
    }

    async fn load(&self) -> Result<Vec<StoredKey>, SigningKeyError> {
        self.store
            .list_records(SIGNING_KEYS)
            .await?
            .into_iter()
            .map(|r| {
                serde_json::from_str(&r.value)
                    .map_err(|source| SigningKeyError::Record { key: r.key, source })
            })
            .collect()
    }

    /// The certificates served now, the current one first (generating the first key when
    /// there is none, so its URL can be known before the first push).
    pub async fn list(&self) -> Result<Vec<CertificateInfo>, SigningKeyError> {
        let current = self.current().await?;
        let now = self.now_ms();
        let mut keys: Vec<StoredKey> = self
            .load()
            .await?
            .into_iter()
            .filter(|k| k.served_at(now))
            .collect();
        keys.sort_by(|a, b| (b.create_time_ms, &b.id).cmp(&(a.create_time_ms, &a.id)));
        let mut out: Vec<CertificateInfo> = keys
            .into_iter()
            .map(|k| CertificateInfo {
                url: self.cert_url(&k.id),
                current: k.id == current.id,
                id: k.id,
                create_time_ms: k.create_time_ms,
                valid_until_ms: k.valid_until_ms,
            })
            .collect();
        out.sort_by_key(|c| !c.current);
        Ok(out)
    }

    /// The PEM certificate of key `id` while it is served; `None` (counted) otherwise.
    pub async fn certificate_pem(&self, id: &str) -> Result<Option<String>, SigningKeyError> {
        use std::sync::atomic::Ordering::Relaxed;
        let valid = !id.is_empty()
            && id.len() <= MAX_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let found = if valid {
            match self.store.get_record(SIGNING_KEYS, id).await? {
                Some(value) => {
                    let k: StoredKey =
                        serde_json::from_str(&value).map_err(|source| SigningKeyError::Record {
                            key: id.to_string(),
                            source,
                        })?;
                    k.served_at(self.now_ms()).then_some(k.certificate_pem)
                }
                None => None,
            }
        } else {
            None
        };
        match &found {
            Some(_) => self.counters.served.fetch_add(1, Relaxed),
            None => self.counters.not_found.fetch_add(1, Relaxed),
        };
        Ok(found)
    }

    /// Makes a new key the current one; the keys it replaces keep their certificates served
    /// for `grace` seconds. Keys whose grace has ended are deleted.
    pub async fn rotate(
        &self,
        grace_seconds: u32,
    ) -> Result<Vec<CertificateInfo>, SigningKeyError> {
        if grace_seconds > MAX_GRACE_SECONDS {
            return Err(SigningKeyError::Grace(grace_seconds));
        }
        {
            let _writing = self.writing.lock().await;
            let now = self.now_ms();
            let keys = self.load().await?;
            let (live, ended): (Vec<_>, Vec<_>) = keys.into_iter().partition(|k| k.served_at(now));
            if live.len() >= MAX_SIGNING_KEYS {
                return Err(SigningKeyError::TooMany);
            }
            let new = generate(now).await?;
            self.store
                .insert_record(SIGNING_KEYS, record(&new)?)
                .await?;
            let until = now + u64::from(grace_seconds) * 1000;
            for mut old in live.into_iter().filter(|k| k.retired_time_ms.is_none()) {
                old.retired_time_ms = Some(now);
                old.valid_until_ms = Some(until);
                self.store.put_record(SIGNING_KEYS, record(&old)?).await?;
            }
            for k in ended {
                self.store.delete_record(SIGNING_KEYS, &k.id).await?;
            }
            if let Ok(mut c) = self.cached.write() {
                *c = None;
            }
        }
        self.list().await
    }
}

/// The current key among `keys`: the newest not retired.
fn pick_current(keys: &[StoredKey]) -> Option<&StoredKey> {
    keys.iter()
        .filter(|k| k.retired_time_ms.is_none())
        .max_by(|a, b| (a.create_time_ms, &a.id).cmp(&(b.create_time_ms, &b.id)))
}

fn record(k: &StoredKey) -> Result<Record, SigningKeyError> {
    Ok(Record {
        key: k.id.clone(),
        value: serde_json::to_string(k).map_err(|source| SigningKeyError::Record {
            key: k.id.clone(),
            source,
        })?,
    })
}

/// A new key pair and its certificate (off the async workers: RSA generation takes a while).
async fn generate(now_ms: u64) -> Result<StoredKey, SigningKeyError> {
    tokio::task::spawn_blocking(move || generate_now(now_ms)).await?
}

fn generate_now(now_ms: u64) -> Result<StoredKey, SigningKeyError> {
    let id = hex::encode(rand::random::<[u8; 8]>());
    let key = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, RSA_BITS)?;
    let private_key_pem = key.to_pkcs8_pem(LineEnding::LF)?.to_string();
    let pair = rcgen::KeyPair::from_pem_and_sign_algo(&private_key_pem, &rcgen::PKCS_RSA_SHA256)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "sluice");
    dn.push(
        rcgen::DnType::CommonName,
        format!("sluice push signing key {id}"),
    );
    params.distinguished_name = dn;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
    let start = time::OffsetDateTime::from_unix_timestamp((now_ms / 1000) as i64 - 3600)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    params.not_before = start;
    params.not_after = start + CERT_VALIDITY;
    let certificate_pem = params.self_signed(&pair)?.pem();
    Ok(StoredKey {
        id,
        private_key_pem,
        certificate_pem,
        create_time_ms: now_ms,
        retired_time_ms: None,
        valid_until_ms: None,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rsa::pkcs8::DecodePublicKey;
    use rsa::signature::Verifier;

    use super::*;
    use crate::store::{ManualClock, StoreOptions};

    const T0: u64 = 1_700_000_000_000;

    fn open(dir: &std::path::Path, clock: Arc<ManualClock>) -> Store {
        Store::open(
            dir,
            StoreOptions {
                clock,
                ..StoreOptions::default()
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn the_first_key_is_generated_once_kept_and_signs_verifiably() {
        // Proves: the first need generates one key, stored as a record (a reopened store, as
        // after a restart, signs with the same key), its signature verifies with the
        // certificate's public key, and the certificate is served by id.
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let store = open(dir.path(), clock.clone());
        let keys = SigningKeys::new(store.clone(), "http://sluice.test:8080/");
        let a = keys.current().await.unwrap();
        assert_eq!(
            a.cert_url,
            format!(
                "http://sluice.test:8080/v1/signing-certificates/{}.pem",
                a.id
            )
        );
        assert_eq!(keys.current().await.unwrap().id, a.id, "cached");
        assert_eq!(store.list_records(SIGNING_KEYS).await.unwrap().len(), 1);
        let pem = keys.certificate_pem(&a.id).await.unwrap().expect("served");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        let sig = a.sign(b"POST\n\n\nD\n/");
        a.verifying_key()
            .verify(
                b"POST\n\n\nD\n/",
                &rsa::pkcs1v15::Signature::try_from(&sig[..]).unwrap(),
            )
            .unwrap();
        assert!(a
            .verifying_key()
            .verify(
                b"POST\n\n\nD\n/x",
                &rsa::pkcs1v15::Signature::try_from(&sig[..]).unwrap()
            )
            .is_err());
        // The certificate carries the same public key (its SubjectPublicKeyInfo, read back).
        let (_, der) = rsa::pkcs8::der::pem::decode_vec(pem.as_bytes()).unwrap();
        let spki = find_spki(&der);
        let public = rsa::RsaPublicKey::from_public_key_der(spki).unwrap();
        assert_eq!(&public, a.verifying_key().as_ref());
        store.close().await.unwrap();
        let store = open(dir.path(), clock);
        let again = SigningKeys::new(store, "http://sluice.test:8080");
        assert_eq!(
            again.current().await.unwrap().id,
            a.id,
            "kept across a restart"
        );
    }

    #[tokio::test]
    async fn the_mns_headers_of_a_push_verify_from_what_the_receiver_sees() {
        // Proves: the headers a push carries are enough to rebuild its string-to-sign (the
        // content format's x-mns- headers included), the Authorization signature verifies,
        // and a changed body (its Content-MD5) or header does not.
        use base64::Engine;
        use reqwest::header::{HeaderName, HeaderValue};
        let b64 = base64::engine::general_purpose::STANDARD;
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), Arc::new(ManualClock::new(T0)));
        let keys = SigningKeys::new(store, "https://s.example");
        let key = keys.current().await.unwrap();
        let url = reqwest::Url::parse("http://endpoint:1/notify?x=1").unwrap();
        let format = [(
            HeaderName::from_static("x-mns-message-id"),
            HeaderValue::from_static("ABC"),
        )];
        let hs = crate::deliver::mns_sign::headers(
            &key,
            &url,
            "text/plain; charset=utf-8",
            b"hello",
            &format,
            std::time::SystemTime::now(),
        );
        let get = |n: &str| {
            hs.iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            b64.decode(get("x-mns-signing-cert-url")).unwrap(),
            key.cert_url.as_bytes()
        );
        assert_eq!(get("x-mns-version"), "2015-06-06");
        let received: Vec<(String, String)> = hs
            .iter()
            .chain(&format)
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        let rebuild = |md5: &str, extra: Option<(&str, &str)>| {
            let mut h: Vec<(&str, &str)> = received
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            h.extend(extra);
            crate::deliver::mns_sign::string_to_sign(
                "POST",
                md5,
                "text/plain; charset=utf-8",
                &get("date"),
                &h,
                "/notify?x=1",
            )
        };
        let sig = b64.decode(get("authorization")).unwrap();
        let sig = rsa::pkcs1v15::Signature::try_from(&sig[..]).unwrap();
        let vk = key.verifying_key();
        vk.verify(rebuild(&get("content-md5"), None).as_bytes(), &sig)
            .unwrap();
        assert_eq!(
            get("content-md5"),
            crate::deliver::mns_sign::content_md5(b"hello")
        );
        let other = crate::deliver::mns_sign::content_md5(b"hellO");
        assert!(vk.verify(rebuild(&other, None).as_bytes(), &sig).is_err());
        assert!(vk
            .verify(
                rebuild(&get("content-md5"), Some(("x-mns-message-tag", "t"))).as_bytes(),
                &sig
            )
            .is_err());
    }

    /// The SubjectPublicKeyInfo inside a certificate's DER: the SEQUENCE that starts with the
    /// rsaEncryption algorithm identifier.
    fn find_spki(der: &[u8]) -> &[u8] {
        const RSA_OID: &[u8] = &[
            0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
        ];
        let at = der
            .windows(RSA_OID.len())
            .position(|w| w == RSA_OID)
            .expect("rsaEncryption");
        // SEQUENCE { SEQUENCE { OID, NULL }, BIT STRING }: the outer SEQUENCE header is 4
        // bytes (long form, two length bytes) before the inner 2-byte header.
        let start = at - 2 - 4;
        assert_eq!(der[start], 0x30);
        let len = usize::from(der[start + 2]) << 8 | usize::from(der[start + 3]);
        &der[start..start + 4 + len]
    }

    #[tokio::test]
    async fn a_rotation_switches_keys_keeps_the_old_certificate_for_the_grace_then_drops_it() {
        // Proves: after a rotation the new key signs, the old certificate is served until its
        // grace ends and not after, it is deleted at the next rotation, the grace is bounded,
        // keys are capped, and bad or unknown ids are refused and counted.
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let store = open(dir.path(), clock.clone());
        let keys = SigningKeys::new(store.clone(), "http://h");
        let old = keys.current().await.unwrap();
        let list = keys.rotate(60).await.unwrap();
        let new = keys.current().await.unwrap();
        assert_ne!(new.id, old.id);
        assert_eq!(list.len(), 2);
        assert!(list[0].current && list[0].id == new.id && list[0].valid_until_ms.is_none());
        assert_eq!(
            (list[1].id.as_str(), list[1].valid_until_ms),
            (old.id.as_str(), Some(T0 + 60_000))
        );
        assert!(keys.certificate_pem(&old.id).await.unwrap().is_some());
        clock.advance_ms(61_000);
        assert!(keys.certificate_pem(&old.id).await.unwrap().is_none());
        assert!(keys.certificate_pem(&new.id).await.unwrap().is_some());
        assert_eq!(keys.list().await.unwrap().len(), 1);
        assert!(matches!(
            keys.rotate(MAX_GRACE_SECONDS + 1).await,
            Err(SigningKeyError::Grace(_))
        ));
        keys.rotate(0).await.unwrap();
        let ids: Vec<String> = store
            .list_records(SIGNING_KEYS)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.key)
            .collect();
        assert!(!ids.contains(&old.id), "the ended key was deleted: {ids:?}");
        for _ in 0..MAX_SIGNING_KEYS - 1 {
            keys.rotate(3600).await.unwrap();
        }
        assert!(matches!(
            keys.rotate(3600).await,
            Err(SigningKeyError::TooMany)
        ));
        use std::sync::atomic::Ordering::Relaxed;
        let before = keys.counters.not_found.load(Relaxed);
        for bad in [
            "",
            "UPPER",
            "a/b",
            "../x",
            &"a".repeat(65),
            "0123456789abcdef",
        ] {
            assert!(keys.certificate_pem(bad).await.unwrap().is_none(), "{bad}");
        }
        assert_eq!(keys.counters.not_found.load(Relaxed), before + 6);
    }
}
