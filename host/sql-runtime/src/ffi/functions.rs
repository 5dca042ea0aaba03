//! The SQL functions: `rt_f_<name>(argc)` reads its arguments from the `ARGS` slots and returns
//! a tag (bits in `RET`) or `TAG_ERR` after `fail`.

use md5::Digest;

use super::arena::{with_state, State};
use super::host;
use super::ops::arith;
use super::value::{arg, err, f64_of, put_text, put_value, ret, to_num, type_err, V};
use crate::json::Num;
use crate::shared::*;
use crate::text::{self, Sink};

type Fetch = unsafe extern "C" fn(*mut u8, i32) -> i32;

/// A message field from the host (a negative length is empty).
fn fetch(s: &mut State, f: Fetch) -> &'static [u8] {
    // Safety: `host_fill` passes `cap` writable bytes.
    s.host_fill(128, |p, cap| unsafe { f(p, cap) }.max(0))
        .unwrap_or(&[])
}

fn lossy(s: &mut State, b: &'static [u8]) -> &'static [u8] {
    if core::str::from_utf8(b).is_ok() {
        return b;
    }
    let mut out = s.builder();
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
    with_state(|s| {
        let t = fetch(s, host::msg_topic);
        if argc == 0 {
            return ret(V::Str(t));
        }
        let n = match arg(0) {
            V::Int(n) => n,
            other => return type_err(s, b"topic", b"an integer", other),
        };
        let t = t.strip_prefix(b"/").unwrap_or(t);
        match t.split(|&c| c == b'/').nth((n - 1).max(0) as usize) {
            Some(level) if n >= 1 => ret(V::Str(level)),
            _ => ret(V::Undef),
        }
    })
}

/// `deviceName()`.
#[no_mangle]
pub extern "C" fn rt_f_devicename(_argc: i32) -> i32 {
    with_state(|s| ret(V::Str(fetch(s, host::msg_device_name))))
}

/// `productKey()`.
#[no_mangle]
pub extern "C" fn rt_f_productkey(_argc: i32) -> i32 {
    with_state(|s| ret(V::Str(fetch(s, host::msg_product_key))))
}

/// `messageId()`.
#[no_mangle]
pub extern "C" fn rt_f_messageid(_argc: i32) -> i32 {
    with_state(|s| ret(V::Str(fetch(s, host::msg_id))))
}

/// `payload()` / `payload('utf-8')`.
#[no_mangle]
pub extern "C" fn rt_f_payload(_argc: i32) -> i32 {
    with_state(|s| {
        let raw = fetch(s, host::msg_raw_payload);
        ret(V::Str(lossy(s, raw)))
    })
}

fn time(s: &mut State, argc: i32, utc: i32) -> i32 {
    // Safety: an import without arguments.
    let now = unsafe { host::now_ms() };
    if argc == 0 {
        return ret(V::Int(now));
    }
    let pat = match arg(0) {
        V::Str(p) => p,
        other => return type_err(s, b"timestamp", b"a pattern string", other),
    };
    let formatted = s.host_fill(64, |p, cap| {
        // Safety: `host_fill` passes `cap` writable bytes; the pattern is readable.
        unsafe { host::format_time(now, utc, pat.as_ptr(), pat.len() as i32, p, cap) }
    });
    match formatted {
        Some(text) => ret(V::Str(text)),
        None => err(s, &[b"timestamp: bad time pattern '", pat, b"'"]),
    }
}

/// `timestamp()` / `timestamp('pattern')`.
#[no_mangle]
pub extern "C" fn rt_f_timestamp(argc: i32) -> i32 {
    with_state(|s| time(s, argc, 0))
}

/// `timestamp_utc()` / `timestamp_utc('pattern')`.
#[no_mangle]
pub extern "C" fn rt_f_timestamp_utc(argc: i32) -> i32 {
    with_state(|s| time(s, argc, 1))
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // Safety: `b` is N writable bytes.
    unsafe { host::random_fill(b.as_mut_ptr(), N as i32) };
    b
}

/// `newuuid()`: a random (version 4) UUID.
#[no_mangle]
pub extern "C" fn rt_f_newuuid(_argc: i32) -> i32 {
    let mut r = random::<16>();
    r[6] = (r[6] & 0x0f) | 0x40;
    r[8] = (r[8] & 0x3f) | 0x80;
    with_state(|s| {
        let mut b = s.builder();
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
    })
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
    with_state(|s| {
        let key = match arg(0) {
            V::Str(k) => k,
            other => return type_err(s, b"attribute", b"a string", other),
        };
        let tag = s.host_fill(64, |p, cap| {
            // Safety: `host_fill` passes `cap` writable bytes; the key is readable.
            unsafe { host::device_tag(key.as_ptr(), key.len() as i32, p, cap) }
        });
        ret(V::Str(tag.unwrap_or(b"")))
    })
}

/// One numeric argument, or an early return (undefined or a type error).
fn num_arg(s: &mut State, i: usize, func: &[u8]) -> Result<Num, i32> {
    let v = arg(i);
    match to_num(v) {
        Some(n) => Ok(n),
        None if matches!(v, V::Undef) => Err(ret(V::Undef)),
        None => Err(type_err(s, func, b"a number", v)),
    }
}

macro_rules! math1 {
    ($export:ident, $name:literal, $f:path) => {
        #[doc = concat!("`", $name, "(n)`")]
        #[no_mangle]
        pub extern "C" fn $export(_argc: i32) -> i32 {
            with_state(|s| match num_arg(s, 0, $name.as_bytes()) {
                Ok(n) => ret(V::Float($f(f64_of(n)))),
                Err(t) => t,
            })
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
            with_state(|s| match num_arg(s, 0, $name.as_bytes()) {
                Ok(Num::Int(i)) => ret(V::Int(i)),
                Ok(Num::Float(f)) => to_int_if_fits($f(f)),
                Err(t) => t,
            })
        }
    };
}

rounding!(rt_f_floor, "floor", libm::floor);
rounding!(rt_f_ceil, "ceil", libm::ceil);
rounding!(rt_f_round, "round", libm::round);

/// `abs(n)`.
#[no_mangle]
pub extern "C" fn rt_f_abs(_argc: i32) -> i32 {
    with_state(|s| match num_arg(s, 0, b"abs") {
        Ok(Num::Int(i)) => match i.checked_abs() {
            Some(a) => ret(V::Int(a)),
            None => ret(V::Float(-(i as f64))),
        },
        Ok(Num::Float(f)) => ret(V::Float(libm::fabs(f))),
        Err(t) => t,
    })
}

/// `log(n)` (base 10) / `log(n, base)`.
#[no_mangle]
pub extern "C" fn rt_f_log(argc: i32) -> i32 {
    with_state(|s| {
        let n = match num_arg(s, 0, b"log") {
            Ok(n) => f64_of(n),
            Err(t) => return t,
        };
        if argc == 1 {
            return ret(V::Float(libm::log10(n)));
        }
        match num_arg(s, 1, b"log") {
            Ok(b) => ret(V::Float(libm::log(n) / libm::log(f64_of(b)))),
            Err(t) => t,
        }
    })
}

/// `mod(n, m)`: as `%`.
#[no_mangle]
pub extern "C" fn rt_f_mod(_argc: i32) -> i32 {
    with_state(|s| arith(s, OP_MOD, arg(0), arg(1)))
}

/// `power(n, m)`: always a float.
#[no_mangle]
pub extern "C" fn rt_f_power(_argc: i32) -> i32 {
    with_state(|s| {
        let a = match num_arg(s, 0, b"power") {
            Ok(n) => f64_of(n),
            Err(t) => return t,
        };
        match num_arg(s, 1, b"power") {
            Ok(b) => ret(V::Float(libm::pow(a, f64_of(b)))),
            Err(t) => t,
        }
    })
}

/// A string argument: strings as they are, numbers as their text, undefined passes through.
fn str_arg(s: &mut State, i: usize, func: &[u8]) -> Result<&'static [u8], i32> {
    match arg(i) {
        V::Str(t) => Ok(t),
        v @ (V::Int(_) | V::Float(_)) => {
            let mut b = s.builder();
            put_value(&mut b, v);
            Ok(b.bytes())
        }
        V::Undef => Err(ret(V::Undef)),
        other => Err(type_err(s, func, b"a string", other)),
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
    with_state(|s| {
        let mut b = s.builder();
        for i in 0..argc as usize {
            put_text(&mut b, arg(i));
        }
        ret(V::Str(b.bytes()))
    })
}

fn map_case(s: &mut State, upper: bool) -> i32 {
    let func: &[u8] = if upper { b"upper" } else { b"lower" };
    let t = match str_arg(s, 0, func) {
        Ok(t) => t,
        Err(tag) => return tag,
    };
    if t.is_ascii() {
        // One reservation, then the bytes in place (not one `put` per byte).
        let mapped = s.fill(t.len(), |buf| {
            for (d, &c) in buf.iter_mut().zip(t) {
                *d = if upper {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                };
            }
        });
        return ret(V::Str(mapped));
    }
    let mut b = s.builder();
    let text = core::str::from_utf8(t).unwrap_or("");
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
    with_state(|s| map_case(s, false))
}

/// `upper(s)`.
#[no_mangle]
pub extern "C" fn rt_f_upper(_argc: i32) -> i32 {
    with_state(|s| map_case(s, true))
}

/// `replace(s, find, with)`: every occurrence.
#[no_mangle]
pub extern "C" fn rt_f_replace(_argc: i32) -> i32 {
    with_state(|s| {
        let t = match str_arg(s, 0, b"replace") {
            Ok(t) => t,
            Err(tag) => return tag,
        };
        let f = match str_arg(s, 1, b"replace") {
            Ok(f) => f,
            Err(tag) => return tag,
        };
        let w = match str_arg(s, 2, b"replace") {
            Ok(w) => w,
            Err(tag) => return tag,
        };
        if f.is_empty() {
            return ret(V::Str(t));
        }
        let mut b = s.builder();
        let mut rest = t;
        while let Some(p) = text::find(rest, f) {
            b.put(&rest[..p]);
            b.put(w);
            rest = &rest[p + f.len()..];
        }
        b.put(rest);
        ret(V::Str(b.bytes()))
    })
}

fn index_arg(s: &mut State, i: usize) -> Result<i64, i32> {
    match arg(i) {
        V::Int(n) => Ok(n),
        V::Float(f) => Ok(f as i64),
        V::Undef => Err(ret(V::Undef)),
        other => Err(type_err(s, b"substring", b"an integer index", other)),
    }
}

/// `substring(s, start[, end])`: 0-based characters `[start, end)`, clamped.
#[no_mangle]
pub extern "C" fn rt_f_substring(argc: i32) -> i32 {
    with_state(|s| substring(s, argc))
}

fn substring(s: &mut State, argc: i32) -> i32 {
    let t = match arg(0) {
        V::Str(t) => t,
        v @ V::Int(_) => {
            let mut b = s.builder();
            put_value(&mut b, v);
            b.bytes()
        }
        V::Undef => return ret(V::Undef),
        other => return type_err(s, b"substring", b"a string", other),
    };
    let start = match index_arg(s, 1) {
        Ok(n) => n,
        Err(tag) => return tag,
    };
    let text = core::str::from_utf8(t).unwrap_or("");
    let nchars = if t.is_ascii() {
        t.len()
    } else {
        text.chars().count()
    } as i64;
    let end = if argc > 2 {
        match index_arg(s, 2) {
            Ok(n) => n,
            Err(tag) => return tag,
        }
    } else {
        nchars
    };
    let start = start.clamp(0, nchars);
    let end = end.clamp(start, nchars);
    let byte_at = |c: i64| -> usize {
        if t.is_ascii() {
            c as usize
        } else {
            text.char_indices()
                .nth(c as usize)
                .map(|(i, _)| i)
                .unwrap_or(t.len())
        }
    };
    ret(V::Str(&t[byte_at(start)..byte_at(end)]))
}

/// `startswith(s, prefix)`.
#[no_mangle]
pub extern "C" fn rt_f_startswith(_argc: i32) -> i32 {
    with_state(
        |s| match (str_arg(s, 0, b"startswith"), str_arg(s, 1, b"startswith")) {
            (Ok(t), Ok(p)) => ret(V::Bool(t.starts_with(p))),
            (Err(tag), _) | (_, Err(tag)) => tag,
        },
    )
}

/// `endswith(s, suffix)`.
#[no_mangle]
pub extern "C" fn rt_f_endswith(_argc: i32) -> i32 {
    with_state(
        |s| match (str_arg(s, 0, b"endswith"), str_arg(s, 1, b"endswith")) {
            (Ok(t), Ok(p)) => ret(V::Bool(t.ends_with(p))),
            (Err(tag), _) | (_, Err(tag)) => tag,
        },
    )
}

/// `length(s)`: characters.
#[no_mangle]
pub extern "C" fn rt_f_length(_argc: i32) -> i32 {
    with_state(|s| match str_arg(s, 0, b"length") {
        Ok(t) => ret(V::Int(
            core::str::from_utf8(t)
                .map(|t| t.chars().count())
                .unwrap_or(t.len()) as i64,
        )),
        Err(tag) => tag,
    })
}

fn bytes_arg(s: &mut State, i: usize, func: &[u8]) -> Result<&'static [u8], i32> {
    match arg(i) {
        V::Bytes(b) => Ok(b),
        _ => str_arg(s, i, func),
    }
}

/// `to_base64(x)`.
#[no_mangle]
pub extern "C" fn rt_f_to_base64(_argc: i32) -> i32 {
    with_state(|s| match bytes_arg(s, 0, b"to_base64") {
        Ok(d) => {
            let mut b = s.builder();
            text::put_base64(&mut b, d);
            ret(V::Str(b.bytes()))
        }
        Err(tag) => tag,
    })
}

/// `to_hex(x)`.
#[no_mangle]
pub extern "C" fn rt_f_to_hex(_argc: i32) -> i32 {
    with_state(|s| match bytes_arg(s, 0, b"to_hex") {
        Ok(d) => {
            let mut b = s.builder();
            text::put_hex(&mut b, d);
            ret(V::Str(b.bytes()))
        }
        Err(tag) => tag,
    })
}

/// `crypto(x, 'MD5' | 'SHA1' | 'SHA-256' | 'SHA-384' | 'SHA-512')`: lowercase hex.
#[no_mangle]
pub extern "C" fn rt_f_crypto(_argc: i32) -> i32 {
    with_state(|s| {
        let d = match bytes_arg(s, 0, b"crypto") {
            Ok(d) => d,
            Err(tag) => return tag,
        };
        let alg = match arg(1) {
            V::Str(a) => a,
            other => return type_err(s, b"crypto", b"an algorithm name", other),
        };
        let mut b = s.builder();
        let known = match alg {
            b"MD5" => {
                text::put_hex(&mut b, &md5::Md5::digest(d));
                true
            }
            b"SHA1" => {
                text::put_hex(&mut b, &sha1::Sha1::digest(d));
                true
            }
            b"SHA-256" => {
                text::put_hex(&mut b, &sha2::Sha256::digest(d));
                true
            }
            b"SHA-384" => {
                text::put_hex(&mut b, &sha2::Sha384::digest(d));
                true
            }
            b"SHA-512" => {
                text::put_hex(&mut b, &sha2::Sha512::digest(d));
                true
            }
            _ => false,
        };
        if known {
            return ret(V::Str(b.bytes()));
        }
        err(s, &[b"crypto: unknown algorithm '", alg, b"'"])
    })
}
