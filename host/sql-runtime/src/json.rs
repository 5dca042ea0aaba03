//! A JSON validator and a lazy scanner over validated payload bytes.
//!
//! The payload is validated once per message ([`validate`]); after that the scanner
//! ([`find_member`], [`find_index`], [`skip_value`]) walks only the parts a rule reads and
//! never allocates.

use crate::text::Sink;

/// Deepest nesting accepted, as serde_json does.
const MAX_DEPTH: u32 = 128;

/// A parsed JSON number: integers that fit `i64` stay integers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    /// An integer without fraction or exponent that fits `i64`.
    Int(i64),
    /// Every other number.
    Float(f64),
}

/// Index of the first byte at or after `i` that is not JSON whitespace.
#[inline]
pub fn ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// True when `b` is one valid JSON object (surrounding whitespace allowed), UTF-8 included.
pub fn validate_object(b: &[u8]) -> bool {
    // UTF-8 is checked inside strings only: everything outside them must be ASCII anyway.
    let i = ws(b, 0);
    if i >= b.len() || b[i] != b'{' {
        return false;
    }
    match value(b, i, 0) {
        Some(end) => ws(b, end) == b.len(),
        None => false,
    }
}

fn value(b: &[u8], i: usize, depth: u32) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    match *b.get(i)? {
        b'{' => {
            let mut i = ws(b, i + 1);
            if *b.get(i)? == b'}' {
                return Some(i + 1);
            }
            loop {
                if *b.get(i)? != b'"' {
                    return None;
                }
                i = ws(b, string(b, i)?);
                if *b.get(i)? != b':' {
                    return None;
                }
                i = ws(b, value(b, ws(b, i + 1), depth + 1)?);
                match *b.get(i)? {
                    b',' => i = ws(b, i + 1),
                    b'}' => return Some(i + 1),
                    _ => return None,
                }
            }
        }
        b'[' => {
            let mut i = ws(b, i + 1);
            if *b.get(i)? == b']' {
                return Some(i + 1);
            }
            loop {
                i = ws(b, value(b, i, depth + 1)?);
                match *b.get(i)? {
                    b',' => i = ws(b, i + 1),
                    b']' => return Some(i + 1),
                    _ => return None,
                }
            }
        }
        b'"' => string(b, i),
        b't' => lit(b, i, b"true"),
        b'f' => lit(b, i, b"false"),
        b'n' => lit(b, i, b"null"),
        _ => {
            let end = number_end(b, i);
            if end > i && parse_number(&b[i..end]).is_some() {
                Some(end)
            } else {
                None
            }
        }
    }
}

fn lit(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    if b.len() >= i + word.len() && &b[i..i + word.len()] == word {
        Some(i + word.len())
    } else {
        None
    }
}

/// Validates the string starting at `b[i] == '"'`; returns the index after the closing quote.
fn string(b: &[u8], i: usize) -> Option<usize> {
    let start = i + 1;
    let mut i = start;
    let mut ascii = true;
    loop {
        let c = *b.get(i)?;
        match c {
            b'"' => {
                if !ascii && core::str::from_utf8(&b[start..i]).is_err() {
                    return None;
                }
                return Some(i + 1);
            }
            b'\\' => match *b.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' => {
                    if b.len() < i + 6 || !b[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    i += 6;
                }
                _ => return None,
            },
            0..=0x1f => return None,
            0x80.. => {
                ascii = false;
                i += 1;
            }
            _ => i += 1,
        }
    }
}

/// The end of the number-ish token starting at `i` (not validated).
#[inline]
pub fn number_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
        i += 1;
    }
    i
}

/// Parses `s` as exactly one JSON number.
pub fn parse_number(s: &[u8]) -> Option<Num> {
    let mut i = 0;
    let neg = s.first() == Some(&b'-');
    if neg {
        i += 1;
    }
    let int_start = i;
    match s.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => {
            while i < s.len() && s[i].is_ascii_digit() {
                i += 1;
            }
        }
        _ => return None,
    }
    let int_end = i;
    let mut is_int = true;
    if i < s.len() && s[i] == b'.' {
        is_int = false;
        i += 1;
        let st = i;
        while i < s.len() && s[i].is_ascii_digit() {
            i += 1;
        }
        if i == st {
            return None;
        }
    }
    if i < s.len() && (s[i] == b'e' || s[i] == b'E') {
        is_int = false;
        i += 1;
        if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
            i += 1;
        }
        let st = i;
        while i < s.len() && s[i].is_ascii_digit() {
            i += 1;
        }
        if i == st {
            return None;
        }
    }
    if i != s.len() {
        return None;
    }
    if is_int && int_end - int_start <= 18 {
        let mut v: i64 = 0;
        for &d in &s[int_start..int_end] {
            v = v * 10 + (d - b'0') as i64;
        }
        return Some(Num::Int(if neg { -v } else { v }));
    }
    if is_int {
        // 19+ digits: may still fit i64.
        let mut v: i64 = 0;
        let mut ok = true;
        for &d in &s[int_start..int_end] {
            let digit = (d - b'0') as i64;
            match v.checked_mul(10).and_then(|x| {
                if neg {
                    x.checked_sub(digit)
                } else {
                    x.checked_add(digit)
                }
            }) {
                Some(x) => v = x,
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            return Some(Num::Int(v));
        }
    }
    // Safe: the grammar above admits only ASCII.
    let text = core::str::from_utf8(s).ok()?;
    text.parse::<f64>().ok().map(Num::Float)
}

/// Index after the string starting at `b[i] == '"'` (input already validated).
#[inline]
pub fn skip_string(b: &[u8], mut i: usize) -> usize {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'"' => return i + 1,
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    i
}

/// Index after the value starting at `i` (input already validated).
pub fn skip_value(b: &[u8], i: usize) -> usize {
    match b[i] {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = i;
            while i < b.len() {
                match b[i] {
                    b'"' => {
                        i = skip_string(b, i);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            i
        }
        b't' | b'n' => i + 4,
        b'f' => i + 5,
        _ => number_end(b, i),
    }
}

/// Does the raw (still escaped) key text equal `key`?
#[inline]
fn key_eq(raw: &[u8], key: &[u8]) -> bool {
    if !raw.contains(&b'\\') {
        return raw == key;
    }
    let mut cmp = CmpSink {
        want: key,
        pos: 0,
        ok: true,
    };
    unescape(raw, &mut cmp);
    cmp.ok && cmp.pos == key.len()
}

struct CmpSink<'a> {
    want: &'a [u8],
    pos: usize,
    ok: bool,
}

impl Sink for CmpSink<'_> {
    fn put(&mut self, b: &[u8]) {
        if self.ok
            && self.want.len() >= self.pos + b.len()
            && &self.want[self.pos..self.pos + b.len()] == b
        {
            self.pos += b.len();
        } else {
            self.ok = false;
        }
    }
}

/// Calls `f(key_raw, value_start)` for each member of the object at `b[i] == '{'`;
/// stops early when `f` returns false.
pub fn members(b: &[u8], i: usize, mut f: impl FnMut(&[u8], usize) -> bool) {
    let mut i = ws(b, i + 1);
    if i >= b.len() || b[i] == b'}' {
        return;
    }
    loop {
        let kend = skip_string(b, i);
        let raw = &b[i + 1..kend - 1];
        let vstart = ws(b, ws(b, kend) + 1);
        if !f(raw, vstart) {
            return;
        }
        let vend = ws(b, skip_value(b, vstart));
        if vend >= b.len() || b[vend] != b',' {
            return;
        }
        i = ws(b, vend + 1);
    }
}

/// The start of the value of member `key` in the object at `i`, if `b[i]` is an object.
pub fn find_member(b: &[u8], i: usize, key: &[u8]) -> Option<usize> {
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let mut found = None;
    members(b, i, |raw, v| {
        if key_eq(raw, key) {
            found = Some(v);
            false
        } else {
            true
        }
    });
    found
}

/// The start of element `n` of the array at `i`, if `b[i]` is an array that long.
pub fn find_index(b: &[u8], i: usize, n: u32) -> Option<usize> {
    if b.get(i) != Some(&b'[') {
        return None;
    }
    let mut i = ws(b, i + 1);
    if b.get(i) == Some(&b']') {
        return None;
    }
    let mut k = 0;
    loop {
        if k == n {
            return Some(i);
        }
        let e = ws(b, skip_value(b, i));
        if b.get(e) != Some(&b',') {
            return None;
        }
        i = ws(b, e + 1);
        k += 1;
    }
}

fn hex4(b: &[u8]) -> u32 {
    let mut v = 0;
    for &c in &b[..4] {
        v = v * 16
            + match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => c - b'A' + 10,
            } as u32;
    }
    v
}

/// Writes the decoded text of a validated raw string body (without quotes) to `out`.
pub fn unescape(raw: &[u8], out: &mut dyn Sink) {
    let mut i = 0;
    let mut run = 0;
    while i < raw.len() {
        if raw[i] != b'\\' {
            i += 1;
            continue;
        }
        out.put(&raw[run..i]);
        let c = raw[i + 1];
        i += 2;
        let simple = match c {
            b'b' => Some(8u8),
            b'f' => Some(12),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'u' => None,
            other => Some(other),
        };
        if let Some(s) = simple {
            out.put(&[s]);
        } else {
            let mut cp = hex4(&raw[i..]);
            i += 4;
            if (0xD800..0xDC00).contains(&cp)
                && raw.len() >= i + 6
                && raw[i] == b'\\'
                && raw[i + 1] == b'u'
            {
                let lo = hex4(&raw[i + 2..]);
                if (0xDC00..0xE000).contains(&lo) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    i += 6;
                }
            }
            let ch = char::from_u32(cp).unwrap_or('\u{FFFD}');
            let mut tmp = [0u8; 4];
            out.put(ch.encode_utf8(&mut tmp).as_bytes());
        }
        run = i;
    }
    out.put(&raw[run..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_and_scans() {
        let p = br#" {"a":[{"v":0},{"v":1}],"b\u0041":"x\"y","n":-12.5e1,"t":true} "#;
        assert!(validate_object(p));
        let root = ws(p, 0);
        let a = find_member(p, root, b"a").unwrap();
        let e1 = find_index(p, a, 1).unwrap();
        let v = find_member(p, e1, b"v").unwrap();
        assert_eq!(p[v], b'1');
        assert!(find_member(p, root, b"bA").is_some());
        assert!(find_index(p, a, 2).is_none());
        for bad in [
            &b"{"[..],
            b"{\"a\":}",
            b"[1]",
            b"{\"a\":01}",
            b"{\"a\":1,}",
            b"{} x",
        ] {
            assert!(!validate_object(bad), "{:?}", core::str::from_utf8(bad));
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number(b"20"), Some(Num::Int(20)));
        assert_eq!(
            parse_number(b"-9223372036854775808"),
            Some(Num::Int(i64::MIN))
        );
        assert_eq!(
            parse_number(b"9223372036854775808"),
            Some(Num::Float(9223372036854775808.0))
        );
        assert_eq!(parse_number(b"2.5"), Some(Num::Float(2.5)));
        assert_eq!(parse_number(b"1."), None);
        assert_eq!(parse_number(b"+1"), None);
    }
}
