//! The wasm32 side: arena, `sluice_v1` imports, `rt_*` exports used by generated code.
//!
//! Values cross the boundary as `(tag: i32, bits: i64)`; a helper returns the tag and leaves the
//! bits in `RET` (whose address generated code reads). Function arguments are passed in
//! `ARGS`. Memory: the payload buffer, then a bump arena reset at every message.

#![allow(clippy::missing_safety_doc)]

use core::arch::wasm32;
use core::ptr::{addr_of, addr_of_mut};

use md5::Digest;

use crate::json::{self, Num};
use crate::shared::*;
use crate::text::{self, Sink};

#[link(wasm_import_module = "sluice_v1")]
extern "C" {
    fn msg_topic(ptr: *mut u8, cap: i32) -> i32;
    fn msg_id(ptr: *mut u8, cap: i32) -> i32;
    fn msg_product_key(ptr: *mut u8, cap: i32) -> i32;
    fn msg_device_name(ptr: *mut u8, cap: i32) -> i32;
    fn msg_raw_payload(ptr: *mut u8, cap: i32) -> i32;
    fn now_ms() -> i64;
    fn format_time(ms: i64, utc: i32, pp: *const u8, pl: i32, bp: *mut u8, bc: i32) -> i32;
    fn random_fill(p: *mut u8, l: i32) -> i32;
    fn device_tag(kp: *const u8, kl: i32, bp: *mut u8, bc: i32) -> i32;
    fn emit_output(p: *const u8, l: i32) -> i32;
    fn fail(p: *const u8, l: i32) -> i32;
    fn log(level: i32, p: *const u8, l: i32) -> i32;
}

extern "C" {
    static __heap_base: u8;
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    wasm32::unreachable()
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    tag: i32,
    _pad: i32,
    bits: i64,
}

static mut RET: i64 = 0;
static mut ARGS: [Slot; MAX_ARGS] = [Slot {
    tag: 0,
    _pad: 0,
    bits: 0,
}; MAX_ARGS];
static mut CONSTS: [u8; CONSTS_CAP] = [0; CONSTS_CAP];
/// Where the value of each root member the rule reads starts in the payload (`rt_begin`'s
/// field list, in order); `NO_FIELD` when the payload has no such member.
static mut TOP: [u32; MAX_TOP_FIELDS] = [NO_FIELD; MAX_TOP_FIELDS];
const NO_FIELD: u32 = u32::MAX;

struct State {
    inited: bool,
    top: usize,
    end: usize,
    arena_base: usize,
    pay_ptr: usize,
    pay_cap: usize,
    payload: &'static [u8],
    out_ptr: usize,
    out_len: usize,
    out_cap: usize,
    out_items: u32,
}

static mut ST: State = State {
    inited: false,
    top: 0,
    end: 0,
    arena_base: 0,
    pay_ptr: 0,
    pay_cap: 0,
    payload: &[],
    out_ptr: 0,
    out_len: 0,
    out_cap: 0,
    out_items: 0,
};

#[inline]
fn st() -> &'static mut State {
    // Safety: wasm32 guests are single-threaded and no reference outlives one export call.
    let s = unsafe { &mut *addr_of_mut!(ST) };
    if !s.inited {
        let base = addr_of!(__heap_base) as usize;
        s.top = (base + 15) & !15;
        s.arena_base = s.top;
        s.end = wasm32::memory_size(0) * 65536;
        s.inited = true;
    }
    s
}

fn ensure(n: usize) {
    let s = st();
    if s.top + n > s.end {
        let pages = (s.top + n - s.end).div_ceil(65536);
        if wasm32::memory_grow(0, pages) == usize::MAX {
            wasm32::unreachable();
        }
        s.end += pages * 65536;
    }
}

fn alloc(n: usize) -> usize {
    ensure(n);
    let s = st();
    let p = s.top;
    s.top += n;
    p
}

#[inline]
fn slice(p: usize, n: usize) -> &'static [u8] {
    // Safety: (p, n) always names arena, payload or constant bytes that live until the next
    // message.
    unsafe { core::slice::from_raw_parts(p as *const u8, n) }
}

/// Builds one value at the top of the arena; nothing else may allocate meanwhile.
struct Builder {
    start: usize,
}

impl Builder {
    fn new() -> Self {
        Builder { start: st().top }
    }
    fn bytes(self) -> &'static [u8] {
        let s = st();
        slice(self.start, s.top - self.start)
    }
}

impl Sink for Builder {
    fn put(&mut self, b: &[u8]) {
        ensure(b.len());
        let s = st();
        copy_to(s.top, b);
        s.top += b.len();
    }
}

/// Copies `b` to address `dst`. The output is written in many small pieces; `memory.copy`
/// (what `copy_nonoverlapping` becomes) is a call out of the sandbox in wasmtime, dearer than
/// a few word moves for those, so short pieces are moved by hand.
#[inline]
fn copy_to(dst: usize, b: &[u8]) {
    if b.len() > 32 {
        // Safety: the caller reserved `b.len()` bytes at `dst`; arena and source never overlap.
        unsafe { core::ptr::copy_nonoverlapping(b.as_ptr(), dst as *mut u8, b.len()) };
        return;
    }
    let mut i = 0;
    while let Some(chunk) = b.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        // Safety: as above; unaligned stores are fine in Wasm.
        unsafe { core::ptr::write_unaligned((dst + i) as *mut [u8; 8], *chunk) };
        i += 8;
    }
    while i < b.len() {
        // Safety: as above.
        unsafe { *((dst + i) as *mut u8) = b[i] };
        i += 1;
    }
}

/// The output object under construction.
struct Out;

impl Sink for Out {
    fn put(&mut self, b: &[u8]) {
        let s = st();
        if s.out_len + b.len() > s.out_cap {
            let cap = (s.out_cap * 2).max(s.out_len + b.len()).max(512);
            let p = alloc(cap);
            unsafe {
                core::ptr::copy_nonoverlapping(s.out_ptr as *const u8, p as *mut u8, s.out_len)
            };
            s.out_ptr = p;
            s.out_cap = cap;
        }
        copy_to(s.out_ptr + s.out_len, b);
        s.out_len += b.len();
    }
}

#[derive(Clone, Copy)]
enum V {
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
    slice(bits as u32 as usize, (bits as u64 >> 32) as usize)
}

fn pack(b: &[u8]) -> i64 {
    ((b.len() as u64) << 32 | b.as_ptr() as usize as u64) as i64
}

fn val(tag: i32, bits: i64) -> V {
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

fn ret(v: V) -> i32 {
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
    unsafe { RET = bits };
    tag
}

fn type_name(v: V) -> &'static [u8] {
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
fn err(parts: &[&[u8]]) -> i32 {
    let mut b = Builder::new();
    for p in parts {
        b.put(p);
    }
    let m = b.bytes();
    unsafe { fail(m.as_ptr(), m.len() as i32) };
    TAG_ERR
}

fn type_err(func: &[u8], want: &[u8], got: V) -> i32 {
    err(&[func, b": expected ", want, b", got ", type_name(got)])
}

fn put_value(out: &mut (impl Sink + ?Sized), v: V) {
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
fn put_text(out: &mut (impl Sink + ?Sized), v: V) {
    match v {
        V::Str(s) => out.put(s),
        other => put_value(out, other),
    }
}

fn to_num(v: V) -> Option<Num> {
    match v {
        V::Int(i) => Some(Num::Int(i)),
        V::Float(f) => Some(Num::Float(f)),
        V::Str(s) => json::parse_number(s),
        _ => None,
    }
}

fn arg(i: usize) -> V {
    let s = unsafe { core::ptr::read_volatile(addr_of!(ARGS[i])) };
    val(s.tag, s.bits)
}

fn payload() -> &'static [u8] {
    st().payload
}

// ---------------------------------------------------------------- ABI exports

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
    let s = st();
    let size = size as usize;
    if size > s.pay_cap {
        let cap = size.max(4096).next_power_of_two();
        s.top = s.arena_base;
        let p = alloc(cap);
        s.pay_ptr = p;
        s.pay_cap = cap;
        s.arena_base = s.top;
    }
    s.pay_ptr as i32
}

// ---------------------------------------------------------------- addresses

/// Address of the return-bits slot.
#[no_mangle]
pub extern "C" fn rt_ret_addr() -> i32 {
    addr_of!(RET) as i32
}

/// Address of the argument area.
#[no_mangle]
pub extern "C" fn rt_args_addr() -> i32 {
    addr_of!(ARGS) as i32
}

/// Address of the constants area the compiler fills with a data segment.
#[no_mangle]
pub extern "C" fn rt_consts_addr() -> i32 {
    addr_of!(CONSTS) as i32
}

// ---------------------------------------------------------------- message

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
    let s = st();
    s.top = s.arena_base;
    s.out_len = 0;
    s.out_cap = 0;
    s.out_items = 0;
    s.payload = slice(ptr as u32 as usize, len as u32 as usize);
    if is_json == 0 {
        return 1;
    }
    let fields = slice(fields_ptr as u32 as usize, fields_len as u32 as usize);
    // Safety: wasm32 guests are single-threaded and no other reference to TOP is live.
    let top = unsafe { &mut *addr_of_mut!(TOP) };
    let mut wanted = 0;
    for slot in top.iter_mut().zip(names(fields)) {
        *slot.0 = NO_FIELD;
        wanted += 1;
    }
    let mut missing = wanted;
    let valid = json::validate_object_with(s.payload, |raw, escaped, v| {
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
        unsafe {
            log(
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
    unsafe { fail(ptr as usize as *const u8, len) };
    TAG_ERR
}

fn value_at(b: &'static [u8], i: usize) -> V {
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
                let mut bl = Builder::new();
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

fn walk(b: &'static [u8], desc: &[u8]) -> Option<usize> {
    let (mut i, mut d) = if desc[0] & PATH_TOP != 0 {
        let k = u16::from_le_bytes([desc[1], desc[2]]) as usize;
        // Safety: wasm32 guests are single-threaded; `rt_begin` filled the slot this message.
        let at = unsafe { (*addr_of!(TOP))[k] };
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
    let desc = slice(desc_ptr as usize, desc_len as usize);
    let b = payload();
    let Some(i) = walk(b, desc) else {
        return ret(V::Undef);
    };
    if desc[0] & PATH_WRAP != 0 {
        let raw = &b[i..json::skip_value(b, i)];
        let mut bl = Builder::new();
        bl.put(b"[");
        bl.put(raw);
        bl.put(b"]");
        return ret(V::Json(bl.bytes()));
    }
    ret(value_at(b, i))
}

// ---------------------------------------------------------------- operators

fn cmp_num(op: i32, a: Num, b: Num) -> bool {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => match op {
            CMP_EQ => x == y,
            CMP_NE => x != y,
            CMP_LT => x < y,
            CMP_LE => x <= y,
            CMP_GT => x > y,
            _ => x >= y,
        },
        _ => {
            let f = |n| match n {
                Num::Int(i) => i as f64,
                Num::Float(f) => f,
            };
            let (x, y) = (f(a), f(b));
            match op {
                CMP_EQ => x == y,
                CMP_NE => x != y,
                CMP_LT => x < y,
                CMP_LE => x <= y,
                CMP_GT => x > y,
                _ => x >= y,
            }
        }
    }
}

fn compare(op: i32, a: V, b: V) -> bool {
    match (a, b) {
        (V::Int(_) | V::Float(_) | V::Str(_), V::Int(_) | V::Float(_))
        | (V::Int(_) | V::Float(_), V::Str(_)) => match (to_num(a), to_num(b)) {
            (Some(x), Some(y)) => cmp_num(op, x, y),
            _ => false,
        },
        (V::Str(x), V::Str(y)) => match op {
            CMP_EQ => x == y,
            CMP_NE => x != y,
            CMP_LT => x < y,
            CMP_LE => x <= y,
            CMP_GT => x > y,
            _ => x >= y,
        },
        (V::Bool(x), V::Bool(y)) => match op {
            CMP_EQ => x == y,
            CMP_NE => x != y,
            _ => false,
        },
        (V::Null, V::Null) => op == CMP_EQ,
        _ => false,
    }
}

/// Compares two values (all the coercion rules); returns 0 or 1.
#[no_mangle]
pub extern "C" fn rt_cmp(op: i32, ta: i32, ba: i64, tb: i32, bb: i64) -> i32 {
    compare(op, val(ta, ba), val(tb, bb)) as i32
}

fn op_name(op: i32) -> &'static [u8] {
    match op {
        OP_ADD => b"+",
        OP_SUB | OP_NEG => b"-",
        OP_MUL => b"*",
        OP_DIV => b"/",
        _ => b"%",
    }
}

fn arith(op: i32, a: V, b: V) -> i32 {
    if matches!(a, V::Undef) || (op != OP_NEG && matches!(b, V::Undef)) {
        return ret(V::Undef);
    }
    let Some(x) = to_num(a) else {
        return err(&[b"cannot apply '", op_name(op), b"' to ", type_name(a)]);
    };
    if op == OP_NEG {
        return match x {
            Num::Int(i) => match i.checked_neg() {
                Some(n) => ret(V::Int(n)),
                None => ret(V::Float(-(i as f64))),
            },
            Num::Float(f) => ret(V::Float(-f)),
        };
    }
    let Some(y) = to_num(b) else {
        return err(&[b"cannot apply '", op_name(op), b"' to ", type_name(b)]);
    };
    if let (Num::Int(x), Num::Int(y)) = (x, y) {
        let r = match op {
            OP_ADD => x.checked_add(y),
            OP_SUB => x.checked_sub(y),
            OP_MUL => x.checked_mul(y),
            OP_DIV => {
                if y == 0 {
                    return err(&[b"division by zero"]);
                }
                match x.checked_rem(y) {
                    Some(0) => Some(x / y),
                    _ => None,
                }
            }
            _ => {
                if y == 0 {
                    return err(&[b"modulo by zero"]);
                }
                Some(x.checked_rem(y).unwrap_or(0))
            }
        };
        if let Some(r) = r {
            return ret(V::Int(r));
        }
    }
    let f = |n| match n {
        Num::Int(i) => i as f64,
        Num::Float(f) => f,
    };
    let (x, y) = (f(x), f(y));
    let r = match op {
        OP_ADD => x + y,
        OP_SUB => x - y,
        OP_MUL => x * y,
        OP_DIV => {
            if y == 0.0 {
                return err(&[b"division by zero"]);
            }
            x / y
        }
        _ => {
            if y == 0.0 {
                return err(&[b"modulo by zero"]);
            }
            libm::fmod(x, y)
        }
    };
    ret(V::Float(r))
}

/// Arithmetic on any two values; returns the tag (bits in RET) or `TAG_ERR`.
#[no_mangle]
pub extern "C" fn rt_arith(op: i32, ta: i32, ba: i64, tb: i32, bb: i64) -> i32 {
    arith(op, val(ta, ba), val(tb, bb))
}

/// `LIKE` against a constant pattern; 0 or 1.
#[no_mangle]
pub extern "C" fn rt_like(ta: i32, ba: i64, pp: i32, pl: i32) -> i32 {
    let pat = slice(pp as usize, pl as usize);
    match val(ta, ba) {
        V::Str(s) => text::like(s, pat) as i32,
        v @ (V::Int(_) | V::Float(_)) => {
            let top = st().top;
            let mut b = Builder::new();
            put_value(&mut b, v);
            let r = text::like(b.bytes(), pat) as i32;
            st().top = top;
            r
        }
        _ => 0,
    }
}

// ---------------------------------------------------------------- output

/// Starts the output object.
#[no_mangle]
pub extern "C" fn rt_out_begin() {
    let s = st();
    s.out_len = 0;
    s.out_items = 0;
    Out.put(b"{");
}

fn sep() {
    let s = st();
    if s.out_items > 0 {
        Out.put(b",");
    }
    s.out_items += 1;
}

/// Writes one member; `key` is pre-encoded as `"name":`. Undefined values are left out.
#[no_mangle]
pub extern "C" fn rt_out_item(kp: i32, kl: i32, tag: i32, bits: i64) {
    if tag == TAG_UNDEF || tag == TAG_NONE {
        return;
    }
    sep();
    Out.put(slice(kp as usize, kl as usize));
    put_value(&mut Out, val(tag, bits));
}

fn names(list: &'static [u8]) -> impl Iterator<Item = &'static [u8]> {
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

fn raw_key_eq(raw: &[u8], key: &[u8]) -> bool {
    if !raw.contains(&b'\\') {
        return raw == key;
    }
    let top = st().top;
    let mut b = Builder::new();
    json::unescape(raw, &mut b);
    let r = b.bytes() == key;
    st().top = top;
    r
}

/// Copies the payload's members (`*`), leaving out the names in the list (overridden later).
#[no_mangle]
pub extern "C" fn rt_out_star(lp: i32, ll: i32) {
    let b = payload();
    let root = json::ws(b, 0);
    let list = slice(lp as usize, ll as usize);
    if list.is_empty() {
        let end = json::skip_value(b, root);
        let inner = &b[root + 1..end - 1];
        let start = json::ws(inner, 0);
        if start < inner.len() {
            sep();
            Out.put(&inner[start..]);
        }
        return;
    }
    json::members(b, root, |raw, v| {
        if !names(list).any(|n| raw_key_eq(raw, n)) {
            sep();
            Out.put(b"\"");
            Out.put(raw);
            Out.put(b"\":");
            Out.put(&b[v..json::skip_value(b, v)]);
        }
        true
    });
}

fn flat_one(b: &'static [u8], key_raw: &[u8], key_escaped: bool, prop: usize) {
    let Some(v) = json::find_member(b, prop, b"value") else {
        return;
    };
    let put_key = |suffix: Option<&[u8]>| {
        sep();
        Out.put(b"\"");
        if key_escaped {
            Out.put(key_raw);
        } else {
            let mut tmp = Builder::new();
            text::put_json_str(&mut tmp, key_raw);
            let q = tmp.bytes();
            Out.put(&q[1..q.len() - 1]);
        }
        if let Some(s) = suffix {
            Out.put(b"_");
            Out.put(s);
        }
        Out.put(b"\":");
    };
    if b[v] == b'{' {
        json::members(b, v, |raw, mv| {
            put_key(Some(raw));
            Out.put(&b[mv..json::skip_value(b, mv)]);
            true
        });
    } else {
        put_key(None);
        Out.put(&b[v..json::skip_value(b, v)]);
    }
}

/// `thingPropertyFlatMap(...)`: each property's `items.P.value` at the top level.
#[no_mangle]
pub extern "C" fn rt_out_flatmap(lp: i32, ll: i32) {
    let b = payload();
    let root = json::ws(b, 0);
    let Some(items) = json::find_member(b, root, b"items") else {
        return;
    };
    if b[items] != b'{' {
        return;
    }
    let list = slice(lp as usize, ll as usize);
    if list.is_empty() {
        json::members(b, items, |raw, p| {
            flat_one(b, raw, true, p);
            true
        });
    } else {
        for name in names(list) {
            if let Some(p) = json::find_member(b, items, name) {
                flat_one(b, name, false, p);
            }
        }
    }
}

/// Closes the output object and emits it to every action; returns the import's status.
#[no_mangle]
pub extern "C" fn rt_out_emit() -> i32 {
    Out.put(b"}");
    let s = st();
    unsafe { emit_output(s.out_ptr as *const u8, s.out_len as i32) }
}

/// Emits the payload unchanged (`SELECT *` alone).
#[no_mangle]
pub extern "C" fn rt_emit_payload() -> i32 {
    let p = payload();
    unsafe { emit_output(p.as_ptr(), p.len() as i32) }
}

// ---------------------------------------------------------------- functions

type Fetch = unsafe extern "C" fn(*mut u8, i32) -> i32;

fn fetch(f: Fetch) -> &'static [u8] {
    let mut cap = 128usize;
    loop {
        let p = alloc(cap);
        let n = unsafe { f(p as *mut u8, cap as i32) };
        let n = n.max(0) as usize;
        if n <= cap {
            st().top = p + n;
            return slice(p, n);
        }
        st().top = p;
        cap = n;
    }
}

fn lossy(b: &'static [u8]) -> &'static [u8] {
    if core::str::from_utf8(b).is_ok() {
        return b;
    }
    let mut out = Builder::new();
    for chunk in b.utf8_chunks() {
        out.put(chunk.valid().as_bytes());
        if !chunk.invalid().is_empty() {
            out.put("\u{FFFD}".as_bytes());
        }
    }
    out.bytes()
}

/// `topic()` / `topic(n)`.
#[no_mangle]
pub extern "C" fn rt_f_topic(argc: i32) -> i32 {
    let t = fetch(msg_topic);
    if argc == 0 {
        return ret(V::Str(t));
    }
    let n = match arg(0) {
        V::Int(n) => n,
        other => return type_err(b"topic", b"an integer", other),
    };
    let t = t.strip_prefix(b"/").unwrap_or(t);
    match t.split(|&c| c == b'/').nth((n - 1).max(0) as usize) {
        Some(level) if n >= 1 => ret(V::Str(level)),
        _ => ret(V::Undef),
    }
}

/// `deviceName()`.
#[no_mangle]
pub extern "C" fn rt_f_devicename(_argc: i32) -> i32 {
    ret(V::Str(fetch(msg_device_name)))
}

/// `productKey()`.
#[no_mangle]
pub extern "C" fn rt_f_productkey(_argc: i32) -> i32 {
    ret(V::Str(fetch(msg_product_key)))
}

/// `messageId()`.
#[no_mangle]
pub extern "C" fn rt_f_messageid(_argc: i32) -> i32 {
    ret(V::Str(fetch(msg_id)))
}

/// `payload()` / `payload('utf-8')`.
#[no_mangle]
pub extern "C" fn rt_f_payload(_argc: i32) -> i32 {
    ret(V::Str(lossy(fetch(msg_raw_payload))))
}

fn time(argc: i32, utc: i32) -> i32 {
    let now = unsafe { now_ms() };
    if argc == 0 {
        return ret(V::Int(now));
    }
    let pat = match arg(0) {
        V::Str(s) => s,
        other => return type_err(b"timestamp", b"a pattern string", other),
    };
    let mut cap = 64usize;
    loop {
        let p = alloc(cap);
        let n = unsafe {
            format_time(
                now,
                utc,
                pat.as_ptr(),
                pat.len() as i32,
                p as *mut u8,
                cap as i32,
            )
        };
        if n < 0 {
            return err(&[b"timestamp: bad time pattern '", pat, b"'"]);
        }
        let n = n as usize;
        if n <= cap {
            st().top = p + n;
            return ret(V::Str(slice(p, n)));
        }
        st().top = p;
        cap = n;
    }
}

/// `timestamp()` / `timestamp('pattern')`.
#[no_mangle]
pub extern "C" fn rt_f_timestamp(argc: i32) -> i32 {
    time(argc, 0)
}

/// `timestamp_utc()` / `timestamp_utc('pattern')`.
#[no_mangle]
pub extern "C" fn rt_f_timestamp_utc(argc: i32) -> i32 {
    time(argc, 1)
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    unsafe { random_fill(b.as_mut_ptr(), N as i32) };
    b
}

/// `newuuid()`: a random (version 4) UUID.
#[no_mangle]
pub extern "C" fn rt_f_newuuid(_argc: i32) -> i32 {
    let mut r = random::<16>();
    r[6] = (r[6] & 0x0f) | 0x40;
    r[8] = (r[8] & 0x3f) | 0x80;
    let mut b = Builder::new();
    for (i, part) in [&r[0..4], &r[4..6], &r[6..8], &r[8..10], &r[10..16]]
        .iter()
        .enumerate()
    {
        if i > 0 {
            b.put(b"-");
        }
        text::put_hex(&mut b, part);
    }
    ret(V::Str(b.bytes()))
}

/// `rand()`: a float in [0, 1).
#[no_mangle]
pub extern "C" fn rt_f_rand(_argc: i32) -> i32 {
    let r = u64::from_le_bytes(random::<8>());
    ret(V::Float((r >> 11) as f64 * (1.0 / (1u64 << 53) as f64)))
}

/// `attribute('key')`: a device tag, "" when absent.
#[no_mangle]
pub extern "C" fn rt_f_attribute(_argc: i32) -> i32 {
    let key = match arg(0) {
        V::Str(s) => s,
        other => return type_err(b"attribute", b"a string", other),
    };
    let mut cap = 64usize;
    loop {
        let p = alloc(cap);
        let n = unsafe { device_tag(key.as_ptr(), key.len() as i32, p as *mut u8, cap as i32) };
        if n < 0 {
            st().top = p;
            return ret(V::Str(b""));
        }
        let n = n as usize;
        if n <= cap {
            st().top = p + n;
            return ret(V::Str(slice(p, n)));
        }
        st().top = p;
        cap = n;
    }
}

fn f64_of(n: Num) -> f64 {
    match n {
        Num::Int(i) => i as f64,
        Num::Float(f) => f,
    }
}

/// One numeric argument, or an early return (undefined or a type error).
fn num_arg(i: usize, func: &[u8]) -> Result<Num, i32> {
    let v = arg(i);
    match to_num(v) {
        Some(n) => Ok(n),
        None if matches!(v, V::Undef) => Err(ret(V::Undef)),
        None => Err(type_err(func, b"a number", v)),
    }
}

macro_rules! math1 {
    ($export:ident, $name:literal, $f:path) => {
        #[doc = concat!("`", $name, "(n)`")]
        #[no_mangle]
        pub extern "C" fn $export(_argc: i32) -> i32 {
            match num_arg(0, $name.as_bytes()) {
                Ok(n) => ret(V::Float($f(f64_of(n)))),
                Err(t) => t,
            }
        }
    };
}

math1!(rt_f_asin, "asin", libm::asin);
math1!(rt_f_cos, "cos", libm::cos);
math1!(rt_f_cosh, "cosh", libm::cosh);
math1!(rt_f_exp, "exp", libm::exp);
math1!(rt_f_sin, "sin", libm::sin);
math1!(rt_f_sinh, "sinh", libm::sinh);
math1!(rt_f_tan, "tan", libm::tan);
math1!(rt_f_tanh, "tanh", libm::tanh);
math1!(rt_f_sqrt, "sqrt", libm::sqrt);
math1!(rt_f_ln, "ln", libm::log);

fn to_int_if_fits(f: f64) -> i32 {
    if f.is_finite() && (-9.2e18..9.2e18).contains(&f) {
        ret(V::Int(f as i64))
    } else {
        ret(V::Float(f))
    }
}

macro_rules! rounding {
    ($export:ident, $name:literal, $f:path) => {
        #[doc = concat!("`", $name, "(n)`: an integer stays; a float becomes an integer when it fits")]
        #[no_mangle]
        pub extern "C" fn $export(_argc: i32) -> i32 {
            match num_arg(0, $name.as_bytes()) {
                Ok(Num::Int(i)) => ret(V::Int(i)),
                Ok(Num::Float(f)) => to_int_if_fits($f(f)),
                Err(t) => t,
            }
        }
    };
}

rounding!(rt_f_floor, "floor", libm::floor);
rounding!(rt_f_ceil, "ceil", libm::ceil);
rounding!(rt_f_round, "round", libm::round);

/// `abs(n)`.
#[no_mangle]
pub extern "C" fn rt_f_abs(_argc: i32) -> i32 {
    match num_arg(0, b"abs") {
        Ok(Num::Int(i)) => match i.checked_abs() {
            Some(a) => ret(V::Int(a)),
            None => ret(V::Float(-(i as f64))),
        },
        Ok(Num::Float(f)) => ret(V::Float(libm::fabs(f))),
        Err(t) => t,
    }
}

/// `log(n)` (base 10) / `log(n, base)`.
#[no_mangle]
pub extern "C" fn rt_f_log(argc: i32) -> i32 {
    let n = match num_arg(0, b"log") {
        Ok(n) => f64_of(n),
        Err(t) => return t,
    };
    if argc == 1 {
        return ret(V::Float(libm::log10(n)));
    }
    match num_arg(1, b"log") {
        Ok(b) => ret(V::Float(libm::log(n) / libm::log(f64_of(b)))),
        Err(t) => t,
    }
}

/// `mod(n, m)`: as `%`.
#[no_mangle]
pub extern "C" fn rt_f_mod(_argc: i32) -> i32 {
    arith(OP_MOD, arg(0), arg(1))
}

/// `power(n, m)`: always a float.
#[no_mangle]
pub extern "C" fn rt_f_power(_argc: i32) -> i32 {
    let a = match num_arg(0, b"power") {
        Ok(n) => f64_of(n),
        Err(t) => return t,
    };
    match num_arg(1, b"power") {
        Ok(b) => ret(V::Float(libm::pow(a, f64_of(b)))),
        Err(t) => t,
    }
}

/// A string argument: strings as they are, numbers as their text, undefined passes through.
fn str_arg(i: usize, func: &[u8]) -> Result<&'static [u8], i32> {
    match arg(i) {
        V::Str(s) => Ok(s),
        v @ (V::Int(_) | V::Float(_)) => {
            let mut b = Builder::new();
            put_value(&mut b, v);
            Ok(b.bytes())
        }
        V::Undef => Err(ret(V::Undef)),
        other => Err(type_err(func, b"a string", other)),
    }
}

/// `concat(a, b, ...)`: the text of every argument; undefined when one is undefined.
#[no_mangle]
pub extern "C" fn rt_f_concat(argc: i32) -> i32 {
    for i in 0..argc as usize {
        if let V::Bytes(_) | V::Undef = arg(i) {
            return ret(V::Undef);
        }
    }
    let mut b = Builder::new();
    for i in 0..argc as usize {
        put_text(&mut b, arg(i));
    }
    ret(V::Str(b.bytes()))
}

fn map_case(upper: bool) -> i32 {
    let func: &[u8] = if upper { b"upper" } else { b"lower" };
    let s = match str_arg(0, func) {
        Ok(s) => s,
        Err(t) => return t,
    };
    if s.is_ascii() {
        // One reservation, then the bytes in place (not one `put` per byte).
        let p = alloc(s.len());
        for (k, &c) in s.iter().enumerate() {
            let mapped = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            // Safety: `alloc` reserved `s.len()` bytes at `p`.
            unsafe { *((p + k) as *mut u8) = mapped };
        }
        return ret(V::Str(slice(p, s.len())));
    }
    let mut b = Builder::new();
    let text = core::str::from_utf8(s).unwrap_or("");
    let mut tmp = [0u8; 4];
    for ch in text.chars() {
        if upper {
            for u in ch.to_uppercase() {
                b.put(u.encode_utf8(&mut tmp).as_bytes());
            }
        } else {
            for u in ch.to_lowercase() {
                b.put(u.encode_utf8(&mut tmp).as_bytes());
            }
        }
    }
    ret(V::Str(b.bytes()))
}

/// `lower(s)`.
#[no_mangle]
pub extern "C" fn rt_f_lower(_argc: i32) -> i32 {
    map_case(false)
}

/// `upper(s)`.
#[no_mangle]
pub extern "C" fn rt_f_upper(_argc: i32) -> i32 {
    map_case(true)
}

/// `replace(s, find, with)`: every occurrence.
#[no_mangle]
pub extern "C" fn rt_f_replace(_argc: i32) -> i32 {
    let s = match str_arg(0, b"replace") {
        Ok(s) => s,
        Err(t) => return t,
    };
    let f = match str_arg(1, b"replace") {
        Ok(s) => s,
        Err(t) => return t,
    };
    let w = match str_arg(2, b"replace") {
        Ok(s) => s,
        Err(t) => return t,
    };
    if f.is_empty() {
        return ret(V::Str(s));
    }
    let mut b = Builder::new();
    let mut rest = s;
    while let Some(p) = text::find(rest, f) {
        b.put(&rest[..p]);
        b.put(w);
        rest = &rest[p + f.len()..];
    }
    b.put(rest);
    ret(V::Str(b.bytes()))
}

fn index_arg(i: usize) -> Result<i64, i32> {
    match arg(i) {
        V::Int(n) => Ok(n),
        V::Float(f) => Ok(f as i64),
        V::Undef => Err(ret(V::Undef)),
        other => Err(type_err(b"substring", b"an integer index", other)),
    }
}

/// `substring(s, start[, end])`: 0-based characters `[start, end)`, clamped.
#[no_mangle]
pub extern "C" fn rt_f_substring(argc: i32) -> i32 {
    let s = match arg(0) {
        V::Str(s) => s,
        v @ V::Int(_) => {
            let mut b = Builder::new();
            put_value(&mut b, v);
            b.bytes()
        }
        V::Undef => return ret(V::Undef),
        other => return type_err(b"substring", b"a string", other),
    };
    let start = match index_arg(1) {
        Ok(n) => n,
        Err(t) => return t,
    };
    let text = core::str::from_utf8(s).unwrap_or("");
    let nchars = if s.is_ascii() {
        s.len()
    } else {
        text.chars().count()
    } as i64;
    let end = if argc > 2 {
        match index_arg(2) {
            Ok(n) => n,
            Err(t) => return t,
        }
    } else {
        nchars
    };
    let start = start.clamp(0, nchars);
    let end = end.clamp(start, nchars);
    let byte_at = |c: i64| -> usize {
        if s.is_ascii() {
            c as usize
        } else {
            text.char_indices()
                .nth(c as usize)
                .map(|(i, _)| i)
                .unwrap_or(s.len())
        }
    };
    ret(V::Str(&s[byte_at(start)..byte_at(end)]))
}

/// `startswith(s, prefix)`.
#[no_mangle]
pub extern "C" fn rt_f_startswith(_argc: i32) -> i32 {
    match (str_arg(0, b"startswith"), str_arg(1, b"startswith")) {
        (Ok(s), Ok(p)) => ret(V::Bool(s.starts_with(p))),
        (Err(t), _) | (_, Err(t)) => t,
    }
}

/// `endswith(s, suffix)`.
#[no_mangle]
pub extern "C" fn rt_f_endswith(_argc: i32) -> i32 {
    match (str_arg(0, b"endswith"), str_arg(1, b"endswith")) {
        (Ok(s), Ok(p)) => ret(V::Bool(s.ends_with(p))),
        (Err(t), _) | (_, Err(t)) => t,
    }
}

/// `length(s)`: characters.
#[no_mangle]
pub extern "C" fn rt_f_length(_argc: i32) -> i32 {
    match str_arg(0, b"length") {
        Ok(s) => ret(V::Int(
            core::str::from_utf8(s)
                .map(|t| t.chars().count())
                .unwrap_or(s.len()) as i64,
        )),
        Err(t) => t,
    }
}

fn bytes_arg(i: usize, func: &[u8]) -> Result<&'static [u8], i32> {
    match arg(i) {
        V::Bytes(b) => Ok(b),
        _ => str_arg(i, func),
    }
}

/// `to_base64(x)`.
#[no_mangle]
pub extern "C" fn rt_f_to_base64(_argc: i32) -> i32 {
    match bytes_arg(0, b"to_base64") {
        Ok(d) => {
            let mut b = Builder::new();
            text::put_base64(&mut b, d);
            ret(V::Str(b.bytes()))
        }
        Err(t) => t,
    }
}

/// `to_hex(x)`.
#[no_mangle]
pub extern "C" fn rt_f_to_hex(_argc: i32) -> i32 {
    match bytes_arg(0, b"to_hex") {
        Ok(d) => {
            let mut b = Builder::new();
            text::put_hex(&mut b, d);
            ret(V::Str(b.bytes()))
        }
        Err(t) => t,
    }
}

/// `crypto(x, 'MD5' | 'SHA1' | 'SHA-256' | 'SHA-384' | 'SHA-512')`: lowercase hex.
#[no_mangle]
pub extern "C" fn rt_f_crypto(_argc: i32) -> i32 {
    let d = match bytes_arg(0, b"crypto") {
        Ok(d) => d,
        Err(t) => return t,
    };
    let alg = match arg(1) {
        V::Str(s) => s,
        other => return type_err(b"crypto", b"an algorithm name", other),
    };
    let mut b = Builder::new();
    match alg {
        b"MD5" => text::put_hex(&mut b, &md5::Md5::digest(d)),
        b"SHA1" => text::put_hex(&mut b, &sha1::Sha1::digest(d)),
        b"SHA-256" => text::put_hex(&mut b, &sha2::Sha256::digest(d)),
        b"SHA-384" => text::put_hex(&mut b, &sha2::Sha384::digest(d)),
        b"SHA-512" => text::put_hex(&mut b, &sha2::Sha512::digest(d)),
        _ => return err(&[b"crypto: unknown algorithm '", alg, b"'"]),
    }
    ret(V::Str(b.bytes()))
}
