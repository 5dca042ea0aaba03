//! A small reference interpreter of rule SQL over `serde_json::Value`, written only for the
//! differential test: it evaluates the parsed query directly (no IR, no Wasm, no runtime
//! crate), following docs/rule-sql.md and the sluice choices documented in the compiler.

use serde_json::{Map, Number, Value};

use crate::rules::sql::parser::{
    ArithOp, CmpOp, Expr, ExprKind, Lit, Path, Query, Seg, SelectItem,
};

/// A value: undefined or a JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum V {
    Undef,
    J(Value),
}

/// The message context the reference needs.
pub struct Ctx<'a> {
    pub payload: &'a Value,
    pub device_name: &'a str,
    pub topic: &'a str,
}

/// The result of one message: `Ok(None)` no output, `Ok(Some(obj))`, or a runtime error.
pub fn eval_query(q: &Query, ctx: &Ctx<'_>) -> Result<Option<Value>, String> {
    let aliases: Vec<(String, Expr)> = q
        .items
        .iter()
        .filter_map(|i| match i {
            SelectItem::Expr(e, Some(a)) => Some((a.clone(), e.clone())),
            _ => None,
        })
        .collect();
    if let Some(w) = &q.where_ {
        if !truthy(&eval(w, ctx, Some(&aliases))?) {
            return Ok(None);
        }
    }
    let mut out = Map::new();
    let mut vals = Vec::new();
    for (n, item) in q.items.iter().enumerate() {
        if let SelectItem::Expr(e, alias) = item {
            let name = alias.clone().unwrap_or_else(|| match &e.kind {
                ExprKind::Path(p) => match p.segs.iter().rev().find_map(|s| match s {
                    Seg::Key(k) => Some(k.clone()),
                    _ => None,
                }) {
                    Some(k) => k,
                    None => format!("_{}", n + 1),
                },
                _ => format!("_{}", n + 1),
            });
            vals.push((name, eval(e, ctx, None)?));
        }
    }
    let explicit: Vec<String> = vals.iter().map(|(n, _)| n.clone()).collect();
    let mut vals = vals.into_iter();
    for item in &q.items {
        match item {
            SelectItem::Star(_) => {
                for (k, v) in ctx.payload.as_object().expect("object payload") {
                    if !explicit.contains(k) {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            SelectItem::Expr(..) => {
                let (name, v) = vals.next().expect("value");
                if let V::J(j) = v {
                    out.insert(name, nan_to_null(j));
                }
            }
        }
    }
    Ok(Some(Value::Object(out)))
}

fn nan_to_null(v: Value) -> Value {
    v
}

fn truthy(v: &V) -> bool {
    matches!(v, V::J(Value::Bool(true)))
}

fn path(p: &Path, root: &Value) -> V {
    let mut cur = root;
    for s in &p.segs {
        let next = match s {
            Seg::Key(k) => cur.as_object().and_then(|o| o.get(k)),
            Seg::Index(i) => cur.as_array().and_then(|a| a.get(*i as usize)),
        };
        match next {
            Some(n) => cur = n,
            None => return V::Undef,
        }
    }
    if p.wrap {
        V::J(Value::Array(vec![cur.clone()]))
    } else {
        V::J(cur.clone())
    }
}

#[derive(Debug, Clone, Copy)]
enum N {
    I(i64),
    F(f64),
}

fn strict_number(s: &str) -> Option<N> {
    if s.is_empty() || s.trim() != s {
        return None;
    }
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Number(n)) => Some(num_of(&n)),
        _ => None,
    }
}

fn num_of(n: &Number) -> N {
    match n.as_i64() {
        Some(i) => N::I(i),
        None => N::F(n.as_f64().unwrap_or(f64::NAN)),
    }
}

fn to_num(v: &V) -> Option<N> {
    match v {
        V::J(Value::Number(n)) => Some(num_of(n)),
        V::J(Value::String(s)) => strict_number(s),
        _ => None,
    }
}

fn f(n: N) -> f64 {
    match n {
        N::I(i) => i as f64,
        N::F(x) => x,
    }
}

fn nv(n: N) -> V {
    match n {
        N::I(i) => V::J(Value::from(i)),
        N::F(x) => V::J(
            Number::from_f64(x)
                .map(Value::Number)
                .unwrap_or(Value::Null),
        ),
    }
}

fn type_name(v: &V) -> &'static str {
    match v {
        V::Undef => "undefined",
        V::J(Value::Null) => "null",
        V::J(Value::Bool(_)) => "boolean",
        V::J(Value::Number(_)) => "number",
        V::J(Value::String(_)) => "string",
        V::J(Value::Array(_)) => "array",
        V::J(Value::Object(_)) => "object",
    }
}

fn arith(op: ArithOp, a: &V, b: &V) -> Result<V, String> {
    let sym = match op {
        ArithOp::Add => "+",
        ArithOp::Sub => "-",
        ArithOp::Mul => "*",
        ArithOp::Div => "/",
        ArithOp::Mod => "%",
    };
    if matches!(a, V::Undef) || matches!(b, V::Undef) {
        return Ok(V::Undef);
    }
    let x = to_num(a).ok_or_else(|| format!("cannot apply '{sym}' to {}", type_name(a)))?;
    let y = to_num(b).ok_or_else(|| format!("cannot apply '{sym}' to {}", type_name(b)))?;
    if let (N::I(x), N::I(y)) = (x, y) {
        let r = match op {
            ArithOp::Add => x.checked_add(y),
            ArithOp::Sub => x.checked_sub(y),
            ArithOp::Mul => x.checked_mul(y),
            ArithOp::Div => {
                if y == 0 {
                    return Err("division by zero".into());
                }
                match x.checked_rem(y) {
                    Some(0) => Some(x / y),
                    _ => None,
                }
            }
            ArithOp::Mod => {
                if y == 0 {
                    return Err("modulo by zero".into());
                }
                Some(x.checked_rem(y).unwrap_or(0))
            }
        };
        if let Some(r) = r {
            return Ok(nv(N::I(r)));
        }
    }
    let (x, y) = (f(x), f(y));
    let r = match op {
        ArithOp::Add => x + y,
        ArithOp::Sub => x - y,
        ArithOp::Mul => x * y,
        ArithOp::Div => {
            if y == 0.0 {
                return Err("division by zero".into());
            }
            x / y
        }
        ArithOp::Mod => {
            if y == 0.0 {
                return Err("modulo by zero".into());
            }
            x % y
        }
    };
    Ok(nv(N::F(r)))
}

fn cmp(op: CmpOp, a: &V, b: &V) -> bool {
    use CmpOp::*;
    let (V::J(x), V::J(y)) = (a, b) else {
        return false;
    };
    let numeric = matches!(
        (x, y),
        (Value::Number(_), Value::Number(_))
            | (Value::Number(_), Value::String(_))
            | (Value::String(_), Value::Number(_))
    );
    if numeric {
        let (Some(p), Some(q)) = (to_num(a), to_num(b)) else {
            return false;
        };
        if let (N::I(p), N::I(q)) = (p, q) {
            return match op {
                Eq => p == q,
                Ne => p != q,
                Lt => p < q,
                Le => p <= q,
                Gt => p > q,
                Ge => p >= q,
            };
        }
        let (p, q) = (f(p), f(q));
        return match op {
            Eq => p == q,
            Ne => p != q,
            Lt => p < q,
            Le => p <= q,
            Gt => p > q,
            Ge => p >= q,
        };
    }
    match (x, y) {
        (Value::String(p), Value::String(q)) => match op {
            Eq => p == q,
            Ne => p != q,
            Lt => p < q,
            Le => p <= q,
            Gt => p > q,
            Ge => p >= q,
        },
        (Value::Bool(p), Value::Bool(q)) => match op {
            Eq => p == q,
            Ne => p != q,
            _ => false,
        },
        (Value::Null, Value::Null) => op == Eq,
        _ => false,
    }
}

fn lit(l: &Lit) -> V {
    V::J(match l {
        Lit::Null => Value::Null,
        Lit::Bool(b) => Value::Bool(*b),
        Lit::Int(i) => Value::from(*i),
        Lit::Float(x) => Number::from_f64(*x)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Lit::Str(s) => Value::String(s.clone()),
    })
}

fn text(v: &V) -> String {
    match v {
        V::J(Value::String(s)) => s.clone(),
        V::J(other) => other.to_string(),
        V::Undef => String::new(),
    }
}

fn like(s: &str, pat: &str) -> bool {
    // Independent of the runtime: a dynamic-programming glob with `%` only.
    let (s, p): (Vec<char>, Vec<char>) = (s.chars().collect(), pat.chars().collect());
    let mut dp = vec![vec![false; s.len() + 1]; p.len() + 1];
    dp[0][0] = true;
    for i in 1..=p.len() {
        for j in 0..=s.len() {
            dp[i][j] = if p[i - 1] == '%' {
                dp[i - 1][j] || (j > 0 && dp[i][j - 1])
            } else {
                j > 0 && dp[i - 1][j - 1] && p[i - 1] == s[j - 1]
            };
        }
    }
    dp[p.len()][s.len()]
}

fn str_arg(v: &V, func: &str) -> Result<Option<String>, String> {
    match v {
        V::Undef => Ok(None),
        V::J(Value::String(s)) => Ok(Some(s.clone())),
        V::J(Value::Number(_)) => Ok(Some(text(v))),
        other => Err(format!(
            "{func}: expected a string, got {}",
            type_name(other)
        )),
    }
}

fn eval(e: &Expr, ctx: &Ctx<'_>, aliases: Option<&[(String, Expr)]>) -> Result<V, String> {
    let ev = |x: &Expr| eval(x, ctx, aliases);
    let b = |x: bool| V::J(Value::Bool(x));
    Ok(match &e.kind {
        ExprKind::Lit(l) => lit(l),
        ExprKind::Path(p) => {
            let v = path(p, ctx.payload);
            if let (V::Undef, Some(al), false, [Seg::Key(k)]) =
                (&v, aliases, p.wrap, p.segs.as_slice())
            {
                if let Some((_, ae)) = al.iter().find(|(n, _)| n == k) {
                    return eval(ae, ctx, None);
                }
            }
            v
        }
        ExprKind::Star => panic!("* is not in the differential rules"),
        ExprKind::Neg(x) => {
            let v = ev(x)?;
            match v {
                V::Undef => V::Undef,
                _ => match to_num(&v) {
                    Some(N::I(i)) => i
                        .checked_neg()
                        .map(|n| nv(N::I(n)))
                        .unwrap_or_else(|| nv(N::F(-(i as f64)))),
                    Some(N::F(x)) => nv(N::F(-x)),
                    None => return Err(format!("cannot apply '-' to {}", type_name(&v))),
                },
            }
        }
        ExprKind::Not(x) => b(!truthy(&ev(x)?)),
        ExprKind::Arith(op, l, r) => {
            let (a, c) = (ev(l)?, ev(r)?);
            arith(*op, &a, &c)?
        }
        ExprKind::Cmp(op, l, r) => {
            let (a, c) = (ev(l)?, ev(r)?);
            b(cmp(*op, &a, &c))
        }
        ExprKind::And(l, r) => b(truthy(&ev(l)?) && truthy(&ev(r)?)),
        ExprKind::Or(l, r) => b(truthy(&ev(l)?) || truthy(&ev(r)?)),
        ExprKind::In(x, list, neg) => {
            let v = ev(x)?;
            let mut any = false;
            for item in list {
                any |= cmp(CmpOp::Eq, &v, &ev(item)?);
            }
            b(any != *neg)
        }
        ExprKind::Like(x, pat, neg) => {
            let v = ev(x)?;
            let m = match &v {
                V::J(Value::String(s)) => like(s, pat),
                V::J(Value::Number(_)) => like(&text(&v), pat),
                _ => false,
            };
            b(m != *neg)
        }
        ExprKind::Between(x, lo, hi, neg) => {
            let v = ev(x)?;
            let l = ev(lo)?;
            let r = cmp(CmpOp::Ge, &v, &l) && cmp(CmpOp::Le, &v, &ev(hi)?);
            b(r != *neg)
        }
        ExprKind::IsNull(x, neg) => {
            let v = ev(x)?;
            b(matches!(v, V::Undef | V::J(Value::Null)) != *neg)
        }
        ExprKind::Case(op, whens, els) => {
            let o = match op {
                Some(o) => Some(ev(o)?),
                None => None,
            };
            for (w, t) in whens {
                let hit = match &o {
                    Some(o) => cmp(CmpOp::Eq, o, &ev(w)?),
                    None => truthy(&ev(w)?),
                };
                if hit {
                    return ev(t);
                }
            }
            match els {
                Some(x) => ev(x)?,
                None => V::Undef,
            }
        }
        ExprKind::Call(name, args) => {
            let mut vals = Vec::new();
            for a in args {
                vals.push(ev(a)?);
            }
            match name.to_ascii_lowercase().as_str() {
                "devicename" => V::J(Value::String(ctx.device_name.into())),
                "topic" => match vals.first() {
                    None => V::J(Value::String(ctx.topic.into())),
                    Some(V::J(Value::Number(n))) => {
                        let n = n.as_i64().unwrap_or(0) as usize;
                        match ctx.topic.trim_start_matches('/').split('/').nth(n - 1) {
                            Some(l) => V::J(Value::String(l.into())),
                            None => V::Undef,
                        }
                    }
                    _ => unreachable!(),
                },
                "nanvl" => match &vals[0] {
                    V::Undef | V::J(Value::Null) => vals[1].clone(),
                    v => v.clone(),
                },
                "abs" => match &vals[0] {
                    V::Undef => V::Undef,
                    v => match to_num(v) {
                        Some(N::I(i)) => i
                            .checked_abs()
                            .map(|a| nv(N::I(a)))
                            .unwrap_or_else(|| nv(N::F(-(i as f64)))),
                        Some(N::F(x)) => nv(N::F(x.abs())),
                        None => {
                            return Err(format!("abs: expected a number, got {}", type_name(v)))
                        }
                    },
                },
                "lower" | "upper" => match str_arg(&vals[0], &name.to_ascii_lowercase())? {
                    None => V::Undef,
                    Some(s) => V::J(Value::String(if name.eq_ignore_ascii_case("lower") {
                        s.to_lowercase()
                    } else {
                        s.to_uppercase()
                    })),
                },
                "length" => match str_arg(&vals[0], "length")? {
                    None => V::Undef,
                    Some(s) => V::J(Value::from(s.chars().count() as i64)),
                },
                "concat" => {
                    if vals.iter().any(|v| matches!(v, V::Undef)) {
                        V::Undef
                    } else {
                        V::J(Value::String(vals.iter().map(text).collect()))
                    }
                }
                other => panic!("the reference does not implement {other}()"),
            }
        }
    })
}
