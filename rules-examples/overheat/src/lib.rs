//! The "overheat" example rule: for messages on `/{productKey}/{deviceName}/user/update` whose
//! `temperature` is above 38, forward `{"t", "device", "location"}` to the topic `alerts`.
//! `sluice serve` embeds this module and runs it on an empty data directory.

use serde::{Deserialize, Serialize};
use sluice_guest::{Message, Outcome};

/// The topic the rule forwards to.
pub const TARGET_TOPIC: &str = "alerts";
/// Readings above this are forwarded.
pub const THRESHOLD: f64 = 38.0;

/// Only the fields the rule reads: serde skips the rest of the payload.
#[derive(Deserialize)]
struct Reading<'a> {
    temperature: Option<f64>,
    #[serde(borrow)]
    location: Option<&'a serde_json::value::RawValue>,
}

#[derive(Serialize)]
struct Alert<'a> {
    t: f64,
    device: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<&'a serde_json::value::RawValue>,
}

/// The rule: filter on temperature, project three fields.
#[sluice_guest::rule]
pub fn overheat(msg: &Message) -> Outcome {
    let Ok(reading) = msg.json::<Reading>() else {
        // Not JSON, or a field of the wrong type: not an overheat reading.
        return Outcome::Drop;
    };
    let Some(t) = reading.temperature.filter(|t| *t > THRESHOLD) else {
        return Outcome::Drop;
    };
    let device = msg.device_name();
    let alert = Alert {
        t,
        device: &device,
        location: reading.location,
    };
    let body = match serde_json::to_vec(&alert) {
        Ok(body) => body,
        Err(e) => return Outcome::Fail(format!("cannot encode alert: {e}")),
    };
    match sluice_guest::forward(TARGET_TOPIC, &body) {
        Ok(()) => Outcome::Ok,
        Err(status) => Outcome::Fail(format!(
            "forward to {TARGET_TOPIC} refused: {}",
            status.name()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_guest::testing::{self, Decision, TestHost};

    fn host() -> TestHost {
        TestHost {
            topic: "/a1hRrzD/dev1/user/update".into(),
            device_name: "dev1".into(),
            ..TestHost::default()
        }
    }

    #[test]
    fn hot_reading_is_forwarded_with_three_fields() {
        let (outcome, host) = testing::run(
            host(),
            br#"{"temperature":39.5,"location":"x","humidity":3}"#,
            overheat,
        );
        assert_eq!(outcome, Outcome::Ok);
        assert_eq!(
            host.decisions,
            vec![Decision::Forward(
                "alerts".into(),
                br#"{"t":39.5,"device":"dev1","location":"x"}"#.to_vec()
            )]
        );
    }

    #[test]
    fn cool_missing_or_invalid_readings_are_dropped() {
        for payload in [
            &br#"{"temperature":38}"#[..],
            br#"{"location":"x"}"#,
            b"not json",
            br#"{"temperature":"hot"}"#,
        ] {
            let (outcome, host) = testing::run(host(), payload, overheat);
            assert_eq!(
                outcome,
                Outcome::Drop,
                "{}",
                String::from_utf8_lossy(payload)
            );
            assert!(host.decisions.is_empty());
        }
    }
}
