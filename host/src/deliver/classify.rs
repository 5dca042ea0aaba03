//! "Should we retry": from the result of one attempt to a verdict, apart from how long to wait
//! (`schedule`). Only a 2xx within the timeout is a success; every other answer and every
//! transport failure is retried (some peers count 4xx as delivered and lose the message).

use std::time::{Duration, SystemTime};

/// The longest `Retry-After` honoured: a misbehaving endpoint cannot park a message for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What to do after one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered.
    Done,
    /// Failed; retry on the schedule, but not before `retry_after` when the endpoint asked.
    Retry {
        /// Why, for the last error and the logs (no message body, bounded length).
        reason: String,
        /// The endpoint's `Retry-After` (429 and 503 only), capped at [`MAX_RETRY_AFTER`].
        retry_after: Option<Duration>,
    },
    /// `410 Gone`: the endpoint says it is gone for good; disable the subscription.
    Disable {
        /// Why.
        reason: String,
    },
    /// Can never succeed (the request cannot even be built): give up at once.
    GiveUp {
        /// Why.
        reason: String,
    },
}

/// How an attempt failed before any HTTP status arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptFailure {
    /// No complete answer within the push timeout.
    Timeout,
    /// The connection could not be made (refused, unreachable, DNS).
    Connect(String),
    /// The resolved address is not allowed by the egress policy.
    Egress(String),
    /// The connection broke or the answer was not HTTP.
    Transport(String),
    /// The request could not be built.
    Request(String),
}

/// The verdict for an HTTP answer: `status` and its `Retry-After` header, if any.
pub fn classify_status(status: u16, retry_after: Option<&str>, now: SystemTime) -> Verdict {
    match status {
        200..=299 => Verdict::Done,
        410 => Verdict::Disable {
            reason: "HTTP 410 Gone: the endpoint is gone; subscription disabled".into(),
        },
        429 | 503 => Verdict::Retry {
            reason: format!("HTTP {status}"),
            retry_after: retry_after.and_then(|v| parse_retry_after(v, now)),
        },
        300..=399 => Verdict::Retry {
            reason: format!("HTTP {status}: redirects are not followed"),
            retry_after: None,
        },
        _ => Verdict::Retry {
            reason: format!("HTTP {status}"),
            retry_after: None,
        },
    }
}

/// The verdict for an attempt that got no HTTP status.
pub fn classify_failure(f: &AttemptFailure) -> Verdict {
    let retry = |reason: String| Verdict::Retry {
        reason,
        retry_after: None,
    };
    match f {
        AttemptFailure::Timeout => retry("no 2xx answer within the push timeout".into()),
        AttemptFailure::Connect(e) => retry(format!("connection failed: {e}")),
        // The address may change (DNS), and the operator may change the policy: retried.
        AttemptFailure::Egress(e) => retry(format!("refused by the egress policy: {e}")),
        AttemptFailure::Transport(e) => retry(format!("transport error: {e}")),
        AttemptFailure::Request(e) => Verdict::GiveUp {
            reason: format!("the request cannot be built: {e}"),
        },
    }
}

/// `Retry-After`: delay-seconds or an HTTP date; `None` when malformed or in the past.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
        let at = SystemTime::UNIX_EPOCH
            + Duration::from_millis(u64::try_from(at.timestamp_millis()).ok()?);
        at.duration_since(now).ok()?
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retried(v: &Verdict) -> bool {
        matches!(v, Verdict::Retry { .. })
    }

    #[test]
    fn only_2xx_is_success_and_every_other_status_is_retried() {
        let now = SystemTime::now();
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(classify_status(s, None, now), Verdict::Done, "{s}");
        }
        for s in [
            100, 301, 302, 307, 308, 400, 401, 403, 404, 408, 413, 422, 429, 500, 502, 503, 504,
        ] {
            assert!(retried(&classify_status(s, None, now)), "{s} is retried");
        }
        assert!(matches!(
            classify_status(410, None, now),
            Verdict::Disable { .. }
        ));
    }

    #[test]
    fn retry_after_is_honoured_on_429_and_503_only() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        let ra = |s, v| match classify_status(s, Some(v), now) {
            Verdict::Retry { retry_after, .. } => retry_after,
            other => panic!("{other:?}"),
        };
        assert_eq!(ra(429, "7"), Some(Duration::from_secs(7)));
        assert_eq!(ra(503, " 2 "), Some(Duration::from_secs(2)));
        assert_eq!(ra(500, "7"), None);
        assert_eq!(ra(429, "soon"), None);
        assert_eq!(ra(429, "999999"), Some(MAX_RETRY_AFTER));
        // 2015-10-21 07:28:00 GMT is 1445412480 + 0: a date 120 s ahead.
        assert_eq!(
            ra(429, "Wed, 21 Oct 2015 07:30:00 GMT"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(ra(429, "Wed, 21 Oct 2015 07:00:00 GMT"), None);
    }

    #[test]
    fn transport_failures_are_retried_never_successes() {
        for f in [
            AttemptFailure::Timeout,
            AttemptFailure::Connect("refused".into()),
            AttemptFailure::Egress("169.254.169.254".into()),
            AttemptFailure::Transport("reset".into()),
        ] {
            assert!(retried(&classify_failure(&f)), "{f:?}");
        }
        assert!(matches!(
            classify_failure(&AttemptFailure::Request("bad".into())),
            Verdict::GiveUp { .. }
        ));
    }
}
