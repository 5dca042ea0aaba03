//! Lowering: the parsed query becomes the typed IR the code generator encodes. Every check of
//! the dialect that does not need the payload happens here: function names, argument counts,
//! literal types, the topic filter, the data type, aliases in WHERE.

use std::collections::HashMap;

use super::error::SqlError;
use super::parser::{ArithOp, CmpOp, Expr, ExprKind, Lit, Path, Pos, Query, Seg, SelectItem};
use super::DataType;

/// Most SELECT items a rule may have.
pub const MAX_SELECT_ITEMS: usize = 50;
/// Most arguments one call may pass (the runtime's argument area).
pub const MAX_CALL_ARGS: usize = 32;

/// What a function argument must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// Any value.
    Any,
    /// A number (a literal must be a number).
    Num,
    /// A string (numbers are turned into text; a literal must be a string or number).
    Str,
    /// Bytes: `*` or a string.
    Bytes,
    /// A topic level: an integer literal >= 1.
    TopicLevel,
    /// A string literal.
    StrLit,
    /// The literal `'utf-8'`.
    Charset,
    /// A digest algorithm literal.
    Alg,
}

/// One function of the dialect.
#[derive(Debug)]
pub struct FnSpec {
    /// Canonical name (the output name when the item has no alias).
    pub name: &'static str,
    /// The runtime export implementing it (`None`: inlined by the code generator).
    pub export: Option<&'static str>,
    /// Fewest arguments.
    pub min: usize,
    /// Most arguments.
    pub max: usize,
    /// Argument kinds; the last one repeats.
    pub args: &'static [Arg],
    /// Same result for the whole message when the arguments are literals: computed once.
    pub memo: bool,
}

impl PartialEq for FnSpec {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

macro_rules! f {
    ($name:literal, $export:expr, $min:expr, $max:expr, [$($a:ident),*], $memo:expr) => {
        FnSpec { name: $name, export: $export, min: $min, max: $max, args: &[$(Arg::$a),*], memo: $memo }
    };
}

/// Every function of the dialect.
pub static FUNCTIONS: &[FnSpec] = &[
    f!("topic", Some("rt_f_topic"), 0, 1, [TopicLevel], true),
    f!("deviceName", Some("rt_f_devicename"), 0, 0, [], true),
    f!("productKey", Some("rt_f_productkey"), 0, 0, [], true),
    f!("messageId", Some("rt_f_messageid"), 0, 0, [], true),
    f!("timestamp", Some("rt_f_timestamp"), 0, 1, [StrLit], true),
    f!(
        "timestamp_utc",
        Some("rt_f_timestamp_utc"),
        0,
        1,
        [StrLit],
        true
    ),
    f!("newuuid", Some("rt_f_newuuid"), 0, 0, [], false),
    f!("attribute", Some("rt_f_attribute"), 1, 1, [StrLit], true),
    f!("payload", Some("rt_f_payload"), 0, 1, [Charset], true),
    f!("abs", Some("rt_f_abs"), 1, 1, [Num], false),
    f!("asin", Some("rt_f_asin"), 1, 1, [Num], false),
    f!("cos", Some("rt_f_cos"), 1, 1, [Num], false),
    f!("cosh", Some("rt_f_cosh"), 1, 1, [Num], false),
    f!("exp", Some("rt_f_exp"), 1, 1, [Num], false),
    f!("floor", Some("rt_f_floor"), 1, 1, [Num], false),
    f!("sin", Some("rt_f_sin"), 1, 1, [Num], false),
    f!("sinh", Some("rt_f_sinh"), 1, 1, [Num], false),
    f!("tan", Some("rt_f_tan"), 1, 1, [Num], false),
    f!("tanh", Some("rt_f_tanh"), 1, 1, [Num], false),
    f!("ceil", Some("rt_f_ceil"), 1, 1, [Num], false),
    f!("round", Some("rt_f_round"), 1, 1, [Num], false),
    f!("sqrt", Some("rt_f_sqrt"), 1, 1, [Num], false),
    f!("ln", Some("rt_f_ln"), 1, 1, [Num], false),
    f!("log", Some("rt_f_log"), 1, 2, [Num, Num], false),
    f!("mod", Some("rt_f_mod"), 2, 2, [Num, Num], false),
    f!("power", Some("rt_f_power"), 2, 2, [Num, Num], false),
    f!("rand", Some("rt_f_rand"), 0, 0, [], false),
    f!(
        "concat",
        Some("rt_f_concat"),
        1,
        MAX_CALL_ARGS,
        [Any],
        false
    ),
    f!("lower", Some("rt_f_lower"), 1, 1, [Str], false),
    f!("upper", Some("rt_f_upper"), 1, 1, [Str], false),
    f!(
        "replace",
        Some("rt_f_replace"),
        3,
        3,
        [Str, Str, Str],
        false
    ),
    f!(
        "substring",
        Some("rt_f_substring"),
        2,
        3,
        [Str, Num, Num],
        false
    ),
    f!("endswith", Some("rt_f_endswith"), 2, 2, [Str, Str], false),
    f!(
        "startswith",
        Some("rt_f_startswith"),
        2,
        2,
        [Str, Str],
        false
    ),
    f!("length", Some("rt_f_length"), 1, 1, [Str], false),
    f!("to_base64", Some("rt_f_to_base64"), 1, 1, [Bytes], false),
    f!("to_hex", Some("rt_f_to_hex"), 1, 1, [Bytes], false),
    f!("crypto", Some("rt_f_crypto"), 2, 2, [Bytes, Alg], false),
    f!("nanvl", None, 2, 2, [Any, Any], false),
    f!("thingPropertyFlatMap", None, 0, usize::MAX, [StrLit], false),
];

const AGGREGATES: &[&str] = &["count", "sum", "avg", "min", "max"];
const ALGORITHMS: &[&str] = &["MD5", "SHA1", "SHA-256", "SHA-384", "SHA-512"];

/// The typed IR of one expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Ir {
    /// A literal.
    Const(Lit),
    /// A payload path (index into [`Program::paths`]); read at most once per message.
    Path(usize),
    /// A WHERE name that is also a SELECT alias: the path when defined, else the alias.
    AliasOr(usize, Box<Ir>),
    /// The payload bytes (`*` as an argument).
    Star,
    /// Unary minus.
    Neg(Box<Ir>),
    /// Arithmetic.
    Arith(ArithOp, Box<Ir>, Box<Ir>),
    /// Comparison (a boolean).
    Cmp(CmpOp, Box<Ir>, Box<Ir>),
    /// `AND`
    And(Box<Ir>, Box<Ir>),
    /// `OR`
    Or(Box<Ir>, Box<Ir>),
    /// `NOT`
    Not(Box<Ir>),
    /// `IN (literals)`
    In(Box<Ir>, Vec<Lit>),
    /// `LIKE 'pattern'`
    Like(Box<Ir>, String),
    /// `BETWEEN lo AND hi`
    Between(Box<Ir>, Box<Ir>, Box<Ir>),
    /// `IS NULL` (null or undefined)
    IsNull(Box<Ir>),
    /// `CASE`: operand (simple form) or none (searched form), WHEN/THEN pairs, ELSE.
    Case(Option<Box<Ir>>, Vec<(Ir, Ir)>, Option<Box<Ir>>),
    /// A runtime function; `memo` is its per-message cache slot.
    Call {
        /// The function.
        func: &'static FnSpec,
        /// Arguments.
        args: Vec<Ir>,
        /// Cache slot when the call is computed once per message.
        memo: Option<usize>,
    },
    /// `nanvl(value, default)`
    Nanvl(Box<Ir>, Box<Ir>),
}

/// One member (or group of members) of the output object.
#[derive(Debug, Clone, PartialEq)]
pub enum OutItem {
    /// `*`: the payload's members.
    Star,
    /// `expr AS name`.
    Item {
        /// Output key.
        name: String,
        /// Value.
        expr: Ir,
    },
    /// `thingPropertyFlatMap(...)`: the named properties, or all when empty.
    FlatMap(Vec<String>),
}

/// A lowered rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    /// Output members in SELECT order.
    pub items: Vec<OutItem>,
    /// WHERE condition.
    pub where_: Option<Ir>,
    /// Distinct payload paths the rule reads.
    pub paths: Vec<Path>,
    /// Number of per-message cache slots of function calls.
    pub memo_slots: usize,
    /// The rule's data type.
    pub data_type: DataType,
    /// The FROM filter.
    pub from: String,
    /// Output names (`*` for the payload, `thingPropertyFlatMap` for the flat map).
    pub names: Vec<String>,
}

/// Checks an MQTT topic filter as the dialect allows it in FROM.
pub fn check_topic_filter(filter: &str, pos: Pos) -> Result<(), SqlError> {
    let bad = |reason: &str| SqlError::BadTopicFilter {
        filter: filter.to_string(),
        reason: reason.to_string(),
        line: pos.line,
        column: pos.column,
    };
    if filter.is_empty() {
        return Err(bad("it is empty"));
    }
    if filter.contains('\0') {
        return Err(bad("it contains a NUL character"));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.is_empty() && i > 0 {
            return Err(bad("it has an empty level (`//` or a trailing `/`)"));
        }
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err(bad("`#` must be a whole level and the last one"));
        }
        if level.contains('+') && *level != "+" {
            return Err(bad("`+` must be a whole level, not glued to text"));
        }
    }
    Ok(())
}

/// The closest known function name (for the hint of an unknown function).
pub fn nearest_function(name: &str) -> Option<&'static str> {
    let low = name.to_ascii_lowercase();
    FUNCTIONS
        .iter()
        .map(|f| (levenshtein(&low, &f.name.to_ascii_lowercase()), f.name))
        .min()
        .filter(|(d, _)| *d <= 3.max(low.len() / 2))
        .map(|(_, n)| n)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

fn lookup(name: &str) -> Option<&'static FnSpec> {
    FUNCTIONS.iter().find(|f| f.name.eq_ignore_ascii_case(name))
}

struct Lowerer {
    data_type: DataType,
    paths: Vec<Path>,
    path_ids: HashMap<Path, usize>,
    memo: HashMap<String, usize>,
    aliases: HashMap<String, Ir>,
}

fn invalid(pos: Pos, message: impl Into<String>) -> SqlError {
    SqlError::Invalid {
        message: message.into(),
        line: pos.line,
        column: pos.column,
    }
}

fn lit_type(l: &Lit) -> &'static str {
    match l {
        Lit::Null => "null",
        Lit::Bool(_) => "boolean",
        Lit::Int(_) | Lit::Float(_) => "number",
        Lit::Str(_) => "string",
    }
}

/// Lowers a parsed query for a rule of `data_type`.
pub fn lower(q: &Query, data_type: DataType) -> Result<Program, SqlError> {
    check_topic_filter(&q.from, q.from_pos)?;
    if q.items.len() > MAX_SELECT_ITEMS {
        let p = match &q.items[MAX_SELECT_ITEMS] {
            SelectItem::Star(p) => *p,
            SelectItem::Expr(e, _) => e.pos,
        };
        return Err(invalid(
            p,
            format!("a rule may select at most {MAX_SELECT_ITEMS} items"),
        ));
    }
    let mut lw = Lowerer {
        data_type,
        paths: Vec::new(),
        path_ids: HashMap::new(),
        memo: HashMap::new(),
        aliases: HashMap::new(),
    };
    let mut items = Vec::new();
    let mut names = Vec::new();
    let mut stars = 0;
    for (n, item) in q.items.iter().enumerate() {
        match item {
            SelectItem::Star(p) => {
                stars += 1;
                if stars > 1 {
                    return Err(invalid(*p, "`*` may appear only once in SELECT"));
                }
                if data_type == DataType::Binary && q.items.len() > 1 {
                    return Err(invalid(*p, "in a binary rule `*` (the raw bytes) must be the only SELECT item; use to_base64(*) AS data to combine"));
                }
                items.push(OutItem::Star);
                names.push("*".to_string());
            }
            SelectItem::Expr(e, alias) => {
                if let ExprKind::Call(name, args) = &e.kind {
                    if name.eq_ignore_ascii_case("thingPropertyFlatMap") {
                        if data_type == DataType::Binary {
                            return Err(invalid(e.pos, "thingPropertyFlatMap needs a json rule"));
                        }
                        let mut props = Vec::new();
                        for a in args {
                            match &a.kind {
                                ExprKind::Lit(Lit::Str(s)) => props.push(s.clone()),
                                _ => {
                                    return Err(SqlError::LiteralType {
                                        message: "thingPropertyFlatMap takes property names as string literals".into(),
                                        line: a.pos.line,
                                        column: a.pos.column,
                                    })
                                }
                            }
                        }
                        items.push(OutItem::FlatMap(props));
                        names.push("thingPropertyFlatMap".to_string());
                        continue;
                    }
                }
                let ir = lw.expr(e, 0)?;
                let name = match alias {
                    Some(a) => a.clone(),
                    None => default_name(e, n),
                };
                if let Some(a) = alias {
                    lw.aliases.insert(a.clone(), ir.clone());
                }
                names.push(name.clone());
                items.push(OutItem::Item { name, expr: ir });
            }
        }
    }
    let where_ = match &q.where_ {
        Some(w) => Some(lw.expr(w, 1)?),
        None => None,
    };
    Ok(Program {
        items,
        where_,
        paths: lw.paths,
        memo_slots: lw.memo.len(),
        data_type,
        from: q.from.clone(),
        names,
    })
}

fn default_name(e: &Expr, n: usize) -> String {
    match &e.kind {
        ExprKind::Path(p) => p
            .segs
            .iter()
            .rev()
            .find_map(|s| match s {
                Seg::Key(k) => Some(k.clone()),
                Seg::Index(_) => None,
            })
            .unwrap_or_else(|| format!("_{}", n + 1)),
        ExprKind::Call(name, _) => lookup(name)
            .map(|f| f.name.to_string())
            .unwrap_or_else(|| name.clone()),
        _ => format!("_{}", n + 1),
    }
}

impl Lowerer {
    fn path(&mut self, p: &Path, pos: Pos) -> Result<usize, SqlError> {
        if self.data_type == DataType::Binary {
            return Err(invalid(
                pos,
                "a binary rule has no JSON fields; use to_base64(*), to_hex(*) or a context function",
            ));
        }
        if let Some(id) = self.path_ids.get(p) {
            return Ok(*id);
        }
        let id = self.paths.len();
        self.paths.push(p.clone());
        self.path_ids.insert(p.clone(), id);
        Ok(id)
    }

    /// `ctx` 0: SELECT, 1: WHERE (aliases visible).
    fn expr(&mut self, e: &Expr, ctx: u8) -> Result<Ir, SqlError> {
        let b =
            |s: &mut Self, x: &Expr| -> Result<Box<Ir>, SqlError> { Ok(Box::new(s.expr(x, ctx)?)) };
        Ok(match &e.kind {
            ExprKind::Lit(l) => Ir::Const(l.clone()),
            ExprKind::Path(p) => {
                let id = self.path(p, e.pos)?;
                if ctx == 1 && !p.wrap && p.segs.len() == 1 {
                    if let Seg::Key(k) = &p.segs[0] {
                        if let Some(alias) = self.aliases.get(k) {
                            if *alias != Ir::Path(id) {
                                return Ok(Ir::AliasOr(id, Box::new(alias.clone())));
                            }
                        }
                    }
                }
                Ir::Path(id)
            }
            ExprKind::Star => {
                return Err(invalid(
                    e.pos,
                    "`*` as a value is only allowed as the argument of to_base64, to_hex or crypto",
                ))
            }
            ExprKind::Neg(x) => Ir::Neg(b(self, x)?),
            ExprKind::Not(x) => Ir::Not(b(self, x)?),
            ExprKind::Arith(op, l, r) => Ir::Arith(*op, b(self, l)?, b(self, r)?),
            ExprKind::Cmp(op, l, r) => Ir::Cmp(*op, b(self, l)?, b(self, r)?),
            ExprKind::And(l, r) => Ir::And(b(self, l)?, b(self, r)?),
            ExprKind::Or(l, r) => Ir::Or(b(self, l)?, b(self, r)?),
            ExprKind::In(x, list, neg) => {
                let mut lits = Vec::new();
                for item in list {
                    match &item.kind {
                        ExprKind::Lit(l) => lits.push(l.clone()),
                        _ => {
                            return Err(SqlError::LiteralType {
                                message: "IN takes a list of literals".into(),
                                line: item.pos.line,
                                column: item.pos.column,
                            })
                        }
                    }
                }
                let ir = Ir::In(b(self, x)?, lits);
                if *neg {
                    Ir::Not(Box::new(ir))
                } else {
                    ir
                }
            }
            ExprKind::Like(x, pat, neg) => {
                let ir = Ir::Like(b(self, x)?, pat.clone());
                if *neg {
                    Ir::Not(Box::new(ir))
                } else {
                    ir
                }
            }
            ExprKind::Between(x, lo, hi, neg) => {
                let ir = Ir::Between(b(self, x)?, b(self, lo)?, b(self, hi)?);
                if *neg {
                    Ir::Not(Box::new(ir))
                } else {
                    ir
                }
            }
            ExprKind::IsNull(x, neg) => {
                let ir = Ir::IsNull(b(self, x)?);
                if *neg {
                    Ir::Not(Box::new(ir))
                } else {
                    ir
                }
            }
            ExprKind::Case(op, whens, els) => {
                let op = match op {
                    Some(o) => Some(b(self, o)?),
                    None => None,
                };
                let mut ws = Vec::new();
                for (w, t) in whens {
                    ws.push((self.expr(w, ctx)?, self.expr(t, ctx)?));
                }
                let els = match els {
                    Some(x) => Some(b(self, x)?),
                    None => None,
                };
                Ir::Case(op, ws, els)
            }
            ExprKind::Call(name, args) => self.call(name, args, e.pos, ctx)?,
        })
    }

    fn call(&mut self, name: &str, args: &[Expr], pos: Pos, ctx: u8) -> Result<Ir, SqlError> {
        let Some(func) = lookup(name) else {
            if AGGREGATES.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(SqlError::Unsupported {
                    construct: format!("aggregate function {}()", name.to_ascii_uppercase()),
                    line: pos.line,
                    column: pos.column,
                });
            }
            return Err(SqlError::UnknownFunction {
                name: name.to_string(),
                hint: nearest_function(name).map(str::to_string),
                line: pos.line,
                column: pos.column,
            });
        };
        if func.name == "thingPropertyFlatMap" {
            return Err(invalid(
                pos,
                "thingPropertyFlatMap() can only be a SELECT item of its own",
            ));
        }
        if args.len() < func.min || args.len() > func.max {
            let expected = if func.min == func.max {
                func.min.to_string()
            } else if func.max == MAX_CALL_ARGS {
                format!("at least {} (at most {})", func.min, func.max)
            } else {
                format!("{} to {}", func.min, func.max)
            };
            return Err(SqlError::ArgumentCount {
                function: func.name.to_string(),
                expected,
                found: args.len(),
                line: pos.line,
                column: pos.column,
            });
        }
        let mut irs = Vec::new();
        for (i, a) in args.iter().enumerate() {
            let kind = func.args[i.min(func.args.len() - 1)];
            check_arg(func, kind, a)?;
            if matches!(a.kind, ExprKind::Star) {
                if self.data_type == DataType::Json && kind == Arg::Bytes {
                    // fine: the payload bytes of a json rule
                }
                irs.push(Ir::Star);
            } else {
                irs.push(self.expr(a, ctx)?);
            }
        }
        if func.name == "nanvl" {
            let mut it = irs.into_iter();
            let (v, d) = (
                it.next().unwrap_or(Ir::Const(Lit::Null)),
                it.next().unwrap_or(Ir::Const(Lit::Null)),
            );
            return Ok(Ir::Nanvl(Box::new(v), Box::new(d)));
        }
        let memo = if func.memo {
            let key = format!("{}{:?}", func.name, irs);
            let n = self.memo.len();
            Some(*self.memo.entry(key).or_insert(n))
        } else {
            None
        };
        Ok(Ir::Call {
            func,
            args: irs,
            memo,
        })
    }
}

fn check_arg(func: &FnSpec, kind: Arg, a: &Expr) -> Result<(), SqlError> {
    let wrong = |msg: String| SqlError::LiteralType {
        message: msg,
        line: a.pos.line,
        column: a.pos.column,
    };
    if matches!(a.kind, ExprKind::Star) {
        return if kind == Arg::Bytes {
            Ok(())
        } else {
            Err(invalid(a.pos, format!("`*` is not a valid argument of {}(); it is allowed in to_base64, to_hex and crypto", func.name)))
        };
    }
    let lit = match &a.kind {
        ExprKind::Lit(l) => Some(l),
        _ => None,
    };
    match kind {
        Arg::Any => Ok(()),
        Arg::Num => match lit {
            Some(l @ (Lit::Str(_) | Lit::Bool(_) | Lit::Null)) => Err(wrong(format!(
                "{}() expects a number here, found a {} literal",
                func.name,
                lit_type(l)
            ))),
            _ => Ok(()),
        },
        Arg::Str | Arg::Bytes => match lit {
            Some(l @ (Lit::Bool(_) | Lit::Null)) => Err(wrong(format!(
                "{}() expects a string here, found a {} literal",
                func.name,
                lit_type(l)
            ))),
            _ => Ok(()),
        },
        Arg::TopicLevel => match lit {
            Some(Lit::Int(n)) if *n >= 1 => Ok(()),
            _ => Err(wrong(format!(
                "{}() takes a topic level: an integer literal from 1",
                func.name
            ))),
        },
        Arg::StrLit => match lit {
            Some(Lit::Str(_)) => Ok(()),
            _ => Err(wrong(format!(
                "{}() takes a string literal here",
                func.name
            ))),
        },
        Arg::Charset => match lit {
            Some(Lit::Str(s))
                if s.eq_ignore_ascii_case("utf-8") || s.eq_ignore_ascii_case("utf8") =>
            {
                Ok(())
            }
            _ => Err(wrong(format!(
                "{}() takes only the charset literal 'utf-8'",
                func.name
            ))),
        },
        Arg::Alg => match lit {
            Some(Lit::Str(s)) if ALGORITHMS.contains(&s.as_str()) => Ok(()),
            _ => Err(wrong(format!(
                "{}() takes an algorithm literal: {}",
                func.name,
                ALGORITHMS.join(", ")
            ))),
        },
    }
}
