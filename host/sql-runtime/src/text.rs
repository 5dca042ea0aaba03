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
pub fn put_i64(out: &mut dyn Sink, v: i64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = v.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        out.put(b"-");
    }
    out.put(&buf[i..]);
}

/// Writes `v` as serde_json does (shortest round-trip text); `null` when not finite.
pub fn put_f64(out: &mut dyn Sink, v: f64) {
    if v.is_finite() {
        let mut b = ryu::Buffer::new();
        out.put(b.format_finite(v).as_bytes());
    } else {
        out.put(b"null");
    }
}

/// Writes `s` as a quoted JSON string, escaped like serde_json.
pub fn put_json_str(out: &mut dyn Sink, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.put(b"\"");
    let mut run = 0;
    for (i, &c) in s.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            8 => b"\\b",
            12 => b"\\f",
            0..=0x1f => b"",
            _ => continue,
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
    }
    out.put(&s[run..]);
    out.put(b"\"");
}

/// Writes standard base64 with padding.
pub fn put_base64(out: &mut dyn Sink, data: &[u8]) {
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
pub fn put_hex(out: &mut dyn Sink, data: &[u8]) {
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
}
