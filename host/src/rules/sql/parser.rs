//! Lexer and recursive-descent parser for rule SQL, with a line and column on every node.

use super::error::SqlError;

/// Deepest expression nesting the parser accepts.
pub const MAX_DEPTH: usize = 64;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// 1-based line.
    pub line: u32,
    /// 1-based column (characters).
    pub column: u32,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Quoted(String),
    Str(String),
    Int(i64),
    Float(f64),
    Punct(&'static str),
    Eof,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    pos: Pos,
}

fn syntax(pos: Pos, message: impl Into<String>, hint: Option<&str>) -> SqlError {
    SqlError::Syntax {
        message: message.into(),
        hint: hint.map(str::to_string),
        line: pos.line,
        column: pos.column,
    }
}

fn lex(src: &str) -> Result<Vec<Token>, SqlError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line, mut col) = (0usize, 1u32, 1u32);
    macro_rules! adv {
        () => {{
            if chars[i] == '\n' {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
            i += 1;
        }};
    }
    while i < chars.len() {
        let c = chars[i];
        let pos = Pos { line, column: col };
        if c.is_whitespace() {
            adv!();
            continue;
        }
        if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                adv!();
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == '$' {
            let mut s = String::new();
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                s.push(chars[i]);
                adv!();
            }
            out.push(Token {
                tok: Tok::Ident(s),
                pos,
            });
            continue;
        }
        if c.is_ascii_digit() {
            let mut s = String::new();
            let mut float = false;
            while i < chars.len() && chars[i].is_ascii_digit() {
                s.push(chars[i]);
                adv!();
            }
            if i + 1 < chars.len() && chars[i] == '.' && chars[i + 1].is_ascii_digit() {
                float = true;
                s.push('.');
                adv!();
                while i < chars.len() && chars[i].is_ascii_digit() {
                    s.push(chars[i]);
                    adv!();
                }
            }
            if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
                let save = (i, line, col, s.len());
                let mut t = String::from("e");
                adv!();
                if i < chars.len() && (chars[i] == '+' || chars[i] == '-') {
                    t.push(chars[i]);
                    adv!();
                }
                if i < chars.len() && chars[i].is_ascii_digit() {
                    while i < chars.len() && chars[i].is_ascii_digit() {
                        t.push(chars[i]);
                        adv!();
                    }
                    s.push_str(&t);
                    float = true;
                } else {
                    (i, line, col) = (save.0, save.1, save.2);
                }
            }
            if i < chars.len() && (chars[i].is_ascii_alphabetic() || chars[i] == '_') {
                return Err(syntax(
                    pos,
                    format!("malformed number starting {s:?}"),
                    None,
                ));
            }
            let tok = if float {
                Tok::Float(
                    s.parse()
                        .map_err(|_| syntax(pos, "malformed number", None))?,
                )
            } else {
                match s.parse::<i64>() {
                    Ok(v) => Tok::Int(v),
                    Err(_) => Tok::Float(
                        s.parse()
                            .map_err(|_| syntax(pos, "malformed number", None))?,
                    ),
                }
            };
            out.push(Token { tok, pos });
            continue;
        }
        if c == '\'' || c == '"' {
            let q = c;
            adv!();
            let mut s = String::new();
            loop {
                if i >= chars.len() {
                    return Err(syntax(
                        pos,
                        if q == '\'' {
                            "unterminated string literal"
                        } else {
                            "unterminated double-quoted path"
                        },
                        Some(if q == '\'' {
                            "close it with ' (write '' for a quote inside)"
                        } else {
                            "close it with \""
                        }),
                    ));
                }
                if chars[i] == q {
                    if chars.get(i + 1) == Some(&q) {
                        s.push(q);
                        adv!();
                        adv!();
                        continue;
                    }
                    adv!();
                    break;
                }
                s.push(chars[i]);
                adv!();
            }
            out.push(Token {
                tok: if q == '\'' {
                    Tok::Str(s)
                } else {
                    Tok::Quoted(s)
                },
                pos,
            });
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let p: &'static str = match two.as_str() {
            "<>" => "<>",
            "!=" => "!=",
            "<=" => "<=",
            ">=" => ">=",
            "==" => "==",
            _ => match c {
                ',' => ",",
                '(' => "(",
                ')' => ")",
                '*' => "*",
                '+' => "+",
                '-' => "-",
                '/' => "/",
                '%' => "%",
                '=' => "=",
                '<' => "<",
                '>' => ">",
                '.' => ".",
                '[' => "[",
                ']' => "]",
                ';' => ";",
                _ => return Err(syntax(pos, format!("unexpected character {c:?}"), None)),
            },
        };
        for _ in 0..p.len() {
            adv!();
        }
        out.push(Token {
            tok: Tok::Punct(p),
            pos,
        });
    }
    out.push(Token {
        tok: Tok::Eof,
        pos: Pos { line, column: col },
    });
    Ok(out)
}

/// A literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A single-quoted string.
    Str(String),
}

/// One step of a payload path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    /// An object member.
    Key(String),
    /// An array element (0-based).
    Index(u32),
}

/// A payload path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Path {
    /// The steps from the payload root.
    pub segs: Vec<Seg>,
    /// Leading `.`: wrap the result in an array.
    pub wrap: bool,
}

/// Binary arithmetic operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Mod,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `<>` / `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// An expression with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    /// What it is.
    pub kind: ExprKind,
    /// Where it starts.
    pub pos: Pos,
}

/// Expression forms of the dialect.
#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// A literal.
    Lit(Lit),
    /// A payload path.
    Path(Path),
    /// `*` as a function argument: the payload bytes.
    Star,
    /// Unary minus.
    Neg(Box<Expr>),
    /// `NOT`
    Not(Box<Expr>),
    /// Arithmetic.
    Arith(ArithOp, Box<Expr>, Box<Expr>),
    /// Comparison.
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    /// `AND`
    And(Box<Expr>, Box<Expr>),
    /// `OR`
    Or(Box<Expr>, Box<Expr>),
    /// `[NOT] IN (...)`
    In(Box<Expr>, Vec<Expr>, bool),
    /// `[NOT] LIKE 'pattern'`
    Like(Box<Expr>, String, bool),
    /// `[NOT] BETWEEN lo AND hi`
    Between(Box<Expr>, Box<Expr>, Box<Expr>, bool),
    /// `IS [NOT] NULL`
    IsNull(Box<Expr>, bool),
    /// `CASE [operand] WHEN .. THEN .. [ELSE ..] END`
    Case(Option<Box<Expr>>, Vec<(Expr, Expr)>, Option<Box<Expr>>),
    /// A function call, name as written.
    Call(String, Vec<Expr>),
}

/// One SELECT item.
#[derive(Debug, Clone, PartialEq)]
pub enum SelectItem {
    /// `*`
    Star(Pos),
    /// `expr [AS] alias`
    Expr(Expr, Option<String>),
}

/// A parsed rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// The SELECT list.
    pub items: Vec<SelectItem>,
    /// The FROM topic filter.
    pub from: String,
    /// Where the filter is written.
    pub from_pos: Pos,
    /// The WHERE condition.
    pub where_: Option<Expr>,
}

const RESERVED: &[&str] = &[
    "select", "from", "where", "and", "or", "not", "in", "like", "between", "is", "null", "case",
    "when", "then", "else", "end", "as", "true", "false",
];

const UNSUPPORTED_CLAUSES: &[(&str, &str)] = &[
    ("join", "JOIN"),
    ("inner", "JOIN"),
    ("left", "JOIN"),
    ("right", "JOIN"),
    ("full", "JOIN"),
    ("cross", "JOIN"),
    ("group", "GROUP BY"),
    ("order", "ORDER BY"),
    ("having", "HAVING"),
    ("limit", "LIMIT"),
    ("union", "UNION"),
    ("window", "WINDOW"),
    ("offset", "OFFSET"),
    ("into", "INTO"),
];

struct Parser {
    toks: Vec<Token>,
    i: usize,
    depth: usize,
}

/// Parses rule SQL text.
pub fn parse(src: &str) -> Result<Query, SqlError> {
    let toks = lex(src)?;
    let mut p = Parser {
        toks,
        i: 0,
        depth: 0,
    };
    p.query()
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.toks[self.i]
    }
    fn peek_at(&self, n: usize) -> &Token {
        &self.toks[(self.i + n).min(self.toks.len() - 1)]
    }
    fn next(&mut self) -> Token {
        let t = self.toks[self.i].clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }
    fn is_kw(&self, kw: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident(s) if s.eq_ignore_ascii_case(kw))
    }
    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.is_kw(kw) {
            self.next();
            true
        } else {
            false
        }
    }
    fn is_p(&self, p: &str) -> bool {
        matches!(&self.peek().tok, Tok::Punct(q) if *q == p)
    }
    fn eat_p(&mut self, p: &str) -> bool {
        if self.is_p(p) {
            self.next();
            true
        } else {
            false
        }
    }
    fn describe(t: &Tok) -> String {
        match t {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Quoted(s) => format!("\"{s}\""),
            Tok::Str(s) => format!("'{s}'"),
            Tok::Int(v) => v.to_string(),
            Tok::Float(v) => v.to_string(),
            Tok::Punct(p) => format!("`{p}`"),
            Tok::Eof => "the end of the rule".into(),
        }
    }
    fn unexpected(&self, want: &str) -> SqlError {
        let t = self.peek();
        if let Tok::Ident(s) = &t.tok {
            let low = s.to_ascii_lowercase();
            if let Some((_, c)) = UNSUPPORTED_CLAUSES.iter().find(|(k, _)| *k == low) {
                return SqlError::Unsupported {
                    construct: (*c).into(),
                    line: t.pos.line,
                    column: t.pos.column,
                };
            }
        }
        syntax(
            t.pos,
            format!("expected {want}, found {}", Self::describe(&t.tok)),
            None,
        )
    }
    fn expect_kw(&mut self, kw: &str) -> Result<(), SqlError> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("`{}`", kw.to_ascii_uppercase())))
        }
    }
    fn expect_p(&mut self, p: &str) -> Result<(), SqlError> {
        if self.eat_p(p) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("`{p}`")))
        }
    }

    fn query(&mut self) -> Result<Query, SqlError> {
        if !self.is_kw("select") {
            let t = self.peek();
            if let Tok::Ident(s) = &t.tok {
                let low = s.to_ascii_lowercase();
                if ["insert", "update", "delete", "create", "with", "drop"].contains(&low.as_str())
                {
                    return Err(SqlError::Unsupported {
                        construct: low.to_ascii_uppercase(),
                        line: t.pos.line,
                        column: t.pos.column,
                    });
                }
            }
            return Err(self.unexpected("`SELECT`"));
        }
        self.next();
        if self.is_kw("distinct") || self.is_kw("top") {
            let t = self.peek();
            let Tok::Ident(s) = &t.tok else {
                unreachable!()
            };
            return Err(SqlError::Unsupported {
                construct: s.to_ascii_uppercase(),
                line: t.pos.line,
                column: t.pos.column,
            });
        }
        let mut items = vec![self.item()?];
        while self.eat_p(",") {
            items.push(self.item()?);
        }
        self.expect_kw("from")?;
        let ft = self.next();
        let from = match ft.tok {
            Tok::Quoted(s) | Tok::Str(s) => s,
            Tok::Punct("(") => {
                return Err(SqlError::Unsupported {
                    construct: "sub-query".into(),
                    line: ft.pos.line,
                    column: ft.pos.column,
                })
            }
            Tok::Ident(s) => {
                return Err(syntax(
                    ft.pos,
                    format!("the FROM topic filter must be quoted, found `{s}`"),
                    Some("write FROM \"/{productKey}/+/user/update\""),
                ))
            }
            other => {
                return Err(syntax(
                    ft.pos,
                    format!(
                        "expected a quoted topic filter, found {}",
                        Self::describe(&other)
                    ),
                    Some("write FROM \"/{productKey}/+/user/update\""),
                ))
            }
        };
        if self.is_p(",") {
            let t = self.peek();
            return Err(SqlError::Unsupported {
                construct: "JOIN".into(),
                line: t.pos.line,
                column: t.pos.column,
            });
        }
        let where_ = if self.eat_kw("where") {
            Some(self.expr()?)
        } else {
            None
        };
        self.eat_p(";");
        if !matches!(self.peek().tok, Tok::Eof) {
            return Err(self.unexpected(if where_.is_some() {
                "the end of the rule"
            } else {
                "`WHERE` or the end of the rule"
            }));
        }
        Ok(Query {
            items,
            from,
            from_pos: ft.pos,
            where_,
        })
    }

    fn item(&mut self) -> Result<SelectItem, SqlError> {
        if self.is_p("*") {
            let t = self.next();
            return Ok(SelectItem::Star(t.pos));
        }
        let e = self.expr()?;
        let alias = if self.eat_kw("as") {
            let t = self.next();
            match t.tok {
                Tok::Ident(s) | Tok::Quoted(s) | Tok::Str(s) => Some(s),
                other => {
                    return Err(syntax(
                        t.pos,
                        format!(
                            "expected an alias after AS, found {}",
                            Self::describe(&other)
                        ),
                        None,
                    ))
                }
            }
        } else {
            match &self.peek().tok {
                Tok::Ident(s) if !RESERVED.contains(&s.to_ascii_lowercase().as_str()) => {
                    let low = s.to_ascii_lowercase();
                    if UNSUPPORTED_CLAUSES.iter().any(|(k, _)| *k == low) {
                        return Err(self.unexpected("an alias"));
                    }
                    let s = s.clone();
                    self.next();
                    Some(s)
                }
                _ => None,
            }
        };
        Ok(SelectItem::Expr(e, alias))
    }

    fn enter(&mut self) -> Result<(), SqlError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let p = self.peek().pos;
            return Err(SqlError::TooDeep {
                limit: MAX_DEPTH,
                line: p.line,
                column: p.column,
            });
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr, SqlError> {
        self.enter()?;
        let r = self.or();
        self.depth -= 1;
        r
    }

    fn or(&mut self) -> Result<Expr, SqlError> {
        let mut l = self.and()?;
        while self.is_kw("or") {
            self.next();
            let r = self.and()?;
            let pos = l.pos;
            l = Expr {
                kind: ExprKind::Or(Box::new(l), Box::new(r)),
                pos,
            };
        }
        Ok(l)
    }

    fn and(&mut self) -> Result<Expr, SqlError> {
        let mut l = self.not()?;
        while self.is_kw("and") {
            self.next();
            let r = self.not()?;
            let pos = l.pos;
            l = Expr {
                kind: ExprKind::And(Box::new(l), Box::new(r)),
                pos,
            };
        }
        Ok(l)
    }

    fn not(&mut self) -> Result<Expr, SqlError> {
        if self.is_kw("not") {
            let t = self.next();
            self.enter()?;
            let e = self.not();
            self.depth -= 1;
            return Ok(Expr {
                kind: ExprKind::Not(Box::new(e?)),
                pos: t.pos,
            });
        }
        self.predicate()
    }

    fn predicate(&mut self) -> Result<Expr, SqlError> {
        let l = self.additive()?;
        let pos = l.pos;
        let op = match &self.peek().tok {
            Tok::Punct("=") | Tok::Punct("==") => Some(CmpOp::Eq),
            Tok::Punct("<>") | Tok::Punct("!=") => Some(CmpOp::Ne),
            Tok::Punct("<") => Some(CmpOp::Lt),
            Tok::Punct("<=") => Some(CmpOp::Le),
            Tok::Punct(">") => Some(CmpOp::Gt),
            Tok::Punct(">=") => Some(CmpOp::Ge),
            _ => None,
        };
        if let Some(op) = op {
            self.next();
            let r = self.additive()?;
            return Ok(Expr {
                kind: ExprKind::Cmp(op, Box::new(l), Box::new(r)),
                pos,
            });
        }
        let neg = if self.is_kw("not")
            && matches!(&self.peek_at(1).tok, Tok::Ident(s) if ["in", "like", "between"].contains(&s.to_ascii_lowercase().as_str()))
        {
            self.next();
            true
        } else {
            false
        };
        if self.eat_kw("in") {
            let open = self.peek().pos;
            self.expect_p("(")?;
            if self.is_kw("select") {
                return Err(SqlError::Unsupported {
                    construct: "sub-query".into(),
                    line: open.line,
                    column: open.column,
                });
            }
            let mut list = vec![self.additive()?];
            while self.eat_p(",") {
                list.push(self.additive()?);
            }
            self.expect_p(")")?;
            return Ok(Expr {
                kind: ExprKind::In(Box::new(l), list, neg),
                pos,
            });
        }
        if self.eat_kw("like") {
            let t = self.next();
            let Tok::Str(p) = t.tok else {
                return Err(SqlError::LiteralType {
                    message: "LIKE needs a single-quoted pattern literal".into(),
                    line: t.pos.line,
                    column: t.pos.column,
                });
            };
            return Ok(Expr {
                kind: ExprKind::Like(Box::new(l), p, neg),
                pos,
            });
        }
        if self.eat_kw("between") {
            let lo = self.additive()?;
            self.expect_kw("and")?;
            let hi = self.additive()?;
            return Ok(Expr {
                kind: ExprKind::Between(Box::new(l), Box::new(lo), Box::new(hi), neg),
                pos,
            });
        }
        if self.eat_kw("is") {
            let neg = self.eat_kw("not");
            self.expect_kw("null")?;
            return Ok(Expr {
                kind: ExprKind::IsNull(Box::new(l), neg),
                pos,
            });
        }
        Ok(l)
    }

    fn additive(&mut self) -> Result<Expr, SqlError> {
        let mut l = self.mult()?;
        loop {
            let op = match self.peek().tok {
                Tok::Punct("+") => ArithOp::Add,
                Tok::Punct("-") => ArithOp::Sub,
                _ => return Ok(l),
            };
            self.next();
            let r = self.mult()?;
            let pos = l.pos;
            l = Expr {
                kind: ExprKind::Arith(op, Box::new(l), Box::new(r)),
                pos,
            };
        }
    }

    fn mult(&mut self) -> Result<Expr, SqlError> {
        let mut l = self.unary()?;
        loop {
            let op = match self.peek().tok {
                Tok::Punct("*") => ArithOp::Mul,
                Tok::Punct("/") => ArithOp::Div,
                Tok::Punct("%") => ArithOp::Mod,
                _ => return Ok(l),
            };
            self.next();
            let r = self.unary()?;
            let pos = l.pos;
            l = Expr {
                kind: ExprKind::Arith(op, Box::new(l), Box::new(r)),
                pos,
            };
        }
    }

    fn unary(&mut self) -> Result<Expr, SqlError> {
        if self.is_p("-") || self.is_p("+") {
            let t = self.next();
            self.enter()?;
            let e = self.unary();
            self.depth -= 1;
            let e = e?;
            if t.tok == Tok::Punct("+") {
                return Ok(e);
            }
            // Fold `-literal` so that i64::MIN and negative literals stay literals.
            return Ok(match e.kind {
                ExprKind::Lit(Lit::Int(v)) => Expr {
                    kind: ExprKind::Lit(Lit::Int(-v)),
                    pos: t.pos,
                },
                ExprKind::Lit(Lit::Float(v)) => Expr {
                    kind: ExprKind::Lit(Lit::Float(-v)),
                    pos: t.pos,
                },
                kind => Expr {
                    kind: ExprKind::Neg(Box::new(Expr { kind, pos: e.pos })),
                    pos: t.pos,
                },
            });
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, SqlError> {
        let save = self.i;
        let t = self.next();
        let pos = t.pos;
        let kind = match t.tok {
            Tok::Int(v) => ExprKind::Lit(Lit::Int(v)),
            Tok::Float(v) => ExprKind::Lit(Lit::Float(v)),
            Tok::Str(s) => ExprKind::Lit(Lit::Str(s)),
            Tok::Quoted(s) => ExprKind::Path(parse_path_text(&s, pos)?),
            Tok::Punct("(") => {
                if self.is_kw("select") {
                    return Err(SqlError::Unsupported {
                        construct: "sub-query".into(),
                        line: pos.line,
                        column: pos.column,
                    });
                }
                let e = self.expr()?;
                self.expect_p(")")?;
                return Ok(e);
            }
            Tok::Punct("*") => ExprKind::Star,
            Tok::Ident(name) => {
                let low = name.to_ascii_lowercase();
                match low.as_str() {
                    "null" => ExprKind::Lit(Lit::Null),
                    "true" => ExprKind::Lit(Lit::Bool(true)),
                    "false" => ExprKind::Lit(Lit::Bool(false)),
                    "case" => return self.case(pos),
                    "exists" => {
                        return Err(SqlError::Unsupported {
                            construct: "EXISTS sub-query".into(),
                            line: pos.line,
                            column: pos.column,
                        })
                    }
                    "select" => {
                        return Err(SqlError::Unsupported {
                            construct: "sub-query".into(),
                            line: pos.line,
                            column: pos.column,
                        })
                    }
                    _ if RESERVED.contains(&low.as_str()) => {
                        return Err(syntax(
                            pos,
                            format!(
                                "expected an expression, found keyword `{}`",
                                name.to_ascii_uppercase()
                            ),
                            Some("double-quote a payload field that has a keyword's name"),
                        ))
                    }
                    _ => {
                        if self.is_p("(") {
                            self.next();
                            let mut args = Vec::new();
                            if !self.eat_p(")") {
                                loop {
                                    args.push(self.expr()?);
                                    if self.eat_p(")") {
                                        break;
                                    }
                                    self.expect_p(",")?;
                                }
                            }
                            ExprKind::Call(name, args)
                        } else {
                            let mut segs = vec![Seg::Key(name)];
                            loop {
                                if self.is_p(".") {
                                    self.next();
                                    let k = self.next();
                                    match k.tok {
                                        Tok::Ident(s) | Tok::Quoted(s) => segs.push(Seg::Key(s)),
                                        other => {
                                            return Err(syntax(
                                                k.pos,
                                                format!(
                                                    "expected a field name after `.`, found {}",
                                                    Self::describe(&other)
                                                ),
                                                None,
                                            ))
                                        }
                                    }
                                } else if self.is_p("[") {
                                    self.next();
                                    let k = self.next();
                                    let Tok::Int(n) = k.tok else {
                                        return Err(syntax(k.pos, "expected an array index", None));
                                    };
                                    let n = u32::try_from(n).map_err(|_| {
                                        syntax(k.pos, "array index out of range", None)
                                    })?;
                                    segs.push(Seg::Index(n));
                                    self.expect_p("]")?;
                                } else {
                                    break;
                                }
                            }
                            ExprKind::Path(Path { segs, wrap: false })
                        }
                    }
                }
            }
            _ => {
                self.i = save;
                return Err(self.unexpected("an expression"));
            }
        };
        Ok(Expr { kind, pos })
    }

    fn case(&mut self, pos: Pos) -> Result<Expr, SqlError> {
        self.enter()?;
        let operand = if self.is_kw("when") {
            None
        } else {
            Some(Box::new(self.expr()?))
        };
        let mut whens = Vec::new();
        while self.eat_kw("when") {
            let w = self.expr()?;
            self.expect_kw("then")?;
            let r = self.expr()?;
            whens.push((w, r));
        }
        if whens.is_empty() {
            return Err(self.unexpected("`WHEN`"));
        }
        let else_ = if self.eat_kw("else") {
            Some(Box::new(self.expr()?))
        } else {
            None
        };
        self.expect_kw("end")?;
        self.depth -= 1;
        Ok(Expr {
            kind: ExprKind::Case(operand, whens, else_),
            pos,
        })
    }
}

/// Parses the text of a double-quoted path: `a.b[0].c`, `$.a[0]`, `.a[1].v`.
pub fn parse_path_text(s: &str, pos: Pos) -> Result<Path, SqlError> {
    let bad = |m: &str| {
        syntax(
            pos,
            format!("bad path \"{s}\": {m}"),
            Some("write \"a.b[0].c\", \"$.a[0]\" or \".a[0]\""),
        )
    };
    let mut rest = s;
    let mut wrap = false;
    if let Some(r) = rest.strip_prefix("$.") {
        rest = r;
    } else if rest == "$" {
        rest = "";
    } else if let Some(r) = rest.strip_prefix('.') {
        wrap = true;
        rest = r;
    }
    let mut segs = Vec::new();
    let b = rest.as_bytes();
    let mut i = 0;
    let mut expect_key = true;
    if b.is_empty() && !s.starts_with('$') {
        return Err(bad("empty path"));
    }
    while i < b.len() {
        if b[i] == b'[' {
            let end = rest[i..].find(']').ok_or_else(|| bad("missing `]`"))? + i;
            let n: u32 = rest[i + 1..end]
                .trim()
                .parse()
                .map_err(|_| bad("array index must be a non-negative integer"))?;
            segs.push(Seg::Index(n));
            i = end + 1;
            expect_key = false;
            if i < b.len() {
                if b[i] == b'.' {
                    i += 1;
                    expect_key = true;
                    if i >= b.len() {
                        return Err(bad("ends with `.`"));
                    }
                } else if b[i] != b'[' {
                    return Err(bad("expected `.` or `[` after `]`"));
                }
            }
            continue;
        }
        if !expect_key {
            return Err(bad("expected `.` or `[`"));
        }
        let start = i;
        while i < b.len() && b[i] != b'.' && b[i] != b'[' {
            i += 1;
        }
        if start == i {
            return Err(bad("empty field name"));
        }
        segs.push(Seg::Key(rest[start..i].to_string()));
        if i < b.len() && b[i] == b'.' {
            i += 1;
            if i >= b.len() {
                return Err(bad("ends with `.`"));
            }
            expect_key = true;
        } else {
            expect_key = false;
        }
    }
    Ok(Path { segs, wrap })
}
