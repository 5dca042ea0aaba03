//! Device status messages: when a signed-in device connects or goes away, sluice itself
//! publishes `{"status":"online"|"offline",...}` on `/as/mqtt/status/{pk}/{dn}` into the rules,
//! exactly like a device message, so a rule (`FROM "/as/mqtt/status/{pk}/+"`) can forward it.
//! The fields are those of docs/rule-sql.md, "Device status"; times are UTC (`time` as
//! `yyyy-MM-dd HH:mm:ss.SSS`, `utcTime` as ISO 8601 with `Z`).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use super::{DeviceIdentity, IngestMessage};

/// The status topic of a device.
pub fn status_topic(identity: &DeviceIdentity) -> String {
    format!(
        "/as/mqtt/status/{}/{}",
        identity.product_key, identity.device_name
    )
}

/// The status message of a device going online or offline at `now_ms`; `last_ms` is the time of
/// its last packet (offline) or of its CONNECT (online).
pub(crate) fn status_message(
    identity: &DeviceIdentity,
    client_id: Arc<str>,
    peer: SocketAddr,
    online: bool,
    now_ms: u64,
    last_ms: u64,
) -> IngestMessage {
    let body = serde_json::json!({
        "status": if online { "online" } else { "offline" },
        "productKey": identity.product_key,
        "deviceName": identity.device_name,
        "time": local_time(now_ms),
        "utcTime": utc_time(now_ms),
        "lastTime": local_time(last_ms),
        "utcLastTime": utc_time(last_ms),
        "clientIp": peer.ip().to_canonical().to_string(),
    });
    IngestMessage {
        topic: status_topic(identity),
        payload: Bytes::from(body.to_string()),
        qos: 0,
        retain: false,
        client_id,
        identity: Some(identity.clone()),
        peer: Some(peer),
        received_at_ms: now_ms,
    }
}

fn datetime(ms: u64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms as i64).unwrap_or_default()
}

fn local_time(ms: u64) -> String {
    datetime(ms).format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

fn utc_time(ms: u64) -> String {
    datetime(ms).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_message_has_the_platform_fields() {
        // Proves the status payload shape of docs/rule-sql.md, with UTC times in both formats.
        let id = DeviceIdentity {
            product_key: "pk".into(),
            device_name: "dev".into(),
        };
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let m = status_message(
            &id,
            Arc::from("c"),
            peer,
            false,
            1_535_700_748_205,
            1_535_700_748_195,
        );
        assert_eq!(m.topic, "/as/mqtt/status/pk/dev");
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "status": "offline", "productKey": "pk", "deviceName": "dev",
                "time": "2018-08-31 07:32:28.205", "utcTime": "2018-08-31T07:32:28.205Z",
                "lastTime": "2018-08-31 07:32:28.195", "utcLastTime": "2018-08-31T07:32:28.195Z",
                "clientIp": "127.0.0.1"
            })
        );
    }
}
