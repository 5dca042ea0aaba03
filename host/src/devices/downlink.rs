//! Downlink: an application server sends data down to one device (`POST
//! /v1/devices/{pk}/{dn}/messages`, `sluice pub`), through whichever broker is in use.
//!
//! With sluice's own listener the message goes to the device's subscribed sessions. For a device
//! that is offline, a QoS 1 message is kept for each of its persistent sessions subscribed to
//! the topic at QoS 1 and delivered when it reconnects (the answer says `queued`); otherwise the
//! answer is a clear `DeviceOffline` instead of a silent drop. A connected device that has not
//! subscribed to the topic gets `NotSubscribed`. Through an external broker sluice cannot see
//! the device, so the broker's own rules apply (it keeps QoS 1 messages for persistent
//! sessions).
//!
//! Synchronous calls ([`DownlinkPath::call`]) publish a request and wait for the device's
//! answer: `/sys/{pk}/{dn}/rrpc/request/{id}` answered on `/sys/{pk}/{dn}/rrpc/response/{id}`,
//! or, for a custom topic, `/ext/rrpc/{id}/{topic}` answered on the same topic (the device
//! SDK's `subscribe_rrpc_topic` form).

use std::time::Duration;

use bytes::Bytes;

use super::policy::is_own;
use super::DeviceRegistry;
use crate::ingest::{DeviceIdentity, ExternalHandle, KeepError, SessionRouter};

/// Default time a synchronous call waits for the device's answer.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest time a synchronous call may wait.
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// Offline persistent sessions it was kept for, to be delivered when they reconnect.
    pub kept: usize,
}

/// A device's answer to a synchronous call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallAnswer {
    /// The call's id (a level of its topics).
    pub id: String,
    /// The topic the request was published to.
    pub request_topic: String,
    /// The device's answer.
    pub payload: Bytes,
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
    /// The device has no signed-in session (own listener only), and no persistent session
    /// that keeps the message.
    #[error(
        "device `{device_name}` of product `{product_key}` is offline: the message was not sent \
         (sluice keeps QoS 1 messages for a device whose persistent session subscribed to the \
         topic at QoS 1)"
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
    /// The device's persistent session holds as many undelivered messages as allowed.
    #[error("{0}; the message was not kept (raise mqtt_max_kept_per_session, or wait for the device to come back)")]
    KeptFull(String),
    /// The store failed while keeping the message.
    #[error("the message could not be kept for the offline device: {0}")]
    Storage(String),
    /// No answer within the call's timeout.
    #[error(
        "device `{device_name}` of product `{product_key}` did not answer within {timeout_ms} ms"
    )]
    Timeout {
        /// Product key.
        product_key: String,
        /// Device name.
        device_name: String,
        /// How long the call waited.
        timeout_ms: u64,
    },
    /// The call could not start: too many calls wait already.
    #[error("{0}")]
    CallRefused(String),
    /// A call's timeout out of range.
    #[error("timeout must be 1 to 60 seconds")]
    InvalidTimeout,
    /// Synchronous calls need sluice's own listener.
    #[error("synchronous calls need sluice's own MQTT listener; through an external broker sluice does not see the device's answer")]
    CallsUnsupported,
}

impl From<KeepError> for DownlinkError {
    fn from(e: KeepError) -> DownlinkError {
        match e {
            KeepError::Full { .. } => DownlinkError::KeptFull(e.to_string()),
            KeepError::Storage(why) => DownlinkError::Storage(why),
        }
    }
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
        check_exists(registry, pk, dn)?;
        let topic = device_topic(pk, dn, subtopic)?;
        match self {
            DownlinkPath::Local(router) => {
                if !registry.is_online(pk, dn) {
                    let device = DeviceIdentity {
                        product_key: pk.to_string(),
                        device_name: dn.to_string(),
                    };
                    let kept = if qos == 1 {
                        router.keep_for_offline(&device, &topic, payload).await?
                    } else {
                        0
                    };
                    if kept == 0 {
                        return Err(offline(pk, dn));
                    }
                    return Ok(DownlinkOutcome {
                        topic,
                        delivered: Some(0),
                        kept,
                    });
                }
                match router.publish(&topic, payload, qos) {
                    0 => Err(DownlinkError::NotSubscribed { topic }),
                    n => Ok(DownlinkOutcome {
                        topic,
                        delivered: Some(n),
                        kept: 0,
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
                    kept: 0,
                })
            }
        }
    }

    /// A synchronous call: publishes `payload` to the device's request topic (QoS 0) and waits
    /// up to `timeout` for its answer. `subtopic` picks the custom-topic form
    /// (`/ext/rrpc/{id}/{topic}`); without it the call uses the system topics.
    pub async fn call(
        &self,
        registry: &DeviceRegistry,
        pk: &str,
        dn: &str,
        subtopic: Option<&str>,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<CallAnswer, DownlinkError> {
        if timeout.is_zero() || timeout > MAX_CALL_TIMEOUT {
            return Err(DownlinkError::InvalidTimeout);
        }
        check_exists(registry, pk, dn)?;
        let DownlinkPath::Local(router) = self else {
            return Err(DownlinkError::CallsUnsupported);
        };
        let id = format!("{}", rand::random::<u64>() >> 1);
        let (request_topic, answer_topic) = match subtopic {
            None => (
                format!("/sys/{pk}/{dn}/rrpc/request/{id}"),
                format!("/sys/{pk}/{dn}/rrpc/response/{id}"),
            ),
            Some(sub) => {
                let topic = format!("/ext/rrpc/{id}{}", device_topic(pk, dn, sub)?);
                (topic.clone(), topic)
            }
        };
        if !registry.is_online(pk, dn) {
            return Err(offline(pk, dn));
        }
        let waiting = router
            .expect_answer(&answer_topic)
            .map_err(|e| DownlinkError::CallRefused(e.to_string()))?;
        if router.publish(&request_topic, payload, 0) == 0 {
            return Err(DownlinkError::NotSubscribed {
                topic: request_topic,
            });
        }
        match waiting.answer(timeout).await {
            Some(payload) => Ok(CallAnswer {
                id,
                request_topic,
                payload,
            }),
            None => Err(DownlinkError::Timeout {
                product_key: pk.to_string(),
                device_name: dn.to_string(),
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }
}

fn check_exists(registry: &DeviceRegistry, pk: &str, dn: &str) -> Result<(), DownlinkError> {
    if registry.lookup(pk, dn).is_none() {
        return Err(DownlinkError::DeviceNotFound {
            product_key: pk.to_string(),
            device_name: dn.to_string(),
        });
    }
    Ok(())
}

fn offline(pk: &str, dn: &str) -> DownlinkError {
    DownlinkError::DeviceOffline {
        product_key: pk.to_string(),
        device_name: dn.to_string(),
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
