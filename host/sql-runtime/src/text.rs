//! Text helpers that do not allocate: number formatting, JSON string escaping, base64, hex and
//! the `LIKE` matcher. Output goes to a [`Sink`].

/// Somewhere bytes can be written.
pub trait Sink {
    /// Appends `b`.
    fn put(&mut self, b: &[u8]);
}

#[cfg(not(target_arch = "wasm32"))]
impl Sink for std::vec::Vec<u8> {
    fn put(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
}

/// Writes `v` in decimal.
pub fn put_i64(out: &mut (impl Sink + ?Sized), v: i64) {
    const MOST_DIGITS: usize = 20; // u64::MAX has 20
    let mut buf = [0u8; MOST_DIGITS];
    let i = put_digits_before(&mut buf, MOST_DIGITS, v.unsigned_abs());
    if v < 0 {
        out.put(b"-");
    }
    out.put(&buf[i..]);
}

/// Writes the decimal digits of `n` into `buf` so that they end just before `end` (at least one
/// digit, `0` for zero); returns where they start.
fn put_digits_before(buf: &mut [u8], end: usize, mut n: u64) -> usize {
    let mut i = end;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return i;
        }
    }
}

/// Writes `v` as serde_json does (shortest round-trip text); `null` when not finite.
pub fn put_f64(out: &mut (impl Sink + ?Sized), v: f64) {
    if !v.is_finite() {
        out.put(b"null");
    } else if let Some((units, k)) = short_decimal(v) {
        put_short_decimal(out, v.is_sign_negative(), units, k);
    } else {
        let mut b = ryu::Buffer::new();
        out.put(b.format_finite(v).as_bytes());
    }
}

const POW10: [f64; 4] = [1.0, 10.0, 100.0, 1000.0];

/// Most sensor readings have at most three decimals: `|v| = units / 10^k` exactly (after
/// rounding) for the least `k` in 0..=3, or `None`. For `|v|` in [1e-3, 1e9) that text is
/// ryu's shortest round-trip text too: it parses back to `v` (`units / 10^k` is one correctly
/// rounded division of exact values), no text with fewer decimals does (a smaller `k` was
/// tried), and no other text with `k` decimals does (`v`'s spacing is far below `10^-k`). ryu's
/// general algorithm costs hundreds of Wasm instructions.
fn short_decimal(v: f64) -> Option<(u64, usize)> {
    let a = if v < 0.0 { -v } else { v };
    if !(a == 0.0 || (1e-3..1e9).contains(&a)) {
        return None;
    }
    for (k, p) in POW10.iter().enumerate() {
        // Rounded, not truncated: the product itself may be a rounding off the integer.
        let units = (a * p + 0.5) as u64;
        if units as f64 / p == a {
            return Some((units, k));
        }
    }
    None
}

/// Writes `units / 10^k` as ryu does in this range: `39.5`, `120.0`, `0.001`, `-0.0`.
fn put_short_decimal(out: &mut (impl Sink + ?Sized), negative: bool, units: u64, k: usize) {
    let scale = [1u64, 10, 100, 1000][k];
    let mut buf = [0u8; 32];
    let mut i = buf.len();
    let mut frac = units % scale;
    if k == 0 {
        i -= 1;
        buf[i] = b'0';
    }
    for _ in 0..k {
        i -= 1;
        buf[i] = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    i -= 1;
    buf[i] = b'.';
    i = put_digits_before(&mut buf, i, units / scale);
    if negative {
        i -= 1;
        buf[i] = b'-';
    }
    out.put(&buf[i..]);
}

/// Index of the first byte at or after `i` that a JSON string must escape (`"`, `\\`, a control
/// character), or `s.len()`: eight bytes per step where there are eight.
#[inline]
fn escape_run_end(s: &[u8], mut i: usize) -> usize {
    const LO: u64 = u64::from_le_bytes([0x01; 8]);
    const HI: u64 = u64::from_le_bytes([0x80; 8]);
    const SPACE: u64 = u64::from_le_bytes([0x20; 8]);
    const QUOTE: u64 = u64::from_le_bytes([b'"'; 8]);
    const BACKSLASH: u64 = u64::from_le_bytes([b'\\'; 8]);
    let zero_at = |x: u64| x.wrapping_sub(LO) & !x & HI;
    while let Some(chunk) = s.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        let w = u64::from_le_bytes(*chunk);
        // Lowest set bit exact (borrows only move upward); non-ASCII bytes pass.
        let m = (w.wrapping_sub(SPACE) & !w & HI) | zero_at(w ^ QUOTE) | zero_at(w ^ BACKSLASH);
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < s.len() && !matches!(s[i], b'"' | b'\\' | 0..=0x1f) {
        i += 1;
    }
    i
}

/// Writes `s` as a quoted JSON string, escaped like serde_json.
pub fn put_json_str(out: &mut (impl Sink + ?Sized), s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.put(b"\"");
    let mut run = 0;
    let mut i = escape_run_end(s, 0);
    while i < s.len() {
        let c = s[i];
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            8 => b"\\b",
            12 => b"\\f",
            _ => b"",
        };
        out.put(&s[run..i]);
        if esc.is_empty() {
            out.put(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(c >> 4) as usize],
                HEX[(c & 15) as usize],
            ]);
        } else {
            out.put(esc);
        }
        run = i + 1;
        i = escape_run_end(s, run);
    }
    out.put(&s[run..]);
    out.put(b"\"");
}

/// Writes standard base64 with padding.
pub fn put_base64(out: &mut (impl Sink + ?Sized), data: &[u8]) {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for ch in data.chunks(3) {
        let b0 = ch[0] as u32;
        let b1 = *ch.get(1).unwrap_or(&0) as u32;
        let b2 = *ch.get(2).unwrap_or(&0) as u32;
        let n = (b0 << 16) | (b1 << 8) | b2;
        let q = [
            T[(n >> 18) as usize & 63],
            T[(n >> 12) as usize & 63],
            if ch.len() > 1 {
                T[(n >> 6) as usize & 63]
            } else {
                b'='
            },
            if ch.len() > 2 {
                T[n as usize & 63]
            } else {
                b'='
            },
        ];
        out.put(&q);
    }
}

/// Writes lowercase hex.
pub fn put_hex(out: &mut (impl Sink + ?Sized), data: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &c in data {
        out.put(&[HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]);
    }
}

/// `LIKE`: `%` matches any run of characters, every other byte matches itself (sluice: `_` is
/// a literal).
pub fn like(s: &[u8], pat: &[u8]) -> bool {
    let Some(first) = pat.iter().position(|&c| c == b'%') else {
        return s == pat;
    };
    let last = pat.iter().rposition(|&c| c == b'%').unwrap_or(first);
    let head = &pat[..first];
    let tail = &pat[last + 1..];
    if s.len() < head.len() + tail.len() || !s.starts_with(head) || !s.ends_with(tail) {
        return false;
    }
    let mut rest = &s[head.len()..s.len() - tail.len()];
    if last > first {
        for piece in pat[first + 1..last].split(|&c| c == b'%') {
            match find(rest, piece) {
                Some(p) => rest = &rest[p + piece.len()..],
                None => return false,
            }
        }
    }
    true
}

/// The first position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    if needle.len() > hay.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_matches() {
        assert!(like(b"abc", b"abc"));
        assert!(!like(b"abcd", b"abc"));
        assert!(like(b"abcd", b"ab%"));
        assert!(like(b"abcd", b"%cd"));
        assert!(like(b"abcd", b"%bc%"));
        assert!(like(b"abcd", b"a%c%d"));
        assert!(!like(b"abcd", b"a%x%d"));
        assert!(like(b"", b"%"));
        assert!(!like(b"ab", b"a%ab"));
        assert!(!like(b"aXb", b"a_b"));
        assert!(like(b"a_b", b"a_b"));
        assert!(like(b"aaa", b"a%a"));
        assert!(!like(b"a", b"a%a"));
    }

    #[test]
    fn encodings() {
        let mut v = std::vec::Vec::new();
        put_base64(&mut v, b"hello");
        assert_eq!(v, b"aGVsbG8=");
        v.clear();
        put_json_str(&mut v, b"a\"\n\x01");
        assert_eq!(v, b"\"a\\\"\\n\\u0001\"");
        v.clear();
        put_i64(&mut v, i64::MIN);
        assert_eq!(v, b"-9223372036854775808");
    }

    /// The escaper that scans a word at a time agrees with a byte-at-a-time one.
    #[test]
    fn json_strings_escape_like_serde_json() {
        let mut all: std::vec::Vec<u8> = (0u8..=255).collect();
        all.extend_from_slice("plain text, then \u{e9}\u{2713} and more plain text".as_bytes());
        for start in 0..all.len() {
            for len in [0, 1, 7, 8, 9, 17, 40] {
                let piece = &all[start..(start + len).min(all.len())];
                let Ok(text) = core::str::from_utf8(piece) else {
                    continue;
                };
                let mut v = std::vec::Vec::new();
                put_json_str(&mut v, piece);
                assert_eq!(v, serde_json::to_vec(text).unwrap(), "{text:?}");
            }
        }
    }

    /// The short-decimal path writes exactly what ryu (serde_json) writes.
    #[test]
    fn floats_format_like_ryu() {
        let ryu_text = |v: f64| ryu::Buffer::new().format_finite(v).to_string();
        let check = |v: f64| {
            if !v.is_finite() {
                return;
            }
            let mut out = std::vec::Vec::new();
            put_f64(&mut out, v);
            assert_eq!(
                std::string::String::from_utf8(out).unwrap(),
                ryu_text(v),
                "{v:e}"
            );
        };
        for v in [
            0.0,
            -0.0,
            39.5,
            229.7,
            12.05,
            0.001,
            0.0015,
            0.1,
            0.3,
            1e-3,
            9.99e-4,
            999_999_999.9,
            1e9,
            123_456_789.125,
            100.0,
            -61.0,
            2.675,
            1.005,
            0.30000000000000004,
            1e15,
            5e-324,
        ] {
            check(v);
            check(-v);
        }
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..300_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Decimals with up to four places over the whole short range, and raw bit patterns.
            let units = (x >> 20) % 2_000_000_000_000;
            let k = (x % 5) as i32;
            check(units as f64 / 10f64.powi(k));
            check(f64::from_bits(x) % 1e10);
        }
    }
}
