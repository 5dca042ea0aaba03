//! Java-style date patterns (`yyyy-MM-dd'T'HH:mm:ss'Z'`), as the rule SQL's `timestamp('...')`
//! and the ABI's `format_time` use them. The calendar arithmetic is chrono's; the pattern
//! language is ours.

use chrono::{DateTime, Datelike, FixedOffset, Timelike};

/// A pattern letter sluice does not support, or an unterminated quote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad time pattern: {0}")]
pub struct PatternError(pub String);

/// Formats `epoch_ms` at `offset_seconds` from UTC with a Java-style pattern.
pub fn format(epoch_ms: i64, offset_seconds: i32, pattern: &str) -> Result<String, PatternError> {
    let offset = FixedOffset::east_opt(offset_seconds)
        .ok_or_else(|| PatternError(format!("offset {offset_seconds}s is out of range")))?;
    let t: DateTime<FixedOffset> = DateTime::from_timestamp_millis(epoch_ms)
        .ok_or_else(|| PatternError(format!("{epoch_ms} ms is out of range")))?
        .with_timezone(&offset);
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // '' is a literal quote, inside or outside quoted text; 'text' is literal text.
            i += 1;
            if chars.get(i) == Some(&'\'') {
                out.push('\'');
                i += 1;
                continue;
            }
            loop {
                match chars.get(i) {
                    None => return Err(PatternError(format!("unterminated quote in `{pattern}`"))),
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        out.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(&ch) => {
                        out.push(ch);
                        i += 1;
                    }
                }
            }
            continue;
        }
        if !c.is_ascii_alphabetic() {
            out.push(c);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&x| x == c).count();
        i += run;
        let n = |v: u32| format!("{v:0run$}");
        match c {
            'y' if run == 2 => out.push_str(&format!("{:02}", t.year().rem_euclid(100))),
            'y' => out.push_str(&format!("{:0run$}", t.year())),
            'M' if run >= 4 => out.push_str(&t.format("%B").to_string()),
            'M' if run == 3 => out.push_str(&t.format("%b").to_string()),
            'M' => out.push_str(&n(t.month())),
            'd' => out.push_str(&n(t.day())),
            'H' => out.push_str(&n(t.hour())),
            'h' => out.push_str(&n(t.hour12().1)),
            'm' => out.push_str(&n(t.minute())),
            's' => out.push_str(&n(t.second())),
            'S' => {
                let ms = format!("{:03}", t.timestamp_subsec_millis());
                let digits: String = ms.chars().chain(std::iter::repeat('0')).take(run).collect();
                out.push_str(&digits);
            }
            'a' => out.push_str(if t.hour() < 12 { "AM" } else { "PM" }),
            'E' if run >= 4 => out.push_str(&t.format("%A").to_string()),
            'E' => out.push_str(&t.format("%a").to_string()),
            'Z' => out.push_str(&t.format("%z").to_string()),
            'X' if offset_seconds == 0 => out.push('Z'),
            'X' => out.push_str(&t.format("%:z").to_string()),
            other => {
                return Err(PatternError(format!(
                    "pattern letter `{other}` in `{pattern}` is not supported (use y M d H h m s S a E Z X)"
                )))
            }
        }
    }
    Ok(out)
}

/// Parses a rule timezone: `UTC`, `Z` or a fixed offset `+08:00` / `-0530`. Returns seconds.
pub fn parse_offset(tz: &str) -> Result<i32, PatternError> {
    let tz = tz.trim();
    if tz.eq_ignore_ascii_case("utc") || tz == "Z" || tz.eq_ignore_ascii_case("gmt") {
        return Ok(0);
    }
    let bad = || {
        PatternError(format!(
            "timezone `{tz}`: write UTC or an offset like +08:00"
        ))
    };
    let (sign, rest) = match tz.as_bytes().first() {
        Some(b'+') => (1, &tz[1..]),
        Some(b'-') => (-1, &tz[1..]),
        _ => return Err(bad()),
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let h: i32 = digits[..2].parse().map_err(|_| bad())?;
    let m: i32 = digits[2..].parse().map_err(|_| bad())?;
    if h > 18 || m > 59 {
        return Err(bad());
    }
    Ok(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2018-04-23T01:58:42.123Z
    const T: i64 = 1_524_448_722_123;

    #[test]
    fn formats_common_patterns() {
        assert_eq!(
            format(T, 0, "yyyy-MM-dd'T'HH:mm:ss'Z'").unwrap(),
            "2018-04-23T01:58:42Z"
        );
        assert_eq!(
            format(T, 0, "yyyy-MM-dd HH:mm:ss.SSS").unwrap(),
            "2018-04-23 01:58:42.123"
        );
        assert_eq!(
            format(T, 8 * 3600, "yyyy/M/d H:mm").unwrap(),
            "2018/4/23 9:58"
        );
        assert_eq!(format(T, 0, "yy MMM EEE a hh").unwrap(), "18 Apr Mon AM 01");
        assert_eq!(format(T, 8 * 3600, "X").unwrap(), "+08:00");
        assert_eq!(format(T, 0, "'it''s' HH").unwrap(), "it's 01");
    }

    #[test]
    fn bad_patterns_and_offsets_are_errors() {
        assert!(format(T, 0, "yyyy-QQ").is_err());
        assert!(format(T, 0, "'open").is_err());
        assert_eq!(parse_offset("UTC").unwrap(), 0);
        assert_eq!(parse_offset("+08:00").unwrap(), 28_800);
        assert_eq!(parse_offset("-0530").unwrap(), -19_800);
        assert!(parse_offset("Mars/Olympus").is_err());
    }
}
