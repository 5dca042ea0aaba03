//! Thing-model replies: a signed-in device that posts properties or an event on
//! `/sys/{pk}/{dn}/thing/event/{property|id}/post` gets `{"id":..,"code":200,"data":{}}` on the
//! same topic with `_reply`, as the IoT platforms answer; device SDKs wait for it. The reply also
//! carries the platform's `message`, `method` and `version` fields: the Python SDK reads
//! `message` and drops a reply without it. It goes out through the router, so the device
//! receives it when it subscribed to the reply topic (the SDKs do).

use bytes::Bytes;
use serde::Deserialize;

use super::DeviceIdentity;

/// Only the request id is read from the post (parsing only what is needed).
#[derive(Deserialize)]
struct PostId {
    #[serde(default)]
    id: serde_json::Value,
}

/// The reply topic and body for a thing-model post, or `None` when `topic` is not one of the
/// device's own thing-model post topics.
pub(crate) fn thing_reply(
    identity: &DeviceIdentity,
    topic: &str,
    payload: &[u8],
) -> Option<(String, Bytes)> {
    let rest = topic
        .strip_prefix("/sys/")?
        .strip_prefix(identity.product_key.as_str())?
        .strip_prefix('/')?
        .strip_prefix(identity.device_name.as_str())?
        .strip_prefix("/thing/event/")?;
    let event = rest.strip_suffix("/post")?;
    if event.is_empty() || event.contains('/') {
        return None;
    }
    let id = serde_json::from_slice::<PostId>(payload)
        .map(|p| p.id)
        .unwrap_or_default();
    let body = serde_json::json!({
        "id": id,
        "code": 200,
        "data": {},
        "message": "success",
        "method": format!("thing.event.{event}.post"),
        "version": "1.0",
    });
    Some((format!("{topic}_reply"), Bytes::from(body.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_and_event_posts_get_a_reply_with_their_id() {
        // Proves the reply topic and body for property and event posts, and that other topics
        // (another device's, custom ones, services) get none.
        let id = DeviceIdentity {
            product_key: "pk".into(),
            device_name: "dev".into(),
        };
        let (topic, body) = thing_reply(
            &id,
            "/sys/pk/dev/thing/event/property/post",
            br#"{"id":"42","params":{"T":1}}"#,
        )
        .unwrap();
        assert_eq!(topic, "/sys/pk/dev/thing/event/property/post_reply");
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "id": "42", "code": 200, "data": {}, "message": "success",
                "method": "thing.event.property.post", "version": "1.0"
            })
        );
        assert!(thing_reply(&id, "/sys/pk/dev/thing/event/alarm/post", b"x").is_some());
        assert!(thing_reply(&id, "/sys/pk/other/thing/event/property/post", b"{}").is_none());
        assert!(thing_reply(&id, "/pk/dev/user/update", b"{}").is_none());
        assert!(thing_reply(&id, "/sys/pk/dev/thing/service/property/set", b"{}").is_none());
    }
}
