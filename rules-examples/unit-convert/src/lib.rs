//! The "unit-convert" example rule: devices report `temperature` in the unit their device tag
//! `temperature_unit` names (`C`, `F` or `K`; no tag means Celsius). The rule sends every
//! reading to all of its actions in Celsius, rounded to 0.01, enriched with the device's `site`
//! tag, so consumers never need to know each device's unit or look its site up.
//!
//! Output: `{"device","product_key","temperature_c","site","ts"}` (`site` omitted when the
//! device has none). A reading without a numeric `temperature` is dropped; a device whose unit
//! tag is not one of the three fails the message (`rule_error`), because dropping it silently
//! would hide a misconfigured device.

use serde::{Deserialize, Serialize};
use sluice_guest::{Message, Outcome};

/// The device tag that names the unit of `temperature`.
pub const UNIT_TAG: &str = "temperature_unit";
/// The device tag copied into every output.
pub const SITE_TAG: &str = "site";

/// A temperature scale a device may report in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Degrees Celsius (the default and the output unit).
    Celsius,
    /// Degrees Fahrenheit.
    Fahrenheit,
    /// Kelvin.
    Kelvin,
}

impl Unit {
    /// Reads the tag's spelling; `None` for anything else.
    pub fn parse(tag: &str) -> Option<Unit> {
        match tag.trim() {
            "C" | "c" | "celsius" => Some(Unit::Celsius),
            "F" | "f" | "fahrenheit" => Some(Unit::Fahrenheit),
            "K" | "k" | "kelvin" => Some(Unit::Kelvin),
            _ => None,
        }
    }

    /// `value` in this unit, converted to Celsius and rounded to 0.01.
    pub fn to_celsius(self, value: f64) -> f64 {
        let c = match self {
            Unit::Celsius => value,
            Unit::Fahrenheit => (value - 32.0) * 5.0 / 9.0,
            Unit::Kelvin => value - 273.15,
        };
        (c * 100.0).round() / 100.0
    }
}

#[derive(Deserialize)]
struct Reading {
    temperature: Option<f64>,
}

#[derive(Serialize)]
struct Converted<'a> {
    device: &'a str,
    product_key: &'a str,
    temperature_c: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    site: Option<String>,
    ts: i64,
}

/// The rule: convert by the unit tag, enrich with the site tag, send to every action.
#[sluice_guest::rule]
pub fn unit_convert(msg: &Message) -> Outcome {
    let Some(value) = msg.json::<Reading>().ok().and_then(|r| r.temperature) else {
        return Outcome::Drop;
    };
    let unit = match sluice_guest::device_tag(UNIT_TAG) {
        None => Unit::Celsius,
        Some(tag) => match Unit::parse(&tag) {
            Some(unit) => unit,
            None => {
                return Outcome::Fail(format!(
                    "device tag {UNIT_TAG}=`{tag}` is not a unit; use C, F or K"
                ))
            }
        },
    };
    let device = msg.device_name();
    let product_key = msg.product_key();
    let out = Converted {
        device: &device,
        product_key: &product_key,
        temperature_c: unit.to_celsius(value),
        site: sluice_guest::device_tag(SITE_TAG),
        ts: msg.timestamp_ms(),
    };
    let body = match serde_json::to_vec(&out) {
        Ok(body) => body,
        Err(e) => return Outcome::Fail(format!("cannot encode the reading: {e}")),
    };
    match sluice_guest::emit_output(&body) {
        Ok(()) => Outcome::Ok,
        Err(status) => Outcome::Fail(format!("output refused: {}", status.name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_guest::testing::{self, Decision, TestHost};

    fn host(tags: &[(&str, &str)]) -> TestHost {
        TestHost {
            topic: "/pk/dev1/user/update".into(),
            product_key: "pk".into(),
            device_name: "dev1".into(),
            timestamp_ms: 1_700_000_000_000,
            action_count: 1,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..TestHost::default()
        }
    }

    fn output(host: &TestHost) -> serde_json::Value {
        match host.decisions.as_slice() {
            [Decision::Output(body)] => serde_json::from_slice(body).unwrap(),
            other => panic!("expected one output, got {other:?}"),
        }
    }

    #[test]
    fn fahrenheit_device_is_converted_and_enriched_with_its_site() {
        let (outcome, host) = testing::run(
            host(&[(UNIT_TAG, "F"), (SITE_TAG, "plant-7")]),
            br#"{"temperature":212}"#,
            unit_convert,
        );
        assert_eq!(outcome, Outcome::Ok);
        assert_eq!(
            output(&host),
            serde_json::json!({"device":"dev1","product_key":"pk","temperature_c":100.0,"site":"plant-7","ts":1_700_000_000_000i64})
        );
    }

    #[test]
    fn untagged_device_is_celsius_without_site_and_kelvin_converts() {
        let (_, host1) = testing::run(host(&[]), br#"{"temperature":21.5}"#, unit_convert);
        let out = output(&host1);
        assert_eq!(out["temperature_c"], 21.5);
        assert!(out.get("site").is_none(), "{out}");
        let (_, host2) = testing::run(
            host(&[(UNIT_TAG, "K")]),
            br#"{"temperature":300}"#,
            unit_convert,
        );
        assert_eq!(output(&host2)["temperature_c"], 26.85);
    }

    #[test]
    fn readings_without_a_temperature_are_dropped() {
        for payload in [
            &br#"{"humidity":3}"#[..],
            b"not json",
            br#"{"temperature":"hot"}"#,
        ] {
            let (outcome, host) = testing::run(host(&[]), payload, unit_convert);
            assert_eq!(outcome, Outcome::Drop);
            assert!(host.decisions.is_empty());
        }
    }

    #[test]
    fn an_unknown_unit_tag_fails_the_message_naming_the_tag() {
        let (outcome, host) = testing::run(
            host(&[(UNIT_TAG, "rankine")]),
            br#"{"temperature":1}"#,
            unit_convert,
        );
        let Outcome::Fail(text) = outcome else {
            panic!("expected a failure")
        };
        assert!(
            text.contains("temperature_unit") && text.contains("rankine"),
            "{text}"
        );
        assert!(host.decisions.is_empty());
    }

    #[test]
    fn conversions_round_to_hundredths() {
        assert_eq!(Unit::Fahrenheit.to_celsius(100.4), 38.0);
        assert_eq!(Unit::Celsius.to_celsius(1.234), 1.23);
        assert_eq!(Unit::parse(" f "), Some(Unit::Fahrenheit));
        assert_eq!(Unit::parse("X"), None);
    }
}
