//! The XML documents of the MNS API (namespace `http://mns.aliyuncs.com/doc/v1/`), as the
//! official SDKs write and read them, with quick-xml's serde support.
//!
//! Request documents keep every value as text and are parsed by the handlers, so a bad value
//! is refused with the element's name (`invalid VisibilityTimeout: ...`).

use std::collections::BTreeMap;

use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::MnsError;

/// The MNS XML namespace, on every root element.
pub const XMLNS: &str = "http://mns.aliyuncs.com/doc/v1/";

/// The content type of every XML answer.
pub const XML_HEADERS: [(axum::http::HeaderName, &str); 1] =
    [(CONTENT_TYPE, "text/xml;charset=utf-8")];

/// Serialises a response document with the XML declaration in front.
pub fn to_xml<T: Serialize>(doc: &T) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    // Serialising plain structs of strings and numbers cannot fail.
    quick_xml::se::to_writer(&mut out, doc).expect("an MNS response document serialises");
    out
}

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

/// `<Queue>` of CreateQueue / SetQueueAttributes.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct QueueReq {
    pub delay_seconds: Option<String>,
    pub maximum_message_size: Option<String>,
    pub message_retention_period: Option<String>,
    pub visibility_timeout: Option<String>,
    pub polling_wait_seconds: Option<String>,
    pub logging_enabled: Option<String>,
}

/// `<Topic>` of CreateTopic / SetTopicAttributes.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TopicReq {
    pub maximum_message_size: Option<String>,
    pub logging_enabled: Option<String>,
}

/// One `<PropertyValue>` of `<UserProperties>`: a message attribute.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PropertyValue {
    pub name: String,
    #[serde(default)]
    pub value: String,
    #[serde(default = "string_type")]
    pub r#type: String,
}

fn string_type() -> String {
    "STRING".into()
}

/// `<UserProperties>`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub struct UserProperties {
    #[serde(rename = "PropertyValue", default)]
    pub values: Vec<PropertyValue>,
}

impl UserProperties {
    /// The properties as message attributes (name -> value text).
    pub fn into_attributes(self) -> BTreeMap<String, String> {
        self.values.into_iter().map(|p| (p.name, p.value)).collect()
    }

    /// Message attributes as properties of type `STRING`; `None` when there are none. A value
    /// with characters XML 1.0 cannot carry is given as type `BINARY` (base64 of its bytes, as
    /// the SDKs write and read binary properties), so it arrives intact and the document stays
    /// well-formed.
    pub fn from_attributes(a: &BTreeMap<String, String>) -> Option<UserProperties> {
        (!a.is_empty()).then(|| UserProperties {
            values: a
                .iter()
                .map(|(k, v)| {
                    let (value, base64) = crate::deliver::format::message_text(v.as_bytes(), true);
                    PropertyValue {
                        name: crate::deliver::format::xml_text(k).into_owned(),
                        value,
                        r#type: if base64 {
                            "BINARY".into()
                        } else {
                            string_type()
                        },
                    }
                })
                .collect(),
        })
    }
}

/// `<Message>` of SendMessage, an entry of BatchSendMessage, or of PublishMessage.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MessageReq {
    pub message_body: Option<String>,
    pub delay_seconds: Option<String>,
    pub priority: Option<String>,
    pub message_tag: Option<String>,
    pub user_properties: Option<UserProperties>,
}

/// `<Messages>` of BatchSendMessage.
#[derive(Debug, Default, Deserialize)]
pub struct MessagesReq {
    #[serde(rename = "Message", default)]
    pub messages: Vec<MessageReq>,
}

/// `<ReceiptHandles>` of BatchDeleteMessage.
#[derive(Debug, Default, Deserialize)]
pub struct ReceiptHandlesReq {
    #[serde(rename = "ReceiptHandle", default)]
    pub handles: Vec<String>,
}

/// `<Subscription>` of Subscribe / SetSubscriptionAttributes.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SubscriptionReq {
    pub endpoint: Option<String>,
    pub notify_strategy: Option<String>,
    pub notify_content_format: Option<String>,
    pub filter_tag: Option<String>,
}

/// `<Queue>` answered by GetQueueAttributes, and a `<Queue>` of ListQueue with meta.
#[derive(Debug, Serialize)]
#[serde(rename = "Queue", rename_all = "PascalCase")]
pub struct QueueResp {
    #[serde(rename = "@xmlns", skip_serializing_if = "Option::is_none")]
    pub xmlns: Option<&'static str>,
    #[serde(rename = "QueueURL", skip_serializing_if = "Option::is_none")]
    pub queue_url: Option<String>,
    pub queue_name: String,
    pub create_time: u64,
    pub last_modify_time: u64,
    pub delay_seconds: u32,
    pub maximum_message_size: u32,
    pub message_retention_period: u32,
    pub visibility_timeout: u32,
    pub polling_wait_seconds: u32,
    pub active_messages: u64,
    pub inactive_messages: u64,
    pub delay_messages: u64,
    pub logging_enabled: &'static str,
}

/// A `<Queue>` of ListQueue without meta.
#[derive(Debug, Serialize)]
pub struct QueueUrl {
    #[serde(rename = "QueueURL")]
    pub url: String,
}

/// `<Queues>` of ListQueue: entries are [`QueueUrl`] or [`QueueResp`].
#[derive(Debug, Serialize)]
#[serde(rename = "Queues")]
pub struct QueuesResp<T: Serialize> {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "Queue")]
    pub queues: Vec<T>,
    #[serde(rename = "NextMarker", skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

/// `<Topic>` answered by GetTopicAttributes, and a `<Topic>` of ListTopic with meta.
#[derive(Debug, Serialize)]
#[serde(rename = "Topic", rename_all = "PascalCase")]
pub struct TopicResp {
    #[serde(rename = "@xmlns", skip_serializing_if = "Option::is_none")]
    pub xmlns: Option<&'static str>,
    #[serde(rename = "TopicURL", skip_serializing_if = "Option::is_none")]
    pub topic_url: Option<String>,
    pub topic_name: String,
    pub create_time: u64,
    pub last_modify_time: u64,
    pub maximum_message_size: u32,
    pub message_retention_period: u32,
    pub message_count: u64,
    pub logging_enabled: &'static str,
}

/// A `<Topic>` of ListTopic without meta.
#[derive(Debug, Serialize)]
pub struct TopicUrl {
    #[serde(rename = "TopicURL")]
    pub url: String,
}

/// `<Topics>` of ListTopic.
#[derive(Debug, Serialize)]
#[serde(rename = "Topics")]
pub struct TopicsResp<T: Serialize> {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "Topic")]
    pub topics: Vec<T>,
    #[serde(rename = "NextMarker", skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

/// `<Subscription>` of GetSubscriptionAttributes.
#[derive(Debug, Serialize)]
#[serde(rename = "Subscription", rename_all = "PascalCase")]
pub struct SubscriptionResp {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    pub topic_owner: String,
    pub topic_name: String,
    pub subscription_name: String,
    pub endpoint: String,
    pub notify_strategy: String,
    pub notify_content_format: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter_tag: Option<String>,
    pub create_time: u64,
    pub last_modify_time: u64,
}

/// A `<Subscription>` of ListSubscriptionByTopic.
#[derive(Debug, Serialize)]
pub struct SubscriptionUrl {
    #[serde(rename = "SubscriptionURL")]
    pub url: String,
}

/// `<Subscriptions>` of ListSubscriptionByTopic.
#[derive(Debug, Serialize)]
#[serde(rename = "Subscriptions")]
pub struct SubscriptionsResp {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "Subscription")]
    pub subscriptions: Vec<SubscriptionUrl>,
    #[serde(rename = "NextMarker", skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

/// `<Message>` answered by SendMessage / PublishMessage, or an entry of BatchSendMessage.
#[derive(Debug, Serialize)]
#[serde(rename = "Message", rename_all = "PascalCase")]
pub struct SentResp {
    #[serde(rename = "@xmlns", skip_serializing_if = "Option::is_none")]
    pub xmlns: Option<&'static str>,
    pub message_id: String,
    #[serde(rename = "MessageBodyMD5")]
    pub message_body_md5: String,
}

/// A received or peeked `<Message>`. Peeked ones have no handle and no next visible time.
#[derive(Debug, Serialize)]
#[serde(rename = "Message", rename_all = "PascalCase")]
pub struct MessageResp {
    #[serde(rename = "@xmlns", skip_serializing_if = "Option::is_none")]
    pub xmlns: Option<&'static str>,
    pub message_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt_handle: Option<String>,
    #[serde(rename = "MessageBodyMD5")]
    pub message_body_md5: String,
    pub message_body: String,
    /// `base64` when the body is given as base64 (see `queues::message_resp`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_encoding: Option<&'static str>,
    pub enqueue_time: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_visible_time: Option<u64>,
    pub first_dequeue_time: u64,
    pub dequeue_count: u32,
    pub priority: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_properties: Option<UserProperties>,
}

/// `<Messages>` of a batch send, receive or peek.
#[derive(Debug, Serialize)]
#[serde(rename = "Messages")]
pub struct MessagesResp<T: Serialize> {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "Message")]
    pub messages: Vec<T>,
}

/// `<ChangeVisibility>` of ChangeMessageVisibility.
#[derive(Debug, Serialize)]
#[serde(rename = "ChangeVisibility", rename_all = "PascalCase")]
pub struct ChangeVisibilityResp {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    pub receipt_handle: String,
    pub next_visible_time: u64,
}

/// One failed handle of BatchDeleteMessage.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteErrorResp {
    pub error_code: String,
    pub error_message: String,
    pub receipt_handle: String,
}

/// `<Errors>` of a BatchDeleteMessage with failures.
#[derive(Debug, Serialize)]
#[serde(rename = "Errors")]
pub struct DeleteErrorsResp {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "Error")]
    pub errors: Vec<DeleteErrorResp>,
}
