//! Downlink: an application server sends data down to one device (`POST
//! /v1/devices/{pk}/{dn}/messages`, `sluice pub`), through whichever broker is in use.
//!
//! With sluice's own listener the message goes to the device's subscribed sessions; a device
//! with no signed-in session gets a clear `DeviceOffline` answer instead of a silent drop (the
//! listener keeps no messages for offline sessions), and a connected device that has not
//! subscribed to the topic gets `NotSubscribed`. Through an external broker sluice cannot see
//! the device, so the broker's own rules apply (it keeps QoS 1 messages for persistent
//! sessions).

use bytes::Bytes;

use super::policy::is_own;
use super::DeviceRegistry;
use crate::ingest::{ExternalHandle, SessionRouter};

/// Where downlink messages are published.
#[derive(Debug, Clone)]
pub enum DownlinkPath {
    /// sluice's own listener: delivered to the connected sessions.
    Local(SessionRouter),
    /// The external broker sluice is a client of.
    External(ExternalHandle),
}

/// What happened to a downlink message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownlinkOutcome {
    /// The full MQTT topic it was published to.
    pub topic: String,
    /// Sessions that took it (own listener); `None` through an external broker.
    pub delivered: Option<usize>,
}

/// Why a downlink message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum DownlinkError {
    /// No such device in the registry.
    #[error("device `{device_name}` of product `{product_key}` does not exist")]
    DeviceNotFound {
        /// Product key.
        product_key: String,
        /// Device name.
        device_name: String,
    },
    /// The topic is not one of the device's own topics, or not a valid MQTT topic name.
    #[error("topic `{topic}`: {message}")]
    InvalidTopic {
        /// The topic as given.
        topic: String,
        /// What is wrong.
        message: String,
    },
    /// QoS other than 0 or 1.
    #[error("qos must be 0 or 1")]
    InvalidQos,
    /// The device has no signed-in session (own listener only).
    #[error(
        "device `{device_name}` of product `{product_key}` is offline: the message was not sent"
    )]
    DeviceOffline {
        /// Product key.
        product_key: String,
        /// Device name.
        device_name: String,
    },
    /// The device is online but has not subscribed to the topic.
    #[error("device is online but not subscribed to `{topic}`: the message was not sent")]
    NotSubscribed {
        /// The full topic.
        topic: String,
    },
    /// The external broker refused the request.
    #[error("external broker: {0}")]
    Broker(String),
}

/// The full topic of a downlink: `SUBTOPIC` becomes `/{pk}/{dn}/SUBTOPIC`; a topic starting with
/// `/` is taken as it is and must be one of the device's own (e.g.
/// `/sys/{pk}/{dn}/thing/service/property/set`).
pub fn device_topic(pk: &str, dn: &str, subtopic: &str) -> Result<String, DownlinkError> {
    let topic = if subtopic.starts_with('/') {
        subtopic.to_string()
    } else {
        format!("/{pk}/{dn}/{subtopic}")
    };
    let invalid = |message: String| DownlinkError::InvalidTopic {
        topic: subtopic.to_string(),
        message,
    };
    crate::topic::validate_topic(&topic).map_err(|e| invalid(e.to_string()))?;
    let levels: Vec<&str> = topic.split('/').collect();
    if subtopic.is_empty() || !is_own(&levels, pk, dn) {
        return Err(invalid(format!(
            "not a topic of this device: give a sub-topic such as `user/get`, or a full topic \
             under `/{pk}/{dn}/` or `/sys/{pk}/{dn}/`"
        )));
    }
    Ok(topic)
}

impl DownlinkPath {
    /// Publishes `payload` to `subtopic` of a registered device.
    pub async fn send(
        &self,
        registry: &DeviceRegistry,
        pk: &str,
        dn: &str,
        subtopic: &str,
        payload: Bytes,
        qos: u8,
    ) -> Result<DownlinkOutcome, DownlinkError> {
        if qos > 1 {
            return Err(DownlinkError::InvalidQos);
        }
        if registry.lookup(pk, dn).is_none() {
            return Err(DownlinkError::DeviceNotFound {
                product_key: pk.to_string(),
                device_name: dn.to_string(),
            });
        }
        let topic = device_topic(pk, dn, subtopic)?;
        match self {
            DownlinkPath::Local(router) => {
                if !registry.is_online(pk, dn) {
                    return Err(DownlinkError::DeviceOffline {
                        product_key: pk.to_string(),
                        device_name: dn.to_string(),
                    });
                }
                match router.publish(&topic, payload, qos) {
                    0 => Err(DownlinkError::NotSubscribed { topic }),
                    n => Ok(DownlinkOutcome {
                        topic,
                        delivered: Some(n),
                    }),
                }
            }
            DownlinkPath::External(handle) => {
                handle
                    .publish(&topic, payload, qos)
                    .await
                    .map_err(|e| DownlinkError::Broker(e.to_string()))?;
                Ok(DownlinkOutcome {
                    topic,
                    delivered: None,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downlink_topics_stay_inside_the_device() {
        // Proves topic building: a sub-topic is put under /pk/dn/, a full own topic is kept,
        // and another device's topic, wildcards or an empty sub-topic are refused.
        assert_eq!(
            device_topic("pk", "dn", "user/get").unwrap(),
            "/pk/dn/user/get"
        );
        assert_eq!(
            device_topic("pk", "dn", "/sys/pk/dn/thing/service/property/set").unwrap(),
            "/sys/pk/dn/thing/service/property/set"
        );
        for bad in ["", "/pk/other/user/get", "user/+", "/as/mqtt/status/pk/dn"] {
            assert!(device_topic("pk", "dn", bad).is_err(), "{bad}");
        }
    }
}
