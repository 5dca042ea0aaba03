//! The operators' slow paths: comparison and arithmetic with every coercion rule, and `LIKE`.

use super::arena::{with_state, State};
use super::mem;
use super::value::{err, f64_of, put_value, ret, to_num, type_name, val, V};
use crate::json::Num;
use crate::shared::*;
use crate::text;

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
            let (x, y) = (f64_of(a), f64_of(b));
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

/// `a op b` (`b` ignored for `OP_NEG`): the tag (bits in `RET`) or `TAG_ERR`.
pub(crate) fn arith(s: &mut State, op: i32, a: V, b: V) -> i32 {
    if matches!(a, V::Undef) || (op != OP_NEG && matches!(b, V::Undef)) {
        return ret(V::Undef);
    }
    let Some(x) = to_num(a) else {
        return err(s, &[b"cannot apply '", op_name(op), b"' to ", type_name(a)]);
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
        return err(s, &[b"cannot apply '", op_name(op), b"' to ", type_name(b)]);
    };
    if let (Num::Int(x), Num::Int(y)) = (x, y) {
        let r = match op {
            OP_ADD => x.checked_add(y),
            OP_SUB => x.checked_sub(y),
            OP_MUL => x.checked_mul(y),
            OP_DIV => {
                if y == 0 {
                    return err(s, &[b"division by zero"]);
                }
                match x.checked_rem(y) {
                    Some(0) => Some(x / y),
                    _ => None,
                }
            }
            _ => {
                if y == 0 {
                    return err(s, &[b"modulo by zero"]);
                }
                Some(x.checked_rem(y).unwrap_or(0))
            }
        };
        if let Some(r) = r {
            return ret(V::Int(r));
        }
    }
    let (x, y) = (f64_of(x), f64_of(y));
    let r = match op {
        OP_ADD => x + y,
        OP_SUB => x - y,
        OP_MUL => x * y,
        OP_DIV => {
            if y == 0.0 {
                return err(s, &[b"division by zero"]);
            }
            x / y
        }
        _ => {
            if y == 0.0 {
                return err(s, &[b"modulo by zero"]);
            }
            libm::fmod(x, y)
        }
    };
    ret(V::Float(r))
}

/// Arithmetic on any two values; returns the tag (bits in RET) or `TAG_ERR`.
#[no_mangle]
pub extern "C" fn rt_arith(op: i32, ta: i32, ba: i64, tb: i32, bb: i64) -> i32 {
    with_state(|s| arith(s, op, val(ta, ba), val(tb, bb)))
}

/// `LIKE` against a constant pattern; 0 or 1.
#[no_mangle]
pub extern "C" fn rt_like(ta: i32, ba: i64, pp: i32, pl: i32) -> i32 {
    // Safety: a constant of the rule.
    let pat = unsafe { mem::bytes(mem::at(pp), mem::at(pl)) };
    match val(ta, ba) {
        V::Str(s) => text::like(s, pat) as i32,
        v @ (V::Int(_) | V::Float(_)) => with_state(|s| {
            s.scratch(|s| {
                let mut b = s.builder();
                put_value(&mut b, v);
                text::like(b.bytes(), pat) as i32
            })
        }),
        _ => 0,
    }
}
