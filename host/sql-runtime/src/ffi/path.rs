//! `rt_path`: a payload path (descriptor in `shared.rs`) read with the lazy scanner, from the
//! root or from a root member `rt_begin` indexed.

use super::arena::{with_state, State, NO_FIELD};
use super::mem;
use super::value::{ret, V};
use crate::json::{self, Num};
use crate::shared::*;
use crate::text::Sink;

fn value_at(s: &mut State, b: &'static [u8], i: usize) -> V {
    match b[i] {
        b'"' => {
            // The common string: plain ASCII up to the closing quote, borrowed as it is.
            let j = json::plain_run_end(b, i + 1);
            if b.get(j) == Some(&b'"') {
                return V::Str(&b[i + 1..j]);
            }
            let end = json::skip_string(b, i);
            let raw = &b[i + 1..end - 1];
            if raw.contains(&b'\\') {
                let mut bl = s.builder();
                json::unescape(raw, &mut bl);
                V::Str(bl.bytes())
            } else {
                V::Str(raw)
            }
        }
        b'{' | b'[' => V::Json(&b[i..json::skip_value(b, i)]),
        b't' => V::Bool(true),
        b'f' => V::Bool(false),
        b'n' => V::Null,
        _ => match json::parse_number(&b[i..json::number_end(b, i)]) {
            Some(Num::Int(n)) => V::Int(n),
            Some(Num::Float(f)) => V::Float(f),
            None => V::Undef,
        },
    }
}

fn walk(s: &State, b: &'static [u8], desc: &[u8]) -> Option<usize> {
    let (mut i, mut d) = if desc[0] & PATH_TOP != 0 {
        let k = u16::from_le_bytes([desc[1], desc[2]]) as usize;
        // `rt_begin` filled the slot this message.
        let at = s.fields[k];
        if at == NO_FIELD {
            return None;
        }
        (at as usize, 3)
    } else {
        (json::ws(b, 0), 1)
    };
    while d < desc.len() {
        match desc[d] {
            SEG_KEY => {
                let n = u16::from_le_bytes([desc[d + 1], desc[d + 2]]) as usize;
                i = json::find_member(b, i, &desc[d + 3..d + 3 + n])?;
                d += 3 + n;
            }
            _ => {
                let n = u32::from_le_bytes([desc[d + 1], desc[d + 2], desc[d + 3], desc[d + 4]]);
                i = json::find_index(b, i, n)?;
                d += 5;
            }
        }
    }
    Some(i)
}

/// Reads a payload path (descriptor in `shared.rs`).
#[no_mangle]
pub extern "C" fn rt_path(desc_ptr: i32, desc_len: i32) -> i32 {
    // Safety: a constant of the rule.
    let desc = unsafe { mem::bytes(mem::at(desc_ptr), mem::at(desc_len)) };
    with_state(|s| {
        let b = s.payload();
        let Some(i) = walk(s, b, desc) else {
            return ret(V::Undef);
        };
        if desc[0] & PATH_WRAP != 0 {
            let raw = &b[i..json::skip_value(b, i)];
            let mut bl = s.builder();
            bl.put(b"[");
            bl.put(raw);
            bl.put(b"]");
            return ret(V::Json(bl.bytes()));
        }
        ret(value_at(s, b, i))
    })
}
