//! Per-message cost of compiled SQL rules against the same logic hand-written in Rust with
//! serde_json (typed structs, borrowed strings), on ~250-byte payloads; plus the compile time of
//! each rule (SQL to Wasm, and SQL to a loaded wasmtime module). The Wasm side runs through the
//! production sandbox (`RuleRuntime`, epoch deadline on every call).
//!
//! `cargo bench -p sluice --bench sql_eval`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde::{Deserialize, Serialize};
use sluice::rules::runtime::{
    Binding, Environment, Outcome, RuleInput, RuleRuntime, SandboxConfig,
};
use sluice::rules::sql::{compile, CompileOptions};

const CUSTOM_TOPIC: &str = "/a1hRrzD/dev1/user/update";
const CUSTOM: &str = r#"{"temperature":39.5,"humidity":61,"location":"warehouse-7/rack-12","battery":87,"firmware":"2.4.1-rc3","rssi":-67,"uptime_s":864123,"tags":["a","b","c"],"readings":[12.5,13.1,12.9],"status":{"fan":"on","door":"closed","alarm":false},"seq":123456}"#;
const THING_TOPIC: &str = "/sys/a1HHrkm/TestDevice1/thing/event/property/post";
const THING: &str = r#"{"deviceName":"TestDevice1","productKey":"a1HHrkm","gmtCreate":1524448722000,"items":{"Humidity":{"value":61,"time":1524448722000},"Power":{"value":"on","time":1524448722000},"Temperature":{"value":38.5,"time":1524448722000},"Voltage":{"value":229.7,"time":1524448722000}}}"#;

const FILTER_PROJECTION: &str = r#"SELECT temperature AS t, deviceName() AS device, location FROM "/+/+/user/update" WHERE temperature > 38"#;
const THING_MODEL: &str = r#"SELECT deviceName() AS deviceName, items.Temperature.value AS Temperature
FROM "/sys/+/+/thing/event/property/post"
WHERE items.Temperature.value > 38 AND deviceName() IN ('TestDevice1', 'TestDevice2')"#;
const FUNCTION_HEAVY: &str = r#"SELECT upper(location) AS loc, round(temperature * 1.8 + 32) AS f,
  CASE status.fan WHEN 'on' THEN 1 ELSE 0 END AS fan, concat(deviceName(), '-', seq) AS key,
  substring(firmware, 0, 3) AS fw
FROM "/+/+/user/update" WHERE location LIKE 'warehouse%' AND battery BETWEEN 20 AND 100"#;

// ---------------------------------------------------------------- native baselines

#[derive(Deserialize)]
struct Custom<'a> {
    temperature: Option<f64>,
    #[serde(borrow)]
    location: Option<&'a str>,
}

#[derive(Serialize)]
struct OutFp<'a> {
    t: f64,
    device: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<&'a str>,
}

fn native_filter_projection(device: &str, payload: &[u8]) -> Option<Vec<u8>> {
    let p: Custom<'_> = serde_json::from_slice(payload).ok()?;
    let t = p.temperature.filter(|t| *t > 38.0)?;
    serde_json::to_vec(&OutFp {
        t,
        device,
        location: p.location,
    })
    .ok()
}

#[derive(Deserialize)]
struct Prop {
    value: f64,
}

#[derive(Deserialize)]
struct Items {
    #[serde(rename = "Temperature")]
    temperature: Option<Prop>,
}

#[derive(Deserialize)]
struct Thing {
    items: Items,
}

#[derive(Serialize)]
struct OutThing<'a> {
    #[serde(rename = "deviceName")]
    device_name: &'a str,
    #[serde(rename = "Temperature")]
    temperature: f64,
}

fn native_thing_model(device: &str, payload: &[u8]) -> Option<Vec<u8>> {
    let p: Thing = serde_json::from_slice(payload).ok()?;
    let t = p.items.temperature?.value;
    if !(t > 38.0 && (device == "TestDevice1" || device == "TestDevice2")) {
        return None;
    }
    serde_json::to_vec(&OutThing {
        device_name: device,
        temperature: t,
    })
    .ok()
}

#[derive(Deserialize)]
struct Status<'a> {
    #[serde(borrow)]
    fan: Option<&'a str>,
}

#[derive(Deserialize)]
struct Heavy<'a> {
    #[serde(borrow)]
    location: Option<&'a str>,
    temperature: Option<f64>,
    #[serde(borrow)]
    status: Option<Status<'a>>,
    seq: Option<i64>,
    #[serde(borrow)]
    firmware: Option<&'a str>,
    battery: Option<f64>,
}

#[derive(Serialize)]
struct OutHeavy {
    loc: String,
    f: i64,
    fan: i64,
    key: String,
    fw: String,
}

fn native_function_heavy(device: &str, payload: &[u8]) -> Option<Vec<u8>> {
    let p: Heavy<'_> = serde_json::from_slice(payload).ok()?;
    let loc = p.location?;
    let battery = p.battery?;
    if !(loc.starts_with("warehouse") && (20.0..=100.0).contains(&battery)) {
        return None;
    }
    let out = OutHeavy {
        loc: loc.to_uppercase(),
        f: (p.temperature? * 1.8 + 32.0).round() as i64,
        fan: i64::from(p.status.and_then(|s| s.fan) == Some("on")),
        key: format!("{device}-{}", p.seq?),
        fw: p.firmware?.chars().take(3).collect(),
    };
    serde_json::to_vec(&out).ok()
}

// ---------------------------------------------------------------- benches

fn bench(c: &mut Criterion) {
    let runtime = RuleRuntime::new(SandboxConfig::default()).expect("engine");
    type Native = fn(&str, &[u8]) -> Option<Vec<u8>>;
    let cases: [(&str, &str, &str, &str, &str, Native); 3] = [
        (
            "filter_projection",
            FILTER_PROJECTION,
            CUSTOM_TOPIC,
            "dev1",
            CUSTOM,
            native_filter_projection,
        ),
        (
            "thing_model",
            THING_MODEL,
            THING_TOPIC,
            "TestDevice1",
            THING,
            native_thing_model,
        ),
        (
            "function_heavy",
            FUNCTION_HEAVY,
            CUSTOM_TOPIC,
            "dev1",
            CUSTOM,
            native_function_heavy,
        ),
    ];
    for (name, sql, topic, device, payload, native) in cases {
        let rule = compile(sql, &CompileOptions::default()).expect("compiles");
        let module = runtime.load(&rule.wasm).expect("loads");
        let mut inst = runtime
            .instantiate(&module, Binding::default(), Environment::default())
            .expect("instance");
        let input = RuleInput {
            topic,
            payload: payload.as_bytes(),
            raw_payload: payload.as_bytes(),
            message_id: "0123456789abcdef0123456789abcdef",
            product_key: "pk",
            device_name: device,
            timestamp_ms: 1_700_000_000_000,
            tags: None,
        };
        // Both sides must agree before they are timed.
        let wasm_out = match inst.call(&input).expect("runs") {
            Outcome::Emitted(d) => d.into_iter().next().map(|d| d.payload),
            Outcome::Dropped => None,
        };
        let native_out = native(device, payload.as_bytes());
        let as_json = |b: &Option<Vec<u8>>| {
            b.as_ref()
                .map(|b| serde_json::from_slice::<serde_json::Value>(b).unwrap())
        };
        assert_eq!(
            as_json(&wasm_out),
            as_json(&native_out),
            "{name}: the baseline must do the same work"
        );
        assert!(
            wasm_out.is_some(),
            "{name}: the bench payload must fire the rule"
        );

        let mut g = c.benchmark_group(format!("sql_eval/{name}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("wasm", |b| {
            b.iter(|| black_box(inst.call(black_box(&input)).expect("runs")))
        });
        g.bench_function("native_serde_json", |b| {
            b.iter(|| black_box(native(black_box(device), black_box(payload.as_bytes()))))
        });
        g.finish();

        let mut g = c.benchmark_group(format!("sql_compile/{name}"));
        g.bench_function("sql_to_wasm", |b| {
            b.iter(|| black_box(compile(black_box(sql), &CompileOptions::default())))
        });
        g.sample_size(10);
        g.bench_function("sql_to_loaded_module", |b| {
            b.iter(|| {
                // A distinct text each time defeats the runtime's compiled-module cache.
                let rule = compile(sql, &CompileOptions::default()).expect("compiles");
                black_box(runtime.load(&rule.wasm).expect("loads"))
            })
        });
        g.finish();
    }
}

/// Context for the figures above: the cost of a call that does almost nothing (the sandbox entry,
/// payload copy, validation, one `emit_output`), so the rule's own share can be read off.
fn floor(c: &mut Criterion) {
    let runtime = RuleRuntime::new(SandboxConfig::default()).expect("engine");
    let mut g = c.benchmark_group("sql_eval_floor");
    g.throughput(Throughput::Elements(1));
    for (name, sql) in [
        ("select_star", r#"SELECT * FROM "/+/+/user/update""#),
        (
            "select_constant",
            r#"SELECT 1 AS x FROM "/+/+/user/update""#,
        ),
        (
            "where_false",
            r#"SELECT 1 AS x FROM "/+/+/user/update" WHERE temperature > 100"#,
        ),
    ] {
        let rule = compile(sql, &CompileOptions::default()).expect("compiles");
        let module = runtime.load(&rule.wasm).expect("loads");
        let mut inst = runtime
            .instantiate(&module, Binding::default(), Environment::default())
            .expect("instance");
        let input = RuleInput {
            topic: CUSTOM_TOPIC,
            payload: CUSTOM.as_bytes(),
            raw_payload: CUSTOM.as_bytes(),
            message_id: "0123456789abcdef0123456789abcdef",
            product_key: "pk",
            device_name: "dev1",
            timestamp_ms: 1_700_000_000_000,
            tags: None,
        };
        g.bench_function(name, |b| {
            b.iter(|| black_box(inst.call(black_box(&input)).expect("runs")))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench, floor
}
criterion_main!(benches);
