//! Console sessions: signing in with an access key gives the browser an opaque session token in
//! an HttpOnly, SameSite=Strict cookie, and the page a per-session CSRF token. The auth
//! middleware ([`crate::api::auth`]) resolves the cookie to the same key (and so the same
//! policy) as `Authorization: Bearer`, and refuses a state-changing request whose
//! `X-CSRF-Token` header does not match the session's token.
//!
//! Sessions live in memory only: a restart signs everyone out, which is the safe default for a
//! console of a self-hosted daemon, and nothing secret is written to disk.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cookie holding the session token.
pub const COOKIE_NAME: &str = "sluice_session";

/// The header carrying the CSRF token on every state-changing request.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// 12 hours: a working day at the console without signing in again, short enough that a
/// forgotten browser does not stay signed in for long.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Default cap on live sessions in all (config `console_max_sessions`): 10,000 is a few MB.
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;

/// Default cap on live sessions of one key (config `console_max_sessions_per_key`): far more
/// browsers than the people sharing a key use in a 12-hour session lifetime, few enough that
/// one key's sign-ins cannot take the whole table from everyone else.
pub const DEFAULT_MAX_SESSIONS_PER_KEY: usize = 100;

/// How many sessions may be signed in at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Live sessions of one key.
    pub per_key: usize,
    /// Live sessions in all.
    pub total: usize,
}

impl Default for SessionLimits {
    fn default() -> SessionLimits {
        SessionLimits {
            per_key: DEFAULT_MAX_SESSIONS_PER_KEY,
            total: DEFAULT_MAX_SESSIONS,
        }
    }
}

/// Why a sign-in was refused: a cap is reached. Signing in again is refused, not served by
/// signing someone else out (which would let one key sign every other browser out).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionRefused {
    /// The key has its cap of live sessions.
    #[error(
        "this access key already has {limit} console sessions signed in (the cap per key): sign \
         out elsewhere, wait for sessions to expire (12 h), or raise `console_max_sessions_per_key` \
         in sluice.toml"
    )]
    PerKey {
        /// The cap.
        limit: usize,
    },
    /// The server has its cap of live sessions.
    #[error(
        "the server already has {limit} console sessions signed in (the cap in all): wait for \
         sessions to expire (12 h), or raise `console_max_sessions` in sluice.toml"
    )]
    Total {
        /// The cap.
        limit: usize,
    },
}

/// One signed-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The access key it signed in with; the key's policy applies to everything it does.
    pub key_id: String,
    /// The token every state-changing request must echo in `X-CSRF-Token`.
    pub csrf: String,
    /// When it stops being accepted.
    pub expires_at: Instant,
}

/// The signed-in sessions by token.
#[derive(Debug, Default)]
pub struct Sessions {
    by_token: Mutex<HashMap<String, Session>>,
    limits: SessionLimits,
    refused_per_key: AtomicU64,
    refused_total: AtomicU64,
}

/// Sign-ins refused by each cap, and the live sessions, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounts {
    /// Sessions signed in now.
    pub live: u64,
    /// Sign-ins refused by the per-key cap.
    pub refused_per_key: u64,
    /// Sign-ins refused by the total cap.
    pub refused_total: u64,
}

/// A fresh random token: 32 bytes from the OS-seeded generator, hex.
fn token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

impl Sessions {
    /// No sessions yet, with these caps.
    pub fn new(limits: SessionLimits) -> Sessions {
        Sessions {
            limits,
            ..Sessions::default()
        }
    }

    /// Opens a session for `key_id`; returns its cookie token and the session, or why not.
    pub fn create(&self, key_id: &str) -> Result<(String, Session), SessionRefused> {
        self.create_at(key_id, Instant::now())
    }

    fn create_at(&self, key_id: &str, now: Instant) -> Result<(String, Session), SessionRefused> {
        let mut map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.expires_at > now);
        if map.len() >= self.limits.total {
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(SessionRefused::Total {
                limit: self.limits.total,
            });
        }
        if map.values().filter(|s| s.key_id == key_id).count() >= self.limits.per_key {
            self.refused_per_key.fetch_add(1, Ordering::Relaxed);
            return Err(SessionRefused::PerKey {
                limit: self.limits.per_key,
            });
        }
        let session = Session {
            key_id: key_id.to_string(),
            csrf: token(),
            expires_at: now + SESSION_TTL,
        };
        let token = token();
        map.insert(token.clone(), session.clone());
        Ok((token, session))
    }

    /// Live sessions and refused sign-ins.
    pub fn counts(&self) -> SessionCounts {
        let now = Instant::now();
        let map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        SessionCounts {
            live: map.values().filter(|s| s.expires_at > now).count() as u64,
            refused_per_key: self.refused_per_key.load(Ordering::Relaxed),
            refused_total: self.refused_total.load(Ordering::Relaxed),
        }
    }

    /// The live session for a cookie token.
    pub fn get(&self, token: &str) -> Option<Session> {
        self.get_at(token, Instant::now())
    }

    fn get_at(&self, token: &str, now: Instant) -> Option<Session> {
        let map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        map.get(token).filter(|s| s.expires_at > now).cloned()
    }

    /// Signs a session out.
    pub fn remove(&self, token: &str) {
        let mut map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(token);
    }

    /// Signs out every session of a key (the key was deleted).
    pub fn remove_key(&self, key_id: &str) {
        let mut map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.key_id != key_id);
    }
}

/// The session token in a `Cookie` header, if any.
pub fn token_from_cookies(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_string())
}

/// The `Set-Cookie` value for a new session: HttpOnly (scripts cannot read it),
/// SameSite=Strict (other sites cannot make the browser send it), Path=/ (the console and the
/// `/v1/` API it calls); Secure when the server speaks HTTPS (the browser then never sends it
/// over plain HTTP).
pub fn set_cookie(token: &str, secure: bool) -> String {
    format!(
        "{COOKIE_NAME}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        secure_attr(secure)
    )
}

/// The `Set-Cookie` value that signs the browser out.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE_NAME}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
        secure_attr(secure)
    )
}

fn secure_attr(secure: bool) -> &'static str {
    if secure {
        "; Secure"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session resolves to its key until it expires or is removed, and deleting the key
    /// signs out all of its sessions.
    #[test]
    fn sessions_expire_and_die_with_their_key() {
        let s = Sessions::default();
        let now = Instant::now();
        let (t1, s1) = s.create_at("k1", now).unwrap();
        let (t2, _) = s.create_at("k2", now).unwrap();
        assert_eq!(s.get_at(&t1, now).unwrap().key_id, "k1");
        assert_ne!(t1, s1.csrf, "the CSRF token is not the cookie token");
        assert_eq!(t1.len(), 64);
        assert!(s.get_at(&t1, now + SESSION_TTL).is_none());
        assert!(s.get_at("nope", now).is_none());
        s.remove_key("k2");
        assert!(s.get_at(&t2, now).is_none());
        s.remove(&t1);
        assert!(s.get_at(&t1, now).is_none());
    }

    /// The cookie carries the hardening attributes and is found among others.
    #[test]
    fn cookie_is_httponly_strict_and_parsed_back() {
        assert!(set_cookie("abc", true).ends_with("; Secure"));
        assert!(clear_cookie(true).ends_with("; Secure"));
        let c = set_cookie("abc", false);
        assert!(!c.contains("Secure"), "{c}");
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Path=/"));
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            "a=1; sluice_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(token_from_cookies(&h).as_deref(), Some("abc"));
    }

    /// The table never grows past its caps: per key, then in all; a refused sign-in is
    /// counted and signs nobody out, and an expired session frees its place.
    #[test]
    fn session_table_is_bounded_per_key_and_in_all() {
        let s = Sessions::new(SessionLimits {
            per_key: 3,
            total: 5,
        });
        let now = Instant::now();
        let first: Vec<String> = (0..3).map(|_| s.create_at("k1", now).unwrap().0).collect();
        assert_eq!(
            s.create_at("k1", now).unwrap_err(),
            SessionRefused::PerKey { limit: 3 }
        );
        assert!(first.iter().all(|t| s.get_at(t, now).is_some()));
        s.create_at("k2", now).unwrap();
        s.create_at("k3", now).unwrap();
        let e = s.create_at("k4", now).unwrap_err();
        assert_eq!(e, SessionRefused::Total { limit: 5 });
        assert!(e.to_string().contains("console_max_sessions"), "{e}");
        let c = s.counts();
        assert_eq!((c.refused_per_key, c.refused_total), (1, 1));
        assert!(s.create_at("k1", now + SESSION_TTL).is_ok());
    }
}
