//! MNS push signatures, as Alibaba Cloud MNS signs the pushes to HTTP endpoints and as its
//! endpoint samples verify them: `Authorization` holds base64 RSA-SHA1 (PKCS#1 v1.5,
//! `sha1WithRSAEncryption`) by sluice's signing key over
//!
//! ```text
//! POST \n content-md5 \n content-type \n date \n
//! x-mns-*:value \n ...   (lower-case names, sorted)
//! path?query             (the request target, as sent)
//! ```
//!
//! and `x-mns-signing-cert-url` the base64 of the URL the signing certificate (PEM) is served
//! at. Beside them a push carries `Date`, `Content-MD5` (base64 of the lower-case hex MD5 of
//! the body, as MNS sends it), `x-mns-request-id` (fresh per attempt) and `x-mns-version`.
//! Every `x-mns-` header of the push is signed, the content format's own (`x-mns-message-id`,
//! `x-mns-message-tag` of SIMPLIFIED) included.

use std::time::SystemTime;

use base64::Engine;
use md5::{Digest, Md5};
use reqwest::header::{HeaderName, HeaderValue};

use super::signing_keys::ActiveKey;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The MNS API version pushes name in `x-mns-version`.
pub const MNS_VERSION: &str = "2015-06-06";

/// The MNS string-to-sign of a request. Header values are taken without surrounding
/// whitespace, as a receiving HTTP server reads them.
pub fn string_to_sign(
    method: &str,
    content_md5: &str,
    content_type: &str,
    date: &str,
    headers: &[(&str, &str)],
    resource: &str,
) -> String {
    let mut mns: Vec<(String, &str)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim()))
        .filter(|(k, _)| k.starts_with("x-mns-"))
        .collect();
    mns.sort();
    let mut s = format!(
        "{}\n{}\n{}\n{}\n",
        method.to_ascii_uppercase(),
        content_md5.trim(),
        content_type.trim(),
        date.trim()
    );
    for (k, v) in mns {
        s.push_str(&k);
        s.push(':');
        s.push_str(v);
        s.push('\n');
    }
    s.push_str(resource);
    s
}

/// `Content-MD5` as MNS sends it on pushes: base64 of the lower-case hex MD5 of the body.
pub fn content_md5(body: &[u8]) -> String {
    B64.encode(hex::encode(Md5::digest(body)))
}

/// An HTTP date (`Wed, 25 May 2016 10:46:14 GMT`).
pub fn http_date(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// The canonicalized resource of a push to `url`: its path, and `?query` when it has one.
pub fn resource(url: &reqwest::Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    }
}

/// A fresh request id: 24 upper-case hex characters, the shape of MNS's.
pub fn request_id() -> String {
    hex::encode_upper(rand::random::<[u8; 12]>())
}

/// The headers that sign one push the MNS way: `Date`, `Content-MD5`, the `x-mns-` headers
/// sluice adds and `Authorization`. `format_headers` are the content format's headers (sent
/// too, and signed when they are `x-mns-`); `content_type` is the push's `content-type`.
pub fn headers(
    key: &ActiveKey,
    url: &reqwest::Url,
    content_type: &str,
    body: &[u8],
    format_headers: &[(HeaderName, HeaderValue)],
    now: SystemTime,
) -> Vec<(HeaderName, HeaderValue)> {
    let date = http_date(now);
    let md5 = content_md5(body);
    let added: [(&'static str, String); 3] = [
        ("x-mns-request-id", request_id()),
        (
            "x-mns-signing-cert-url",
            B64.encode(key.cert_url.as_bytes()),
        ),
        ("x-mns-version", MNS_VERSION.to_string()),
    ];
    let mut signed: Vec<(&str, &str)> = added.iter().map(|(k, v)| (*k, v.as_str())).collect();
    signed.extend(
        format_headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
    );
    let to_sign = string_to_sign("POST", &md5, content_type, &date, &signed, &resource(url));
    let authorization = B64.encode(key.sign(to_sign.as_bytes()));
    let mut out = Vec::with_capacity(6);
    let mut push = |name: &'static str, value: String| {
        // Every value here is base64, hex, a date or a version: valid header text.
        if let Ok(v) = HeaderValue::from_str(&value) {
            out.push((HeaderName::from_static(name), v));
        }
    };
    push("date", date);
    push("content-md5", md5);
    for (k, v) in added {
        push(k, v);
    }
    push("authorization", authorization);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_string_to_sign_matches_the_documented_example() {
        // The example of MNS's "verify a push signature" page: headers lower-cased and sorted,
        // one per line, then the resource.
        let s = string_to_sign(
            "POST",
            "ZDgxNjY5ZjFlMDQ5MGM0YWMwMWE5ODlmZDVlYmQxYjI=",
            "text/xml;charset=utf-8",
            "Wed, 25 May 2016 10:46:14 GMT",
            &[
                ("x-mns-version", "2015-06-06"),
                ("X-MNS-Request-Id", "57458276F0E3D56D7C00054B"),
                ("content-length", "10"),
                (
                    "x-mns-signing-cert-url",
                    "aHR0cDovL21uc3Rlc3Qub3NzLWNuLWhhbmd6aG91LmFsaXl1bmNzLmNvbS94NTA5X3B1YmxpY19jZXJ0aWZpY2F0ZS5wZW0=",
                ),
            ],
            "/notifications",
        );
        assert_eq!(
            s,
            "POST\nZDgxNjY5ZjFlMDQ5MGM0YWMwMWE5ODlmZDVlYmQxYjI=\ntext/xml;charset=utf-8\n\
             Wed, 25 May 2016 10:46:14 GMT\nx-mns-request-id:57458276F0E3D56D7C00054B\n\
             x-mns-signing-cert-url:aHR0cDovL21uc3Rlc3Qub3NzLWNuLWhhbmd6aG91LmFsaXl1bmNzLmNvbS94NTA5X3B1YmxpY19jZXJ0aWZpY2F0ZS5wZW0=\n\
             x-mns-version:2015-06-06\n/notifications"
        );
        // No x-mns- header: the headers part is empty.
        assert_eq!(
            string_to_sign("post", "", "", "D", &[], "/"),
            "POST\n\n\nD\n/"
        );
    }

    #[test]
    fn content_md5_date_and_resource_have_the_mns_shapes() {
        // The example's Content-MD5 is base64 of a lower-case hex digest.
        assert_eq!(
            B64.decode("ZDgxNjY5ZjFlMDQ5MGM0YWMwMWE5ODlmZDVlYmQxYjI=")
                .unwrap(),
            b"d81669f1e0490c4ac01a989fd5ebd1b2"
        );
        assert_eq!(
            content_md5(b""),
            B64.encode("d41d8cd98f00b204e9800998ecf8427e")
        );
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_464_173_174);
        assert_eq!(http_date(t), "Wed, 25 May 2016 10:46:14 GMT");
        let u = reqwest::Url::parse("http://h:1/notify/x?a=1&b=2").unwrap();
        assert_eq!(resource(&u), "/notify/x?a=1&b=2");
        assert_eq!(resource(&reqwest::Url::parse("http://h").unwrap()), "/");
        let id = request_id();
        assert!(id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
