//! The "device-router" example rule: one rule fans a fleet's readings out to one topic per
//! device type, so each application subscribes only to the devices it understands. The type
//! comes from the device tag `device_type`, else the payload's `"type"` field; readings whose
//! payload has `"alarm": true` also go to `alarms`. Devices of an unknown type go to
//! `unrouted`, so a new device type is visible instead of lost.
//!
//! Every target is a named topic (`forward`), so the rule's grant must list them all:
//! `--grant forward:thermostats,meters,cameras,alarms,unrouted`. The payload is forwarded as
//! published.

use serde::Deserialize;
use sluice_guest::{Message, Outcome};

/// The device tag naming the device's type.
pub const TYPE_TAG: &str = "device_type";
/// Where alarms go in addition to their type's topic.
pub const ALARM_TOPIC: &str = "alarms";
/// Where devices of an unknown type go.
pub const UNROUTED_TOPIC: &str = "unrouted";
/// Device type -> topic.
pub const ROUTES: &[(&str, &str)] = &[
    ("thermostat", "thermostats"),
    ("meter", "meters"),
    ("camera", "cameras"),
];

/// Every topic the rule may forward to: what its grant must contain.
pub fn granted_topics() -> Vec<&'static str> {
    let mut topics: Vec<&str> = ROUTES.iter().map(|(_, t)| *t).collect();
    topics.extend([ALARM_TOPIC, UNROUTED_TOPIC]);
    topics
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a str>,
    #[serde(default)]
    alarm: bool,
}

/// The topic for a device type.
pub fn route(device_type: Option<&str>) -> &'static str {
    device_type
        .and_then(|t| ROUTES.iter().find(|(k, _)| *k == t))
        .map_or(UNROUTED_TOPIC, |(_, topic)| topic)
}

/// The rule: forward to the type's topic, and alarms to `alarms` too.
#[sluice_guest::rule]
pub fn device_router(msg: &Message) -> Outcome {
    let Ok(envelope) = msg.json::<Envelope>() else {
        return Outcome::Drop;
    };
    let tag = sluice_guest::device_tag(TYPE_TAG);
    let topic = route(tag.as_deref().or(envelope.kind));
    let mut targets = vec![topic];
    if envelope.alarm {
        targets.push(ALARM_TOPIC);
    }
    for target in targets {
        if let Err(status) = sluice_guest::forward(target, msg.payload()) {
            return Outcome::Fail(format!("forward to {target} refused: {}", status.name()));
        }
    }
    Outcome::Ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_guest::testing::{self, Decision, TestHost};

    fn host(device_type: Option<&str>) -> TestHost {
        let mut host = TestHost {
            device_name: "dev1".into(),
            ..TestHost::default()
        };
        if let Some(t) = device_type {
            host.tags.insert(TYPE_TAG.into(), t.into());
        }
        host
    }

    fn topics(host: &TestHost) -> Vec<&str> {
        host.decisions
            .iter()
            .map(|d| match d {
                Decision::Forward(t, _) => t.as_str(),
                other => panic!("only forwards expected, got {other:?}"),
            })
            .collect()
    }

    #[test]
    fn the_device_tag_picks_the_topic_and_the_payload_is_forwarded_as_is() {
        let payload = br#"{"kwh":3.5}"#;
        let (outcome, host) = testing::run(host(Some("meter")), payload, device_router);
        assert_eq!(outcome, Outcome::Ok);
        assert_eq!(
            host.decisions,
            vec![Decision::Forward("meters".into(), payload.to_vec())]
        );
    }

    #[test]
    fn without_a_tag_the_payload_type_decides_and_the_tag_wins_over_it() {
        let (_, h) = testing::run(host(None), br#"{"type":"camera"}"#, device_router);
        assert_eq!(topics(&h), ["cameras"]);
        let (_, h) = testing::run(
            host(Some("thermostat")),
            br#"{"type":"camera"}"#,
            device_router,
        );
        assert_eq!(topics(&h), ["thermostats"]);
    }

    #[test]
    fn alarms_also_go_to_the_alarm_topic_and_unknown_types_to_unrouted() {
        let (_, h) = testing::run(
            host(Some("thermostat")),
            br#"{"alarm":true}"#,
            device_router,
        );
        assert_eq!(topics(&h), ["thermostats", "alarms"]);
        let (_, h) = testing::run(host(Some("toaster")), br#"{}"#, device_router);
        assert_eq!(topics(&h), ["unrouted"]);
    }

    #[test]
    fn non_json_is_dropped_and_every_route_is_in_the_grant_list() {
        let (outcome, h) = testing::run(host(Some("meter")), b"\x01\x02", device_router);
        assert_eq!(outcome, Outcome::Drop);
        assert!(h.decisions.is_empty());
        for (_, topic) in ROUTES {
            assert!(granted_topics().contains(topic));
        }
    }
}
