//! The exports that frame a message: the ABI version, the payload buffer, the slot addresses
//! generated code uses, `rt_begin` (validation and the root-member index) and `rt_fail`.

use super::arena::{with_state, State, NO_FIELD};
use super::host;
use super::mem;
use crate::json;
use crate::shared::*;

/// ABI v1.
#[no_mangle]
pub extern "C" fn sluice_abi_version() -> i32 {
    1
}

/// The payload buffer; reused while large enough.
#[no_mangle]
pub extern "C" fn sluice_alloc(size: i32) -> i32 {
    if size < 0 {
        return 0;
    }
    with_state(|s| s.payload_buffer(size as usize) as i32)
}

/// Address of the return-bits slot.
#[no_mangle]
pub extern "C" fn rt_ret_addr() -> i32 {
    mem::ret_addr() as i32
}

/// Address of the argument area.
#[no_mangle]
pub extern "C" fn rt_args_addr() -> i32 {
    mem::args_addr() as i32
}

/// Address of the constants area the compiler fills with a data segment.
#[no_mangle]
pub extern "C" fn rt_consts_addr() -> i32 {
    mem::consts_addr() as i32
}

/// The names of a `names`-format list (u16 LE length, then the bytes, repeated).
pub(crate) fn names(list: &'static [u8]) -> impl Iterator<Item = &'static [u8]> {
    let mut i = 0;
    core::iter::from_fn(move || {
        if i + 2 > list.len() {
            return None;
        }
        let n = u16::from_le_bytes([list[i], list[i + 1]]) as usize;
        let name = &list[i + 2..i + 2 + n];
        i += 2 + n;
        Some(name)
    })
}

/// Starts a message: resets the arena; for json rules validates the payload and, in the same
/// pass, finds the root members named in the field list (`names` format, at most
/// `MAX_TOP_FIELDS`) so paths starting there need no scan. Returns 1 when the rule should run,
/// 0 for an invalid payload (logged at debug level).
#[no_mangle]
pub extern "C" fn rt_begin(
    ptr: i32,
    len: i32,
    is_json: i32,
    fields_ptr: i32,
    fields_len: i32,
) -> i32 {
    with_state(|s| begin(s, ptr, len, is_json, fields_ptr, fields_len))
}

fn begin(s: &mut State, ptr: i32, len: i32, is_json: i32, fields_ptr: i32, fields_len: i32) -> i32 {
    s.begin(mem::at(ptr), mem::at(len));
    if is_json == 0 {
        return 1;
    }
    // Safety: a constant of the rule.
    let fields = unsafe { mem::bytes(mem::at(fields_ptr), mem::at(fields_len)) };
    let payload = s.payload();
    let top = &mut s.fields;
    let mut wanted = 0;
    for slot in top.iter_mut().zip(names(fields)) {
        *slot.0 = NO_FIELD;
        wanted += 1;
    }
    let mut missing = wanted;
    let valid = json::validate_object_with(payload, |raw, escaped, v| {
        if missing == 0 {
            return;
        }
        for (k, name) in names(fields).take(MAX_TOP_FIELDS).enumerate() {
            let hit = if escaped {
                json::key_eq(raw, name)
            } else {
                json::same_bytes(raw, name)
            };
            if hit {
                // The first member of a name wins, as in the scanner (`json::find_member`).
                if top[k] == NO_FIELD {
                    top[k] = v as u32;
                    missing -= 1;
                }
                return;
            }
        }
    });
    if !valid {
        // Safety: a constant string.
        unsafe {
            host::log(
                3,
                INVALID_PAYLOAD_LOG.as_ptr(),
                INVALID_PAYLOAD_LOG.len() as i32,
            )
        };
        return 0;
    }
    1
}

/// Fails the message with a constant message; returns `TAG_ERR`.
#[no_mangle]
pub extern "C" fn rt_fail(ptr: i32, len: i32) -> i32 {
    // Safety: the host reads the constant (and checks the range itself).
    unsafe { host::fail(mem::ptr(mem::at(ptr)), len) };
    TAG_ERR
}
