//! What a json rule sees of a thing-model message (docs/rule-sql.md, "What a rule sees"): the
//! platform view of property posts and event posts, built once per message by the host so every
//! rule — SQL or uploaded — sees the same thing. Other topics pass through untouched.

use serde_json::{Map, Value};

/// The kind of thing-model topic, from its levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThingTopic<'a> {
    /// `/sys/{pk}/{dn}/thing/event/property/post`
    PropertyPost,
    /// `/sys/{pk}/{dn}/thing/event/{identifier}/post`
    EventPost {
        /// The event's identifier.
        identifier: &'a str,
    },
}

/// Classifies `topic` as a thing-model post, if it is one.
pub fn thing_topic(topic: &str) -> Option<ThingTopic<'_>> {
    let rest = topic.strip_prefix("/sys/")?;
    let levels: Vec<&str> = rest.split('/').collect();
    match levels.as_slice() {
        [_, _, "thing", "event", "property", "post"] => Some(ThingTopic::PropertyPost),
        [_, _, "thing", "event", id, "post"] if !id.is_empty() => {
            Some(ThingTopic::EventPost { identifier: id })
        }
        _ => None,
    }
}

/// The payload a json rule sees: the platform view on thing-model topics, `None` elsewhere (the
/// rule sees the payload as published). A payload that is not a JSON object is left as is.
pub fn platform_view(
    topic: &str,
    payload: &[u8],
    product_key: &str,
    device_name: &str,
    ingest_ms: i64,
) -> Option<Vec<u8>> {
    let kind = thing_topic(topic)?;
    let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(payload) else {
        return None;
    };
    let params = doc.remove("params").unwrap_or(Value::Object(Map::new()));
    let mut view = Map::new();
    match kind {
        ThingTopic::PropertyPost => {
            view.insert("deviceName".into(), device_name.into());
            view.insert("productKey".into(), product_key.into());
            view.insert("gmtCreate".into(), ingest_ms.into());
            let mut items = Map::new();
            if let Value::Object(params) = params {
                for (name, value) in params {
                    let item = match value {
                        Value::Object(o) if o.contains_key("value") => Value::Object(o),
                        bare => {
                            let mut o = Map::new();
                            o.insert("value".into(), bare);
                            o.insert("time".into(), ingest_ms.into());
                            Value::Object(o)
                        }
                    };
                    items.insert(name, item);
                }
            }
            view.insert("items".into(), Value::Object(items));
        }
        ThingTopic::EventPost { identifier } => {
            view.insert("identifier".into(), identifier.into());
            view.insert("deviceName".into(), device_name.into());
            view.insert("productKey".into(), product_key.into());
            view.insert("gmtCreate".into(), ingest_ms.into());
            let (value, time) = match params {
                Value::Object(mut p) => (
                    p.remove("value").unwrap_or(Value::Object(Map::new())),
                    p.remove("time").unwrap_or(ingest_ms.into()),
                ),
                _ => (Value::Object(Map::new()), ingest_ms.into()),
            };
            view.insert("value".into(), value);
            view.insert("time".into(), time);
        }
    }
    serde_json::to_vec(&Value::Object(view)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(topic: &str, payload: &str) -> Value {
        serde_json::from_slice(&platform_view(topic, payload.as_bytes(), "pk", "dn", 99).unwrap())
            .unwrap()
    }

    #[test]
    fn property_post_becomes_items_with_bare_values_wrapped() {
        let v = view(
            "/sys/pk/dn/thing/event/property/post",
            r#"{"id":"1","version":"1.0","params":{"Temperature":{"value":38.5,"time":1524448722000},"Power":"on"},"method":"thing.event.property.post"}"#,
        );
        assert_eq!(
            v,
            serde_json::json!({"deviceName":"dn","productKey":"pk","gmtCreate":99,
                "items":{"Temperature":{"value":38.5,"time":1524448722000_i64},"Power":{"value":"on","time":99}}})
        );
    }

    #[test]
    fn event_post_carries_identifier_value_and_time() {
        let v = view(
            "/sys/pk/dn/thing/event/alarm/post",
            r#"{"id":"2","params":{"value":{"level":3},"time":123},"method":"thing.event.alarm.post"}"#,
        );
        assert_eq!(
            v,
            serde_json::json!({"identifier":"alarm","deviceName":"dn","productKey":"pk","gmtCreate":99,"value":{"level":3},"time":123})
        );
    }

    #[test]
    fn other_topics_and_non_objects_pass_through() {
        assert!(platform_view("/pk/dn/user/update", b"{}", "pk", "dn", 1).is_none());
        assert!(platform_view(
            "/sys/pk/dn/thing/event/property/post",
            b"[1]",
            "pk",
            "dn",
            1
        )
        .is_none());
        assert!(platform_view(
            "/sys/pk/dn/thing/event/property/post",
            b"nope",
            "pk",
            "dn",
            1
        )
        .is_none());
        assert_eq!(thing_topic("/sys/pk/dn/thing/service/x"), None);
    }
}
