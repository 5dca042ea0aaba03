//! MQTT topic names and filters: validation and matching (`+` one level, `#` the rest).
//! Shared by ingest (subscriptions, access checks), rules (FROM filters, grants) and routing.

/// Why a topic or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Empty string.
    #[error("the topic is empty")]
    Empty,
    /// Wildcards are for filters only.
    #[error("topic `{0}` contains a wildcard (+ or #); wildcards belong in filters, not topics")]
    WildcardInTopic(String),
    /// `#` anywhere but alone in the last level.
    #[error("filter `{0}`: `#` must be the whole last level (e.g. /pk/dev/#)")]
    BadMultiLevel(String),
    /// `+` glued to other text in a level.
    #[error("filter `{0}`: `+` must be a whole level (e.g. /pk/+/user/update)")]
    BadSingleLevel(String),
    /// NUL is forbidden by MQTT.
    #[error("`{0}` contains a NUL character")]
    Nul(String),
    /// Over MQTT's 65,535-byte limit.
    #[error("the topic is longer than 65535 bytes")]
    TooLong,
}

fn common_checks(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > 65_535 {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::Nul(s.to_string()));
    }
    Ok(())
}

/// Checks a topic name (what is published to).
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    common_checks(topic)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInTopic(topic.to_string()));
    }
    Ok(())
}

/// Checks a topic filter (what is subscribed to, a rule's FROM).
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    common_checks(filter)?;
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err(TopicError::BadMultiLevel(filter.to_string()));
        }
        if level.contains('+') && *level != "+" {
            return Err(TopicError::BadSingleLevel(filter.to_string()));
        }
    }
    Ok(())
}

/// Does `topic` match `filter`? Topics starting with `$` match only filters that name them.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_follows_mqtt() {
        let cases = [
            ("/pk/+/user/update", "/pk/dev1/user/update", true),
            ("/pk/+/user/update", "/pk/dev1/user/get", false),
            ("/pk/+/user/update", "/pk/user/update", false),
            ("/pk/dev/user/#", "/pk/dev/user/a/b", true),
            ("/pk/dev/user/#", "/pk/dev/user", true),
            ("#", "/a/b", true),
            ("+/+", "/a", true),
            ("+", "/a", false),
            ("/+/+/user/update", "/a1hRrzD/dev1/user/update", true),
            ("#", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
        ];
        for (filter, topic, want) in cases {
            assert_eq!(matches(filter, topic), want, "{filter} vs {topic}");
        }
    }

    #[test]
    fn validation_rejects_misplaced_wildcards() {
        for ok in ["/pk/+/user/update", "#", "/pk/dev/#", "+", "a//b"] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/pk/#/x", "/pk/dev+/x", "a#", "a/b#"] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
        assert!(validate_topic("/pk/dev/user/update").is_ok());
        assert!(validate_topic("/pk/+/x").is_err());
        assert!(validate_topic("a\0b").is_err());
    }
}
