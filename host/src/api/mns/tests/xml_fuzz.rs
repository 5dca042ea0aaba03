//! A bounded fuzzing pass over the MNS XML request parser, with proptest.
//!
//! Inputs are arbitrary bytes and near-valid documents: the request documents the SDKs send,
//! cut into tokens and damaged by dropping, repeating and swapping tokens or inserting hostile
//! ones (unknown and numeric entities, a DOCTYPE with internal entities, CDATA, stray `<`).
//! Properties:
//! - parsing never panics, allocates at most a fixed multiple of the body's size (no entity
//!   expansion), and a failure is a `400 MalformedXML` naming the document;
//! - a valid document round-trips: every value written (escaped) into it is read back exactly,
//!   spaces at either end and line breaks included.
//!
//! Each property runs `PROPTEST_CASES` cases (proptest's own variable; 256 by default, a few
//! seconds in a debug build).

use axum::http::StatusCode;
use bytes::Bytes;
use proptest::prelude::*;
use quick_xml::escape::escape;

use crate::alloc_meter::peak_bytes;
use crate::api::mns::error::MnsError;
use crate::api::mns::xml::*;

/// Most bytes a parse may allocate per byte of the body (each value is copied once or twice;
/// quick-xml keeps a small buffer per nesting level).
const ALLOC_PER_BODY_BYTE: usize = 16;
/// Fixed allowance per parse (the error message, the deserializer's state).
const ALLOC_SLACK: usize = 16 * 1024;

/// Parses `bytes` as every request document and checks the outcome of each.
fn parse_every_kind(bytes: &[u8]) -> Result<(), TestCaseError> {
    let body = XmlBody(Bytes::copy_from_slice(bytes));
    let check = |what: &str, r: Result<(), MnsError>, peak: usize| {
        prop_assert!(
            peak <= ALLOC_PER_BODY_BYTE * bytes.len() + ALLOC_SLACK,
            "{peak} bytes allocated parsing {} bytes as {what}",
            bytes.len()
        );
        if let Err(e) = r {
            prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
            prop_assert_eq!(e.code, "MalformedXML");
            prop_assert!(
                e.message
                    .starts_with(&format!("the {what} document is not")),
                "{}",
                e.message
            );
        }
        Ok(())
    };
    macro_rules! kind {
        ($t:ty, $what:literal) => {{
            let (r, peak) = peak_bytes(|| body.parse::<$t>($what).map(drop));
            check($what, r, peak)?;
        }};
    }
    kind!(QueueReq, "Queue");
    kind!(TopicReq, "Topic");
    kind!(MessageReq, "Message");
    kind!(MessagesReq, "Messages");
    kind!(ReceiptHandlesReq, "ReceiptHandles");
    kind!(SubscriptionReq, "Subscription");
    let (_, peak) = peak_bytes(|| body.root_name());
    prop_assert!(peak <= ALLOC_PER_BODY_BYTE * bytes.len() + ALLOC_SLACK);
    Ok(())
}

/// The request documents as the SDKs write them.
const DOCUMENTS: &[&str] = &[
    r#"<?xml version="1.0" encoding="UTF-8"?><Message xmlns="http://mns.aliyuncs.com/doc/v1/"><MessageBody>hello &amp; &lt;bye&gt;</MessageBody><DelaySeconds>0</DelaySeconds><Priority>8</Priority><MessageTag>hot</MessageTag><UserProperties><PropertyValue><Name>k</Name><Value>v</Value><Type>STRING</Type></PropertyValue></UserProperties></Message>"#,
    r#"<?xml version="1.0" encoding="UTF-8"?><Messages xmlns="http://mns.aliyuncs.com/doc/v1/"><Message><MessageBody>a</MessageBody></Message><Message><MessageBody><![CDATA[<b>]]></MessageBody><Priority>1</Priority></Message></Messages>"#,
    r#"<?xml version="1.0" encoding="UTF-8"?><ReceiptHandles xmlns="http://mns.aliyuncs.com/doc/v1/"><ReceiptHandle>1-abc</ReceiptHandle><ReceiptHandle>2-def</ReceiptHandle></ReceiptHandles>"#,
    r#"<?xml version="1.0" encoding="UTF-8"?><Queue xmlns="http://mns.aliyuncs.com/doc/v1/"><VisibilityTimeout>30</VisibilityTimeout><MaximumMessageSize>65536</MaximumMessageSize><MessageRetentionPeriod>345600</MessageRetentionPeriod><DelaySeconds>0</DelaySeconds><PollingWaitSeconds>0</PollingWaitSeconds><LoggingEnabled>False</LoggingEnabled></Queue>"#,
    r#"<?xml version="1.0" encoding="UTF-8"?><Topic xmlns="http://mns.aliyuncs.com/doc/v1/"><MaximumMessageSize>65536</MaximumMessageSize><LoggingEnabled>False</LoggingEnabled></Topic>"#,
    r#"<?xml version="1.0" encoding="UTF-8"?><Subscription xmlns="http://mns.aliyuncs.com/doc/v1/"><Endpoint>http://example.com/hook?a=1&amp;b=2</Endpoint><NotifyStrategy>BACKOFF_RETRY</NotifyStrategy><NotifyContentFormat>XML</NotifyContentFormat><FilterTag>hot</FilterTag></Subscription>"#,
];

/// Tokens an attacker or a broken client might put anywhere in a document.
const HOSTILE: &[&str] = &[
    "<",
    ">",
    "&",
    "&#0;",
    "&#xD800;",
    "&#x110000;",
    "&#99999999999999999999;",
    "&nope;",
    "&amp",
    "<![CDATA[",
    "]]>",
    "<!-- c -->",
    "<?pi x?>",
    r#"<!DOCTYPE Message [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>"#,
    "&b;",
    "<MessageBody>",
    "</MessageBody>",
    "<Message/>",
    "<UserProperties>",
    "<PropertyValue><Name/></PropertyValue>",
    "xmlns:x=\"u\"",
    "<x:Message>",
    "\u{0}",
    "\u{feff}",
    "\u{fffe}",
    " ",
    "\r\n",
];

/// Splits a document into tags and text runs.
fn tokens(doc: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in doc.chars() {
        if ch == '<' && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(ch);
        if ch == '>' {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[derive(Debug, Clone)]
enum Edit {
    Drop(prop::sample::Index),
    Repeat(prop::sample::Index, u8),
    Swap(prop::sample::Index, prop::sample::Index),
    Insert(prop::sample::Index, prop::sample::Index),
    Text(prop::sample::Index, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    let ix = any::<prop::sample::Index>;
    prop_oneof![
        ix().prop_map(Edit::Drop),
        (ix(), 1u8..50).prop_map(|(i, n)| Edit::Repeat(i, n)),
        (ix(), ix()).prop_map(|(a, b)| Edit::Swap(a, b)),
        (ix(), ix()).prop_map(|(a, b)| Edit::Insert(a, b)),
        (ix(), "\\PC{0,12}").prop_map(|(i, t)| Edit::Text(i, t)),
    ]
}

fn near_valid() -> impl Strategy<Value = String> {
    (
        any::<prop::sample::Index>(),
        prop::collection::vec(edit(), 1..5),
    )
        .prop_map(|(doc, edits)| {
            let mut t = tokens(DOCUMENTS[doc.index(DOCUMENTS.len())]);
            for e in edits {
                let n = t.len();
                match e {
                    Edit::Drop(i) if n > 1 => {
                        t.remove(i.index(n));
                    }
                    Edit::Repeat(i, k) if n > 0 => {
                        let tok = t[i.index(n)].clone();
                        let at = i.index(n);
                        for _ in 0..k {
                            t.insert(at, tok.clone());
                        }
                    }
                    Edit::Swap(a, b) if n > 0 => t.swap(a.index(n), b.index(n)),
                    Edit::Insert(at, h) => {
                        t.insert(at.index(n + 1), HOSTILE[h.index(HOSTILE.len())].into())
                    }
                    Edit::Text(at, text) => t.insert(at.index(n + 1), text),
                    _ => {}
                }
            }
            t.concat()
        })
}

/// Text as a client might send it: any characters XML 1.0 allows, spaces at either end.
fn xml_text() -> impl Strategy<Value = String> {
    "[ \t\r\n]{0,2}[\u{9}\u{a}\u{20}-\u{d7ff}\u{e000}-\u{fffd}\u{10000}-\u{10ffff}]{0,40}[ \t\n]{0,2}"
        .prop_map(|s| s.replace('\r', "\n"))
}

proptest! {
    #[test]
    fn arbitrary_bytes_give_a_clear_error_or_a_document(
        bytes in prop::collection::vec(any::<u8>(), 0..1024),
    ) {
        parse_every_kind(&bytes)?;
    }

    #[test]
    fn arbitrary_text_give_a_clear_error_or_a_document(text in "\\PC{0,300}") {
        parse_every_kind(text.as_bytes())?;
    }

    #[test]
    fn near_valid_documents_give_a_clear_error_or_a_document(doc in near_valid()) {
        parse_every_kind(doc.as_bytes())?;
    }

    #[test]
    fn a_valid_message_document_round_trips(
        body in xml_text(),
        tag in prop::option::of("[a-zA-Z0-9_-]{1,16}"),
        delay in prop::option::of(0u32..604_800),
        props in prop::collection::btree_map("[a-zA-Z][a-zA-Z0-9_]{0,15}", xml_text(), 0..4),
    ) {
        let mut doc = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Message xmlns=\"{XMLNS}\">\
             <MessageBody>{}</MessageBody>",
            escape(&body)
        );
        if let Some(d) = delay {
            doc.push_str(&format!("<DelaySeconds>{d}</DelaySeconds>"));
        }
        if let Some(t) = &tag {
            doc.push_str(&format!("<MessageTag>{t}</MessageTag>"));
        }
        if !props.is_empty() {
            doc.push_str("<UserProperties>");
            for (k, v) in &props {
                doc.push_str(&format!(
                    "<PropertyValue><Name>{k}</Name><Value>{}</Value><Type>STRING</Type></PropertyValue>",
                    escape(v)
                ));
            }
            doc.push_str("</UserProperties>");
        }
        doc.push_str("</Message>");
        let m: MessageReq = XmlBody(Bytes::from(doc.clone()))
            .parse("Message")
            .map_err(|e| TestCaseError::fail(format!("{}: {doc}", e.message)))?;
        prop_assert_eq!(m.message_body.as_deref(), Some(body.as_str()), "{}", doc);
        prop_assert_eq!(m.message_tag, tag);
        prop_assert_eq!(m.delay_seconds, delay.map(|d| d.to_string()));
        let got = m.user_properties.map(UserProperties::into_attributes).unwrap_or_default();
        prop_assert_eq!(got, props);
    }

    #[test]
    fn a_valid_batch_and_receipt_handles_round_trip(
        bodies in prop::collection::vec(xml_text(), 1..16),
        handles in prop::collection::vec("[0-9]{1,6}-[A-Za-z0-9]{1,30}", 1..16),
    ) {
        let mut doc = format!("<Messages xmlns=\"{XMLNS}\">");
        for b in &bodies {
            doc.push_str(&format!("<Message><MessageBody>{}</MessageBody></Message>", escape(b)));
        }
        doc.push_str("</Messages>");
        let m: MessagesReq = XmlBody(Bytes::from(doc.clone()))
            .parse("Messages")
            .map_err(|e| TestCaseError::fail(format!("{}: {doc}", e.message)))?;
        let got: Vec<String> = m.messages.into_iter().filter_map(|m| m.message_body).collect();
        prop_assert_eq!(got, bodies);
        let mut doc = format!("<ReceiptHandles xmlns=\"{XMLNS}\">");
        for h in &handles {
            doc.push_str(&format!("<ReceiptHandle>{h}</ReceiptHandle>"));
        }
        doc.push_str("</ReceiptHandles>");
        let r: ReceiptHandlesReq = XmlBody(Bytes::from(doc)).parse("ReceiptHandles").unwrap();
        prop_assert_eq!(r.handles, handles);
    }
}

/// Found by `a_valid_message_document_round_trips`: U+0085 and U+2028 are ordinary characters
/// in XML 1.0, but quick-xml's deserializer applies XML 1.1 line-end handling and turned them
/// into line feeds, so a message body changed on the way in (and its MD5 with it).
#[test]
fn xml_1_1_line_ends_in_values_are_kept() {
    for (doc, want) in [
        (
            "<Message><MessageBody>a\u{85}b</MessageBody></Message>",
            "a\u{85}b",
        ),
        (
            "<Message><MessageBody>\u{2028}x\r\u{85}</MessageBody></Message>",
            "\u{2028}x\n\u{85}",
        ),
        (
            "<Message><MessageBody><![CDATA[<\u{85}>]]>\u{2028}</MessageBody></Message>",
            "<\u{85}>\u{2028}",
        ),
        (
            "<Message><MessageBody>a\r\nb\rc</MessageBody></Message>",
            "a\nb\nc",
        ),
    ] {
        let m: MessageReq = XmlBody(Bytes::from(doc)).parse("Message").unwrap();
        assert_eq!(m.message_body.as_deref(), Some(want), "{doc:?}");
    }
    let m: MessageReq = XmlBody(Bytes::from(
        "<Message><UserProperties><PropertyValue><Name>A</Name><Value>\u{85}</Value>\
         </PropertyValue></UserProperties></Message>",
    ))
    .parse("Message")
    .unwrap();
    let attributes = m.user_properties.unwrap().into_attributes();
    assert_eq!(attributes["A"], "\u{85}");
}

/// Found by `near_valid_documents_give_a_clear_error_or_a_document`: a DOCTYPE inside an
/// element's text made quick-xml's deserializer panic (`entered unreachable code`: two text
/// events in a row). Documents with a DOCTYPE are refused; the characters in CDATA are text.
#[test]
fn a_doctype_is_refused_without_a_panic() {
    for doc in [
        "<Message><MessageBody>a<!DOCTYPE x>b</MessageBody></Message>",
        "<Message><UserProperties><PropertyValue><Name>k</Name><Value>v<!doctype x>w</Value>\
         </PropertyValue></UserProperties></Message>",
        "<!DOCTYPE Message [<!ENTITY a \"aaaa\">]><Message><MessageBody>&a;</MessageBody></Message>",
    ] {
        let e = XmlBody(Bytes::from(doc))
            .parse::<MessageReq>("Message")
            .unwrap_err();
        assert_eq!(e.code, "MalformedXML", "{doc}");
        assert!(e.message.contains("DOCTYPE"), "{doc}: {}", e.message);
    }
    let doc = "<Message><MessageBody><![CDATA[<!DOCTYPE html><p>]]></MessageBody></Message>";
    let m: MessageReq = XmlBody(Bytes::from(doc)).parse("Message").unwrap();
    assert_eq!(m.message_body.as_deref(), Some("<!DOCTYPE html><p>"));
}
