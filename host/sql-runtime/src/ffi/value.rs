//! The value model. Values cross the boundary as `(tag: i32, bits: i64)` (tags in `shared.rs`);
//! a string, JSON text or bytes value has `ptr | len << 32` as its bits. A helper returns the
//! tag and leaves the bits at `RET`; arguments come in the `ARGS` slots. Here: the decoded
//! [`V`], its JSON and text forms, numeric coercion, and the runtime's error messages.

use super::arena::State;
use super::host;
use super::mem;
use crate::json::{self, Num};
use crate::shared::*;
use crate::text::{self, Sink};

/// A decoded value. Slices are bytes of the current message (payload, constants, arena).
#[derive(Clone, Copy)]
pub(crate) enum V {
    Undef,
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'static [u8]),
    Json(&'static [u8]),
    Bytes(&'static [u8]),
}

fn unpack(bits: i64) -> &'static [u8] {
    // Safety: a value's bits name bytes of the current message: generated code passes back
    // what a helper returned, or a constant.
    unsafe { mem::bytes(bits as u32 as usize, (bits as u64 >> 32) as usize) }
}

fn pack(b: &[u8]) -> i64 {
    ((b.len() as u64) << 32 | mem::addr_of_bytes(b) as u64) as i64
}

/// The value a tag and bits stand for (an unknown tag is undefined).
pub(crate) fn val(tag: i32, bits: i64) -> V {
    match tag {
        TAG_NULL => V::Null,
        TAG_BOOL => V::Bool(bits != 0),
        TAG_INT => V::Int(bits),
        TAG_FLOAT => V::Float(f64::from_bits(bits as u64)),
        TAG_STR => V::Str(unpack(bits)),
        TAG_JSON => V::Json(unpack(bits)),
        TAG_BYTES => V::Bytes(unpack(bits)),
        _ => V::Undef,
    }
}

/// Returns `v` to generated code: the bits to `RET`, the tag as the result.
pub(crate) fn ret(v: V) -> i32 {
    let (tag, bits) = match v {
        V::Undef => (TAG_UNDEF, 0),
        V::Null => (TAG_NULL, 0),
        V::Bool(b) => (TAG_BOOL, b as i64),
        V::Int(i) => (TAG_INT, i),
        V::Float(f) => (TAG_FLOAT, f.to_bits() as i64),
        V::Str(s) => (TAG_STR, pack(s)),
        V::Json(s) => (TAG_JSON, pack(s)),
        V::Bytes(s) => (TAG_BYTES, pack(s)),
    };
    mem::set_ret(bits);
    tag
}

/// Argument `i` of the current function call.
pub(crate) fn arg(i: usize) -> V {
    let s = mem::arg(i);
    val(s.tag, s.bits)
}

pub(crate) fn type_name(v: V) -> &'static [u8] {
    match v {
        V::Undef => b"undefined",
        V::Null => b"null",
        V::Bool(_) => b"boolean",
        V::Int(_) | V::Float(_) => b"number",
        V::Str(_) => b"string",
        V::Json(j) if j.first() == Some(&b'[') => b"array",
        V::Json(_) => b"object",
        V::Bytes(_) => b"binary payload",
    }
}

/// Calls `fail` with the concatenated parts and returns `TAG_ERR`.
pub(crate) fn err(s: &mut State, parts: &[&[u8]]) -> i32 {
    let mut b = s.builder();
    for p in parts {
        b.put(p);
    }
    let m = b.bytes();
    // Safety: `m` is readable memory for the call.
    unsafe { host::fail(m.as_ptr(), m.len() as i32) };
    TAG_ERR
}

pub(crate) fn type_err(s: &mut State, func: &[u8], want: &[u8], got: V) -> i32 {
    err(s, &[func, b": expected ", want, b", got ", type_name(got)])
}

/// The JSON text of a value (undefined as `null`, bytes as a base64 string).
pub(crate) fn put_value(out: &mut (impl Sink + ?Sized), v: V) {
    match v {
        V::Undef | V::Null => out.put(b"null"),
        V::Bool(true) => out.put(b"true"),
        V::Bool(false) => out.put(b"false"),
        V::Int(i) => text::put_i64(out, i),
        V::Float(f) => text::put_f64(out, f),
        V::Str(s) => text::put_json_str(out, s),
        V::Json(j) => out.put(j),
        V::Bytes(b) => {
            out.put(b"\"");
            text::put_base64(out, b);
            out.put(b"\"");
        }
    }
}

/// Text of a value: a string's characters, other values' JSON text.
pub(crate) fn put_text(out: &mut (impl Sink + ?Sized), v: V) {
    match v {
        V::Str(s) => out.put(s),
        other => put_value(out, other),
    }
}

/// The number a value stands for (strings parsed as JSON numbers).
pub(crate) fn to_num(v: V) -> Option<Num> {
    match v {
        V::Int(i) => Some(Num::Int(i)),
        V::Float(f) => Some(Num::Float(f)),
        V::Str(s) => json::parse_number(s),
        _ => None,
    }
}

pub(crate) fn f64_of(n: Num) -> f64 {
    match n {
        Num::Int(i) => i as f64,
        Num::Float(f) => f,
    }
}
