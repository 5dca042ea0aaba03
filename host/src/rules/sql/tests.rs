//! Tests of the SQL compiler: golden cases run through the real rule runtime, a differential
//! property test against a reference interpreter, a parser property test, the example rules.

use std::sync::OnceLock;

use serde::Deserialize;

use super::{compile, CompileOptions, DataType, SqlError};
use crate::rules::runtime::{
    Binding, Environment, Outcome, RuleInput, RuleInstance, RuleRuntime, SandboxConfig,
};

mod reference;

/// Fixed context of every test message.
const NOW_MS: i64 = 1_700_000_000_123;
const MESSAGE_ID: &str = "0123456789abcdef0123456789abcdef";
const DEFAULT_TOPIC: &str = "/pk/dev1/user/update";

fn runtime() -> &'static RuleRuntime {
    static RT: OnceLock<RuleRuntime> = OnceLock::new();
    RT.get_or_init(|| RuleRuntime::new(SandboxConfig::default()).expect("engine"))
}

/// What one message produced.
#[derive(Debug, Clone, PartialEq)]
enum Run {
    /// No output.
    Nothing,
    /// One output payload.
    Output(Vec<u8>),
    /// The message failed; the failure text.
    Failed(String),
}

fn instance(sql: &str, data_type: DataType) -> Result<RuleInstance, SqlError> {
    let rule = compile(sql, &CompileOptions { data_type })?;
    wasmparser::validate(&rule.wasm).expect("generated module validates");
    let module = runtime()
        .load(&rule.wasm)
        .expect("the runtime loads the module");
    Ok(runtime()
        .instantiate(
            &module,
            Binding::default(),
            Environment {
                fixed_now_ms: Some(NOW_MS),
                seed: Some(7),
                utc_offset_seconds: 0,
            },
        )
        .expect("instantiate"))
}

fn call(inst: &mut RuleInstance, topic: &str, payload: &[u8], raw: &[u8]) -> Run {
    let levels: Vec<&str> = topic.trim_start_matches('/').split('/').collect();
    // Identity from the topic, as for an anonymous client: /pk/dn/..., /sys/pk/dn/...,
    // /as/mqtt/status/pk/dn.
    let skip = match levels.first() {
        Some(&"sys") => 1,
        Some(&"as") => 3,
        _ => 0,
    };
    let levels = &levels[skip.min(levels.len())..];
    let input = RuleInput {
        topic,
        payload,
        raw_payload: raw,
        message_id: MESSAGE_ID,
        product_key: levels.first().copied().unwrap_or(""),
        device_name: levels.get(1).copied().unwrap_or(""),
        timestamp_ms: NOW_MS,
        tags: None,
    };
    match inst.call(&input) {
        Ok(Outcome::Emitted(d)) if d.is_empty() => Run::Nothing,
        Ok(Outcome::Emitted(d)) => {
            assert_eq!(d.len(), 1, "a SQL rule emits one output");
            Run::Output(d[0].payload.clone())
        }
        Ok(Outcome::Dropped) => panic!("SQL rules never drop"),
        Err(f) => Run::Failed(f.message),
    }
}

fn run(sql: &str, data_type: DataType, topic: &str, payload: &[u8]) -> Result<Run, SqlError> {
    let mut inst = instance(sql, data_type)?;
    Ok(call(&mut inst, topic, payload, payload))
}

fn out_json(r: &Run) -> serde_json::Value {
    match r {
        Run::Output(b) => serde_json::from_slice(b)
            .unwrap_or_else(|e| panic!("output is JSON: {e}: {}", String::from_utf8_lossy(b))),
        other => panic!("expected output, got {other:?}"),
    }
}

#[test]
fn more_root_fields_than_the_index_holds_still_read_right() {
    // Proves the paths past `MAX_TOP_FIELDS` (walked from the root) and those indexed while
    // the payload is validated agree, duplicates and a late invalid byte included.
    let n = super::shared::MAX_TOP_FIELDS + 6;
    // Two fields per item: a rule selects at most 50 items.
    let items: Vec<String> = (0..n / 2)
        .map(|j| format!("f{}.v * 1000 + f{}.v AS o{j}", 2 * j, 2 * j + 1))
        .collect();
    let sql = format!(r#"SELECT {} FROM "/pk/+/user/update""#, items.join(", "));
    let members: Vec<String> = (0..n)
        .rev()
        .map(|k| format!(r#""f{k}":{{"v":{k}}},"f{k}":{{"v":-1}}"#))
        .collect();
    let payload = format!("{{{}}}", members.join(","));
    let mut inst = instance(&sql, DataType::Json).expect("compiles");
    let out = out_json(&call(&mut inst, DEFAULT_TOPIC, payload.as_bytes(), b""));
    for j in 0..n / 2 {
        let want = 2 * j * 1000 + 2 * j + 1;
        assert_eq!(out[format!("o{j}")], serde_json::json!(want), "o{j}");
    }
    let broken = format!("{{{},\"z\":tru}}", members.join(","));
    assert_eq!(
        call(&mut inst, DEFAULT_TOPIC, broken.as_bytes(), b""),
        Run::Nothing
    );
}

#[test]
fn smoke_filter_and_projection() {
    // Proves the first example of docs/rule-sql.md end to end.
    let sql = r#"SELECT temperature AS t, deviceName() AS device, location FROM "/a1hRrzD/+/user/update" WHERE temperature > 38"#;
    let r = run(
        sql,
        DataType::Json,
        "/a1hRrzD/dev1/user/update",
        br#"{"temperature":39.5,"location":"x"}"#,
    )
    .unwrap();
    assert_eq!(
        out_json(&r),
        serde_json::json!({"t":39.5,"device":"dev1","location":"x"})
    );
    // Key order follows the SELECT list.
    assert_eq!(
        r,
        Run::Output(br#"{"t":39.5,"device":"dev1","location":"x"}"#.to_vec())
    );
    let r = run(
        sql,
        DataType::Json,
        "/a1hRrzD/dev1/user/update",
        br#"{"temperature":30,"location":"x"}"#,
    )
    .unwrap();
    assert_eq!(r, Run::Nothing);
}

// ------------------------------------------------------------------ golden cases

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Golden {
    #[serde(rename = "case")]
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    sql: String,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    payload: Option<String>,
    /// Base64 payload (binary rules).
    #[serde(default)]
    payload_base64: Option<String>,
    /// The bytes as published when they differ from `payload` (thing-model topics).
    #[serde(default)]
    raw_payload: Option<String>,
    #[serde(default)]
    binary: bool,
    /// Expected output JSON.
    #[serde(default)]
    expect: Option<String>,
    /// Expected raw output, base64.
    #[serde(default)]
    expect_base64: Option<String>,
    /// The rule does not fire.
    #[serde(default)]
    no_output: bool,
    /// The message fails with a text containing this.
    #[serde(default)]
    runtime_error: Option<String>,
    /// Compilation fails: `kind` of the error.
    #[serde(default)]
    compile_error: Option<String>,
    /// And its text contains this.
    #[serde(default)]
    error_contains: Option<String>,
    /// And it points at this `[line, column]`.
    #[serde(default)]
    at: Option<[u32; 2]>,
}

fn golden_cases() -> Vec<Case> {
    let text = include_str!("golden.toml");
    let g: Golden = toml::from_str(text).expect("golden.toml parses");
    g.cases
}

#[test]
fn golden() {
    // Proves every operator and function of docs/rule-sql.md against expected outputs.
    let cases = golden_cases();
    assert!(cases.len() >= 150, "only {} golden cases", cases.len());
    let verdicts: Vec<Option<String>> = std::thread::scope(|scope| {
        let half = cases.len() / 2;
        let (x, y) = cases.split_at(half);
        let hx = scope.spawn(|| x.iter().map(golden_verdict).collect::<Vec<_>>());
        let hy = scope.spawn(|| y.iter().map(golden_verdict).collect::<Vec<_>>());
        let mut v = hx.join().expect("golden thread");
        v.extend(hy.join().expect("golden thread"));
        v
    });
    let failures: Vec<String> = verdicts.into_iter().flatten().collect();
    assert!(
        failures.is_empty(),
        "{} of {} golden cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Runs one golden case; `Some(description)` when it fails.
fn golden_verdict(c: &Case) -> Option<String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    {
        let dt = if c.binary {
            DataType::Binary
        } else {
            DataType::Json
        };
        let topic = c.topic.as_deref().unwrap_or(DEFAULT_TOPIC);
        let payload: Vec<u8> = match (&c.payload, &c.payload_base64) {
            (_, Some(b)) => b64.decode(b).expect("payload_base64"),
            (Some(p), None) => p.as_bytes().to_vec(),
            (None, None) => b"{}".to_vec(),
        };
        let raw = c
            .raw_payload
            .as_ref()
            .map(|r| r.as_bytes().to_vec())
            .unwrap_or_else(|| payload.clone());
        let outcome = instance(&c.sql, dt).map(|mut i| call(&mut i, topic, &payload, &raw));
        let verdict: Result<(), String> = match (&c.compile_error, outcome) {
            (Some(kind), Err(e)) => {
                if e.kind() != kind {
                    Err(format!(
                        "expected compile error {kind}, got {} ({e})",
                        e.kind()
                    ))
                } else if c
                    .error_contains
                    .as_ref()
                    .is_some_and(|s| !e.to_string().contains(s.as_str()))
                {
                    Err(format!("error text {e:?} lacks {:?}", c.error_contains))
                } else if c.at.is_some_and(|[l, col]| e.position() != Some((l, col))) {
                    Err(format!(
                        "error at {:?}, expected {:?}: {e}",
                        e.position(),
                        c.at
                    ))
                } else {
                    Ok(())
                }
            }
            (Some(kind), Ok(r)) => Err(format!("expected compile error {kind}, got {r:?}")),
            (None, Err(e)) => Err(format!("compile error: {e}")),
            (None, Ok(r)) => {
                if let Some(exp) = &c.expect {
                    let want: serde_json::Value =
                        serde_json::from_str(exp).expect("expect is JSON");
                    match &r {
                        Run::Output(b) => match serde_json::from_slice::<serde_json::Value>(b) {
                            Ok(got) if got == want => Ok(()),
                            _ => Err(format!(
                                "expected {exp}, got {}",
                                String::from_utf8_lossy(b)
                            )),
                        },
                        other => Err(format!("expected {exp}, got {other:?}")),
                    }
                } else if let Some(exp) = &c.expect_base64 {
                    match &r {
                        Run::Output(b) if b64.encode(b) == *exp => Ok(()),
                        other => Err(format!("expected base64 {exp}, got {other:?}")),
                    }
                } else if c.no_output {
                    if r == Run::Nothing {
                        Ok(())
                    } else {
                        Err(format!("expected no output, got {r:?}"))
                    }
                } else if let Some(msg) = &c.runtime_error {
                    match &r {
                        Run::Failed(m) if m.contains(msg.as_str()) => Ok(()),
                        other => Err(format!("expected runtime error {msg:?}, got {other:?}")),
                    }
                } else {
                    Err("case has no expectation".into())
                }
            }
        };
        verdict.err().map(|e| format!("{}: {e}", c.name))
    }
}

#[test]
fn golden_case_names_are_unique() {
    // Proves a golden case can be found by its name.
    let cases = golden_cases();
    let mut seen = std::collections::HashSet::new();
    for c in &cases {
        assert!(seen.insert(c.name.as_str()), "duplicate case {}", c.name);
    }
}

// ------------------------------------------------------------------ differential test

/// Rules compared with the reference interpreter on random payloads.
const DIFFERENTIAL_RULES: &[&str] = &[
    r#"SELECT a AS x, b, a + b AS sum, a * 2 AS dbl FROM "/pk/+/user/update" WHERE a > b OR b IS NULL"#,
    r#"SELECT a - b AS d, a / b AS q, a % b AS m FROM "/pk/+/user/update" WHERE a IS NOT NULL"#,
    r#"SELECT CASE a WHEN 1 THEN 'one' WHEN 'x' THEN 'ex' ELSE b END AS c, nanvl(a, -1) AS n, -a AS neg
       FROM "/pk/+/user/update" WHERE NOT (a = b)"#,
    r#"SELECT lower(s) AS l, upper(s) AS u, concat(s, '-', b) AS c, length(s) AS len
       FROM "/pk/+/user/update" WHERE s LIKE '%a%' OR a BETWEEN -5 AND 5"#,
    r#"SELECT "arr[1]" AS one, ".arr[0]" AS w, abs(a) AS ab, topic(2) AS dev
       FROM "/pk/+/user/update" WHERE a IN (1, 2, 3, 'x', 2.5, true) OR b <> a"#,
    r#"SELECT *, -a AS neg, deviceName() AS dn FROM "/pk/+/user/update" WHERE a >= 0 AND b < 100 OR s = 'abc'"#,
    r#"SELECT a + 1 AS t, a * b - 3 AS e, (a + 1) / 2 AS h FROM "/pk/+/user/update" WHERE t > 1 AND a <= 10 OR a < b"#,
    r#"SELECT a, b FROM "/pk/+/user/update" WHERE (a > 0 OR b > 0) AND NOT (a NOT IN (1, 2) AND s NOT LIKE 'a%')"#,
];

fn arb_scalar() -> impl proptest::strategy::Strategy<Value = Option<serde_json::Value>> {
    use proptest::prelude::*;
    use serde_json::json;
    prop_oneof![
        Just(None),
        (-20i64..20).prop_map(|i| Some(json!(i))),
        any::<i64>().prop_map(|i| Some(json!(i))),
        // Few digits, so serde_json's parse of the payload (the reference's input) is exact.
        (-10000i64..10000).prop_map(|k| Some(json!(k as f64 / 100.0))),
        prop::sample::select(vec!["12", "2.5", "-3", "abc", "", "x", "1e2", " 5", "A%b"])
            .prop_map(|s| Some(json!(s))),
        any::<bool>().prop_map(|b| Some(json!(b))),
        Just(Some(serde_json::Value::Null)),
    ]
}

fn arb_payload() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    (
        arb_scalar(),
        arb_scalar(),
        "[a-cA-C%_ é]{0,6}",
        prop::collection::vec(-5i64..5, 0..4),
        any::<bool>(),
    )
        .prop_map(|(a, b, s, arr, with_s)| {
            let mut m = serde_json::Map::new();
            if let Some(a) = a {
                m.insert("a".into(), a);
            }
            if let Some(b) = b {
                m.insert("b".into(), b);
            }
            if with_s {
                m.insert("s".into(), s.into());
            }
            m.insert("arr".into(), arr.into());
            serde_json::Value::Object(m).to_string()
        })
}

#[test]
fn compiled_rules_match_the_reference_interpreter() {
    // Proves the compiled Wasm and an independent evaluation agree on random payloads.
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let rules: Vec<(super::parser::Query, RuleInstance)> = DIFFERENTIAL_RULES
        .iter()
        .map(|sql| {
            (
                super::parser::parse(sql).expect("parses"),
                instance(sql, DataType::Json).expect("compiles"),
            )
        })
        .collect();
    let rules = std::cell::RefCell::new(rules);
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&arb_payload(), |payload| {
        let value: serde_json::Value = serde_json::from_str(&payload).expect("generated JSON");
        for (i, (q, inst)) in rules.borrow_mut().iter_mut().enumerate() {
            let ctx = reference::Ctx {
                payload: &value,
                device_name: "dev1",
                topic: DEFAULT_TOPIC,
            };
            let want = reference::eval_query(q, &ctx);
            let got = call(inst, DEFAULT_TOPIC, payload.as_bytes(), payload.as_bytes());
            let same = match (&want, &got) {
                (Ok(None), Run::Nothing) => true,
                (Ok(Some(w)), Run::Output(b)) => {
                    // Both sides through the same text -> value parse (serde_json's default
                    // float parser may be one ULP off; the shortest texts are equal).
                    let w: serde_json::Value = serde_json::from_str(&w.to_string()).expect("JSON");
                    serde_json::from_slice::<serde_json::Value>(b).ok() == Some(w)
                }
                (Err(w), Run::Failed(g)) => g.contains(w.as_str()),
                _ => false,
            };
            if !same {
                return Err(TestCaseError::fail(format!(
                    "rule {i} on {payload}: reference {want:?}, compiled {got:?}",
                )));
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ------------------------------------------------------------------ parser robustness

#[test]
fn compile_never_panics_on_random_text() {
    // Proves arbitrary text yields a module or an error, never a panic.
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let words = prop::sample::select(vec![
        "SELECT",
        "FROM",
        "WHERE",
        "AND",
        "OR",
        "NOT",
        "IN",
        "LIKE",
        "BETWEEN",
        "IS",
        "NULL",
        "CASE",
        "WHEN",
        "THEN",
        "ELSE",
        "END",
        "AS",
        "*",
        ",",
        "(",
        ")",
        "+",
        "-",
        "/",
        "%",
        "=",
        "<>",
        "<",
        ">=",
        ".",
        "[",
        "]",
        "a",
        "b.c",
        "\"a[0]\"",
        "\".a[1].v\"",
        "'x'",
        "'",
        "\"",
        "1",
        "2.5",
        "-",
        "--c\n",
        "topic(1)",
        "lower(",
        "concat(",
        "crypto(",
        "'MD5'",
        "\"/pk/+/user/update\"",
        "\"/a/#/b\"",
        "JOIN",
        "GROUP",
        "BY",
        ";",
        "\n",
        "thingPropertyFlatMap(",
        "nanvl(",
        "é",
        "\u{0}",
        "9999999999999999999999",
    ]);
    let soup = prop::collection::vec(words, 0..40).prop_map(|w| w.join(" "));
    let mut runner = TestRunner::new(Config {
        cases: 3000,
        failure_persistence: None,
        ..Config::default()
    });
    for strategy in [soup.boxed(), ".{0,80}".prop_map(|s: String| s).boxed()] {
        runner
            .run(&strategy, |text| {
                for data_type in [DataType::Json, DataType::Binary] {
                    if let Ok(rule) = compile(&text, &CompileOptions { data_type }) {
                        prop_assert!(
                            wasmparser::validate(&rule.wasm).is_ok(),
                            "invalid module for {text:?}"
                        );
                    }
                }
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    // Proves the recursion limit holds for every nesting form.
    for (open, close) in [
        ("(", ")"),
        ("NOT ", ""),
        ("- ", ""),
        ("lower(", ")"),
        ("CASE WHEN true THEN ", " END"),
    ] {
        let expr = format!("{}1{}", open.repeat(5000), close.repeat(5000));
        let sql = format!(r#"SELECT {expr} AS x FROM "/a""#);
        let err = compile(&sql, &CompileOptions::default()).expect_err("too deep");
        assert_eq!(err.kind(), "too_deep", "{open}: {err}");
    }
}

#[test]
fn errors_carry_line_column_and_hint() {
    // Proves the user-facing text of a compile error.
    let err = compile(
        "SELECT a,\n  upperr(a) AS b\nFROM \"/pk/+/x\"",
        &CompileOptions::default(),
    )
    .unwrap_err();
    assert_eq!(err.position(), Some((2, 3)));
    assert_eq!(
        err.to_string(),
        "2:3: unknown function `upperr`; did you mean `upper`?"
    );
    let err = compile("SELECT a FROM \"/a/#/b\"", &CompileOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            SqlError::BadTopicFilter {
                line: 1,
                column: 15,
                ..
            }
        ),
        "{err:?}"
    );
    let err = compile(
        "SELECT a FROM \"/a\" GROUP BY a",
        &CompileOptions::default(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        SqlError::Unsupported {
            construct: "GROUP BY".into(),
            line: 1,
            column: 20
        }
    );
}

#[test]
fn compiled_rule_metadata() {
    // Proves what `compile` reports beside the module, and that the module speaks ABI v1 exactly.
    let rule = compile(
        r#"SELECT *, temperature AS t, deviceName(), a.b[0].c, thingPropertyFlatMap() FROM "/pk/+/user/update""#,
        &CompileOptions::default(),
    )
    .unwrap();
    assert_eq!(rule.from_filter, "/pk/+/user/update");
    assert_eq!(
        rule.select_names,
        ["*", "t", "deviceName", "c", "thingPropertyFlatMap"]
    );
    assert!(!rule.raw_output);
    let mut exports = Vec::new();
    let mut imports = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(&rule.wasm) {
        match payload.unwrap() {
            wasmparser::Payload::ExportSection(r) => {
                exports.extend(r.into_iter().map(|e| e.unwrap().name.to_string()))
            }
            wasmparser::Payload::ImportSection(r) => imports.extend(
                r.into_imports()
                    .map(|i| i.unwrap())
                    .map(|i| (i.module.to_string(), i.name.to_string())),
            ),
            _ => {}
        }
    }
    exports.sort();
    assert_eq!(
        exports,
        [
            "memory",
            "sluice_abi_version",
            "sluice_alloc",
            "sluice_on_message"
        ]
    );
    for (module, name) in &imports {
        assert_eq!(module, sluice_guest::abi::IMPORT_MODULE);
        assert!(
            sluice_guest::abi::imports::ALL.contains(&name.as_str()),
            "{name}"
        );
    }
    let raw = compile(
        r#"SELECT * FROM "/pk/+/raw""#,
        &CompileOptions {
            data_type: DataType::Binary,
        },
    )
    .unwrap();
    assert!(raw.raw_output);
}

#[test]
fn instance_is_reused_across_messages() {
    // Proves per-message state (arena, caches) is reset between calls on one instance.
    let mut inst = instance(
        r#"SELECT upper(name) AS u, temperature AS t FROM "/pk/+/user/update" WHERE temperature > 38"#,
        DataType::Json,
    )
    .unwrap();
    for i in 0..2000 {
        let payload = format!(r#"{{"name":"n{i}","temperature":{}}}"#, 30 + i % 20);
        let got = call(
            &mut inst,
            DEFAULT_TOPIC,
            payload.as_bytes(),
            payload.as_bytes(),
        );
        if 30 + i % 20 > 38 {
            assert_eq!(
                out_json(&got),
                serde_json::json!({"u": format!("N{i}"), "t": 30 + i % 20})
            );
        } else {
            assert_eq!(got, Run::Nothing);
        }
    }
    let big = format!(r#"{{"name":"{}","temperature":40}}"#, "x".repeat(100_000));
    assert_eq!(
        out_json(&call(
            &mut inst,
            DEFAULT_TOPIC,
            big.as_bytes(),
            big.as_bytes()
        ))["t"],
        40
    );
    let small = r#"{"name":"s","temperature":41}"#;
    assert_eq!(
        out_json(&call(
            &mut inst,
            DEFAULT_TOPIC,
            small.as_bytes(),
            small.as_bytes()
        ))["u"],
        "S"
    );
}

// ------------------------------------------------------------------ example rules

/// The example rules in `rules-examples/sql/`, each with a message and its expected result.
const EXAMPLES: &[(&str, &str, &str, &str, Option<&str>)] = &[
    (
        "overheat.sql",
        include_str!("../../../../rules-examples/sql/overheat.sql"),
        "/a1hRrzD/dev1/user/update",
        r#"{"temperature":39.5,"location":"x","humidity":40}"#,
        Some(r#"{"t":39.5,"device":"dev1","location":"x"}"#),
    ),
    (
        "thing_property.sql",
        include_str!("../../../../rules-examples/sql/thing_property.sql"),
        "/sys/a1HHrkm/TestDevice1/thing/event/property/post",
        r#"{"deviceName":"TestDevice1","productKey":"a1HHrkm","gmtCreate":1524448722000,"items":{"Temperature":{"value":38.5,"time":1524448722000}}}"#,
        Some(r#"{"deviceName":"TestDevice1","Temperature":38.5,"time":1524448722000}"#),
    ),
    (
        "binary_raw.sql",
        include_str!("../../../../rules-examples/sql/binary_raw.sql"),
        "/pk/dev7/user/raw",
        "\u{1}\u{2}hello",
        Some(r#"{"data":"AQJoZWxsbw==","dn":"dev7","size":7,"ts":1700000000123}"#),
    ),
    (
        "functions.sql",
        include_str!("../../../../rules-examples/sql/functions.sql"),
        "/pk/meter-3/user/telemetry",
        r#"{"power":{"watts":1234.5,"state":1},"serial":"AB-12-cd"}"#,
        Some(
            r#"{"device":"METER-3","kw":1.23,"state":"on","serial":"ab_12_cd","digest":"3249e059f94ccdbdfbb5599cdf77e00e","note":"meter-3@telemetry"}"#,
        ),
    ),
    (
        "routing.sql",
        include_str!("../../../../rules-examples/sql/routing.sql"),
        "/pk/dev1/user/alerts",
        r#"{"level":"critical","code":"E-OVERHEAT-1","zone":3}"#,
        Some(r#"{"level":"critical","code":"E-OVERHEAT-1","zone":3,"route":"oncall"}"#),
    ),
];

#[test]
fn example_rules_compile_and_run() {
    // Proves every rules-examples/sql/*.sql rule compiles and gives its documented output.
    for (name, sql, topic, payload, want) in EXAMPLES {
        let data_type = if sql.contains("-- data-type: binary") {
            DataType::Binary
        } else {
            DataType::Json
        };
        let got = run(sql, data_type, topic, payload.as_bytes())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        match want {
            Some(w) => {
                let w: serde_json::Value = serde_json::from_str(w).unwrap();
                assert_eq!(out_json(&got), w, "{name}");
            }
            None => assert_eq!(got, Run::Nothing, "{name}"),
        }
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../rules-examples/sql");
    if let Ok(entries) = std::fs::read_dir(dir) {
        let on_disk = entries
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
            })
            .count();
        assert_eq!(on_disk, EXAMPLES.len(), "every example rule has a test");
    }
}

#[test]
fn an_invalid_json_payload_is_signalled_by_status_not_by_the_log_text() {
    // Proves the host learns of an invalid payload from the rule's own status (no output,
    // flagged for the counter), not from a log line, and that the status is none of the ABI's.
    assert!(sluice_guest::abi::Status::from_code(super::STATUS_INVALID_PAYLOAD).is_none());
    let mut inst = instance(
        r#"SELECT a FROM "/pk/+/user/update" WHERE a > 1"#,
        DataType::Json,
    )
    .expect("compiles");
    for (payload, run, invalid) in [
        (&b"not json"[..], Run::Nothing, true),
        (b"[1]", Run::Nothing, true),
        (br#"{"a": 1}"#, Run::Nothing, false),
        (br#"{"a": 2}"#, Run::Output(br#"{"a":2}"#.to_vec()), false),
        (b"{", Run::Nothing, true),
    ] {
        assert_eq!(call(&mut inst, DEFAULT_TOPIC, payload, payload), run);
        assert_eq!(inst.last_payload_invalid(), invalid, "{payload:?}");
    }
    // A binary rule checks nothing.
    let mut inst = instance(r#"SELECT * FROM "/pk/+/raw""#, DataType::Binary).expect("compiles");
    assert_eq!(
        call(&mut inst, "/pk/d/raw", b"not json", b"not json"),
        Run::Output(b"not json".to_vec())
    );
    assert!(!inst.last_payload_invalid());
}
