//! A JSON validator and a lazy scanner over validated payload bytes.
//!
//! The payload is validated once per message ([`validate_object`]); after that the scanner
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
#[inline(always)]
pub fn ws(b: &[u8], i: usize) -> usize {
    // Most payloads have no whitespace between tokens: answer without entering a loop (every
    // loop entry costs a fuel and an epoch check in the sandbox).
    match b.get(i) {
        Some(b' ' | b'\t' | b'\n' | b'\r') => ws_loop(b, i + 1),
        _ => i,
    }
}

#[inline(never)]
fn ws_loop(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// True when `b` is one valid JSON object (surrounding whitespace allowed), UTF-8 included.
pub fn validate_object(b: &[u8]) -> bool {
    validate_object_with(b, |_, _, _| {})
}

/// [`validate_object`] that also reports every member of the root object, in order, as
/// `top(raw_key, key_has_escapes, value_start)`: a rule indexes the fields it reads in the same
/// pass that validates the payload, instead of scanning the payload again for each field.
/// Members are reported before their values are validated; a caller must ignore what it
/// collected when the result is false.
///
/// One loop with an explicit container stack (a bit per level, `MAX_DEPTH` levels) rather than
/// recursion: no call and no stack frame per value, which is most of the cost in Wasm.
pub fn validate_object_with(b: &[u8], mut top: impl FnMut(&[u8], bool, usize)) -> bool {
    let n = b.len();
    let mut i = ws(b, 0);
    if i >= n || b[i] != b'{' {
        return false;
    }
    i = ws(b, i + 1);
    if i < n && b[i] == b'}' {
        return ws(b, i + 1) == n;
    }
    // `depth`: open containers, the root included (the depth of the values inside the innermost
    // one); bit `d - 2` of `objects` (two words: no 128-bit shifts, which are calls in Wasm)
    // tells whether the container at depth `d` >= 2 is an object; `in_object` caches it for
    // the innermost one.
    let mut depth: u32 = 1;
    let mut objects = [0u64; 2];
    let mut in_object = true;
    'member: loop {
        // A member: `i` is at its key.
        if i >= n || b[i] != b'"' {
            return false;
        }
        let Some((kend, escaped)) = string(b, i) else {
            return false;
        };
        let colon = ws(b, kend);
        if colon >= n || b[colon] != b':' {
            return false;
        }
        let v = ws(b, colon + 1);
        if depth == 1 {
            top(&b[i + 1..kend - 1], escaped, v);
        }
        i = v;
        'value: loop {
            // A value at depth `depth`: `i` is at its first byte.
            if depth > MAX_DEPTH || i >= n {
                return false;
            }
            match b[i] {
                b'{' => {
                    i = ws(b, i + 1);
                    if i < n && b[i] == b'}' {
                        i += 1;
                    } else {
                        let d = depth - 1;
                        objects[(d >> 6) as usize & 1] |= 1 << (d & 63);
                        depth += 1;
                        in_object = true;
                        continue 'member;
                    }
                }
                b'[' => {
                    i = ws(b, i + 1);
                    if i < n && b[i] == b']' {
                        i += 1;
                    } else {
                        let d = depth - 1;
                        objects[(d >> 6) as usize & 1] &= !(1 << (d & 63));
                        depth += 1;
                        in_object = false;
                        continue 'value;
                    }
                }
                b'"' => match string(b, i) {
                    Some((end, _)) => i = end,
                    None => return false,
                },
                b't' => match lit(b, i, b"true") {
                    Some(end) => i = end,
                    None => return false,
                },
                b'f' => match lit(b, i, b"false") {
                    Some(end) => i = end,
                    None => return false,
                },
                b'n' => match lit(b, i, b"null") {
                    Some(end) => i = end,
                    None => return false,
                },
                _ => match number(b, i) {
                    Some(end) => i = end,
                    None => return false,
                },
            }
            // After a value: separators and closers until the next member or element.
            loop {
                i = ws(b, i);
                if i >= n {
                    return false;
                }
                match (b[i], in_object) {
                    (b',', true) => {
                        i = ws(b, i + 1);
                        continue 'member;
                    }
                    (b',', false) => {
                        i = ws(b, i + 1);
                        continue 'value;
                    }
                    (b'}', true) | (b']', false) => {
                        i += 1;
                        depth -= 1;
                        if depth == 0 {
                            return ws(b, i) == n;
                        }
                        in_object = depth == 1 || {
                            let d = depth - 2;
                            objects[(d >> 6) as usize & 1] & (1 << (d & 63)) != 0
                        };
                    }
                    _ => return false,
                }
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

/// Index after the digits starting at `i`, or `None` when there is none.
#[inline(always)]
fn digits(b: &[u8], i: usize) -> Option<usize> {
    let end = digit_run_end(b, i);
    (end > i).then_some(end)
}

/// Index of the first byte at or after `i` that is not an ASCII digit (`b.len()` if none):
/// eight bytes per step where there are eight.
#[inline(always)]
fn digit_run_end(b: &[u8], mut i: usize) -> usize {
    const HI: u64 = splat(0x80);
    while let Some(chunk) = b.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        let w = u64::from_le_bytes(*chunk);
        // Bit 7 set where a byte is below '0' (borrow), above '9' (carry into bit 7) or
        // non-ASCII; borrows and carries only move upward, so the lowest set bit is exact.
        let m = (w.wrapping_sub(splat(b'0')) | w.wrapping_add(splat(0x80 - 0x3a)) | w) & HI;
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    i
}

/// Checks the JSON number grammar at `i` without converting (validation needs no value);
/// returns the index after the number. What follows is the caller's to check, so `01` or
/// `1.5.2` still fail there.
#[inline(always)]
fn number(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match *b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(b, i + 1).unwrap_or(i + 1),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        i = digits(b, i + 1)?;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(b, i)?;
    }
    Some(i)
}

/// `0x0101...01` times `c`: `c` in every byte of a word.
const fn splat(c: u8) -> u64 {
    u64::from_le_bytes([c; 8])
}

/// A word with bit 7 of each byte set where that byte of `w` needs a closer look inside a JSON
/// string: `"`, `\`, a control character or a non-ASCII byte. Bits above the first such byte
/// may be wrong (borrows), the lowest set bit is exact: only it is used.
#[inline]
pub fn special_in_string(w: u64) -> u64 {
    const LO: u64 = splat(0x01);
    const HI: u64 = splat(0x80);
    let zero_at = |x: u64| x.wrapping_sub(LO) & !x & HI;
    let control = w.wrapping_sub(splat(0x20)) & !w & HI;
    control | zero_at(w ^ splat(b'"')) | zero_at(w ^ splat(b'\\')) | (w & HI)
}

/// Index of the first byte at or after `i` that is `"`, `\`, a control character or
/// non-ASCII (`b.len()` if none): eight bytes per step where there are eight.
#[inline(always)]
pub fn plain_run_end(b: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = b.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        let w = u64::from_le_bytes(*chunk);
        let m = special_in_string(w);
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && PLAIN[b[i] as usize] {
        i += 1;
    }
    i
}

/// Bytes a string may contain without a closer look: printable ASCII other than `"` and `\`.
static PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0x20;
    while c < 0x80 {
        t[c] = c != b'"' as usize && c != b'\\' as usize;
        c += 1;
    }
    t
};

/// Validates the string starting at `b[i] == '"'`; returns the index after the closing quote
/// and whether the string has escapes.
#[inline(always)]
fn string(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let start = i + 1;
    let mut i = start;
    let mut ascii = true;
    let mut escaped = false;
    loop {
        i = plain_run_end(b, i);
        let c = *b.get(i)?;
        match c {
            b'"' => {
                if !ascii && core::str::from_utf8(&b[start..i]).is_err() {
                    return None;
                }
                return Some((i + 1, escaped));
            }
            b'\\' => {
                escaped = true;
                match *b.get(i + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                    b'u' => {
                        if b.len() < i + 6 || !b[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        i += 6;
                    }
                    _ => return None,
                }
            }
            0..=0x1f => return None,
            _ => {
                ascii = false;
                i += 1;
            }
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
    if let Some(f) = fast_float(s, neg, int_start) {
        return Some(Num::Float(f));
    }
    // Safe: the grammar above admits only ASCII.
    let text = core::str::from_utf8(s).ok()?;
    text.parse::<f64>().ok().map(Num::Float)
}

/// Powers of ten that are exact in an f64.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The common float (at most 15 significant digits, a small exponent) without the general
/// decimal-to-float algorithm, which costs hundreds of Wasm instructions: mantissa and power
/// of ten are both exact in an f64, so one multiplication or division rounds correctly, to the
/// same value as `str::parse` (Clinger's fast path). `None` leaves the number to `str::parse`.
/// `s` has passed the grammar check of [`parse_number`].
fn fast_float(s: &[u8], neg: bool, int_start: usize) -> Option<f64> {
    let mut mantissa: u64 = 0;
    let mut digits = 0u32;
    let mut frac = 0i32;
    let mut i = int_start;
    let mut in_frac = false;
    while i < s.len() {
        match s[i] {
            d @ b'0'..=b'9' => {
                if mantissa != 0 || d != b'0' {
                    digits += 1;
                }
                mantissa = mantissa * 10 + (d - b'0') as u64;
                if in_frac {
                    frac += 1;
                }
                if digits > 15 {
                    return None;
                }
            }
            b'.' => in_frac = true,
            _ => break,
        }
        i += 1;
    }
    let mut exp = 0i32;
    if i < s.len() {
        // `e` or `E`, an optional sign, then at least one digit.
        i += 1;
        let eneg = s[i] == b'-';
        if s[i] == b'-' || s[i] == b'+' {
            i += 1;
        }
        if s.len() - i > 3 {
            return None;
        }
        for &d in &s[i..] {
            exp = exp * 10 + (d - b'0') as i32;
        }
        if eneg {
            exp = -exp;
        }
    }
    let e = exp - frac;
    let m = mantissa as f64;
    let v = if (0..=22).contains(&e) {
        m * POW10[e as usize]
    } else if (-22..0).contains(&e) {
        m / POW10[(-e) as usize]
    } else {
        return None;
    };
    Some(if neg { -v } else { v })
}

/// Index after the string starting at `b[i] == '"'` (input already validated).
#[inline]
pub fn skip_string(b: &[u8], mut i: usize) -> usize {
    i += 1;
    while i < b.len() {
        i = plain_run_end(b, i);
        if i >= b.len() {
            break;
        }
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
                i = structural_run_end(b, i);
                if i >= b.len() {
                    break;
                }
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

/// Index of the first `"`, `{`, `}`, `[` or `]` at or after `i` (`b.len()` if none): what
/// skipping a container looks for, eight bytes per step where there are eight.
#[inline(always)]
fn structural_run_end(b: &[u8], mut i: usize) -> usize {
    const LO: u64 = splat(0x01);
    const HI: u64 = splat(0x80);
    let zero_at = |x: u64| x.wrapping_sub(LO) & !x & HI;
    while let Some(chunk) = b.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        let w = u64::from_le_bytes(*chunk);
        // `[` and `{`, `]` and `}` differ only in bit 5. Lowest set bit exact, as above.
        let folded = w | splat(0x20);
        let m = zero_at(folded ^ splat(b'{'))
            | zero_at(folded ^ splat(b'}'))
            | zero_at(w ^ splat(b'"'));
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && !matches!(b[i], b'"' | b'{' | b'}' | b'[' | b']') {
        i += 1;
    }
    i
}

/// `a == b` for the short byte strings keys are, a word at a time and without a call (slice
/// equality is a `memcmp` call in Wasm).
#[inline]
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while let (Some(x), Some(y)) = (
        a.get(i..).and_then(<[u8]>::first_chunk::<8>),
        b.get(i..).and_then(<[u8]>::first_chunk::<8>),
    ) {
        if u64::from_le_bytes(*x) != u64::from_le_bytes(*y) {
            return false;
        }
        i += 8;
    }
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Does the raw (still escaped) key text equal `key`?
#[inline]
pub fn key_eq(raw: &[u8], key: &[u8]) -> bool {
    if !raw.contains(&b'\\') {
        return same_bytes(raw, key);
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
pub fn unescape(raw: &[u8], out: &mut (impl Sink + ?Sized)) {
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

    /// The recursive validator the loop in [`validate_object_with`] replaced: the reference it
    /// is checked against.
    fn validate_reference(b: &[u8]) -> bool {
        let i = ws(b, 0);
        if i >= b.len() || b[i] != b'{' {
            return false;
        }
        match value_reference(b, i, 0) {
            Some(end) => ws(b, end) == b.len(),
            None => false,
        }
    }

    fn value_reference(b: &[u8], i: usize, depth: u32) -> Option<usize> {
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
                    i = ws(b, string(b, i)?.0);
                    if *b.get(i)? != b':' {
                        return None;
                    }
                    i = ws(b, value_reference(b, ws(b, i + 1), depth + 1)?);
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
                    i = ws(b, value_reference(b, i, depth + 1)?);
                    match *b.get(i)? {
                        b',' => i = ws(b, i + 1),
                        b']' => return Some(i + 1),
                        _ => return None,
                    }
                }
            }
            b'"' => string(b, i).map(|(end, _)| end),
            b't' => lit(b, i, b"true"),
            b'f' => lit(b, i, b"false"),
            b'n' => lit(b, i, b"null"),
            _ => number(b, i),
        }
    }

    /// The byte-at-a-time string validator the word-at-a-time one replaced.
    fn string_reference(b: &[u8], i: usize) -> Option<(usize, bool)> {
        let start = i + 1;
        let mut i = start;
        let mut ascii = true;
        let mut escaped = false;
        loop {
            let c = *b.get(i)?;
            match c {
                b'"' => {
                    if !ascii && core::str::from_utf8(&b[start..i]).is_err() {
                        return None;
                    }
                    return Some((i + 1, escaped));
                }
                b'\\' => {
                    escaped = true;
                    match *b.get(i + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                        b'u' => {
                            if b.len() < i + 6 || !b[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit)
                            {
                                return None;
                            }
                            i += 6;
                        }
                        _ => return None,
                    }
                }
                0..=0x1f => return None,
                0x80.. => {
                    ascii = false;
                    i += 1;
                }
                _ => i += 1,
            }
        }
    }

    /// The number check validation used before: the token, then the full conversion.
    fn number_reference(b: &[u8], i: usize) -> Option<usize> {
        let end = number_end(b, i);
        (end > i && parse_number(&b[i..end]).is_some()).then_some(end)
    }

    /// A tiny deterministic generator (no dependency): xorshift.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn the_loop_validator_agrees_with_the_recursive_one() {
        let seeds: &[&[u8]] = &[
            br#"{"temperature":39.5,"humidity":61,"location":"warehouse-7/rack-12","tags":["a","b","c"],"status":{"fan":"on","door":"closed","alarm":false},"seq":123456}"#,
            br#" {"a":[{"v":0},{"v":1}],"b\u0041":"x\"y\u00e9\n","n":-12.5e1,"t":true,"f":false,"z":null,"e":{},"l":[]} "#,
            "{\"h\u{e9}llo \u{2713}\":[[[]],{\"k\":[1,2.5,-0,1E+2]}],\"s\":\"a long string of plain text here\"}".as_bytes(),
        ];
        // Bytes that matter to the grammar, spliced in at random.
        let alphabet: &[u8] = b"{}[]:,\"\\ \t\n0123456789-+.eEtrufalsn\x01\x7f\xc3\xa9\xff";
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..200_000 {
            let mut p = seeds[rng.below(seeds.len())].to_vec();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(p.len() + 1);
                match rng.below(3) {
                    0 if at < p.len() => {
                        p.remove(at);
                    }
                    1 if at < p.len() => p[at] = alphabet[rng.below(alphabet.len())],
                    _ => p.insert(at, alphabet[rng.below(alphabet.len())]),
                }
            }
            assert_eq!(
                validate_object(&p),
                validate_reference(&p),
                "{:?}",
                String::from_utf8_lossy(&p)
            );
            for i in 0..p.len() {
                if p[i] == b'"' {
                    assert_eq!(
                        string(&p, i),
                        string_reference(&p, i),
                        "{:?} at {i}",
                        String::from_utf8_lossy(&p)
                    );
                }
                if p[i] == b'-' || p[i].is_ascii_digit() {
                    let ours = number(&p, i);
                    let theirs = number_reference(&p, i);
                    // `number` stops at the grammar's end and leaves the rest to the caller; the
                    // old check took the whole token: they agree whenever the token is a number.
                    if theirs.is_some() {
                        assert_eq!(ours, theirs, "{:?} at {i}", String::from_utf8_lossy(&p));
                    }
                }
            }
        }
        // Depth: 128 levels of values are fine, 129 are not (as serde_json).
        let nest = |levels: usize| {
            let mut p = String::from("{\"a\":");
            p.push_str(&"[".repeat(levels - 1));
            p.push('1');
            p.push_str(&"]".repeat(levels - 1));
            p.push('}');
            p.into_bytes()
        };
        for levels in [127, 128, 129, 130] {
            assert_eq!(
                validate_object(&nest(levels)),
                validate_reference(&nest(levels)),
                "{levels}"
            );
        }
        assert!(validate_object(&nest(128)));
        assert!(!validate_object(&nest(129)));
    }

    #[test]
    fn root_members_are_reported_in_order_with_their_value() {
        let p = br#" { "a" : 1, "b\u0063":{"a":2}, "a":[3] } "#;
        let mut seen = Vec::new();
        assert!(validate_object_with(p, |k, esc, v| seen.push((
            k.to_vec(),
            esc,
            p[v]
        ))));
        assert_eq!(
            seen,
            vec![
                (b"a".to_vec(), false, b'1'),
                (b"b\\u0063".to_vec(), true, b'{'),
                (b"a".to_vec(), false, b'['),
            ]
        );
    }

    #[test]
    fn digit_runs_end_at_the_first_other_byte() {
        let all: std::vec::Vec<u8> = (0u8..=255).collect();
        for other in all {
            for at in 0..20 {
                let mut text = b"01234567890123456789012".to_vec();
                text[at] = other;
                let want = text
                    .iter()
                    .position(|c| !c.is_ascii_digit())
                    .unwrap_or(text.len());
                assert_eq!(digit_run_end(&text, 0), want, "{other:#x} at {at}");
            }
        }
    }

    #[test]
    fn structural_runs_end_at_the_first_bracket_or_quote() {
        let all: std::vec::Vec<u8> = (0u8..=255).collect();
        for other in all {
            for at in 0..20 {
                let mut text = b"abc:1,2.5e3 true null x".to_vec();
                text[at] = other;
                let want = text
                    .iter()
                    .position(|c| matches!(c, b'"' | b'{' | b'}' | b'[' | b']'))
                    .unwrap_or(text.len());
                assert_eq!(structural_run_end(&text, 0), want, "{other:#x} at {at}");
            }
        }
        let p = br#"{"a":{"b":[1,{"c":"}]\"{"}],"d":"x"},"e":[[],{}],"f":"]"}"#;
        let root = ws(p, 0);
        let a = find_member(p, root, b"a").unwrap();
        assert_eq!(
            &p[a..skip_value(p, a)],
            br#"{"b":[1,{"c":"}]\"{"}],"d":"x"}"#
        );
        let e = find_member(p, root, b"e").unwrap();
        assert_eq!(&p[e..skip_value(p, e)], br#"[[],{}]"#);
        assert_eq!(p[find_member(p, root, b"f").unwrap() + 1], b']');
    }

    #[test]
    fn same_bytes_is_slice_equality() {
        let text = b"temperature_and_more_text";
        for i in 0..text.len() {
            for j in i..text.len() {
                for k in 0..text.len() {
                    for l in k..text.len() {
                        let (a, b) = (&text[i..j], &text[k..l]);
                        assert_eq!(same_bytes(a, b), a == b);
                    }
                }
            }
        }
        assert!(!same_bytes(b"temperaturE", b"temperature"));
    }

    #[test]
    fn plain_runs_stop_at_the_first_byte_that_needs_a_look() {
        for (text, want) in [
            (&b"abcdefghijklmnop"[..], 16),
            (b"abcdefgh\"", 8),
            (b"abc\"defghijkl", 3),
            (b"abcdefghij\\kl", 10),
            (b"abcdefghijk\x1f", 11),
            (b"ab\xc3\xa9cdefghij", 2),
            (b"\x7f~ !#", 5),
        ] {
            assert_eq!(
                plain_run_end(text, 0),
                want,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

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
        // The fast path agrees with the general algorithm, edge cases included.
        for text in [
            "39.5",
            "-0.0",
            "0.1",
            "12.9",
            "1e22",
            "1e23",
            "123456789012345.6",
            "1.7976931348623157e308",
            "5e-324",
            "0.000001",
            "1E-22",
            "9007199254740993.0",
            "-2.5E+3",
            "0.30000000000000004",
            "100000000000000000000000.0",
            "4.35",
            "1e-400",
            "1e400",
        ] {
            let want: f64 = text.parse().unwrap();
            match parse_number(text.as_bytes()) {
                Some(Num::Float(got)) => assert_eq!(got.to_bits(), want.to_bits(), "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert_eq!(parse_number(b"+1"), None);
    }
}
