//! MQTT topic names, topic filters and the matcher between them, and the device a topic names.
//!
//! Every stage that routes by topic uses these functions (the listener's SUBSCRIBE and PUBLISH
//! checks, the session router, the rules' FROM filters and republish grants), so there is one
//! definition of "does this filter match this topic" in the whole program. The rules follow
//! MQTT 3.1.1 section 4.7 and MQTT 5 section 4.7/4.8:
//!
//! * levels are separated by `/`; empty levels are legal (`/pk/dev/user/update` has an empty
//!   first level, `a//b` an empty middle one);
//! * `+` matches exactly one level (possibly empty) and must fill its whole level;
//! * `#` matches any number of levels, including none (`a/#` matches `a`), and must be the last
//!   level, alone;
//! * a filter starting with a wildcard does not match a topic starting with `$` (`$SYS/...`);
//! * `$share/{group}/{filter}` is a shared subscription: it is valid when `group` is a non-empty
//!   level without wildcards and `filter` is valid, and it matches what `filter` matches.

/// The longest topic or filter MQTT can carry (its length prefix is a `u16`).
pub const MAX_TOPIC_LEN_BYTES: usize = 65_535;

/// The prefix that marks an MQTT 5 shared subscription.
pub const SHARED_PREFIX: &str = "$share/";

/// Why a topic name or filter is not acceptable; the variant says which rule it broke so a
/// caller can turn it into a clear error or an MQTT reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// MQTT forbids zero-length topic names and filters.
    #[error("topic is empty")]
    Empty,
    /// The wire format cannot carry it.
    #[error("topic is longer than {MAX_TOPIC_LEN_BYTES} bytes")]
    TooLong,
    /// MQTT forbids U+0000 in any UTF-8 string.
    #[error("topic contains a NUL character")]
    Nul,
    /// A topic name (what is published to) may not contain `+` or `#`.
    #[error("a topic name may not contain the wildcards '+' or '#'")]
    WildcardInTopic,
    /// `#` must be the last level and stand alone in it.
    #[error("'#' must be the last level of a filter and stand alone in it")]
    MisplacedHash,
    /// `+` must stand alone in its level.
    #[error("'+' must stand alone in its level of a filter")]
    MisplacedPlus,
    /// `$share/{group}/{filter}` needs a non-empty group without wildcards and a filter.
    #[error("a shared subscription needs the form $share/{{group}}/{{filter}}")]
    BadSharedSubscription,
}

impl TopicError {
    /// A short, stable name for metrics labels and logs (never the free text).
    pub fn as_str(&self) -> &'static str {
        match self {
            TopicError::Empty => "empty",
            TopicError::TooLong => "too_long",
            TopicError::Nul => "nul",
            TopicError::WildcardInTopic => "wildcard_in_topic",
            TopicError::MisplacedHash => "misplaced_hash",
            TopicError::MisplacedPlus => "misplaced_plus",
            TopicError::BadSharedSubscription => "bad_shared_subscription",
        }
    }
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN_BYTES {
        return Err(TopicError::TooLong);
    }
    if s.as_bytes().contains(&0) {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// Checks a topic name that a message is published to: non-empty, no wildcards, no NUL.
/// Called on every PUBLISH the listener receives and on every republish target.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    check_common(topic)?;
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInTopic);
    }
    Ok(())
}

/// Checks a topic filter that is subscribed to (or a rule's FROM): wildcards only where MQTT
/// allows them, and a well-formed `$share/{group}/` prefix when there is one.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let inner = match split_shared(filter) {
        Some((_, inner)) => inner,
        None if filter.starts_with(SHARED_PREFIX) || filter == "$share" => {
            return Err(TopicError::BadSharedSubscription)
        }
        None => filter,
    };
    let mut levels = inner.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !is_last) {
            return Err(TopicError::MisplacedHash);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedPlus);
        }
    }
    Ok(())
}

/// Splits `$share/{group}/{filter}` into `(group, filter)`; `None` when the filter is not a
/// (well-formed) shared subscription. Used by the matcher and by the external broker mode, which
/// subscribes with shared filters so several sluice processes split one broker's traffic.
pub fn split_shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix(SHARED_PREFIX)?;
    let (group, inner) = rest.split_once('/')?;
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return None;
    }
    Some((group, inner))
}

/// True when `topic` (a topic name) is matched by `filter`. Both should have passed
/// [`validate_topic`] / [`validate_filter`]; for other input the answer is `false` or
/// unspecified, never a panic. A shared filter matches what its inner filter matches.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let filter = split_shared(filter).map_or(filter, |(_, inner)| inner);
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True when the filter contains `+` or `#`; a filter without wildcards matches only itself,
/// which lets routing tables use an exact-match fast path.
pub fn has_wildcards(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// `productKey()` and `deviceName()` from the topic levels, for connections without an
/// authenticated identity: `/{pk}/{dn}/...`, `/sys/{pk}/{dn}/...`, `/as/mqtt/status/{pk}/{dn}`.
pub fn device_from_topic(topic: &str) -> (&str, &str) {
    let mut levels = topic.split('/');
    if levels.next() != Some("") {
        return ("", "");
    }
    let first = levels.next().unwrap_or("");
    let second = levels.next().unwrap_or("");
    match (first, second) {
        ("sys", _) => (second, levels.next().unwrap_or("")),
        ("as", "mqtt") if levels.next() == Some("status") => {
            (levels.next().unwrap_or(""), levels.next().unwrap_or(""))
        }
        _ => (first, second),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_identity_comes_from_topic_levels() {
        assert_eq!(device_from_topic("/pk/dev/user/update"), ("pk", "dev"));
        assert_eq!(
            device_from_topic("/sys/pk/dev/thing/event/property/post"),
            ("pk", "dev")
        );
        assert_eq!(device_from_topic("/as/mqtt/status/pk/dev"), ("pk", "dev"));
        assert_eq!(device_from_topic("no/leading/slash"), ("", ""));
        assert_eq!(device_from_topic("/pk"), ("pk", ""));
    }

    #[test]
    fn matcher_follows_the_mqtt_rules() {
        // (filter, topic, matches)
        let cases: &[(&str, &str, bool)] = &[
            ("a/b/c", "a/b/c", true),
            ("a/b/c", "a/b", false),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b/d", false),
            ("A/b", "a/b", false),
            ("+", "a", true),
            ("+", "a/b", false),
            ("+/+", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a", false),
            ("a/+", "a/", true),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a//c", true),
            ("a/+/c", "a/b/d", false),
            ("#", "a", true),
            ("#", "a/b/c", true),
            ("#", "/", true),
            ("a/#", "a", true),
            ("a/#", "a/", true),
            ("a/#", "a/b/c", true),
            ("a/#", "ab", false),
            ("a/b/#", "a", false),
            ("+/#", "a", true),
            ("+/#", "a/b/c", true),
            // leading '/' topics (productKey/deviceName style)
            ("/pk/dev/user/update", "/pk/dev/user/update", true),
            ("/+/+/user/update", "/pk/dev/user/update", true),
            ("+/pk/dev/user/update", "/pk/dev/user/update", true),
            ("/pk/#", "/pk/dev/user/update", true),
            ("/pk/+/user/#", "/pk/dev/user/update", true),
            ("pk/dev/user/update", "/pk/dev/user/update", false),
            ("+/+/user/update", "/pk/dev/user/update", false),
            ("#", "/pk/dev/user/update", true),
            (
                "/sys/+/+/thing/event/property/post",
                "/sys/pk/dev/thing/event/property/post",
                true,
            ),
            // empty levels
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
            ("+", "", true),
            ("/", "/", true),
            ("+/+", "/", true),
            ("+", "/", false),
            // '$' topics are not matched by a leading wildcard
            ("#", "$SYS/broker", false),
            ("+/broker", "$SYS/broker", false),
            ("$SYS/#", "$SYS/broker", true),
            ("$SYS/+", "$SYS/broker", true),
            ("a/#", "a/$b", true),
            // shared subscriptions match what their inner filter matches
            ("$share/g/a/+", "a/b", true),
            ("$share/g/#", "x/y", true),
            ("$share/g/a/b", "a/c", false),
            ("$share/g/#", "$SYS/x", false),
        ];
        for (filter, topic, want) in cases {
            assert_eq!(
                topic_matches(filter, topic),
                *want,
                "filter {filter:?} topic {topic:?}"
            );
        }
    }

    #[test]
    fn filters_are_validated() {
        let cases: &[(&str, Result<(), TopicError>)] = &[
            ("a", Ok(())),
            ("a/b/c", Ok(())),
            ("/pk/dev/user/update", Ok(())),
            ("a//b", Ok(())),
            ("/", Ok(())),
            ("#", Ok(())),
            ("+", Ok(())),
            ("a/#", Ok(())),
            ("+/+/#", Ok(())),
            ("/+/+/user/#", Ok(())),
            ("$SYS/#", Ok(())),
            ("$share/group/a/+", Ok(())),
            ("$share/g/#", Ok(())),
            ("", Err(TopicError::Empty)),
            ("a/#/b", Err(TopicError::MisplacedHash)),
            ("a#", Err(TopicError::MisplacedHash)),
            ("a/b#", Err(TopicError::MisplacedHash)),
            ("#/", Err(TopicError::MisplacedHash)),
            ("##", Err(TopicError::MisplacedHash)),
            ("a+", Err(TopicError::MisplacedPlus)),
            ("a/+b/c", Err(TopicError::MisplacedPlus)),
            ("++", Err(TopicError::MisplacedPlus)),
            ("a/\0", Err(TopicError::Nul)),
            ("$share/", Err(TopicError::BadSharedSubscription)),
            ("$share", Err(TopicError::BadSharedSubscription)),
            ("$share/g", Err(TopicError::BadSharedSubscription)),
            ("$share/g/", Err(TopicError::BadSharedSubscription)),
            ("$share//a", Err(TopicError::BadSharedSubscription)),
            ("$share/+/a", Err(TopicError::BadSharedSubscription)),
            ("$share/g/a/#/b", Err(TopicError::MisplacedHash)),
        ];
        for (filter, want) in cases {
            assert_eq!(validate_filter(filter), *want, "filter {filter:?}");
        }
        let long = "a".repeat(MAX_TOPIC_LEN_BYTES + 1);
        assert_eq!(validate_filter(&long), Err(TopicError::TooLong));
        assert_eq!(validate_filter(&long[1..]), Ok(()));
    }

    #[test]
    fn topics_are_validated() {
        let cases: &[(&str, Result<(), TopicError>)] = &[
            ("a", Ok(())),
            ("/pk/dev/user/update", Ok(())),
            ("a//b", Ok(())),
            ("/", Ok(())),
            ("$SYS/x", Ok(())),
            ("a b/ü", Ok(())),
            ("", Err(TopicError::Empty)),
            ("a/+", Err(TopicError::WildcardInTopic)),
            ("a/#", Err(TopicError::WildcardInTopic)),
            ("a+b", Err(TopicError::WildcardInTopic)),
            ("x\0", Err(TopicError::Nul)),
        ];
        for (topic, want) in cases {
            assert_eq!(validate_topic(topic), *want, "topic {topic:?}");
        }
        assert_eq!(
            validate_topic(&"t".repeat(MAX_TOPIC_LEN_BYTES + 1)),
            Err(TopicError::TooLong)
        );
    }

    #[test]
    fn shared_filters_split() {
        assert_eq!(split_shared("$share/g/a/b"), Some(("g", "a/b")));
        assert_eq!(split_shared("$share/g/#"), Some(("g", "#")));
        assert_eq!(split_shared("a/b"), None);
        assert_eq!(split_shared("$share/g"), None);
        assert_eq!(split_shared("$share//x"), None);
        assert!(has_wildcards("a/+"));
        assert!(has_wildcards("#"));
        assert!(!has_wildcards("a/b"));
    }

    #[test]
    fn errors_have_stable_names() {
        for e in [
            TopicError::Empty,
            TopicError::TooLong,
            TopicError::Nul,
            TopicError::WildcardInTopic,
            TopicError::MisplacedHash,
            TopicError::MisplacedPlus,
            TopicError::BadSharedSubscription,
        ] {
            assert!(!e.as_str().is_empty());
            assert!(!e.to_string().is_empty());
        }
    }
}
