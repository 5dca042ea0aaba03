//! A rule's log lines (the `log` import), capped so that a rule can neither flood the server log
//! nor crowd out the lines that matter.
//!
//! Two bounds: per message, the first lines up to a count and a byte total are written (a line
//! that does not fit is cut, and says so); per rule, a byte rate shared by the rule's instances on
//! every worker, so a rule that logs on every message stays bounded however fast messages come.
//! A line past either bound is dropped and counted (`sluice_rule_log_dropped_total`), and a
//! message that dropped lines gets one summary line, at most one per rule per second. The first
//! lines of a message are the ones kept because they are the ones a user debugging a rule reads.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How much a rule may log. Defaults fit debugging a rule (a few lines per message) without
/// letting one rule write more than a few hundred megabytes an hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Most lines one message may log.
    pub lines_per_message: u32,
    /// Most bytes one message may log, all lines together.
    pub bytes_per_message: usize,
    /// Most bytes one rule may log per second, on all workers together (bursts of one second's
    /// worth pass at once).
    pub bytes_per_second: u64,
}

/// 32 lines: more than a rule logs per message when someone is reading them.
pub const DEFAULT_LOG_LINES_PER_MESSAGE: u32 = 32;
/// 8 KiB: a few lines and a payload dump of ordinary size.
pub const DEFAULT_LOG_BYTES_PER_MESSAGE: usize = 8 * 1024;
/// 64 KiB/s per rule: a line per message at a few hundred messages a second, and at most
/// ~230 MB an hour per rule.
pub const DEFAULT_LOG_BYTES_PER_SECOND: u64 = 64 * 1024;

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            lines_per_message: DEFAULT_LOG_LINES_PER_MESSAGE,
            bytes_per_message: DEFAULT_LOG_BYTES_PER_MESSAGE,
            bytes_per_second: DEFAULT_LOG_BYTES_PER_SECOND,
        }
    }
}

/// The burst the per-rule rate allows: one second's worth.
const BURST: Duration = Duration::from_secs(1);
/// At most one summary line per rule this often.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(1);

/// One rule's log output, shared by its instances on every worker: its name (every line carries
/// it) and the byte rate its lines draw from.
#[derive(Debug, Default)]
pub struct RuleLog {
    name: Box<str>,
    /// When the rate's budget is used up to, in ns since [`epoch`] (the generic cell rate
    /// algorithm: one timestamp is the whole state, so workers share it with one atomic).
    used_until_ns: AtomicU64,
    /// When the last summary line was written, in ns since [`epoch`] (0: never).
    summary_at_ns: AtomicU64,
}

impl RuleLog {
    /// The log of rule `name`, with its whole burst available.
    pub fn new(name: &str) -> RuleLog {
        RuleLog {
            name: name.into(),
            ..RuleLog::default()
        }
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes up to `want` bytes of the rule's rate at `now_ns`; returns how many it got.
    fn take(&self, want: usize, bytes_per_second: u64, now_ns: u64) -> usize {
        if bytes_per_second == 0 || want == 0 {
            return 0;
        }
        let ns_per_byte = |bytes: u128| bytes * 1_000_000_000 / u128::from(bytes_per_second);
        let burst_ns = BURST.as_nanos() as u64;
        let mut used_until = self.used_until_ns.load(Ordering::Relaxed);
        loop {
            let from = used_until.max(now_ns);
            let room_ns = burst_ns.saturating_sub(from - now_ns);
            let room = u128::from(room_ns) * u128::from(bytes_per_second) / 1_000_000_000;
            let got = (want as u128).min(room) as usize;
            if got == 0 {
                return 0;
            }
            let next =
                from.saturating_add(u64::try_from(ns_per_byte(got as u128)).unwrap_or(u64::MAX));
            match self.used_until_ns.compare_exchange_weak(
                used_until,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return got,
                Err(actual) => used_until = actual,
            }
        }
    }

    /// True when a summary line may be written now (claims the slot).
    fn summary_due(&self, now_ns: u64) -> bool {
        let last = self.summary_at_ns.load(Ordering::Relaxed);
        let interval = SUMMARY_INTERVAL.as_nanos() as u64;
        (last == 0 || now_ns.saturating_sub(last) >= interval)
            && self
                .summary_at_ns
                .compare_exchange(last, now_ns.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Nanoseconds since the first use in this process (never 0 for a caller).
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// What one message logged so far. Reset at the start of every call.
#[derive(Debug, Default)]
pub(crate) struct MessageLog {
    lines: u32,
    bytes: usize,
    dropped_lines: u64,
    dropped_bytes: u64,
}

impl MessageLog {
    pub(crate) fn begin(&mut self) {
        *self = MessageLog::default();
    }

    /// How many bytes of a `len`-byte line may be written; 0 drops the line (and counts it).
    pub(crate) fn admit(&mut self, len: usize, limits: &LogLimits, rule: &RuleLog) -> usize {
        let room = limits.bytes_per_message.saturating_sub(self.bytes);
        let granted = if self.lines < limits.lines_per_message && (room > 0 || len == 0) {
            rule.take(len.min(room), limits.bytes_per_second, now_ns())
        } else {
            0
        };
        if granted == 0 && (len > 0 || self.lines >= limits.lines_per_message) {
            self.dropped_lines += 1;
            self.dropped_bytes += len as u64;
            return 0;
        }
        self.lines += 1;
        self.bytes += granted;
        granted
    }

    /// Lines of this message dropped past a cap.
    pub(crate) fn dropped_lines(&self) -> u64 {
        self.dropped_lines
    }

    /// After the call: one summary line when lines were dropped (at most one per rule per
    /// second; the counter has every drop).
    pub(crate) fn summarize(&self, limits: &LogLimits, rule: &RuleLog, topic: &str) {
        if self.dropped_lines == 0 || !rule.summary_due(now_ns()) {
            return;
        }
        tracing::warn!(
            target: "sluice::rule",
            rule = %rule.name(),
            %topic,
            "dropped {} log lines ({} bytes) of one message past the rule log caps ({} lines and \
             {} bytes per message, {} bytes/s per rule); sluice_rule_log_dropped_total counts \
             every dropped line, and this summary is written at most once a second",
            self.dropped_lines,
            self.dropped_bytes,
            limits.lines_per_message,
            limits.bytes_per_message,
            limits.bytes_per_second,
        );
    }
}

/// The text of a log line as written: control characters escaped, so one call writes exactly
/// one line of the server log and cannot forge others; `cut` bytes left out say so.
pub(crate) fn line_text(bytes: &[u8], cut: usize) -> Cow<'_, str> {
    let text = String::from_utf8_lossy(bytes);
    let text = if text.chars().any(char::is_control) {
        Cow::Owned(
            text.chars()
                .flat_map(|c| {
                    let escaped: Box<dyn Iterator<Item = char>> = if c.is_control() {
                        Box::new(c.escape_default())
                    } else {
                        Box::new(std::iter::once(c))
                    };
                    escaped
                })
                .collect(),
        )
    } else {
        text
    };
    if cut == 0 {
        text
    } else {
        Cow::Owned(format!(
            "{text} [... {cut} more bytes cut by the rule log cap]"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(lines: u32, bytes: usize, rate: u64) -> LogLimits {
        LogLimits {
            lines_per_message: lines,
            bytes_per_message: bytes,
            bytes_per_second: rate,
        }
    }

    #[test]
    fn a_message_logs_its_first_lines_up_to_the_line_and_byte_caps() {
        let rule = RuleLog::new("r");
        let l = limits(3, 100, 1_000_000);
        let mut log = MessageLog::default();
        assert_eq!(log.admit(40, &l, &rule), 40);
        assert_eq!(log.admit(40, &l, &rule), 40);
        assert_eq!(log.admit(40, &l, &rule), 20, "cut to what is left");
        assert_eq!(log.admit(1, &l, &rule), 0, "past the line cap");
        assert_eq!(log.dropped_lines(), 1);
        log.begin();
        assert_eq!(log.admit(1, &l, &rule), 1, "the next message starts afresh");
    }

    #[test]
    fn the_rule_rate_is_shared_and_refills_with_time() {
        let rule = RuleLog::new("r");
        let start = 1_000_000_000u64;
        // 1,000 bytes/s: the one-second burst is 1,000 bytes.
        assert_eq!(rule.take(600, 1000, start), 600);
        assert_eq!(rule.take(600, 1000, start), 400);
        assert_eq!(rule.take(1, 1000, start), 0);
        // Half a second later, half the burst is back.
        assert_eq!(rule.take(1000, 1000, start + 500_000_000), 500);
        assert_eq!(
            rule.take(1, 0, start + 10_000_000_000),
            0,
            "rate 0: no lines"
        );
    }

    #[test]
    fn log_text_is_one_line_and_says_when_it_was_cut() {
        assert_eq!(line_text(b"plain", 0), "plain");
        assert_eq!(line_text(b"a\nb\r\x1b", 0), "a\\nb\\r\\u{1b}");
        assert_eq!(
            line_text(b"abc", 5),
            "abc [... 5 more bytes cut by the rule log cap]"
        );
    }

    #[test]
    fn a_summary_is_due_at_most_once_a_second() {
        let rule = RuleLog::new("r");
        assert!(rule.summary_due(5));
        assert!(!rule.summary_due(6));
        assert!(rule.summary_due(5 + 1_000_000_000));
    }
}
