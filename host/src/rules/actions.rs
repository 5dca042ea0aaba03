//! A rule's actions and grant: where its output may go. Parsed from the CLI/config spelling
//! (`forward:alerts`, `republish:/pk/dev/user/get`) and checked on every decision at run time.

use serde::{Deserialize, Serialize};

use crate::topic;

/// Device status topics are sluice's own; no rule may republish there.
pub const STATUS_TOPIC_PREFIX: &str = "/as/mqtt/status/";

/// One action of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Publish the output to a sluice topic.
    Forward {
        /// The sluice topic.
        topic: String,
    },
    /// Publish the output to an MQTT topic.
    Republish {
        /// The MQTT topic.
        topic: String,
        /// 0 or 1.
        #[serde(default)]
        qos: u8,
    },
}

/// Why an action or grant spelling was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ActionParseError(pub String);

impl Action {
    /// Parses the CLI spelling: `forward:TOPIC`, `republish:MQTT_TOPIC` (QoS 0) or
    /// `republish-qos1:MQTT_TOPIC`. The QoS is part of the kind because `:` may appear in MQTT
    /// topics; the API and config carry it as a separate `qos` field.
    pub fn parse(spec: &str) -> Result<Action, ActionParseError> {
        let (kind, target) = spec.split_once(':').ok_or_else(|| {
            ActionParseError(format!(
                "action `{spec}` has no kind; write forward:TOPIC or republish:MQTT_TOPIC"
            ))
        })?;
        match kind {
            "forward" => {
                crate::names::validate_name(target)
                    .map_err(|e| ActionParseError(format!("action `{spec}`: topic {e}")))?;
                Ok(Action::Forward {
                    topic: target.to_string(),
                })
            }
            "republish" | "republish-qos1" => {
                topic::validate_topic(target)
                    .map_err(|e| ActionParseError(format!("action `{spec}`: {e}")))?;
                Ok(Action::Republish {
                    topic: target.to_string(),
                    qos: u8::from(kind == "republish-qos1"),
                })
            }
            other => Err(ActionParseError(format!(
                "action `{spec}` has unknown kind `{other}`; use forward or republish"
            ))),
        }
    }

    /// The CLI spelling, the inverse of [`Action::parse`].
    pub fn spec(&self) -> String {
        match self {
            Action::Forward { topic } => format!("forward:{topic}"),
            Action::Republish { topic, qos: 0 } => format!("republish:{topic}"),
            Action::Republish { topic, .. } => format!("republish-qos1:{topic}"),
        }
    }
}

/// What a rule may write to: sluice topics by name, MQTT topics by filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Sluice topics the rule may forward to.
    #[serde(default)]
    pub forward: Vec<String>,
    /// MQTT topic filters the rule may republish to.
    #[serde(default)]
    pub republish: Vec<String>,
}

impl Grant {
    /// The grant that equals a rule's declared actions (the default when none is given).
    pub fn from_actions<'a>(actions: impl IntoIterator<Item = &'a Action>) -> Grant {
        let mut grant = Grant::default();
        for action in actions {
            match action {
                Action::Forward { topic } if !grant.forward.contains(topic) => {
                    grant.forward.push(topic.clone())
                }
                Action::Republish { topic, .. } if !grant.republish.contains(topic) => {
                    grant.republish.push(topic.clone())
                }
                _ => {}
            }
        }
        grant
    }

    /// Adds a `--grant` spelling: `forward:a,b` or `republish:/pk/+/user/get`.
    pub fn add_spec(&mut self, spec: &str) -> Result<(), ActionParseError> {
        let (kind, list) = spec.split_once(':').ok_or_else(|| {
            ActionParseError(format!(
                "grant `{spec}` has no kind; write forward:TOPIC[,TOPIC] or republish:FILTER"
            ))
        })?;
        for item in list.split(',').filter(|s| !s.is_empty()) {
            match kind {
                "forward" => {
                    crate::names::validate_name(item)
                        .map_err(|e| ActionParseError(format!("grant `{spec}`: topic {e}")))?;
                    self.forward.push(item.to_string());
                }
                "republish" => {
                    topic::validate_filter(item)
                        .map_err(|e| ActionParseError(format!("grant `{spec}`: {e}")))?;
                    self.republish.push(item.to_string());
                }
                other => {
                    return Err(ActionParseError(format!(
                        "grant `{spec}` has unknown kind `{other}`; use forward or republish"
                    )))
                }
            }
        }
        Ok(())
    }

    /// May the rule forward to the sluice topic `name`?
    pub fn check_forward(&self, name: &str) -> Result<(), String> {
        if self.forward.iter().any(|t| t == name) {
            Ok(())
        } else {
            Err(format!(
                "forward to topic `{name}` is outside the rule's grant (granted: {}); add \
                 `forward:{name}` to the grant",
                list_or_none(&self.forward)
            ))
        }
    }

    /// May the rule republish to the MQTT topic `mqtt_topic`? Never to its own FROM filter
    /// (a loop) or to device status topics.
    pub fn check_republish(&self, mqtt_topic: &str, from_filter: &str) -> Result<(), String> {
        if mqtt_topic.starts_with(STATUS_TOPIC_PREFIX) {
            return Err(format!(
                "republish to `{mqtt_topic}`: device status topics are reserved for sluice"
            ));
        }
        if !from_filter.is_empty() && topic::topic_matches(from_filter, mqtt_topic) {
            return Err(format!(
                "republish to `{mqtt_topic}` would loop: it matches the rule's own FROM filter `{from_filter}`"
            ));
        }
        if self
            .republish
            .iter()
            .any(|f| topic::topic_matches(f, mqtt_topic))
        {
            Ok(())
        } else {
            Err(format!(
                "republish to `{mqtt_topic}` is outside the rule's grant (granted: {})",
                list_or_none(&self.republish)
            ))
        }
    }

    /// Checks that every action is inside this grant (at create and start).
    pub fn check_actions<'a>(
        &self,
        actions: impl IntoIterator<Item = &'a Action>,
        from_filter: &str,
    ) -> Result<(), String> {
        for action in actions {
            match action {
                Action::Forward { topic } => self.check_forward(topic)?,
                Action::Republish { topic, .. } => self.check_republish(topic, from_filter)?,
            }
        }
        Ok(())
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_and_print_back() {
        for spec in [
            "forward:alerts",
            "republish:/pk/dev/user/get",
            "republish-qos1:/a/b",
        ] {
            assert_eq!(Action::parse(spec).unwrap().spec(), spec);
        }
        assert!(Action::parse("alerts").unwrap_err().0.contains("no kind"));
        assert!(Action::parse("mail:x")
            .unwrap_err()
            .0
            .contains("unknown kind"));
        assert!(Action::parse("forward:bad name").is_err());
        assert!(
            Action::parse("republish:/a/+/b").is_err(),
            "wildcards are not topics"
        );
    }

    #[test]
    fn omitted_grant_equals_actions_and_is_enforced() {
        let actions = [
            Action::parse("forward:alerts").unwrap(),
            Action::parse("republish:/pk/dev/user/get").unwrap(),
        ];
        let grant = Grant::from_actions(&actions);
        assert!(grant.check_actions(&actions, "/pk/+/user/update").is_ok());
        assert!(grant.check_forward("audit").is_err());
        assert!(grant.check_republish("/pk/dev/user/get", "/x/#").is_ok());
        assert!(grant.check_republish("/pk/other/user/get", "/x/#").is_err());
    }

    #[test]
    fn republish_never_loops_or_touches_status_topics() {
        let mut grant = Grant::default();
        grant.add_spec("republish:#").unwrap();
        let err = grant
            .check_republish("/pk/dev/user/update", "/pk/+/user/update")
            .unwrap_err();
        assert!(err.contains("loop"), "{err}");
        let err = grant
            .check_republish("/as/mqtt/status/pk/dev", "/pk/+/user/update")
            .unwrap_err();
        assert!(err.contains("reserved"), "{err}");
        assert!(grant
            .check_republish("/pk/dev/user/get", "/pk/+/user/update")
            .is_ok());
    }

    #[test]
    fn grant_specs_take_lists_and_reject_bad_input() {
        let mut grant = Grant::default();
        grant.add_spec("forward:alerts,audit").unwrap();
        assert_eq!(grant.forward, ["alerts", "audit"]);
        assert!(grant.add_spec("forward").is_err());
        assert!(grant.add_spec("republish:/a/#/b").is_err());
    }
}
