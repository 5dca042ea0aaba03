//! The query string of an MNS request, parsed once.
//!
//! The auth middleware parses it before the policy check (whether `GET .../messages` only peeks,
//! needing `read`, or receives, needing `consume`, depends on `peekonly`) and leaves the result
//! in the request's extensions; the handlers take that same value as an extractor. So the
//! policy check and the handler cannot read the query differently. A parameter given twice is
//! refused rather than resolved one way or the other.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::error::MnsError;

/// Query parameters by lower-cased name (MNS clients differ in case: `waitseconds`,
/// `numOfMessages`, `ReceiptHandle`), each value percent-decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MnsQuery(HashMap<String, String>);

impl MnsQuery {
    /// Parses `query`; a name given twice (in any case) is a 400 naming it.
    pub fn parse(query: Option<&str>) -> Result<MnsQuery, MnsError> {
        let mut out = HashMap::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let name = percent_decode(k);
            if out
                .insert(name.to_ascii_lowercase(), percent_decode(v))
                .is_some()
            {
                return Err(MnsError::invalid(
                    &name,
                    "the query parameter is given more than once; give it once",
                ));
            }
        }
        Ok(MnsQuery(out))
    }

    /// The value of `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    /// True when `name` is `true` (any case).
    pub fn flag(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// `peekonly=true`: a (Batch)PeekMessage, which changes nothing in the queue.
    pub fn peek_only(&self) -> bool {
        self.flag("peekonly")
    }

    /// A number parameter, naming it on error.
    pub fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, MnsError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| MnsError::invalid(name, format!("`{v}` is not a number"))),
        }
    }
}

/// The value the auth middleware parsed; parsed here only for a request that did not pass it.
impl<S: Send + Sync> FromRequestParts<S> for MnsQuery {
    type Rejection = MnsError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<MnsQuery>() {
            Some(q) => Ok(q.clone()),
            None => MnsQuery::parse(parts.uri.query()),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names are matched in any case and decoded; a repeated name is refused, however spelt.
    #[test]
    fn repeated_parameters_are_refused() {
        let q = MnsQuery::parse(Some("peekOnly=true&numOfMessages=16&x=%41")).unwrap();
        assert!(q.peek_only());
        assert_eq!(q.number::<u32>("numofmessages").unwrap(), Some(16));
        assert_eq!(q.get("X"), Some("A"));
        for bad in [
            "peekonly=true&peekonly=false",
            "peekonly=true&PEEKONLY=false",
            "peekonly=true&peek%6Fnly=false",
        ] {
            let e = MnsQuery::parse(Some(bad)).unwrap_err();
            assert_eq!(e.code, "InvalidArgument", "{bad}");
            assert!(e.message.contains("more than once"), "{}", e.message);
        }
    }
}
