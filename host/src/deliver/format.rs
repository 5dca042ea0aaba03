//! The body of a push by content format (docs/message-service.md, "HTTP push"): SIMPLIFIED (the
//! body as is), JSON and XML (the MNS notification document of [`crate::mns_xml`]).
//!
//! JSON and XML carry the body as text in `Message`. A body that is not UTF-8 (or, for XML,
//! holds characters XML 1.0 cannot carry) is sent base64-encoded instead, with
//! `MessageEncoding: base64` beside it, so nothing is mangled silently.

use bytes::Bytes;
use reqwest::header::{HeaderName, HeaderValue};

use crate::mns_xml::{message_text, xml_text, Notification, XMLNS};
use crate::store::{ContentFormat, PushDelivery};

/// The owner shown in notifications (MNS shows the account id; sluice has one owner).
pub const TOPIC_OWNER: &str = "sluice";

/// A rendered push.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// `content-type`.
    pub content_type: &'static str,
    /// The exact bytes sent (and signed).
    pub body: Bytes,
    /// Format-specific headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Renders one push of `d` for subscription `subscription` of `topic`.
pub fn render(
    format: ContentFormat,
    topic: &str,
    subscription: &str,
    d: &PushDelivery,
) -> Rendered {
    match format {
        ContentFormat::Simplified => {
            let mut headers = vec![(
                HeaderName::from_static("x-mns-message-id"),
                HeaderValue::from_str(&d.message_id).unwrap_or(HeaderValue::from_static("")),
            )];
            // Tags are checked for CR/LF/NUL at publish time; anything else odd is skipped.
            if let Some(tag) = d
                .tag
                .as_deref()
                .and_then(|t| HeaderValue::from_bytes(t.as_bytes()).ok())
            {
                headers.push((HeaderName::from_static("x-mns-message-tag"), tag));
            }
            let content_type = if std::str::from_utf8(&d.body).is_ok() {
                "text/plain; charset=utf-8"
            } else {
                "application/octet-stream"
            };
            Rendered {
                content_type,
                body: d.body.clone(),
                headers,
            }
        }
        ContentFormat::Json => {
            let (message, base64) = message_text(&d.body, false);
            let mut v = serde_json::json!({
                "TopicOwner": TOPIC_OWNER,
                "TopicName": topic,
                "Subscriber": TOPIC_OWNER,
                "SubscriptionName": subscription,
                "MessageId": d.message_id,
                "Message": message,
                "MessageMD5": d.body_md5,
                "MessageTag": d.tag,
                "PublishTime": d.publish_time_ms,
            });
            if base64 {
                v["MessageEncoding"] = "base64".into();
            }
            Rendered {
                content_type: "application/json",
                body: Bytes::from(v.to_string()),
                headers: Vec::new(),
            }
        }
        ContentFormat::Xml => {
            let (message, base64) = message_text(&d.body, true);
            let tag = d.tag.as_deref().map(xml_text);
            let x = Notification {
                xmlns: XMLNS,
                topic_owner: TOPIC_OWNER,
                topic_name: &xml_text(topic),
                subscriber: TOPIC_OWNER,
                subscription_name: &xml_text(subscription),
                message_id: &xml_text(&d.message_id),
                message: &message,
                message_encoding: base64.then_some("base64"),
                message_md5: &xml_text(&d.body_md5),
                message_tag: tag.as_deref(),
                publish_time: d.publish_time_ms,
            }
            .to_xml();
            Rendered {
                content_type: "text/xml; charset=utf-8",
                body: Bytes::from(x),
                headers: Vec::new(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use crate::mns_xml::xml_char;

    use super::*;

    fn delivery(body: &[u8], tag: Option<&str>) -> PushDelivery {
        PushDelivery {
            seq: 1,
            message_id: "0123456789abcdef0123456789abcdef".into(),
            body: Bytes::copy_from_slice(body),
            body_md5: "MD5".into(),
            tag: tag.map(str::to_owned),
            attributes: Default::default(),
            publish_time_ms: 1700000000123,
            attempts: 0,
            due_ms: 0,
        }
    }

    #[test]
    fn simplified_is_the_body_with_id_and_tag_headers() {
        let r = render(
            ContentFormat::Simplified,
            "t",
            "s",
            &delivery(b"\x00\xffraw", Some("hot")),
        );
        assert_eq!(&r.body[..], b"\x00\xffraw");
        assert_eq!(r.content_type, "application/octet-stream");
        let h: Vec<_> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            h,
            vec![
                ("x-mns-message-id", "0123456789abcdef0123456789abcdef"),
                ("x-mns-message-tag", "hot")
            ]
        );
    }

    #[test]
    fn json_has_the_mns_fields() {
        let r = render(
            ContentFormat::Json,
            "alerts",
            "hook",
            &delivery(br#"{"t":40}"#, None),
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["TopicName"], "alerts");
        assert_eq!(v["SubscriptionName"], "hook");
        assert_eq!(v["Message"], r#"{"t":40}"#);
        assert_eq!(v["MessageMD5"], "MD5");
        assert_eq!(v["PublishTime"], 1700000000123u64);
        assert!(v["MessageTag"].is_null() && v.get("MessageEncoding").is_none());
        let r = render(ContentFormat::Json, "a", "b", &delivery(b"\xff", None));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            (v["Message"].as_str(), v["MessageEncoding"].as_str()),
            (Some("/w=="), Some("base64"))
        );
    }

    #[test]
    fn xml_escapes_markup_and_base64s_what_xml_cannot_carry() {
        let r = render(
            ContentFormat::Xml,
            "alerts",
            "hook",
            &delivery(b"<a href=\"x\">&amp;'</a>]]>", Some("t&t")),
        );
        let x = std::str::from_utf8(&r.body).unwrap();
        assert!(x.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?><Notification xmlns="http://mns.aliyuncs.com/doc/v1/">"#), "{x}");
        assert!(
            x.contains(
                "<Message>&lt;a href=&quot;x&quot;&gt;&amp;amp;&apos;&lt;/a&gt;]]&gt;</Message>"
            ),
            "{x}"
        );
        assert!(x.contains("<MessageTag>t&amp;t</MessageTag>"), "{x}");
        assert!(
            x.ends_with("<PublishTime>1700000000123</PublishTime></Notification>"),
            "{x}"
        );
        let r = render(ContentFormat::Xml, "a", "b", &delivery(b"bell\x07", None));
        let x = std::str::from_utf8(&r.body).unwrap();
        assert!(
            x.contains("<Message>YmVsbAc=</Message><MessageEncoding>base64</MessageEncoding>"),
            "{x}"
        );
    }

    /// The XML notification as it was written by hand before it was serialised through
    /// `mns_xml::Notification`: the bytes the serialised document must still have.
    fn handwritten_xml(topic: &str, subscription: &str, d: &PushDelivery) -> String {
        fn escape_into(out: &mut String, s: &str) {
            for c in s.chars() {
                match c {
                    '&' => out.push_str("&amp;"),
                    '<' => out.push_str("&lt;"),
                    '>' => out.push_str("&gt;"),
                    '"' => out.push_str("&quot;"),
                    '\'' => out.push_str("&apos;"),
                    '\r' => out.push_str("&#13;"),
                    c if xml_char(c) => out.push(c),
                    _ => out.push('\u{FFFD}'),
                }
            }
        }
        let (message, base64) = message_text(&d.body, true);
        let mut x = String::new();
        x.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
        x.push_str(r#"<Notification xmlns="http://mns.aliyuncs.com/doc/v1/">"#);
        let mut field = |name: &str, value: &str| {
            x.push('<');
            x.push_str(name);
            x.push('>');
            escape_into(&mut x, value);
            x.push_str("</");
            x.push_str(name);
            x.push('>');
        };
        field("TopicOwner", TOPIC_OWNER);
        field("TopicName", topic);
        field("Subscriber", TOPIC_OWNER);
        field("SubscriptionName", subscription);
        field("MessageId", &d.message_id);
        field("Message", &message);
        if base64 {
            field("MessageEncoding", "base64");
        }
        field("MessageMD5", &d.body_md5);
        if let Some(tag) = &d.tag {
            field("MessageTag", tag);
        }
        field("PublishTime", &d.publish_time_ms.to_string());
        x.push_str("</Notification>");
        x
    }

    fn assert_same_xml(topic: &str, subscription: &str, d: &PushDelivery) {
        let r = render(ContentFormat::Xml, topic, subscription, d);
        let want = handwritten_xml(topic, subscription, d);
        assert_eq!(
            std::str::from_utf8(&r.body).unwrap(),
            want,
            "{topic:?} {subscription:?} {d:?}"
        );
    }

    #[test]
    fn the_xml_notification_keeps_the_bytes_of_the_handwritten_one() {
        for (body, tag) in [
            (&b""[..], None),
            (b"plain", Some("")),
            (b"<a href=\"x\">&amp;'</a>]]>", Some("t&t<'\"")),
            (b"line\r\nbreaks\rand\ttabs\n", Some("hot")),
            (b"bell\x07", Some("a\u{1}b")),
            (b"\xff\xfe", None),
            (
                "next line \u{85} and \u{2028}, \u{FFFD} \u{10FFFF}".as_bytes(),
                None,
            ),
            ("\u{FFFE}".as_bytes(), None),
        ] {
            assert_same_xml("alerts", "hook", &delivery(body, tag));
        }
        assert_same_xml("a<&>'\"", "s\r\u{1}", &delivery(b"x", None));
    }

    proptest! {
        #[test]
        fn any_xml_notification_keeps_the_bytes_of_the_handwritten_one(
            topic in "[-a-zA-Z0-9_.<>&'\"\r\n\t\u{1}]{0,16}",
            subscription in "[-a-zA-Z0-9_.<>&'\"\r\u{1}\u{FFFE}]{0,16}",
            body in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..40),
                "[a-z <>&'\"\r\n\t\u{1}\u{85}\u{2028}\u{FFFE}\u{D7FF}\u{E000}]{0,40}"
                    .prop_map(String::into_bytes),
            ],
            tag in prop::option::of("[a-z<>&'\"\u{1}\u{7f}]{0,16}"),
            md5 in "[0-9A-F]{0,32}",
            time in any::<u64>(),
        ) {
            let mut d = delivery(&body, tag.as_deref());
            d.body_md5 = md5;
            d.publish_time_ms = time;
            let r = render(ContentFormat::Xml, &topic, &subscription, &d);
            prop_assert_eq!(
                std::str::from_utf8(&r.body).unwrap(),
                handwritten_xml(&topic, &subscription, &d)
            );
        }
    }
}
