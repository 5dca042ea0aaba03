//! The XML documents of MNS (namespace `http://mns.aliyuncs.com/doc/v1/`) as the official SDKs
//! write and read them, and their serialisation with quick-xml's serde support: the requests and
//! answers of the MNS API (`api::mns`) and the notification an HTTP push sends in the XML format
//! (`deliver::format`). Both faces use these types, so a document has one definition.
//!
//! Text that XML 1.0 cannot carry never reaches a document: a message body is sent as base64
//! instead ([`message_text`]) and names and short texts have such characters replaced
//! ([`xml_text`]). A carriage return is written as `&#13;`, since an XML reader turns a literal
//! one into a line feed and the body would no longer match its MD5.

use std::collections::BTreeMap;

use base64::Engine as _;
use quick_xml::se::{QuoteLevel, Serializer};
use serde::{Deserialize, Serialize};

/// The MNS XML namespace, on every root element.
pub const XMLNS: &str = "http://mns.aliyuncs.com/doc/v1/";

/// The XML declaration every document starts with.
const DECLARATION: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>";

/// How a document is written. The two forms read as the same document; each face keeps the
/// bytes it has always sent.
#[derive(Debug, Clone, Copy)]
struct Form {
    /// A line break after the declaration.
    break_after_declaration: bool,
    /// Which characters are escaped: `&`, `<` and `>`, or also both quotes.
    quotes: QuoteLevel,
    /// An empty element as `<A></A>` instead of `<A/>`.
    expand_empty_elements: bool,
}

/// The MNS API's answers.
const ANSWER: Form = Form {
    break_after_declaration: true,
    quotes: QuoteLevel::Partial,
    expand_empty_elements: false,
};

/// The push notification.
const NOTIFICATION: Form = Form {
    break_after_declaration: false,
    quotes: QuoteLevel::Full,
    expand_empty_elements: true,
};

fn write<T: Serialize>(doc: &T, form: Form) -> String {
    let mut out = String::from(DECLARATION);
    if form.break_after_declaration {
        out.push('\n');
    }
    let start = out.len();
    let mut ser = Serializer::new(&mut out);
    ser.set_quote_level(form.quotes);
    ser.expand_empty_elements(form.expand_empty_elements);
    // Serialising plain structs of strings and numbers cannot fail.
    doc.serialize(ser).expect("an MNS document serialises");
    // quick-xml leaves a carriage return in text as it is (see the module docs).
    if out[start..].contains('\r') {
        let doc = out.split_off(start).replace('\r', "&#13;");
        out.push_str(&doc);
    }
    out
}

/// Serialises an answer of the MNS API, with the XML declaration in front.
pub fn to_xml<T: Serialize>(doc: &T) -> String {
    write(doc, ANSWER)
}

/// The body as text, or its base64 (`true`) when it is not UTF-8 or (for XML) has characters
/// XML 1.0 cannot carry.
pub fn message_text(body: &[u8], xml: bool) -> (String, bool) {
    match std::str::from_utf8(body) {
        Ok(s) if !xml || s.chars().all(xml_char) => (s.to_owned(), false),
        _ => (base64::engine::general_purpose::STANDARD.encode(body), true),
    }
}

/// XML 1.0 `Char`.
pub fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// `s` with every character XML 1.0 cannot carry replaced by U+FFFD, for names and short texts
/// that have no lossless form in an XML document (a serialiser escapes the markup itself).
pub fn xml_text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().all(xml_char) {
        return s.into();
    }
    s.chars()
        .map(|c| if xml_char(c) { c } else { '\u{FFFD}' })
        .collect::<String>()
        .into()
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
                    let (value, base64) = message_text(v.as_bytes(), true);
                    PropertyValue {
                        name: xml_text(k).into_owned(),
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

/// `<Error>`: every error answer of the MNS API.
#[derive(Debug, Serialize)]
#[serde(rename = "Error", rename_all = "PascalCase")]
pub struct ErrorResp<'a> {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'a str,
    pub code: &'a str,
    pub message: &'a str,
    pub request_id: &'a str,
    pub host_id: &'a str,
}

/// `<Notification>`: the body of an HTTP push in the XML format.
#[derive(Debug, Serialize)]
#[serde(rename = "Notification", rename_all = "PascalCase")]
pub struct Notification<'a> {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    pub topic_owner: &'a str,
    pub topic_name: &'a str,
    pub subscriber: &'a str,
    pub subscription_name: &'a str,
    pub message_id: &'a str,
    /// The body as text, or its base64 with `message_encoding` set (see [`message_text`]).
    pub message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_encoding: Option<&'static str>,
    #[serde(rename = "MessageMD5")]
    pub message_md5: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_tag: Option<&'a str>,
    pub publish_time: u64,
}

impl Notification<'_> {
    /// The document as sent: the declaration and the notification, with no line break between
    /// them, both quotes escaped and empty elements written out: the bytes pushes have always
    /// carried, so a receiver that compares bodies as text sees no change.
    pub fn to_xml(&self) -> String {
        write(self, NOTIFICATION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How answers were written before [`to_xml`] took its form as a parameter.
    fn previous_to_xml<T: Serialize>(doc: &T) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        quick_xml::se::to_writer(&mut out, doc).unwrap();
        out
    }

    fn message(body: &str) -> MessageResp {
        MessageResp {
            xmlns: Some(XMLNS),
            message_id: "0123456789abcdef0123456789abcdef".into(),
            receipt_handle: Some("h".into()),
            message_body_md5: "MD5".into(),
            message_body: body.into(),
            message_encoding: None,
            enqueue_time: 1,
            next_visible_time: Some(2),
            first_dequeue_time: 3,
            dequeue_count: 4,
            priority: 8,
            message_tag: Some(String::new()),
            user_properties: UserProperties::from_attributes(
                &[("k".to_string(), "it's \"v\" <&>".to_string())].into(),
            ),
        }
    }

    #[test]
    fn answers_keep_their_bytes() {
        for body in ["", "plain", "<a href=\"x\">&amp;'</a>]]>", "tab\tand\nline"] {
            let doc = message(body);
            assert_eq!(to_xml(&doc), previous_to_xml(&doc));
        }
        let error = ErrorResp {
            xmlns: XMLNS,
            code: "QueueNotExist",
            message: "queue `a<b` does not exist",
            request_id: "ID",
            host_id: "sluice",
        };
        assert_eq!(
            to_xml(&error),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error xmlns=\"http://mns.aliyuncs.com/doc/v1/\"><Code>QueueNotExist</Code><Message>queue `a&lt;b` does not exist</Message><RequestId>ID</RequestId><HostId>sluice</HostId></Error>"
        );
    }

    #[test]
    fn a_carriage_return_in_text_survives_a_reader() {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Read {
            message_body: String,
        }
        let body = "a\r\nb\rc";
        let x = to_xml(&message(body));
        assert!(
            x.contains("<MessageBody>a&#13;\nb&#13;c</MessageBody>"),
            "{x}"
        );
        let read: Read = quick_xml::de::from_str(&x).unwrap();
        assert_eq!(read.message_body, body);
        // Written as is, a reader's line-end handling turns it into a line feed.
        let read: Read = quick_xml::de::from_str(&previous_to_xml(&message(body))).unwrap();
        assert_ne!(read.message_body, body);
    }
}
