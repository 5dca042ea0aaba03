//! The output writer: the SELECT's JSON object built member by member in the arena, then
//! emitted; or the payload emitted unchanged.

use super::arena::{with_state, State};
use super::host;
use super::mem;
use super::message::names;
use super::value::{put_value, val};
use crate::json;
use crate::shared::*;
use crate::text::{self, Sink};

/// Starts the output object.
#[no_mangle]
pub extern "C" fn rt_out_begin() {
    with_state(|s| {
        s.out_begin();
        s.out().put(b"{");
    })
}

/// Writes one member; `key` is pre-encoded as `"name":`. Undefined values are left out.
#[no_mangle]
pub extern "C" fn rt_out_item(kp: i32, kl: i32, tag: i32, bits: i64) {
    if tag == TAG_UNDEF || tag == TAG_NONE {
        return;
    }
    // Safety: a constant of the rule.
    let key = unsafe { mem::bytes(mem::at(kp), mem::at(kl)) };
    with_state(|s| {
        s.out_sep();
        let mut out = s.out();
        out.put(key);
        put_value(&mut out, val(tag, bits));
    })
}

fn raw_key_eq(s: &mut State, raw: &[u8], key: &[u8]) -> bool {
    if !raw.contains(&b'\\') {
        return raw == key;
    }
    s.scratch(|s| {
        let mut b = s.builder();
        json::unescape(raw, &mut b);
        b.bytes() == key
    })
}

/// Copies the payload's members (`*`), leaving out the names in the list (overridden later).
#[no_mangle]
pub extern "C" fn rt_out_star(lp: i32, ll: i32) {
    // Safety: a constant of the rule.
    let list = unsafe { mem::bytes(mem::at(lp), mem::at(ll)) };
    with_state(|s| {
        let b = s.payload();
        let root = json::ws(b, 0);
        if list.is_empty() {
            let end = json::skip_value(b, root);
            let inner = &b[root + 1..end - 1];
            let start = json::ws(inner, 0);
            if start < inner.len() {
                s.out_sep();
                s.out().put(&inner[start..]);
            }
            return;
        }
        json::members(b, root, |raw, v| {
            if !names(list).any(|n| raw_key_eq(s, raw, n)) {
                s.out_sep();
                let mut out = s.out();
                out.put(b"\"");
                out.put(raw);
                out.put(b"\":");
                out.put(&b[v..json::skip_value(b, v)]);
            }
            true
        });
    })
}

/// Writes the key of a flattened property: `"<key>":` or `"<key>_<suffix>":`.
fn flat_key(s: &mut State, key_raw: &[u8], key_escaped: bool, suffix: Option<&[u8]>) {
    s.out_sep();
    // Encoded before the output is touched: the builder must be the last thing allocated.
    let key = if key_escaped {
        key_raw
    } else {
        let mut tmp = s.builder();
        text::put_json_str(&mut tmp, key_raw);
        let q = tmp.bytes();
        &q[1..q.len() - 1]
    };
    let mut out = s.out();
    out.put(b"\"");
    out.put(key);
    if let Some(suffix) = suffix {
        out.put(b"_");
        out.put(suffix);
    }
    out.put(b"\":");
}

fn flat_one(s: &mut State, b: &'static [u8], key_raw: &[u8], key_escaped: bool, prop: usize) {
    let Some(v) = json::find_member(b, prop, b"value") else {
        return;
    };
    if b[v] == b'{' {
        json::members(b, v, |raw, mv| {
            flat_key(s, key_raw, key_escaped, Some(raw));
            s.out().put(&b[mv..json::skip_value(b, mv)]);
            true
        });
    } else {
        flat_key(s, key_raw, key_escaped, None);
        s.out().put(&b[v..json::skip_value(b, v)]);
    }
}

/// `thingPropertyFlatMap(...)`: each property's `items.P.value` at the top level.
#[no_mangle]
pub extern "C" fn rt_out_flatmap(lp: i32, ll: i32) {
    // Safety: a constant of the rule.
    let list = unsafe { mem::bytes(mem::at(lp), mem::at(ll)) };
    with_state(|s| {
        let b = s.payload();
        let root = json::ws(b, 0);
        let Some(items) = json::find_member(b, root, b"items") else {
            return;
        };
        if b[items] != b'{' {
            return;
        }
        if list.is_empty() {
            json::members(b, items, |raw, p| {
                flat_one(s, b, raw, true, p);
                true
            });
        } else {
            for name in names(list) {
                if let Some(p) = json::find_member(b, items, name) {
                    flat_one(s, b, name, false, p);
                }
            }
        }
    })
}

/// Closes the output object and emits it to every action; returns the import's status.
#[no_mangle]
pub extern "C" fn rt_out_emit() -> i32 {
    with_state(|s| {
        s.out().put(b"}");
        let out = s.out_bytes();
        // Safety: the output is readable memory for the call.
        unsafe { host::emit_output(out.as_ptr(), out.len() as i32) }
    })
}

/// Emits the payload unchanged (`SELECT *` alone).
#[no_mangle]
pub extern "C" fn rt_emit_payload() -> i32 {
    with_state(|s| {
        let p = s.payload();
        // Safety: the payload is readable memory for the call.
        unsafe { host::emit_output(p.as_ptr(), p.len() as i32) }
    })
}
