//! XML over HTTP for the MNS API: reading a request body as one of the documents of
//! [`crate::mns_xml`] (re-exported here) and the content type of every answer.
//!
//! Request documents keep every value as text and are parsed by the handlers, so a bad value
//! is refused with the element's name (`invalid VisibilityTimeout: ...`).

use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::error::MnsError;
pub use crate::mns_xml::{
    message_text, to_xml, xml_text, ChangeVisibilityResp, DeleteErrorResp, DeleteErrorsResp,
    ErrorResp, MessageReq, MessageResp, MessagesReq, MessagesResp, QueueReq, QueueResp, QueueUrl,
    QueuesResp, ReceiptHandlesReq, SentResp, SubscriptionReq, SubscriptionResp, SubscriptionUrl,
    SubscriptionsResp, TopicReq, TopicResp, TopicUrl, TopicsResp, UserProperties, XMLNS,
};

/// The content type of every XML answer.
pub const XML_HEADERS: [(axum::http::HeaderName, &str); 1] =
    [(CONTENT_TYPE, "text/xml;charset=utf-8")];

/// An XML request body, read up to the API's size limit.
#[derive(Debug)]
pub struct XmlBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for XmlBody {
    type Rejection = MnsError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(XmlBody)
            .map_err(|e| {
                let code = if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    "RequestTooLarge"
                } else {
                    "InvalidRequest"
                };
                MnsError::new(e.status(), code, e.body_text())
            })
    }
}

impl XmlBody {
    /// Parses the body as `T`; `what` names the document in errors (`Queue`, `Message`, ...).
    pub fn parse<T: DeserializeOwned + Default>(&self, what: &str) -> Result<T, MnsError> {
        if self.0.iter().all(u8::is_ascii_whitespace) {
            return Ok(T::default());
        }
        let text = std::str::from_utf8(&self.0)
            .map_err(|_| MnsError::malformed(format!("the {what} document is not UTF-8")))?;
        if has_doctype(text) {
            return Err(MnsError::malformed(format!(
                "the {what} document is not accepted: MNS documents have no DOCTYPE; remove it"
            )));
        }
        quick_xml::de::from_str(&keep_xml10_line_ends(text))
            .map_err(|e| MnsError::malformed(format!("the {what} document is not valid: {e}")))
    }

    /// The name of the root element (`Message` or `Messages` tells a send from a batch).
    pub fn root_name(&self) -> Option<String> {
        let mut reader = quick_xml::Reader::from_reader(&self.0[..]);
        let mut buf = Vec::new();
        loop {
            match reader.read_event_into(&mut buf).ok()? {
                quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e) => {
                    return Some(String::from_utf8_lossy(e.local_name().as_ref()).into_owned())
                }
                quick_xml::events::Event::Eof => return None,
                _ => buf.clear(),
            }
        }
    }
}

/// Whether the document has a DOCTYPE. MNS documents have none, and quick-xml's deserializer,
/// which skips a DOCTYPE wherever it appears, panics on one inside an element's text
/// (`<A>x<!DOCTYPE y>z</A>` makes two text events in a row, which it treats as unreachable), so
/// such documents are refused before they reach it. Only a body that contains the characters
/// `<!DOCTYPE` (in any case) is read event by event, so one inside CDATA or a comment is text.
fn has_doctype(text: &str) -> bool {
    const DOCTYPE: &[u8] = b"<!doctype";
    if !text
        .as_bytes()
        .windows(DOCTYPE.len())
        .any(|w| w.eq_ignore_ascii_case(DOCTYPE))
    {
        return false;
    }
    let mut reader = quick_xml::Reader::from_str(text);
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::DocType(_)) => return true,
            // A broken document is refused by the deserializer, with its reason.
            Ok(quick_xml::events::Event::Eof) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

/// quick-xml's deserializer applies XML 1.1 line-end handling, which turns U+0085 and U+2028
/// into line feeds. MNS documents are XML 1.0, where both are ordinary characters, and a message
/// body must arrive unchanged (its MD5 is answered to the client). Character references are not
/// line-end handled, so both characters are rewritten as references; inside a CDATA section,
/// which takes no references, the section is closed around the reference.
fn keep_xml10_line_ends(text: &str) -> std::borrow::Cow<'_, str> {
    const CDATA_OPEN: &str = "<![CDATA[";
    const CDATA_CLOSE: &str = "]]>";
    if !text.contains(['\u{85}', '\u{2028}']) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut in_cdata = false;
    let mut rest = text;
    while let Some(ch) = rest.chars().next() {
        if !in_cdata && rest.starts_with(CDATA_OPEN) {
            in_cdata = true;
            out.push_str(CDATA_OPEN);
            rest = &rest[CDATA_OPEN.len()..];
            continue;
        }
        if in_cdata && rest.starts_with(CDATA_CLOSE) {
            in_cdata = false;
            out.push_str(CDATA_CLOSE);
            rest = &rest[CDATA_CLOSE.len()..];
            continue;
        }
        let reference = match ch {
            '\u{85}' => Some("&#x85;"),
            '\u{2028}' => Some("&#x2028;"),
            _ => None,
        };
        match (reference, in_cdata) {
            (Some(r), false) => out.push_str(r),
            (Some(r), true) => {
                out.push_str(CDATA_CLOSE);
                out.push_str(r);
                out.push_str(CDATA_OPEN);
            }
            (None, _) => out.push(ch),
        }
        rest = &rest[ch.len_utf8()..];
    }
    out.into()
}

/// Parses an optional number element, naming it on error.
pub fn number<T: std::str::FromStr>(
    field: &str,
    v: &Option<String>,
) -> Result<Option<T>, MnsError> {
    match v.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| MnsError::invalid(field, format!("`{s}` is not a number"))),
    }
}
