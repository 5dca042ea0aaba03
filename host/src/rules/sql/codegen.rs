//! Code generation: the IR becomes one Wasm function, `sluice_on_message`, appended to a
//! re-encoded copy of the SQL runtime module.
//!
//! Values live in pairs of locals `(tag: i32, bits: i64)` (tags in `shared.rs`). Control flow,
//! AND/OR/NOT, CASE, comparisons and arithmetic on numbers are Wasm instructions; runtime
//! helpers (`rt_*`) are called for path reads, string work, function bodies, mixed-type slow
//! paths and the output writer. A helper returns the tag and leaves the bits at `RET`.

use std::collections::HashMap;
use std::sync::OnceLock;

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{
    BlockType, CodeSection, ConstExpr, DataCountSection, DataSection, ExportKind, ExportSection,
    Function, FunctionSection, Instruction as I, MemArg, Module, TypeSection, ValType,
};
use wasmparser::{Operator, Parser, Payload};

use super::error::SqlError;
use super::lower::{Ir, OutItem, Program};
use super::parser::{ArithOp, CmpOp, Lit, Seg};
use super::shared::*;
use super::DataType;

/// What the compiler needs to know about the embedded runtime module.
#[derive(Debug)]
pub struct RuntimeInfo {
    exports: HashMap<String, u32>,
    imported_funcs: u32,
    defined_funcs: u32,
    ret_addr: u32,
    args_addr: u32,
    consts_addr: u32,
}

fn internal(e: impl std::fmt::Display) -> SqlError {
    SqlError::Internal(e.to_string())
}

/// Reads the runtime's exports and the addresses of its `RET`, `ARGS` and `CONSTS` statics.
pub fn analyze(bytes: &[u8]) -> Result<RuntimeInfo, SqlError> {
    let mut exports = HashMap::new();
    let mut imported_funcs = 0;
    let mut defined_funcs = 0;
    let mut bodies = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(internal)? {
            Payload::ImportSection(r) => {
                for imp in r.into_imports() {
                    if matches!(imp.map_err(internal)?.ty, wasmparser::TypeRef::Func(_)) {
                        imported_funcs += 1;
                    }
                }
            }
            Payload::FunctionSection(r) => defined_funcs = r.count(),
            Payload::ExportSection(r) => {
                for e in r {
                    let e = e.map_err(internal)?;
                    if e.kind == wasmparser::ExternalKind::Func {
                        exports.insert(e.name.to_string(), e.index);
                    }
                }
            }
            Payload::CodeSectionEntry(body) => bodies.push(body),
            _ => {}
        }
    }
    let const_of = |name: &str| -> Result<u32, SqlError> {
        let idx = *exports
            .get(name)
            .ok_or_else(|| internal(format!("runtime lacks export {name}")))?;
        let body = bodies
            .get((idx - imported_funcs) as usize)
            .ok_or_else(|| internal(format!("no body for {name}")))?;
        let mut ops = body.get_operators_reader().map_err(internal)?;
        match ops.read().map_err(internal)? {
            Operator::I32Const { value } => Ok(value as u32),
            other => Err(internal(format!("{name} is not a constant: {other:?}"))),
        }
    };
    Ok(RuntimeInfo {
        ret_addr: const_of("rt_ret_addr")?,
        args_addr: const_of("rt_args_addr")?,
        consts_addr: const_of("rt_consts_addr")?,
        exports,
        imported_funcs,
        defined_funcs,
    })
}

/// The embedded runtime, analysed once per process.
pub fn runtime() -> Result<&'static RuntimeInfo, SqlError> {
    static INFO: OnceLock<Result<RuntimeInfo, SqlError>> = OnceLock::new();
    INFO.get_or_init(|| analyze(super::RUNTIME_WASM))
        .as_ref()
        .map_err(Clone::clone)
}

type Loc = (u32, u32);

struct Gen<'a> {
    rt: &'a RuntimeInfo,
    prog: &'a Program,
    locals: Vec<ValType>,
    ins: Vec<I<'static>>,
    consts: Vec<u8>,
    interned: HashMap<Vec<u8>, (u32, u32)>,
    path_slots: Vec<Loc>,
    memo_slots: Vec<Loc>,
    /// Root members `rt_begin` indexes while it validates a json payload (first steps of the
    /// rule's paths, at most `MAX_TOP_FIELDS`).
    top_fields: Vec<String>,
}

const M32: MemArg = MemArg {
    offset: 0,
    align: 2,
    memory_index: 0,
};
const M64: MemArg = MemArg {
    offset: 0,
    align: 3,
    memory_index: 0,
};
const M64_8: MemArg = MemArg {
    offset: 8,
    align: 3,
    memory_index: 0,
};

fn cmp_code(op: CmpOp) -> i32 {
    match op {
        CmpOp::Eq => CMP_EQ,
        CmpOp::Ne => CMP_NE,
        CmpOp::Lt => CMP_LT,
        CmpOp::Le => CMP_LE,
        CmpOp::Gt => CMP_GT,
        CmpOp::Ge => CMP_GE,
    }
}

fn arith_code(op: ArithOp) -> i32 {
    match op {
        ArithOp::Add => OP_ADD,
        ArithOp::Sub => OP_SUB,
        ArithOp::Mul => OP_MUL,
        ArithOp::Div => OP_DIV,
        ArithOp::Mod => OP_MOD,
    }
}

impl<'a> Gen<'a> {
    fn local(&mut self, t: ValType) -> u32 {
        self.locals.push(t);
        1 + self.locals.len() as u32
    }
    fn val(&mut self) -> Loc {
        (self.local(ValType::I32), self.local(ValType::I64))
    }
    fn e(&mut self, i: I<'static>) {
        self.ins.push(i);
    }
    fn f(&self, name: &str) -> Result<u32, SqlError> {
        self.rt
            .exports
            .get(name)
            .copied()
            .ok_or_else(|| internal(format!("runtime lacks export {name}")))
    }
    fn konst(&mut self, bytes: &[u8]) -> Result<(u32, u32), SqlError> {
        if let Some(c) = self.interned.get(bytes) {
            return Ok(*c);
        }
        if self.consts.len() + bytes.len() > CONSTS_CAP {
            return Err(SqlError::Invalid {
                message: format!("the rule's constants exceed {CONSTS_CAP} bytes"),
                line: 1,
                column: 1,
            });
        }
        let c = (
            self.rt.consts_addr + self.consts.len() as u32,
            bytes.len() as u32,
        );
        self.consts.extend_from_slice(bytes);
        self.interned.insert(bytes.to_vec(), c);
        Ok(c)
    }
    fn set(&mut self, (t, b): Loc, tag: i32, bits: i64) {
        self.e(I::I32Const(tag));
        self.e(I::LocalSet(t));
        self.e(I::I64Const(bits));
        self.e(I::LocalSet(b));
    }
    fn copy(&mut self, to: Loc, from: Loc) {
        self.e(I::LocalGet(from.0));
        self.e(I::LocalSet(to.0));
        self.e(I::LocalGet(from.1));
        self.e(I::LocalSet(to.1));
    }
    /// After a helper returned a tag: store it, return FAILED on `TAG_ERR`, load the bits.
    fn take_ret(&mut self, (t, b): Loc) {
        self.e(I::LocalTee(t));
        self.e(I::I32Const(TAG_ERR));
        self.e(I::I32Eq);
        self.e(I::If(BlockType::Empty));
        self.e(I::I32Const(-1));
        self.e(I::Return);
        self.e(I::End);
        self.e(I::I32Const(self.rt.ret_addr as i32));
        self.e(I::I64Load(M64));
        self.e(I::LocalSet(b));
    }
    fn lit(&mut self, l: &Lit) -> Result<(i32, i64), SqlError> {
        Ok(match l {
            Lit::Null => (TAG_NULL, 0),
            Lit::Bool(v) => (TAG_BOOL, *v as i64),
            Lit::Int(v) => (TAG_INT, *v),
            Lit::Float(v) => (TAG_FLOAT, v.to_bits() as i64),
            Lit::Str(s) => {
                let (p, n) = self.konst(s.as_bytes())?;
                (TAG_STR, ((n as u64) << 32 | p as u64) as i64)
            }
        })
    }
    fn is_tag(&mut self, t: u32, tag: i32) {
        self.e(I::LocalGet(t));
        self.e(I::I32Const(tag));
        self.e(I::I32Eq);
    }
    fn is_num(&mut self, t: u32) {
        self.e(I::LocalGet(t));
        self.e(I::I32Const(TAG_INT));
        self.e(I::I32Sub);
        self.e(I::I32Const(2));
        self.e(I::I32LtU);
    }
    fn as_f64(&mut self, (t, b): Loc) {
        self.e(I::LocalGet(b));
        self.e(I::F64ConvertI64S);
        self.e(I::LocalGet(b));
        self.e(I::F64ReinterpretI64);
        self.is_tag(t, TAG_INT);
        self.e(I::Select);
    }

    fn value(&mut self, ir: &Ir) -> Result<Loc, SqlError> {
        match ir {
            Ir::Const(l) => {
                let (tag, bits) = self.lit(l)?;
                let v = self.val();
                self.set(v, tag, bits);
                Ok(v)
            }
            Ir::Path(id) => self.path(*id),
            Ir::AliasOr(id, alias) => {
                let p = self.path(*id)?;
                let v = self.val();
                self.is_tag(p.0, TAG_UNDEF);
                self.e(I::If(BlockType::Empty));
                let a = self.value(alias)?;
                self.copy(v, a);
                self.e(I::Else);
                self.copy(v, p);
                self.e(I::End);
                Ok(v)
            }
            Ir::Star => {
                let v = self.val();
                self.e(I::I32Const(TAG_BYTES));
                self.e(I::LocalSet(v.0));
                self.e(I::LocalGet(0));
                self.e(I::I64ExtendI32U);
                self.e(I::LocalGet(1));
                self.e(I::I64ExtendI32U);
                self.e(I::I64Const(32));
                self.e(I::I64Shl);
                self.e(I::I64Or);
                self.e(I::LocalSet(v.1));
                Ok(v)
            }
            Ir::Neg(x) => {
                let a = self.value(x)?;
                let v = self.val();
                // int (not MIN): 0 - a; float: f64.neg; else the runtime.
                self.is_tag(a.0, TAG_INT);
                self.e(I::LocalGet(a.1));
                self.e(I::I64Const(i64::MIN));
                self.e(I::I64Ne);
                self.e(I::I32And);
                self.e(I::If(BlockType::Empty));
                self.e(I::I64Const(0));
                self.e(I::LocalGet(a.1));
                self.e(I::I64Sub);
                self.e(I::LocalSet(v.1));
                self.e(I::I32Const(TAG_INT));
                self.e(I::LocalSet(v.0));
                self.e(I::Else);
                self.is_tag(a.0, TAG_FLOAT);
                self.e(I::If(BlockType::Empty));
                self.e(I::LocalGet(a.1));
                self.e(I::F64ReinterpretI64);
                self.e(I::F64Neg);
                self.e(I::I64ReinterpretF64);
                self.e(I::LocalSet(v.1));
                self.e(I::I32Const(TAG_FLOAT));
                self.e(I::LocalSet(v.0));
                self.e(I::Else);
                self.slow_arith(OP_NEG, a, a, v)?;
                self.e(I::End);
                self.e(I::End);
                Ok(v)
            }
            Ir::Arith(op, l, r) => {
                let a = self.value(l)?;
                let b = self.value(r)?;
                self.arith(*op, a, b)
            }
            Ir::Cmp(..)
            | Ir::And(..)
            | Ir::Or(..)
            | Ir::Not(..)
            | Ir::In(..)
            | Ir::Like(..)
            | Ir::Between(..)
            | Ir::IsNull(..) => {
                self.cond(ir)?;
                let v = self.val();
                self.e(I::I64ExtendI32U);
                self.e(I::LocalSet(v.1));
                self.e(I::I32Const(TAG_BOOL));
                self.e(I::LocalSet(v.0));
                Ok(v)
            }
            Ir::Case(op, whens, els) => {
                let v = self.val();
                let opv = match op {
                    Some(o) => Some(self.value(o)?),
                    None => None,
                };
                for (w, t) in whens {
                    match opv {
                        Some(o) => {
                            let wv = self.value(w)?;
                            self.cmp_locs(CmpOp::Eq, o, wv)?;
                        }
                        None => self.cond(w)?,
                    }
                    self.e(I::If(BlockType::Empty));
                    let tv = self.value(t)?;
                    self.copy(v, tv);
                    self.e(I::Else);
                }
                match els {
                    Some(x) => {
                        let xv = self.value(x)?;
                        self.copy(v, xv);
                    }
                    None => self.set(v, TAG_UNDEF, 0),
                }
                for _ in whens {
                    self.e(I::End);
                }
                Ok(v)
            }
            Ir::Nanvl(x, d) => {
                let a = self.value(x)?;
                let v = self.val();
                self.is_tag(a.0, TAG_UNDEF);
                self.is_tag(a.0, TAG_NULL);
                self.e(I::I32Or);
                self.is_tag(a.0, TAG_FLOAT);
                self.e(I::LocalGet(a.1));
                self.e(I::F64ReinterpretI64);
                self.e(I::LocalGet(a.1));
                self.e(I::F64ReinterpretI64);
                self.e(I::F64Ne);
                self.e(I::I32And);
                self.e(I::I32Or);
                self.e(I::If(BlockType::Empty));
                let dv = self.value(d)?;
                self.copy(v, dv);
                self.e(I::Else);
                self.copy(v, a);
                self.e(I::End);
                Ok(v)
            }
            Ir::Call { func, args, memo } => {
                let export = func
                    .export
                    .ok_or_else(|| internal(format!("{} has no runtime export", func.name)))?;
                let fidx = self.f(export)?;
                let slot = memo.map(|m| self.memo_slots[m]);
                let v = match slot {
                    Some(s) => {
                        self.e(I::LocalGet(s.0));
                        self.e(I::I32Eqz);
                        self.e(I::If(BlockType::Empty));
                        s
                    }
                    None => self.val(),
                };
                let mut locs = Vec::new();
                for a in args {
                    locs.push(self.value(a)?);
                }
                for (i, (t, b)) in locs.iter().enumerate() {
                    let addr = (self.rt.args_addr + i as u32 * ARG_SLOT_BYTES) as i32;
                    self.e(I::I32Const(addr));
                    self.e(I::LocalGet(*t));
                    self.e(I::I32Store(M32));
                    self.e(I::I32Const(addr));
                    self.e(I::LocalGet(*b));
                    self.e(I::I64Store(M64_8));
                }
                self.e(I::I32Const(args.len() as i32));
                self.e(I::Call(fidx));
                self.take_ret(v);
                if slot.is_some() {
                    self.e(I::End);
                }
                Ok(v)
            }
        }
    }

    fn path(&mut self, id: usize) -> Result<Loc, SqlError> {
        let slot = self.path_slots[id];
        let p = &self.prog.paths[id];
        let mut desc = vec![if p.wrap { PATH_WRAP } else { 0 }];
        let mut segs = &p.segs[..];
        if let Some(Seg::Key(first)) = segs.first() {
            if let Some(k) = self.top_fields.iter().position(|f| f == first) {
                desc[0] |= PATH_TOP;
                desc.extend_from_slice(&(k as u16).to_le_bytes());
                segs = &segs[1..];
            }
        }
        for s in segs {
            match s {
                Seg::Key(k) => {
                    let n = u16::try_from(k.len()).map_err(|_| internal("field name too long"))?;
                    desc.push(SEG_KEY);
                    desc.extend_from_slice(&n.to_le_bytes());
                    desc.extend_from_slice(k.as_bytes());
                }
                Seg::Index(n) => {
                    desc.push(SEG_INDEX);
                    desc.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
        let (dp, dl) = self.konst(&desc)?;
        let f = self.f("rt_path")?;
        self.e(I::LocalGet(slot.0));
        self.e(I::I32Eqz);
        self.e(I::If(BlockType::Empty));
        self.e(I::I32Const(dp as i32));
        self.e(I::I32Const(dl as i32));
        self.e(I::Call(f));
        self.take_ret(slot);
        self.e(I::End);
        Ok(slot)
    }

    fn slow_arith(&mut self, op: i32, a: Loc, b: Loc, v: Loc) -> Result<(), SqlError> {
        let f = self.f("rt_arith")?;
        self.e(I::I32Const(op));
        self.e(I::LocalGet(a.0));
        self.e(I::LocalGet(a.1));
        self.e(I::LocalGet(b.0));
        self.e(I::LocalGet(b.1));
        self.e(I::Call(f));
        self.take_ret(v);
        Ok(())
    }

    fn arith(&mut self, op: ArithOp, a: Loc, b: Loc) -> Result<Loc, SqlError> {
        let v = self.val();
        let tmp = self.local(ValType::I64);
        self.e(I::Block(BlockType::Empty)); // done
        self.e(I::Block(BlockType::Empty)); // slow
                                            // int op int
        self.is_tag(a.0, TAG_INT);
        self.is_tag(b.0, TAG_INT);
        self.e(I::I32And);
        self.e(I::If(BlockType::Empty));
        match op {
            ArithOp::Add | ArithOp::Sub => {
                self.e(I::LocalGet(a.1));
                self.e(I::LocalGet(b.1));
                self.e(if op == ArithOp::Add {
                    I::I64Add
                } else {
                    I::I64Sub
                });
                self.e(I::LocalSet(tmp));
                if op == ArithOp::Add {
                    // ((a ^ r) & (b ^ r)) < 0
                    self.e(I::LocalGet(a.1));
                    self.e(I::LocalGet(tmp));
                    self.e(I::I64Xor);
                    self.e(I::LocalGet(b.1));
                    self.e(I::LocalGet(tmp));
                    self.e(I::I64Xor);
                } else {
                    // ((a ^ b) & (a ^ r)) < 0
                    self.e(I::LocalGet(a.1));
                    self.e(I::LocalGet(b.1));
                    self.e(I::I64Xor);
                    self.e(I::LocalGet(a.1));
                    self.e(I::LocalGet(tmp));
                    self.e(I::I64Xor);
                }
                self.e(I::I64And);
                self.e(I::I64Const(0));
                self.e(I::I64LtS);
                self.e(I::BrIf(1));
                self.e(I::LocalGet(tmp));
            }
            ArithOp::Mul => {
                for x in [a.1, b.1] {
                    self.e(I::LocalGet(x));
                    self.e(I::I32WrapI64);
                    self.e(I::I64ExtendI32S);
                    self.e(I::LocalGet(x));
                    self.e(I::I64Ne);
                    self.e(I::BrIf(1));
                }
                self.e(I::LocalGet(a.1));
                self.e(I::LocalGet(b.1));
                self.e(I::I64Mul);
            }
            ArithOp::Div => {
                self.e(I::LocalGet(b.1));
                self.e(I::I64Eqz);
                self.e(I::BrIf(1));
                self.e(I::LocalGet(b.1));
                self.e(I::I64Const(-1));
                self.e(I::I64Eq);
                self.e(I::BrIf(1));
                self.e(I::LocalGet(a.1));
                self.e(I::LocalGet(b.1));
                self.e(I::I64RemS);
                self.e(I::I64Const(0));
                self.e(I::I64Ne);
                self.e(I::BrIf(1));
                self.e(I::LocalGet(a.1));
                self.e(I::LocalGet(b.1));
                self.e(I::I64DivS);
            }
            ArithOp::Mod => {
                self.e(I::LocalGet(b.1));
                self.e(I::I64Eqz);
                self.e(I::LocalGet(b.1));
                self.e(I::I64Const(-1));
                self.e(I::I64Eq);
                self.e(I::I32Or);
                self.e(I::BrIf(1));
                self.e(I::LocalGet(a.1));
                self.e(I::LocalGet(b.1));
                self.e(I::I64RemS);
            }
        }
        self.e(I::LocalSet(v.1));
        self.e(I::I32Const(TAG_INT));
        self.e(I::LocalSet(v.0));
        self.e(I::Br(2));
        self.e(I::End);
        // number op number as floats (fmod is left to the runtime)
        if op != ArithOp::Mod {
            let fb = self.local(ValType::F64);
            self.is_num(a.0);
            self.is_num(b.0);
            self.e(I::I32And);
            self.e(I::If(BlockType::Empty));
            self.as_f64(b);
            self.e(I::LocalSet(fb));
            if op == ArithOp::Div {
                self.e(I::LocalGet(fb));
                self.e(I::F64Const(0.0.into()));
                self.e(I::F64Eq);
                self.e(I::BrIf(1));
            }
            self.as_f64(a);
            self.e(I::LocalGet(fb));
            self.e(match op {
                ArithOp::Add => I::F64Add,
                ArithOp::Sub => I::F64Sub,
                ArithOp::Mul => I::F64Mul,
                _ => I::F64Div,
            });
            self.e(I::I64ReinterpretF64);
            self.e(I::LocalSet(v.1));
            self.e(I::I32Const(TAG_FLOAT));
            self.e(I::LocalSet(v.0));
            self.e(I::Br(2));
            self.e(I::End);
        }
        self.e(I::End); // slow
        self.slow_arith(arith_code(op), a, b, v)?;
        self.e(I::End); // done
        Ok(v)
    }

    /// Pushes 0 or 1: `a op b` with the dialect's coercion rules.
    fn cmp_locs(&mut self, op: CmpOp, a: Loc, b: Loc) -> Result<(), SqlError> {
        let f = self.f("rt_cmp")?;
        let (iop, fop) = match op {
            CmpOp::Eq => (I::I64Eq, I::F64Eq),
            CmpOp::Ne => (I::I64Ne, I::F64Ne),
            CmpOp::Lt => (I::I64LtS, I::F64Lt),
            CmpOp::Le => (I::I64LeS, I::F64Le),
            CmpOp::Gt => (I::I64GtS, I::F64Gt),
            CmpOp::Ge => (I::I64GeS, I::F64Ge),
        };
        self.is_tag(a.0, TAG_INT);
        self.is_tag(b.0, TAG_INT);
        self.e(I::I32And);
        self.e(I::If(BlockType::Result(ValType::I32)));
        self.e(I::LocalGet(a.1));
        self.e(I::LocalGet(b.1));
        self.e(iop);
        self.e(I::Else);
        self.is_num(a.0);
        self.is_num(b.0);
        self.e(I::I32And);
        self.e(I::If(BlockType::Result(ValType::I32)));
        self.as_f64(a);
        self.as_f64(b);
        self.e(fop);
        self.e(I::Else);
        self.e(I::I32Const(cmp_code(op)));
        self.e(I::LocalGet(a.0));
        self.e(I::LocalGet(a.1));
        self.e(I::LocalGet(b.0));
        self.e(I::LocalGet(b.1));
        self.e(I::Call(f));
        self.e(I::End);
        self.e(I::End);
        Ok(())
    }

    /// Pushes 0 or 1 for a condition.
    fn cond(&mut self, ir: &Ir) -> Result<(), SqlError> {
        match ir {
            Ir::Cmp(op, l, r) => {
                let a = self.value(l)?;
                let b = self.value(r)?;
                self.cmp_locs(*op, a, b)
            }
            Ir::And(l, r) => {
                self.cond(l)?;
                self.e(I::If(BlockType::Result(ValType::I32)));
                self.cond(r)?;
                self.e(I::Else);
                self.e(I::I32Const(0));
                self.e(I::End);
                Ok(())
            }
            Ir::Or(l, r) => {
                self.cond(l)?;
                self.e(I::If(BlockType::Result(ValType::I32)));
                self.e(I::I32Const(1));
                self.e(I::Else);
                self.cond(r)?;
                self.e(I::End);
                Ok(())
            }
            Ir::Not(x) => {
                self.cond(x)?;
                self.e(I::I32Eqz);
                Ok(())
            }
            Ir::In(x, lits) => {
                let a = self.value(x)?;
                self.e(I::I32Const(0));
                for l in lits {
                    let (tag, bits) = self.lit(l)?;
                    let b = self.val();
                    self.set(b, tag, bits);
                    self.cmp_locs(CmpOp::Eq, a, b)?;
                    self.e(I::I32Or);
                }
                Ok(())
            }
            Ir::Like(x, pat) => {
                let a = self.value(x)?;
                let (pp, pl) = self.konst(pat.as_bytes())?;
                let f = self.f("rt_like")?;
                self.e(I::LocalGet(a.0));
                self.e(I::LocalGet(a.1));
                self.e(I::I32Const(pp as i32));
                self.e(I::I32Const(pl as i32));
                self.e(I::Call(f));
                Ok(())
            }
            Ir::Between(x, lo, hi) => {
                let a = self.value(x)?;
                let l = self.value(lo)?;
                self.cmp_locs(CmpOp::Ge, a, l)?;
                self.e(I::If(BlockType::Result(ValType::I32)));
                let h = self.value(hi)?;
                self.cmp_locs(CmpOp::Le, a, h)?;
                self.e(I::Else);
                self.e(I::I32Const(0));
                self.e(I::End);
                Ok(())
            }
            Ir::IsNull(x) => {
                let a = self.value(x)?;
                self.is_tag(a.0, TAG_NULL);
                self.is_tag(a.0, TAG_UNDEF);
                self.e(I::I32Or);
                Ok(())
            }
            other => {
                // A value used as a condition: true only for boolean true.
                let a = self.value(other)?;
                self.is_tag(a.0, TAG_BOOL);
                self.e(I::LocalGet(a.1));
                self.e(I::I64Const(0));
                self.e(I::I64Ne);
                self.e(I::I32And);
                Ok(())
            }
        }
    }

    fn names_list(&mut self, names: &[String]) -> Result<(u32, u32), SqlError> {
        if names.is_empty() {
            return Ok((0, 0));
        }
        let mut b = Vec::new();
        for n in names {
            let len = u16::try_from(n.len()).map_err(|_| internal("name too long"))?;
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(n.as_bytes());
        }
        self.konst(&b)
    }

    fn body(&mut self) -> Result<(), SqlError> {
        for _ in 0..self.prog.paths.len() {
            let v = self.val();
            self.path_slots.push(v);
        }
        for _ in 0..self.prog.memo_slots {
            let v = self.val();
            self.memo_slots.push(v);
        }
        let json = self.prog.data_type == DataType::Json;
        if json {
            for p in &self.prog.paths {
                if let Some(Seg::Key(first)) = p.segs.first() {
                    if !self.top_fields.contains(first) && self.top_fields.len() < MAX_TOP_FIELDS {
                        self.top_fields.push(first.clone());
                    }
                }
            }
        }
        let fields = self.top_fields.clone();
        let (fp, fl) = self.names_list(&fields)?;
        self.e(I::LocalGet(0));
        self.e(I::LocalGet(1));
        self.e(I::I32Const(json as i32));
        self.e(I::I32Const(fp as i32));
        self.e(I::I32Const(fl as i32));
        let f = self.f("rt_begin")?;
        self.e(I::Call(f));
        self.e(I::I32Eqz);
        self.e(I::If(BlockType::Empty));
        // An invalid payload (`rt_begin` logged it): a status of its own, which the host counts.
        self.e(I::I32Const(STATUS_INVALID_PAYLOAD));
        self.e(I::Return);
        self.e(I::End);
        if let Some(w) = &self.prog.where_ {
            self.cond(w)?;
            self.e(I::I32Eqz);
            self.e(I::If(BlockType::Empty));
            self.e(I::I32Const(0));
            self.e(I::Return);
            self.e(I::End);
        }
        if self.prog.items == [OutItem::Star] {
            let f = self.f("rt_emit_payload")?;
            self.e(I::Call(f));
            self.e(I::Drop);
            self.e(I::I32Const(0));
            return Ok(());
        }
        let explicit: Vec<String> = self
            .prog
            .items
            .iter()
            .filter_map(|i| match i {
                OutItem::Item { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect();
        // Evaluate every item before writing, so a runtime error leaves no partial output.
        let mut vals = Vec::new();
        for item in &self.prog.items {
            if let OutItem::Item { expr, .. } = item {
                vals.push(Some(self.value(expr)?));
            } else {
                vals.push(None);
            }
        }
        let f = self.f("rt_out_begin")?;
        self.e(I::Call(f));
        for (item, v) in self.prog.items.iter().zip(vals) {
            match item {
                OutItem::Star => {
                    let (p, n) = self.names_list(&explicit)?;
                    let f = self.f("rt_out_star")?;
                    self.e(I::I32Const(p as i32));
                    self.e(I::I32Const(n as i32));
                    self.e(I::Call(f));
                }
                OutItem::FlatMap(props) => {
                    let (p, n) = self.names_list(props)?;
                    let f = self.f("rt_out_flatmap")?;
                    self.e(I::I32Const(p as i32));
                    self.e(I::I32Const(n as i32));
                    self.e(I::Call(f));
                }
                OutItem::Item { name, .. } => {
                    let v = v.ok_or_else(|| internal("missing item value"))?;
                    let key = format!("{}:", serde_json::to_string(name).map_err(internal)?);
                    let (kp, kl) = self.konst(key.as_bytes())?;
                    let f = self.f("rt_out_item")?;
                    self.e(I::I32Const(kp as i32));
                    self.e(I::I32Const(kl as i32));
                    self.e(I::LocalGet(v.0));
                    self.e(I::LocalGet(v.1));
                    self.e(I::Call(f));
                }
            }
        }
        let f = self.f("rt_out_emit")?;
        self.e(I::Call(f));
        self.e(I::Drop);
        self.e(I::I32Const(0));
        Ok(())
    }
}

/// Encodes `prog` into a standalone ABI v1 module.
pub fn generate(prog: &Program) -> Result<Vec<u8>, SqlError> {
    let rt = runtime()?;
    let mut g = Gen {
        rt,
        prog,
        locals: Vec::new(),
        ins: Vec::new(),
        consts: Vec::new(),
        interned: HashMap::new(),
        path_slots: Vec::new(),
        memo_slots: Vec::new(),
        top_fields: Vec::new(),
    };
    g.body()?;
    let mut func = Function::new(g.locals.iter().map(|t| (1, *t)));
    for i in &g.ins {
        func.instruction(i);
    }
    func.instruction(&I::End);
    assemble(rt, super::RUNTIME_WASM, func, &g.consts)
}

const KEEP_EXPORTS: &[&str] = &["memory", "sluice_abi_version", "sluice_alloc"];

fn assemble(
    rt: &RuntimeInfo,
    bytes: &[u8],
    func: Function,
    consts: &[u8],
) -> Result<Vec<u8>, SqlError> {
    let mut re = RoundtripReencoder;
    let mut module = Module::new();
    let mut my_type = None;
    let mut code: Option<CodeSection> = None;
    let mut func = Some(func);
    let mut data_done = false;
    let on_message = rt.imported_funcs + rt.defined_funcs;
    let seg = |s: &mut DataSection| {
        s.active(
            0,
            &ConstExpr::i32_const(rt.consts_addr as i32),
            consts.iter().copied(),
        );
    };
    let flush =
        |module: &mut Module, code: &mut Option<CodeSection>, func: &mut Option<Function>| {
            if let Some(mut c) = code.take() {
                if let Some(f) = func.take() {
                    c.function(&f);
                }
                module.section(&c);
            }
        };
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(internal)?;
        if !matches!(payload, Payload::CodeSectionEntry(_)) {
            flush(&mut module, &mut code, &mut func);
        }
        match payload {
            Payload::Version { .. } => {}
            Payload::TypeSection(r) => {
                let mut s = TypeSection::new();
                re.parse_type_section(&mut s, r).map_err(internal)?;
                my_type = Some(s.len());
                s.ty()
                    .function([ValType::I32, ValType::I32], [ValType::I32]);
                module.section(&s);
            }
            Payload::ImportSection(r) => {
                let mut s = wasm_encoder::ImportSection::new();
                re.parse_import_section(&mut s, r).map_err(internal)?;
                module.section(&s);
            }
            Payload::FunctionSection(r) => {
                let mut s = FunctionSection::new();
                re.parse_function_section(&mut s, r).map_err(internal)?;
                s.function(my_type.ok_or_else(|| internal("runtime has no type section"))?);
                module.section(&s);
            }
            Payload::TableSection(r) => {
                let mut s = wasm_encoder::TableSection::new();
                re.parse_table_section(&mut s, r).map_err(internal)?;
                module.section(&s);
            }
            Payload::MemorySection(r) => {
                let mut s = wasm_encoder::MemorySection::new();
                re.parse_memory_section(&mut s, r).map_err(internal)?;
                module.section(&s);
            }
            Payload::GlobalSection(r) => {
                let mut s = wasm_encoder::GlobalSection::new();
                re.parse_global_section(&mut s, r).map_err(internal)?;
                module.section(&s);
            }
            Payload::ExportSection(r) => {
                let mut s = ExportSection::new();
                for e in r {
                    let e = e.map_err(internal)?;
                    if KEEP_EXPORTS.contains(&e.name) {
                        s.export(e.name, re.export_kind(e.kind).map_err(internal)?, e.index);
                    }
                }
                s.export("sluice_on_message", ExportKind::Func, on_message);
                module.section(&s);
            }
            Payload::ElementSection(r) => {
                let mut s = wasm_encoder::ElementSection::new();
                re.parse_element_section(&mut s, r).map_err(internal)?;
                module.section(&s);
            }
            Payload::DataCountSection { count, .. } => {
                module.section(&DataCountSection { count: count + 1 });
            }
            Payload::CodeSectionStart { .. } => code = Some(CodeSection::new()),
            Payload::CodeSectionEntry(body) => {
                let c = code
                    .as_mut()
                    .ok_or_else(|| internal("code entry outside the code section"))?;
                // Indices and types of the runtime are unchanged: copy the body as it is.
                c.raw(body.as_bytes());
            }
            Payload::DataSection(r) => {
                let mut s = DataSection::new();
                re.parse_data_section(&mut s, r).map_err(internal)?;
                seg(&mut s);
                module.section(&s);
                data_done = true;
            }
            Payload::CustomSection(_) => {}
            Payload::End(_) => {
                if !data_done {
                    let mut s = DataSection::new();
                    seg(&mut s);
                    module.section(&s);
                }
            }
            other => {
                return Err(internal(format!(
                    "unexpected section in the runtime: {other:?}"
                )))
            }
        }
    }
    Ok(module.finish())
}
