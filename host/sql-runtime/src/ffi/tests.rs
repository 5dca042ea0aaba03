//! The exports driven natively as generated code and the host drive them: the payload written
//! into the buffer `sluice_alloc` gave, constants in the constants area, arguments in the
//! argument slots, results read back from `RET` and the memory. Every test runs on its own
//! thread, so it has its own memory, state and host (one instance). Also run under Miri
//! (`cargo +nightly miri test -p sluice-sql-runtime --lib ffi::`), which checks the `unsafe`
//! below the exports: aliasing of the state, slices of the memory, stores into the arena.

use super::arena::with_state;
use super::functions::*;
use super::host::sim::{with_host, Host};
use super::mem::{self, MAX_PAGES, PAGE};
use super::message::*;
use super::ops::*;
use super::output::*;
use super::path::*;
use crate::shared::*;

/// A result read back from the boundary.
#[derive(Debug, Clone, PartialEq)]
enum R {
    Undef,
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Json(String),
    Bytes(Vec<u8>),
    Err,
}

/// Plays generated code and the host for one instance.
struct Rule {
    /// The next free byte of the constants area.
    consts: usize,
}

impl Rule {
    /// A fresh host: `topic`, no tags, time 1000.
    fn new(topic: &str) -> Rule {
        with_host(|h| {
            *h = Host {
                topic: topic.into(),
                message_id: b"m-1".to_vec(),
                product_key: b"pk".to_vec(),
                device_name: b"dev".to_vec(),
                now_ms: 1000,
                ..Host::default()
            }
        });
        Rule {
            consts: rt_consts_addr() as usize,
        }
    }

    /// A constant of the rule: (address, length) in the constants area.
    fn konst(&mut self, b: &[u8]) -> (i32, i32) {
        let at = self.consts;
        assert!(at + b.len() <= rt_consts_addr() as usize + CONSTS_CAP);
        mem::host_write(at, b);
        self.consts += b.len();
        (at as i32, b.len() as i32)
    }

    /// A `names`-format list as a constant.
    fn names(&mut self, names: &[&str]) -> (i32, i32) {
        let mut b = Vec::new();
        for n in names {
            b.extend_from_slice(&(n.len() as u16).to_le_bytes());
            b.extend_from_slice(n.as_bytes());
        }
        self.konst(&b)
    }

    /// Writes the payload where `sluice_alloc` says and starts the message; `rt_begin`'s result.
    fn message(&mut self, payload: &[u8], json: bool, fields: &[&str]) -> i32 {
        with_host(|h| h.raw_payload = payload.to_vec());
        // As the host asks: a power of two, at least 1024 bytes.
        let p = sluice_alloc(payload.len().max(1024).next_power_of_two() as i32);
        assert!(p > 0, "sluice_alloc gave {p}");
        mem::host_write(p as usize, payload);
        let (fp, fl) = self.names(fields);
        rt_begin(p, payload.len() as i32, json as i32, fp, fl)
    }

    /// Sets argument slot `i`.
    fn set_arg(&mut self, i: usize, tag: i32, bits: i64) {
        let at = rt_args_addr() as usize + i * ARG_SLOT_BYTES as usize;
        mem::host_write(at, &tag.to_le_bytes());
        mem::host_write(at + 8, &bits.to_le_bytes());
    }

    /// A value as generated code holds it; strings become constants.
    fn value(&mut self, v: &Arg<'_>) -> (i32, i64) {
        match v {
            Arg::Undef => (TAG_UNDEF, 0),
            Arg::Null => (TAG_NULL, 0),
            Arg::Bool(b) => (TAG_BOOL, *b as i64),
            Arg::Int(i) => (TAG_INT, *i),
            Arg::Float(f) => (TAG_FLOAT, f.to_bits() as i64),
            Arg::Str(s) => (TAG_STR, self.packed(s.as_bytes())),
            Arg::Json(s) => (TAG_JSON, self.packed(s.as_bytes())),
            Arg::Bytes(b) => (TAG_BYTES, self.packed(b)),
            Arg::Raw(tag, bits) => (*tag, *bits),
        }
    }

    fn packed(&mut self, b: &[u8]) -> i64 {
        let (p, l) = self.konst(b);
        ((l as u64) << 32 | p as u32 as u64) as i64
    }

    /// Calls a function export with these arguments; the result.
    fn call(&mut self, f: extern "C" fn(i32) -> i32, args: &[Arg<'_>]) -> R {
        for (i, a) in args.iter().enumerate() {
            let (tag, bits) = self.value(a);
            self.set_arg(i, tag, bits);
        }
        result(f(args.len() as i32))
    }

    /// A path descriptor as a constant: flags, the root-member index when `top` is set, steps.
    fn path(&mut self, wrap: bool, top: Option<u16>, steps: &[Step]) -> (i32, i32) {
        let mut d =
            vec![(if wrap { PATH_WRAP } else { 0 }) | (if top.is_some() { PATH_TOP } else { 0 })];
        if let Some(k) = top {
            d.extend_from_slice(&k.to_le_bytes());
        }
        for s in steps {
            match s {
                Step::Key(k) => {
                    d.push(SEG_KEY);
                    d.extend_from_slice(&(k.len() as u16).to_le_bytes());
                    d.extend_from_slice(k.as_bytes());
                }
                Step::Index(n) => {
                    d.push(SEG_INDEX);
                    d.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
        self.konst(&d)
    }

    fn read_path(&mut self, wrap: bool, top: Option<u16>, steps: &[Step]) -> R {
        let (p, l) = self.path(wrap, top, steps);
        result(rt_path(p, l))
    }

    /// Writes one output member `"key":value`.
    fn item(&mut self, key: &str, v: &Arg<'_>) {
        let key = serde_json::to_string(key).unwrap() + ":";
        let (kp, kl) = self.konst(key.as_bytes());
        let (tag, bits) = self.value(v);
        rt_out_item(kp, kl, tag, bits);
    }
}

enum Arg<'a> {
    Undef,
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    Json(&'a str),
    Bytes(&'a [u8]),
    /// A tag and bits as they are.
    Raw(i32, i64),
}

enum Step {
    Key(&'static str),
    Index(u32),
}

/// The bits a helper left in `RET`.
fn ret_bits() -> i64 {
    let b = mem::host_read(rt_ret_addr() as usize, 8);
    i64::from_le_bytes(b.try_into().unwrap())
}

/// The bytes a value's bits name.
fn bytes_of(bits: i64) -> Vec<u8> {
    let (p, l) = (bits as u32 as usize, (bits as u64 >> 32) as usize);
    if l == 0 {
        return Vec::new();
    }
    mem::host_read(p, l)
}

/// Decodes a helper's tag and `RET`.
fn result(tag: i32) -> R {
    let bits = ret_bits();
    let text = |bits| String::from_utf8(bytes_of(bits)).expect("UTF-8");
    match tag {
        TAG_UNDEF => R::Undef,
        TAG_NULL => R::Null,
        TAG_BOOL => R::Bool(bits != 0),
        TAG_INT => R::Int(bits),
        TAG_FLOAT => R::Float(f64::from_bits(bits as u64)),
        TAG_STR => R::Str(text(bits)),
        TAG_JSON => R::Json(text(bits)),
        TAG_BYTES => R::Bytes(bytes_of(bits)),
        TAG_ERR => R::Err,
        other => panic!("unknown tag {other}"),
    }
}

fn s(t: &str) -> R {
    R::Str(t.into())
}

/// What the rule failed with, as text (and forgets it).
fn failures() -> Vec<String> {
    with_host(|h| std::mem::take(&mut h.failures))
        .into_iter()
        .map(|f| String::from_utf8(f).unwrap())
        .collect()
}

fn outputs() -> Vec<String> {
    with_host(|h| std::mem::take(&mut h.outputs))
        .into_iter()
        .map(|f| String::from_utf8(f).unwrap())
        .collect()
}

fn arena() -> (usize, usize) {
    with_state(|s| s.arena())
}

#[test]
fn the_abi_exports_answer_as_before() {
    assert_eq!(sluice_abi_version(), 1);
    assert_eq!(sluice_alloc(-1), 0);
    let ret = rt_ret_addr() as usize;
    let args = rt_args_addr() as usize;
    let consts = rt_consts_addr() as usize;
    assert!(ret > 0 && ret.is_multiple_of(8) && args.is_multiple_of(8));
    assert!(args + MAX_ARGS * ARG_SLOT_BYTES as usize <= consts);
}

#[test]
fn the_payload_buffer_is_reused_while_large_enough_and_replaced_when_not() {
    let p = sluice_alloc(10);
    assert!(p > 0 && (p as usize).is_multiple_of(16), "{p}");
    assert_eq!(sluice_alloc(4096), p, "the first buffer holds 4096 bytes");
    let (base, _) = arena();
    assert_eq!(base, p as usize + 4096, "the arena starts after the buffer");
    let q = sluice_alloc(5000);
    assert_ne!(q, p);
    assert_eq!(arena().0, q as usize + 8192, "a power of two");
    assert_eq!(sluice_alloc(8192), q);
    assert_eq!(sluice_alloc(0), q);
}

#[test]
fn a_large_payload_grows_the_memory() {
    let mut rule = Rule::new("t");
    let before = mem::size();
    let payload = vec![7u8; 5 * PAGE];
    assert_eq!(rule.message(&payload, false, &[]), 1);
    assert!(
        mem::size() > before + 4 * PAGE,
        "{} -> {}",
        before,
        mem::size()
    );
    assert_eq!(rt_emit_payload(), 0);
    assert_eq!(with_host(|h| h.outputs[0].len()), payload.len());
    assert!(with_host(|h| h.outputs[0] == payload));
}

#[test]
fn a_payload_past_the_memory_limit_traps() {
    // A trap ends the instance: run it on a thread of its own. Natively a trap is a panic,
    // which may not leave an `extern "C"` export, so this calls what `sluice_alloc` calls.
    let trapped = std::thread::spawn(|| with_state(|s| s.payload_buffer(MAX_PAGES * PAGE))).join();
    assert!(trapped.is_err(), "no trap");
}

#[test]
fn paths_read_root_members_indexed_by_rt_begin_and_walk_the_rest() {
    let mut rule = Rule::new("t");
    let payload =
        br#"{"a": 1, "b": {"c": "x\ny", "d": [10, 2.5, true, null]}, "s": "plain", "a": 9}"#;
    assert_eq!(rule.message(payload, true, &["a", "b", "zz"]), 1);
    assert_eq!(
        rule.read_path(false, Some(0), &[]),
        R::Int(1),
        "first `a` wins"
    );
    assert_eq!(
        rule.read_path(false, Some(1), &[Step::Key("c")]),
        s("x\ny"),
        "unescaped into the arena"
    );
    assert_eq!(
        rule.read_path(false, Some(2), &[]),
        R::Undef,
        "not in the payload"
    );
    assert_eq!(
        rule.read_path(
            false,
            None,
            &[Step::Key("b"), Step::Key("d"), Step::Index(1)]
        ),
        R::Float(2.5)
    );
    assert_eq!(
        rule.read_path(false, Some(1), &[Step::Key("d"), Step::Index(2)]),
        R::Bool(true)
    );
    assert_eq!(
        rule.read_path(false, Some(1), &[Step::Key("d"), Step::Index(3)]),
        R::Null
    );
    assert_eq!(
        rule.read_path(false, Some(1), &[Step::Key("d"), Step::Index(4)]),
        R::Undef
    );
    assert_eq!(rule.read_path(false, None, &[Step::Key("s")]), s("plain"));
    assert_eq!(
        rule.read_path(false, Some(1), &[Step::Key("d")]),
        R::Json("[10, 2.5, true, null]".into())
    );
    assert_eq!(
        rule.read_path(true, None, &[Step::Key("s")]),
        R::Json(r#"["plain"]"#.into()),
        "a leading dot wraps"
    );
}

#[test]
fn an_invalid_json_payload_is_logged_and_skipped_and_binary_is_not_checked() {
    let mut rule = Rule::new("t");
    assert_eq!(rule.message(b"{\"a\":", true, &["a"]), 0);
    assert_eq!(rule.message(b"[1]", true, &[]), 0, "not an object");
    let logs = with_host(|h| std::mem::take(&mut h.logs));
    assert_eq!(
        logs,
        vec![
            (3, INVALID_PAYLOAD_LOG.as_bytes().to_vec()),
            (3, INVALID_PAYLOAD_LOG.as_bytes().to_vec())
        ]
    );
    assert_eq!(rule.message(b"\xff\x00 not json", false, &[]), 1);
    assert!(with_host(|h| h.logs.is_empty()));
}

#[test]
fn every_message_starts_with_an_empty_arena_and_a_fresh_index() {
    let mut rule = Rule::new("t");
    assert_eq!(rule.message(br#"{"a": "A\u0042"}"#, true, &["a"]), 1);
    let (base, start) = arena();
    assert_eq!(base, start);
    assert_eq!(rule.read_path(false, Some(0), &[]), s("AB"));
    let long = "é".repeat(2000);
    let (tag, bits) = rule.value(&Arg::Str(&long));
    let words: Vec<Arg<'_>> = (0..20).map(|_| Arg::Raw(tag, bits)).collect();
    assert_eq!(rule.call(rt_f_concat, &words), R::Str(long.repeat(20)));
    assert!(arena().1 >= base + 80_000, "{:?}", arena());
    // The next message: the same buffer, an empty arena, the old index forgotten.
    assert_eq!(rule.message(br#"{"b": "\u0043"}"#, true, &["a", "b"]), 1);
    assert_eq!(arena(), (base, base));
    assert_eq!(rule.read_path(false, Some(0), &[]), R::Undef);
    assert_eq!(rule.read_path(false, Some(1), &[]), s("C"));
    // Overwrites the previous message's arena.
    assert_eq!(rule.call(rt_f_upper, &[Arg::Str("abc")]), s("ABC"));
}

#[test]
fn comparisons_coerce_as_documented() {
    let mut rule = Rule::new("t");
    rule.message(b"{}", true, &[]);
    let mut cmp = |op, a: Arg<'_>, b: Arg<'_>| {
        let (ta, ba) = rule.value(&a);
        let (tb, bb) = rule.value(&b);
        rt_cmp(op, ta, ba, tb, bb)
    };
    assert_eq!(cmp(CMP_EQ, Arg::Int(2), Arg::Float(2.0)), 1);
    assert_eq!(cmp(CMP_LT, Arg::Str("10"), Arg::Int(9)), 0, "numeric");
    assert_eq!(cmp(CMP_LT, Arg::Str("10"), Arg::Str("9")), 1, "bytewise");
    assert_eq!(cmp(CMP_EQ, Arg::Str("x"), Arg::Int(1)), 0);
    assert_eq!(cmp(CMP_NE, Arg::Bool(true), Arg::Bool(false)), 1);
    assert_eq!(cmp(CMP_LT, Arg::Bool(true), Arg::Bool(false)), 0);
    assert_eq!(cmp(CMP_EQ, Arg::Null, Arg::Null), 1);
    assert_eq!(cmp(CMP_EQ, Arg::Undef, Arg::Undef), 0);
    assert_eq!(cmp(CMP_GE, Arg::Int(i64::MAX), Arg::Int(i64::MAX - 1)), 1);
}

#[test]
fn arithmetic_widens_and_fails_with_a_message() {
    let mut rule = Rule::new("t");
    rule.message(b"{}", true, &[]);
    let mut calc = |op, a: Arg<'_>, b: Arg<'_>| {
        let (ta, ba) = rule.value(&a);
        let (tb, bb) = rule.value(&b);
        result(rt_arith(op, ta, ba, tb, bb))
    };
    assert_eq!(calc(OP_ADD, Arg::Int(2), Arg::Str("3")), R::Int(5));
    assert_eq!(
        calc(OP_ADD, Arg::Int(i64::MAX), Arg::Int(1)),
        R::Float(i64::MAX as f64 + 1.0)
    );
    assert_eq!(calc(OP_DIV, Arg::Int(7), Arg::Int(2)), R::Float(3.5));
    assert_eq!(calc(OP_DIV, Arg::Int(8), Arg::Int(2)), R::Int(4));
    assert_eq!(calc(OP_MOD, Arg::Float(7.5), Arg::Int(2)), R::Float(1.5));
    assert_eq!(
        calc(OP_NEG, Arg::Int(i64::MIN), Arg::Undef),
        R::Float(9.223372036854776e18)
    );
    assert_eq!(calc(OP_SUB, Arg::Int(1), Arg::Undef), R::Undef);
    assert_eq!(calc(OP_DIV, Arg::Int(1), Arg::Int(0)), R::Err);
    assert_eq!(calc(OP_MOD, Arg::Float(1.0), Arg::Float(0.0)), R::Err);
    assert_eq!(calc(OP_MUL, Arg::Int(2), Arg::Json("[1]")), R::Err);
    assert_eq!(calc(OP_ADD, Arg::Str("a"), Arg::Int(1)), R::Err);
    assert_eq!(
        failures(),
        [
            "division by zero",
            "modulo by zero",
            "cannot apply '*' to array",
            "cannot apply '+' to string"
        ]
    );
}

#[test]
fn like_matches_strings_and_the_text_of_numbers() {
    let mut rule = Rule::new("t");
    rule.message(b"{}", true, &[]);
    let (pp, pl) = rule.konst(b"1%5");
    let (t, b) = rule.value(&Arg::Float(1.25));
    let top = arena().1;
    assert_eq!(rt_like(t, b, pp, pl), 1);
    assert_eq!(arena().1, top, "the number's text was scratch");
    let (t, b) = rule.value(&Arg::Str("125"));
    assert_eq!(rt_like(t, b, pp, pl), 1);
    let (t, b) = rule.value(&Arg::Str("126"));
    assert_eq!(rt_like(t, b, pp, pl), 0);
    assert_eq!(rt_like(TAG_NULL, 0, pp, pl), 0);
}

#[test]
fn the_output_object_grows_while_values_are_built_between_members() {
    let mut rule = Rule::new("t");
    rule.message(br#"{"n": 1}"#, true, &[]);
    rt_out_begin();
    let mut want = serde_json::Map::new();
    for i in 0..200 {
        // A value built in the arena between two members: the output buffer moves above it
        // when it grows.
        let v = rule.call(rt_f_concat, &[Arg::Str("v-"), Arg::Int(i)]);
        let R::Str(v) = v else { panic!("{v:?}") };
        let key = format!("k{i}");
        let (kp, kl) = rule.konst(format!("\"{key}\":").as_bytes());
        let (tag, bits) = (TAG_STR, ret_bits());
        rt_out_item(kp, kl, tag, bits);
        want.insert(key, v.into());
    }
    rule.item("quote\"d", &Arg::Str("a\"b\\c\u{1}é"));
    want.insert("quote\"d".into(), "a\"b\\c\u{1}é".into());
    rule.item("undef", &Arg::Undef);
    rule.item("null", &Arg::Null);
    want.insert("null".into(), serde_json::Value::Null);
    rule.item("f", &Arg::Float(0.1));
    want.insert("f".into(), 0.1.into());
    rule.item("bytes", &Arg::Bytes(b"\x00\xffhi"));
    want.insert("bytes".into(), "AP9oaQ==".into());
    rule.item("obj", &Arg::Json(r#"{"x":[1,2]}"#));
    want.insert("obj".into(), serde_json::json!({"x": [1, 2]}));
    rule.item("t", &Arg::Bool(true));
    want.insert("t".into(), true.into());
    rule.item("raw_none", &Arg::Raw(TAG_NONE, 0));
    assert_eq!(rt_out_emit(), 0);
    let out = outputs();
    assert_eq!(out.len(), 1);
    let got: serde_json::Value = serde_json::from_str(&out[0]).expect("JSON");
    assert_eq!(got, serde_json::Value::Object(want));
    assert!(out[0].len() > 2048, "grew past several doublings");
}

#[test]
fn star_copies_the_payload_members_but_the_overridden_ones() {
    let mut rule = Rule::new("t");
    let payload = br#" { "a" : 1, "k\u0065y": "old", "b": [true] } "#;
    rule.message(payload, true, &[]);
    rt_out_begin();
    rt_out_star(0, 0);
    assert_eq!(rt_out_emit(), 0);
    assert_eq!(outputs(), [r#"{"a" : 1, "k\u0065y": "old", "b": [true] }"#]);

    rule.message(payload, true, &[]);
    let (lp, ll) = rule.names(&["key", "zz"]);
    rt_out_begin();
    rt_out_star(lp, ll);
    rule.item("key", &Arg::Str("new"));
    assert_eq!(rt_out_emit(), 0);
    assert_eq!(outputs(), [r#"{"a":1,"b":[true],"key":"new"}"#]);

    rule.message(b"{ }", true, &[]);
    rt_out_begin();
    rt_out_star(0, 0);
    rule.item("x", &Arg::Int(1));
    rt_out_emit();
    assert_eq!(outputs(), [r#"{"x":1}"#]);
}

#[test]
fn flatmap_lifts_property_values() {
    let mut rule = Rule::new("t");
    let payload = br#"{"items": {"temp": {"value": 21.5, "time": 1}, "pos": {"value": {"lat": 1, "lng": 2}}, "q\"x": {"value": "s"}, "bare": 3}}"#;
    rule.message(payload, true, &[]);
    rt_out_begin();
    rt_out_flatmap(0, 0);
    rt_out_emit();
    assert_eq!(
        outputs(),
        [r#"{"temp":21.5,"pos_lat":1,"pos_lng":2,"q\"x":"s"}"#]
    );
    rule.message(payload, true, &[]);
    let (lp, ll) = rule.names(&["q\"x", "missing", "temp"]);
    rt_out_begin();
    rt_out_flatmap(lp, ll);
    rt_out_emit();
    assert_eq!(outputs(), [r#"{"q\"x":"s","temp":21.5}"#]);
    rule.message(br#"{"items": 1}"#, true, &[]);
    rt_out_begin();
    rt_out_flatmap(0, 0);
    rt_out_emit();
    assert_eq!(outputs(), ["{}"]);
}

#[test]
fn message_functions_fetch_from_the_host_however_long() {
    let long_topic = format!("/pk/dev/{}", "x".repeat(300));
    let mut rule = Rule::new(&long_topic);
    rule.message(b"{}", true, &[]);
    assert_eq!(
        rule.call(rt_f_topic, &[]),
        s(&long_topic),
        "past the first 128 bytes"
    );
    assert_eq!(rule.call(rt_f_topic, &[Arg::Int(2)]), s("dev"));
    assert_eq!(rule.call(rt_f_topic, &[Arg::Int(9)]), R::Undef);
    assert_eq!(rule.call(rt_f_topic, &[Arg::Int(0)]), R::Undef);
    assert_eq!(rule.call(rt_f_topic, &[Arg::Str("1")]), R::Err);
    assert_eq!(rule.call(rt_f_devicename, &[]), s("dev"));
    assert_eq!(rule.call(rt_f_productkey, &[]), s("pk"));
    assert_eq!(rule.call(rt_f_messageid, &[]), s("m-1"));
    rule.message(b"ab\xffc", false, &[]);
    assert_eq!(rule.call(rt_f_payload, &[]), s("ab\u{FFFD}c"));
    with_host(|h| h.tags = vec![(b"site".to_vec(), "y".repeat(100).into_bytes())]);
    assert_eq!(
        rule.call(rt_f_attribute, &[Arg::Str("site")]),
        s(&"y".repeat(100))
    );
    assert_eq!(rule.call(rt_f_attribute, &[Arg::Str("nope")]), s(""));
    assert_eq!(rule.call(rt_f_attribute, &[Arg::Int(1)]), R::Err);
    assert_eq!(
        failures(),
        [
            "topic: expected an integer, got string",
            "attribute: expected a string, got number"
        ]
    );
}

#[test]
fn time_random_and_uuid_come_from_the_host() {
    let mut rule = Rule::new("t");
    rule.message(b"{}", true, &[]);
    assert_eq!(rule.call(rt_f_timestamp, &[]), R::Int(1000));
    let long = "p".repeat(100);
    assert_eq!(
        rule.call(rt_f_timestamp, &[Arg::Str(&long)]),
        s(&format!("{long}@1000L")),
        "past the first 64 bytes"
    );
    assert_eq!(
        rule.call(rt_f_timestamp_utc, &[Arg::Str("yyyy")]),
        s("yyyy@1000")
    );
    assert_eq!(rule.call(rt_f_timestamp_utc, &[Arg::Str("bad")]), R::Err);
    assert_eq!(rule.call(rt_f_timestamp, &[Arg::Int(1)]), R::Err);
    assert_eq!(
        failures(),
        [
            "timestamp: bad time pattern 'bad'",
            "timestamp: expected a pattern string, got number"
        ]
    );
    let R::Str(uuid) = rule.call(rt_f_newuuid, &[]) else {
        panic!()
    };
    assert_eq!(uuid, "01020304-0506-4708-890a-0b0c0d0e0f10");
    let R::Float(r) = rule.call(rt_f_rand, &[]) else {
        panic!()
    };
    assert!((0.0..1.0).contains(&r), "{r}");
}

#[test]
fn math_functions() {
    let mut rule = Rule::new("t");
    rule.message(b"{}", true, &[]);
    if !cfg!(miri) {
        // libm's x86 square root is inline assembly, which Miri does not run.
        assert_eq!(rule.call(rt_f_sqrt, &[Arg::Int(16)]), R::Float(4.0));
    }
    assert_eq!(rule.call(rt_f_cos, &[Arg::Str("0")]), R::Float(1.0));
    assert_eq!(rule.call(rt_f_ln, &[Arg::Undef]), R::Undef);
    assert_eq!(rule.call(rt_f_exp, &[Arg::Bool(true)]), R::Err);
    assert_eq!(rule.call(rt_f_floor, &[Arg::Float(2.7)]), R::Int(2));
    assert_eq!(rule.call(rt_f_ceil, &[Arg::Int(3)]), R::Int(3));
    assert_eq!(rule.call(rt_f_round, &[Arg::Float(1e300)]), R::Float(1e300));
    assert_eq!(rule.call(rt_f_abs, &[Arg::Int(-3)]), R::Int(3));
    assert_eq!(
        rule.call(rt_f_abs, &[Arg::Int(i64::MIN)]),
        R::Float(9.223372036854776e18)
    );
    assert_eq!(rule.call(rt_f_abs, &[Arg::Float(-0.5)]), R::Float(0.5));
    assert_eq!(rule.call(rt_f_log, &[Arg::Int(100)]), R::Float(2.0));
    assert_eq!(
        rule.call(rt_f_log, &[Arg::Int(8), Arg::Int(2)]),
        R::Float(3.0)
    );
    assert_eq!(
        rule.call(rt_f_mod, &[Arg::Int(-7), Arg::Int(3)]),
        R::Int(-1)
    );
    assert_eq!(
        rule.call(rt_f_power, &[Arg::Int(2), Arg::Int(10)]),
        R::Float(1024.0)
    );
    assert_eq!(rule.call(rt_f_power, &[Arg::Int(2), Arg::Null]), R::Err);
    assert_eq!(
        failures(),
        [
            "exp: expected a number, got boolean",
            "power: expected a number, got null"
        ]
    );
}

#[test]
fn string_functions() {
    let mut rule = Rule::new("t");
    rule.message(b"{}", true, &[]);
    assert_eq!(
        rule.call(
            rt_f_concat,
            &[
                Arg::Str("a"),
                Arg::Int(1),
                Arg::Float(0.5),
                Arg::Null,
                Arg::Json("[1]")
            ]
        ),
        s("a10.5null[1]")
    );
    assert_eq!(
        rule.call(rt_f_concat, &[Arg::Str("a"), Arg::Undef]),
        R::Undef
    );
    assert_eq!(rule.call(rt_f_concat, &[Arg::Bytes(b"x")]), R::Undef);
    assert_eq!(rule.call(rt_f_upper, &[Arg::Str("abc-Z")]), s("ABC-Z"));
    assert_eq!(
        rule.call(rt_f_lower, &[Arg::Str("ÄÖ Straße")]),
        s("äö straße")
    );
    assert_eq!(rule.call(rt_f_upper, &[Arg::Str("straße")]), s("STRASSE"));
    assert_eq!(rule.call(rt_f_upper, &[Arg::Int(12)]), s("12"));
    assert_eq!(rule.call(rt_f_lower, &[Arg::Json("{}")]), R::Err);
    assert_eq!(
        rule.call(
            rt_f_replace,
            &[Arg::Str("a.b.c"), Arg::Str("."), Arg::Str("::")]
        ),
        s("a::b::c")
    );
    assert_eq!(
        rule.call(
            rt_f_replace,
            &[Arg::Str("abc"), Arg::Str(""), Arg::Str("x")]
        ),
        s("abc")
    );
    assert_eq!(
        rule.call(
            rt_f_substring,
            &[Arg::Str("hello"), Arg::Int(1), Arg::Int(3)]
        ),
        s("el")
    );
    assert_eq!(
        rule.call(
            rt_f_substring,
            &[Arg::Str("héllo"), Arg::Int(1), Arg::Int(3)]
        ),
        s("él")
    );
    assert_eq!(
        rule.call(
            rt_f_substring,
            &[Arg::Str("hello"), Arg::Int(-5), Arg::Int(99)]
        ),
        s("hello")
    );
    assert_eq!(
        rule.call(rt_f_substring, &[Arg::Int(12345), Arg::Float(3.9)]),
        s("45")
    );
    assert_eq!(
        rule.call(rt_f_substring, &[Arg::Str("x"), Arg::Str("1")]),
        R::Err
    );
    assert_eq!(
        rule.call(rt_f_startswith, &[Arg::Str("hello"), Arg::Str("he")]),
        R::Bool(true)
    );
    assert_eq!(
        rule.call(rt_f_endswith, &[Arg::Int(125), Arg::Int(25)]),
        R::Bool(true)
    );
    assert_eq!(
        rule.call(rt_f_endswith, &[Arg::Undef, Arg::Str("x")]),
        R::Undef
    );
    assert_eq!(rule.call(rt_f_length, &[Arg::Str("héllo")]), R::Int(5));
    assert_eq!(
        failures(),
        [
            "lower: expected a string, got object",
            "substring: expected an integer index, got string"
        ]
    );
}

#[test]
fn encoding_and_digest_functions() {
    let mut rule = Rule::new("t");
    let payload = b"\x00\x01binary\xff";
    rule.message(payload, false, &[]);
    // `*` as an argument: the payload's bytes, as generated code passes them.
    let star = Arg::Raw(
        TAG_BYTES,
        ((payload.len() as u64) << 32 | sluice_alloc(0) as u32 as u64) as i64,
    );
    assert_eq!(rule.call(rt_f_to_base64, &[star]), s("AAFiaW5hcnn/"));
    assert_eq!(rule.call(rt_f_to_hex, &[Arg::Str("AZ")]), s("415a"));
    assert_eq!(
        rule.call(rt_f_crypto, &[Arg::Str("abc"), Arg::Str("MD5")]),
        s("900150983cd24fb0d6963f7d28e17f72")
    );
    assert_eq!(
        rule.call(rt_f_crypto, &[Arg::Str("abc"), Arg::Str("SHA-256")]),
        s("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
    assert_eq!(
        rule.call(rt_f_crypto, &[Arg::Str("abc"), Arg::Str("SHA1")]),
        s("a9993e364706816aba3e25717850c26c9cd0d89d")
    );
    assert_eq!(
        rule.call(rt_f_crypto, &[Arg::Str("abc"), Arg::Str("CRC")]),
        R::Err
    );
    assert_eq!(
        rule.call(rt_f_crypto, &[Arg::Str("abc"), Arg::Int(1)]),
        R::Err
    );
    assert_eq!(
        failures(),
        [
            "crypto: unknown algorithm 'CRC'",
            "crypto: expected an algorithm name, got number"
        ]
    );
}

#[test]
fn rt_fail_passes_a_constant_message() {
    let mut rule = Rule::new("t");
    rule.message(b"{}", true, &[]);
    let (p, l) = rule.konst(b"WHERE failed");
    assert_eq!(rt_fail(p, l), TAG_ERR);
    assert_eq!(failures(), ["WHERE failed"]);
}

#[test]
fn a_binary_rule_emits_its_payload_unchanged() {
    let mut rule = Rule::new("t");
    rule.message(b"", false, &[]);
    assert_eq!(rt_emit_payload(), 0);
    rule.message(b"\x01\x02", false, &[]);
    assert_eq!(rt_emit_payload(), 0);
    assert_eq!(
        with_host(|h| std::mem::take(&mut h.outputs)),
        [b"".to_vec(), b"\x01\x02".to_vec()]
    );
}
